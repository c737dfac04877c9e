//! `postern bench nab` and `postern replay`: the detection engine run offline, as fast as it can,
//! with a progress bar on stderr.

use std::io::{BufReader, BufWriter, Write as _};
use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressStyle};

use crate::ExitCode;

/// Published NAB v1.0 scoreboard (standard, low FP, low FN), for side-by-side output.
const SCOREBOARD: &[(&str, f64, f64, f64)] = &[
    ("ARTime", 74.9, 65.1, 80.4),
    ("Numenta HTM", 70.5, 62.6, 75.2),
    ("CAD OSE", 69.9, 67.0, 73.2),
    ("KNN CAD", 58.0, 43.4, 64.8),
    ("Random Cut Forest", 51.7, 38.4, 59.7),
    ("Twitter ADVec", 47.1, 33.6, 53.5),
    ("Windowed Gaussian", 39.6, 20.9, 47.4),
];

#[derive(clap::Args)]
pub struct NabArgs {
    /// The NAB data directory (`data/` with one folder per category).
    #[arg(long)]
    data: PathBuf,
    /// NAB's combined_windows.json.
    #[arg(long)]
    windows: PathBuf,
    /// Write `timestamp,value,anomaly_score` CSVs here, same relative paths as the data.
    #[arg(long)]
    scores_out: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct ReplayArgs {
    /// Recorded events (the gateway's events.jsonl schema).
    #[arg(long)]
    events: PathBuf,
    /// Write alerts (JSON lines) here; default: stdout.
    #[arg(long)]
    alerts_out: Option<PathBuf>,
    /// Print the summary as JSON (on stderr when alerts go to stdout).
    #[arg(long)]
    json: bool,
}

fn bar(total: u64, unit: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} [{{bar:40}}] {{pos}}/{{len}} {unit} ({{per_sec}}, {{eta}})"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

pub fn bench_nab(args: NabArgs) -> ExitCode {
    let progress = bar(0, "series");
    let report = postern_detect::run_nab(
        &args.data,
        &args.windows,
        args.scores_out.as_deref(),
        |done, total| {
            progress.set_length(total as u64);
            progress.set_position(done as u64);
        },
    );
    progress.finish_and_clear();
    let report = match report {
        Ok(report) => report,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::Failure;
        }
    };
    if args.json {
        println!("{}", serde_json::to_string(&report).unwrap_or_default());
        return ExitCode::Ok;
    }
    println!(
        "NAB v1.0: {} series, {} windows, {} points; threshold per profile by exact sweep over distinct scores",
        report.series, report.windows, report.points
    );
    println!(
        "detector: {:.3} s, {:.2} M points/s (one core)",
        report.detector_seconds,
        report.points_per_second / 1e6
    );
    println!();
    println!(
        "{:<22} {:>9} {:>9} {:>9}",
        "detector", "standard", "low FP", "low FN"
    );
    let score = |name: &str| {
        report
            .profiles
            .iter()
            .find(|p| p.profile == name)
            .map_or(f64::NAN, |p| p.normalized_score)
    };
    println!(
        "{:<22} {:>9.1} {:>9.1} {:>9.1}   <- this run",
        "Postern",
        score("standard"),
        score("reward_low_FP_rate"),
        score("reward_low_FN_rate")
    );
    for (name, standard, low_fp, low_fn) in SCOREBOARD {
        println!("{name:<22} {standard:>9.1} {low_fp:>9.1} {low_fn:>9.1}");
    }
    ExitCode::Ok
}

pub fn replay(args: ReplayArgs) -> ExitCode {
    let file = match std::fs::File::open(&args.events) {
        Ok(file) => file,
        Err(error) => {
            eprintln!("error: cannot read {}: {error}", args.events.display());
            return ExitCode::Failure;
        }
    };
    let total = file.metadata().map(|m| m.len()).unwrap_or(0);
    let progress = bar(total, "bytes");
    let out: Box<dyn std::io::Write> = match &args.alerts_out {
        Some(path) => match std::fs::File::create(path) {
            Ok(file) => Box::new(BufWriter::new(file)),
            Err(error) => {
                eprintln!("error: cannot write {}: {error}", path.display());
                return ExitCode::Failure;
            }
        },
        None => Box::new(BufWriter::new(std::io::stdout())),
    };
    let report = postern_detect::replay(BufReader::new(file), out, |bytes, _events| {
        progress.set_position(bytes)
    });
    progress.finish_and_clear();
    match report {
        Ok(report) => {
            let summary = serde_json::to_string(&report).unwrap_or_default();
            if args.json {
                if args.alerts_out.is_some() {
                    println!("{summary}");
                } else {
                    eprintln!("{summary}");
                }
            } else {
                let mut err = std::io::stderr();
                let _ = writeln!(
                    err,
                    "{} events, {} alerts, {} invalid lines, {:.0} events/s, {} keys",
                    report.events,
                    report.alerts,
                    report.invalid_lines,
                    report.events_per_second,
                    report.keys
                );
                if let Some(first) = &report.first_invalid_line {
                    let _ = writeln!(err, "first invalid line: {first}");
                }
            }
            ExitCode::Ok
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::Failure
        }
    }
}
