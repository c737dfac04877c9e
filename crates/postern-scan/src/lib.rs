//! `postern-scan`: a sans-IO classifier of PII and secrets in HTTP bodies.
//!
//! Given bytes and a content-type hint, [`Scanner::scan`] returns [`Finding`]s — a data class
//! (`pii.email`, `payment.card`, `secret.aws_access_key`, …) and the byte range of the matched
//! value — plus counts per class. Callers decide what to do: block, [`redact`] by offsets, or
//! report. This crate does no IO, reads no clock, and never copies, logs or formats a matched
//! value: a `Finding` is offsets and names only.
//!
//! ## How it looks at bytes
//! Most bytes of an API payload are looked at once, by SIMD. Two passes find candidates, and
//! only candidates meet a regex or a validator:
//! 1. **Anchors** — one SIMD multi-literal search (Teddy, from `aho-corasick`) over every rule
//!    keyword (`AKIA`, `ghp_`, `k_live_`, `xox`, `eyJ`, `-----BEGIN`, `T3BlbkFJ`, …; one-byte
//!    keywords such as `@` go to `memchr`) and every *key trigger* (`password`, `token`,
//!    `secret`, `phone`, `birth`, … as written, Capitalized and UPPER; short words only in
//!    context, `api_key`/`apiKey`/`API_KEY`). A keyword hit runs its rule's regex from the start
//!    of the token holding the hit, over at most the regex's maximum length. A key-trigger hit
//!    checks that the hit sits inside a key (`"apiKey":`, `\"token\":` in an embedded
//!    document, `password=` in a form or log line); the key's value then goes to the rules whose
//!    `key_context` words appear, as whole words, in the key's words.
//! 2. **Digits** — native detectors for digit-shaped classes (card + issuer prefix + Luhn, IBAN +
//!    mod-97, SSN ranges, phone shapes, IPv4/IPv6) look only at positions selected by per-64-byte
//!    SSE2 byte-class masks: a digit not glued to a preceding word byte (so ids, hashes, base64
//!    and UUIDs cost nothing), a digit after a capital letter (IBAN), a hex digit touching `:`.
//!
//! Rules with neither keywords nor key context run their regex over the whole input (slow; no
//! built-in rule does this). Findings are then sorted, de-duplicated, and a key-context finding
//! overlapping a more specific one is dropped (`"api_key": "sk_live_…"` is a Stripe key, not
//! also a generic secret).
//!
//! JSON is not parsed into a tree: a key is recognised where it stands (`"…"` followed by `:`),
//! which in valid JSON only a key can be. Form bodies and text get `key=value` / `key: value`.
//!
//! Throughput (one core, `examples/scan_bench.rs`, see `bench/scan/README.md`): about 0.5 GB/s
//! on PII-light API JSON and 0.13 GB/s on the dense labelled corpus — below the 1 GB/s target.

//! ## What it is not
//! Not a DLP policy engine (the gateway decides what a class means for an integration), not a
//! streaming scanner (give it the whole body, decoded with [`decode_for_scan`] within a cap),
//! and not a named-entity recogniser: names and addresses are out of scope.

mod anchors;
mod decode;
mod digits;
mod redact;
mod rules;
mod validators;

use std::collections::BTreeMap;
use std::sync::Arc;

pub use decode::{decode_for_scan, Unscanned, UnscannedReason};
pub use redact::redact;
pub use rules::{NativeDetector, RuleError, RuleSpec, Rules, Validator, BUILTIN_RULES_TOML};

use anchors::{AnchorSet, AnchorSetBuilder};
use digits::DigitDetectors;

/// One detected value: its class, the rule that found it, and its byte range in the scanned
/// input. Never holds the value itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Stable class id, e.g. `payment.card`.
    pub class: Arc<str>,
    /// Id of the rule that matched, e.g. `payment-card`.
    pub rule_id: Arc<str>,
    /// Start byte offset (inclusive) of the value.
    pub start: usize,
    /// End byte offset (exclusive) of the value.
    pub end: usize,
}

/// The findings of one scan, in input order, and how many there are of each class.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanResult {
    pub findings: Vec<Finding>,
    pub class_counts: BTreeMap<Arc<str>, usize>,
}

impl ScanResult {
    /// Number of findings of `class`.
    pub fn count(&self, class: &str) -> usize {
        self.class_counts.get(class).copied().unwrap_or(0)
    }

