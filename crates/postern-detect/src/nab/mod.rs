//! A scorer for the Numenta Anomaly Benchmark (NAB v1.0), written from NAB's published rules.
//!
//! The functions here are pure: rows, scores and windows in, numbers out. Reading the corpus
//! from disk lives in [`corpus`]; running a detector over it lives in [`run`].
//!
//! The rules, as implemented:
//! - Probation: the first `min(floor(0.15 × N), 750)` rows of a file are never scored.
//! - Scaled sigmoid: `σ(y) = 2 / (1 + e^(5y)) − 1`, and `−1` for `y > 3`.
//! - In a window of rows `L..=R` (width `W = R − L + 1`) only the earliest detection counts:
//!   `A_TP × σ(y) / σ(−1)` with `y = −(R − i + 1) / W`. A window without detection: `−A_FN`.
//! - Outside every window, a detection before the first window scores `−A_FP`; after a window
//!   (nearest preceding right edge `R_prev`, width `W_prev`) it scores
//!   `A_FP × σ(|i − R_prev| / (W_prev − 1))`.
//! - One global threshold per detector and profile (a row detects when its score ≥ threshold),
//!   chosen by an **exact sweep over every distinct score value** of the corpus (NAB's own
//!   optimizer is a local search, so this can find a slightly better threshold than NAB would).
//! - Normalised score `100 × (S − S_null) / (S_perfect − S_null)`, `S_perfect = A_TP × windows`,
//!   `S_null = −A_FN × windows`.

pub mod corpus;
pub mod run;

/// The weights of one NAB application profile.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Profile {
    pub name: &'static str,
    pub true_positive_weight: f64,
    pub false_negative_weight: f64,
    pub false_positive_weight: f64,
}

pub const STANDARD: Profile = Profile {
    name: "standard",
    true_positive_weight: 1.0,
    false_negative_weight: 1.0,
    false_positive_weight: 0.11,
};
pub const REWARD_LOW_FP_RATE: Profile = Profile {
    name: "reward_low_FP_rate",
    true_positive_weight: 1.0,
    false_negative_weight: 1.0,
    false_positive_weight: 0.22,
};
pub const REWARD_LOW_FN_RATE: Profile = Profile {
    name: "reward_low_FN_rate",
    true_positive_weight: 1.0,
    false_negative_weight: 2.0,
    false_positive_weight: 0.11,
};
/// The three profiles, in NAB's order.
pub const PROFILES: [Profile; 3] = [STANDARD, REWARD_LOW_FP_RATE, REWARD_LOW_FN_RATE];

/// A labelled anomaly window, as inclusive row indices of its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub first_row: usize,
    pub last_row: usize,
}

impl Window {
    pub fn width_rows(&self) -> usize {
        self.last_row - self.first_row + 1
    }
}

/// Rows at the start of a file of `rows` rows that are never scored.
pub fn probation_rows(rows: usize) -> usize {
    ((0.15 * rows as f64).floor() as usize).min(750)
}

/// NAB's scaled sigmoid.
pub fn scaled_sigmoid(y: f64) -> f64 {
    if y > 3.0 {
        -1.0
    } else {
        2.0 / (1.0 + (5.0 * y).exp()) - 1.0
    }
}

/// What a detection at one row would be worth, before profile weights.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RowRole {
    /// In the probationary period: never counted.
    Probation,
    /// Inside window `window` (index into the file's windows); the value is `σ(y) / σ(−1)`.
    InWindow { window: usize, reward: f64 },
    /// Outside every window; the value is the unweighted (negative or ~0) sigmoid cost.
    Outside { cost: f64 },
}

/// The role of every row of a file with `rows` rows and the given (sorted, disjoint) windows.
pub fn row_roles(rows: usize, windows: &[Window]) -> Vec<RowRole> {
    let probation = probation_rows(rows);
    let max_reward = scaled_sigmoid(-1.0);
    let mut roles = Vec::with_capacity(rows);
    let mut next_window = 0;
    let mut previous: Option<Window> = None;
    for row in 0..rows {
        while next_window < windows.len() && windows[next_window].last_row < row {
            previous = Some(windows[next_window]);
            next_window += 1;
        }
        let current = windows
            .get(next_window)
            .filter(|window| window.first_row <= row);
        let role = if let Some(window) = current {
            let y = -((window.last_row - row + 1) as f64) / window.width_rows() as f64;
            RowRole::InWindow {
                window: next_window,
                reward: scaled_sigmoid(y) / max_reward,
            }
        } else {
            let cost = match previous {
                None => -1.0,
                Some(window) => {
                    let distance = row.abs_diff(window.last_row) as f64;
                    let denominator = window.width_rows() as f64 - 1.0;
                    scaled_sigmoid(if denominator > 0.0 {
                        distance / denominator
                    } else {
                        f64::INFINITY
                    })
                }
            };
            RowRole::Outside { cost }
        };
        roles.push(if row < probation {
            RowRole::Probation
        } else {
            role
        });
    }
    roles
}

