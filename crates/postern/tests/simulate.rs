//! `postern simulate` as a user runs it: the report, the files it writes, and the round trip of
//! its events through `postern replay`.

use std::path::Path;
use std::process::Command;

fn postern(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_postern"))
        .args(args)
        .env_remove("POSTERN_CONFIG")
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).to_string(),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

fn path(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn help_for_the_detection_commands() {
    for args in [
        vec!["simulate", "--help"],
        vec!["replay", "--help"],
        vec!["bench", "nab", "--help"],
    ] {
        let (code, stdout, _) = postern(&args);
        assert_eq!(code, 0, "{args:?}");
        assert!(stdout.contains("Usage:"), "{args:?}: {stdout}");
    }
    let (_, stdout, _) = postern(&["simulate", "--help"]);
    for flag in [
        "--days",
        "--seed",
        "--incidents",
        "--events-out",
        "--alerts-out",
        "--json",
        "slow_exfiltration",
    ] {
        assert!(stdout.contains(flag), "{flag}: {stdout}");
    }
}

#[test]
fn simulated_events_replay_to_the_same_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let alerts = dir.path().join("alerts.jsonl");
    let (code, stdout, stderr) = postern(&[
        "simulate",
        "--warmup-days",
        "2",
        "--days",
        "1",
        "--seed",
        "3",
        "--events-out",
        path(&events),
        "--alerts-out",
        path(&alerts),
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let kinds = report["evaluation"]["by_incident_kind"].as_array().unwrap();
    assert_eq!(kinds.len(), 11, "{stdout}");
    assert_eq!(
        report["evaluation"]["incidents"].as_array().unwrap().len(),
        11
    );

    // The events are the gateway's events.jsonl lines, as many as the report says.
    let text = std::fs::read_to_string(&events).unwrap();
    assert_eq!(
        text.lines().count() as u64,
        report["events"].as_u64().unwrap()
    );
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first["schema_version"], 1);
    assert_eq!(first["request_id"].as_str().unwrap().len(), 32);

    // Replaying them gives exactly the alerts the simulation's engine raised.
    let replayed = dir.path().join("replayed.jsonl");
    let (code, _, stderr) = postern(&[
        "replay",
        "--events",
        path(&events),
        "--alerts-out",
        path(&replayed),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains(" 0 invalid lines"), "{stderr}");
    let expected = std::fs::read_to_string(&alerts).unwrap();
    assert!(expected.lines().count() > 10, "{expected}");
    assert_eq!(std::fs::read_to_string(&replayed).unwrap(), expected);
}

#[test]
fn the_table_names_every_incident_kind_and_the_false_alert_rates() {
    let (code, stdout, stderr) = postern(&[
        "simulate",
        "--warmup-days",
        "1",
        "--days",
        "1",
        "--incidents",
        "runaway_client,credential_stuffing",
        "--incidents-per-kind",
        "2",
    ]);
    assert_eq!(code, 0, "{stderr}");
    for text in [
        "runaway_client",
        "credential_stuffing",
        "recall",
        "median TTD",
        "precision",
        "clean traffic with benign shifts",
        "clean traffic without shifts",
    ] {
        assert!(stdout.contains(text), "{text}: {stdout}");
    }
    assert!(!stdout.contains("slow_exfiltration"), "{stdout}");
    // Progress bars are for terminals only.
    assert!(!stderr.contains("simulated minutes"), "{stderr}");

    let (code, stdout, stderr) = postern(&[
        "simulate",
        "--warmup-days",
        "1",
        "--days",
        "1",
        "--incidents",
        "none",
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(report["evaluation"]["incidents"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[test]
fn unknown_incident_kinds_and_unwritable_files_are_refused() {
    let (code, _, stderr) = postern(&["simulate", "--incidents", "runaway_client,typo"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("unknown incident kind `typo`"), "{stderr}");
    assert!(stderr.contains("off_hours_use"), "{stderr}");
    let (code, _, stderr) = postern(&["simulate", "--incidents", ""]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("no incident kind given"), "{stderr}");
    let (code, _, stderr) = postern(&["simulate", "--days", "0"]);
    assert_eq!(code, 2, "{stderr}");
    let (code, _, stderr) = postern(&[
        "simulate",
        "--days",
        "1",
        "--warmup-days",
        "0",
        "--events-out",
        "/nonexistent-dir/events.jsonl",
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("/nonexistent-dir/events.jsonl"), "{stderr}");
}
