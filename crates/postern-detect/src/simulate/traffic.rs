//! Event generation, minute by minute: ordinary traffic per caller (Poisson arrivals at a rate
//! following the caller's daily and weekly shape, log-normal sizes and latencies, the vendor's
//! usual errors), benign level shifts, and incidents.
//!
//! Every (caller, minute) and (incident, minute) draws from its own stream derived from the
//! seed, so the ordinary traffic of a run with incidents is exactly the traffic of the same run
//! without them: a clean run is the incident run's counterfactual.

use serde::Serialize;

use super::incidents::{BenignShift, ExtraCalls, ExtraOutcome, Incident, Plan, VendorFailure};
use super::model::{Estate, LogNormal, Operation};
use super::rng::Rng;
use crate::engine::DetectEvent;
use crate::timestamp::format_rfc3339_millis;

const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 86_400_000;
/// The integrations' request timeout: a timed-out call lasts this long.
const REQUEST_TIMEOUT_MS: f64 = 30_000.0;
/// Calls per minute refused at the gateway for unknown credentials in ordinary traffic (stale
/// tokens, misconfigured jobs).
const BACKGROUND_UNAUTHENTICATED_PER_MINUTE: f64 = 0.02;

/// Stream numbers: callers from 1, then the background, the day jitter and the incidents.
const STREAM_BACKGROUND: u64 = 100;
const STREAM_DAY_JITTER: u64 = 1_000;
const STREAM_INCIDENTS: u64 = 10_000;

/// One simulated call: what the engine reads, plus the fields of the gateway's event line.
#[derive(Debug, Clone, PartialEq)]
pub struct SimulatedEvent {
    pub event: DetectEvent,
    pub method: &'static str,
    /// The operation's path template; `None` when no operation matched.
    pub path: Option<&'static str>,
    /// `grant-N` of the call's grant, when it was authorized.
    pub policy: Option<usize>,
    pub upstream_addr: Option<&'static str>,
    pub protocol: &'static str,
    pub request_id: u128,
}

/// A line of `events.jsonl`, in the gateway's field order (docs/EVENTS.md).
#[derive(Serialize)]
struct GatewayEventLine<'a> {
    schema_version: u32,
    time: String,
    request_id: String,
    integration: Option<&'a str>,
    caller: Option<&'a str>,
    operation: Option<&'a str>,
    method: &'a str,
    path: Option<&'a str>,
    status: u16,
    decision: &'a str,
    reason: &'a str,
    policy: Option<String>,
    request_bytes: u64,
    response_bytes: u64,
    duration_ms: f64,
    upstream_addr: Option<&'a str>,
    source_ip: &'a str,
    auth: Option<&'a str>,
    protocol: &'a str,
}

impl SimulatedEvent {
    /// The event as one line of the gateway's `events.jsonl` (without the newline).
    pub fn to_gateway_json(&self) -> String {
        let event = &self.event;
        let line = GatewayEventLine {
            schema_version: 1,
            time: format_rfc3339_millis(event.time_unix_ms),
            request_id: format!("{:032x}", self.request_id),
            integration: event.integration.as_deref(),
            caller: event.caller.as_deref(),
            operation: event.operation.as_deref(),
            method: self.method,
            path: self.path,
            status: event.status,
            decision: event.decision.as_deref().unwrap_or("allow"),
            reason: event.reason.as_deref().unwrap_or("granted"),
            policy: self.policy.map(|index| format!("grant-{index}")),
            request_bytes: event.request_bytes,
            response_bytes: event.response_bytes,
            duration_ms: event.duration_ms,
            upstream_addr: self.upstream_addr,
            source_ip: event.source_ip.as_deref().unwrap_or("127.0.0.1"),
            auth: event.caller.as_ref().map(|_| "token"),
            protocol: self.protocol,
        };
        serde_json::to_string(&line).expect("an event line always serializes")
    }
}

/// What a run includes besides the ordinary traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Traffic {
    pub incidents: bool,
    pub benign_shifts: bool,
}

pub(crate) struct Generator<'a> {
    pub seed: u64,
    pub estate: &'a Estate,
    pub incidents: &'a [Incident],
    pub shifts: &'a [BenignShift],
    /// Multiplies every caller's rate.
    pub scale: f64,
}

fn draw(rng: &mut Rng, quantity: LogNormal) -> f64 {
    if quantity.median <= 0.0 {
        0.0
    } else {
        rng.log_normal(quantity.median, quantity.sigma)
    }
}

/// Milliseconds rounded to microseconds, as the gateway writes them.
fn round_ms(value: f64) -> f64 {
    (value * 1_000.0).round() / 1_000.0
}

