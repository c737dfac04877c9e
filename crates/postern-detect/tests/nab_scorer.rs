//! The NAB scorer proven on the real corpus: the null detector scores 0, a perfect detector
//! 100 on every profile, and a random detector lands in NAB's published random range.

use std::path::PathBuf;

use postern_detect::nab::corpus::{load_corpus, Series};
use postern_detect::nab::{score_corpus, ScoredFile};

/// Where the NAB corpus is: `$POSTERN_NAB_DIR`, or `shared/data/nab` beside the repository.
/// Missing: the corpus tests say SKIP, unless `POSTERN_REQUIRE_NAB` is set (CI), when they fail.
fn corpus_root() -> Option<PathBuf> {
    let root = std::env::var_os("POSTERN_NAB_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/nab")
        });
    if root.join("labels/combined_windows.json").exists() {
        return Some(root);
    }
    assert!(
        std::env::var_os("POSTERN_REQUIRE_NAB").is_none(),
        "POSTERN_REQUIRE_NAB is set but the NAB corpus is not at {}; set POSTERN_NAB_DIR",
        root.display()
    );
    eprintln!(
        "SKIP: NAB corpus not found at {}; set POSTERN_NAB_DIR",
        root.display()
    );
    None
}

fn corpus() -> Option<Vec<Series>> {
    let root = corpus_root()?;
    Some(
        load_corpus(
            &root.join("data"),
            &root.join("labels/combined_windows.json"),
        )
        .expect("corpus loads"),
    )
}

fn scores_of(corpus: &[Series], detector: impl Fn(&Series) -> Vec<f64>) -> [f64; 3] {
    let files: Vec<ScoredFile> = corpus
        .iter()
        .map(|series| ScoredFile {
            scores: detector(series),
            windows: series.windows.clone(),
        })
        .collect();
    let profiles = score_corpus(&files);
    [
        profiles[0].normalized_score,
        profiles[1].normalized_score,
        profiles[2].normalized_score,
    ]
}

#[test]
fn corpus_shape_matches_source_md() {
    let Some(corpus) = corpus() else { return };
    assert_eq!(corpus.len(), 58);
    assert_eq!(
        corpus
            .iter()
            .map(|series| series.windows.len())
            .sum::<usize>(),
        116
    );
    assert_eq!(
        corpus
            .iter()
            .map(|series| series.values.len())
            .sum::<usize>(),
        365_558
    );
}

#[test]
fn null_detector_scores_zero_and_perfect_detector_scores_hundred() {
    let Some(corpus) = corpus() else { return };
    assert_eq!(
        scores_of(&corpus, |series| vec![0.0; series.values.len()]),
        [0.0, 0.0, 0.0]
    );
    let perfect = scores_of(&corpus, |series| {
        let mut scores = vec![0.0; series.values.len()];
        for window in &series.windows {
            scores[window.first_row] = 1.0;
        }
        scores
    });
    for score in perfect {
        assert!((score - 100.0).abs() < 1e-9, "{perfect:?}");
    }
}

#[test]
fn random_detector_lands_in_nab_random_range() {
    let Some(corpus) = corpus() else { return };
    let mut results = Vec::new();
    for seed in 1..=5u64 {
        let random = scores_of(&corpus, |series| {
            let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ series.values.len() as u64;
            (0..series.values.len())
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state >> 11) as f64 / (1u64 << 53) as f64
                })
                .collect()
        });
        results.push(random);
    }
    let mean_standard = results.iter().map(|r| r[0]).sum::<f64>() / results.len() as f64;
    eprintln!("random detector, 5 seeds: {results:?}");
    // NAB publishes 7.95..16.83 over seeds (mean 11.0) with its local-search threshold; the
    // exact sweep can only do as well or better.
    assert!((5.0..=20.0).contains(&mean_standard), "{results:?}");
}

#[test]
fn run_nab_scores_the_detector_and_writes_score_files() {
    let Some(root) = corpus_root() else { return };
    let out = tempfile::tempdir().unwrap();
    let mut calls = 0;
    let report = postern_detect::run_nab(
        &root.join("data"),
        &root.join("labels/combined_windows.json"),
        Some(out.path()),
        |done, total| {
            calls += 1;
            assert!(done <= total);
        },
    )
    .unwrap();
    assert_eq!(
        (report.series, report.windows, report.points, calls),
        (58, 116, 365_558, 58)
    );
    let names: Vec<&str> = report
        .profiles
        .iter()
        .map(|profile| profile.profile)
        .collect();
    assert_eq!(
        names,
        ["standard", "reward_low_FP_rate", "reward_low_FN_rate"]
    );
    // The recorded result (NAB_ATTEMPTS.md); a change to the detector that loses ground fails here.
    assert!(
        report.profiles[0].normalized_score >= 70.0,
        "{:?}",
        report.profiles
    );
    let written = std::fs::read_to_string(out.path().join("realKnownCause/nyc_taxi.csv")).unwrap();
    let mut lines = written.lines();
    assert_eq!(lines.next(), Some("timestamp,value,anomaly_score"));
    assert!(lines
        .next()
        .unwrap()
        .starts_with("2014-07-01 00:00:00,10844,"));
    assert_eq!(written.lines().count(), 10_321);
}