/// Raw score of one file at a fixed threshold (a row detects when `score >= threshold`).
pub fn score_file(scores: &[f64], windows: &[Window], threshold: f64, profile: &Profile) -> f64 {
    let roles = row_roles(scores.len(), windows);
    let mut best: Vec<Option<f64>> = vec![None; windows.len()];
    let mut total = 0.0;
    for (score, role) in scores.iter().zip(&roles) {
        if *score < threshold {
            continue;
        }
        match *role {
            RowRole::Probation => {}
            RowRole::InWindow { window, reward } => {
                if best[window].is_none() {
                    best[window] = Some(profile.true_positive_weight * reward);
                }
            }
            RowRole::Outside { cost } => total += profile.false_positive_weight * cost,
        }
    }
    total
        + best
            .iter()
            .map(|detected| detected.unwrap_or(-profile.false_negative_weight))
            .sum::<f64>()
}

/// One file's detector output, ready to score.
#[derive(Debug, Clone)]
pub struct ScoredFile {
    pub scores: Vec<f64>,
    pub windows: Vec<Window>,
}

/// The result of the threshold sweep for one profile.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ProfileScore {
    pub profile: &'static str,
    /// The best threshold: rows with `score >= threshold` are detections. `f64::INFINITY`
    /// (serialized as `null`) when detecting nothing is best.
    pub threshold: f64,
    pub raw_score: f64,
    pub normalized_score: f64,
    pub true_positives: usize,
    pub false_negatives: usize,
    pub false_positives: usize,
}

/// Normalised NAB score of a raw corpus score.
pub fn normalize(raw_score: f64, window_count: usize, profile: &Profile) -> f64 {
    let perfect = profile.true_positive_weight * window_count as f64;
    let null = -profile.false_negative_weight * window_count as f64;
    if perfect == null {
        return 0.0;
    }
    100.0 * (raw_score - null) / (perfect - null)
}

/// Finds the single corpus-wide threshold that maximises the raw score of `profile`, by an
/// exact sweep over every distinct score value (plus "detect nothing").
pub fn sweep(files: &[ScoredFile], profile: &Profile) -> ProfileScore {
    struct Candidate {
        score: f64,
        window: Option<usize>,
        value: f64,
    }
    let mut window_offset = 0;
    let mut candidates = Vec::new();
    for file in files {
        for (score, role) in file
            .scores
            .iter()
            .zip(row_roles(file.scores.len(), &file.windows))
        {
            match role {
                RowRole::Probation => {}
                RowRole::InWindow { window, reward } => candidates.push(Candidate {
                    score: *score,
                    window: Some(window_offset + window),
                    value: profile.true_positive_weight * reward,
                }),
                RowRole::Outside { cost } => candidates.push(Candidate {
                    score: *score,
                    window: None,
                    value: profile.false_positive_weight * cost,
                }),
            }
        }
        window_offset += file.windows.len();
    }
    let window_count = window_offset;
    candidates.sort_by(|a, b| b.score.total_cmp(&a.score));

    let mut best_in_window: Vec<Option<f64>> = vec![None; window_count];
    let mut false_positive_sum = 0.0;
    let mut window_sum = -profile.false_negative_weight * window_count as f64;
    let (mut detected_windows, mut false_positives) = (0usize, 0usize);
    let mut best = ProfileScore {
        profile: profile.name,
        threshold: f64::INFINITY,
        raw_score: window_sum,
        normalized_score: 0.0,
        true_positives: 0,
        false_negatives: window_count,
        false_positives: 0,
    };
    let mut index = 0;
    while index < candidates.len() {
        let threshold = candidates[index].score;
        while index < candidates.len() && candidates[index].score == threshold {
            let candidate = &candidates[index];
            match candidate.window {
                None => {
                    false_positive_sum += candidate.value;
                    false_positives += 1;
                }
                Some(window) => match best_in_window[window] {
                    None => {
                        window_sum += candidate.value + profile.false_negative_weight;
                        best_in_window[window] = Some(candidate.value);
                        detected_windows += 1;
                    }
                    Some(previous) if candidate.value > previous => {
                        window_sum += candidate.value - previous;
                        best_in_window[window] = Some(candidate.value);
                    }
                    Some(_) => {}
                },
            }
            index += 1;
        }
        let raw_score = false_positive_sum + window_sum;
        if raw_score > best.raw_score {
            best = ProfileScore {
                profile: profile.name,
                threshold,
                raw_score,
                normalized_score: 0.0,
                true_positives: detected_windows,
                false_negatives: window_count - detected_windows,
                false_positives,
            };
        }
    }
    best.normalized_score = normalize(best.raw_score, window_count, profile);
    best
}

