//! The keyword pre-filter: every rule keyword, found in one pass. (Keys are not found here but
//! from their terminators, in the block pass.)
//!
//! Patterns of three bytes or more go to one SIMD multi-literal searcher (Teddy, from
//! `aho-corasick`'s packed module; an Aho-Corasick DFA where SIMD is unavailable). Shorter
//! patterns (`@`) use `memchr`/`memmem`, because a one-byte fingerprint would make Teddy stop on
//! every common letter.

use aho_corasick::{packed, AhoCorasick, AhoCorasickBuilder, AhoCorasickKind, MatchKind};
use memchr::memmem;

/// What a pattern hit means: the keyword rules to try around it.
#[derive(Debug, Default, Clone)]
pub(crate) struct AnchorTarget {
    pub keyword_rules: Vec<u16>,
}

#[derive(Debug)]
enum LongSearcher {
    Packed(packed::Searcher),
    Automaton(AhoCorasick),
}

#[derive(Debug)]
pub(crate) struct AnchorSet {
    pub targets: Vec<AnchorTarget>,
    long: Option<(LongSearcher, Vec<usize>)>,
    single_bytes: Vec<(u8, usize)>,
    short: Vec<(memmem::Finder<'static>, usize)>,
}

#[derive(Debug, Default)]
pub(crate) struct AnchorSetBuilder {
    patterns: Vec<Vec<u8>>,
    targets: Vec<AnchorTarget>,
}

impl AnchorSetBuilder {
    /// The target of `pattern`, created on first use.
    pub fn target(&mut self, pattern: &[u8]) -> &mut AnchorTarget {
        let index = match self
            .patterns
            .iter()
            .position(|existing| existing == pattern)
        {
            Some(index) => index,
            None => {
                self.patterns.push(pattern.to_vec());
                self.targets.push(AnchorTarget::default());
                self.patterns.len() - 1
            }
        };
        &mut self.targets[index]
    }

    pub fn build(self) -> Option<AnchorSet> {
        if self.patterns.is_empty() {
            return None;
        }
        let mut long_patterns = Vec::new();
        let mut long_targets = Vec::new();
        let mut single_bytes = Vec::new();
        let mut short = Vec::new();
        // Sorted, so patterns sharing a prefix share a Teddy bucket (fewer false candidates).
        let mut order: Vec<usize> = (0..self.patterns.len()).collect();
        order.sort_by(|&a, &b| self.patterns[a].cmp(&self.patterns[b]));
        for index in order {
            let pattern = &self.patterns[index];
            match pattern.len() {
                1 => single_bytes.push((pattern[0], index)),
                2 => short.push((memmem::Finder::new(pattern).into_owned(), index)),
                _ => {
                    long_patterns.push(pattern.clone());
                    long_targets.push(index);
                }
            }
        }
        let long = if long_patterns.is_empty() {
            None
        } else {
            let packed = packed::Config::new()
                .match_kind(packed::MatchKind::LeftmostFirst)
                .heuristic_pattern_limits(false)
                .builder()
                .extend(&long_patterns)
                .build();
            let searcher = match packed {
                Some(searcher) => LongSearcher::Packed(searcher),
                None => LongSearcher::Automaton(
                    AhoCorasickBuilder::new()
                        .match_kind(MatchKind::LeftmostFirst)
                        .kind(Some(AhoCorasickKind::DFA))
                        .build(&long_patterns)
                        .expect("keyword automaton builds"),
                ),
            };
            Some((searcher, long_targets))
        };
        Some(AnchorSet {
            targets: self.targets,
            long,
            single_bytes,
            short,
        })
    }
}

impl AnchorSet {
    /// Calls `on_hit(start, end, target)` for every hit, in input order within each group of
    /// patterns (long patterns, then each short pattern).
    pub fn for_each_hit(
        &self,
        input: &[u8],
        mut on_hit: impl FnMut(usize, usize, &AnchorTarget, bool),
    ) {
        if let Some((searcher, targets)) = &self.long {
            let mut first = true;
            match searcher {
                LongSearcher::Packed(searcher) => {
                    for hit in searcher.find_iter(input) {
                        on_hit(
                            hit.start(),
                            hit.end(),
                            &self.targets[targets[hit.pattern().as_usize()]],
                            first,
                        );
                        first = false;
                    }
                }
                LongSearcher::Automaton(automaton) => {
                    for hit in automaton.find_iter(input) {
                        on_hit(
                            hit.start(),
                            hit.end(),
                            &self.targets[targets[hit.pattern().as_usize()]],
                            first,
                        );
                        first = false;
                    }
                }
            }
        }
        for &(byte, target) in &self.single_bytes {
            let mut first = true;
            for at in memchr::memchr_iter(byte, input) {
                on_hit(at, at + 1, &self.targets[target], first);
                first = false;
            }
        }
        for (finder, target) in &self.short {
            let mut first = true;
            for at in finder.find_iter(input) {
                on_hit(at, at + 2, &self.targets[*target], first);
                first = false;
            }
        }
    }
}
