//! The behaviour engine on synthetic gateway traffic: steady traffic is quiet after warm-up;
//! each incident raises the alert kind a user would expect.

use std::collections::BTreeSet;

use postern_detect::engine::{Alert, AlertKind, DetectEvent, Engine, EngineConfig};

const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 86_400_000;
/// 2026-11-30T00:00:00Z, a Monday.
const START_MS: i64 = 1_795_996_800_000;

/// A deterministic pseudo-random source.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn event(
    time_ms: i64,
    caller: Option<&str>,
    operation: &str,
    status: u16,
    response_bytes: u64,
    source_ip: &str,
) -> DetectEvent {
    DetectEvent {
        time_unix_ms: time_ms,
        integration: Some("acme".into()),
        caller: caller.map(str::to_owned),
        operation: Some(operation.into()),
        status,
        request_bytes: 300,
        response_bytes,
        duration_ms: 80.0,
        source_ip: Some(source_ip.into()),
        decision: Some("allow".into()),
        reason: Some(
            if status == 401 && caller.is_none() {
                "caller_unauthenticated"
            } else {
                "granted"
            }
            .into(),
        ),
    }
}

/// Clean traffic from `from_ms` for `minutes`: two callers, a daily cycle (≈4 to 20 calls a
/// minute each), Poisson-like noise; `scale` multiplies the rate.
fn steady(from_ms: i64, minutes: i64, scale: f64, noise: &mut Noise) -> Vec<DetectEvent> {
    let mut events = Vec::new();
    for minute in 0..minutes {
        let minute_ms = from_ms + minute * MINUTE_MS;
        let day_phase = (minute_ms.rem_euclid(DAY_MS)) as f64 / DAY_MS as f64;
        let rate = scale * (12.0 + 8.0 * (std::f64::consts::TAU * (day_phase - 0.25)).sin());
        for (caller, source) in [("checkout", "10.0.0.1"), ("billing", "10.0.0.2")] {
            let count = (rate * (0.8 + 0.4 * noise.next())).round() as i64;
            for index in 0..count {
                let time = minute_ms + index * MINUTE_MS / count.max(1);
                let operation = if noise.next() < 0.7 {
                    "get_charge"
                } else {
                    "create_charge"
                };
                let bytes = 4_000 + (2_000.0 * noise.next()) as u64;
                events.push(event(time, Some(caller), operation, 200, bytes, source));
            }
        }
    }
    events
}

fn run(engine: &mut Engine, events: &[DetectEvent]) -> Vec<Alert> {
    events
        .iter()
        .flat_map(|event| engine.observe(event, event.time_unix_ms))
        .collect()
}

fn kinds(alerts: &[Alert]) -> BTreeSet<AlertKind> {
    alerts.iter().map(|alert| alert.kind).collect()
}

/// An engine that has seen two clean days, and where the clock stands.
fn warmed_engine(noise: &mut Noise) -> (Engine, i64) {
    let mut engine = Engine::new(EngineConfig::default());
    let alerts = run(&mut engine, &steady(START_MS, 2 * 1_440, 1.0, noise));
    assert!(alerts.is_empty(), "clean traffic alerted: {alerts:#?}");
    (engine, START_MS + 2 * DAY_MS)
}

/// Runs `incident` events (merged in time order with clean traffic) after warm-up; returns the
/// alerts.
fn check_incident(incident: impl Fn(i64) -> Vec<DetectEvent>) -> Vec<Alert> {
    let mut noise = Noise(0x5eed);
    let (mut engine, now) = warmed_engine(&mut noise);
    let mut events = steady(now, 10, 1.0, &mut noise);
    events.extend(incident(now + 2 * MINUTE_MS));
    events.sort_by_key(|event| event.time_unix_ms);
    run(&mut engine, &events)
}

#[test]
fn steady_traffic_is_quiet_for_a_week() {
    let mut noise = Noise(7);
    let mut engine = Engine::new(EngineConfig::default());
    let alerts = run(&mut engine, &steady(START_MS, 7 * 1_440, 1.0, &mut noise));
    assert!(alerts.is_empty(), "{alerts:#?}");
}

