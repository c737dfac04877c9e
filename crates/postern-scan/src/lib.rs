//! `postern-scan`: a sans-IO classifier of PII and secrets in HTTP bodies.
//!
//! Given bytes and a content-type hint, [`Scanner::scan`] returns [`Finding`]s — a data class
//! (`pii.email`, `payment.card`, `secret.aws_access_key`, …) and the byte range of the matched
//! value — plus counts per class. Callers decide what to do: block, [`redact`] by offsets, or
//! report. This crate does no IO, reads no clock, and never copies, logs or formats a matched
//! value: a `Finding` is offsets and names only.
//!
//! ## How it looks at bytes
//! Most bytes of an API payload are looked at once, by SIMD, and only candidates meet a
//! matcher or a validator:
//! 1. **Keyword anchors** — one SIMD multi-literal search (Teddy, from `aho-corasick`) over the
//!    rule keywords (`AKIA`, `ghp_`, `k_live_`, `xox`, `eyJ`, `-----BEGIN`, `T3BlbkFJ`, …;
//!    one-byte keywords such as `@` go to `memchr`). A hit runs its rule's pattern from the
//!    start of the token holding the hit, over at most the pattern's maximum length.
//! 2. **The block pass** (`blocks.rs`) — one walk over 64-byte blocks computing byte-class
//!    masks (AVX2 when the CPU has it, SSE2 otherwise). Bit arithmetic on the masks yields
//!    - *digit candidates* for the native detectors of digit-shaped classes (card + issuer
//!      prefix + Luhn, IBAN + mod-97, SSN ranges, phone shapes, IPv4/IPv6; `digits.rs`): a
//!      digit not glued to a preceding word byte (so ids, hashes, base64 and UUIDs cost
//!      nothing), digits after two capitals or two lowercase letters (IBAN) or `%2B`, a hex
//!      digit next to a `:` that could be inside an IPv6 address; a lone short number is
//!      skipped from the masks alone;
//!    - *key terminators* (`keys.rs`): every `:` and `=` (only `=` in a form). The key before
//!      it is read backwards — `"apiKey":` from the 32 bytes before the quote, `\"token\":` in
//!      an embedded document, `password=` in a form or log line, `key: value` in text — split
//!      into words, and looked up in a table of *anchor words* (per `key_context` entry its
//!      most specific word). A per-thread memo keeps that verdict for keys up to 32 bytes, so a
//!      repeated key costs a lookup. Only a key holding an anchor word has its value located
//!      and given to the key rules whose `key_context` words it contains.
//!
//! Patterns are `regex`es, except that the hottest built-in ones (email, JWT, AWS, GitHub,
//! Stripe, Slack and OpenAI keys, PEM private keys, the generic-secret and date-of-birth
//! values) run on native matchers (`shapes.rs`) that give the same matches — checked against
//! `regex` in the tests — at a fraction of the cost. A rule with neither keywords nor key
//! context runs its regex over the whole input (slow; no built-in rule does this). Findings
//! are then sorted, de-duplicated, and a key-context finding overlapping a more specific one is
//! dropped (`"api_key": "sk_live_…"` is a Stripe key, not also a generic secret).
//!
//! JSON is not parsed into a tree: a key is recognised where it stands (`"…"` followed by `:`),
//! which in valid JSON only a key can be. Form bodies and text get `key=value` / `key: value`;
//! a form holding `+` or `%` is scanned as sent and percent-decoded (a copy), the decoded scan's
//! findings mapped back onto the encoded bytes and added where they are new. The same is done
//! for the `=` pairs of text and of a body with no type sniffed as JSON, for a form holding
//! `":` read as JSON (a JSON document in a form value), for JSON with its `\/` and `\uXXXX`
//! escapes undone, and for full-width forms and numeric references folded to ASCII (`fold.rs`).
//!
//! Throughput (one core, `examples/scan_bench.rs`; figures in `docs/BENCHMARKS.md`): about
//! 1.1 GB/s on PII-light API JSON and 0.3 GB/s on the dense labelled corpus.
//!
//! ## What it is not
//! Not a DLP policy engine (the gateway decides what a class means for an integration), not a
//! streaming scanner (give it the whole body, decoded within a cap: a response with
//! [`decode_for_scan`], a request as its vendor's strictest reading goes, with [`StreamDecoder`]),
//! and not a named-entity recogniser: names and addresses are out of scope.

mod anchors;
mod blocks;
mod decode;
mod digits;
mod fold;
mod keys;
mod redact;
mod rules;
mod shapes;
mod validators;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub use decode::{
    decode_for_scan, encode, testing, Coding, StreamDecoder, Unscanned, UnscannedReason,
    MAX_BROTLI_WINDOW_BITS, MAX_ZSTD_WINDOW_LOG, READINGS,
};
pub use redact::redact;
pub use rules::{NativeDetector, RuleError, RuleSpec, Rules, Validator, BUILTIN_RULES_TOML};

