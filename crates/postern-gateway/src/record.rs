//! The record phase: turn a finished call into an event and metrics.
//!
//! Neither allocates per call: the event is serialized straight from the `CallContext` into the
//! writer's buffer (see `events.rs`), and the metrics labels share the context's names.

use std::sync::Arc;

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
        self.record_call(context, status, decision, reason, 0, false);
    }

    fn record_call(
        &self,
        context: &CallContext,
        status: u16,
        decision: Decision,
        reason: &str,
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
        self.recorder.record_call(
            &self.context,
            self.status,
            Decision::Allow,
            reason,
            response_bytes,
            incomplete,
        );
    }
}
