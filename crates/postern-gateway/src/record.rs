//! The record phase: turn a finished call into an event and metrics.
//!
//! Neither allocates per call: the event is serialized straight from the `CallContext` into the
//! writer's buffer (see `events.rs`), and the metrics labels share the context's names.

use std::borrow::Cow;
use std::sync::Arc;

use crate::context::CallContext;
use crate::events::{Decision, EventSink};
use crate::metrics::Metrics;

/// Where records go.
#[derive(Clone)]
pub struct Recorder {
    pub events: EventSink,
    pub metrics: Arc<Metrics>,
    /// The live anomaly detector (off the request path).
    pub detector: Option<Arc<crate::detect::Detector>>,
}

impl Recorder {
    /// Records a call that ended without a streamed body (refusals, errors).
    pub fn record(
        &self,
        context: &CallContext,
        status: u16,
        decision: Decision,
        reason: &'static str,
    ) {
        self.record_call(context, status, decision, reason, 0, false);
    }

    /// Records a finished call with its response byte count (tunnels, streamed bodies).
    pub fn record_call(
        &self,
        context: &CallContext,
        status: u16,
        decision: Decision,
        reason: &'static str,
        response_bytes: u64,
        incomplete: bool,
    ) {
        let elapsed = context.started.elapsed();
        self.metrics.observe_call(
            context.integration.as_ref(),
            context.caller.as_ref(),
            decision,
            status,
            reason,
            elapsed,
        );
        self.events.record_ref(&context.event_ref(
            status,
            decision,
            reason,
            response_bytes,
            incomplete,
            elapsed,
        ));
        if let Some(detector) = &self.detector {
            detector.observe(postern_detect::engine::DetectEvent {
                time_unix_ms: context
                    .wall_start
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0),
                integration: context.integration.clone(),
                caller: context.caller.clone(),
                operation: context.operation_id.clone(),
                status,
                request_bytes: context
                    .request_body
                    .bytes
                    .load(std::sync::atomic::Ordering::Relaxed),
                response_bytes,
                duration_ms: crate::context::duration_ms(elapsed),
                source_ip: Some(context.source_ip.clone()),
                decision: Some(Cow::Borrowed(match decision {
                    Decision::Allow => "allow",
                    Decision::Deny => "deny",
                })),
                reason: Some(Cow::Borrowed(reason)),
                host: context.host.clone(),
            });
        }
    }
}

/// A call whose response body is still streaming; recorded when the body ends or is dropped.
pub struct PendingRecord {
    pub recorder: Recorder,
    pub context: CallContext,
    pub status: u16,
    /// The event's reason when the body ends normally (`granted` for integration calls).
    pub reason: &'static str,
    /// Runs once the call is recorded, with its response byte count (forward-proxy discovery).
    pub after: Option<AfterRecord>,
}

/// A hook run when a streamed call has been recorded.
pub type AfterRecord = Box<dyn FnOnce(&CallContext, u64) + Send + Sync>;

impl PendingRecord {
    pub fn finish(self, response_bytes: u64, incomplete: bool, reason: Option<&'static str>) {
        let reason = reason.unwrap_or(self.reason);
        self.recorder.record_call(
            &self.context,
            self.status,
            Decision::Allow,
            reason,
            response_bytes,
            incomplete,
        );
        if let Some(after) = self.after {
            after(&self.context, response_bytes);
        }
    }
}
