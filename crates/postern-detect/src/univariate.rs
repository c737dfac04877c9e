//! The streaming univariate detector: one value in, one anomaly score in `[0, 1]` out.
//!
//! Sans-IO and look-ahead free: a score depends only on the current and earlier values (no
//! whole-series minimum or maximum). Time per update is O(models × orders); memory per
//! detector is bounded by [`UnivariateParams::context_capacity`].
//!
//! The idea is contextual novelty, in the spirit of CAD OSE (Smirnov, NAB 2016):
//! 1. **Quantize** the value into a few levels across the range seen so far (values beyond it
//!    land in overflow levels). Several models run side by side: the raw value at a few
//!    resolutions, and the short moving mean of the value (which sees level shifts in noisy
//!    series).
//! 2. **Novelty**: for each model, the share of context orders `k = 0..orders` whose pattern
//!    "the `k` preceding levels, then this level" has never been seen. The models' novelty is
//!    averaged.
//! 3. **Spatial anomaly** (as Numenta's HTM detector does): a value beyond the range seen so far
//!    by more than 5 % of it scores at least `spatial_score`.
//! 4. **Prediction error** (Numenta's "anomaly likelihood" over a forecast error, in
//!    `univariate/deviation.rs`): on `sign(x)·√|x|`, the error of an exponentially weighted forecast in
//!    units of the recent mean absolute error, averaged over a few rows, as a Gaussian tail
//!    probability `p` against its own history; it scores `−log10(p) / deviation_log_scale`.
//!    It sees sharp departures that make no new pattern.
//! 5. **Calibrate**: the novelty is discounted by the series' own recent novelty rate
//!    (`novelty × (1 − rate)`), and it, the spatial and the prediction-error scores by how
//!    often the series has produced high scores lately, so a noisy series that is novel all
//!    the time scores lower than a quiet one with the same surprise — one global threshold
//!    then fits every series. The score is the largest of the three.
//! 6. **Rest**: after a score ≥ `context_rest_level`, the detector is silent for
//!    `context_rest_rows` rows: one anomaly, one detection.
//!
//! With the defaults it scores 70.41 / 60.21 / 75.67 (standard / low FP / low FN) on NAB v1.0;
//! `NAB_ATTEMPTS.md` beside this crate records how the defaults were reached.

use std::collections::VecDeque;

mod deviation;
use deviation::DeviationModel;

/// The detector's parameters. One set is used for every series.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UnivariateParams {
    /// Rows before the detector emits anything but 0.
    pub learning_rows: usize,
    /// Quantization levels of each value model across the running range (one model per
    /// entry).
    pub context_levels: Vec<usize>,
    /// Quantization levels of each smoothed model (on the mean of the last
    /// `context_mean_rows` values).
    pub context_mean_levels: Vec<usize>,
    pub context_mean_rows: usize,
    /// Quantization levels of each change model (on `value − previous value`).
    pub context_change_levels: Vec<usize>,
    /// Quantization levels of each phase model: the value's level paired with its hour of day
    /// (UTC), so a value normal at noon but never seen at 3 am is novel.
    pub context_phase_levels: Vec<usize>,
    /// Context orders checked per model: order `k` is "the `k` preceding levels, then this one".
    pub context_orders: usize,
    /// Rows over which a model's quantization range (min, max) is taken; the default is the
    /// whole history.
    pub context_range_rows: usize,
    /// Span (rows) of the exponentially weighted novelty rate; the score is
    /// `novelty × (1 − rate)^context_rate_power`.
    pub context_rate_rows: usize,
    pub context_rate_power: f64,
    /// After a score ≥ `context_rest_level` the detector is silent for `context_rest_rows`.
    pub context_rest_rows: usize,
    pub context_rest_level: f64,
    /// Span (rows) of the rate of past high scores (≥ `context_rest_level`); the score is
    /// divided by `1 + context_event_weight × (expected high scores in that span)`, so a
    /// series that keeps producing high scores is trusted less.
    pub context_event_rows: usize,
    pub context_event_weight: f64,
    /// A value beyond the range seen so far by more than `spatial_tolerance` × range scores at
    /// least `spatial_score` (HTM's "spatial anomaly"); 0 disables it.
    pub spatial_tolerance: f64,
    pub spatial_score: f64,
    /// Rows over which the spatial range is taken (default: the whole history).
    pub spatial_range_rows: usize,
    /// Share of the high-score-rate discount applied to spatial anomalies (0 = none, 1 = all).
    pub spatial_discount: f64,
    /// Weight of context order `k` is `context_order_decay^k` (1 = all orders count equally).
    pub context_order_decay: f64,
    /// Quantization levels of each block model (on means of consecutive, non-overlapping
    /// blocks of `context_block_rows` values; it speaks once per block).
    pub context_block_levels: Vec<usize>,
    pub context_block_rows: usize,
    /// Most distinct patterns one model remembers; past it the model forgets and re-learns.
    pub context_capacity: usize,
    /// Weight of the prediction-error detector (0 disables it). It forecasts the value
    /// (exponentially weighted mean over `deviation_forecast_rows`), measures the error in
    /// units of the recent mean absolute error (span `deviation_scale_rows`), averages that
    /// over the last `deviation_short_rows`, and turns the average into a Gaussian tail
    /// probability `p` against its own mean and spread over `deviation_long_rows` (Numenta's
    /// "anomaly likelihood"); the score is `weight × −log10(p) / deviation_log_scale`,
    /// discounted like the novelty by the rate of past high scores.
    pub deviation_weight: f64,
    pub deviation_forecast_rows: usize,
    pub deviation_scale_rows: usize,
    pub deviation_short_rows: usize,
    pub deviation_long_rows: usize,
    pub deviation_log_scale: f64,
    /// Floor of the spread of the averaged error (in mean-absolute-error units).
    pub deviation_min_std: f64,
    /// The prediction-error detector sees `sign(x) × √|x|`, which steadies the spread of
    /// count-like series (errors grow with the level).
    pub deviation_sqrt: bool,
}

