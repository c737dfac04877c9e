//! `postern bench nab`, `postern replay` and `postern simulate`: the detection engine run
//! offline, as fast as it can, with a progress bar on stderr.

use std::io::{BufReader, BufWriter, Write as _};
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use postern_detect::simulate::{IncidentKind, SimulatedEvent, SimulationObserver};
use postern_detect::{SimulationConfig, SimulationReport};

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

#[derive(clap::Args)]
pub struct SimulateArgs {
    /// Days of evaluation traffic, after the warm-up.
    #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..=365))]
    days: u32,
    /// Days of clean warm-up traffic first (off-hours alerts need a week of history).
    #[arg(long, default_value_t = 14, value_parser = clap::value_parser!(u32).range(0..=365))]
    warmup_days: u32,
    /// Seed of the simulated traffic: the same seed gives the same events and alerts.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Incidents to inject: `all`, `none`, or a comma-separated list of new_identity,
    /// foreign_source, exfiltration_burst, slow_exfiltration, bulk_download, enumeration,
    /// credential_stuffing, vendor_credential_revoked, vendor_outage, runaway_client,
    /// off_hours_use.
    #[arg(long, default_value = "all", value_parser = parse_incident_kinds)]
    incidents: IncidentKinds,
    /// Incidents of each kind [default: one per evaluation day].
    #[arg(long)]
    incidents_per_kind: Option<u32>,
    /// Benign level shifts (a caller's traffic steps up +50 % to +200 % for good)
    /// [default: one per evaluation day].
    #[arg(long)]
    benign_shifts: Option<u32>,
    /// Write the simulated events (warm-up and evaluation, incidents included) here, in the
    /// gateway's events.jsonl schema: `postern replay --events FILE` reads them back.
    #[arg(long)]
    events_out: Option<PathBuf>,
    /// Write the engine's alerts on those events here, one JSON object per line.
    #[arg(long)]
    alerts_out: Option<PathBuf>,
    /// Print the whole report as JSON on stdout instead of the tables.
    #[arg(long)]
    json: bool,
}

#[derive(Clone)]
struct IncidentKinds(Vec<IncidentKind>);

fn parse_incident_kinds(text: &str) -> Result<IncidentKinds, String> {
    match text {
        "all" => return Ok(IncidentKinds(IncidentKind::ALL.to_vec())),
        "none" => return Ok(IncidentKinds(Vec::new())),
        _ => {}
    }
    let mut kinds = Vec::new();
    for name in text
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
    {
        let kind = IncidentKind::parse(name).ok_or_else(|| {
            let known: Vec<&str> = IncidentKind::ALL.iter().map(|kind| kind.as_str()).collect();
            format!(
                "unknown incident kind `{name}`; use all, none, or some of: {}",
                known.join(", ")
            )
        })?;
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    if kinds.is_empty() {
        // `--incidents ""` (an unset variable, say) is no choice: `none` says it.
        return Err("no incident kind given; use all, none, or a comma-separated list".into());
    }
    Ok(IncidentKinds(kinds))
}

/// Writes the run's events and alerts to the requested files and moves the progress bar.
struct SimulationFiles {
    events: Option<(PathBuf, BufWriter<std::fs::File>)>,
    alerts: Option<(PathBuf, BufWriter<std::fs::File>)>,
    progress: ProgressBar,
}

fn with_path(path: &Path, error: std::io::Error) -> std::io::Error {
    std::io::Error::new(error.kind(), format!("{}: {error}", path.display()))
}

fn create(path: &Option<PathBuf>) -> Result<Option<(PathBuf, BufWriter<std::fs::File>)>, String> {
    match path {
        None => Ok(None),
        Some(path) => std::fs::File::create(path)
            .map(|file| Some((path.clone(), BufWriter::new(file))))
            .map_err(|error| format!("cannot write {}: {error}", path.display())),
    }
}

impl SimulationObserver for SimulationFiles {
    fn event(&mut self, event: &SimulatedEvent) -> std::io::Result<()> {
        if let Some((path, out)) = &mut self.events {
            writeln!(out, "{}", event.to_gateway_json()).map_err(|error| with_path(path, error))?;
        }
        Ok(())
    }

    fn alert(&mut self, alert: &postern_detect::engine::Alert) -> std::io::Result<()> {
        if let Some((path, out)) = &mut self.alerts {
            let line = serde_json::to_string(alert).map_err(std::io::Error::other)?;
            writeln!(out, "{line}").map_err(|error| with_path(path, error))?;
        }
        Ok(())
    }

    fn progress(&mut self, done_minutes: u64, total_minutes: u64) {
        self.progress.set_length(total_minutes);
        self.progress.set_position(done_minutes);
    }
}

pub fn simulate(args: SimulateArgs) -> ExitCode {
    let mut config = SimulationConfig::new(args.seed, args.warmup_days, args.days);
    config.incident_kinds = args.incidents.0;
    if let Some(count) = args.incidents_per_kind {
        config.incidents_per_kind = count;
    }
    if let Some(count) = args.benign_shifts {
        config.benign_shifts = count;
    }
    let (events, alerts) = match (create(&args.events_out), create(&args.alerts_out)) {
        (Ok(events), Ok(alerts)) => (events, alerts),
        (Err(error), _) | (_, Err(error)) => {
            eprintln!("error: {error}");
            return ExitCode::Failure;
        }
    };
    let mut files = SimulationFiles {
        events,
        alerts,
        progress: bar(0, "simulated minutes"),
    };
    let report = postern_detect::run_simulation(&config, &mut files);
    files.progress.finish_and_clear();
    let report = match report {
        Ok(report) => report,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::Failure;
        }
    };
    for (path, mut out) in [files.events, files.alerts].into_iter().flatten() {
        if let Err(error) = out.flush() {
            eprintln!("error: cannot write {}: {error}", path.display());
            return ExitCode::Failure;
        }
    }
    if args.json {
        println!("{}", serde_json::to_string(&report).unwrap_or_default());
    } else {
        print_simulation(&report, config.incident_kinds.len());
    }
    ExitCode::Ok
}

