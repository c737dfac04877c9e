//! Throughput of the default rule set, single thread, on two JSON corpora:
//!
//! 1. the labelled corpus families (customers, charges, messages, chat completions, CRM
//!    contacts, NDJSON logs) — dense on purpose: about 4.4 findings per KB;
//! 2. PII-light "typical" API JSON: GitHub-style issue list pages (ids, URLs, timestamps,
//!    labels, markdown), about 2 findings per 30 KB page;
//! 3. form-encoded request bodies, scanned as forms: Stripe-style charge creations (bracketed,
//!    percent-encoded `metadata[…]` keys beside plain `amount=…` pairs) and the labelled
//!    corpus's Twilio-style messages (phone numbers as `%2B1…`, `+` for spaces).
//!
//! `cargo run --release -p postern-scan --example scan_bench -- [megabytes] [--breakdown]`
//! (default 100 MB per corpus). Each body is scanned separately, as the gateway would.
//! MB/s per core is bytes over the thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), best of five
//! passes after a warm-up, so other processes on a shared machine do not distort it; wall-clock
//! MB/s is printed next to it. 1 MB = 10^6 bytes.
//!
//! Profiling aids: `SCAN_BENCH_DISABLE=id,id` switches rules off; `SCAN_BENCH_TYPICAL_ONLY=1`
//! runs only the second corpus.

#[path = "../tests/support/corpus.rs"]
mod corpus;
#[path = "support/cpu_time.rs"]
mod cpu_time;
use cpu_time::thread_cpu_seconds;

use std::time::Instant;

use postern_scan::{redact, ContentTypeHint, Rules, Scanner};

fn main() {
    let megabytes: usize = std::env::args()
        .nth(1)
        .and_then(|arg| arg.parse().ok())
        .unwrap_or(100);
    let target = megabytes * 1_000_000;
    let disabled = std::env::var("SCAN_BENCH_DISABLE").unwrap_or_default();
    let scanner = scanner_without(
        &disabled
            .split(',')
            .filter(|id| !id.is_empty())
            .collect::<Vec<_>>(),
    );
    if !disabled.is_empty() {
        println!("rules disabled: {disabled}");
    }
    let rng = corpus::Rng::new(2024);

    if std::env::var_os("SCAN_BENCH_TYPICAL_ONLY").is_none() {
        let mut bodies: Vec<Vec<u8>> = Vec::new();
        let mut total = 0;
        while total < target {
            let sample = corpus::sample(
                &rng,
                corpus::JSON_FAMILIES[bodies.len() % corpus::JSON_FAMILIES.len()],
            );
            total += sample.body.len();
            bodies.push(sample.body.into_bytes());
        }
        report("labelled corpus families (dense)", &scanner, &bodies);
        // The same bodies with every finding masked: same structure and hard negatives, no
        // positives (the cost of looking at bytes that hold nothing).
        let masked: Vec<Vec<u8>> = bodies
            .iter()
            .map(|body| redact(body, &scanner.scan(body, ContentTypeHint::Json).findings))
            .collect();
        report("same bodies, findings masked", &scanner, &masked);
    }

    let typical = typical_api_pages(&rng, target);
    report(
        "typical API JSON (GitHub-style issue lists)",
        &scanner,
        &typical,
    );

    let forms = form_bodies(&rng, target / 10);
    report_as(
        "form bodies (Stripe- and Twilio-style)",
        &scanner,
        &forms,
        ContentTypeHint::FormUrlEncoded,
    );

    if std::env::args().any(|arg| arg == "--breakdown") {
        let builtin = Rules::builtin();
        let native: Vec<&str> = builtin
            .specs()
            .iter()
            .filter(|spec| spec.detector.is_some())
            .map(|spec| spec.id.as_str())
            .collect();
        let keyed: Vec<&str> = builtin
            .specs()
            .iter()
            .filter(|spec| !spec.key_context.is_empty())
            .map(|spec| spec.id.as_str())
            .collect();
        let others: Vec<&str> = builtin
            .specs()
            .iter()
            .filter(|spec| spec.detector.is_none())
            .map(|spec| spec.id.as_str())
            .collect();
        let native_and_keyed: Vec<&str> = native.iter().chain(keyed.iter()).copied().collect();
        for (name, off) in [
            ("  digit pass only", &others),
            ("  keyword anchors + keys only", &native),
            ("  keyword anchors only", &native_and_keyed),
        ] {
            report(name, &scanner_without(off), &typical);
        }
    }
}

fn scanner_without(rule_ids: &[&str]) -> Scanner {
    let file: String = rule_ids
        .iter()
        .map(|id| format!("[[rules]]\nid = \"{id}\"\nclass = \"x\"\nenabled = false\n"))
        .collect();
    Scanner::with_rule_file(&file).expect("rule file")
}

fn report(name: &str, scanner: &Scanner, bodies: &[Vec<u8>]) {
    report_as(name, scanner, bodies, ContentTypeHint::Json);
}

fn report_as(name: &str, scanner: &Scanner, bodies: &[Vec<u8>], hint: ContentTypeHint) {
    let total: usize = bodies.iter().map(Vec::len).sum();
    let (findings, wall_seconds, cpu_seconds) = measure(scanner, bodies, hint);
    println!(
        "{name}: {:.1} MB in {} bodies (mean {} B, {:.2} findings/KB): {:.0} MB/s per core (CPU time), {:.0} MB/s wall",
        total as f64 / 1e6,
        bodies.len(),
        total / bodies.len().max(1),
        findings as f64 * 1000.0 / total as f64,
        total as f64 / 1e6 / cpu_seconds,
        total as f64 / 1e6 / wall_seconds
    );
}

