//! Reading the NAB corpus from disk: series CSVs (`timestamp,value`) and
//! `combined_windows.json`. This is the only module of the NAB code that does IO.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::Window;
use crate::error::DetectError;
use crate::timestamp::parse_civil_seconds;

/// One series of the corpus with its labelled windows.
#[derive(Debug, Clone)]
pub struct Series {
    /// Path relative to the data directory, e.g. `realKnownCause/nyc_taxi.csv`.
    pub relative_path: String,
    /// The timestamp text of each row, as in the file (written back to score CSVs).
    pub timestamp_text: Vec<String>,
    pub timestamps_unix_s: Vec<i64>,
    pub values: Vec<f64>,
    pub windows: Vec<Window>,
}

/// The rows of one series CSV, column by column.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SeriesRows {
    pub timestamp_text: Vec<String>,
    pub timestamps_unix_s: Vec<i64>,
    pub values: Vec<f64>,
}

/// Parses one series CSV (`timestamp,value` header, then rows).
pub fn parse_series_csv(path: &Path, text: &str) -> Result<SeriesRows, DetectError> {
    let (mut texts, mut times, mut values) = (Vec::new(), Vec::new(), Vec::new());
    for (index, line) in text.lines().enumerate().skip(1) {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        let parse_error = |message: String| DetectError::Parse {
            path: path.to_owned(),
            line: index + 1,
            message,
        };
        let (timestamp, value) = line
            .split_once(',')
            .ok_or_else(|| parse_error(format!("expected `timestamp,value`, found `{line}`")))?;
        let unix = parse_civil_seconds(timestamp).ok_or_else(|| {
            parse_error(format!(
                "timestamp `{timestamp}` is not `YYYY-MM-DD HH:MM:SS`"
            ))
        })?;
        let value: f64 = value
            .trim()
            .parse()
            .map_err(|_| parse_error(format!("value `{value}` is not a number")))?;
        texts.push(timestamp.to_owned());
        times.push(unix);
        values.push(value);
    }
    Ok(SeriesRows {
        timestamp_text: texts,
        timestamps_unix_s: times,
        values,
    })
}

/// Converts `[start, end]` timestamp windows to row windows: first row at or after `start`,
/// last row at or before `end`.
pub fn windows_to_rows(
    path: &Path,
    timestamps_unix_s: &[i64],
    windows: &[(String, String)],
) -> Result<Vec<Window>, DetectError> {
    let mut rows = Vec::with_capacity(windows.len());
    for (start, end) in windows {
        let outside = || DetectError::WindowOutsideSeries {
            path: path.to_owned(),
            start: start.clone(),
            end: end.clone(),
        };
        let start_s = parse_civil_seconds(start).ok_or_else(outside)?;
        let end_s = parse_civil_seconds(end).ok_or_else(outside)?;
        let first_row = timestamps_unix_s.partition_point(|&t| t < start_s);
        let after_last = timestamps_unix_s.partition_point(|&t| t <= end_s);
        if after_last == 0 || first_row >= after_last {
            return Err(outside());
        }
        rows.push(Window {
            first_row,
            last_row: after_last - 1,
        });
    }
    rows.sort_by_key(|window| window.first_row);
    Ok(rows)
}

fn read_text(path: &Path) -> Result<String, DetectError> {
    std::fs::read_to_string(path).map_err(|source| DetectError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Loads every series named in the windows file (NAB scores exactly those), in name order.
pub fn load_corpus(data_dir: &Path, windows_path: &Path) -> Result<Vec<Series>, DetectError> {
    let windows_text = read_text(windows_path)?;
    let windows: BTreeMap<String, Vec<(String, String)>> = serde_json::from_str(&windows_text)
        .map_err(|error| DetectError::Parse {
            path: windows_path.to_owned(),
            line: error.line(),
            message: error.to_string(),
        })?;
    let mut corpus = Vec::with_capacity(windows.len());
    for (relative_path, file_windows) in windows {
        let path: PathBuf = data_dir.join(&relative_path);
        let text = read_text(&path)?;
        let SeriesRows {
            timestamp_text,
            timestamps_unix_s,
            values,
        } = parse_series_csv(&path, &text)?;
        let windows = windows_to_rows(&path, &timestamps_unix_s, &file_windows)?;
        corpus.push(Series {
            relative_path,
            timestamp_text,
            timestamps_unix_s,
            values,
            windows,
        });
    }
    Ok(corpus)
}
