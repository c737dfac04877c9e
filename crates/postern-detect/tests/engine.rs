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
        caller: caller.map(Into::into),
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
        host: None,
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

/// One minute from `at` of 20× checkout's usual rate: 240 calls, 4 a second.
fn burst(at: i64) -> Vec<DetectEvent> {
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

/// A clock set back an hour (an NTP step) is not a rate spike: steady traffic at the earlier
/// time starts each key's minute again instead of piling an hour into one minute.
#[test]
fn a_clock_set_back_an_hour_raises_nothing() {
    let mut noise = Noise(0xc10c);
    let (mut engine, now) = warmed_engine(&mut noise);
    let alerts = run(&mut engine, &steady(now, 30, 1.0, &mut noise));
    assert!(alerts.is_empty(), "{alerts:#?}");
    let alerts = run(
        &mut engine,
        &steady(now + 30 * MINUTE_MS - 60 * MINUTE_MS, 90, 1.0, &mut noise),
    );
    assert!(alerts.is_empty(), "{alerts:#?}");
}

/// A caller whose calls come from more addresses than a key keeps (round-robin over a fleet):
/// every call misses the full set, yet `new_source` is raised a few times, not on each call.
#[test]
fn more_sources_than_kept_do_not_alert_on_every_call() {
    let mut noise = Noise(0xf1ee7);
    let mut engine = Engine::new(EngineConfig {
        max_novelty_entries: 4,
        ..EngineConfig::default()
    });
    assert!(run(&mut engine, &steady(START_MS, 2 * 1_440, 1.0, &mut noise)).is_empty());
    let now = START_MS + 2 * DAY_MS;
    let mut events = Vec::new();
    for call in 0..600 {
        let source = format!("10.1.0.{}", call % 10);
        let time = now + call * MINUTE_MS / 10;
        events.push(event(
            time,
            Some("checkout"),
            "get_charge",
            200,
            5_000,
            &source,
        ));
    }
    let alerts = run(&mut engine, &events);
    let new_sources = alerts
        .iter()
        .filter(|alert| alert.kind == AlertKind::NewSource)
        .count();
    assert!(
        (1..=12).contains(&new_sources),
        "{new_sources} new_source alerts"
    );
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
    let alerts = check_incident(burst);
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

/// A clock set back a day is not waited out: after 10 minutes the keys count again at the new
/// time, and a burst then is seen.
#[test]
fn a_clock_set_back_a_day_is_not_waited_out() {
    let mut noise = Noise(0xda7);
    let (mut engine, now) = warmed_engine(&mut noise);
    assert!(run(&mut engine, &steady(now, 30, 1.0, &mut noise)).is_empty());
    let back = now + 30 * MINUTE_MS - DAY_MS;
    let alerts = run(&mut engine, &steady(back, 20, 1.0, &mut noise));
    assert!(alerts.is_empty(), "{alerts:#?}");
    let at = back + 20 * MINUTE_MS;
    let alerts = run(&mut engine, &burst(at));
    assert!(
        alerts
            .iter()
            .any(|alert| alert.kind == AlertKind::RateSpike),
        "{alerts:#?}"
    );
}

/// A long call (a stream, a tunnel) is stamped with its start and written at its end: it counts
/// where it ends, and a burst it ends in the middle of is still seen at once (judged by its
/// start, it would look ten minutes stale and hold the rest of the burst back).
#[test]
fn a_long_call_ending_does_not_hide_a_burst() {
    let mut noise = Noise(0x10c4);
    let (mut engine, now) = warmed_engine(&mut noise);
    assert!(run(&mut engine, &steady(now, 3, 1.0, &mut noise)).is_empty());
    let at = now + 3 * MINUTE_MS;
    let mut long = event(
        at - 10 * MINUTE_MS,
        Some("checkout"),
        "get_charge",
        200,
        5_000,
        "10.0.0.1",
    );
    long.duration_ms = (10 * MINUTE_MS) as f64;
    let mut events = burst(at);
    events.insert(1, long);
    let alerts = run(&mut engine, &events);
    let spike = alerts
        .iter()
        .find(|alert| alert.kind == AlertKind::RateSpike)
        .unwrap_or_else(|| panic!("rate_spike in {alerts:#?}"));
    assert!(raised_at(spike) - at < 30_000, "{spike:?}");
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

/// A vendor outage on a quiet integration is seen on the integration's key, however many calls
/// another caller has refused there: a caller's refused calls (`not_granted` to an integration
/// it has no grant on) count on its own keys only, so they neither pad the requests the error
/// ratio divides by nor read as the vendor's incident.
#[test]
fn another_caller_s_refused_calls_do_not_hide_a_vendor_outage() {
    let quiet = |from: i64, minutes: i64, status: u16| -> Vec<DetectEvent> {
        // One call every two minutes from each of two callers: too few for a caller's own key.
        (0..minutes)
            .filter(|minute| minute % 2 == 0)
            .flat_map(|minute| {
                let at = from + minute * MINUTE_MS;
                [
                    event(at, Some("checkout"), "get_charge", status, 500, "10.0.0.1"),
                    event(
                        at + 1_000,
                        Some("billing"),
                        "get_charge",
                        status,
                        500,
                        "10.0.0.2",
                    ),
                ]
            })
            .collect()
    };
    // Half refused `not_granted` (a deny), half past authorization (recorded as allow) for
    // what or how much the caller sent: each such refusal of the gateway's, run by run.
    let refusals =
        |from: i64, minutes: i64, (status, reason): (u16, &'static str)| -> Vec<DetectEvent> {
            (0..minutes * 10)
                .map(|i| {
                    let limited = i % 2 == 1;
                    let (status, reason) = match limited {
                        true => (status, reason),
                        false => (403, "not_granted"),
                    };
                    let mut refused = event(
                        from + i * 6_000,
                        Some("mallory"),
                        "get_charge",
                        status,
                        0,
                        "10.9.9.9",
                    );
                    refused.decision = Some(if limited { "allow" } else { "deny" }.into());
                    refused.reason = Some(reason.into());
                    refused
                })
                .collect()
        };
    for refusal in [
        (429, "rate_limited"),
        (400, "caller_token_in_body"),
        (400, "vendor_credential_in_body"),
        (400, "method_override_refused"),
    ] {
        let mut engine = Engine::new(EngineConfig::default());
        let mut events = quiet(START_MS, 2 * 1_440, 200);
        events.extend(refusals(START_MS, 2 * 1_440, refusal));
        let outage_at = START_MS + 2 * DAY_MS;
        events.extend(quiet(outage_at, 60, 503));
        events.extend(refusals(outage_at, 60, refusal));
        events.sort_by_key(|event| event.time_unix_ms);
        let alerts = run(&mut engine, &events);
        let on_integration: Vec<&Alert> = alerts
            .iter()
            .filter(|alert| alert.caller.is_none() && alert.kind == AlertKind::ErrorSpike)
            .collect();
        assert!(!on_integration.is_empty(), "{refusal:?}: {alerts:#?}");
        assert!(
            on_integration
                .iter()
                .all(|alert| alert.time.as_str() >= "2026-12-02"),
            "{refusal:?}: refusals alone alerted on the integration: {on_integration:#?}"
        );
    }
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

/// The forward proxy refuses a missing or wrong `Proxy-Authorization` with 407
/// `proxy_auth_required`: credential stuffing through the proxy is a caller authentication
/// failure too, not just a 4xx.
#[test]
fn burst_of_proxy_auth_refusals_alerts_caller_auth_failures() {
    let refused = |time_ms: i64| DetectEvent {
        integration: None,
        operation: None,
        host: Some("api.acme.example".into()),
        decision: Some("deny".into()),
        reason: Some("proxy_auth_required".into()),
        ..event(time_ms, None, "x", 407, 0, "203.0.113.9")
    };
    let mut noise = Noise(0x5eed);
    let mut engine = Engine::new(EngineConfig::default());
    // A stray refusal long before: the `(none)` key has a baseline (of about nothing).
    engine.observe(&refused(START_MS), START_MS);
    let (mut events, now) = (
        steady(START_MS, 2 * 1_440, 1.0, &mut noise),
        START_MS + 2 * DAY_MS,
    );
    events.extend(steady(now, 10, 1.0, &mut noise));
    events.extend((0..40).map(|i| refused(now + 2 * MINUTE_MS + i * 1_000)));
    events.sort_by_key(|event| event.time_unix_ms);
    let alerts = run(&mut engine, &events);
    let alert = alerts
        .iter()
        .find(|alert| alert.kind == AlertKind::CallerAuthFailures)
        .unwrap_or_else(|| panic!("no caller_auth_failures: {alerts:#?}"));
    assert_eq!(
        (alert.integration.as_str(), alert.caller.as_deref()),
        ("(none)", None)
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

/// A small decoy does not stand for what follows: once `volume_in` alerted on a first 2 MB
/// pull, the gigabytes pulled over the next minutes, within the cooldown, alert again each
/// time the minute's volume reaches ten times the value last alerted on.
#[test]
fn a_decoy_alert_does_not_hide_the_volume_that_follows_it() {
    let pull =
        |at: i64, bytes: u64| event(at, Some("checkout"), "get_charge", 200, bytes, "10.0.0.1");
    let alerts = check_incident(|at| {
        // The decoy: one 2 MB answer.
        let mut events = vec![pull(at, 2_000_000)];
        // Then, from the next minute on, 50 MB a minute for five minutes, in 5 MB answers.
        for minute in 1..6 {
            for i in 0..10 {
                events.push(pull(at + minute * MINUTE_MS + i * 5_000, 5_000_000));
            }
        }
        events
    });
    let volume: Vec<&Alert> = alerts
        .iter()
        .filter(|alert| {
            alert.kind == AlertKind::VolumeIn
                && alert.caller.as_deref() == Some("checkout")
                && alert.operation.is_none()
        })
        .collect();
    // Twice: the decoy, and the pull once it reached ten times the decoy (not at every event
    // past it, nor at every minute of it: the next re-raise needs ten times that).
    assert_eq!(volume.len(), 2, "{volume:#?}");
    assert!(volume[0].observed < 3_000_000.0, "{volume:#?}");
    assert!(
        volume.iter().any(|alert| alert.observed >= 20_000_000.0),
        "the pull after the decoy was not reported: {volume:#?}"
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

/// A caller idle past `idle_eviction_seconds` loses its keys; when its (perhaps stolen) token
/// comes back, its integration still knows it, and its calls are not given a fresh day of
/// novelty warm-up: a new source and a new operation alert at once.
#[test]
fn a_dormant_caller_coming_back_is_not_warmed_up_again() {
    let config = EngineConfig {
        idle_eviction_seconds: 2 * 86_400,
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(config);
    let mut noise = Noise(0x5eed);
    let alerts = run(&mut engine, &steady(START_MS, 3 * 1_440, 1.0, &mut noise));
    assert!(alerts.is_empty(), "clean traffic alerted: {alerts:#?}");
    let only_checkout: Vec<DetectEvent> = steady(START_MS + 3 * DAY_MS, 3 * 1_440, 1.0, &mut noise)
        .into_iter()
        .filter(|event| event.caller.as_deref() == Some("checkout"))
        .collect();
    let alerts = run(&mut engine, &only_checkout);
    assert!(alerts.is_empty(), "clean traffic alerted: {alerts:#?}");
    let back = event(
        START_MS + 6 * DAY_MS + MINUTE_MS,
        Some("billing"),
        "delete_customer",
        200,
        5_000,
        "203.0.113.9",
    );
    let alerts = engine.observe(&back, back.time_unix_ms);
    assert_eq!(
        kinds(&alerts),
        BTreeSet::from([AlertKind::NewOperation, AlertKind::NewSource]),
        "{alerts:#?}"
    );
    assert!(alerts
        .iter()
        .all(|alert| alert.caller.as_deref() == Some("billing")));
    // Its next calls' names are known again: one alert per name.
    let again = DetectEvent {
        time_unix_ms: back.time_unix_ms + 1_000,
        ..back.clone()
    };
    assert!(engine.observe(&again, again.time_unix_ms).is_empty());
}

/// Past `max_keys` the least recently seen keys go first: a key older than every other is
/// evicted before keys seen at the cutoff's instant, whatever order the map holds them in
/// (each newcomer's two keys are seen at one instant; counting those ties alike with older
/// keys let a tie take the older key's place, so it outlived newer ones, in about one map
/// order of seven). Thirty engines, each with a map order of its own.
#[test]
fn eviction_past_the_cap_takes_the_oldest_key_first() {
    for _ in 0..30 {
        let mut engine = Engine::new(EngineConfig {
            max_keys: 20,
            ..EngineConfig::default()
        });
        let old = event(START_MS, Some("old"), "get_charge", 200, 5_000, "10.0.0.2");
        engine.observe(&old, START_MS);
        for i in 0..12 {
            let caller = format!("newcomer-{i}");
            let time = START_MS + 1_000 + i * 100;
            let other = event(time, Some(&caller), "get_charge", 200, 5_000, "10.0.0.3");
            engine.observe(&other, time);
        }
        let snapshot = serde_json::to_value(engine.snapshot()).unwrap();
        let callers: Vec<&serde_json::Value> = snapshot["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|entry| &entry[0]["caller"])
            .collect();
        assert!(
            !callers.iter().any(|caller| *caller == "old"),
            "the oldest key outlived newer ones: {callers:?}"
        );
    }
}

/// A caller whose keys `max_keys` pushes out while it is active is no dormant caller coming
/// back: its next calls are warmed up as a new key's, not met with a `new_operation` per
/// operation and a `new_source` per address — its usual ones — at every such eviction.
#[test]
fn a_caller_evicted_by_max_keys_while_active_raises_no_novelty_on_its_next_calls() {
    let config = EngineConfig {
        max_keys: 20,
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(config);
    let mut noise = Noise(0x5eed);
    let alerts = run(&mut engine, &steady(START_MS, 2 * 1_440, 1.0, &mut noise));
    assert!(alerts.is_empty(), "clean traffic alerted: {alerts:#?}");
    let now = START_MS + 2 * DAY_MS;
    let usual = |time_ms: i64, operation: &str| {
        event(time_ms, Some("billing"), operation, 200, 5_000, "10.0.0.2")
    };
    assert!(engine.observe(&usual(now, "get_charge"), now).is_empty());
    // Callers new to the integration fill the keys past the cap: the least recently seen go,
    // billing's among them, seconds after its last call.
    for i in 0..20 {
        let caller = format!("newcomer-{i}");
        let other = event(
            now + 1_000 + i * 100,
            Some(&caller),
            "get_charge",
            200,
            5_000,
            "10.0.0.3",
        );
        engine.observe(&other, other.time_unix_ms);
    }
    let snapshot = serde_json::to_value(engine.snapshot()).unwrap();
    assert!(
        !snapshot["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|entry| entry[0]["caller"] == "billing"),
        "billing's keys were not evicted"
    );
    assert!(engine
        .integration_names()
        .iter()
        .any(|name| &**name == "acme"));
    for (i, operation) in ["get_charge", "create_charge"].into_iter().enumerate() {
        let back = usual(now + MINUTE_MS + i as i64 * 1_000, operation);
        let alerts = engine.observe(&back, back.time_unix_ms);
        assert!(
            alerts
                .iter()
                .all(|alert| alert.caller.as_deref() != Some("billing")),
            "{alerts:#?}"
        );
    }
}

/// `(none)` is where calls no integration answers for are counted (refused before routing, by
/// host policy, or as their caller's doing to a host with no key): a known caller's first such
/// refusal is not a new identity on an integration, and raises no `new_caller` there.
#[test]
fn a_caller_s_first_refusal_under_none_raises_no_new_caller() {
    let mut engine = Engine::new(EngineConfig::default());
    // An unauthenticated call long before: the `(none)` key is a day old, warm for novelty.
    let stray = DetectEvent {
        integration: None,
        operation: None,
        ..event(START_MS, None, "x", 401, 0, "203.0.113.9")
    };
    engine.observe(&stray, START_MS);
    let now = START_MS + 2 * DAY_MS;
    let refusals = [
        // A plain-HTTP proxy call refused as its caller's doing, to a host with no key.
        DetectEvent {
            integration: None,
            operation: None,
            host: Some("files.example".into()),
            decision: Some("allow".into()),
            reason: Some("unsupported_content_encoding".into()),
            ..event(now, Some("ci"), "x", 415, 0, "10.0.0.7")
        },
        // A proxy call refused by host policy.
        DetectEvent {
            integration: None,
            operation: None,
            host: Some("pastebin.com".into()),
            decision: Some("deny".into()),
            reason: Some("host_not_allowed".into()),
            ..event(now + 1_000, Some("build"), "x", 403, 0, "10.0.0.8")
        },
    ];
    for refused in &refusals {
        let alerts = engine.observe(refused, refused.time_unix_ms);
        assert!(alerts.is_empty(), "{alerts:#?}");
    }
    assert!(engine
        .integration_names()
        .iter()
        .any(|name| &**name == "(none)"));
}

/// The gateway's own refusals that reach no vendor, or withhold an answer for its own bounds —
/// `resolver_busy` (its bound on name lookups in flight was full), `upstream_is_postern` (the
/// target is Postern itself), `scanners_busy` and `response_decoders_busy` (its memory bounds
/// on bodies scanned and `br` answers read) — count on
/// their caller's keys only: no integration key, no host key; a vendor's 502 does count.
#[test]
fn gateway_refusals_that_reach_no_vendor_count_on_the_caller_only() {
    let refused = |status: u16, reason: &'static str| DetectEvent {
        reason: Some(reason.into()),
        ..event(
            START_MS,
            Some("checkout"),
            "get_charge",
            status,
            0,
            "10.0.0.1",
        )
    };
    for (status, reason) in [
        (503, "resolver_busy"),
        (502, "upstream_is_postern"),
        (503, "scanners_busy"),
        (502, "response_scanners_busy"),
        (502, "response_decoders_busy"),
    ] {
        let mut engine = Engine::new(EngineConfig::default());
        engine.observe(&refused(status, reason), START_MS);
        assert!(engine.integration_names().is_empty(), "{reason}");
        let proxied = DetectEvent {
            integration: None,
            operation: None,
            host: Some("files.example".into()),
            ..refused(status, reason)
        };
        engine.observe(&proxied, START_MS + 1_000);
        assert!(engine.integration_names().is_empty(), "{reason}");
    }
    let mut engine = Engine::new(EngineConfig::default());
    engine.observe(&refused(502, "upstream_unresolvable"), START_MS);
    let names: Vec<String> = engine
        .integration_names()
        .iter()
        .map(|name| name.to_string())
        .collect();
    assert_eq!(names, ["acme"]);
}

/// A forward-proxy call let through to a host no integration registers is keyed by its host
/// (`host:<name>`), up to `max_host_keys` hosts: calls to further hosts, and refused ones,
/// count under `(none)`; an evicted host key frees its place, and a restored engine counts
/// the host keys it holds.
#[test]
fn unregistered_hosts_are_keyed_by_host_up_to_a_cap() {
    let config = EngineConfig {
        max_host_keys: 2,
        idle_eviction_seconds: 3_600,
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(config);
    let proxied = |time_ms: i64, host: &str, decision: &'static str| DetectEvent {
        integration: None,
        operation: None,
        host: Some(host.into()),
        decision: Some(decision.into()),
        ..event(time_ms, Some("ci"), "x", 200, 100, "10.0.0.1")
    };
    for (minute, host, decision) in [
        (0, "api.github.com", "allow"),
        (1, "pypi.org", "allow"),
        (2, "pastebin.com", "deny"),
        (3, "evil.example", "allow"),
        (4, "api.github.com", "allow"),
    ] {
        let event = proxied(START_MS + minute * MINUTE_MS, host, decision);
        engine.observe(&event, event.time_unix_ms);
    }
    let names = |engine: &Engine| -> Vec<String> {
        engine
            .integration_names()
            .iter()
            .map(|name| name.to_string())
            .collect()
    };
    assert_eq!(
        names(&engine),
        ["(none)", "host:api.github.com", "host:pypi.org"]
    );
    // A restored engine holds two host keys already: a third host waits for one to go.
    let mut restored = Engine::restore(engine.snapshot());
    let third = proxied(START_MS + 5 * MINUTE_MS, "files.example", "allow");
    restored.observe(&third, third.time_unix_ms);
    assert!(!names(&restored).contains(&"host:files.example".to_string()));
    // A replayed event naming an integration `host:…` (no configured name can) is not a
    // host key, and its eviction does not unbalance the count.
    let forged = DetectEvent {
        integration: Some("host:forged".into()),
        ..event(
            START_MS + 6 * MINUTE_MS,
            Some("ci"),
            "x",
            200,
            100,
            "10.0.0.1",
        )
    };
    restored.observe(&forged, forged.time_unix_ms);
    assert!(!names(&restored).contains(&"host:forged".to_string()));
    // Two hours on, the idle keys are evicted and their places are free.
    let later = proxied(START_MS + 120 * MINUTE_MS, "files.example", "allow");
    restored.observe(&later, later.time_unix_ms);
    assert_eq!(names(&restored), ["host:files.example"]);
}

/// One caller spraying host names opens at most `max_host_keys_per_caller` host keys: the
/// places left are other callers' to take, and an evicted key frees its opener's share.
#[test]
fn one_caller_opens_at_most_its_share_of_host_keys() {
    let config = EngineConfig {
        max_host_keys: 10,
        max_host_keys_per_caller: 3,
        idle_eviction_seconds: 3_600,
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(config);
    let proxied = |time_ms: i64, caller: &'static str, host: &str| DetectEvent {
        integration: None,
        operation: None,
        host: Some(host.into()),
        decision: Some("allow".into()),
        ..event(time_ms, Some(caller), "x", 200, 100, "10.0.0.1")
    };
    let host_keys = |engine: &Engine| -> Vec<String> {
        engine
            .integration_names()
            .iter()
            .filter(|name| name.starts_with("host:"))
            .map(|name| name.to_string())
            .collect()
    };
    // Calls refused for what the caller sent count on its own keys only: they open no host
    // key, and take none of its share.
    for i in 0..20 {
        let refused = DetectEvent {
            reason: Some("request_too_large".into()),
            ..proxied(START_MS + i * 100, "sprayer", &format!("big{i:02}.example"))
        };
        engine.observe(&refused, refused.time_unix_ms);
    }
    assert!(host_keys(&engine).is_empty(), "{:?}", host_keys(&engine));
    for i in 0..20 {
        let event = proxied(START_MS + i * 1_000, "sprayer", &format!("r{i:02}.example"));
        engine.observe(&event, event.time_unix_ms);
    }
    assert_eq!(
        host_keys(&engine),
        ["host:r00.example", "host:r01.example", "host:r02.example"]
    );
    // Another caller's host still gets a key of its own.
    let other = proxied(START_MS + 30_000, "ci", "api.github.com");
    engine.observe(&other, other.time_unix_ms);
    assert!(host_keys(&engine).contains(&"host:api.github.com".to_string()));
    // The sprayer's keys go idle and are evicted: its share is free again.
    let later = proxied(START_MS + 120 * MINUTE_MS, "sprayer", "late.example");
    engine.observe(&later, later.time_unix_ms);
    assert_eq!(host_keys(&engine), ["host:late.example"]);
}

/// Calls refused as the caller's doing (here `unsupported_content_encoding`, which the plain
/// forward-proxy path refuses whoever the caller, under a wildcard allow or report mode) to
/// ever-new host names add no keys under those names: each would otherwise add a
/// `(host:<name>, caller)` key that no host cap counts, and past `max_keys` the sweep would
/// evict the real integrations' keys.
#[test]
fn refused_calls_to_new_hosts_add_no_keys_and_evict_nothing() {
    let config = EngineConfig {
        max_keys: 1_000,
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(config);
    let first = event(
        START_MS,
        Some("checkout"),
        "get_charge",
        200,
        5_000,
        "10.0.0.1",
    );
    engine.observe(&first, first.time_unix_ms);
    for i in 0..5_000 {
        let refused = DetectEvent {
            integration: None,
            operation: None,
            host: Some(format!("h{i}.example").into()),
            decision: Some("allow".into()),
            reason: Some("unsupported_content_encoding".into()),
            ..event(
                START_MS + 1_000 + i,
                Some("sprayer"),
                "x",
                415,
                0,
                "10.0.0.9",
            )
        };
        engine.observe(&refused, refused.time_unix_ms);
        assert!(engine.key_count() < 20, "{} keys", engine.key_count());
    }
    assert!(engine
        .integration_names()
        .iter()
        .any(|name| &**name == "acme"));
}

#[test]
fn snapshot_and_restore_keep_the_baseline() {
    let mut noise = Noise(3);
    let (engine, now) = warmed_engine(&mut noise);
    let text = serde_json::to_string(&engine.snapshot()).unwrap();
    let mut restored = Engine::restore(serde_json::from_str(&text).unwrap());
    let mut original = engine;
    let spike = burst(now);
    let from_original = run(&mut original, &spike);
    let from_restored = run(&mut restored, &spike);
    assert!(!from_original.is_empty());
    assert_eq!(from_original, from_restored);
}

/// A snapshot damaged, or written by another version, never panics the engine: a key whose
/// arrays are not of this version's lengths is dropped (learned again), and a snapshot of
/// another version is not restored at all; the rest goes on as before.
#[test]
fn a_damaged_snapshot_drops_its_bad_keys_and_never_panics() {
    let mut noise = Noise(5);
    let (engine, now) = warmed_engine(&mut noise);
    let held = engine.key_count();
    let mut snapshot = serde_json::to_value(engine.snapshot()).unwrap();
    let keys = snapshot["keys"].as_array_mut().unwrap();
    // One key with a baseline short, one with a short hour table, one with a short season.
    keys[0][1]["baselines"].as_array_mut().unwrap().pop();
    let with_hours = keys
        .iter()
        .position(|key| key[1]["hours"].is_array())
        .expect("a caller key keeps hours");
    keys[with_hours][1]["hours"]
        .as_array_mut()
        .unwrap()
        .truncate(3);
    let with_season = keys
        .iter()
        .position(|key| {
            key[1]["baselines"]
                .as_array()
                .unwrap()
                .iter()
                .any(|baseline| baseline["seasonal"].is_object())
        })
        .expect("a seasonal baseline");
    for baseline in keys[with_season][1]["baselines"].as_array_mut().unwrap() {
        // (`get_mut`: indexing a missing key for writing would insert it.)
        if let Some(mean) = baseline
            .get_mut("seasonal")
            .and_then(|seasonal| seasonal.get_mut("mean"))
            .and_then(|mean| mean.as_array_mut())
        {
            mean.truncate(2);
        }
    }
    let damaged: postern_detect::engine::EngineSnapshot =
        serde_json::from_value(snapshot.clone()).unwrap();
    let mut restored = Engine::restore(damaged);
    let kept = restored.key_count();
    assert!(kept < held && kept + 3 >= held, "kept {kept} of {held}");
    // Every kind of event reaches every kind of key without a panic.
    let alerts = run(&mut restored, &burst(now));
    assert!(
        kinds(&alerts).contains(&AlertKind::RateSpike),
        "{alerts:#?}"
    );
    run(&mut restored, &steady(now, 90, 1.0, &mut noise));
    // Another version's snapshot: nothing of it is taken.
    snapshot["version"] = serde_json::json!(99);
    let other: postern_detect::engine::EngineSnapshot = serde_json::from_value(snapshot).unwrap();
    assert_eq!(Engine::restore(other).key_count(), 0);
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

/// Events of `caller` at about `per_minute(minute_ms)` calls a minute (deterministic spacing
/// with jitter) from `from_ms` for `minutes`.
fn paced(
    from_ms: i64,
    minutes: i64,
    caller: &str,
    noise: &mut Noise,
    per_minute: impl Fn(i64) -> f64,
) -> Vec<DetectEvent> {
    let mut events = Vec::new();
    let mut carry = 0.0;
    for minute in 0..minutes {
        let minute_ms = from_ms + minute * MINUTE_MS;
        carry += per_minute(minute_ms) * (0.8 + 0.4 * noise.next());
        let count = carry.floor() as i64;
        carry -= count as f64;
        for index in 0..count {
            let time = minute_ms + index * MINUTE_MS / count.max(1);
            events.push(event(
                time,
                Some(caller),
                "get_charge",
                200,
                5_000,
                "10.0.0.1",
            ));
        }
    }
    events
}

fn raised_at(alert: &Alert) -> i64 {
    postern_detect::timestamp::parse_rfc3339_millis(&alert.time).unwrap()
}

#[test]
fn slow_exfiltration_below_the_per_minute_floor_alerts_volume_out_within_the_hour() {
    let mut noise = Noise(21);
    let (mut engine, now) = warmed_engine(&mut noise);
    let mut events = steady(now, 4 * 60, 1.0, &mut noise);
    // One extra call a minute from checkout with a 150 kB body: 0.15 MB a minute, far below
    // the per-minute floor of 1 MB, for four hours.
    events.extend((0..4 * 60).map(|minute| DetectEvent {
        request_bytes: 150_000,
        ..event(
            now + minute * MINUTE_MS + 30_000,
            Some("checkout"),
            "create_charge",
            200,
            5_000,
            "10.0.0.1",
        )
    }));
    events.sort_by_key(|event| event.time_unix_ms);
    let alerts = run(&mut engine, &events);
    let first = alerts
        .iter()
        .find(|alert| alert.kind == AlertKind::VolumeOut)
        .unwrap_or_else(|| panic!("no volume_out: {alerts:#?}"));
    assert_eq!(first.caller.as_deref(), Some("checkout"), "{first:?}");
    assert!(raised_at(first) - now <= 60 * MINUTE_MS, "{first:?}");
    assert!(first.observed < 1_000_000.0, "{first:?}");
    // At most once an hour per key, and nothing else.
    let per_key = alerts
        .iter()
        .filter(|alert| alert.caller.as_deref() == Some("checkout") && alert.operation.is_none())
        .count();
    assert!(per_key <= 4, "{alerts:#?}");
    assert_eq!(
        kinds(&alerts),
        BTreeSet::from([AlertKind::VolumeOut]),
        "{alerts:#?}"
    );
}

#[test]
fn vendor_failures_on_a_quiet_integration_alert_over_a_window() {
    // Two calls a minute: never the 10 a minute the per-minute checks need.
    let mut noise = Noise(5);
    let mut engine = Engine::new(EngineConfig::default());
    let warm = paced(START_MS, 2 * 1_440, "checkout", &mut noise, |_| 2.0);
    let alerts = run(&mut engine, &warm);
    assert!(alerts.is_empty(), "{alerts:#?}");
    let now = START_MS + 2 * DAY_MS;
    // The vendor revokes the credential: every call answered 401.
    let revoked: Vec<DetectEvent> = paced(now, 20, "checkout", &mut noise, |_| 2.0)
        .into_iter()
        .map(|event| DetectEvent {
            status: 401,
            ..event
        })
        .collect();
    let alerts = run(&mut engine, &revoked);
    let first = alerts
        .iter()
        .find(|alert| alert.kind == AlertKind::VendorAuthFailures)
        .unwrap_or_else(|| panic!("no vendor_auth_failures: {alerts:#?}"));
    assert!(raised_at(first) - now <= 10 * MINUTE_MS, "{first:?}");
    // Recovered: the window still holds the failures, but no new alert comes from its tail.
    let later = now + 20 * MINUTE_MS;
    let recovered = paced(later, 60, "checkout", &mut noise, |_| 2.0);
    let alerts = run(&mut engine, &recovered);
    assert!(alerts.is_empty(), "{alerts:#?}");
}

#[test]
fn one_timed_out_call_is_not_a_slowdown_but_a_slow_vendor_is() {
    let mut noise = Noise(8);
    let (mut engine, midnight) = warmed_engine(&mut noise);
    // At noon: about 40 calls a minute, enough for the latency check.
    let alerts = run(&mut engine, &steady(midnight, 12 * 60, 1.0, &mut noise));
    assert!(alerts.is_empty(), "{alerts:#?}");
    let now = midnight + 12 * 3_600_000;
    // One call of the minute times out after 30 s.
    let mut events = steady(now, 5, 1.0, &mut noise);
    let middle = events.len() / 2;
    events[middle].duration_ms = 30_000.0;
    let alerts = run(&mut engine, &events);
    assert!(alerts.is_empty(), "{alerts:#?}");
    // Every call takes a second for three minutes.
    let slow: Vec<DetectEvent> = steady(now + 5 * MINUTE_MS, 3, 1.0, &mut noise)
        .into_iter()
        .map(|event| DetectEvent {
            duration_ms: 1_000.0,
            ..event
        })
        .collect();
    let alerts = run(&mut engine, &slow);
    assert!(
        alerts.iter().any(|alert| alert.kind == AlertKind::Latency),
        "{alerts:#?}"
    );
}

#[test]
fn off_hours_is_a_weekday_job_at_night_not_a_caller_quietly_active_every_night() {
    let mut noise = Noise(13);
    let hour_of = |time_ms: i64| time_ms.rem_euclid(DAY_MS) / 3_600_000;
    let weekday =
        |time_ms: i64| postern_detect::timestamp::hour_of_week(time_ms.div_euclid(1_000)) < 5 * 24;
    // "sync" works weekdays 08:00–18:00; "web" is busy by day and quiet, but never idle, by
    // night (a tenth of its daytime rate).
    let mut events = paced(START_MS, 8 * 1_440, "sync", &mut noise, |time| {
        if weekday(time) && (8..18).contains(&hour_of(time)) {
            2.0
        } else {
            0.0
        }
    });
    events.extend(paced(START_MS, 8 * 1_440, "web", &mut noise, |time| {
        if (8..20).contains(&hour_of(time)) {
            3.0
        } else {
            0.3
        }
    }));
    events.sort_by_key(|event| event.time_unix_ms);
    let mut engine = Engine::new(EngineConfig::default());
    let alerts = run(&mut engine, &events);
    assert!(
        !kinds(&alerts).contains(&AlertKind::OffHours),
        "{alerts:#?}"
    );
    // Tuesday 03:00, day 9: both call.
    let night = START_MS + 8 * DAY_MS + 3 * 3_600_000;
    let calls = [
        event(night, Some("web"), "get_charge", 200, 5_000, "10.0.0.1"),
        event(
            night + 1_000,
            Some("sync"),
            "get_charge",
            200,
            5_000,
            "10.0.0.1",
        ),
    ];
    let alerts = run(&mut engine, &calls);
    let off_hours: Vec<&Alert> = alerts
        .iter()
        .filter(|alert| alert.kind == AlertKind::OffHours)
        .collect();
    assert_eq!(off_hours.len(), 1, "{alerts:#?}");
    assert_eq!(off_hours[0].caller.as_deref(), Some("sync"));
}

#[test]
fn a_nightly_batch_busy_for_ten_minutes_is_expected_at_its_busy_rate() {
    let mut noise = Noise(17);
    // 30 calls a minute from 02:00 to 02:10 every night, nothing else.
    let batch = |time: i64| {
        let minute_of_day = time.rem_euclid(DAY_MS) / MINUTE_MS;
        if (2 * 60..2 * 60 + 10).contains(&minute_of_day) {
            30.0
        } else {
            0.0
        }
    };
    let mut events = paced(START_MS, 10 * 1_440, "batch", &mut noise, batch);
    events.extend(paced(START_MS, 10 * 1_440, "web", &mut noise, |_| 3.0));
    events.sort_by_key(|event| event.time_unix_ms);
    let mut engine = Engine::new(EngineConfig::default());
    let alerts = run(&mut engine, &events);
    // The batch's own keys expect it once its slot (weekday 02:00, 10 minutes a night) has 30
    // minutes of data: from the second Monday on. (The integration key, which also carries
    // "web" all hour, still sees 30 calls a minute against an hourly mean of about 8: see
    // docs/DETECTION.md.)
    let late: Vec<&Alert> = alerts
        .iter()
        .filter(|alert| {
            alert.caller.as_deref() == Some("batch") && raised_at(alert) >= START_MS + 7 * DAY_MS
        })
        .collect();
    assert!(late.is_empty(), "{late:#?}");
    assert!(
        alerts
            .iter()
            .any(|alert| alert.caller.as_deref() == Some("batch")),
        "the first nights are new: {alerts:#?}"
    );
}

#[test]
fn a_snapshot_from_before_the_window_and_slow_volume_checks_restores() {
    let mut noise = Noise(23);
    let (engine, now) = warmed_engine(&mut noise);
    let mut snapshot = serde_json::to_value(engine.snapshot()).unwrap();
    // Remove what the engine added since snapshot version 1 was first written.
    let config = snapshot["config"].as_object_mut().unwrap();
    for field in [
        "window_minutes",
        "long_run_minutes",
        "slow_volume_window_minutes",
        "slow_volume_minutes",
        "off_hours_max_weekly_events",
    ] {
        assert!(config.remove(field).is_some(), "{field}");
    }
    for key in snapshot["keys"].as_array_mut().unwrap() {
        let state = key[1].as_object_mut().unwrap();
        for field in ["recent", "totals", "previous_latency_ms", "volume_steps"] {
            state.remove(field);
        }
        state["bucket"]
            .as_object_mut()
            .unwrap()
            .remove("latency_max_ms");
        for baseline in state["baselines"].as_array_mut().unwrap() {
            if let Some(seasonal) = baseline["seasonal"].as_object_mut() {
                seasonal.remove("visit_hour");
                seasonal.remove("visit_mean");
            }
        }
    }
    let old = serde_json::to_string(&snapshot).unwrap();
    let mut restored = Engine::restore(serde_json::from_str(&old).unwrap());
    assert_eq!(restored.config(), &EngineConfig::default());
    let spike = burst(now);
    let alerts = run(&mut restored, &spike);
    assert!(
        kinds(&alerts).contains(&AlertKind::RateSpike),
        "{alerts:#?}"
    );
}