/// `35 s`, `24.6 min`, or `-`.
fn duration(seconds: Option<f64>) -> String {
    match seconds {
        None => "-".into(),
        Some(seconds) if seconds < 120.0 => format!("{seconds:.0} s"),
        Some(seconds) => format!("{:.1} min", seconds / 60.0),
    }
}

fn ratio(value: Option<f64>) -> String {
    value.map_or_else(|| "-".into(), |value| format!("{value:.2}"))
}

fn print_simulation(report: &SimulationReport, incident_kinds: usize) {
    let evaluation = &report.evaluation;
    println!(
        "simulated {} warm-up + {} evaluation days, seed {}: {} events, {} incidents, {} benign shifts",
        report.warmup_days,
        report.evaluation_days,
        report.seed,
        report.events,
        evaluation.incidents.len(),
        report.benign_shifts.len()
    );
    println!(
        "engine: default settings, {:.1} s for all runs ({:.0} events/s)",
        report.seconds, report.events_per_second
    );
    if incident_kinds > 0 {
        println!();
        println!(
            "{:<26} {:>9} {:>7} {:>11} {:>11} {:>7}  detected by",
            "incident", "detected", "recall", "median TTD", "max TTD", "alerts"
        );
        for kind in &evaluation.by_incident_kind {
            let detected_by: Vec<&str> =
                kind.detected_by.iter().map(|kind| kind.as_str()).collect();
            println!(
                "{:<26} {:>9} {:>7} {:>11} {:>11} {:>7}  {}",
                kind.kind.as_str(),
                format!("{}/{}", kind.detected, kind.incidents),
                ratio(kind.recall),
                duration(kind.median_time_to_detect_seconds),
                duration(kind.max_time_to_detect_seconds),
                kind.alerts,
                detected_by.join(", ")
            );
        }
        println!();
        println!(
            "{:<22} {:>7} {:>8} {:>7} {:>7} {:>10}",
            "alert kind", "alerts", "matched", "grace", "false", "precision"
        );
        for kind in &evaluation.by_alert_kind {
            println!(
                "{:<22} {:>7} {:>8} {:>7} {:>7} {:>10}",
                kind.kind.as_str(),
                kind.alerts,
                kind.matched,
                kind.shift_grace,
                kind.false_alerts,
                ratio(Some(kind.precision))
            );
        }
        println!();
        println!(
            "with incidents: {} alerts, {} matching an incident (precision {}), {} in a shift's grace period, {} false ({:.2} a day)",
            evaluation.alerts,
            evaluation.matched_alerts,
            ratio(evaluation.precision),
            evaluation.shift_grace_alerts,
            evaluation.false_alerts,
            evaluation.false_alerts_per_day
        );
    }
    for (name, clean) in [
        (
            "clean traffic with benign shifts",
            &report.clean_with_shifts,
        ),
        ("clean traffic without shifts", &report.clean_without_shifts),
    ] {
        let kinds: Vec<String> = clean
            .false_alerts_by_kind
            .iter()
            .map(|(kind, count)| format!("{kind} {count}"))
            .collect();
        println!(
            "{name}: {} false alerts ({:.2} a day){}{}",
            clean.false_alerts,
            clean.false_alerts_per_day,
            if kinds.is_empty() {
                String::new()
            } else {
                format!(": {}", kinds.join(", "))
            },
            if clean.shift_grace_alerts > 0 {
                format!(
                    "; {} more within a shift's grace period",
                    clean.shift_grace_alerts
                )
            } else {
                String::new()
            }
        );
    }
}