use anchors::{AnchorSet, AnchorSetBuilder};
use blocks::KeyVisitor;
use blocks::Terminators;
use digits::DigitDetectors;
use keys::{AnchorWords, KeyVerdicts, QuotedKey, MAX_KEY_SEGMENTS};

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
    /// A native matcher giving the same matches as `regex`, for the hottest built-in patterns.
    shape: Option<shapes::Shape>,
    max_match_len: usize,
    validator: Validator,
    entropy_min: Option<f64>,
    /// Per `key_context` entry: its words, and the id of its anchor word in
    /// `Scanner::key_anchor_words` (a key holds the entry only if it holds that word).
    key_context: Vec<(Vec<String>, usize)>,
    /// The rule's `keywords`: for a key rule, the key must contain one of them; for a keyword
    /// rule, a match must (case-sensitive).
    keywords: Vec<Vec<u8>>,
}

/// A compiled rule set. Cheap to share (`&self` scans); build once per rule-set change.
#[derive(Debug)]
pub struct Scanner {
    /// Unique per scanner in this process: tags what a thread remembers about keys.
    id: u64,
    rules: Vec<CompiledRule>,
    anchors: Option<AnchorSet>,
    key_rules: Vec<u16>,
    /// Per `key_context` entry of every key rule, the word that stands for it.
    key_anchor_words: AnchorWords,
    full_scan_rules: Vec<u16>,
    digit_detectors: DigitDetectors,
}

