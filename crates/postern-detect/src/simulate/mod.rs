//! A traffic simulator for the behaviour engine, and an evaluator that scores the engine's
//! alerts against the incidents the simulator injected.
//!
//! Sans-IO like the rest of the crate: a seeded random source, no clock, no files. The run's
//! events and alerts are handed to a [`SimulationObserver`] (the CLI writes them to files).
//!
//! ## What is simulated
//! An estate of four vendor integrations (Stripe, Twilio, OpenAI, Salesforce) and nine calling
//! services: customer-facing ones with a daily cycle (low at night, lower at weekends),
//! weekday back-office jobs, and a nightly batch job. Calls arrive as a Poisson process at the
//! caller's rate for the minute; each picks one of the caller's operations by weight, has
//! log-normal request and response sizes and latency, and gets the vendor's usual share of
//! 4xx, 5xx, 429 and timeouts. A trickle of calls is refused at the gateway for stale tokens.
//!
//! On top of that, in the evaluation period only:
//! - **benign level shifts**: a caller's traffic steps up permanently by +50 % to +200 %;
//! - **incidents** ([`IncidentKind`]), each with a start, an end, an integration and (unless
//!   it concerns the whole integration) a caller.
//!
//! ## A run
//! [`run_simulation`] generates the warm-up period and feeds it to an engine with the default
//! settings (the engine `postern serve` runs), then continues the same engine three ways over
//! the evaluation period: with incidents and shifts, with shifts only, and with neither. The
//! ordinary traffic is identical in the three (every caller and minute has its own random
//! stream), so the clean runs measure false alerts on exactly the traffic the incidents were
//! hidden in. [`evaluate::evaluate`] scores each.

pub mod evaluate;
mod incidents;
mod model;
mod rng;
mod traffic;

use std::collections::BTreeMap;

use serde::Serialize;

pub use evaluate::{
    AlertKindSummary, Evaluation, IncidentKindSummary, IncidentOutcome, Matching, TimedAlert,
};
pub use incidents::{BenignShift, Incident, IncidentKind};
pub use traffic::{SimulatedEvent, Traffic};

use crate::engine::{Alert, Engine, EngineConfig};
use crate::error::DetectError;
use crate::timestamp::format_rfc3339_millis;
use model::Estate;
use rng::Rng;
use traffic::Generator;

const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 86_400_000;

/// 2026-11-30T00:00:00Z, a Monday.
pub const DEFAULT_START_UNIX_MS: i64 = 1_795_996_800_000;

/// What to simulate.
#[derive(Debug, Clone, PartialEq)]
pub struct SimulationConfig {
    pub seed: u64,
    /// Start of the warm-up period (unix milliseconds; best at 00:00 UTC).
    pub start_unix_ms: i64,
    /// Days of clean traffic before the evaluation period (the engine's alerts in them are
    /// counted but not evaluated). Off-hours alerts need a week of history.
    pub warmup_days: u32,
    pub evaluation_days: u32,
    /// The incident kinds to inject (none: clean runs only).
    pub incident_kinds: Vec<IncidentKind>,
    /// Incidents of each kind.
    pub incidents_per_kind: u32,
    /// Benign level shifts in the evaluation period.
    pub benign_shifts: u32,
    /// Multiplies every caller's call rate.
    pub traffic_scale: f64,
    /// Alerts up to this many minutes after an incident's end still count for it.
    pub detection_slack_minutes: u32,
    /// Alerts within this many minutes after a benign shift (on its caller or integration) are
    /// not counted as false.
    pub shift_grace_minutes: u32,
}

impl SimulationConfig {
    /// `warmup_days` of warm-up, then `evaluation_days` with one incident of every kind and one
    /// benign shift per evaluation day.
    pub fn new(seed: u64, warmup_days: u32, evaluation_days: u32) -> Self {
        Self {
            seed,
            start_unix_ms: DEFAULT_START_UNIX_MS,
            warmup_days,
            evaluation_days,
            incident_kinds: IncidentKind::ALL.to_vec(),
            incidents_per_kind: evaluation_days,
            benign_shifts: evaluation_days,
            traffic_scale: 1.0,
            detection_slack_minutes: 15,
            shift_grace_minutes: 120,
        }
    }

