//! Test-only: a small deterministic generator for the parsers' differential fuzz tests
//! (`h1server`, `h1`), so a failing case names its seed and can be replayed.

/// How a failing case is named: its seed, its number and its bytes (lossily as text).
pub(crate) fn shown(seed: u64, case: usize, bytes: &[u8]) -> String {
    format!(
        "seed {seed:#x}, case {case}: {:?}",
        String::from_utf8_lossy(bytes)
    )
}

/// xorshift64: not random enough for anything but picking test inputs.
pub(crate) struct Fuzz(pub(crate) u64);

impl Fuzz {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number below `n`.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub(crate) fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len())]
    }

    /// Up to two bytes of `bytes` replaced, inserted (from `inserts`) or removed, on one call
    /// in two.
    pub(crate) fn mutate(&mut self, bytes: &mut Vec<u8>, inserts: &[u8]) {
        for _ in 0..[0, 0, 1, 2][self.below(4)] {
            let at = self.below(bytes.len());
            match self.below(3) {
                0 => bytes[at] = self.next() as u8,
                1 => bytes.insert(at, inserts[self.below(inserts.len())]),
                _ => {
                    bytes.remove(at);
                }
            }
        }
    }
}
