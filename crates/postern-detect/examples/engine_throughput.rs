//! Measures the behaviour engine's speed on synthetic gateway events (one core).
//!
//! ```text
//! cargo run --release -p postern-detect --example engine_throughput -- [EVENTS]
//! ```

use std::sync::Arc;
use std::time::Instant;

use postern_detect::engine::{DetectEvent, Engine, EngineConfig};

fn main() {
    let count: usize = std::env::args()
        .nth(1)
        .and_then(|arg| arg.parse().ok())
        .unwrap_or(1_000_000);
    let integrations: Vec<Arc<str>> = (0..20).map(|i| format!("vendor-{i}").into()).collect();
    let callers: Vec<Arc<str>> = (0..25).map(|i| format!("service-{i}").into()).collect();
    let operations: Vec<Arc<str>> = (0..8).map(|i| format!("operation-{i}").into()).collect();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let start_ms = 1_795_996_800_000i64;
    let events: Vec<DetectEvent> = (0..count)
        .map(|index| {
            let random = next();
            DetectEvent {
                // About 300 events a second: three days of traffic for a million events.
                time_unix_ms: start_ms + index as i64 * 3,
                integration: Some(integrations[(random % 20) as usize].clone()),
                caller: Some(callers[((random >> 8) % 25) as usize].clone()),
                operation: Some(operations[((random >> 16) % 8) as usize].clone()),
                status: if (random >> 24) % 50 == 0 { 500 } else { 200 },
                request_bytes: (random >> 32) % 2_000,
                response_bytes: (random >> 40) % 20_000,
                duration_ms: ((random >> 48) % 300) as f64,
                source_ip: Some(
                    format!("10.0.{}.{}", (random >> 8) % 25, (random >> 56) % 4).into(),
                ),
                decision: Some("allow".into()),
                reason: Some("granted".into()),
                host: None,
            }
        })
        .collect();
    let mut engine = Engine::new(EngineConfig::default());
    let started = Instant::now();
    let mut by_kind = std::collections::BTreeMap::<&'static str, usize>::new();
    for event in &events {
        for alert in engine.observe(event, event.time_unix_ms) {
            *by_kind.entry(alert.kind.as_str()).or_default() += 1;
        }
    }
    let alerts: usize = by_kind.values().sum();
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{count} events in {seconds:.3} s: {:.0} events/s, {:.2} µs/event; {alerts} alerts {by_kind:?}, {} keys",
        count as f64 / seconds,
        seconds * 1e6 / count as f64,
        engine.key_count()
    );
}