    /// The distinct classes found, sorted.
    pub fn classes(&self) -> impl Iterator<Item = &str> {
        self.class_counts.keys().map(|class| &**class)
    }
}

/// What the caller knows about the body's syntax; it chooses how keys are recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentTypeHint {
    /// JSON or NDJSON: `"key": value`, and `key=value` inside string values (logs).
    Json,
    /// `application/x-www-form-urlencoded`: `key=value&…`.
    FormUrlEncoded,
    /// Anything else textual: `key=value` and `key: value`.
    Text,
    /// Sniff: JSON if the first non-blank byte is `{` or `[`, otherwise text.
    Unknown,
}

impl ContentTypeHint {
    /// From a `Content-Type` header value.
    pub fn from_content_type(content_type: Option<&str>) -> ContentTypeHint {
        let Some(value) = content_type else {
            return ContentTypeHint::Unknown;
        };
        let essence = value
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if essence == "application/json"
            || essence.ends_with("+json")
            || essence.contains("ndjson")
            || essence == "application/jsonl"
            || essence == "text/json"
        {
            ContentTypeHint::Json
        } else if essence == "application/x-www-form-urlencoded" {
            ContentTypeHint::FormUrlEncoded
        } else if essence.starts_with("text/") {
            ContentTypeHint::Text
        } else {
            ContentTypeHint::Unknown
        }
    }

