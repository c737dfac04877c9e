//! Importers: access logs and HAR files → [`Observation`]s, so an inventory can be built from
//! traffic that never went through Postern.
//!
//! | format | [`LogFormat`] | read |
//! |---|---|---|
//! | nginx `combined` (or `common`), request line in absolute form or a host field appended | `Nginx` | line by line |
//! | nginx JSON (`log_format … escape=json`) | `NginxJson` | line by line |
//! | Envoy / Istio JSON access log | `Envoy` | line by line |
//! | HAR 1.2 | `Har` | whole |
//!
//! A line (or HAR entry) that cannot be read is counted in [`ImportReport::malformed`] and the
//! first [`MALFORMED_EXAMPLES`] are kept with their line number and the reason; it never stops
//! the import. Only a read error does. Lines longer than [`MAX_LINE_BYTES`] are skipped as
//! malformed, so memory stays bounded whatever the input. Imported observations are never
//! `blocked`. The accepted keys and variants of each format are listed in docs/DISCOVERY.md.

mod har;
mod json_logs;
mod nginx;

use std::io::{BufRead, Read};

use serde::Serialize;

use crate::{Observation, ObservationSource, Scheme};

/// How many malformed lines are kept (with their reason) in the report.
pub const MALFORMED_EXAMPLES: usize = 10;

/// Longer lines are skipped (counted as malformed).
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// Progress is reported at least every this many bytes (and at the end).
const PROGRESS_EVERY_BYTES: u64 = 256 * 1024;

/// The input's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// nginx `combined`/`common` access log lines.
    Nginx,
    /// nginx JSON access log lines.
    NginxJson,
    /// Envoy (or Istio) JSON access log lines.
    Envoy,
    /// A HAR 1.2 file (browser dev tools, mitmproxy, Charles…).
    Har,
}

impl LogFormat {
    /// The name used on the command line and in reports: `nginx`, `nginx-json`, `envoy`, `har`.
    pub fn name(self) -> &'static str {
        match self {
            LogFormat::Nginx => "nginx",
            LogFormat::NginxJson => "nginx-json",
            LogFormat::Envoy => "envoy",
            LogFormat::Har => "har",
        }
    }
}

/// Options shared by the importers.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Host (and port, default 443) for lines that name no destination, e.g. origin-form nginx
    /// request lines without a host field. A host found in the line always wins.
    pub default_host: Option<(String, u16)>,
}

impl ImportOptions {
    /// Options with a default destination written `host` or `host:port` (`[v6]:port`).
    pub fn with_default_host(default_host: &str) -> Result<ImportOptions, ImportError> {
        match split_host_port(default_host) {
            Some((host, port)) if is_host(&host) => Ok(ImportOptions {
                default_host: Some((host, port.unwrap_or(443))),
            }),
            _ => Err(ImportError::InvalidDefaultHost(default_host.to_owned())),
        }
    }
}

/// Why an import stopped. Malformed input never stops it; this is only for what makes reading
/// impossible.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("reading the input failed after {bytes_read} bytes: {source}")]
    Read {
        bytes_read: u64,
        source: std::io::Error,
    },
    #[error("default host `{0}` is not `host` or `host:port`")]
    InvalidDefaultHost(String),
}

/// Where a malformed record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordLocation {
    /// 1-based line number in the file.
    Line(u64),
    /// 1-based index in a HAR file's `log.entries`.
    Entry(u64),
}

impl std::fmt::Display for RecordLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordLocation::Line(line) => write!(f, "line {line}"),
            RecordLocation::Entry(entry) => write!(f, "entry {entry}"),
        }
    }
}

/// A record that could not be read, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Malformed {
    #[serde(flatten)]
    pub location: RecordLocation,
    pub reason: String,
}

/// What an import read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImportReport {
    pub format: LogFormat,
    pub bytes_read: u64,
    /// Non-empty lines (line formats) or HAR entries.
    pub records_read: u64,
    /// Records turned into observations.
    pub observations: u64,
    /// Records that could not be read.
    pub malformed: u64,
    /// The first [`MALFORMED_EXAMPLES`] of them.
    pub malformed_examples: Vec<Malformed>,
}

impl ImportReport {
    fn new(format: LogFormat) -> Self {
        ImportReport {
            format,
            bytes_read: 0,
            records_read: 0,
            observations: 0,
            malformed: 0,
            malformed_examples: Vec::new(),
        }
    }

    /// Counts a malformed record, and keeps its reason among the first few: control characters
    /// (a reason may quote the file, anyone's text) as `?`, so printing it moves no terminal.
    fn malformed(&mut self, location: RecordLocation, reason: impl Into<String>) {
        self.malformed += 1;
        if self.malformed_examples.len() < MALFORMED_EXAMPLES {
            let reason: String = reason
                .into()
                .chars()
                .map(|c| {
                    if crate::inventory::hides_text(c) {
                        '?'
                    } else {
                        c
                    }
                })
                .collect();
            self.malformed_examples.push(Malformed { location, reason });
        }
    }
}