/// Sweeps all three profiles.
pub fn score_corpus(files: &[ScoredFile]) -> Vec<ProfileScore> {
    PROFILES
        .iter()
        .map(|profile| sweep(files, profile))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(first_row: usize, last_row: usize) -> Window {
        Window {
            first_row,
            last_row,
        }
    }

    #[test]
    fn sigmoid_matches_nab() {
        assert!((scaled_sigmoid(-1.0) - 0.986_614_298_151_430_3).abs() < 1e-12);
        assert_eq!(scaled_sigmoid(0.0), 0.0);
        assert_eq!(scaled_sigmoid(3.5), -1.0);
    }

    #[test]
    fn probation_is_fifteen_percent_capped_at_750() {
        assert_eq!(probation_rows(1000), 150);
        assert_eq!(probation_rows(4032), 604);
        assert_eq!(probation_rows(22_695), 750);
    }

    #[test]
    fn first_detection_only_and_fp_after_window() {
        let windows = [window(200, 299)];
        let mut scores = vec![0.0; 1000];
        scores[200] = 1.0;
        scores[250] = 1.0;
        assert!((score_file(&scores, &windows, 0.5, &STANDARD) - 1.0).abs() < 1e-12);
        // Right after the window a false positive is nearly free; far after it costs A_FP.
        scores[300] = 1.0;
        let near = score_file(&scores, &windows, 0.5, &STANDARD) - 1.0;
        assert!(near < 0.0 && near > -0.01, "{near}");
        scores[300] = 0.0;
        scores[900] = 1.0;
        assert!((score_file(&scores, &windows, 0.5, &STANDARD) - (1.0 - 0.11)).abs() < 1e-12);
        // Before the first window a false positive costs A_FP; in probation nothing.
        let mut early = vec![0.0; 1000];
        early[160] = 1.0;
        early[10] = 1.0;
        assert!((score_file(&early, &windows, 0.5, &REWARD_LOW_FP_RATE) - (-1.22)).abs() < 1e-12);
        assert!((score_file(&early, &windows, 0.5, &REWARD_LOW_FN_RATE) - (-2.11)).abs() < 1e-12);
        // Detection at the right edge earns little but positive.
        let mut late = vec![0.0; 1000];
        late[299] = 1.0;
        let value = score_file(&late, &windows, 0.5, &STANDARD);
        assert!(value > 0.0 && value < 0.05, "{value}");
    }

    #[test]
    fn sweep_agrees_with_fixed_threshold_scoring() {
        let windows = vec![window(300, 349), window(600, 679)];
        let scores: Vec<f64> = (0..1000)
            .map(|i| ((i * 7919) % 1000) as f64 / 1000.0)
            .collect();
        let files = vec![ScoredFile {
            scores: scores.clone(),
            windows: windows.clone(),
        }];
        for profile in &PROFILES {
            let best = sweep(&files, profile);
            let direct = score_file(&scores, &windows, best.threshold, profile);
            assert!(
                (best.raw_score - direct).abs() < 1e-9,
                "{} {} {}",
                profile.name,
                best.raw_score,
                direct
            );
            for threshold in [0.0, 0.1, 0.5, 0.9, 0.99] {
                assert!(score_file(&scores, &windows, threshold, profile) <= best.raw_score + 1e-9);
            }
        }
    }
}