    fn resolve(self, input: &[u8]) -> Syntax {
        match self {
            ContentTypeHint::Json => Syntax::Json,
            ContentTypeHint::FormUrlEncoded => Syntax::Form,
            ContentTypeHint::Text => Syntax::Text,
            ContentTypeHint::Unknown => match input.iter().find(|byte| !byte.is_ascii_whitespace())
            {
                Some(b'{') | Some(b'[') => Syntax::Json,
                _ => Syntax::Text,
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Syntax {
    Json,
    Form,
    Text,
}

/// A candidate before overlap resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RawFinding {
    pub rule: u16,
    pub start: usize,
    pub end: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RuleKind {
    Keyword,
    KeyContext,
    Native,
    FullScan,
}

#[derive(Debug)]
struct CompiledRule {
    id: Arc<str>,
    class: Arc<str>,
    kind: RuleKind,
    regex: Option<regex::bytes::Regex>,
    regex_has_group: bool,
    max_match_len: usize,
    validator: Validator,
    entropy_min: Option<f64>,
    key_context: Vec<Vec<String>>,
}

/// A compiled rule set. Cheap to share (`&self` scans); build once per rule-set change.
#[derive(Debug)]
pub struct Scanner {
    rules: Vec<CompiledRule>,
    anchors: Option<AnchorSet>,
    key_rules: Vec<u16>,
    full_scan_rules: Vec<u16>,
    digit_detectors: DigitDetectors,
}

const DEFAULT_MAX_MATCH_LEN: usize = 16 * 1024;
const MAX_LOOKBEHIND_BYTES: usize = 256;
const KEY_VALUE_MAX_BYTES: usize = 16 * 1024;
const KEY_MAX_BYTES: usize = 96;

impl Default for Scanner {
    /// The built-in rule set.
    fn default() -> Scanner {
        Scanner::new(Rules::builtin()).expect("built-in rules compile")
    }
}

impl Scanner {
    /// Compiles `rules`. Fails with the rule id if a regex does not compile.
    pub fn new(rules: Rules) -> Result<Scanner, RuleError> {
        let specs = rules.specs();
        assert!(specs.len() < usize::from(u16::MAX), "too many rules");
        let mut compiled = Vec::with_capacity(specs.len());
        let mut anchor_builder = AnchorSetBuilder::default();
        let mut key_rules = Vec::new();
        let mut full_scan_rules = Vec::new();
        let mut digit_detectors = DigitDetectors::default();

        for (index, spec) in specs.iter().enumerate() {
            let rule_index = index as u16;
            let (regex, regex_has_group, max_match_len) = match &spec.regex {
                Some(pattern) => {
                    let regex = regex::bytes::RegexBuilder::new(pattern)
                        .size_limit(32 << 20)
                        .build()
                        .map_err(|error| RuleError::Regex {
                            id: spec.id.clone(),
                            message: error.to_string(),
                        })?;
                    let max_len = regex_syntax::Parser::new()
                        .parse(pattern)
                        .ok()
                        .and_then(|hir| hir.properties().maximum_len())
                        .unwrap_or(DEFAULT_MAX_MATCH_LEN)
                        .clamp(1, 1 << 20);
                    let has_group = regex.captures_len() > 1;
                    (Some(regex), has_group, max_len)
                }
                None => (None, false, 0),
            };
            let key_context: Vec<Vec<String>> = spec
                .key_context
                .iter()
                .map(|word| key_segments(word.as_bytes()))
                .filter(|segments| !segments.is_empty())
                .collect();
            let kind = if let Some(detector) = spec.detector {
                let slot = match detector {
                    NativeDetector::Card => &mut digit_detectors.card,
                    NativeDetector::Iban => &mut digit_detectors.iban,
                    NativeDetector::UsSsn => &mut digit_detectors.us_ssn,
                    NativeDetector::Phone => &mut digit_detectors.phone,
                    NativeDetector::IpAddress => &mut digit_detectors.ip_address,
                };
                slot.get_or_insert(rule_index);
                RuleKind::Native
            } else if !key_context.is_empty() {
                key_rules.push(rule_index);
                let triggers: Vec<String> = if spec.keywords.is_empty() {
                    key_triggers(&key_context)
                } else {
                    spec.keywords.clone()
                };
                for trigger in triggers {
                    anchor_builder.target(trigger.as_bytes()).key_trigger = true;
                }
                RuleKind::KeyContext
            } else if !spec.keywords.is_empty() {
                for keyword in &spec.keywords {
                    anchor_builder
                        .target(keyword.as_bytes())
                        .keyword_rules
                        .push(rule_index);
                }
                RuleKind::Keyword
            } else {
                full_scan_rules.push(rule_index);
                RuleKind::FullScan
            };
            compiled.push(CompiledRule {
                id: Arc::from(spec.id.as_str()),
                class: Arc::from(spec.class.as_str()),
                kind,
                regex,
                regex_has_group,
                max_match_len,
                validator: spec.validator,
                entropy_min: spec.entropy_min,
                key_context,
            });
        }

        let anchors = anchor_builder.build();
        Ok(Scanner {
            rules: compiled,
            anchors,
            key_rules,
            full_scan_rules,
            digit_detectors,
        })
    }

    /// The built-ins extended or overridden by the TOML rule file `text`.
    pub fn with_rule_file(text: &str) -> Result<Scanner, RuleError> {
        Scanner::new(Rules::builtin_extended_with_toml(text)?)
    }

    /// Scans `input` and returns its findings, sorted by offset.
    pub fn scan(&self, input: &[u8], content_type_hint: ContentTypeHint) -> ScanResult {
        let syntax = content_type_hint.resolve(input);
        let mut raw = Vec::new();
        if let Some(anchors) = &self.anchors {
            let mut keyword_covered_until: Vec<usize> = Vec::new();
            let mut last_key = (usize::MAX, usize::MAX);
            anchors.for_each_hit(input, |hit_start, hit_end, target, first_of_group| {
                if first_of_group {
                    keyword_covered_until.clear();
                    last_key = (usize::MAX, usize::MAX);
                }
                for &rule in &target.keyword_rules {
                    if keyword_covered_until.is_empty() {
                        keyword_covered_until.resize(self.rules.len(), 0);
                    }
                    if hit_start < keyword_covered_until[usize::from(rule)] {
                        continue;
                    }
                    if let Some(found) = self.keyword_hit(rule, input, hit_start, hit_end) {
                        keyword_covered_until[usize::from(rule)] = found.end;
                        raw.push(found);
                    }
                }
                if target.key_trigger {
                    self.key_hit(input, hit_start, hit_end, syntax, &mut last_key, &mut raw);
                }
            });
        }
        if self.digit_detectors.any() {
            digits::scan_digits(input, self.digit_detectors, &mut raw);
        }
        for &rule in &self.full_scan_rules {
            let compiled = &self.rules[usize::from(rule)];
            let Some(regex) = &compiled.regex else {
                continue;
            };
            for captures in regex.captures_iter(input) {
                let Some(whole) = captures.get(0) else {
                    continue;
                };
                let found = captures.get(1).unwrap_or(whole);
                if let Some(found) = self.accept(rule, input, found.start(), found.end()) {
                    raw.push(found);
                }
            }
        }
        self.resolve(raw)
    }

    /// Runs a keyword rule's regex around a keyword hit; the match must contain the hit.
    fn keyword_hit(
        &self,
        rule: u16,
        input: &[u8],
        hit_start: usize,
        hit_end: usize,
    ) -> Option<RawFinding> {
        let compiled = &self.rules[usize::from(rule)];
        let regex = compiled.regex.as_ref()?;
        // Start at the token holding the keyword (the local part of an email, `sk-proj-…`).
        let lookbehind_limit =
            hit_start.saturating_sub(compiled.max_match_len.min(MAX_LOOKBEHIND_BYTES));
        let mut window_start = hit_start;
        while window_start > lookbehind_limit && is_token_byte(input[window_start - 1]) {
            window_start -= 1;
        }
        let window_end = input
            .len()
            .min(hit_start.saturating_add(compiled.max_match_len));
        let haystack = &input[..window_end];
        let mut at = window_start;
        while at <= hit_start {
            let (whole_start, whole_end, found_start, found_end) = if compiled.regex_has_group {
                let captures = regex.captures_at(haystack, at)?;
                let whole = captures.get(0)?;
                let found = captures.get(1).unwrap_or(whole);
                (whole.start(), whole.end(), found.start(), found.end())
            } else {
                let whole = regex.find_at(haystack, at)?;
                (whole.start(), whole.end(), whole.start(), whole.end())
            };
            if whole_start > hit_start {
                return None;
            }
            if whole_end >= hit_end {
                let mut start = found_start;
                // `\njohn@…` inside a JSON string: the `n` belongs to the escape, not the value.
                if start > 0
                    && input[start - 1] == b'\\'
                    && preceding_backslashes(input, start) % 2 == 1
                {
                    let unicode_escape = input[start] == b'u'
                        && input
                            .get(start + 1..start + 5)
                            .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit));
                    start += if unicode_escape { 5 } else { 1 };
                }
                return self.accept(rule, input, start, found_end);
            }
            at = whole_end.max(whole_start + 1);
        }
        None
    }

    /// Applies the validator and entropy floor of `rule` to `input[start..end]`.
    fn accept(&self, rule: u16, input: &[u8], start: usize, end: usize) -> Option<RawFinding> {
        let compiled = &self.rules[usize::from(rule)];
        if start >= end {
            return None;
        }
        let candidate = &input[start..end];
        if !validators::validate(compiled.validator, candidate) {
            return None;
        }
        if let Some(entropy_min) = compiled.entropy_min {
            if validators::shannon_entropy(candidate) < entropy_min {
                return None;
            }
        }
        Some(RawFinding { rule, start, end })
    }

    /// A key trigger hit: if it sits in a key, give that key's value to the matching key rules.
    fn key_hit(
        &self,
        input: &[u8],
        hit_start: usize,
        hit_end: usize,
        syntax: Syntax,
        last_key: &mut (usize, usize),
        out: &mut Vec<RawFinding>,
    ) {
        let Some(pair) = locate_key_value(input, hit_start, hit_end, syntax) else {
            return;
        };
        if pair.key == *last_key {
            return;
        }
        *last_key = pair.key;
        let key = &input[pair.key.0..pair.key.1];
        let mut segments = [(0usize, 0usize); MAX_KEY_SEGMENTS];
        let segment_count = key_segment_ranges(key, &mut segments);
        let segments = &segments[..segment_count];
        let (value_start, value_end) = pair.value;
        let value = &input[value_start..value_end];
        for &rule in &self.key_rules {
            let compiled = &self.rules[usize::from(rule)];
            if !compiled
                .key_context
                .iter()
                .any(|word| key_contains_words(key, segments, word))
            {
                continue;
            }
            let Some(regex) = &compiled.regex else {
                continue;
            };
            let (found_start, found_end) = if compiled.regex_has_group {
                let Some(captures) = regex.captures(value) else {
                    continue;
                };
                let Some(found) = captures.get(1).or_else(|| captures.get(0)) else {
                    continue;
                };
                (found.start(), found.end())
            } else {
                let Some(found) = regex.find(value) else {
                    continue;
                };
                (found.start(), found.end())
            };
            if let Some(finding) = self.accept(
                rule,
                input,
                value_start + found_start,
                value_start + found_end,
            ) {
                out.push(finding);
            }
        }
    }

    /// Sorts, removes duplicates, and drops key-context findings that overlap a finding of a
    /// more specific rule (a Stripe key under `api_key` is `secret.stripe_key`, not also
    /// `secret.generic`).
    fn resolve(&self, mut raw: Vec<RawFinding>) -> ScanResult {
        raw.sort_by_key(|finding| (finding.start, finding.end, finding.rule));
        raw.dedup_by(|later, earlier| {
            later.start == earlier.start
                && later.end == earlier.end
                && self.rules[usize::from(later.rule)].class
                    == self.rules[usize::from(earlier.rule)].class
        });
        let is_key_rule = |finding: &RawFinding| {
            self.rules[usize::from(finding.rule)].kind == RuleKind::KeyContext
        };
        let mut keep = vec![true; raw.len()];
        for (index, finding) in raw.iter().enumerate() {
            if !is_key_rule(finding) {
                continue;
            }
            let overlapped = raw.iter().any(|other| {
                !is_key_rule(other) && other.start < finding.end && finding.start < other.end
            });
            if overlapped {
                keep[index] = false;
            }
        }
        let mut result = ScanResult::default();
        for (finding, keep) in raw.into_iter().zip(keep) {
            if !keep {
                continue;
            }
            let compiled = &self.rules[usize::from(finding.rule)];
            *result
                .class_counts
                .entry(compiled.class.clone())
                .or_insert(0) += 1;
            result.findings.push(Finding {
                class: compiled.class.clone(),
                rule_id: compiled.id.clone(),
                start: finding.start,
                end: finding.end,
            });
        }
        result
    }
}

fn is_token_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'%' | b'+' | b'-')
}