    pub fn evaluation_start_unix_ms(&self) -> i64 {
        self.start_unix_ms + i64::from(self.warmup_days) * DAY_MS
    }

    pub fn end_unix_ms(&self) -> i64 {
        self.evaluation_start_unix_ms() + i64::from(self.evaluation_days) * DAY_MS
    }
}

impl Default for SimulationConfig {
    fn default() -> Self {
        Self::new(1, 14, 7)
    }
}

/// The estate, incidents and shifts of a configuration: deterministic in the seed.
pub struct Scenario {
    pub config: SimulationConfig,
    pub incidents: Vec<Incident>,
    pub shifts: Vec<BenignShift>,
    estate: Estate,
}

impl Scenario {
    pub fn new(config: SimulationConfig) -> Self {
        let estate = model::default_estate();
        let mut rng = Rng::new(config.seed ^ 0x1c1d_e475);
        let (from, to) = (config.evaluation_start_unix_ms(), config.end_unix_ms());
        let incidents = incidents::schedule_incidents(
            &estate,
            &mut rng,
            &config.incident_kinds,
            config.incidents_per_kind,
            from,
            to,
            i64::from(config.detection_slack_minutes) * MINUTE_MS,
        );
        let mut shifts =
            incidents::schedule_shifts(&estate, &mut rng, config.benign_shifts, from, to);
        for index in 0..shifts.len() {
            let generator = Generator {
                seed: config.seed,
                estate: &estate,
                incidents: &incidents,
                shifts: &shifts,
                scale: config.traffic_scale,
            };
            let start = shifts[index].start_unix_ms.div_euclid(MINUTE_MS);
            let caller = shifts[index].caller_index;
            let visible = (start..start + 7 * 1_440)
                .find(|&minute| generator.rate(caller, minute, false) > 0.0)
                .unwrap_or(start);
            shifts[index].visible_from_unix_ms =
                (visible * MINUTE_MS).max(shifts[index].start_unix_ms);
        }
        Scenario {
            config,
            incidents,
            shifts,
            estate,
        }
    }

    /// Appends the events of unix minute `minute` (time order).
    pub fn minute_events(&self, minute: i64, traffic: Traffic, out: &mut Vec<SimulatedEvent>) {
        Generator {
            seed: self.config.seed,
            estate: &self.estate,
            incidents: &self.incidents,
            shifts: &self.shifts,
            scale: self.config.traffic_scale,
        }
        .minute(minute, traffic, out);
    }

    /// Every event of the run with `traffic`, from the start of the warm-up to the end.
    pub fn events(&self, traffic: Traffic) -> impl Iterator<Item = SimulatedEvent> + '_ {
        let first = self.config.start_unix_ms.div_euclid(MINUTE_MS);
        let last = self.config.end_unix_ms().div_euclid(MINUTE_MS);
        (first..last).flat_map(move |minute| {
            let mut events = Vec::new();
            self.minute_events(minute, traffic, &mut events);
            events
        })
    }
}

/// Receives a run's events and alerts as they happen (the run with incidents and shifts only),
/// and its progress.
pub trait SimulationObserver {
    fn event(&mut self, _event: &SimulatedEvent) -> std::io::Result<()> {
        Ok(())
    }
    fn alert(&mut self, _alert: &Alert) -> std::io::Result<()> {
        Ok(())
    }
    /// Simulated minutes done, of the total over all runs.
    fn progress(&mut self, _done_minutes: u64, _total_minutes: u64) {}
}

/// An observer that ignores everything.
pub struct Unobserved;

impl SimulationObserver for Unobserved {}

/// False alerts on a run without incidents.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CleanRun {
    pub events: u64,
    pub alerts: u64,
    pub shift_grace_alerts: u64,
    pub false_alerts: u64,
    pub false_alerts_per_day: f64,
    pub false_alerts_by_kind: BTreeMap<String, u64>,
    pub false_alert_examples: Vec<Alert>,
}

