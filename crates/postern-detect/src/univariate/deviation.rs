//! A prediction-error detector: how far the value lands from a robust online forecast,
//! measured against the series' own recent errors, as a tail probability.

/// Upper tail of the standard normal, `P(Z ≥ z)` (Abramowitz–Stegun 7.1.26 on erfc; absolute
/// error below 1.5e-7, enough for scores).
pub(crate) fn normal_tail(z: f64) -> f64 {
    if z < 0.0 {
        return 1.0 - normal_tail(-z);
    }
    let x = z / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * x);
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    0.5 * poly * (-x * x).exp()
}

/// Exponentially weighted mean and variance.
#[derive(Debug, Clone, Default)]
pub(crate) struct EwStats {
    pub mean: f64,
    pub variance: f64,
    pub count: usize,
}

impl EwStats {
    pub fn push(&mut self, alpha: f64, value: f64) {
        if self.count == 0 {
            self.mean = value;
            self.variance = 0.0;
        } else {
            let alpha = alpha.max(1.0 / (self.count as f64 + 1.0));
            let delta = value - self.mean;
            self.mean += alpha * delta;
            self.variance = (1.0 - alpha) * (self.variance + alpha * delta * delta);
        }
        self.count += 1;
    }
}

/// Forecast error → tail probability → score in [0, 1].
#[derive(Debug, Clone)]
pub(crate) struct DeviationModel {
    forecast_alpha: f64,
    scale_alpha: f64,
    long_alpha: f64,
    short_rows: usize,
    log_scale: f64,
    forecast: Option<f64>,
    scale: EwStats,
    short: std::collections::VecDeque<f64>,
    short_sum: f64,
    long: EwStats,
    min_std: f64,
}

fn alpha(span: usize) -> f64 {
    2.0 / (span.max(1) as f64 + 1.0)
}

impl DeviationModel {
    pub fn new(
        forecast_rows: usize,
        scale_rows: usize,
        short_rows: usize,
        long_rows: usize,
        log_scale: f64,
        min_std: f64,
    ) -> Self {
        Self {
            forecast_alpha: alpha(forecast_rows),
            scale_alpha: alpha(scale_rows),
            long_alpha: alpha(long_rows),
            short_rows: short_rows.max(1),
            log_scale: log_scale.max(1e-9),
            forecast: None,
            scale: EwStats::default(),
            short: std::collections::VecDeque::new(),
            short_sum: 0.0,
            long: EwStats::default(),
            min_std,
        }
    }

    /// Scores `value` against the forecast made before it, then learns it.
    pub fn update(&mut self, value: f64) -> f64 {
        let Some(forecast) = self.forecast else {
            self.forecast = Some(value);
            return 0.0;
        };
        let error = (value - forecast).abs();
        // Raw surprise: the error in units of the recent mean absolute error.
        let scale = self.scale.mean;
        let raw = if self.scale.count == 0 {
            0.0
        } else {
            error / scale.max(1e-12)
        };
        let raw = if raw.is_finite() { raw.min(1e6) } else { 1e6 };
        self.scale.push(self.scale_alpha, error);
        self.forecast = Some(forecast + self.forecast_alpha * (value - forecast));
        if self.short.len() == self.short_rows {
            self.short_sum -= self.short.pop_front().unwrap_or(0.0);
        }
        self.short.push_back(raw);
        self.short_sum += raw;
        let average = self.short_sum / self.short.len() as f64;
        let score = if self.long.count < 10 {
            0.0
        } else {
            let std = self.long.variance.sqrt().max(self.min_std);
            let tail = normal_tail((average - self.long.mean) / std).max(1e-300);
            (-tail.log10() / self.log_scale).clamp(0.0, 1.0)
        };
        self.long.push(self.long_alpha, average);
        score
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_tail_matches_known_values() {
        assert!((normal_tail(0.0) - 0.5).abs() < 1e-7);
        assert!((normal_tail(1.959_964) - 0.025).abs() < 1e-6);
        assert!((normal_tail(-1.0) - 0.841_344_7).abs() < 1e-6);
        assert!(normal_tail(8.0) < 1e-14);
    }

    #[test]
    fn a_jump_in_a_steady_noisy_series_scores_high() {
        let mut model = DeviationModel::new(3, 500, 5, 4000, 20.0, 0.05);
        let mut last = 0.0;
        for row in 0..3_000u32 {
            last = model.update(10.0 + f64::from(row % 7) * 0.1);
        }
        assert!(last < 0.2, "{last}");
        let mut jump = 0.0f64;
        for _ in 0..5 {
            jump = jump.max(model.update(30.0));
        }
        assert!(jump > 0.5, "{jump}");
    }
}