impl Generator<'_> {
    /// Caller `index`'s mean calls in unix minute `minute`.
    pub fn rate(&self, index: usize, minute: i64, with_shifts: bool) -> f64 {
        let caller = &self.estate.callers[index];
        let minute_ms = minute * MINUTE_MS;
        let stream = 1 + index as u64;
        let day = minute_ms.div_euclid(DAY_MS);
        let jitter = Rng::for_stream(self.seed, STREAM_DAY_JITTER + stream, day).uniform();
        let activity = caller.activity(minute_ms + MINUTE_MS / 2, jitter);
        let mut rate = caller.peak_per_minute * activity * self.scale;
        if with_shifts {
            for shift in self.shifts {
                if shift.caller_index == index && shift.start_unix_ms <= minute_ms {
                    rate *= shift.multiplier;
                }
            }
        }
        rate
    }

    /// Appends the events of unix minute `minute`, in time order.
    pub fn minute(&self, minute: i64, traffic: Traffic, out: &mut Vec<SimulatedEvent>) {
        let first = out.len();
        let minute_ms = minute * MINUTE_MS;
        let failures: Vec<Option<VendorFailure>> = (0..self.estate.integrations.len())
            .map(|integration| {
                if !traffic.incidents {
                    return None;
                }
                self.incidents
                    .iter()
                    .find_map(|incident| match incident.plan {
                        Plan::Vendor {
                            integration: target,
                            failure,
                        } if target == integration
                            && incident.start_unix_ms <= minute_ms
                            && minute_ms < incident.end_unix_ms =>
                        {
                            Some(failure)
                        }
                        _ => None,
                    })
            })
            .collect();
        for (index, caller) in self.estate.callers.iter().enumerate() {
            let stream = 1 + index as u64;
            let rate = self.rate(index, minute, traffic.benign_shifts);
            let mut rng = Rng::for_stream(self.seed, stream, minute);
            let count = rng.poisson(rate);
            let weights: Vec<f64> = caller
                .operations
                .iter()
                .map(|(_, weight)| *weight)
                .collect();
            for _ in 0..count {
                let time = minute_ms + rng.below(MINUTE_MS as usize) as i64;
                let operation = caller.operations[rng.weighted(&weights)].0;
                let source = caller.sources[rng.below(caller.sources.len())];
                let event = self.forwarded(
                    &mut rng,
                    caller.integration,
                    caller.name,
                    index,
                    operation,
                    time,
                    source,
                    (None, None),
                    failures[caller.integration],
                );
                out.push(event);
            }
        }
        let mut rng = Rng::for_stream(self.seed, STREAM_BACKGROUND, minute);
        for _ in 0..rng.poisson(BACKGROUND_UNAUTHENTICATED_PER_MINUTE * self.scale) {
            let time = minute_ms + rng.below(MINUTE_MS as usize) as i64;
            let source = format!("10.20.{}.{}", 1 + rng.below(9), 100 + rng.below(50));
            out.push(unauthenticated(&mut rng, time, &source));
        }
        if traffic.incidents {
            for (number, incident) in self.incidents.iter().enumerate() {
                if let Plan::Calls(calls) = &incident.plan {
                    let from = incident.start_unix_ms.max(minute_ms);
                    let to = incident.end_unix_ms.min(minute_ms + MINUTE_MS);
                    if from < to {
                        let stream = STREAM_INCIDENTS + number as u64;
                        let mut rng = Rng::for_stream(self.seed, stream, minute);
                        self.extra_calls(&mut rng, calls, from, to, &failures, out);
                    }
                }
            }
        }
        out[first..].sort_by_key(|event| event.event.time_unix_ms);
    }

    fn extra_calls(
        &self,
        rng: &mut Rng,
        calls: &ExtraCalls,
        from_ms: i64,
        to_ms: i64,
        failures: &[Option<VendorFailure>],
        out: &mut Vec<SimulatedEvent>,
    ) {
        let share = (to_ms - from_ms) as f64 / MINUTE_MS as f64;
        let count = rng.poisson(calls.rate_per_minute * share * self.scale);
        for _ in 0..count {
            let time = from_ms + rng.below((to_ms - from_ms) as usize) as i64;
            let (Some(integration), Some(caller)) = (calls.integration, calls.caller.as_deref())
            else {
                out.push(unauthenticated(rng, time, &calls.source));
                continue;
            };
            let caller_index = self
                .estate
                .callers
                .iter()
                .position(|known| known.name == caller)
                .unwrap_or(self.estate.callers.len());
            let operation = calls.operations[rng.below(calls.operations.len())];
            let sizes = (calls.request_bytes, calls.response_bytes);
            let mut event = self.forwarded(
                rng,
                integration,
                caller,
                caller_index,
                operation,
                time,
                &calls.source,
                sizes,
                failures[integration],
            );
            match &calls.outcome {
                ExtraOutcome::Forwarded | ExtraOutcome::Unauthenticated => {}
                ExtraOutcome::Enumerate {
                    granted,
                    unknown_path_share,
                } => {
                    if rng.chance(*unknown_path_share) {
                        refuse(&mut event, 403, "operation_not_allowed", rng);
                        event.event.operation = None;
                        event.path = None;
                    } else if !granted.contains(&operation) {
                        refuse(&mut event, 403, "not_granted", rng);
                    }
                }
                ExtraOutcome::RateLimited { limit_per_minute } => {
                    let limited = 1.0 - limit_per_minute / calls.rate_per_minute.max(1e-9);
                    if rng.chance(limited) {
                        refuse(&mut event, 429, "rate_limited", rng);
                        // Refused after authorization: the decision stays `allow`.
                        event.event.decision = Some("allow".into());
                    }
                }
            }
            out.push(event);
        }
    }

    /// An authorized call forwarded to the vendor, and the vendor's answer. A vendor failure
    /// is applied from its own random stream, so the call draws the same numbers either way.
    #[allow(clippy::too_many_arguments)]
    fn forwarded(
        &self,
        rng: &mut Rng,
        integration: usize,
        caller: &str,
        caller_index: usize,
        operation: usize,
        time_ms: i64,
        source: &str,
        (request_size, response_size): (Option<LogNormal>, Option<LogNormal>),
        failure: Option<VendorFailure>,
    ) -> SimulatedEvent {
        let model = &self.estate.integrations[integration];
        let op: &Operation = &model.operations[operation];
        let request_bytes = draw(rng, request_size.unwrap_or(op.request_bytes)).round() as u64;
        let latency = draw(rng, op.latency_ms);
        let success_bytes = draw(rng, response_size.unwrap_or(op.response_bytes));
        let mut outcome_draw = rng.uniform();
        let (error_bytes, pick) = (rng.log_normal(300.0, 0.3), rng.below(5));
        let timeout = REQUEST_TIMEOUT_MS + rng.log_normal(3.0, 0.5);
        let protocol = if rng.chance(0.3) {
            "HTTP/2"
        } else {
            "HTTP/1.1"
        };
        let request_id = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
        let mut next = |share: f64| {
            let hit = outcome_draw < share;
            outcome_draw -= share;
            hit
        };
        let (status, reason, response_bytes, duration_ms) = if next(model.client_error_rate) {
            let status = [400, 404, 404, 409, 422][pick];
            (status, "granted", error_bytes, latency * 0.6)
        } else if next(model.server_error_rate) {
            let status = [500, 502, 503, 500, 503][pick];
            (status, "granted", error_bytes, latency * 1.5)
        } else if next(model.vendor_throttle_rate) {
            (429, "granted", error_bytes, latency * 0.3)
        } else if next(0.000_3) {
            (504, "upstream_timeout", 0.0, timeout)
        } else if next(0.000_05) {
            (401, "granted", error_bytes, latency * 0.4)
        } else {
            let status = if matches!(op.method, "PATCH" | "DELETE") {
                204
            } else {
                200
            };
            (status, "granted", success_bytes, latency)
        };
        let (status, reason, response_bytes, duration_ms) = match failure {
            None => (status, reason, response_bytes, duration_ms),
            Some(failure) => {
                let mut rng = Rng::new(request_id as u64);
                match failure {
                    VendorFailure::CredentialRevoked => {
                        (401, "granted", rng.log_normal(300.0, 0.2), latency * 0.4)
                    }
                    VendorFailure::Outage { timeout_share } if rng.chance(timeout_share) => {
                        (504, "upstream_timeout", 0.0, timeout)
                    }
                    VendorFailure::Outage { .. } => (
                        503,
                        "granted",
                        rng.log_normal(200.0, 0.2),
                        rng.log_normal(60.0, 0.5),
                    ),
                }
            }
        };
        SimulatedEvent {
            event: DetectEvent {
                time_unix_ms: time_ms,
                integration: Some(model.name.into()),
                caller: Some(caller.into()),
                operation: Some(op.name.into()),
                status,
                request_bytes,
                response_bytes: response_bytes.round() as u64,
                duration_ms: round_ms(duration_ms),
                source_ip: Some(source.into()),
                decision: Some("allow".into()),
                reason: Some(reason.into()),
                host: None,
            },
            method: op.method,
            path: Some(op.path),
            policy: Some(caller_index),
            upstream_addr: Some(model.upstream_addr),
            protocol,
            request_id,
        }
    }
}