impl CleanRun {
    fn from(evaluation: &Evaluation, events: u64) -> Self {
        CleanRun {
            events,
            alerts: evaluation.alerts,
            shift_grace_alerts: evaluation.shift_grace_alerts,
            false_alerts: evaluation.false_alerts,
            false_alerts_per_day: evaluation.false_alerts_per_day,
            false_alerts_by_kind: evaluation
                .by_alert_kind
                .iter()
                .filter(|summary| summary.false_alerts > 0)
                .map(|summary| (summary.kind.as_str().to_owned(), summary.false_alerts))
                .collect(),
            false_alert_examples: evaluation.false_alert_examples.clone(),
        }
    }
}

/// The outcome of [`run_simulation`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimulationReport {
    pub seed: u64,
    #[serde(serialize_with = "serialize_time")]
    pub start: i64,
    #[serde(serialize_with = "serialize_time")]
    pub evaluation_start: i64,
    #[serde(serialize_with = "serialize_time")]
    pub end: i64,
    pub warmup_days: u32,
    pub evaluation_days: u32,
    pub detection_slack_minutes: u32,
    pub shift_grace_minutes: u32,
    /// Events of the run with incidents and shifts (warm-up included).
    pub events: u64,
    /// Alerts the engine raised during the warm-up (not evaluated).
    pub warmup_alerts: u64,
    /// The run with incidents and benign shifts.
    pub evaluation: Evaluation,
    /// The same traffic with the benign shifts but no incidents.
    pub clean_with_shifts: CleanRun,
    /// The same traffic with neither.
    pub clean_without_shifts: CleanRun,
    pub benign_shifts: Vec<BenignShift>,
    /// Wall-clock seconds of the whole simulation (generation, engine, evaluation).
    pub seconds: f64,
    /// Events through the engine per second, over all runs.
    pub events_per_second: f64,
}

pub(crate) fn serialize_time<S: serde::Serializer>(
    unix_ms: &i64,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format_rfc3339_millis(*unix_ms))
}

/// Where a run's progress stands, over all runs.
struct Progress {
    done: u64,
    total: u64,
}

/// Feeds the events of unix minutes `minutes` through `engine`, collecting its alerts; the
/// events and alerts go to `observer` too when `observed`. Returns the event count.
#[allow(clippy::too_many_arguments)]
fn feed(
    scenario: &Scenario,
    engine: &mut Engine,
    minutes: std::ops::Range<i64>,
    traffic: Traffic,
    alerts: &mut Vec<TimedAlert>,
    observer: &mut dyn SimulationObserver,
    observed: bool,
    progress: &mut Progress,
) -> Result<u64, DetectError> {
    let mut events = Vec::new();
    let mut count = 0u64;
    for minute in minutes {
        events.clear();
        scenario.minute_events(minute, traffic, &mut events);
        for simulated in &events {
            if observed {
                observer
                    .event(simulated)
                    .map_err(DetectError::SimulationOutput)?;
            }
            let now = simulated.event.time_unix_ms;
            for alert in engine.observe(&simulated.event, now) {
                if observed {
                    observer
                        .alert(&alert)
                        .map_err(DetectError::SimulationOutput)?;
                }
                alerts.push(TimedAlert {
                    time_unix_ms: now,
                    alert,
                });
            }
        }
        count += events.len() as u64;
        progress.done += 1;
        if progress.done.is_multiple_of(60) || progress.done == progress.total {
            observer.progress(progress.done, progress.total);
        }
    }
    Ok(count)
}