const DEFAULT_MAX_MATCH_LEN: usize = 16 * 1024;
const MAX_LOOKBEHIND_BYTES: usize = 256;
/// How many times its input a keyword rule with no native matcher may search in windows around
/// its hits before it runs once over the whole input instead ([`Scanner::keyword_hits`]).
const WINDOW_BUDGET: usize = 4;
/// The most rules a scanner runs, built-in ones included (rule indexes are `u16`).
pub const MAX_RULES: usize = 4096;
/// Rule sets up to this size track keyword coverage on the stack.
const STACK_RULES: usize = 64;

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
        if specs.len() > MAX_RULES {
            return Err(RuleError::TooMany {
                count: specs.len(),
                max: MAX_RULES,
            });
        }
        let mut compiled = Vec::with_capacity(specs.len());
        let mut anchor_builder = AnchorSetBuilder::default();
        let mut key_rules = Vec::new();
        let mut key_anchor_words = AnchorWords::default();
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
                .map(|word| keys::key_segments(word.as_bytes()))
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
                shape: spec.regex.as_deref().and_then(shapes::Shape::for_pattern),
                max_match_len,
                validator: spec.validator,
                entropy_min: spec.entropy_min,
                keywords: if matches!(kind, RuleKind::KeyContext | RuleKind::Keyword) {
                    spec.keywords
                        .iter()
                        .map(|k| k.as_bytes().to_vec())
                        .collect()
                } else {
                    Vec::new()
                },
                key_context: if kind == RuleKind::KeyContext {
                    key_context
                        .into_iter()
                        .filter_map(|entry| {
                            let anchor = key_anchor_words.insert(keys::anchor_word(&entry)?);
                            Some((entry, anchor))
                        })
                        .collect()
                } else {
                    Vec::new()
                },
            });
        }

        let anchors = anchor_builder.build();
        static NEXT_SCANNER_ID: AtomicU64 = AtomicU64::new(1);
        Ok(Scanner {
            id: NEXT_SCANNER_ID.fetch_add(1, Ordering::Relaxed),
            rules: compiled,
            anchors,
            key_rules,
            key_anchor_words,
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
        let mut result = ScanResult::default();
        self.scan_into(input, content_type_hint, &mut result);
        result
    }

    /// Like [`Scanner::scan`], but fills `result` (cleared first), so a caller scanning many
    /// bodies can reuse its allocations.
    pub fn scan_into(
        &self,
        input: &[u8],
        content_type_hint: ContentTypeHint,
        result: &mut ScanResult,
    ) {
        result.findings.clear();
        result.class_counts.clear();
        let syntax = content_type_hint.resolve(input);
        let spells_folded = self.scan_syntax(input, syntax, result);
        // A form's values are percent-encoded and `+` is a space: `4111+1111+1111+1111` is a
        // card, `GB82+WEST+…` an IBAN. So the pairs holding either are scanned decoded too, and
        // what that finds is reported (and so redacted) over the encoded bytes that hold it. Not
        // decoded only: a key's value as sent (`password=Xk9%26mQ2+vL7`) is what the key rules
        // judge, and decoding would cut it at its `&` or space.
        // A body sent with no form type may still be read as one (Rack reads a body with no
        // `Content-Type` as a form; many servers read one whatever its type says): text holding
        // `=` pairs is scanned decoded too, and so is a body with no type that was sniffed as
        // JSON (`[x]=1&card=%34…` starts with `[`), its decoded copy read as text since it
        // need not be JSON at all.
        let decode_as = match syntax {
            Syntax::Form => Some(Syntax::Form),
            Syntax::Text => memchr::memchr(b'=', input).map(|_| Syntax::Text),
            Syntax::Json if content_type_hint == ContentTypeHint::Unknown => {
                memchr::memchr(b'=', input).map(|_| Syntax::Text)
            }
            Syntax::Json => None,
        };
        // JSON may spell any character as `\uXXXX` and `/` as `\/` (PHP's `json_encode` writes
        // `https:\/\/hooks.slack.com\/…` and `01\/02\/1980`; Python's `json.dumps` writes
        // `\uff14` for `４`): a body holding either is scanned with them undone too.
        let unescape = syntax == Syntax::Json && holds_undone_json_escape(input);
        if decode_as.is_some() || unescape {
            // The copies' buffers are this thread's, kept from one scan to the next.
            let (mut copy, mut origin) = DECODE_BUFFERS.take();
            if unescape && json_unescape_into(input, &mut copy, &mut origin) {
                self.scan_copy_and_fold(&copy, &origin, Syntax::Json, result);
            }
            if let Some(copy_syntax) = decode_as {
                copy.clear();
                origin.clear();
                if form_decode_into(input, &mut copy, &mut origin) {
                    self.scan_copy_and_fold(&copy, &origin, copy_syntax, result);
                    // A form value may be a JSON document (Slack-style `payload=%7B%22…`),
                    // whose keys are `"key":`, which a form's scan does not read.
                    if syntax == Syntax::Form && memchr::memmem::find(&copy, b"\":").is_some() {
                        self.scan_copy_and_fold(&copy, &origin, Syntax::Json, result);
                    }
                }
            }
            if copy.capacity() <= DECODE_BUFFERS_KEEP {
                copy.clear();
                origin.clear();
                DECODE_BUFFERS.set((copy, origin));
            }
        }
        // The same for a JSON document sent in a form value as it stands
        // (`payload={"password":"…"}`, which servers read whatever its encoding). Rare, so the
        // input is mapped onto itself through an origin built for it.
        if syntax == Syntax::Form && memchr::memmem::find(input, b"\":").is_some() {
            let origin: Vec<usize> = (0..=input.len()).collect();
            self.scan_copy_and_fold(input, &origin, Syntax::Json, result);
        }
        // Full-width forms and HTML numeric references spelling a digit or `@`: scanned
        // folded to ASCII too (`fold.rs`); the block pass tells whether there are any.
        if spells_folded {
            let (folded, origin) = fold::fold_spelled(input);
            self.scan_copy(&folded, &origin, syntax, result);
        }
    }

    /// [`Scanner::scan_copy`], and then, if the copy spells a digit or `@` as a full-width form
    /// or a numeric reference (`%EF%BC%94…` in a form pair, `\uff14` in JSON), the copy
    /// folded too (`fold.rs`), mapped back through both copies.
    fn scan_copy_and_fold(
        &self,
        copy: &[u8],
        origin: &[usize],
        syntax: Syntax,
        result: &mut ScanResult,
    ) {
        if self.scan_copy(copy, origin, syntax, result) {
            let (folded, folded_origin) = fold::fold_spelled(copy);
            let origin: Vec<usize> = folded_origin.iter().map(|&at| origin[at]).collect();
            self.scan_copy(&folded, &origin, syntax, result);
        }
    }

    /// Scans `copy`, a decoded or folded copy of the input whose byte `i` is spelled from
    /// `origin[i]` on in the input (`origin[copy.len()]` the end), and adds to `result` what it
    /// finds that `result` does not hold yet, over the input's bytes. Returns whether `copy`
    /// spells a digit or `@` that the fold reads.
    fn scan_copy(
        &self,
        copy: &[u8],
        origin: &[usize],
        syntax: Syntax,
        result: &mut ScanResult,
    ) -> bool {
        let mut more = ScanResult::default();
        let spells_folded = self.scan_syntax(copy, syntax, &mut more);
        // Few findings (nearly every body): each checked against those `result` holds, which
        // come to hold those added here too. Many (tens of thousands of `dob=…&` pairs, found
        // as sent or only in the copy): per class, what `result` held and what is added here,
        // each in order of start (the findings of a scan are, and `origin` keeps their order),
        // so that an overlap is a lookup ([`SpanIndex`]), not a pass.
        let indexed = (result.findings.len() + more.findings.len())
            .saturating_mul(more.findings.len())
            > PAIRS_BY_PASS;
        let mut held: BTreeMap<Arc<str>, SpanIndex> = BTreeMap::new();
        if indexed {
            for seen in &result.findings {
                held.entry(seen.class.clone())
                    .or_default()
                    .push(seen.start, seen.end);
            }
        }
        let mut added: BTreeMap<Arc<str>, SpanIndex> = BTreeMap::new();
        for mut finding in more.findings {
            finding.start = origin[finding.start];
            finding.end = origin[finding.end];
            let overlaps = |spans: &BTreeMap<Arc<str>, SpanIndex>| {
                spans
                    .get(&finding.class)
                    .is_some_and(|index| index.overlaps(finding.start, finding.end))
            };
            let known = match indexed {
                true => overlaps(&held) || overlaps(&added),
                false => result.findings.iter().any(|seen| {
                    seen.class == finding.class
                        && seen.start < finding.end
                        && finding.start < seen.end
                }),
            };
            if !known {
                if indexed {
                    added
                        .entry(finding.class.clone())
                        .or_default()
                        .push(finding.start, finding.end);
                }
                *result
                    .class_counts
                    .entry(finding.class.clone())
                    .or_insert(0) += 1;
                result.findings.push(finding);
            }
        }
        result
            .findings
            .sort_by_key(|finding| (finding.start, finding.end));
        spells_folded
    }

    /// Scans `input` as `syntax` into `result`. Returns whether `input` spells a digit or `@`
    /// as a full-width form or a numeric reference (`fold.rs`), which the block pass sees on
    /// its way.
    fn scan_syntax(&self, input: &[u8], syntax: Syntax, result: &mut ScanResult) -> bool {
        with_scratch(self.id, |scratch| {
            let ScanScratch { verdicts, raw } = scratch;
            if let Some(anchors) = &self.anchors {
                self.keyword_hits(anchors, input, raw);
            }
            let terminators = if self.key_anchor_words.is_empty() {
                Terminators::None
            } else if syntax == Syntax::Form {
                Terminators::Equals
            } else {
                Terminators::ColonAndEquals
            };
            let spells_folded = if self.digit_detectors.any() || terminators != Terminators::None {
                let mut keys = KeyScan {
                    scanner: self,
                    input,
                    syntax,
                    verdicts,
                    value_end: 0,
                };
                blocks::scan_blocks(input, self.digit_detectors, terminators, &mut keys, raw)
            } else {
                fold::spells_digit_or_at(input)
            };
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
            self.resolve(raw, result);
            spells_folded
        })
    }

    /// Every keyword hit runs its rules' regexes around it (once per stretch a rule already
    /// matched).
    ///
    /// A rule with no native matcher searches a window after each hit (up to its longest match,
    /// 16 KiB if unbounded), so dense hits with no match near them would cost hits × window.
    /// Past [`WINDOW_BUDGET`] times the input searched so, the rule's windowed findings are
    /// dropped and its regex runs once over the whole input instead, keeping the matches that
    /// contain one of its keywords: linear, whatever the rule, in time and memory. (Matches do
    /// not overlap in that pass: one without a keyword can hide one with, which a window would
    /// have found; only unusual custom rules can match so.)
    fn keyword_hits(&self, anchors: &AnchorSet, input: &[u8], raw: &mut Vec<RawFinding>) {
        /// Per rule: the end of its last finding in this group of hits, and how far its
        /// windows have searched (`usize::MAX`: past the budget).
        #[derive(Clone, Copy, Default)]
        struct Progress {
            covered_until: usize,
            searched: usize,
        }
        let mut on_stack = [Progress::default(); STACK_RULES];
        let mut on_heap = Vec::new();
        let progress: &mut [Progress] = if self.rules.len() <= STACK_RULES {
            &mut on_stack
        } else {
            on_heap.resize(self.rules.len(), Progress::default());
            &mut on_heap
        };
        let budget = input.len().saturating_mul(WINDOW_BUDGET).max(1 << 16);
        // Rules past their budget, for the one pass below, and where this pass's findings begin.
        let mut whole_pass: Vec<u16> = Vec::new();
        let first = raw.len();
        // What the native matchers learn of this input at one hit, for the hits after it.
        let mut memo = shapes::ShapeMemo::default();
        anchors.for_each_hit(input, |hit_start, hit_end, target, first_of_group| {
            if first_of_group {
                progress.iter_mut().for_each(|rule| rule.covered_until = 0);
            }
            for &rule in &target.keyword_rules {
                let progress = &mut progress[usize::from(rule)];
                if hit_start < progress.covered_until || progress.searched == usize::MAX {
                    continue;
                }
                let compiled = &self.rules[usize::from(rule)];
                if compiled.shape.is_none() {
                    progress.searched += compiled.max_match_len.min(input.len() - hit_start)
                        + compiled.max_match_len.min(MAX_LOOKBEHIND_BYTES);
                    if progress.searched > budget {
                        progress.searched = usize::MAX;
                        whole_pass.push(rule);
                        continue;
                    }
                }
                if let Some(found) = self.keyword_hit(rule, input, hit_start, hit_end, &mut memo) {
                    progress.covered_until = found.end;
                    raw.push(found);
                }
            }
        });
        if whole_pass.is_empty() {
            return;
        }
        let windowed = raw.split_off(first);
        raw.extend(
            windowed
                .into_iter()
                .filter(|found| !whole_pass.contains(&found.rule)),
        );
        for rule in whole_pass {
            let compiled = &self.rules[usize::from(rule)];
            let Some(regex) = &compiled.regex else {
                continue;
            };
            let holds_a_keyword = |span: &[u8]| {
                compiled
                    .keywords
                    .iter()
                    .any(|keyword| memchr::memmem::find(span, keyword).is_some())
            };
            let mut keep = |start: usize, end: usize| {
                if let Some(found) = self.accept(rule, input, after_escape(input, start), end) {
                    raw.push(found);
                }
            };
            if compiled.regex_has_group {
                for captures in regex.captures_iter(input) {
                    let Some(whole) = captures.get(0) else {
                        continue;
                    };
                    if holds_a_keyword(whole.as_bytes()) {
                        let found = captures.get(1).unwrap_or(whole);
                        keep(found.start(), found.end());
                    }
                }
            } else {
                for whole in regex.find_iter(input) {
                    if holds_a_keyword(whole.as_bytes()) {
                        keep(whole.start(), whole.end());
                    }
                }
            }
        }
    }

    /// Runs a keyword rule's regex around a keyword hit; the match must contain the hit.
    fn keyword_hit(
        &self,
        rule: u16,
        input: &[u8],
        hit_start: usize,
        hit_end: usize,
        memo: &mut shapes::ShapeMemo,
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
            let (whole_start, whole_end, found_start, found_end) =
                if let Some(shape) = compiled.shape {
                    shape.find_at(input, window_end, at, hit_start, memo)?
                } else if compiled.regex_has_group {
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
                return self.accept(rule, input, after_escape(input, found_start), found_end);
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

    /// The key rules whose `key_context` the key's words contain, run on the key's value.
    /// Returns where the value (not an array's elements) ends, `0` if none was read.
    #[cold]
    fn key_rules_on_value(
        &self,
        input: &[u8],
        at: usize,
        key: keys::KeySpan,
        syntax: Syntax,
        out: &mut Vec<RawFinding>,
    ) -> usize {
        let value = keys::value_after(input, at, key.form, syntax);
        // `{"password": ["…"]}`: each element of an array of scalars is the key's value.
        let array = match value {
            Some(_) => None,
            None => keys::array_after(input, at, key.form),
        };
        if value.is_none() && array.is_none() {
            return 0;
        }
        let key = &input[key.start..key.end];
        let mut segments = [(0usize, 0usize); MAX_KEY_SEGMENTS];
        let segment_count = keys::key_segment_ranges(key, &mut segments);
        let segments = &segments[..segment_count];
        // The anchor words the key holds: an entry whose anchor word is not among them is not
        // held, without comparing its words.
        let mut anchors = [usize::MAX; MAX_KEY_SEGMENTS];
        for (slot, &(start, end)) in anchors.iter_mut().zip(segments) {
            *slot = self
                .key_anchor_words
                .find(&key[start..end])
                .unwrap_or(usize::MAX);
        }
        let segments = KeySegments {
            key,
            segments,
            anchors: &anchors[..segments.len()],
        };
        if let Some(span) = value {
            self.key_rules_on_span(input, &segments, span, out);
        }
        let mut next = array;
        let mut elements = 0;
        while let Some(at) = next.filter(|_| elements < keys::MAX_ARRAY_ELEMENTS) {
            let Some((span, after)) = keys::next_array_element(input, at) else {
                break;
            };
            self.key_rules_on_span(input, &segments, span, out);
            next = Some(after);
            elements += 1;
        }
        value.map_or(0, |(_, end)| end)
    }

    /// The key rules whose `key_context` the key's words contain, run on one value.
    fn key_rules_on_span(
        &self,
        input: &[u8],
        key: &KeySegments<'_>,
        (value_start, value_end): (usize, usize),
        out: &mut Vec<RawFinding>,
    ) {
        let KeySegments {
            key,
            segments,
            anchors,
        } = *key;
        let value = &input[value_start..value_end];
        for &rule in &self.key_rules {
            let compiled = &self.rules[usize::from(rule)];
            if !compiled.key_context.iter().any(|(words, anchor)| {
                anchors.contains(anchor) && keys::key_contains_words(key, segments, words)
            }) {
                continue;
            }
            if !compiled.keywords.is_empty()
                && !compiled
                    .keywords
                    .iter()
                    .any(|keyword| memchr::memmem::find(key, keyword).is_some())
            {
                continue;
            }
            let Some(regex) = &compiled.regex else {
                continue;
            };
            let (found_start, found_end) = if let Some(shape) = compiled.shape {
                let Some(found) = shape.match_whole(value) else {
                    continue;
                };
                found
            } else if compiled.regex_has_group {
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
    /// `secret.generic`); writes what is left into `result`.
    fn resolve(&self, raw: &mut Vec<RawFinding>, result: &mut ScanResult) {
        raw.sort_unstable_by_key(|finding| (finding.start, finding.end, finding.rule));
        raw.dedup_by(|later, earlier| {
            later.start == earlier.start
                && later.end == earlier.end
                && self.rules[usize::from(later.rule)].class
                    == self.rules[usize::from(earlier.rule)].class
        });
        let is_key_rule = |finding: &RawFinding| {
            self.rules[usize::from(finding.rule)].kind == RuleKind::KeyContext
        };
        // Whether another finding overlaps a key finding: a pass over them when they are few
        // (nearly every body), else a lookup among them in order of start (a body of `dob=…&`
        // pairs holds tens of thousands of key findings).
        let indexed = raw.len().saturating_mul(raw.len()) > PAIRS_BY_PASS;
        let mut others = SpanIndex::default();
        if indexed {
            for other in raw.iter().filter(|finding| !is_key_rule(finding)) {
                others.push(other.start, other.end);
            }
        }
        let overlaps_another = |finding: &RawFinding| match indexed {
            true => others.overlaps(finding.start, finding.end),
            false => raw.iter().any(|other| {
                !is_key_rule(other) && other.start < finding.end && finding.start < other.end
            }),
        };
        result.findings.reserve(raw.len());
        for finding in raw.iter() {
            if is_key_rule(finding) && overlaps_another(finding) {
                continue;
            }
            let compiled = &self.rules[usize::from(finding.rule)];
            match result.class_counts.get_mut(&compiled.class) {
                Some(count) => *count += 1,
                None => {
                    result.class_counts.insert(compiled.class.clone(), 1);
                }
            }
            result.findings.push(Finding {
                class: compiled.class.clone(),
                rule_id: compiled.id.clone(),
                start: finding.start,
                end: finding.end,
            });
        }
    }
}

/// Up to how many pairs of findings are compared one by one for overlaps; past it, the spans
/// are indexed ([`SpanIndex`]) instead.
const PAIRS_BY_PASS: usize = 4096;

/// Spans pushed in order of start, each kept with the furthest end of those up to it, so
/// whether any overlaps `start..end` is one binary search.
#[derive(Default)]
struct SpanIndex {
    /// (start, the furthest end of the spans up to this one).
    spans: Vec<(usize, usize)>,
}

impl SpanIndex {
    fn push(&mut self, start: usize, end: usize) {
        debug_assert!(self.spans.last().is_none_or(|&(last, _)| last <= start));
        let furthest = self.spans.last().map_or(0, |&(_, end)| end).max(end);
        self.spans.push((start, furthest));
    }

    /// Whether a span pushed has `span.start < end && start < span.end`.
    fn overlaps(&self, start: usize, end: usize) -> bool {
        let before_end = self.spans.partition_point(|&(from, _)| from < end);
        before_end > 0 && self.spans[before_end - 1].1 > start
    }
}

/// A key, its words, and per word the anchor word it is (`usize::MAX`: none).
struct KeySegments<'a> {
    key: &'a [u8],
    segments: &'a [(usize, usize)],
    anchors: &'a [usize],
}

/// What a thread keeps from one scan to the next: the key verdict memo and the buffer of
/// candidate findings. Scanning stays `&self` and allocation-free in the common case.
struct ScanScratch {
    verdicts: KeyVerdicts,
    raw: Vec<RawFinding>,
}

/// Candidate findings kept for reuse between scans, at most.
const SCRATCH_RAW_KEEP: usize = 4096;

thread_local! {
    static SCRATCH: std::cell::RefCell<ScanScratch> = const {
        std::cell::RefCell::new(ScanScratch {
            verdicts: KeyVerdicts::EMPTY,
            raw: Vec::new(),
        })
    };
}

/// Runs `scan` with this thread's scratch, its key verdict memo made valid for `scanner_id`
/// and its buffer empty.
fn with_scratch<R>(scanner_id: u64, scan: impl FnOnce(&mut ScanScratch) -> R) -> R {
    let run = |scratch: &mut ScanScratch| {
        scratch.verdicts.use_for(scanner_id);
        scratch.raw.clear();
        let result = scan(scratch);
        if scratch.raw.capacity() > SCRATCH_RAW_KEEP {
            scratch.raw = Vec::new();
        }
        result
    };
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => run(&mut scratch),
        // Only if a scan ran inside a scan on this thread: use scratch of its own.
        Err(_) => run(&mut Box::new(ScanScratch {
            verdicts: KeyVerdicts::EMPTY,
            raw: Vec::new(),
        })),
    })
}

/// The key side of one scan: keys handed over by the block pass, checked for anchor words,
/// and the selected key rules run on their values.
struct KeyScan<'a> {
    scanner: &'a Scanner,
    input: &'a [u8],
    syntax: Syntax,
    verdicts: &'a mut KeyVerdicts,
    /// Where the last bare value read after a `=` or `:` ends: a separator inside it is part
    /// of that value, not another key's (`pwd=pwd=pwd=…` would read up to 16 KiB of value at
    /// every `=`).
    value_end: usize,
}

impl KeyVisitor for KeyScan<'_> {
    #[inline(always)]
    fn quoted_key(&mut self, close: usize, out: &mut Vec<RawFinding>) {
        let words = &self.scanner.key_anchor_words;
        match self.verdicts.quoted_key(self.input, close, words) {
            QuotedKey::Key {
                span,
                holds_anchor_word,
            } => {
                if holds_anchor_word {
                    let _ = self.scanner.key_rules_on_value(
                        self.input,
                        close + 1,
                        span,
                        self.syntax,
                        out,
                    );
                }
            }
            QuotedKey::NotAKey => {}
            QuotedKey::Unresolved => self.terminator(close + 1, out),
        }
    }

    #[inline]
    fn terminator(&mut self, at: usize, out: &mut Vec<RawFinding>) {
        if at < self.value_end {
            return;
        }
        let words = &self.scanner.key_anchor_words;
        let Some(key) = keys::key_before(self.input, at, self.syntax, words.min_letters) else {
            return;
        };
        if self
            .verdicts
            .holds_anchor_word(self.input, key.start, key.end, words)
        {
            let end = self
                .scanner
                .key_rules_on_value(self.input, at, key, self.syntax, out);
            self.value_end = self.value_end.max(end);
        }
    }
}

