//! Matching alerts to labelled incidents: recall and time to detect per incident kind,
//! precision per alert kind, false alerts per day.
//!
//! An alert **matches** an incident when it is on the incident's integration, on its caller or
//! on the integration as a whole (an alert naming another caller does not match), of a kind in
//! [`IncidentKind::detected_by`], and raised within `[start, end + slack]`. An incident is
//! **detected** when some alert matches it; its time to detect is the first matching alert's
//! time minus the incident's start. **Precision** is the share of the evaluation window's
//! alerts that match some incident. A **false alert** is an alert that matches no incident and
//! is not within the grace period after a benign shift on its integration and caller (counted
//! from the first minute the shifted caller is active).

use std::collections::BTreeMap;

use serde::Serialize;

use super::incidents::{BenignShift, Incident, IncidentKind};
use crate::engine::{Alert, AlertKind};

/// An alert with its time in unix milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct TimedAlert {
    pub time_unix_ms: i64,
    pub alert: Alert,
}

/// The rules of matching.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Matching {
    /// Alerts up to this long after an incident's end still count for it.
    pub slack_ms: i64,
    /// Alerts this long after a benign shift, on its integration (and caller), are not false.
    pub grace_ms: i64,
    /// Only alerts raised in [`from_ms`, `to_ms`) are evaluated.
    pub from_ms: i64,
    pub to_ms: i64,
}

/// How one incident went.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IncidentOutcome {
    pub kind: IncidentKind,
    pub integration: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
    #[serde(serialize_with = "super::serialize_time")]
    pub start: i64,
    #[serde(serialize_with = "super::serialize_time")]
    pub end: i64,
    pub detected: bool,
    /// Seconds from the start to the first matching alert.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_to_detect_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_alert_kind: Option<AlertKind>,
    /// Alerts matching it.
    pub alerts: u64,
}

/// Recall and time to detect of one incident kind.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IncidentKindSummary {
    pub kind: IncidentKind,
    pub detected_by: Vec<AlertKind>,
    pub incidents: u64,
    pub detected: u64,
    /// `None` when there were no incidents of the kind.
    pub recall: Option<f64>,
    pub median_time_to_detect_seconds: Option<f64>,
    pub max_time_to_detect_seconds: Option<f64>,
    /// Alerts matching incidents of this kind.
    pub alerts: u64,
}

/// Precision of one alert kind.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertKindSummary {
    pub kind: AlertKind,
    pub alerts: u64,
    /// Matching some incident.
    pub matched: u64,
    /// Within a benign shift's grace period (and matching no incident).
    pub shift_grace: u64,
    pub false_alerts: u64,
    pub precision: f64,
}

/// Everything measured on one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evaluation {
    pub alerts: u64,
    pub matched_alerts: u64,
    pub precision: Option<f64>,
    pub shift_grace_alerts: u64,
    pub false_alerts: u64,
    pub false_alerts_per_day: f64,
    pub by_incident_kind: Vec<IncidentKindSummary>,
    pub by_alert_kind: Vec<AlertKindSummary>,
    pub incidents: Vec<IncidentOutcome>,
    /// The false alerts themselves (at most 200), to see what the engine got wrong.
    pub false_alert_examples: Vec<Alert>,
}

fn matches(incident: &Incident, alert: &TimedAlert, slack_ms: i64) -> bool {
    alert.alert.integration == incident.integration
        && (alert.alert.caller.is_none()
            || alert.alert.caller == incident.caller
            || incident.caller.is_none())
        && incident.kind.detected_by().contains(&alert.alert.kind)
        && alert.time_unix_ms >= incident.start_unix_ms
        && alert.time_unix_ms <= incident.end_unix_ms + slack_ms
}

fn in_grace(shift: &BenignShift, alert: &TimedAlert, grace_ms: i64) -> bool {
    alert.alert.integration == shift.integration
        && alert
            .alert
            .caller
            .as_deref()
            .is_none_or(|caller| caller == shift.caller)
        && alert.time_unix_ms >= shift.start_unix_ms
        && alert.time_unix_ms <= shift.visible_from_unix_ms + grace_ms
}

