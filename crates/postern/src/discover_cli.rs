//! `postern discover …`: the inventory of unregistered outbound APIs in
//! `<data_dir>/discovery.db` — list, show, import access logs and HAR files, and draft an
//! `[[integrations]]` stanza from what was seen. See docs/DISCOVERY.md.

use std::io::{BufReader, IsTerminal as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use postern_discover::import::{self, ImportOptions, LogFormat};
use postern_discover::{DiscoveredHost, Inventory, Store, DISCOVERY_FILE};

use crate::ExitCode;

/// Where the discovery store is: `--data-dir`, else the config's `data_dir`.
type DataLocation = crate::creds::VaultLocation;

#[derive(clap::Subcommand)]
pub enum DiscoverCommand {
    /// List every unregistered destination seen: calls, blocked calls, callers, bytes, first
    /// and last seen, endpoints. Most-called first.
    List {
        /// Print a JSON array (the shape of the admin API's GET /v1/discovered).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        location: DataLocation,
    },
    /// Show one destination with its endpoints (method + inferred path template).
    Show {
        /// The host, or host:port when it was seen on several ports.
        host: String,
        /// Print the entry as a JSON object.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        location: DataLocation,
    },
    /// Print a ready-to-edit [[integrations]] stanza for a destination (owner, vendor and
    /// credential marked TODO; one operation per endpoint seen).
    Promote {
        /// The host, or host:port when it was seen on several ports.
        host: String,
        #[command(flatten)]
        location: DataLocation,
    },
    /// Add the calls in an access log or HAR file to the inventory. Unreadable lines are
    /// counted and reported, never fatal; exits 1 if the file cannot be read or no line of it
    /// could be (usually the wrong --format).
    Import {
        /// The log or HAR file.
        file: PathBuf,
        /// nginx: combined/common lines; nginx-json: log_format escape=json; envoy: Envoy or
        /// Istio JSON access log; har: HAR 1.2.
        #[arg(long, value_enum)]
        format: ImportFormat,
        /// Destination (host or host:port, default port 443) for lines that name none, e.g.
        /// nginx lines with an origin-form request and no host field.
        #[arg(long = "host", value_name = "DEFAULT_HOST")]
        default_host: Option<String>,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        location: DataLocation,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ImportFormat {
    Nginx,
    NginxJson,
    Envoy,
    Har,
}

impl From<ImportFormat> for LogFormat {
    fn from(format: ImportFormat) -> LogFormat {
        match format {
            ImportFormat::Nginx => LogFormat::Nginx,
            ImportFormat::NginxJson => LogFormat::NginxJson,
            ImportFormat::Envoy => LogFormat::Envoy,
            ImportFormat::Har => LogFormat::Har,
        }
    }
}

pub fn run(command: DiscoverCommand) -> ExitCode {
    let result = match command {
        DiscoverCommand::List { json, location } => list(&location, json),
        DiscoverCommand::Show {
            host,
            json,
            location,
        } => show(&location, &host, json),
        DiscoverCommand::Promote { host, location } => promote(&location, &host),
        DiscoverCommand::Import {
            file,
            format,
            default_host,
            json,
            location,
        } => import_file(
            &location,
            &file,
            format.into(),
            default_host.as_deref(),
            json,
        ),
    };
    result.unwrap_or_else(|code| code)
}

fn open_store(data_dir: &Path) -> Result<Store, ExitCode> {
    Store::open(data_dir).map_err(|error| {
        eprintln!("error: {error}");
        ExitCode::Failure
    })
}

/// The store for reading, or `None` when nothing was ever recorded (the file is not created
/// just to be read).
fn open_existing(location: &DataLocation) -> Result<Option<Store>, ExitCode> {
    let data_dir = location.data_dir(DISCOVERY_FILE)?;
    if !data_dir.join(DISCOVERY_FILE).exists() {
        return Ok(None);
    }
    open_store(&data_dir).map(Some)
}

fn list(location: &DataLocation, json: bool) -> Result<ExitCode, ExitCode> {
    let store = open_existing(location)?;
    let hosts = match &store {
        Some(store) => store.list().map_err(failure)?,
        None => Vec::new(),
    };
    if json {
        println!("{}", serde_json::to_string(&hosts).unwrap_or_default());
        return Ok(ExitCode::Ok);
    }
    if hosts.is_empty() {
        println!("no unregistered destinations recorded yet");
        return Ok(ExitCode::Ok);
    }
    println!(
        "{:<40} {:>5} {:>9} {:>8} {:>7} {:>9} {:>9} {:<20} {:<20} {:>9}",
        "HOST",
        "PORT",
        "CALLS",
        "BLOCKED",
        "CALLERS",
        "OUT",
        "IN",
        "FIRST SEEN",
        "LAST SEEN",
        "ENDPOINTS"
    );
    for host in &hosts {
        println!(
            "{:<40} {:>5} {:>9} {:>8} {:>7} {:>9} {:>9} {:<20} {:<20} {:>9}",
            host.host,
            host.port,
            host.calls,
            host.blocked_calls,
            with_overflow(host.callers.len(), host.callers_truncated),
            human_bytes(host.bytes_out),
            human_bytes(host.bytes_in),
            time_text(host.first_seen_ms),
            time_text(host.last_seen_ms),
            with_overflow(host.endpoints.len(), host.endpoints_truncated),
        );
    }
    if let Some(store) = &store {
        let dropped = store.dropped_calls().map_err(failure)?;
        if dropped > 0 {
            println!(
                "({dropped} calls were not recorded: the store holds at most {} hosts)",
                postern_discover::Limits::default().max_hosts
            );
        }
    }
    Ok(ExitCode::Ok)
}

/// `12` or `12+` when some did not fit under the cap.
fn with_overflow(count: usize, truncated: u64) -> String {
    if truncated > 0 {
        format!("{count}+")
    } else {
        count.to_string()
    }
}

fn show(location: &DataLocation, host: &str, json: bool) -> Result<ExitCode, ExitCode> {
    let entry = find_host(location, host, "show")?;
    if json {
        println!("{}", serde_json::to_string(&entry).unwrap_or_default());
        return Ok(ExitCode::Ok);
    }
    println!("{}", entry.authority());
    println!(
        "  calls        {} ({} blocked)",
        entry.calls, entry.blocked_calls
    );
    println!(
        "  bytes        out {}, in {}",
        human_bytes(entry.bytes_out),
        human_bytes(entry.bytes_in)
    );
    println!("  first seen   {}", time_text(entry.first_seen_ms));
    println!("  last seen    {}", time_text(entry.last_seen_ms));
    let sources: Vec<&str> = entry
        .sources
        .iter()
        .map(|source| match source {
            postern_discover::ObservationSource::Proxy => "proxy",
            postern_discover::ObservationSource::Import => "import",
        })
        .collect();
    println!("  seen by      {}", sources.join(", "));
    let schemes: Vec<&str> = entry.schemes.iter().map(|scheme| scheme.as_str()).collect();
    println!(
        "  schemes      {}",
        if schemes.is_empty() {
            "(none seen)".to_owned()
        } else {
            schemes.join(", ")
        }
    );
    let callers: Vec<&str> = entry.callers.iter().map(String::as_str).collect();
    println!(
        "  callers      {}{}",
        if callers.is_empty() {
            "(none known)".to_owned()
        } else {
            callers.join(", ")
        },
        if entry.callers_truncated > 0 {
            format!(
                " (and more: {} calls from callers past the cap)",
                entry.callers_truncated
            )
        } else {
            String::new()
        }
    );
    println!(
        "  endpoints    {}{}",
        entry.endpoints.len(),
        if entry.endpoints_truncated > 0 {
            format!(
                " ({} calls to endpoints past the cap are not listed)",
                entry.endpoints_truncated
            )
        } else {
            String::new()
        }
    );
    if entry.endpoints.is_empty() {
        return Ok(ExitCode::Ok);
    }
    let mut endpoints: Vec<_> = entry.endpoints.iter().collect();
    endpoints.sort_by(|a, b| {
        b.calls
            .cmp(&a.calls)
            .then_with(|| (&a.template, &a.method).cmp(&(&b.template, &b.method)))
    });
    println!();
    println!(
        "  {:<8} {:<60} {:>9} {:>8} {:>6} {:<20}",
        "METHOD", "TEMPLATE", "CALLS", "BLOCKED", "STATUS", "LAST SEEN"
    );
    for endpoint in endpoints {
        println!(
            "  {:<8} {:<60} {:>9} {:>8} {:>6} {:<20}",
            endpoint.method,
            endpoint.template,
            endpoint.calls,
            endpoint.blocked_calls,
            endpoint
                .last_status
                .map_or_else(|| "-".to_owned(), |status| status.to_string()),
            time_text(endpoint.last_seen_ms)
        );
    }
    Ok(ExitCode::Ok)
}

fn promote(location: &DataLocation, host: &str) -> Result<ExitCode, ExitCode> {
    let entry = find_host(location, host, "promote")?;
    print!("{}", postern_discover::draft_integration(&entry));
    Ok(ExitCode::Ok)
}

/// The one entry named by `argument`, or exit 1 saying why (unknown, or several ports).
fn find_host(
    location: &DataLocation,
    argument: &str,
    subcommand: &str,
) -> Result<DiscoveredHost, ExitCode> {
    let Some((host, port)) = import::split_host_port(argument) else {
        eprintln!("error: `{argument}` is not a host or host:port");
        return Err(ExitCode::Usage);
    };
    let entries = match open_existing(location)? {
        Some(store) => store.get(&host, port).map_err(failure)?,
        None => Vec::new(),
    };
    match entries.len() {
        0 => {
            eprintln!(
                "error: `{argument}` is not in the discovery inventory; \
                 run `postern discover list` to see the hosts recorded (or import a log with \
                 `postern discover import`)"
            );
            Err(ExitCode::Failure)
        }
        1 => Ok(entries.into_iter().next().expect("one entry")),
        _ => {
            let ports: Vec<String> = entries.iter().map(|e| e.port.to_string()).collect();
            eprintln!(
                "error: `{argument}` was seen on ports {}; name one, e.g. `postern discover {subcommand} {}`",
                ports.join(", "),
                entries[0].authority()
            );
            Err(ExitCode::Failure)
        }
    }
}

fn import_file(
    location: &DataLocation,
    path: &Path,
    format: LogFormat,
    default_host: Option<&str>,
    json: bool,
) -> Result<ExitCode, ExitCode> {
    let options = match default_host {
        None => ImportOptions::default(),
        Some(host) => ImportOptions::with_default_host(host).map_err(|error| {
            eprintln!("error: --host: {error}");
            ExitCode::Usage
        })?,
    };
    let data_dir = location.data_dir(DISCOVERY_FILE)?;
    let file = std::fs::File::open(path).map_err(|error| {
        eprintln!("error: cannot read {}: {error}", path.display());
        ExitCode::Failure
    })?;
    let total = file.metadata().map(|m| m.len()).unwrap_or(0);
    let progress = progress_bar(total);
    let mut inventory = Inventory::new();
    let report = import::import(
        format,
        BufReader::with_capacity(256 * 1024, file),
        &options,
        |observation| inventory.record(&observation),
        |bytes| progress.set_position(bytes),
    );
    progress.finish_and_clear();
    let report = report.map_err(|error| {
        eprintln!("error: {}: {error}", path.display());
        ExitCode::Failure
    })?;
    let nothing_readable = report.records_read > 0 && report.observations == 0
        || report.records_read == 0 && report.malformed > 0;
    if !nothing_readable {
        let store = open_store(&data_dir)?;
        store.merge_delta(&inventory).map_err(failure)?;
    }
    let unit = if format == LogFormat::Har {
        "entries"
    } else {
        "lines"
    };
    if json {
        let mut summary = serde_json::to_value(&report).unwrap_or_default();
        if let Some(object) = summary.as_object_mut() {
            object.insert("file".into(), path.display().to_string().into());
            object.insert("hosts_touched".into(), inventory.len().into());
            object.insert("dropped_calls".into(), inventory.dropped_calls().into());
            object.insert("stored".into(), (!nothing_readable).into());
        }
        println!("{summary}");
    } else {
        println!(
            "{}: {} {unit} read as {}, {} observations, {} malformed, {} hosts touched",
            path.display(),
            report.records_read,
            format.name(),
            report.observations,
            report.malformed,
            inventory.len()
        );
        for malformed in &report.malformed_examples {
            println!("  {}: {}", malformed.location, malformed.reason);
        }
        let unlisted = report.malformed - report.malformed_examples.len() as u64;
        if unlisted > 0 {
            println!("  … and {unlisted} more malformed");
        }
        if inventory.dropped_calls() > 0 {
            println!(
                "  {} calls not recorded: more than {} distinct hosts",
                inventory.dropped_calls(),
                inventory.limits().max_hosts
            );
        }
    }
    if nothing_readable {
        eprintln!(
            "error: no {unit} of {} could be read as {}; nothing was stored. Check --format \
             (nginx, nginx-json, envoy, har) and, for nginx, --host",
            path.display(),
            format.name()
        );
        return Err(ExitCode::Failure);
    }
    Ok(ExitCode::Ok)
}

fn progress_bar(total: u64) -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(total), target);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

fn failure(error: postern_discover::StoreError) -> ExitCode {
    eprintln!("error: {error}");
    ExitCode::Failure
}

/// `2024-03-05T10:11:12Z` (UTC, seconds).
fn time_text(ms: i64) -> String {
    let Ok(ms) = u64::try_from(ms) else {
        return ms.to_string();
    };
    let text =
        postern_gateway::events::rfc3339_millis(SystemTime::UNIX_EPOCH + Duration::from_millis(ms));
    match text.get(..19) {
        Some(seconds) => format!("{seconds}Z"),
        None => text,
    }
}

/// `1.2 MiB`.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_arguments() {
        assert_eq!(
            import::split_host_port("api.x.com"),
            Some(("api.x.com".into(), None))
        );
        assert_eq!(
            import::split_host_port("api.x.com:8443"),
            Some(("api.x.com".into(), Some(8443)))
        );
        assert_eq!(
            import::split_host_port("[::1]:443"),
            Some(("::1".into(), Some(443)))
        );
        assert_eq!(
            import::split_host_port("2001:db8::1"),
            Some(("2001:db8::1".into(), None))
        );
        assert_eq!(import::split_host_port("api.x.com:x"), None);
    }

    #[test]
    fn units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(time_text(1_709_633_472_345), "2024-03-05T10:11:12Z");
    }
}