/// Turns a forwarded call into one the gateway refused before forwarding.
fn refuse(event: &mut SimulatedEvent, status: u16, reason: &str, rng: &mut Rng) {
    event.event.status = status;
    event.event.reason = Some(reason.to_owned().into());
    event.event.decision = Some("deny".into());
    event.event.request_bytes = 0;
    event.event.response_bytes = 0;
    event.event.duration_ms = round_ms(rng.log_normal(0.05, 0.3));
    event.policy = None;
    event.upstream_addr = None;
}

/// A call refused with 401 before routing: no integration, caller or operation.
fn unauthenticated(rng: &mut Rng, time_ms: i64, source: &str) -> SimulatedEvent {
    SimulatedEvent {
        event: DetectEvent {
            time_unix_ms: time_ms,
            integration: None,
            caller: None,
            operation: None,
            status: 401,
            request_bytes: 0,
            response_bytes: 0,
            duration_ms: round_ms(rng.log_normal(0.04, 0.3)),
            source_ip: Some(source.into()),
            decision: Some("deny".into()),
            reason: Some("caller_unauthenticated".into()),
            host: None,
        },
        method: if rng.chance(0.5) { "GET" } else { "POST" },
        path: None,
        policy: None,
        upstream_addr: None,
        protocol: "HTTP/1.1",
        request_id: (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64()),
    }
}
