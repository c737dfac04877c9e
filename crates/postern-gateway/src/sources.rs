//! `[gateway] max_connections_per_source`: how many connections one client address may hold on
//! the gateway listener at once, so that one client (a runaway pool, a flood from one host)
//! cannot take every one of the listener's places ([`crate::listener::MAX_CONNECTIONS`]).
//! An IPv6 client is counted by its /64, which one host commonly holds whole.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use postern_netguard::{PerKey, Place};

/// The cap and the connections each source holds under it. Shared by the listener's workers;
/// the cap may change at a reload.
#[derive(Debug, Default)]
pub struct SourceLimit {
    /// Connections one source may hold; 0: no cap (and nothing is counted).
    limit: AtomicUsize,
    held: PerKey<IpAddr>,
    /// Connections refused at the cap since start (`/metrics`).
    refused: AtomicU64,
}

/// A connection refused because its source holds the cap already.
#[derive(Debug, PartialEq, Eq)]
pub struct AtCap;

impl SourceLimit {
    pub fn new(limit: usize) -> Arc<SourceLimit> {
        let sources = SourceLimit::default();
        sources.set(limit);
        Arc::new(sources)
    }

    /// A new cap (a reload): connections already held stay; new ones are counted against it.
    /// Raised from 0, the connections opened before are not counted.
    pub fn set(&self, limit: usize) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// A place for one more connection from `peer`, held until the [`SourceHold`] drops:
    /// `Ok(None)` without a cap (nothing counted), [`AtCap`] when its source holds the cap.
    pub fn admit(&self, peer: IpAddr) -> Result<Option<SourceHold>, AtCap> {
        let limit = self.limit.load(Ordering::Relaxed);
        if limit == 0 {
            return Ok(None);
        }
        match self.held.take(&source_of(peer), limit) {
            Some(place) => Ok(Some(place)),
            None => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                Err(AtCap)
            }
        }
    }

    /// Connections refused at the cap since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// The connections `peer`'s source holds.
    #[cfg(test)]
    fn held_by(&self, peer: IpAddr) -> usize {
        self.held.held(&source_of(peer))
    }
}

/// What a connection is counted by: its IPv4 address (an IPv4-mapped IPv6 one as the IPv4
/// address it is), or its IPv6 address's /64.
fn source_of(peer: IpAddr) -> IpAddr {
    match peer.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

/// One connection's place under its source's cap, given back when dropped.
pub type SourceHold = Place<IpAddr>;

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_source_holds_at_most_the_cap_and_gets_its_places_back() {
        let sources = SourceLimit::new(2);
        let first = sources.admit(ip("10.0.0.1")).unwrap();
        let second = sources.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(sources.admit(ip("10.0.0.1")).unwrap_err(), AtCap);
        // The IPv4-mapped form is the same client.
        assert_eq!(sources.admit(ip("::ffff:10.0.0.1")).unwrap_err(), AtCap);
        assert!(
            sources.admit(ip("10.0.0.2")).unwrap().is_some(),
            "another source"
        );
        drop(first);
        assert_eq!(sources.held_by(ip("10.0.0.1")), 1);
        let third = sources.admit(ip("10.0.0.1")).unwrap();
        drop((second, third));
        assert_eq!(sources.held_by(ip("10.0.0.1")), 0);
        assert!(sources.held.is_empty(), "no entry left behind");
    }

    #[test]
    fn an_ipv6_client_is_counted_by_its_slash_64() {
        let sources = SourceLimit::new(1);
        let _held = sources.admit(ip("2001:db8:1:2::1")).unwrap();
        assert_eq!(
            sources.admit(ip("2001:db8:1:2:ffff::9")).unwrap_err(),
            AtCap
        );
        assert!(sources.admit(ip("2001:db8:1:3::1")).unwrap().is_some());
    }

    #[test]
    fn without_a_cap_nothing_is_counted_and_a_new_cap_counts_new_connections() {
        let sources = SourceLimit::new(0);
        let uncounted = sources.admit(ip("10.0.0.1")).unwrap();
        assert!(uncounted.is_none());
        assert!(sources.held.is_empty());
        sources.set(1);
        let _held = sources.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(sources.admit(ip("10.0.0.1")).unwrap_err(), AtCap);
        sources.set(0);
        assert!(sources.admit(ip("10.0.0.1")).unwrap().is_none());
    }
}
