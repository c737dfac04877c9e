//! `postern scan FILE` (the payload scanner on a file) and `postern dataflow` (which data classes
//! went to which vendor, from whom, when). Neither prints a matched value: offsets and classes only.

use std::io::BufRead as _;
use std::path::PathBuf;

use postern_scan::{ContentTypeHint, Scanner};

use crate::creds::VaultLocation;
use crate::ExitCode;

#[derive(clap::Args)]
pub struct ScanArgs {
    /// A JSON, NDJSON or text file.
    file: PathBuf,
    /// One JSON object per finding: {"line", "start", "end", "class"} (byte offsets in the line).
    #[arg(long)]
    jsonl: bool,
    /// A TOML rule file extending or overriding the built-in rules.
    #[arg(long)]
    rules: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct DataflowArgs {
    /// Only this integration.
    #[arg(long)]
    integration: Option<String>,
    /// Only the last N days, e.g. `30d` (default: everything).
    #[arg(long)]
    since: Option<String>,
    /// Print the rows as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    location: VaultLocation,
}

pub fn scan(args: ScanArgs) -> ExitCode {
    let scanner = match &args.rules {
        None => Scanner::default(),
        Some(path) => {
            let text = match std::fs::read_to_string(path) {
                Ok(text) => text,
                Err(error) => {
                    eprintln!("error: cannot read {}: {error}", path.display());
                    return ExitCode::Failure;
                }
            };
            match Scanner::with_rule_file(&text) {
                Ok(scanner) => scanner,
                Err(error) => {
                    eprintln!("{}: error: {error}", path.display());
                    return ExitCode::InvalidConfig;
                }
            }
        }
    };
    let file = match std::fs::File::open(&args.file) {
        Ok(file) => file,
        Err(error) => {
            eprintln!("error: cannot read {}: {error}", args.file.display());
            return ExitCode::Failure;
        }
    };
    let mut totals: std::collections::BTreeMap<String, usize> = Default::default();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    use std::io::Write as _;
    for (index, line) in std::io::BufReader::new(file).split(b'\n').enumerate() {
        let Ok(line) = line else {
            eprintln!("error: reading {}", args.file.display());
            return ExitCode::Failure;
        };
        let result = scanner.scan(&line, ContentTypeHint::Unknown);
        for finding in &result.findings {
            *totals.entry(finding.class.to_string()).or_default() += 1;
            if args.jsonl {
                let _ = writeln!(
                    out,
                    "{}",
                    serde_json::json!({"line": index + 1, "start": finding.start, "end": finding.end, "class": &*finding.class})
                );
            } else {
                let _ = writeln!(
                    out,
                    "{}:{}:{}-{}  {:<24} rule {}",
                    args.file.display(),
                    index + 1,
                    finding.start,
                    finding.end,
                    finding.class,
                    finding.rule_id
                );
            }
        }
    }
    if !args.jsonl {
        let _ = writeln!(out, "{} finding(s)", totals.values().sum::<usize>());
        for (class, count) in &totals {
            let _ = writeln!(out, "  {class:<24} {count}");
        }
    }
    ExitCode::Ok
}

pub fn dataflow(args: DataflowArgs) -> ExitCode {
    let since_day = match args.since.as_deref() {
        None => None,
        Some(text) => match text.strip_suffix('d').and_then(|d| d.parse::<i64>().ok()) {
            Some(days) => {
                let at = std::time::SystemTime::now()
                    - std::time::Duration::from_secs((days.max(0) as u64) * 86_400);
                Some(postern_gateway::events::rfc3339_millis(at)[..10].to_string())
            }
            None => {
                eprintln!("error: --since takes a number of days, e.g. 30d");
                return ExitCode::Usage;
            }
        },
    };
    let vault = match crate::creds::open_vault(&args.location) {
        Ok(vault) => vault,
        Err(code) => return code,
    };
    let rows = match vault.dataflow(args.integration.as_deref(), since_day.as_deref()) {
        Ok(rows) => rows,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::Failure;
        }
    };
    if args.json {
        println!("{}", serde_json::json!({"dataflow": rows}));
        return ExitCode::Ok;
    }
    println!(
        "{:<10} {:<18} {:<16} {:<22} {:<9} {:>8}",
        "DAY", "INTEGRATION", "CALLER", "CLASS", "DIRECTION", "COUNT"
    );
    for row in rows {
        println!(
            "{:<10} {:<18} {:<16} {:<22} {:<9} {:>8}",
            row.day, row.integration, row.caller, row.class, row.direction, row.count
        );
    }
    ExitCode::Ok
}
