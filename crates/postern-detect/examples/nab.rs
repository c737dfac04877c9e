//! Runs the univariate detector over the NAB corpus and prints the three profile scores.
//!
//! ```text
//! cargo run --release -p postern-detect --example nab -- \
//!     --data /work/shared/data/nab/data --windows /work/shared/data/nab/labels/combined_windows.json \
//!     [--scores-out DIR] [--params '{"context_rest_rows": 50}'] [--search] [--detail]
//! ```
//! With `--search`, every line of standard input is a params JSON object (fields not given
//! keep their defaults); each is run and printed as one line, the corpus loaded once.
//! With `--detail`, the run also prints, per series, what each window earned at the standard
//! profile's threshold (first detection's position in the window, or MISS) and the false
//! positives' count and cost.

use std::io::BufRead;
use std::path::PathBuf;

use postern_detect::nab::corpus::load_corpus;
use postern_detect::nab::corpus::Series;
use postern_detect::nab::run::{detect_corpus, run_nab_with, score_detections};
use postern_detect::nab::{row_roles, RowRole, STANDARD};
use postern_detect::univariate::UnivariateParams;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (mut data, mut windows, mut scores_out, mut params, mut search, mut detail) =
        (None, None, None, None, false, false);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--data" => data = args.next().map(PathBuf::from),
            "--windows" => windows = args.next().map(PathBuf::from),
            "--scores-out" => scores_out = args.next().map(PathBuf::from),
            "--params" => params = args.next(),
            "--search" => search = true,
            "--detail" => detail = true,
            other => return Err(format!("unknown argument `{other}`").into()),
        }
    }
    let data = data.ok_or("--data DIR is required")?;
    let windows = windows.ok_or("--windows FILE is required")?;
    if search {
        let corpus = load_corpus(&data, &windows)?;
        let points: usize = corpus.iter().map(|series| series.values.len()).sum();
        for line in std::io::stdin().lock().lines() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let params: UnivariateParams = serde_json::from_str(&line)?;
            let (scores, seconds) = detect_corpus(&corpus, &params, |_, _| {});
            let profiles = score_detections(&corpus, scores);
            println!(
                "{:.2} {:.2} {:.2} tp={} fp={} {:.1}Mpts/s {}",
                profiles[0].normalized_score,
                profiles[1].normalized_score,
                profiles[2].normalized_score,
                profiles[0].true_positives,
                profiles[0].false_positives,
                points as f64 / seconds / 1e6,
                line.trim()
            );
        }
        return Ok(());
    }
    let params: UnivariateParams = match params {
        Some(text) => serde_json::from_str(&text)?,
        None => UnivariateParams::default(),
    };
    if detail {
        let corpus = load_corpus(&data, &windows)?;
        let (scores, _) = detect_corpus(&corpus, &params, |_, _| {});
        let threshold = score_detections(&corpus, scores.clone())[0].threshold;
        for (series, scores) in corpus.iter().zip(&scores) {
            print_detail(series, scores, threshold);
        }
    }
    let report = run_nab_with(&data, &windows, scores_out.as_deref(), &params, |_, _| {})?;
    for profile in &report.profiles {
        println!(
            "{:<20} {:>6.2}  (raw {:>8.3}, threshold {:.6}, tp {}, fn {}, fp {})",
            profile.profile,
            profile.normalized_score,
            profile.raw_score,
            profile.threshold,
            profile.true_positives,
            profile.false_negatives,
            profile.false_positives
        );
    }
    println!(
        "{} series, {} windows, {} points in {:.3} s of detector time: {:.2} M points/s",
        report.series,
        report.windows,
        report.points,
        report.detector_seconds,
        report.points_per_second / 1e6
    );
    Ok(())
}

/// Prints what each window of `series` earned at `threshold` (standard profile) and its false
/// positives.
fn print_detail(series: &Series, scores: &[f64], threshold: f64) {
    let roles = row_roles(scores.len(), &series.windows);
    let mut first: Vec<Option<(usize, f64)>> = vec![None; series.windows.len()];
    let mut max_in: Vec<f64> = vec![0.0; series.windows.len()];
    let (mut false_positives, mut cost) = (0usize, 0.0);
    for (row, (score, role)) in scores.iter().zip(&roles).enumerate() {
        if let RowRole::InWindow { window, .. } = *role {
            max_in[window] = max_in[window].max(*score);
        }
        if *score < threshold {
            continue;
        }
        match *role {
            RowRole::Probation => {}
            RowRole::InWindow { window, reward } => {
                if first[window].is_none() {
                    first[window] = Some((row, reward));
                }
            }
            RowRole::Outside { cost: c } => {
                if std::env::var_os("NAB_FP_ROWS").is_some() {
                    println!(
                        "FP {} row {} of {} score {:.3} cost {:.3}",
                        series.relative_path,
                        row,
                        scores.len(),
                        score,
                        c
                    );
                }
                false_positives += 1;
                cost += STANDARD.false_positive_weight * c;
            }
        }
    }
    let windows: Vec<String> = series
        .windows
        .iter()
        .zip(&first)
        .zip(&max_in)
        .map(|((window, hit), max)| match hit {
            Some((row, reward)) => format!(
                "{:.2}@{:.2}",
                reward,
                (row - window.first_row) as f64 / window.width_rows() as f64
            ),
            None => format!("MISS(max {max:.2})"),
        })
        .collect();
    println!(
        "{:<58} fp {:>3} ({:+.2})  {}",
        series.relative_path,
        false_positives,
        cost,
        windows.join(" ")
    );
}