impl Default for UnivariateParams {
    fn default() -> Self {
        Self {
            learning_rows: 150,
            context_levels: vec![6, 10, 14],
            context_mean_levels: vec![12],
            context_mean_rows: 12,
            context_change_levels: vec![],
            context_phase_levels: vec![],
            context_orders: 7,
            context_range_rows: usize::MAX / 4,
            context_rate_rows: 500,
            context_rate_power: 1.0,
            context_rest_rows: 40,
            context_rest_level: 0.5,
            context_capacity: 1 << 18,
            context_event_rows: 2000,
            context_event_weight: 0.05,
            spatial_tolerance: 0.05,
            spatial_score: 0.6,
            spatial_range_rows: usize::MAX / 4,
            spatial_discount: 1.0,
            context_order_decay: 1.0,
            context_block_levels: vec![],
            context_block_rows: 12,
            deviation_weight: 1.0,
            deviation_forecast_rows: 3,
            deviation_scale_rows: 500,
            deviation_short_rows: 5,
            deviation_long_rows: 4000,
            deviation_log_scale: 20.0,
            deviation_min_std: 0.05,
            deviation_sqrt: true,
        }
    }
}

/// Minimum and maximum of the last `rows` values (monotonic deques, O(1) amortized).
#[derive(Debug, Clone)]
struct SlidingRange {
    rows: usize,
    minima: VecDeque<(usize, f64)>,
    maxima: VecDeque<(usize, f64)>,
}

impl SlidingRange {
    fn new(rows: usize) -> Self {
        Self {
            rows: rows.max(1),
            minima: VecDeque::new(),
            maxima: VecDeque::new(),
        }
    }

    fn range(&self) -> Option<(f64, f64)> {
        Some((self.minima.front()?.1, self.maxima.front()?.1))
    }

    fn push(&mut self, row: usize, value: f64) {
        while self.minima.back().is_some_and(|&(_, v)| v >= value) {
            self.minima.pop_back();
        }
        self.minima.push_back((row, value));
        while self.maxima.back().is_some_and(|&(_, v)| v <= value) {
            self.maxima.pop_back();
        }
        self.maxima.push_back((row, value));
        let oldest_kept = row.saturating_sub(self.rows - 1);
        while self.minima.front().is_some_and(|&(r, _)| r < oldest_kept) {
            self.minima.pop_front();
        }
        while self.maxima.front().is_some_and(|&(r, _)| r < oldest_kept) {
            self.maxima.pop_front();
        }
    }
}

/// A hasher for `u64` keys that are already well mixed: it passes them through.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct MixedKeyHasher(u64);

impl std::hash::Hasher for MixedKeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

type MixedKeySet = std::collections::HashSet<u64, std::hash::BuildHasherDefault<MixedKeyHasher>>;