/// Words too common in keys to find key-context keys by (`api_key` is found by `api`).
const WEAK_KEY_WORDS: &[&str] = &[
    "key", "id", "number", "date", "of", "client", "user", "name", "code", "value", "data",
];

/// The literals that find keys for `key_context`: per entry its longest strong word, dropping
/// words that contain another trigger (`mobilephone` is found by `phone`), each as written,
/// Capitalized and UPPER.
fn key_triggers(key_context: &[Vec<String>]) -> Vec<String> {
    // One-word entries first: their word is a trigger, and a longer entry containing that word
    // (`access_token` after `token`) needs no trigger of its own.
    let mut words: Vec<String> = key_context
        .iter()
        .filter(|segments| segments.len() == 1)
        .map(|segments| segments[0].clone())
        .collect();
    let mut joined: Vec<String> = Vec::new();
    for segments in key_context.iter().filter(|segments| segments.len() > 1) {
        if segments.iter().any(|segment| words.contains(segment)) {
            continue;
        }
        let strong = segments
            .iter()
            .filter(|segment| !WEAK_KEY_WORDS.contains(&segment.as_str()));
        let Some(word) = strong
            .max_by_key(|segment| segment.len())
            .or_else(|| segments.iter().max_by_key(|segment| segment.len()))
        else {
            continue;
        };
        if word.len() >= 4 {
            words.push(word.clone());
        } else {
            // A short word (`api`) is too common alone: find the whole entry as it is usually
            // written (`api_key`, `api-key`, `apikey`, `apiKey`, `ApiKey`, `API_KEY`, `API-KEY`).
            let camel: String = segments
                .iter()
                .enumerate()
                .map(|(index, segment)| {
                    if index == 0 {
                        segment.clone()
                    } else {
                        capitalized(segment)
                    }
                })
                .collect();
            let pascal: String = segments
                .iter()
                .map(|segment| capitalized(segment))
                .collect();
            for variant in [
                segments.join("_"),
                segments.join("-"),
                segments.concat(),
                camel,
                pascal,
                segments.join("_").to_ascii_uppercase(),
                segments.join("-").to_ascii_uppercase(),
            ] {
                joined.push(variant);
            }
        }
    }
    words.sort();
    words.dedup();
    let minimal: Vec<String> = words
        .iter()
        .filter(|word| {
            !words
                .iter()
                .any(|other| other != *word && word.contains(other.as_str()))
        })
        .cloned()
        .collect();
    let mut triggers: Vec<String> = minimal
        .iter()
        .flat_map(|word| [word.clone(), capitalized(word), word.to_ascii_uppercase()])
        .collect();
    for variant in joined {
        if !triggers.contains(&variant) {
            triggers.push(variant);
        }
    }
    triggers
}

