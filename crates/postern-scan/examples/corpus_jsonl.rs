//! The labelled corpus as JSONL, and this scanner's findings on it, for side-by-side
//! comparisons (`bench/scan/presidio_compare.py`).
//!
//! `corpus_jsonl export OUT.jsonl [samples] [seed]` writes one sample per line:
//! `{"id", "family", "syntax", "text", "labels": [{"class", "start", "end"}]}` (ASCII, so byte
//! offsets are character offsets). `corpus_jsonl scan IN.jsonl OUT.jsonl` scans every `text`
//! with the default rules, writes `{"id", "findings": [{"class", "start", "end"}]}` per line and
//! prints `{"bytes", "seconds", "mb_per_s", "cpu_seconds", "cpu_mb_per_s"}` (scan time only, one
//! thread, best of five passes; `cpu_*` use the thread's CPU time, robust on a shared machine).

#[path = "../tests/support/corpus.rs"]
mod corpus;
#[path = "support/cpu_time.rs"]
mod cpu_time;
use cpu_time::thread_cpu_seconds;

use std::io::{BufRead, BufWriter, Write};
use std::time::Instant;

use postern_scan::{ContentTypeHint, Scanner};
use serde_json::json;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("export") if args.len() >= 3 => {
            let samples: usize = args
                .get(3)
                .and_then(|value| value.parse().ok())
                .unwrap_or(4000);
            let seed: u64 = args
                .get(4)
                .and_then(|value| value.parse().ok())
                .unwrap_or(7);
            let mut out = BufWriter::new(std::fs::File::create(&args[2]).expect("create output"));
            for (id, sample) in corpus::generate(seed, samples).into_iter().enumerate() {
                assert!(sample.body.is_ascii());
                let labels: Vec<_> = sample.labels.iter().map(|label| json!({"class": label.class, "start": label.start, "end": label.end})).collect();
                let line = json!({"id": id, "family": sample.family, "syntax": sample.syntax.name(), "text": sample.body, "labels": labels});
                writeln!(out, "{line}").expect("write");
            }
        }
        Some("scan") if args.len() >= 4 => {
            let input = std::fs::File::open(&args[2]).expect("open corpus");
            let samples: Vec<serde_json::Value> = std::io::BufReader::new(input)
                .lines()
                .map(|line| serde_json::from_str(&line.expect("read")).expect("json line"))
                .collect();
            let texts: Vec<(u64, ContentTypeHint, String)> = samples
                .iter()
                .map(|sample| {
                    let hint = match sample["syntax"].as_str() {
                        Some("json") => ContentTypeHint::Json,
                        Some("form") => ContentTypeHint::FormUrlEncoded,
                        _ => ContentTypeHint::Text,
                    };
                    (
                        sample["id"].as_u64().expect("id"),
                        hint,
                        sample["text"].as_str().expect("text").to_owned(),
                    )
                })
                .collect();
            let scanner = Scanner::default();
            let mut results = Vec::new();
            let mut seconds = f64::MAX;
            let mut cpu_seconds = f64::MAX;
            for _ in 0..5 {
                let (started, started_cpu) = (Instant::now(), thread_cpu_seconds());
                results = texts
                    .iter()
                    .map(|(_, hint, text)| scanner.scan(text.as_bytes(), *hint))
                    .collect();
                cpu_seconds = cpu_seconds.min(thread_cpu_seconds() - started_cpu);
                seconds = seconds.min(started.elapsed().as_secs_f64());
            }
            let bytes: usize = texts.iter().map(|(_, _, text)| text.len()).sum();
            let mut out = BufWriter::new(std::fs::File::create(&args[3]).expect("create output"));
            for ((id, _, _), result) in texts.iter().zip(results) {
                let findings: Vec<_> = result
                    .findings
                    .iter()
                    .map(|f| json!({"class": &*f.class, "start": f.start, "end": f.end}))
                    .collect();
                writeln!(out, "{}", json!({"id": id, "findings": findings})).expect("write");
            }
            let cpu_mb_per_s = bytes as f64 / 1e6 / cpu_seconds;
            let timing = json!({"bytes": bytes, "seconds": seconds, "mb_per_s": bytes as f64 / 1e6 / seconds, "cpu_seconds": cpu_seconds, "cpu_mb_per_s": cpu_mb_per_s});
            println!("{timing}");
        }
        _ => {
            eprintln!("usage: corpus_jsonl export OUT.jsonl [samples] [seed] | corpus_jsonl scan IN.jsonl OUT.jsonl");
            std::process::exit(2);
        }
    }
}