/// Runs the simulation: warm-up, then the evaluation period with incidents and shifts, with
/// shifts only, and with neither, each continuing the same warmed-up default engine; evaluates
/// the alerts of each. Only the first run's events and alerts go to `observer`.
pub fn run_simulation(
    config: &SimulationConfig,
    observer: &mut dyn SimulationObserver,
) -> Result<SimulationReport, DetectError> {
    let started = std::time::Instant::now();
    let scenario = Scenario::new(config.clone());
    let first = config.start_unix_ms.div_euclid(MINUTE_MS);
    let evaluation_start = config.evaluation_start_unix_ms().div_euclid(MINUTE_MS);
    let last = config.end_unix_ms().div_euclid(MINUTE_MS);
    let with_incidents = !scenario.incidents.is_empty();
    let runs = if with_incidents { 3 } else { 2 };
    let mut progress = Progress {
        done: 0,
        total: (evaluation_start - first + runs * (last - evaluation_start)) as u64,
    };
    let matching = Matching {
        slack_ms: i64::from(config.detection_slack_minutes) * MINUTE_MS,
        grace_ms: i64::from(config.shift_grace_minutes) * MINUTE_MS,
        from_ms: config.evaluation_start_unix_ms(),
        to_ms: config.end_unix_ms(),
    };
    let everything = Traffic {
        incidents: true,
        benign_shifts: true,
    };
    let shifts_only = Traffic {
        incidents: false,
        benign_shifts: true,
    };
    let nothing = Traffic {
        incidents: false,
        benign_shifts: false,
    };

    let mut engine = Engine::new(EngineConfig::default());
    let mut alerts = Vec::new();
    let warmup_events = feed(
        &scenario,
        &mut engine,
        first..evaluation_start,
        everything,
        &mut alerts,
        observer,
        true,
        &mut progress,
    )?;
    let warmup_alerts = alerts.len() as u64;
    let warm = engine.clone();
    let main_events = feed(
        &scenario,
        &mut engine,
        evaluation_start..last,
        everything,
        &mut alerts,
        observer,
        true,
        &mut progress,
    )?;
    let kinds = &config.incident_kinds;
    let main = evaluate::evaluate(
        &scenario.incidents,
        &scenario.shifts,
        &alerts,
        matching,
        kinds,
    );

    let mut engine_events = warmup_events + main_events;
    let mut clean = |traffic: Traffic| -> Result<CleanRun, DetectError> {
        let mut engine = warm.clone();
        let mut alerts = Vec::new();
        let events = feed(
            &scenario,
            &mut engine,
            evaluation_start..last,
            traffic,
            &mut alerts,
            observer,
            false,
            &mut progress,
        )?;
        engine_events += events;
        let shifts: &[BenignShift] = if traffic.benign_shifts {
            &scenario.shifts
        } else {
            &[]
        };
        let evaluation = evaluate::evaluate(&[], shifts, &alerts, matching, &[]);
        Ok(CleanRun::from(&evaluation, events))
    };
    let clean_with_shifts = if with_incidents {
        clean(shifts_only)?
    } else {
        // Without incidents the first run is the clean run with shifts.
        CleanRun::from(&main, main_events)
    };
    let clean_without_shifts = clean(nothing)?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(SimulationReport {
        seed: config.seed,
        start: config.start_unix_ms,
        evaluation_start: config.evaluation_start_unix_ms(),
        end: config.end_unix_ms(),
        warmup_days: config.warmup_days,
        evaluation_days: config.evaluation_days,
        detection_slack_minutes: config.detection_slack_minutes,
        shift_grace_minutes: config.shift_grace_minutes,
        events: warmup_events + main_events,
        warmup_alerts,
        evaluation: main,
        clean_with_shifts,
        clean_without_shifts,
        benign_shifts: scenario.shifts.clone(),
        seconds,
        events_per_second: engine_events as f64 / seconds.max(1e-9),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shift_shows_when_its_caller_is_next_active() {
        let mut config = SimulationConfig::new(9, 1, 6);
        config.benign_shifts = 40;
        let scenario = Scenario::new(config);
        let generator = Generator {
            seed: scenario.config.seed,
            estate: &scenario.estate,
            incidents: &scenario.incidents,
            shifts: &scenario.shifts,
            scale: 1.0,
        };
        let mut later = 0;
        for shift in &scenario.shifts {
            let visible = shift.visible_from_unix_ms.div_euclid(MINUTE_MS);
            assert!(
                generator.rate(shift.caller_index, visible, false) > 0.0,
                "{shift:?}"
            );
            if shift.visible_from_unix_ms > shift.start_unix_ms + MINUTE_MS {
                // Only callers that rest: the nightly batch job and the weekday jobs.
                assert!(
                    ["reconciliation", "billing", "summarizer", "crm-sync"]
                        .contains(&shift.caller.as_str()),
                    "{shift:?}"
                );
                later += 1;
            }
        }
        assert!(later > 0, "{:?}", scenario.shifts);
    }
}