/// Where a value found at `start` begins: past the escape it starts in, when the byte before
/// it ends a backslash escape (`\njohn@…` inside a JSON string: the `n` belongs to the
/// escape, not the value; `\u0041…`: the five bytes after the backslash).
fn after_escape(input: &[u8], start: usize) -> usize {
    if start > 0
        && start < input.len()
        && input[start - 1] == b'\\'
        && preceding_backslashes(input, start) % 2 == 1
    {
        let unicode_escape = input[start] == b'u'
            && input
                .get(start + 1..start + 5)
                .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit));
        return start + if unicode_escape { 5 } else { 1 };
    }
    start
}

fn preceding_backslashes(input: &[u8], at: usize) -> usize {
    input[..at]
        .iter()
        .rev()
        .take_while(|&&byte| byte == b'\\')
        .count()
}

/// A byte a keyword's token may hold: ASCII word bytes, `.%+-`, and any byte of a character
/// outside ASCII (an e-mail address's local part may be `jörg` or `用户`).
fn is_token_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'%' | b'+' | b'-') || byte >= 0x80
}

/// Form bodies up to this size have their decoded copy's buffers kept for the next scan on the
/// thread.
const DECODE_BUFFERS_KEEP: usize = 64 * 1024;

thread_local! {
    static DECODE_BUFFERS: std::cell::Cell<(Vec<u8>, Vec<usize>)> =
        const { std::cell::Cell::new((Vec::new(), Vec::new())) };
}

