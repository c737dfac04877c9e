//! The record phase: turn a finished call into an event and metrics.

use std::sync::Arc;
use std::time::Duration;

use crate::context::CallContext;
use crate::events::{Decision, EventSink};
use crate::metrics::Metrics;

/// Where records go.
#[derive(Clone)]
pub struct Recorder {
    pub events: EventSink,
    pub metrics: Arc<Metrics>,
}

impl Recorder {
    /// Records a call that ended without a streamed body (refusals, errors).
    pub fn record(&self, context: &CallContext, status: u16, decision: Decision, reason: &str) {
        let event = context.to_event(status, decision, reason, 0, false);
        self.metrics
            .observe_call(&event, Duration::from_secs_f64(event.duration_ms / 1000.0));
        self.events.record_now(event);
    }
}

/// A call whose response body is still streaming; recorded when the body ends or is dropped.
pub struct PendingRecord {
    pub recorder: Recorder,
    pub context: CallContext,
    pub status: u16,
}

impl PendingRecord {
    pub fn finish(self, response_bytes: u64, incomplete: bool, reason: Option<&'static str>) {
        let reason = reason.unwrap_or("granted");
        let event = self.context.to_event(
            self.status,
            Decision::Allow,
            reason,
            response_bytes,
            incomplete,
        );
        self.recorder
            .metrics
            .observe_call(&event, Duration::from_secs_f64(event.duration_ms / 1000.0));
        self.recorder.events.record_now(event);
    }
}