/// Reads `input` as `format`, handing each observation to `on_observation` and the number of
/// bytes consumed so far to `progress` (every 256 KiB and at the end).
pub fn import<R: BufRead>(
    format: LogFormat,
    input: R,
    options: &ImportOptions,
    mut on_observation: impl FnMut(Observation),
    mut progress: impl FnMut(u64),
) -> Result<ImportReport, ImportError> {
    let parse_line: fn(&str, &ImportOptions) -> Result<Observation, String> = match format {
        LogFormat::Nginx => nginx::parse_line,
        LogFormat::NginxJson => json_logs::parse_nginx_json,
        LogFormat::Envoy => json_logs::parse_envoy,
        LogFormat::Har => return har::import(input, &mut on_observation, &mut progress),
    };
    let mut report = ImportReport::new(format);
    let mut input = input;
    let mut buffer = Vec::with_capacity(4096);
    let mut line_number = 0u64;
    let mut reported_at = 0u64;
    let read_error = |bytes_read, source| ImportError::Read { bytes_read, source };
    loop {
        buffer.clear();
        let read = (&mut input)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut buffer)
            .map_err(|e| read_error(report.bytes_read, e))?;
        if read == 0 {
            break;
        }
        report.bytes_read += read as u64;
        line_number += 1;
        if buffer.len() > MAX_LINE_BYTES && buffer.last() != Some(&b'\n') {
            let skipped = input
                .skip_until(b'\n')
                .map_err(|e| read_error(report.bytes_read, e))?;
            report.bytes_read += skipped as u64;
            report.records_read += 1;
            report.malformed(
                RecordLocation::Line(line_number),
                format!("line longer than {MAX_LINE_BYTES} bytes; skipped"),
            );
            continue;
        }
        let line = String::from_utf8_lossy(&buffer);
        let line = line.trim_end_matches(['\n', '\r']);
        if !line.trim().is_empty() {
            report.records_read += 1;
            match parse_line(line, options) {
                Ok(observation) => {
                    report.observations += 1;
                    on_observation(observation);
                }
                Err(reason) => report.malformed(RecordLocation::Line(line_number), reason),
            }
        }
        if report.bytes_read - reported_at >= PROGRESS_EVERY_BYTES {
            reported_at = report.bytes_read;
            progress(reported_at);
        }
    }
    progress(report.bytes_read);
    Ok(report)
}

/// An observation with the parts every importer fills the same way.
/// The caller a log line names: its authenticated user (`$remote_user`), unless that reads as a
/// secret (nginx fills it from any `Authorization: Basic`, and vendors such as Stripe take the
/// API key as the Basic user name: `curl -u sk_live_…:`), else its client address.
fn caller_of(remote_user: Option<&str>, remote_addr: Option<&str>) -> Option<String> {
    remote_user
        .filter(|user| *user != "-" && !postern_config::may_be_a_secret(user))
        .or(remote_addr)
        .filter(|caller| *caller != "-")
        .map(str::to_owned)
}

/// A request target as an error message may show it: without a query, a fragment or user
/// information, which may hold credentials (`?key=…`, `https://user:password@…`).
fn shown_target(target: &str) -> String {
    // The user information first (before the first `/` after the scheme: a password may hold a
    // `?` or `#`), then the query and fragment.
    let mut shown = target.to_string();
    let mut path_from = 0;
    if let Some(scheme_end) = shown.find("://").map(|at| at + 3) {
        let authority_end = shown[scheme_end..]
            .find('/')
            .map_or(shown.len(), |at| scheme_end + at);
        if let Some(at) = shown[scheme_end..authority_end].rfind('@') {
            shown.replace_range(scheme_end..scheme_end + at, "…");
        }
        path_from = scheme_end;
    }
    if let Some(at) = shown[path_from..].find(['?', '#']).map(|at| path_from + at) {
        let mark = &shown[at..at + 1];
        shown = format!("{}{mark}…", &shown[..at]);
    }
    shown
}

fn observation(host: (String, u16), time_ms: i64) -> Observation {
    Observation {
        host: host.0,
        port: host.1,
        scheme: None,
        caller: None,
        method: None,
        path: None,
        status: None,
        bytes_out: 0,
        bytes_in: 0,
        time_ms,
        blocked: false,
        source: ObservationSource::Import,
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`, or a bare IPv6 address. `None` if a port is there
/// but is not a number.
/// `host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 address → (host, port).
pub fn split_host_port(text: &str) -> Option<(String, Option<u16>)> {
    let text = text.trim();
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after.strip_prefix(':') {
            Some(port) => Some((host.to_owned(), Some(port.parse().ok()?))),
            None if after.is_empty() => Some((host.to_owned(), None)),
            None => None,
        };
    }
    match text.rsplit_once(':') {
        Some((host, _)) if host.contains(':') => Some((text.to_owned(), None)),
        Some((host, port)) => Some((host.to_owned(), Some(port.parse().ok()?))),
        None => Some((text.to_owned(), None)),
    }
}

/// A DNS name or an IP address: letters, digits, `.`, `-`, `_` (or `:` for IPv6).
fn is_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && (host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c))
            || host.parse::<std::net::Ipv6Addr>().is_ok())
}