#[cfg(test)]
fn form_decode(input: &[u8]) -> Option<(Vec<u8>, Vec<usize>)> {
    let (mut decoded, mut origin) = (Vec::new(), Vec::new());
    form_decode_into(input, &mut decoded, &mut origin).then_some((decoded, origin))
}

/// The pairs of `input`, a form body, that hold a `+` or a `%`, decoded (`+` and each `%XX`),
/// joined by `&`; and for each decoded byte the offset in `input` where its encoding starts,
/// then the end of the last pair taken: a range `a..b` of the decoded bytes is
/// `origin[a]..origin[b]` of `input`. A `&` joining two pairs stands at the end of the pair
/// before it, so a finding that ends there ends with that pair. Pairs without either are left
/// out: the scan as sent saw them as they are, and nothing a rule finds spans pairs (a key's
/// value ends at its `&`). A decoded `&` or `=` (`%26`, `%3D`) inside a value is read as the
/// text it is, as `key=value` inside a JSON string is: a value may hold one. `None`: no pair
/// holds either. Written into `decoded` and `origin` (empty), `false` for `None`.
fn form_decode_into(input: &[u8], decoded: &mut Vec<u8>, origin: &mut Vec<usize>) -> bool {
    if memchr::memchr2(b'%', b'+', input).is_none() {
        return false;
    }
    decoded.reserve(input.len());
    origin.reserve(input.len() + 1);
    let mut taken_end = None;
    let mut start = 0;
    for pair in input.split(|&byte| byte == b'&') {
        let end = start + pair.len();
        if memchr::memchr2(b'%', b'+', pair).is_some() {
            if let Some(previous_end) = taken_end {
                origin.push(previous_end);
                decoded.push(b'&');
            }
            decode_into(input, start, end, decoded, origin);
            taken_end = Some(end);
        }
        start = end + 1;
    }
    match taken_end {
        Some(end) => {
            origin.push(end);
            true
        }
        None => false,
    }
}