fn capitalized(word: &str) -> String {
    let mut chars = word.chars();
    chars
        .next()
        .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
        .unwrap_or_default()
}

fn preceding_backslashes(input: &[u8], at: usize) -> usize {
    input[..at]
        .iter()
        .rev()
        .take_while(|&&byte| byte == b'\\')
        .count()
}

/// The words of a key, lowercased: `apiKey` → `api key`, `X-API-KEY` → `x api key`,
/// `SSN__c` → `ssn c`, `date_of_birth` → `date of birth`.
fn key_segments(key: &[u8]) -> Vec<String> {
    let mut ranges = [(0usize, 0usize); MAX_KEY_SEGMENTS];
    let count = key_segment_ranges(key, &mut ranges);
    ranges[..count]
        .iter()
        .map(|&(start, end)| String::from_utf8_lossy(&key[start..end]).to_ascii_lowercase())
        .collect()
}

const MAX_KEY_SEGMENTS: usize = 16;

/// Word boundaries of a key without allocating: separators, lower→Upper, `APIKey` → `API|Key`.
fn key_segment_ranges(key: &[u8], ranges: &mut [(usize, usize); MAX_KEY_SEGMENTS]) -> usize {
    let mut count = 0;
    let mut start: Option<usize> = None;
    for (index, &byte) in key.iter().enumerate() {
        if !byte.is_ascii_alphanumeric() {
            if let Some(segment_start) = start.take() {
                if count < MAX_KEY_SEGMENTS {
                    ranges[count] = (segment_start, index);
                    count += 1;
                }
            }
            continue;
        }
        if let Some(segment_start) = start {
            if byte.is_ascii_uppercase() {
                let previous = key[index - 1];
                let next_is_lower = key.get(index + 1).is_some_and(u8::is_ascii_lowercase);
                if previous.is_ascii_lowercase()
                    || previous.is_ascii_digit()
                    || (previous.is_ascii_uppercase() && next_is_lower)
                {
                    if count < MAX_KEY_SEGMENTS {
                        ranges[count] = (segment_start, index);
                        count += 1;
                    }
                    start = Some(index);
                }
            }
        } else {
            start = Some(index);
        }
    }
    if let Some(segment_start) = start {
        if count < MAX_KEY_SEGMENTS {
            ranges[count] = (segment_start, key.len());
            count += 1;
        }
    }
    count
}