#[test]
fn rate_spike_of_twenty_times_alerts_within_the_minute() {
    let alerts = check_incident(|at| {
        (0..240)
            .map(|i| {
                event(
                    at + i * 250,
                    Some("checkout"),
                    "get_charge",
                    200,
                    5_000,
                    "10.0.0.1",
                )
            })
            .collect()
    });
    let spike = alerts
        .iter()
        .find(|alert| alert.kind == AlertKind::RateSpike)
        .expect("rate_spike");
    assert_eq!(spike.integration, "acme");
    assert!(spike.score > 0.5 && spike.score <= 1.0, "{spike:?}");
    assert!(spike.observed > 3.0 * spike.baseline, "{spike:?}");
    // Raised while the spike minute is still open.
    let raised = postern_detect::timestamp::parse_rfc3339_millis(&spike.time).unwrap();
    let spike_start = START_MS + 2 * DAY_MS + 2 * MINUTE_MS;
    assert!(raised - spike_start < 30_000, "{spike:?}");
    // 20× the calls is also 20× the response bytes.
    assert!(
        kinds(&alerts).is_subset(&BTreeSet::from([AlertKind::RateSpike, AlertKind::VolumeIn])),
        "{alerts:#?}"
    );
}

#[test]
fn burst_of_vendor_401s_alerts_vendor_auth_failures() {
    let alerts = check_incident(|at| {
        (0..40)
            .map(|i| {
                event(
                    at + i * 1_000,
                    Some("billing"),
                    "get_charge",
                    401,
                    100,
                    "10.0.0.2",
                )
            })
            .collect()
    });
    assert!(
        kinds(&alerts).contains(&AlertKind::VendorAuthFailures),
        "{alerts:#?}"
    );
}

#[test]
fn burst_of_unauthenticated_calls_alerts_caller_auth_failures() {
    let alerts = check_incident(|at| {
        (0..40)
            .map(|i| event(at + i * 1_000, None, "get_charge", 401, 0, "203.0.113.9"))
            .collect()
    });
    let alert = alerts
        .iter()
        .find(|alert| alert.kind == AlertKind::CallerAuthFailures)
        .expect("caller_auth_failures");
    assert_eq!(
        (alert.integration.as_str(), alert.caller.as_deref()),
        ("acme", None)
    );
}

#[test]
fn response_bytes_surge_alerts_volume_in() {
    let alerts = check_incident(|at| {
        // A few extra calls a minute, each pulling 2 MB instead of ~5 kB.
        (0..12)
            .map(|i| {
                event(
                    at + i * 20_000,
                    Some("checkout"),
                    "get_charge",
                    200,
                    2_000_000,
                    "10.0.0.1",
                )
            })
            .collect()
    });
    assert!(kinds(&alerts).contains(&AlertKind::VolumeIn), "{alerts:#?}");
    assert!(
        !kinds(&alerts).contains(&AlertKind::RateSpike),
        "{alerts:#?}"
    );
}

#[test]
fn new_caller_and_new_source_alert_after_warm_up() {
    let alerts = check_incident(|at| {
        vec![event(
            at,
            Some("intruder"),
            "get_charge",
            200,
            5_000,
            "198.51.100.7",
        )]
    });
    assert_eq!(
        kinds(&alerts),
        BTreeSet::from([AlertKind::NewCaller]),
        "{alerts:#?}"
    );
    let alerts = check_incident(|at| {
        vec![event(
            at,
            Some("checkout"),
            "get_charge",
            200,
            5_000,
            "198.51.100.7",
        )]
    });
    assert_eq!(
        kinds(&alerts),
        BTreeSet::from([AlertKind::NewSource]),
        "{alerts:#?}"
    );
    let alerts = check_incident(|at| {
        vec![event(
            at,
            Some("checkout"),
            "delete_customer",
            200,
            5_000,
            "10.0.0.1",
        )]
    });
    assert!(
        kinds(&alerts).contains(&AlertKind::NewOperation),
        "{alerts:#?}"
    );
}

