//! Replaying recorded gateway events (`events.jsonl`) through the [`Engine`], as fast as it
//! goes. This module does IO: it reads lines and writes alert lines.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::time::Instant;

use crate::engine::{DetectEvent, Engine, EngineConfig};
use crate::error::DetectError;

/// The outcome of a replay.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ReplayReport {
    pub events: u64,
    /// Lines that were not a valid event (skipped); the first one's error is in
    /// `first_invalid_line`.
    pub invalid_lines: u64,
    pub first_invalid_line: Option<String>,
    pub alerts: u64,
    pub alerts_by_kind: BTreeMap<String, u64>,
    pub seconds: f64,
    pub events_per_second: f64,
    /// Keys tracked at the end.
    pub keys: usize,
}

/// Replays `events` (one JSON event per line, the gateway's schema) through a fresh engine with
/// the default configuration, writing one JSON alert per line to `alerts_out`. `progress` is
/// called with the number of bytes and events read so far, every 64 Ki events and at the end.
pub fn replay(
    events: impl BufRead,
    alerts_out: impl Write,
    progress: impl FnMut(u64, u64),
) -> Result<ReplayReport, DetectError> {
    replay_with(
        Engine::new(EngineConfig::default()),
        events,
        alerts_out,
        progress,
    )
    .map(|(report, _)| report)
}

/// [`replay`] through a given engine (for instance one restored from a snapshot); returns the
/// engine too, so its state can be snapshotted.
pub fn replay_with(
    mut engine: Engine,
    mut events: impl BufRead,
    alerts_out: impl Write,
    mut progress: impl FnMut(u64, u64),
) -> Result<(ReplayReport, Engine), DetectError> {
    let started = Instant::now();
    let mut out = std::io::BufWriter::new(alerts_out);
    let mut report = ReplayReport {
        events: 0,
        invalid_lines: 0,
        first_invalid_line: None,
        alerts: 0,
        alerts_by_kind: BTreeMap::new(),
        seconds: 0.0,
        events_per_second: 0.0,
        keys: 0,
    };
    let (mut line, mut line_number, mut bytes_read) = (Vec::new(), 0usize, 0u64);
    loop {
        line.clear();
        let read = events
            .read_until(b'\n', &mut line)
            .map_err(|source| DetectError::Read {
                path: "events input".into(),
                source,
            })?;
        if read == 0 {
            break;
        }
        line_number += 1;
        bytes_read += read as u64;
        // A line that is not UTF-8 is an invalid line like any other, not the end of the input.
        let parsed = std::str::from_utf8(&line)
            .map_err(|error| error.to_string())
            .and_then(|text| {
                let text = text.trim();
                match text.is_empty() {
                    true => Ok(None),
                    false => serde_json::from_str::<DetectEvent>(text)
                        .map(Some)
                        .map_err(|error| error.to_string()),
                }
            });
        let event: DetectEvent = match parsed {
            Ok(None) => continue,
            Ok(Some(event)) => event,
            Err(error) => {
                report.invalid_lines += 1;
                if report.first_invalid_line.is_none() {
                    report.first_invalid_line = Some(format!("line {line_number}: {error}"));
                }
                continue;
            }
        };
        report.events += 1;
        for alert in engine.observe(&event, event.time_unix_ms) {
            report.alerts += 1;
            *report
                .alerts_by_kind
                .entry(alert.kind.as_str().to_owned())
                .or_default() += 1;
            serde_json::to_writer(&mut out, &alert)
                .map_err(|error| DetectError::AlertOutput(error.into()))?;
            out.write_all(b"\n").map_err(DetectError::AlertOutput)?;
        }
        if report.events.is_multiple_of(65_536) {
            progress(bytes_read, report.events);
        }
    }
    out.flush().map_err(DetectError::AlertOutput)?;
    progress(bytes_read, report.events);
    report.seconds = started.elapsed().as_secs_f64();
    report.events_per_second = report.events as f64 / report.seconds.max(1e-12);
    report.keys = engine.key_count();
    Ok((report, engine))
}

#[cfg(test)]
mod tests {
    /// A line that is not UTF-8 is counted as invalid, and the lines after it are replayed.
    #[test]
    fn a_line_that_is_not_utf8_is_an_invalid_line() {
        let good = r#"{"time":"2026-11-28T00:00:00.000Z","integration":"acme","caller":"svc","operation":"get","method":"GET","path":"/v1/x","status":200,"decision":"allow","reason":"granted","request_bytes":0,"response_bytes":10,"duration_ms":1.0,"source_ip":"10.0.0.1"}"#;
        let mut input = Vec::new();
        input.extend_from_slice(good.as_bytes());
        input.extend_from_slice(b"\n{\"integration\":\"\xff\xfe\"}\n");
        input.extend_from_slice(good.as_bytes());
        input.push(b'\n');
        let report = super::replay(&input[..], std::io::sink(), |_, _| {}).unwrap();
        assert_eq!(report.invalid_lines, 1);
        assert_eq!(report.events, 2);
        assert!(report
            .first_invalid_line
            .as_deref()
            .is_some_and(|line| line.starts_with("line 2:")));
    }
}