/// Whether the key's words contain `words` as a contiguous run (case-insensitive).
fn key_contains_words(key: &[u8], segments: &[(usize, usize)], words: &[String]) -> bool {
    !words.is_empty()
        && segments.windows(words.len()).any(|window| {
            window
                .iter()
                .zip(words)
                .all(|(&(start, end), word)| key[start..end].eq_ignore_ascii_case(word.as_bytes()))
        })
}

struct KeyValue {
    key: (usize, usize),
    value: (usize, usize),
}

fn is_key_word_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-' | b'[' | b']')
}

fn is_key_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-' | b'.' | b'[' | b']')
}

/// Finds the key around a trigger hit and the span of its value.
fn locate_key_value(
    input: &[u8],
    hit_start: usize,
    hit_end: usize,
    syntax: Syntax,
) -> Option<KeyValue> {
    if syntax != Syntax::Form {
        if let Some(pair) = quoted_key_value(input, hit_start, hit_end) {
            return Some(pair);
        }
    }
    bare_key_value(input, hit_start, hit_end, syntax)
}

/// `"key": value` (JSON) or `\"key\": \"value\"` (a JSON document embedded in a string).
fn quoted_key_value(input: &[u8], hit_start: usize, hit_end: usize) -> Option<KeyValue> {
    let n = input.len();
    // From the trigger to the key's end only word bytes may follow (a URL such as
    // `api.example.com` is rejected at the `.`).
    let mut close = hit_end;
    while close < n && close - hit_end < KEY_MAX_BYTES && is_key_word_byte(input[close]) {
        close += 1;
    }
    let escaped = close < n && input[close] == b'\\' && input.get(close + 1) == Some(&b'"');
    if close >= n || !(input[close] == b'"' || escaped) {
        return None;
    }
    let mut open = hit_start;
    while open > 0
        && hit_start - open < KEY_MAX_BYTES
        && !matches!(input[open - 1], b'"' | b'\n' | b'\\')
    {
        open -= 1;
    }
    if open == 0 || input[open - 1] != b'"' {
        return None;
    }
    let open_escaped = open >= 2 && input[open - 2] == b'\\';
    if open_escaped != escaped {
        return None;
    }
    let mut at = close + if escaped { 2 } else { 1 };
    while at < n && matches!(input[at], b' ' | b'\t' | b'\r' | b'\n') {
        at += 1;
    }
    if at >= n || input[at] != b':' {
        return None;
    }
    at += 1;
    while at < n && matches!(input[at], b' ' | b'\t' | b'\r' | b'\n') {
        at += 1;
    }
    let value = if escaped {
        if input.get(at..at + 2) != Some(b"\\\"") {
            return None;
        }
        let start = at + 2;
        let limit = n.min(start + KEY_VALUE_MAX_BYTES);
        let end = start + memchr::memmem::find(&input[start..limit], b"\\\"")?;
        (start, end)
    } else if input.get(at) == Some(&b'"') {
        let start = at + 1;
        (start, json_string_end(input, start)?)
    } else {
        let start = at;
        let mut end = start;
        while end < n
            && end - start < KEY_VALUE_MAX_BYTES
            && !matches!(
                input[end],
                b',' | b'}' | b']' | b' ' | b'\t' | b'\r' | b'\n' | b'{' | b'[' | b'"'
            )
        {
            end += 1;
        }
        (start, end)
    };
    (value.0 < value.1).then_some(KeyValue {
        key: (open, close),
        value,
    })
}