/// `input[start..end]` with `+` and each `%XX` decoded, onto `decoded`, and where each decoded
/// byte's encoding starts onto `origin`.
fn decode_into(
    input: &[u8],
    start: usize,
    end: usize,
    decoded: &mut Vec<u8>,
    origin: &mut Vec<usize>,
) {
    let mut at = start;
    while at < end {
        // The bytes up to the next `%` or `+` stand as they are.
        let next = memchr::memchr2(b'%', b'+', &input[at..end]).map_or(end, |offset| at + offset);
        decoded.extend_from_slice(&input[at..next]);
        origin.extend(at..next);
        if next == end {
            break;
        }
        at = next;
        origin.push(at);
        let byte = input[at];
        let escaped = match (byte, input.get(at + 1..at + 3)) {
            (b'%', Some(&[high, low])) if at + 3 <= end => {
                match (hex_value(high), hex_value(low)) {
                    (Some(high), Some(low)) => Some(high << 4 | low),
                    _ => None,
                }
            }
            _ => None,
        };
        match escaped {
            Some(value) => {
                decoded.push(value);
                at += 3;
            }
            None => {
                decoded.push(if byte == b'+' { b' ' } else { byte });
                at += 1;
            }
        }
    }
}

/// Whether `input` holds a `\/` or a `\u`: JSON that [`json_unescape_into`] may change. One
/// `memchr` for `\`, which JSON without escapes does not hold at all.
fn holds_undone_json_escape(input: &[u8]) -> bool {
    memchr::memchr_iter(b'\\', input).any(|at| matches!(input.get(at + 1), Some(b'/' | b'u')))
}