/// Findings count and the best wall and CPU seconds of five passes (after a warm-up pass).
fn measure(scanner: &Scanner, bodies: &[Vec<u8>], hint: ContentTypeHint) -> (usize, f64, f64) {
    let findings: usize = bodies
        .iter()
        .map(|body| scanner.scan(body, hint).findings.len())
        .sum();
    let (mut best_wall, mut best_cpu) = (f64::MAX, f64::MAX);
    for _ in 0..5 {
        let (wall, cpu) = (Instant::now(), thread_cpu_seconds());
        let count: usize = bodies
            .iter()
            .map(|body| scanner.scan(body, hint).findings.len())
            .sum();
        best_cpu = best_cpu.min(thread_cpu_seconds() - cpu);
        best_wall = best_wall.min(wall.elapsed().as_secs_f64());
        assert_eq!(count, findings);
    }
    (findings, best_wall, best_cpu)
}

/// Form bodies, about `target` bytes in all: two Stripe-style charge creations (most pairs
/// plain, a few `metadata[…]` and `expand[]` keys percent-encoded, a description with `+`) for
/// each Twilio-style message from the labelled corpus.
fn form_bodies(rng: &corpus::Rng, target: usize) -> Vec<Vec<u8>> {
    let mut bodies = Vec::new();
    let mut total = 0;
    while total < target {
        let body = if bodies.len() % 3 == 2 {
            corpus::sample(rng, "messages_form").body
        } else {
            format!(
                "amount={}&currency={}&customer=cus_{}&description=Order+{}+for+{}&source=tok_{}\
                 &capture=true&statement_descriptor=ACME+STORE&metadata%5Border_id%5D={}\
                 &metadata%5Bcart%5D={}&metadata%5Bchannel%5D=web&expand%5B%5D=balance_transaction",
                rng.range(100, 500_000),
                rng.pick(&["usd", "eur", "gbp"]),
                rng.alnum(14),
                rng.digits(6),
                rng.pick(&["web", "app", "kiosk"]),
                rng.alnum(24),
                rng.digits(8),
                rng.alnum(12),
            )
        };
        total += body.len();
        bodies.push(body.into_bytes());
    }
    bodies
}

/// Pages of 10-30 GitHub-style issues, about `target` bytes in all. Roughly one issue in ten
/// carries an email in its text.
fn typical_api_pages(rng: &corpus::Rng, target: usize) -> Vec<Vec<u8>> {
    let mut pages = Vec::new();
    let mut total = 0;
    while total < target {
        let mut page = String::from("[");
        for index in 0..rng.range(10, 30) {
            if index > 0 {
                page.push(',');
            }
            let number = rng.range(1, 40_000);
            let login = format!(
                "{}{}",
                ["octo", "dev", "ana", "kim", "lee"][rng.below(5) as usize],
                rng.range(1, 999)
            );
            let user_id = rng.range(1_000, 90_000_000);
            let created = format!(
                "20{}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
                rng.range(18, 25),
                rng.range(1, 12),
                rng.range(1, 28),
                rng.below(24),
                rng.below(60),
                rng.below(60)
            );
            let body_text = if rng.chance(10) {
                format!("Repro steps below. Contact {login}@example.com if you need logs.\\n\\n```\\nError at line {} col {}\\n```", rng.range(1, 900), rng.range(1, 80))
            } else {
                format!("Steps to reproduce:\\n1. run `cargo test`\\n2. see failure in module {}\\n\\nExpected {} but got {} after {} ms.", rng.alnum(8), rng.range(1, 100), rng.range(1, 100), rng.range(1, 5000))
            };
            page.push_str(&format!(
                r#"{{"url":"https://api.github.com/repos/acme/widgets/issues/{number}","repository_url":"https://api.github.com/repos/acme/widgets","labels_url":"https://api.github.com/repos/acme/widgets/issues/{number}/labels{{/name}}","comments_url":"https://api.github.com/repos/acme/widgets/issues/{number}/comments","html_url":"https://github.com/acme/widgets/issues/{number}","id":{},"node_id":"I_kwDO{}","number":{number},"title":"{} fails on {} with version {}.{}.{}","user":{{"login":"{login}","id":{user_id},"node_id":"MDQ6VXNlcj{}","avatar_url":"https://avatars.githubusercontent.com/u/{user_id}?v=4","gravatar_id":"","url":"https://api.github.com/users/{login}","html_url":"https://github.com/{login}","type":"User","site_admin":false}},"labels":[{{"id":{},"node_id":"LA_kwDO{}","url":"https://api.github.com/repos/acme/widgets/labels/bug","name":"bug","color":"d73a4a","default":true,"description":"Something isn't working"}}],"state":"open","locked":false,"assignee":null,"assignees":[],"milestone":null,"comments":{},"created_at":"{created}","updated_at":"{created}","closed_at":null,"author_association":"CONTRIBUTOR","active_lock_reason":null,"body":"{body_text}","reactions":{{"url":"https://api.github.com/repos/acme/widgets/issues/{number}/reactions","total_count":{},"+1":{},"-1":0}},"timeline_url":"https://api.github.com/repos/acme/widgets/issues/{number}/timeline","state_reason":null}}"#,
                rng.range(1_000_000_000, 3_000_000_000),
                rng.alnum(14),
                ["parser", "client", "build", "docs"][rng.below(4) as usize],
                ["linux", "macos", "windows"][rng.below(3) as usize],
                rng.below(5),
                rng.below(30),
                rng.below(10),
                rng.alnum(12),
                rng.range(1_000_000_000, 9_000_000_000),
                rng.alnum(16),
                rng.below(40),
                rng.below(20),
                rng.below(20),
            ));
        }
        page.push(']');
        total += page.len();
        pages.push(page.into_bytes());
    }
    pages
}
