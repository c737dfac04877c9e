//! Replay of recorded events: the same engine, driven from an `events.jsonl` stream.

use postern_detect::engine::Alert;
use postern_detect::replay;

#[test]
fn replay_writes_one_alert_per_line_and_counts_invalid_lines() {
    let mut input = String::new();
    // One integration, quiet for two days (one call a minute), then a new caller.
    let start_s = 1_795_996_800i64;
    for minute in 0..2 * 1_440 {
        let time =
            postern_detect::timestamp::format_rfc3339_millis((start_s + minute * 60) * 1_000);
        input.push_str(&format!(
            r#"{{"time":"{time}","integration":"acme","caller":"checkout","operation":"get","status":200,"request_bytes":10,"response_bytes":100,"duration_ms":5.0,"source_ip":"10.0.0.1","decision":"allow","reason":"granted"}}"#
        ));
        input.push('\n');
    }
    input.push_str("not json\n\n");
    let time = postern_detect::timestamp::format_rfc3339_millis((start_s + 2 * 86_400) * 1_000);
    input.push_str(&format!(
        r#"{{"time":"{time}","integration":"acme","caller":"intruder","operation":"get","status":200,"request_bytes":10,"response_bytes":100,"duration_ms":5.0,"source_ip":"198.51.100.7","decision":"allow","reason":"granted"}}"#
    ));
    input.push('\n');

    let mut output = Vec::new();
    let mut last_progress = (0, 0);
    let report = replay(input.as_bytes(), &mut output, |bytes, events| {
        last_progress = (bytes, events)
    })
    .unwrap();
    assert_eq!(report.events, 2 * 1_440 + 1);
    assert_eq!(report.invalid_lines, 1);
    assert!(
        report
            .first_invalid_line
            .as_deref()
            .unwrap()
            .starts_with("line 2881:"),
        "{report:?}"
    );
    assert_eq!(last_progress, (input.len() as u64, report.events));
    let alerts: Vec<Alert> = String::from_utf8(output)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(alerts.len() as u64, report.alerts);
    assert_eq!(
        report.alerts_by_kind.get("new_caller"),
        Some(&1),
        "{alerts:?}"
    );
}