/// End (index of the closing quote) of the JSON string whose content starts at `start`.
fn json_string_end(input: &[u8], start: usize) -> Option<usize> {
    let limit = input.len().min(start + KEY_VALUE_MAX_BYTES);
    let mut at = start;
    loop {
        at += memchr::memchr2(b'"', b'\\', &input[at..limit])?;
        if input[at] == b'"' {
            return Some(at);
        }
        at += 2;
        if at >= limit {
            return None;
        }
    }
}

/// `key=value` (form, text, logs inside JSON strings) or `key: value` (text).
fn bare_key_value(
    input: &[u8],
    hit_start: usize,
    hit_end: usize,
    syntax: Syntax,
) -> Option<KeyValue> {
    let n = input.len();
    let mut key_start = hit_start;
    while key_start > 0
        && hit_start - key_start < KEY_MAX_BYTES
        && is_key_byte(input[key_start - 1])
    {
        key_start -= 1;
    }
    let mut key_end = hit_end;
    while key_end < n && key_end - hit_end < KEY_MAX_BYTES && is_key_word_byte(input[key_end]) {
        key_end += 1;
    }
    let mut at = key_end;
    if syntax != Syntax::Form && at < n && input[at] == b' ' {
        at += 1;
    }
    let separator = *input.get(at)?;
    let colon_allowed = syntax != Syntax::Form;
    if !(separator == b'='
        || (colon_allowed && separator == b':' && input.get(at + 1) != Some(&b'/')))
    {
        return None;
    }
    at += 1;
    if syntax != Syntax::Form {
        while at < n && input[at] == b' ' {
            at += 1;
        }
    }
    let quote = input
        .get(at)
        .copied()
        .filter(|byte| matches!(byte, b'"' | b'\''));
    let (start, end) = if let Some(quote) = quote.filter(|_| syntax != Syntax::Form) {
        let start = at + 1;
        let limit = n.min(start + KEY_VALUE_MAX_BYTES);
        (start, start + memchr::memchr(quote, &input[start..limit])?)
    } else {
        let start = at;
        let mut end = start;
        while end < n && end - start < KEY_VALUE_MAX_BYTES {
            let byte = input[end];
            let stop = match syntax {
                Syntax::Form => byte == b'&',
                _ => {
                    byte.is_ascii_whitespace()
                        || matches!(
                            byte,
                            b'&' | b',' | b';' | b'"' | b'\'' | b'\\' | b'<' | b'>'
                        )
                }
            };
            if stop {
                break;
            }
            end += 1;
        }
        (start, end)
    };
    (start < end).then_some(KeyValue {
        key: (key_start, key_end),
        value: (start, end),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_words() {
        assert_eq!(key_segments(b"apiKey"), ["api", "key"]);
        assert_eq!(key_segments(b"X-API-KEY"), ["x", "api", "key"]);
        assert_eq!(key_segments(b"APIKey"), ["api", "key"]);
        assert_eq!(key_segments(b"SSN__c"), ["ssn", "c"]);
        assert_eq!(key_segments(b"prompt_tokens"), ["prompt", "tokens"]);
    }
}
