//! Running the univariate detector over the NAB corpus and scoring it.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use super::corpus::{load_corpus, Series};
use super::{score_corpus, ProfileScore, ScoredFile};
use crate::error::DetectError;
use crate::univariate::{UnivariateDetector, UnivariateParams};

/// The outcome of a NAB run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NabReport {
    /// Standard, reward_low_FP_rate, reward_low_FN_rate, in that order.
    pub profiles: Vec<ProfileScore>,
    pub series: usize,
    pub windows: usize,
    pub points: usize,
    /// Seconds spent in the detector only (loading and scoring excluded).
    pub detector_seconds: f64,
    pub points_per_second: f64,
    pub params: UnivariateParams,
}

/// Scores every series with a fresh detector; returns the per-row scores in corpus order, and
/// the seconds spent inside the detector.
pub fn detect_corpus(
    corpus: &[Series],
    params: &UnivariateParams,
    mut progress: impl FnMut(usize, usize),
) -> (Vec<Vec<f64>>, f64) {
    let mut seconds = 0.0;
    let mut all = Vec::with_capacity(corpus.len());
    for (index, series) in corpus.iter().enumerate() {
        let started = Instant::now();
        let mut detector = UnivariateDetector::new(params.clone());
        let scores: Vec<f64> = series
            .timestamps_unix_s
            .iter()
            .zip(&series.values)
            .map(|(&timestamp, &value)| detector.update(timestamp, value))
            .collect();
        seconds += started.elapsed().as_secs_f64();
        all.push(scores);
        progress(index + 1, corpus.len());
    }
    (all, seconds)
}

/// Scores already-computed detector output against the corpus windows.
pub fn score_detections(corpus: &[Series], scores: Vec<Vec<f64>>) -> Vec<ProfileScore> {
    let files: Vec<ScoredFile> = corpus
        .iter()
        .zip(scores)
        .map(|(series, scores)| ScoredFile {
            scores,
            windows: series.windows.clone(),
        })
        .collect();
    score_corpus(&files)
}

fn write_scores(out_dir: &Path, series: &Series, scores: &[f64]) -> Result<(), DetectError> {
    let path = out_dir.join(&series.relative_path);
    let write_error = |source| DetectError::Write {
        path: path.clone(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(write_error)?;
    }
    let file = std::fs::File::create(&path).map_err(write_error)?;
    let mut out = std::io::BufWriter::new(file);
    writeln!(out, "timestamp,value,anomaly_score").map_err(write_error)?;
    for ((timestamp, value), score) in series.timestamp_text.iter().zip(&series.values).zip(scores)
    {
        writeln!(out, "{timestamp},{value},{score}").map_err(write_error)?;
    }
    out.flush().map_err(write_error)
}

/// Runs the default detector over the corpus at `data_dir` labelled by `windows_path`
/// (`combined_windows.json`), optionally writing `timestamp,value,anomaly_score` CSVs under
/// `scores_out` (same relative paths), and scores all three profiles.
pub fn run_nab(
    data_dir: &Path,
    windows_path: &Path,
    scores_out: Option<&Path>,
    progress: impl FnMut(usize, usize),
) -> Result<NabReport, DetectError> {
    run_nab_with(
        data_dir,
        windows_path,
        scores_out,
        &UnivariateParams::default(),
        progress,
    )
}

/// [`run_nab`] with explicit detector parameters.
pub fn run_nab_with(
    data_dir: &Path,
    windows_path: &Path,
    scores_out: Option<&Path>,
    params: &UnivariateParams,
    progress: impl FnMut(usize, usize),
) -> Result<NabReport, DetectError> {
    let corpus = load_corpus(data_dir, windows_path)?;
    let (scores, detector_seconds) = detect_corpus(&corpus, params, progress);
    if let Some(out_dir) = scores_out {
        for (series, series_scores) in corpus.iter().zip(&scores) {
            write_scores(out_dir, series, series_scores)?;
        }
    }
    let points = corpus.iter().map(|series| series.values.len()).sum();
    let windows = corpus.iter().map(|series| series.windows.len()).sum();
    let profiles = score_detections(&corpus, scores);
    Ok(NabReport {
        profiles,
        series: corpus.len(),
        windows,
        points,
        detector_seconds,
        points_per_second: points as f64 / detector_seconds.max(1e-12),
        params: params.clone(),
    })
}
