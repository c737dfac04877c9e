//! Micro-benchmark of the ledger: sequencing throughput with group commit + synchronous writes,
//! proof times, reopen and offline verification.
//!
//! ```text
//! cargo run --release -p postern-ledger --example ledger_bench -- [ENTRIES] [DIR]
//! ```
//! ENTRIES defaults to 1,000,000; DIR defaults to a fresh directory under /var/tmp (removed
//! afterwards). The appending tasks and the sequencer share one Tokio thread; the batch write
//! and `fdatasync` run on the blocking pool.

use std::time::Instant;

use postern_ledger::{verify_dir, Ledger, LedgerOptions};
use postern_tlog::{keyed_hash, AuditRecord, Decision, RecordKind, RECORD_VERSION};
use rand::{Rng, SeedableRng};

const CONCURRENT_CALLERS: u64 = 2048;

fn record(i: u64) -> Vec<u8> {
    AuditRecord {
        version: RECORD_VERSION,
        kind: RecordKind::Intent,
        time_unix_ms: 1_767_225_600_000 + i,
        request_id: format!("req-{i:016x}"),
        caller: "spiffe://prod.example.org/ns/payments/sa/billing".into(),
        integration: "stripe".into(),
        operation: "create_charge".into(),
        method: "POST".into(),
        path_template: "/v1/charges".into(),
        decision: Decision::Allow,
        reason: None,
        status: None,
        request_bytes: Some(512),
        response_bytes: None,
        data_classes: vec!["card_number".into()],
        intent_index: None,
        hmacs: [(
            "request_body".to_string(),
            keyed_hash(b"bench key", "request_body", &i.to_be_bytes()),
        )]
        .into_iter()
        .collect(),
    }
    .encode()
    .expect("valid record")
}

fn main() {
    let mut args = std::env::args().skip(1);
    let entries: u64 = args
        .next()
        .map(|a| a.parse().expect("ENTRIES must be a number"))
        .unwrap_or(1_000_000);
    let (dir, remove_after) = match args.next() {
        Some(dir) => (std::path::PathBuf::from(dir), false),
        None => (
            std::env::temp_dir()
                .join("postern-ledger-bench")
                .join(format!("{}", std::process::id())),
            true,
        ),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(entries, &dir));
    if remove_after {
        let _ = std::fs::remove_dir_all(&dir);
    }
}

async fn run(entries: u64, dir: &std::path::Path) {
    let sample = record(0);
    println!(
        "ledger_bench: {entries} entries of ~{} bytes, {CONCURRENT_CALLERS} concurrent callers, dir {}",
        sample.len(),
        dir.display()
    );
    let (ledger, _) = Ledger::open(dir, LedgerOptions::new("bench.postern.example/audit"))
        .await
        .expect("open");
    let start_size = ledger.size();

    let records: Vec<Vec<u8>> = (0..entries).map(record).collect();
    let records = std::sync::Arc::new(records);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for caller in 0..CONCURRENT_CALLERS {
        let ledger = ledger.clone();
        let records = records.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = caller;
            while i < entries {
                ledger
                    .append(records[i as usize].clone())
                    .await
                    .expect("append");
                i += CONCURRENT_CALLERS;
            }
        }));
    }
    for task in tasks {
        task.await.expect("caller task");
    }
    let append_seconds = started.elapsed().as_secs_f64();
    println!(
        "append (group commit + synchronous write): {:.0} entries/s ({entries} in {append_seconds:.2} s)",
        entries as f64 / append_seconds
    );

    let started = Instant::now();
    let checkpoint = ledger.checkpoint().expect("checkpoint").expect("tree grew");
    println!(
        "checkpoint (sync hashes, root, consistency check, sign, write): {:.2} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    let size = checkpoint.size;

    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let proofs = 10_000;
    let started = Instant::now();
    for _ in 0..proofs {
        let index = rng.gen_range(0..size);
        let proof = ledger.inclusion_proof(index, size).expect("proof");
        std::hint::black_box(proof);
    }
    println!(
        "inclusion proof at size {size}: {:.1} µs each",
        started.elapsed().as_secs_f64() * 1e6 / f64::from(proofs)
    );
    let started = Instant::now();
    for _ in 0..proofs {
        let old = rng.gen_range(1..=size);
        let proof = ledger.consistency_proof(old, size).expect("proof");
        std::hint::black_box(proof);
    }
    println!(
        "consistency proof to size {size}: {:.1} µs each",
        started.elapsed().as_secs_f64() * 1e6 / f64::from(proofs)
    );
    ledger.close().await;

    let started = Instant::now();
    let (reopened, report) = Ledger::open(dir, LedgerOptions::new("bench.postern.example/audit"))
        .await
        .expect("reopen");
    println!(
        "reopen (CRC every record, recompute tree, compare stored hashes, check checkpoint): {:.2} s for {} entries",
        started.elapsed().as_secs_f64(),
        report.entries
    );
    reopened.close().await;

    let started = Instant::now();
    let verified = verify_dir(dir, None, |_, _| {}).expect("verify");
    println!(
        "verify_dir (framing, CRC, tree, stored hashes, {} checkpoints): {:.2} s for {} entries",
        verified.checkpoints_verified,
        started.elapsed().as_secs_f64(),
        verified.entries
    );
    assert_eq!(verified.entries, start_size + entries);
}
