//! A small seeded random source (SplitMix64) and the distributions the simulator draws from.
//! No dependency, no global state: every stream is derived from the run's seed.

/// SplitMix64: fast, well mixed, and enough for traffic simulation (not for cryptography).
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

/// SplitMix64's output function, also used to derive stream seeds.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(mix(seed ^ 0x5157_4d55_4c41_5445))
    }

    /// An independent stream for (`stream`, `minute`) of a run: the same seed gives the same
    /// draws for that caller and minute whatever else the run contains.
    pub(crate) fn for_stream(seed: u64, stream: u64, minute: i64) -> Self {
        Rng::new(
            mix(seed)
                ^ mix(stream.wrapping_mul(0x9e37_79b9_7f4a_7c15))
                ^ mix((minute as u64).wrapping_mul(0xc2b2_ae3d_27d4_eb4f) ^ 0x1656_67b1),
        )
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// Uniform in [0, 1).
    pub(crate) fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [low, high).
    pub(crate) fn range(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.uniform()
    }

    /// Uniform in 0..n (n > 0).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (((self.next_u64() >> 32) * n as u64) >> 32) as usize
    }

    pub(crate) fn chance(&mut self, probability: f64) -> bool {
        self.uniform() < probability
    }

    /// Standard normal (Box–Muller).
    pub(crate) fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Log-normal with the given median and log-space standard deviation.
    pub(crate) fn log_normal(&mut self, median: f64, sigma: f64) -> f64 {
        median * (sigma * self.normal()).exp()
    }

    /// Poisson(λ): exact (Knuth) below 30, normal approximation above.
    pub(crate) fn poisson(&mut self, lambda: f64) -> u32 {
        if lambda <= 0.0 || !lambda.is_finite() {
            return 0;
        }
        if lambda < 30.0 {
            let limit = (-lambda).exp();
            let mut product = self.uniform();
            let mut count = 0;
            while product > limit {
                product *= self.uniform();
                count += 1;
            }
            count
        } else {
            (lambda + lambda.sqrt() * self.normal()).round().max(0.0) as u32
        }
    }

    /// An index drawn with probability proportional to `weights`.
    pub(crate) fn weighted(&mut self, weights: &[f64]) -> usize {
        let total: f64 = weights.iter().sum();
        let mut target = self.uniform() * total;
        for (index, weight) in weights.iter().enumerate() {
            if target < *weight {
                return index;
            }
            target -= weight;
        }
        weights.len() - 1
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn poisson_and_log_normal_have_the_right_moments() {
        let mut rng = Rng::new(1);
        for lambda in [0.4, 5.0, 80.0] {
            let draws = 20_000;
            let sum: u64 = (0..draws).map(|_| u64::from(rng.poisson(lambda))).sum();
            let mean = sum as f64 / draws as f64;
            assert!(
                (mean - lambda).abs() < 0.05 * lambda + 0.02,
                "{lambda}: {mean}"
            );
        }
        let mut values: Vec<f64> = (0..20_001).map(|_| rng.log_normal(100.0, 0.5)).collect();
        values.sort_by(f64::total_cmp);
        let median = values[10_000];
        assert!((95.0..105.0).contains(&median), "{median}");
    }

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a = Rng::for_stream(7, 3, 1_000).next_u64();
        assert_eq!(a, Rng::for_stream(7, 3, 1_000).next_u64());
        assert_ne!(a, Rng::for_stream(7, 3, 1_001).next_u64());
        assert_ne!(a, Rng::for_stream(7, 4, 1_000).next_u64());
        assert_ne!(a, Rng::for_stream(8, 3, 1_000).next_u64());
    }
}
