//! Labelled incidents and benign level shifts: what they are, which alert kinds count as
//! detecting them, and where a run places them.

use serde::Serialize;

use super::model::{Estate, LogNormal, Shape};
use super::rng::Rng;
use crate::engine::{AlertKind, NO_INTEGRATION};

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;

/// The kinds of incident the simulator can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentKind {
    /// A caller identity the integration has never seen starts calling it (a token issued
    /// outside change control, a leaked token of another service).
    NewIdentity,
    /// An existing caller's token used from an address it never used (a stolen token).
    ForeignSource,
    /// Megabytes of request bodies sent out within minutes.
    ExfiltrationBurst,
    /// A caller's outgoing volume raised a few times over for hours, each minute well below the
    /// burst threshold.
    SlowExfiltration,
    /// Megabytes of responses pulled in within minutes (bulk export).
    BulkDownload,
    /// A caller trying operations it does not use, most refused (403).
    Enumeration,
    /// A run of calls refused at the gateway for unknown caller credentials (401).
    CredentialStuffing,
    /// The vendor refuses the integration's credential (revoked or rotated): its calls get 401.
    VendorCredentialRevoked,
    /// The vendor fails: 5xx answers and timeouts.
    VendorOutage,
    /// A client stuck in a retry loop: tens to hundreds of extra calls a minute.
    RunawayClient,
    /// A weekday back-office caller active at night or at the weekend.
    OffHoursUse,
}

impl IncidentKind {
    pub const ALL: [IncidentKind; 11] = [
        IncidentKind::NewIdentity,
        IncidentKind::ForeignSource,
        IncidentKind::ExfiltrationBurst,
        IncidentKind::SlowExfiltration,
        IncidentKind::BulkDownload,
        IncidentKind::Enumeration,
        IncidentKind::CredentialStuffing,
        IncidentKind::VendorCredentialRevoked,
        IncidentKind::VendorOutage,
        IncidentKind::RunawayClient,
        IncidentKind::OffHoursUse,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NewIdentity => "new_identity",
            Self::ForeignSource => "foreign_source",
            Self::ExfiltrationBurst => "exfiltration_burst",
            Self::SlowExfiltration => "slow_exfiltration",
            Self::BulkDownload => "bulk_download",
            Self::Enumeration => "enumeration",
            Self::CredentialStuffing => "credential_stuffing",
            Self::VendorCredentialRevoked => "vendor_credential_revoked",
            Self::VendorOutage => "vendor_outage",
            Self::RunawayClient => "runaway_client",
            Self::OffHoursUse => "off_hours_use",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == name)
    }

    /// The alert kinds that count as detecting this incident (on its integration, and on its
    /// caller or the integration as a whole).
    pub fn detected_by(self) -> &'static [AlertKind] {
        use AlertKind::*;
        match self {
            Self::NewIdentity => &[
                NewCaller,
                NewOperation,
                NewSource,
                RateSpike,
                VolumeIn,
                Latency,
            ],
            Self::ForeignSource => &[NewSource, OffHours, NewOperation],
            Self::ExfiltrationBurst => &[VolumeOut, NewOperation, RateSpike, Latency, OffHours],
            Self::SlowExfiltration => &[VolumeOut],
            Self::BulkDownload => &[VolumeIn, NewOperation, RateSpike, Latency, OffHours],
            Self::Enumeration => &[NewOperation, ErrorSpike, RateSpike, Latency, OffHours],
            Self::CredentialStuffing => &[CallerAuthFailures, RateSpike],
            Self::VendorCredentialRevoked => &[VendorAuthFailures, ErrorSpike],
            Self::VendorOutage => &[ErrorSpike, Latency],
            Self::RunawayClient => &[RateSpike, ErrorSpike, VolumeIn, VolumeOut, OffHours],
            Self::OffHoursUse => &[OffHours, NewSource, RateSpike],
        }
    }
}

/// One labelled incident.
#[derive(Debug, Clone, PartialEq)]
pub struct Incident {
    pub kind: IncidentKind,
    /// The integration it happens on; `(none)` for calls refused before routing.
    pub integration: String,
    /// The caller it is about; `None` when it concerns the whole integration.
    pub caller: Option<String>,
    pub start_unix_ms: i64,
    /// Exclusive.
    pub end_unix_ms: i64,
    pub(crate) plan: Plan,
}