/// The median of sorted values.
fn median(sorted: &[f64]) -> Option<f64> {
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// Evaluates `alerts` (in time order) against `incidents` and `shifts`.
pub fn evaluate(
    incidents: &[Incident],
    shifts: &[BenignShift],
    alerts: &[TimedAlert],
    matching: Matching,
    kinds: &[IncidentKind],
) -> Evaluation {
    let window: Vec<&TimedAlert> = alerts
        .iter()
        .filter(|alert| (matching.from_ms..matching.to_ms).contains(&alert.time_unix_ms))
        .collect();
    let mut outcomes: Vec<IncidentOutcome> = incidents
        .iter()
        .map(|incident| IncidentOutcome {
            kind: incident.kind,
            integration: incident.integration.clone(),
            caller: incident.caller.clone(),
            start: incident.start_unix_ms,
            end: incident.end_unix_ms,
            detected: false,
            time_to_detect_seconds: None,
            first_alert_kind: None,
            alerts: 0,
        })
        .collect();
    let mut by_alert_kind: BTreeMap<AlertKind, AlertKindSummary> = BTreeMap::new();
    let (mut matched_alerts, mut shift_grace_alerts, mut false_alerts) = (0u64, 0u64, 0u64);
    let mut false_alert_examples = Vec::new();
    for alert in &window {
        let summary = by_alert_kind
            .entry(alert.alert.kind)
            .or_insert_with(|| AlertKindSummary {
                kind: alert.alert.kind,
                alerts: 0,
                matched: 0,
                shift_grace: 0,
                false_alerts: 0,
                precision: 0.0,
            });
        summary.alerts += 1;
        let mut matched = false;
        for (incident, outcome) in incidents.iter().zip(outcomes.iter_mut()) {
            if matches(incident, alert, matching.slack_ms) {
                matched = true;
                outcome.alerts += 1;
                if !outcome.detected {
                    outcome.detected = true;
                    outcome.time_to_detect_seconds =
                        Some((alert.time_unix_ms - incident.start_unix_ms) as f64 / 1_000.0);
                    outcome.first_alert_kind = Some(alert.alert.kind);
                }
            }
        }
        if matched {
            matched_alerts += 1;
            summary.matched += 1;
        } else if shifts
            .iter()
            .any(|shift| in_grace(shift, alert, matching.grace_ms))
        {
            shift_grace_alerts += 1;
            summary.shift_grace += 1;
        } else {
            false_alerts += 1;
            summary.false_alerts += 1;
            if false_alert_examples.len() < 200 {
                false_alert_examples.push(alert.alert.clone());
            }
        }
    }
    for summary in by_alert_kind.values_mut() {
        summary.precision = summary.matched as f64 / summary.alerts as f64;
    }
    let by_incident_kind = kinds
        .iter()
        .map(|&kind| {
            let of_kind: Vec<&IncidentOutcome> = outcomes
                .iter()
                .filter(|outcome| outcome.kind == kind)
                .collect();
            let mut times: Vec<f64> = of_kind
                .iter()
                .filter_map(|outcome| outcome.time_to_detect_seconds)
                .collect();
            times.sort_by(f64::total_cmp);
            let incidents = of_kind.len() as u64;
            let detected = times.len() as u64;
            IncidentKindSummary {
                kind,
                detected_by: kind.detected_by().to_vec(),
                incidents,
                detected,
                recall: (incidents > 0).then(|| detected as f64 / incidents as f64),
                median_time_to_detect_seconds: median(&times),
                max_time_to_detect_seconds: times.last().copied(),
                alerts: of_kind.iter().map(|outcome| outcome.alerts).sum(),
            }
        })
        .collect();
    let days = (matching.to_ms - matching.from_ms) as f64 / 86_400_000.0;
    let alerts_in_window = window.len() as u64;
    Evaluation {
        alerts: alerts_in_window,
        matched_alerts,
        precision: (alerts_in_window > 0).then(|| matched_alerts as f64 / alerts_in_window as f64),
        shift_grace_alerts,
        false_alerts,
        false_alerts_per_day: false_alerts as f64 / days.max(1e-9),
        by_incident_kind,
        by_alert_kind: by_alert_kind.into_values().collect(),
        incidents: outcomes,
        false_alert_examples,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulate::incidents::{ExtraCalls, ExtraOutcome, Plan};

    const MINUTE: i64 = 60_000;

    fn incident(kind: IncidentKind, caller: Option<&str>, start: i64, end: i64) -> Incident {
        Incident {
            kind,
            integration: "stripe".into(),
            caller: caller.map(str::to_owned),
            start_unix_ms: start,
            end_unix_ms: end,
            plan: Plan::Calls(ExtraCalls {
                integration: Some(0),
                caller: caller.map(str::to_owned),
                source: "10.0.0.1".into(),
                operations: vec![0],
                rate_per_minute: 1.0,
                request_bytes: None,
                response_bytes: None,
                outcome: ExtraOutcome::Forwarded,
            }),
        }
    }

    fn alert(minute: i64, integration: &str, caller: Option<&str>, kind: AlertKind) -> TimedAlert {
        TimedAlert {
            time_unix_ms: minute * MINUTE,
            alert: Alert {
                time: crate::timestamp::format_rfc3339_millis(minute * MINUTE),
                integration: integration.into(),
                caller: caller.map(str::to_owned),
                operation: None,
                kind,
                score: 0.9,
                observed: 1.0,
                baseline: 0.0,
            },
        }
    }

    #[test]
    fn alerts_match_by_integration_caller_kind_and_time() {
        let matching = Matching {
            slack_ms: 15 * MINUTE,
            grace_ms: 120 * MINUTE,
            from_ms: 0,
            to_ms: 2 * 1_440 * MINUTE,
        };
        let incidents = [
            incident(
                IncidentKind::RunawayClient,
                Some("checkout"),
                100 * MINUTE,
                130 * MINUTE,
            ),
            incident(
                IncidentKind::SlowExfiltration,
                Some("billing"),
                1_000 * MINUTE,
                1_200 * MINUTE,
            ),
        ];
        let shifts = [BenignShift {
            integration: "stripe".into(),
            caller: "billing".into(),
            start_unix_ms: 2_000 * MINUTE,
            multiplier: 2.0,
            visible_from_unix_ms: 2_030 * MINUTE,
            caller_index: 1,
        }];
        use AlertKind::*;
        let alerts = [
            alert(90, "stripe", Some("checkout"), RateSpike), // before the start: false
            alert(102, "stripe", Some("checkout"), NewSource), // not a kind that detects it: false
            alert(103, "stripe", Some("billing"), RateSpike), // another caller: false
            alert(104, "twilio", Some("checkout"), RateSpike), // another integration: false
            alert(105, "stripe", None, RateSpike),            // the integration: detects it
            alert(110, "stripe", Some("checkout"), RateSpike), // matches too
            alert(145, "stripe", Some("checkout"), ErrorSpike), // within the slack: matches
            alert(146, "stripe", Some("checkout"), ErrorSpike), // after the slack: false
            alert(2_100, "stripe", Some("billing"), RateSpike), // within the shift's grace
            alert(2_200, "stripe", Some("billing"), RateSpike), // after it: false
        ];
        let kinds = [IncidentKind::RunawayClient, IncidentKind::SlowExfiltration];
        let evaluation = evaluate(&incidents, &shifts, &alerts, matching, &kinds);
        assert_eq!(evaluation.alerts, 10);
        assert_eq!(evaluation.matched_alerts, 3);
        assert_eq!(evaluation.shift_grace_alerts, 1);
        assert_eq!(evaluation.false_alerts, 6);
        assert_eq!(evaluation.false_alerts_per_day, 3.0);
        assert_eq!(evaluation.precision, Some(0.3));
        let runaway = &evaluation.by_incident_kind[0];
        assert_eq!(
            (runaway.incidents, runaway.detected, runaway.alerts),
            (1, 1, 3)
        );
        assert_eq!(runaway.recall, Some(1.0));
        assert_eq!(runaway.median_time_to_detect_seconds, Some(300.0));
        let slow = &evaluation.by_incident_kind[1];
        assert_eq!((slow.incidents, slow.detected), (1, 0));
        assert_eq!(slow.recall, Some(0.0));
        assert_eq!(slow.max_time_to_detect_seconds, None);
        assert_eq!(evaluation.incidents[0].first_alert_kind, Some(RateSpike));
    }

    #[test]
    fn median_of_even_and_odd_counts() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[1.0, 5.0, 9.0]), Some(5.0));
        assert_eq!(median(&[1.0, 5.0, 7.0, 9.0]), Some(6.0));
    }
}
