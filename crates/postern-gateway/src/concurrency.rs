//! Concurrent-call limits of an integration: all callers together (`max_concurrent_calls`,
//! Envoy's circuit breaker `max_requests`: a vendor's own concurrency quota, or the gateway's
//! connections to it) and each caller's share (`max_concurrent_calls_per_caller`: one caller's
//! slow calls cannot take them all). A call holds its places from admission until its answer
//! is recorded (its body sent whole, or cut); past a limit it is refused, not queued.
//!
//! The counts live in [`Shared`](crate::Shared), by integration and caller name, so a reload
//! keeps them: calls begun under the old configuration still count under the new one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use http::StatusCode;

use crate::error::CallError;
use crate::runtime::IntegrationRuntime;

/// (integration, caller): `None` as the caller counts all of an integration's calls.
type CountKey = (Arc<str>, Option<Arc<str>>);

/// The open calls of every integration that has a limit, counted by [`CountKey`].
#[derive(Default)]
pub struct OpenCalls {
    counts: Mutex<HashMap<CountKey, Arc<AtomicU32>>>,
}

/// The places one call holds; given back when dropped.
#[derive(Debug, Default)]
pub struct CallPlaces {
    held: Vec<Arc<AtomicU32>>,
}

impl Drop for CallPlaces {
    fn drop(&mut self) {
        for count in &self.held {
            count.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl OpenCalls {
    /// Takes a place for `caller`'s call to `integration` under each limit it has (`None`
    /// without limits: nothing is counted), or refuses the call: `429
    /// too_many_concurrent_calls` past the caller's share, `503 concurrency_limited` past the
    /// integration's (the caller's share is checked first).
    pub fn admit(
        &self,
        integration: &IntegrationRuntime,
        caller: &Arc<str>,
    ) -> Result<Option<CallPlaces>, CallError> {
        let config = &integration.config;
        if config.max_concurrent_calls.is_none() && config.max_concurrent_calls_per_caller.is_none()
        {
            return Ok(None);
        }
        // The caller's share first, then the integration's.
        let limits = [
            config
                .max_concurrent_calls_per_caller
                .map(|limit| (Some(caller), limit)),
            config.max_concurrent_calls.map(|limit| (None, limit)),
        ];
        let mut places = CallPlaces::default();
        for (who, limit) in limits.into_iter().flatten() {
            let count = self.count(&integration.name, who);
            if !take(&count, limit) {
                // `places` gives back what it took as it drops.
                return Err(refusal(&integration.name, who.is_some(), limit));
            }
            places.held.push(count);
        }
        Ok(Some(places))
    }

    fn count(&self, integration: &Arc<str>, caller: Option<&Arc<str>>) -> Arc<AtomicU32> {
        let mut counts = self.counts.lock().expect("open calls lock");
        counts
            .entry((integration.clone(), caller.cloned()))
            .or_default()
            .clone()
    }

    /// Every count: (integration, caller or `None` for all callers, calls open), for
    /// `/metrics`.
    pub fn snapshot(&self) -> Vec<(Arc<str>, Option<Arc<str>>, u32)> {
        let counts = self.counts.lock().expect("open calls lock");
        counts
            .iter()
            .map(|((integration, caller), count)| {
                (
                    integration.clone(),
                    caller.clone(),
                    count.load(Ordering::Acquire),
                )
            })
            .collect()
    }
}

/// The refusal of a call past `limit`: the caller's share (`per_caller`) or the integration's.
fn refusal(integration: &str, per_caller: bool, limit: u32) -> CallError {
    let mut error = if per_caller {
        CallError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_concurrent_calls",
            format!("this caller already has {limit} calls open on {integration} (max_concurrent_calls_per_caller); retry when one has ended"),
        )
    } else {
        CallError::unavailable(
            "concurrency_limited",
            format!("{integration} already has {limit} calls open, all callers together (max_concurrent_calls); retry shortly"),
        )
    };
    error.retry_after_seconds = Some(1);
    error
}

/// Takes one place in `count` if fewer than `limit` are taken.
fn take(count: &AtomicU32, limit: u32) -> bool {
    count
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
            (open < limit).then_some(open + 1)
        })
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_place_is_taken_below_the_limit_and_given_back_on_drop() {
        let count = Arc::new(AtomicU32::new(0));
        assert!(take(&count, 2));
        assert!(take(&count, 2));
        assert!(!take(&count, 2));
        assert_eq!(count.load(Ordering::Acquire), 2);
        drop(CallPlaces {
            held: vec![count.clone()],
        });
        assert!(take(&count, 2));
    }
}