/// The copy of `input`, JSON, with `\/` read as `/` and each `\uXXXX` decoded to UTF-8, and
/// for each byte of the copy the offset in `input` where its spelling starts, then
/// `input.len()`: a range `a..b` of the copy is `origin[a]..origin[b]` of `input`, the whole
/// escaped spelling. Kept as sent: the other escapes (`\\u0041` is an escaped backslash and
/// then `u0041`), and a `\u` of a surrogate (half of a character beyond U+FFFF; the halves are
/// not joined), of `"` or `\`, or of a control character below U+0020, so that the copy's
/// strings start and end where the input's do and a key is read in the copy where it stands
/// in the input. Written into `copy` and `origin` (empty); `false` when nothing was undone.
fn json_unescape_into(input: &[u8], copy: &mut Vec<u8>, origin: &mut Vec<usize>) -> bool {
    copy.reserve(input.len());
    origin.reserve(input.len() + 1);
    let mut undone = false;
    let mut at = 0;
    while at < input.len() {
        // The bytes up to the next `\` stand as they are.
        let next = memchr::memchr(b'\\', &input[at..]).map_or(input.len(), |offset| at + offset);
        copy.extend_from_slice(&input[at..next]);
        origin.extend(at..next);
        if next == input.len() {
            break;
        }
        at = next;
        let escape_end = match input.get(at + 1) {
            Some(b'/') => {
                copy.push(b'/');
                origin.push(at);
                undone = true;
                at += 2;
                continue;
            }
            Some(b'u') => match json_unicode_escape(input, at) {
                Some(character) => {
                    let mut utf8 = [0u8; 4];
                    let encoded = character.encode_utf8(&mut utf8).as_bytes();
                    copy.extend_from_slice(encoded);
                    origin.extend(std::iter::repeat_n(at, encoded.len()));
                    undone = true;
                    at += 6;
                    continue;
                }
                None => at + 2,
            },
            _ => (at + 2).min(input.len()),
        };
        // An escape kept: its two bytes together, so that the second is not read as the start
        // of another (`\\` then `u0041`).
        copy.extend_from_slice(&input[at..escape_end]);
        origin.extend(at..escape_end);
        at = escape_end;
    }
    origin.push(input.len());
    undone
}