/// How an incident shows in the traffic.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Plan {
    /// Extra calls on top of the ordinary traffic.
    Calls(ExtraCalls),
    /// The vendor answers the integration's ordinary calls differently.
    Vendor {
        integration: usize,
        failure: VendorFailure,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ExtraCalls {
    /// `None`: refused before routing (no integration in the event).
    pub integration: Option<usize>,
    /// `None`: unauthenticated.
    pub caller: Option<String>,
    pub source: String,
    /// Operations (indices into the integration's), drawn uniformly.
    pub operations: Vec<usize>,
    pub rate_per_minute: f64,
    pub request_bytes: Option<LogNormal>,
    pub response_bytes: Option<LogNormal>,
    pub outcome: ExtraOutcome,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ExtraOutcome {
    /// Forwarded; the vendor answers as it answers anyone.
    Forwarded,
    /// Refused with 401 `caller_unauthenticated`.
    Unauthenticated,
    /// Operations outside `granted` are refused 403 `not_granted`; a share of calls hit paths
    /// that match no operation (403 `operation_not_allowed`).
    Enumerate {
        granted: Vec<usize>,
        unknown_path_share: f64,
    },
    /// Calls beyond the gateway's rate limit of `limit_per_minute` are refused with 429.
    RateLimited { limit_per_minute: f64 },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum VendorFailure {
    /// Every forwarded call answered 401.
    CredentialRevoked,
    /// Forwarded calls time out (504 after the request timeout) with probability
    /// `timeout_share`, and are answered 503 otherwise.
    Outage { timeout_share: f64 },
}

/// A permanent, benign step in a caller's traffic (a new customer, a feature launch).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenignShift {
    pub integration: String,
    pub caller: String,
    #[serde(rename = "start", serialize_with = "super::serialize_time")]
    pub start_unix_ms: i64,
    /// Traffic is multiplied by this from `start` on (1.5 = +50 %).
    pub multiplier: f64,
    /// The first minute the caller is active after `start` (a nightly job's step shows at its
    /// next run): the grace period counts from here.
    #[serde(rename = "visible_from", serialize_with = "super::serialize_time")]
    pub visible_from_unix_ms: i64,
    #[serde(skip)]
    pub(crate) caller_index: usize,
}

/// Names for identities nobody expected.
const NEW_IDENTITIES: &[&str] = &[
    "data-export",
    "analytics-etl",
    "ci-deploy",
    "intern-sandbox",
    "backup-job",
    "growth-experiments",
    "legacy-cron",
    "partner-portal",
    "qa-automation",
    "ops-debug",
];

/// Places `per_kind` incidents of each of `kinds` in [`from_ms`, `to_ms`), avoiding overlaps
/// on the same integration where it can.
pub(crate) fn schedule_incidents(
    estate: &Estate,
    rng: &mut Rng,
    kinds: &[IncidentKind],
    per_kind: u32,
    from_ms: i64,
    to_ms: i64,
    slack_ms: i64,
) -> Vec<Incident> {
    let mut incidents: Vec<Incident> = Vec::new();
    let mut serial = 0usize;
    for _ in 0..per_kind {
        for &kind in kinds {
            let mut candidate = None;
            for _attempt in 0..200 {
                let Some(incident) = plan(estate, rng, kind, serial, from_ms, to_ms, slack_ms)
                else {
                    continue;
                };
                let clashes = incidents.iter().any(|other| {
                    other.integration == incident.integration
                        && other.start_unix_ms < incident.end_unix_ms + HOUR_MS
                        && incident.start_unix_ms < other.end_unix_ms + HOUR_MS
                });
                candidate = Some(incident);
                if !clashes {
                    break;
                }
            }
            if let Some(incident) = candidate {
                incidents.push(incident);
                serial += 1;
            }
        }
    }
    incidents.sort_by_key(|incident| incident.start_unix_ms);
    incidents
}

/// One incident of `kind` at a random time and place; `None` when the draw does not fit the
/// window (the caller retries).
fn plan(
    estate: &Estate,
    rng: &mut Rng,
    kind: IncidentKind,
    serial: usize,
    from_ms: i64,
    to_ms: i64,
    slack_ms: i64,
) -> Option<Incident> {
    let minutes = |rng: &mut Rng, low: f64, high: f64| (rng.range(low, high) * 60_000.0) as i64;
    let any_start = |rng: &mut Rng, duration: i64| {
        let earliest = from_ms + 30 * MINUTE_MS;
        let latest = to_ms - duration - slack_ms;
        (latest > earliest).then(|| earliest + (rng.uniform() * (latest - earliest) as f64) as i64)
    };
    // Callers that run around the clock or in business hours (not the nightly batch job).
    let ordinary_callers: Vec<usize> = (0..estate.callers.len())
        .filter(|&index| !matches!(estate.callers[index].shape, Shape::DailyBatch { .. }))
        .collect();
    let pick = |rng: &mut Rng, from: &[usize]| from[rng.below(from.len())];
    let caller_calls = |caller: usize, operations: Vec<usize>, rate: f64| ExtraCalls {
        integration: Some(estate.callers[caller].integration),
        caller: Some(estate.callers[caller].name.to_owned()),
        source: estate.callers[caller].sources[0].to_owned(),
        operations,
        rate_per_minute: rate,
        request_bytes: None,
        response_bytes: None,
        outcome: ExtraOutcome::Forwarded,
    };
    let usual_operations = |caller: usize| -> Vec<usize> {
        estate.callers[caller]
            .operations
            .iter()
            .map(|(op, _)| *op)
            .collect()
    };

    let (plan, duration, start) = match kind {
        IncidentKind::NewIdentity => {
            let integration = rng.below(estate.integrations.len());
            let model = &estate.integrations[integration];
            let reads: Vec<usize> = (0..model.operations.len())
                .filter(|&op| model.operations[op].method == "GET")
                .collect();
            let operations: Vec<usize> = (0..3).map(|_| pick(rng, &reads)).collect();
            let base = NEW_IDENTITIES[serial % NEW_IDENTITIES.len()];
            let name = format!("{base}-{serial}");
            let duration = minutes(rng, 10.0, 60.0);
            let calls = ExtraCalls {
                integration: Some(integration),
                caller: Some(name.clone()),
                source: format!("10.20.200.{}", serial % 250 + 1),
                operations,
                rate_per_minute: rng.range(1.0, 4.0),
                request_bytes: None,
                response_bytes: None,
                outcome: ExtraOutcome::Forwarded,
            };
            (Plan::Calls(calls), duration, any_start(rng, duration)?)
        }
        IncidentKind::ForeignSource => {
            let caller = pick(rng, &ordinary_callers);
            let duration = minutes(rng, 15.0, 120.0);
            let mut calls = caller_calls(caller, usual_operations(caller), rng.range(1.0, 3.0));
            calls.source = format!("203.0.113.{}", serial % 250 + 1);
            let start = any_start(rng, duration)?;
            (Plan::Calls(calls), duration, start)
        }
        IncidentKind::ExfiltrationBurst => {
            let caller = pick(rng, &ordinary_callers);
            let model = &estate.integrations[estate.callers[caller].integration];
            let upload = model.operation(model.upload_operation);
            let mut calls = caller_calls(caller, vec![upload], rng.range(3.0, 10.0));
            calls.request_bytes = Some(LogNormal {
                median: 1_500_000.0,
                sigma: 0.4,
            });
            let duration = minutes(rng, 3.0, 10.0);
            let start = any_start(rng, duration)?;
            (Plan::Calls(calls), duration, start)
        }
        IncidentKind::SlowExfiltration => {
            // Hidden in a caller that writes around the clock.
            let candidates: Vec<usize> = ordinary_callers
                .iter()
                .copied()
                .filter(|&index| {
                    let caller = &estate.callers[index];
                    caller.write_operation.is_some()
                        && matches!(caller.shape, Shape::Interactive { .. })
                })
                .collect();
            let caller = pick(rng, &candidates);
            let write = estate.callers[caller].write_operation?;
            let mut calls = caller_calls(caller, vec![write], rng.range(0.6, 1.5));
            calls.request_bytes = Some(LogNormal {
                median: 100_000.0,
                sigma: 0.3,
            });
            let duration = minutes(rng, 180.0, 480.0);
            let start = any_start(rng, duration)?;
            (Plan::Calls(calls), duration, start)
        }
        IncidentKind::BulkDownload => {
            let caller = pick(rng, &ordinary_callers);
            let model = &estate.integrations[estate.callers[caller].integration];
            let bulk = model.operation(model.bulk_read_operation);
            let mut calls = caller_calls(caller, vec![bulk], rng.range(2.0, 6.0));
            calls.response_bytes = Some(LogNormal {
                median: 2_500_000.0,
                sigma: 0.5,
            });
            let duration = minutes(rng, 5.0, 20.0);
            let start = any_start(rng, duration)?;
            (Plan::Calls(calls), duration, start)
        }
        IncidentKind::Enumeration => {
            let caller = pick(rng, &ordinary_callers);
            let model = &estate.integrations[estate.callers[caller].integration];
            let usual = usual_operations(caller);
            let others: Vec<usize> = (0..model.operations.len())
                .filter(|op| !usual.contains(op))
                .collect();
            // Some of them happen to be granted (a broad grant); the rest are refused.
            let granted = others.iter().copied().filter(|op| op % 3 == 0).collect();
            let mut calls = caller_calls(caller, others, rng.range(8.0, 30.0));
            // Probes: small or empty bodies.
            calls.request_bytes = Some(LogNormal {
                median: 150.0,
                sigma: 0.5,
            });
            calls.outcome = ExtraOutcome::Enumerate {
                granted,
                unknown_path_share: 0.3,
            };
            let duration = minutes(rng, 5.0, 20.0);
            let start = any_start(rng, duration)?;
            (Plan::Calls(calls), duration, start)
        }
        IncidentKind::CredentialStuffing => {
            let calls = ExtraCalls {
                integration: None,
                caller: None,
                source: format!("198.51.100.{}", serial % 250 + 1),
                operations: Vec::new(),
                rate_per_minute: rng.range(20.0, 120.0),
                request_bytes: None,
                response_bytes: None,
                outcome: ExtraOutcome::Unauthenticated,
            };
            let duration = minutes(rng, 5.0, 30.0);
            (Plan::Calls(calls), duration, any_start(rng, duration)?)
        }
        IncidentKind::VendorCredentialRevoked | IncidentKind::VendorOutage => {
            let integration = rng.below(estate.integrations.len());
            let (failure, duration) = if kind == IncidentKind::VendorOutage {
                let share = rng.range(0.3, 0.8);
                (
                    VendorFailure::Outage {
                        timeout_share: share,
                    },
                    minutes(rng, 10.0, 60.0),
                )
            } else {
                (VendorFailure::CredentialRevoked, minutes(rng, 10.0, 45.0))
            };
            let start = any_start(rng, duration)?;
            (
                Plan::Vendor {
                    integration,
                    failure,
                },
                duration,
                start,
            )
        }
        IncidentKind::RunawayClient => {
            let caller = pick(rng, &ordinary_callers);
            let busiest = estate.callers[caller]
                .operations
                .iter()
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .map(|(op, _)| *op)?;
            let mut calls = caller_calls(caller, vec![busiest], rng.range(40.0, 300.0));
            calls.outcome = ExtraOutcome::RateLimited {
                limit_per_minute: 120.0,
            };
            let duration = minutes(rng, 10.0, 60.0);
            let start = any_start(rng, duration)?;
            (Plan::Calls(calls), duration, start)
        }
        IncidentKind::OffHoursUse => {
            let candidates: Vec<usize> = (0..estate.callers.len())
                .filter(|&index| matches!(estate.callers[index].shape, Shape::BusinessHours { .. }))
                .collect();
            let caller = pick(rng, &candidates);
            let duration = minutes(rng, 10.0, 60.0);
            // A night (00:00–05:00 UTC), or daytime at the weekend.
            let days = ((to_ms - from_ms) / DAY_MS).max(1);
            let day_start =
                from_ms.div_euclid(DAY_MS) * DAY_MS + (rng.below(days as usize) as i64) * DAY_MS;
            let weekend =
                crate::timestamp::hour_of_week((day_start + 12 * HOUR_MS) / 1_000) >= 5 * 24;
            let hour = if weekend {
                rng.range(9.0, 17.0)
            } else {
                rng.range(0.0, 5.0)
            };
            let start = day_start + (hour * 3_600_000.0) as i64;
            if start < from_ms + 30 * MINUTE_MS || start + duration + slack_ms > to_ms {
                return None;
            }
            let calls = caller_calls(caller, usual_operations(caller), rng.range(2.0, 6.0));
            (Plan::Calls(calls), duration, start)
        }
    };
    // Who and where follow from the plan.
    let (integration, caller) = match &plan {
        Plan::Calls(calls) => (calls.integration, calls.caller.clone()),
        Plan::Vendor { integration, .. } => (Some(*integration), None),
    };
    Some(Incident {
        kind,
        integration: integration.map_or_else(
            || NO_INTEGRATION.to_owned(),
            |index| estate.integrations[index].name.to_owned(),
        ),
        caller,
        start_unix_ms: start,
        end_unix_ms: start + duration,
        plan,
    })
}

/// `count` benign steps (+50 % to +200 %) in [`from_ms`, `to_ms`), on distinct callers while
/// there are callers left.
pub(crate) fn schedule_shifts(
    estate: &Estate,
    rng: &mut Rng,
    count: u32,
    from_ms: i64,
    to_ms: i64,
) -> Vec<BenignShift> {
    let mut order: Vec<usize> = (0..estate.callers.len()).collect();
    // Fisher–Yates with the run's generator.
    for index in (1..order.len()).rev() {
        order.swap(index, rng.below(index + 1));
    }
    let earliest = from_ms + HOUR_MS;
    let latest = (to_ms - 6 * HOUR_MS).max(earliest + 1);
    let mut shifts: Vec<BenignShift> = (0..count as usize)
        .map(|index| {
            let caller_index = order[index % order.len()];
            let caller = &estate.callers[caller_index];
            BenignShift {
                integration: estate.integrations[caller.integration].name.to_owned(),
                caller: caller.name.to_owned(),
                start_unix_ms: earliest + (rng.uniform() * (latest - earliest) as f64) as i64,
                multiplier: (rng.range(1.5, 3.0) * 100.0).round() / 100.0,
                visible_from_unix_ms: 0,
                caller_index,
            }
        })
        .collect();
    shifts.sort_by_key(|shift| shift.start_unix_ms);
    shifts
}