/// SplitMix64 finalizer over `hash ^ value`.
pub(crate) fn mix(hash: u64, value: u64) -> u64 {
    let mut z = (hash ^ value).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One quantized sequence model: the share of context orders whose (preceding levels → this
/// level) pattern was never seen.
#[derive(Debug, Clone)]
struct ContextModel {
    levels: usize,
    orders: usize,
    capacity: usize,
    range: SlidingRange,
    recent_levels: VecDeque<i64>,
    seen: MixedKeySet,
    order_weights: Vec<f64>,
}

impl ContextModel {
    fn new(levels: usize, params: &UnivariateParams) -> Self {
        Self {
            levels: levels.max(2),
            orders: params.context_orders.max(1),
            capacity: params.context_capacity.max(1024),
            range: SlidingRange::new(params.context_range_rows),
            recent_levels: VecDeque::with_capacity(params.context_orders + 1),
            seen: MixedKeySet::default(),
            order_weights: {
                let weights: Vec<f64> = (0..params.context_orders.max(1))
                    .map(|k| params.context_order_decay.powi(k as i32))
                    .collect();
                let total: f64 = weights.iter().sum();
                weights.into_iter().map(|w| w / total).collect()
            },
        }
    }

    /// The level of `value` in the range seen before it; beyond the range: overflow levels.
    fn level(&self, value: f64) -> i64 {
        let Some((low, high)) = self.range.range() else {
            return 0;
        };
        let span = (high - low).max(1e-12);
        let position = (value - low) / span * self.levels as f64;
        position.floor().clamp(-2.0, self.levels as f64 + 1.0) as i64
    }

    /// Learns `value` (with an optional phase such as the hour of day) and returns its novelty
    /// in [0, 1].
    fn update(&mut self, row: usize, value: f64, phase: u64) -> f64 {
        let level = self.level(value);
        if self.seen.len() > self.capacity {
            self.seen.clear();
        }
        let mut novel = 0.0;
        let mut pattern = mix(phase, level as u64);
        for order in 0..self.orders {
            if order > 0 {
                match self
                    .recent_levels
                    .get(self.recent_levels.len().wrapping_sub(order))
                {
                    Some(&previous) => {
                        pattern = mix(pattern, previous as u64 ^ ((order as u64) << 40))
                    }
                    None => break,
                }
            }
            if self.seen.insert(pattern) {
                novel += self.order_weights[order];
            }
        }
        self.recent_levels.push_back(level);
        if self.recent_levels.len() > self.orders {
            self.recent_levels.pop_front();
        }
        self.range.push(row, value);
        novel
    }
}

/// The streaming detector. Create one per series; feed values in time order.
#[derive(Debug, Clone)]
pub struct UnivariateDetector {
    params: UnivariateParams,
    rows_seen: usize,
    value_models: Vec<ContextModel>,
    mean_models: Vec<ContextModel>,
    change_models: Vec<ContextModel>,
    phase_models: Vec<ContextModel>,
    recent_values: VecDeque<f64>,
    recent_sum: f64,
    block_models: Vec<ContextModel>,
    block_sum: f64,
    block_len: usize,
    previous_value: Option<f64>,
    rate: f64,
    event_rate: f64,
    seen_range: SlidingRange,
    last_high_row: Option<usize>,
    deviation: Option<DeviationModel>,
}

impl UnivariateDetector {
    pub fn new(params: UnivariateParams) -> Self {
        let models = |levels: &[usize]| {
            levels
                .iter()
                .map(|&levels| ContextModel::new(levels, &params))
                .collect()
        };
        Self {
            value_models: models(&params.context_levels),
            mean_models: models(&params.context_mean_levels),
            change_models: models(&params.context_change_levels),
            phase_models: models(&params.context_phase_levels),
            recent_values: VecDeque::with_capacity(params.context_mean_rows),
            recent_sum: 0.0,
            block_models: models(&params.context_block_levels),
            block_sum: 0.0,
            block_len: 0,
            previous_value: None,
            rate: 0.0,
            event_rate: 0.0,
            seen_range: SlidingRange::new(params.spatial_range_rows),
            last_high_row: None,
            deviation: (params.deviation_weight > 0.0).then(|| {
                DeviationModel::new(
                    params.deviation_forecast_rows,
                    params.deviation_scale_rows,
                    params.deviation_short_rows,
                    params.deviation_long_rows,
                    params.deviation_log_scale,
                    params.deviation_min_std,
                )
            }),
            rows_seen: 0,
            params,
        }
    }

    pub fn params(&self) -> &UnivariateParams {
        &self.params
    }

    /// The averaged novelty of `value` over all models (learning it).
    fn novelty(&mut self, row: usize, timestamp_unix_s: i64, value: f64) -> f64 {
        let (mut sum, mut count) = (0.0, 0usize);
        for model in &mut self.value_models {
            sum += model.update(row, value, 0);
            count += 1;
        }
        if !self.mean_models.is_empty() {
            if self.recent_values.len() == self.params.context_mean_rows.max(1) {
                self.recent_sum -= self.recent_values.pop_front().unwrap_or(0.0);
            }
            self.recent_values.push_back(value);
            self.recent_sum += value;
            let mean = self.recent_sum / self.recent_values.len() as f64;
            for model in &mut self.mean_models {
                sum += model.update(row, mean, 0);
                count += 1;
            }
        }
        if let Some(previous) = self.previous_value {
            for model in &mut self.change_models {
                sum += model.update(row, value - previous, 0);
                count += 1;
            }
        }
        let hour_of_day = timestamp_unix_s.rem_euclid(86_400) as u64 / 3_600;
        for model in &mut self.phase_models {
            sum += model.update(row, value, 0x5A5A_0000 + hour_of_day);
            count += 1;
        }
        if !self.block_models.is_empty() {
            self.block_sum += value;
            self.block_len += 1;
            if self.block_len == self.params.context_block_rows.max(1) {
                let mean = self.block_sum / self.block_len as f64;
                self.block_sum = 0.0;
                self.block_len = 0;
                let block = row / self.params.context_block_rows.max(1);
                for model in &mut self.block_models {
                    sum += model.update(block, mean, 0);
                    count += 1;
                }
            }
        }
        if count == 0 {
            0.0
        } else {
            sum / count as f64
        }
    }

    /// Scores `value` observed at `timestamp_unix_s` and learns from it. Returns a score in
    /// `[0, 1]`; higher is more anomalous.
    pub fn update(&mut self, timestamp_unix_s: i64, value: f64) -> f64 {
        let value = if value.is_finite() {
            value
        } else {
            self.previous_value.unwrap_or(0.0)
        };
        let row = self.rows_seen;
        self.rows_seen += 1;
        let novelty = self.novelty(row, timestamp_unix_s, value);
        self.previous_value = Some(value);
        let mut spatial = 0.0;
        if let Some((low, high)) = self.seen_range.range() {
            let tolerance = self.params.spatial_tolerance * (high - low);
            if value > high + tolerance || value < low - tolerance {
                spatial = self.params.spatial_score;
            }
        }
        self.seen_range.push(row, value);
        let event_rows = self.params.context_event_rows.max(1) as f64;
        let event_discount =
            1.0 / (1.0 + self.params.context_event_weight * self.event_rate * event_rows);
        let mut deviation = 0.0;
        if let Some(model) = &mut self.deviation {
            let input = if self.params.deviation_sqrt {
                value.signum() * value.abs().sqrt()
            } else {
                value
            };
            deviation = self.params.deviation_weight * model.update(input) * event_discount;
        }
        let calibrated = novelty
            * (1.0 - self.rate)
                .max(0.0)
                .powf(self.params.context_rate_power)
            * event_discount;
        let spatial = spatial
            * (1.0 - self.params.spatial_discount + self.params.spatial_discount * event_discount);
        let calibrated = calibrated.max(spatial).max(deviation);
        let rate_alpha = 2.0 / (self.params.context_rate_rows.max(1) as f64 + 1.0);
        self.rate += rate_alpha * (novelty - self.rate);
        let resting = self
            .last_high_row
            .is_some_and(|high_row| row <= high_row + self.params.context_rest_rows);
        let high = calibrated >= self.params.context_rest_level;
        if high {
            self.last_high_row = Some(row);
        }
        if row >= self.params.learning_rows {
            let event_alpha = 2.0 / (event_rows + 1.0);
            self.event_rate +=
                event_alpha * (f64::from(u8::from(high && !resting)) - self.event_rate);
        }
        if resting || self.rows_seen <= self.params.learning_rows {
            0.0
        } else {
            calibrated.clamp(0.0, 1.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_series_is_quiet_and_a_spike_scores_high() {
        let mut detector = UnivariateDetector::new(UnivariateParams::default());
        let mut last = 0.0;
        for row in 0..2_000i64 {
            last = detector.update(row * 300, 10.0 + (row % 12) as f64);
        }
        assert!(last < 0.1, "{last}");
        let spike = detector.update(2_000 * 300, 100.0);
        assert!(spike > 0.5, "{spike}");
        // The rest period silences the aftermath.
        assert_eq!(detector.update(2_001 * 300, 100.0), 0.0);
    }

    #[test]
    fn scores_stay_in_unit_interval_with_nan_and_infinities() {
        let mut detector = UnivariateDetector::new(UnivariateParams::default());
        for (row, value) in [1.0, f64::NAN, f64::INFINITY, -5.0, 1e300, -1e300, 0.0]
            .iter()
            .cycle()
            .take(500)
            .enumerate()
        {
            let score = detector.update(row as i64, *value);
            assert!((0.0..=1.0).contains(&score), "{score}");
        }
    }
}