/// The character of the `\uXXXX` at `at`, unless it is one kept as sent (see
/// [`json_unescape_into`]).
fn json_unicode_escape(input: &[u8], at: usize) -> Option<char> {
    let hex = input.get(at + 2..at + 6)?;
    let value = hex.iter().try_fold(0u32, |value, &digit| {
        hex_value(digit).map(|digit| value << 4 | u32::from(digit))
    })?;
    if value < 0x20 || value == u32::from(b'"') || value == u32::from(b'\\') {
        return None;
    }
    // `char::from_u32` refuses the surrogates U+D800–U+DFFF.
    char::from_u32(value)
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::{form_decode, json_unescape_into};

    #[test]
    fn a_form_is_decoded_pair_by_pair() {
        assert_eq!(form_decode(b"amount=100&currency=usd"), None);
        let input = b"a=1&b=x+y&c=2&d=%41%4&e=3";
        let (decoded, origin) = form_decode(input).unwrap();
        // Only `b` and `d`; a `%` without two hex digits after it in its pair stays as it is.
        assert_eq!(decoded, b"b=x y&d=A%4");
        // Each decoded byte where its encoding starts; the joining `&` at the end of `b`'s
        // pair; the end of `d`'s pair last.
        assert_eq!(origin, [4, 5, 6, 7, 8, 9, 14, 15, 16, 19, 20, 21]);
        assert_eq!(&input[origin[0]..origin[5]], b"b=x+y");
        assert_eq!(&input[origin[6]..origin[11]], b"d=%41%4");
    }

    #[test]
    fn json_escapes_of_slashes_and_characters_are_undone_where_they_stand() {
        let unescape = |input: &[u8]| {
            let (mut copy, mut origin) = (Vec::new(), Vec::new());
            json_unescape_into(input, &mut copy, &mut origin).then_some((copy, origin))
        };
        assert_eq!(unescape(br#"{"a":"x\n\"y\\u0041"}"#), None);
        let input = br#"{"u":"a\/b\u0040\u00e9\\u0041\u0022\u000a\ud83d\uDE00\u12"}"#;
        let (copy, origin) = unescape(input).unwrap();
        // `\/`, `\u0040` and `\u00e9` undone; an escaped backslash, `"`, a control character,
        // the surrogates and a short escape kept as sent.
        assert_eq!(
            copy,
            "{\"u\":\"a/b@\u{e9}\\\\u0041\\u0022\\u000a\\ud83d\\uDE00\\u12\"}".as_bytes()
        );
        assert_eq!(origin.len(), copy.len() + 1);
        assert_eq!(&input[origin[7]..origin[9]], br"\/b");
        assert_eq!(&input[origin[9]..origin[12]], br"\u0040\u00e9");
        assert_eq!(origin[copy.len()], input.len());
        // A `\` that ends the input is kept.
        let (copy, _) = unescape(br"\/\").unwrap();
        assert_eq!(copy, br"/\");
    }
}