/// A destination from `scheme://[userinfo@]authority/path…`: ((host, port), path), and the
/// scheme (`ws` counts as `http`, `wss` as `https`).
fn split_absolute_url(url: &str) -> Option<((String, u16), String, Scheme)> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = Scheme::parse(scheme)?;
    let default_port = scheme.default_port();
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let (host, port) = split_host_port(authority)?;
    if !is_host(&host) {
        return None;
    }
    let path = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    };
    Some(((host, port.unwrap_or(default_port)), path, scheme))
}

/// The address part of `10.0.0.5:51234` or `[2001:db8::5]:51234` (a caller's address).
fn address_without_port(address: &str) -> String {
    match split_host_port(address) {
        Some((host, _)) => host,
        None => address.to_owned(),
    }
}

fn parse_rfc3339(text: &str) -> Option<i64> {
    let time =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(time.unix_timestamp_nanos() / 1_000_000).ok()
}

/// nginx `$time_local`: `05/Mar/2024:10:11:12 +0000`.
fn parse_nginx_local_time(text: &str) -> Option<i64> {
    let format = time::macros::format_description!(
        "[day]/[month repr:short]/[year]:[hour]:[minute]:[second] [offset_hour sign:mandatory][offset_minute]"
    );
    let time = time::OffsetDateTime::parse(text, &format).ok()?;
    i64::try_from(time.unix_timestamp_nanos() / 1_000_000).ok()
}

/// nginx `$msec`: `1709633472.123` (seconds, milliseconds after the dot).
fn parse_epoch_seconds(text: &str) -> Option<i64> {
    let (seconds, fraction) = text.split_once('.').unwrap_or((text, ""));
    let seconds: i64 = seconds.parse().ok()?;
    let mut millis = 0i64;
    for (index, digit) in fraction.chars().take(3).enumerate() {
        millis += i64::from(digit.to_digit(10)?) * 10i64.pow(2 - index as u32);
    }
    seconds.checked_mul(1000)?.checked_add(millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port_forms() {
        let check = |text: &str| split_host_port(text);
        assert_eq!(check("api.x.com"), Some(("api.x.com".into(), None)));
        assert_eq!(
            check("api.x.com:8443"),
            Some(("api.x.com".into(), Some(8443)))
        );
        assert_eq!(check("[::1]:443"), Some(("::1".into(), Some(443))));
        assert_eq!(check("2001:db8::1"), Some(("2001:db8::1".into(), None)));
        assert_eq!(check("api.x.com:https"), None);
        assert!(ImportOptions::with_default_host("api.x.com:8443").is_ok());
        assert!(ImportOptions::with_default_host("not a host").is_err());
    }

    #[test]
    fn absolute_urls() {
        assert_eq!(
            split_absolute_url("https://user:pw@API.x.com/v1/a?b=1"),
            Some((("API.x.com".into(), 443), "/v1/a?b=1".into(), Scheme::Https))
        );
        assert_eq!(
            split_absolute_url("http://10.0.0.1:8080"),
            Some((("10.0.0.1".into(), 8080), "/".into(), Scheme::Http))
        );
        assert_eq!(
            split_absolute_url("wss://x/y").map(|(_, _, scheme)| scheme),
            Some(Scheme::Https)
        );
        assert_eq!(split_absolute_url("ftp://x/y"), None);
    }

    #[test]
    fn times() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:01.5Z"), Some(1500));
        assert_eq!(
            parse_rfc3339("2009-07-24T19:20:30.45+01:00"),
            Some(1_248_459_630_450)
        );
        assert_eq!(
            parse_nginx_local_time("24/Jul/2009:19:20:30 +0100"),
            Some(1_248_459_630_000)
        );
        assert_eq!(
            parse_epoch_seconds("1248459630.45"),
            Some(1_248_459_630_450)
        );
        assert_eq!(parse_epoch_seconds("1248459630"), Some(1_248_459_630_000));
        assert_eq!(parse_epoch_seconds("x"), None);
    }

    #[test]
    fn over_long_lines_are_skipped_not_fatal() {
        let mut input = vec![b'x'; MAX_LINE_BYTES + 10];
        input.extend_from_slice(
            b"\n127.0.0.1 - - [24/Jul/2009:19:20:30 +0100] \"GET https://api.x.com/v1/a HTTP/1.1\" 200 5 \"-\" \"curl\"\n",
        );
        let mut observations = Vec::new();
        let mut last_progress = 0;
        let report = import(
            LogFormat::Nginx,
            input.as_slice(),
            &ImportOptions::default(),
            |o| observations.push(o),
            |bytes| last_progress = bytes,
        )
        .unwrap();
        assert_eq!(report.records_read, 2);
        assert_eq!(report.malformed, 1);
        assert_eq!(
            report.malformed_examples[0].location,
            RecordLocation::Line(1)
        );
        assert_eq!(observations.len(), 1);
        assert_eq!(report.bytes_read, input.len() as u64);
        assert_eq!(last_progress, input.len() as u64);
    }
}