#[test]
fn benign_level_shift_stops_alerting_after_relearning() {
    let mut noise = Noise(11);
    let (mut engine, now) = warmed_engine(&mut noise);
    let shifted = steady(now, 12 * 60, 4.0, &mut noise);
    let alerts = run(&mut engine, &shifted);
    let relearned_after = now + 2 * 3_600_000;
    let late: Vec<&Alert> = alerts
        .iter()
        .filter(|alert| {
            postern_detect::timestamp::parse_rfc3339_millis(&alert.time).unwrap() > relearned_after
        })
        .collect();
    assert!(
        late.is_empty(),
        "still alerting two hours after the shift: {late:#?}"
    );
}

#[test]
fn memory_stays_bounded_with_100k_distinct_keys() {
    let config = EngineConfig {
        max_keys: 10_000,
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(config);
    for index in 0..100_000i64 {
        let caller = format!("caller-{index}");
        let event = event(
            START_MS + index * 10,
            Some(&caller),
            "get_charge",
            200,
            5_000,
            "10.0.0.1",
        );
        engine.observe(&event, event.time_unix_ms);
        assert!(
            engine.key_count() <= 10_000,
            "{} keys at event {index}",
            engine.key_count()
        );
    }
    // The integration's set of known callers is capped too.
    let snapshot = serde_json::to_string(&engine.snapshot()).unwrap();
    assert!(
        snapshot.len() < 40_000_000,
        "snapshot of {} bytes",
        snapshot.len()
    );
}

#[test]
fn idle_keys_are_evicted() {
    let mut engine = Engine::new(EngineConfig::default());
    let first = event(
        START_MS,
        Some("checkout"),
        "get_charge",
        200,
        5_000,
        "10.0.0.1",
    );
    engine.observe(&first, first.time_unix_ms);
    assert_eq!(engine.key_count(), 3);
    let later = DetectEvent {
        integration: Some("other".into()),
        ..event(START_MS + 8 * DAY_MS, None, "x", 200, 0, "10.0.0.1")
    };
    engine.observe(&later, later.time_unix_ms);
    assert_eq!(engine.key_count(), 1);
}

#[test]
fn snapshot_and_restore_keep_the_baseline() {
    let mut noise = Noise(3);
    let (engine, now) = warmed_engine(&mut noise);
    let text = serde_json::to_string(&engine.snapshot()).unwrap();
    let mut restored = Engine::restore(serde_json::from_str(&text).unwrap());
    let mut original = engine;
    let spike: Vec<DetectEvent> = (0..240)
        .map(|i| {
            event(
                now + i * 250,
                Some("checkout"),
                "get_charge",
                200,
                5_000,
                "10.0.0.1",
            )
        })
        .collect();
    let from_original = run(&mut original, &spike);
    let from_restored = run(&mut restored, &spike);
    assert!(!from_original.is_empty());
    assert_eq!(from_original, from_restored);
}

#[test]
fn events_deserialize_from_gateway_lines() {
    let line = r#"{"schema_version":1,"time":"2026-11-28T09:15:23.266Z","request_id":"1bfe16b2916ae24326296f2641d65eb0","integration":"acme","caller":"checkout","operation":"refund_charge","method":"DELETE","path":"/v1/charges/{id}","status":403,"decision":"deny","reason":"not_granted","policy":null,"request_bytes":0,"response_bytes":0,"duration_ms":0.03,"upstream_addr":null,"source_ip":"127.0.0.1","auth":"token","protocol":"HTTP/1.1"}"#;
    let event: DetectEvent = serde_json::from_str(line).unwrap();
    assert_eq!(event.time_unix_ms, 1_795_857_323_266);
    assert_eq!(event.operation.as_deref(), Some("refund_charge"));
    assert_eq!(event.status, 403);
    let alert = Alert {
        time: "2026-11-28T09:15:23.266Z".into(),
        integration: "acme".into(),
        caller: None,
        operation: None,
        kind: AlertKind::CallerAuthFailures,
        score: 0.9,
        observed: 40.0,
        baseline: 0.0,
    };
    assert_eq!(
        serde_json::to_string(&alert).unwrap(),
        r#"{"time":"2026-11-28T09:15:23.266Z","integration":"acme","kind":"caller_auth_failures","score":0.9,"observed":40.0,"baseline":0.0}"#
    );
}
