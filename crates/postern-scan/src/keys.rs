//! Keys and their values: where a key stands, whether its words select a key rule, and the span
//! of its value.
//!
//! A key is found from its *terminator* — the `:` or `=` that follows every key the scanner
//! knows (`"apiKey":`, `\"token\":` in a JSON document embedded in a string, `password=` in a
//! form or a log line, `key: value` in text) — which the block pass hands over as it goes. From
//! the terminator the key is read backwards, its words (split at non-alphanumerics and camelCase
//! boundaries) are looked up in a table of *anchor words* — per `key_context` entry its most
//! specific word — and only a key holding an anchor word has its value located and given to the
//! key rules. Nothing is searched in the text at large, and nothing here allocates.

use crate::Syntax;

/// Longest key considered, in bytes.
pub(crate) const KEY_MAX_BYTES: usize = 128;
/// Longest value handed to a key rule, in bytes.
pub(crate) const KEY_VALUE_MAX_BYTES: usize = 16 * 1024;
/// Elements of an array under a key handed to the key rules, at most.
pub(crate) const MAX_ARRAY_ELEMENTS: usize = 64;
/// Words per key considered (the rest of a longer key is ignored).
pub(crate) const MAX_KEY_SEGMENTS: usize = 16;

/// How a key is written, which decides how its value is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyForm {
    /// `"key":` (JSON), or `\"key\":` (`escaped`, JSON inside a JSON string).
    Quoted { escaped: bool },
    /// `key=` or `key:` (forms, text, log lines).
    Bare,
}

/// A key: its byte range (without quotes) and form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeySpan {
    pub start: usize,
    pub end: usize,
    pub form: KeyForm,
}

#[inline]
fn is_key_word_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-' | b'[' | b']')
}

#[inline]
fn is_key_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-' | b'.' | b'[' | b']')
}

#[inline]
fn is_json_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\r' | b'\n')
}

/// The key ended by the terminator (`:` or `=`) at `at`, if the bytes before it form one. A
/// bare key with fewer than `min_letters` ASCII letters is not returned (`T10:30`).
#[inline]
pub(crate) fn key_before(
    input: &[u8],
    at: usize,
    syntax: Syntax,
    min_letters: usize,
) -> Option<KeySpan> {
    if input[at] == b':' {
        if syntax == Syntax::Form {
            return None;
        }
        // No cap on the blanks between a key's closing quote and its `:`: a cap lets a body
        // hide a key behind more of them. The walk back stops at the first byte that is not a
        // blank, and a `:` is one, so each run of blanks is walked by at most one terminator.
        let mut close = at;
        while close > 0 && is_json_space(input[close - 1]) {
            close -= 1;
        }
        if close > 0 && input[close - 1] == b'"' {
            return quoted_key(input, close - 1);
        }
        if input.get(at + 1) == Some(&b'/') {
            return None;
        }
    }
    bare_key(input, at, syntax, min_letters)
}

/// `"key"` or `\"key\"` whose closing quote is at `close_quote`, read backwards. The key holds
/// no `"`, `\` or newline.
#[inline]
fn quoted_key(input: &[u8], close_quote: usize) -> Option<KeySpan> {
    let escaped = close_quote > 0 && input[close_quote - 1] == b'\\';
    let end = close_quote - usize::from(escaped);
    let mut start = end;
    while start > 0
        && end - start < KEY_MAX_BYTES
        && !matches!(input[start - 1], b'"' | b'\n' | b'\\')
    {
        start -= 1;
    }
    if start == end || start == 0 || input[start - 1] != b'"' {
        return None;
    }
    let open_escaped = start >= 2 && input[start - 2] == b'\\';
    (open_escaped == escaped).then_some(KeySpan {
        start,
        end,
        form: KeyForm::Quoted { escaped },
    })
}

/// `key=` / `key:` (`key =` and `key :` outside forms) with the separator at `at`, holding at
/// least `min_letters` ASCII letters.
#[inline]
fn bare_key(input: &[u8], at: usize, syntax: Syntax, min_letters: usize) -> Option<KeySpan> {
    let mut end = at;
    if syntax != Syntax::Form && end > 0 && input[end - 1] == b' ' {
        end -= 1;
    }
    if end == 0 || !is_key_word_byte(input[end - 1]) {
        return None;
    }
    let mut start = end;
    let mut letters = 0;
    while start > 0 && end - start < KEY_MAX_BYTES && is_key_byte(input[start - 1]) {
        start -= 1;
        letters += usize::from(input[start].is_ascii_alphabetic());
    }
    (letters >= min_letters).then_some(KeySpan {
        start,
        end,
        form: KeyForm::Bare,
    })
}

/// The span of the value after the terminator at `at` of a key of form `form`.
pub(crate) fn value_after(
    input: &[u8],
    at: usize,
    form: KeyForm,
    syntax: Syntax,
) -> Option<(usize, usize)> {
    let value = match form {
        KeyForm::Quoted { escaped } => quoted_key_value(input, at, escaped)?,
        KeyForm::Bare => bare_key_value(input, at, syntax)?,
    };
    (value.0 < value.1).then_some(value)
}

/// After `"key":` — a JSON string, or a bare JSON value; after `\"key\":` — `\"…\"`.
fn quoted_key_value(input: &[u8], colon: usize, escaped: bool) -> Option<(usize, usize)> {
    let n = input.len();
    let mut at = colon + 1;
    while at < n && is_json_space(input[at]) {
        at += 1;
    }
    if escaped {
        if input.get(at..at + 2) != Some(b"\\\"") {
            return None;
        }
        let start = at + 2;
        let limit = n.min(start + KEY_VALUE_MAX_BYTES);
        let end = start + memchr::memmem::find(&input[start..limit], b"\\\"")?;
        Some((start, end))
    } else if input.get(at) == Some(&b'"') {
        let start = at + 1;
        Some((start, json_string_end(input, start)?))
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
        Some((start, end))
    }
}

/// After `"key":` (JSON, not escaped), an array: the index just after its `[`.
pub(crate) fn array_after(input: &[u8], colon: usize, form: KeyForm) -> Option<usize> {
    if form != (KeyForm::Quoted { escaped: false }) {
        return None;
    }
    let open = colon + 1 + skip_json_space(input, colon + 1);
    (input.get(open) == Some(&b'[')).then_some(open + 1)
}

fn skip_json_space(input: &[u8], from: usize) -> usize {
    input.get(from..).map_or(0, |rest| {
        rest.iter().take_while(|&&byte| is_json_space(byte)).count()
    })
}

/// The element of a JSON array that starts at `at` (after its `[` or a `,`, blanks allowed):
/// a string's content or a bare scalar, and where the next element starts. `None` at the end
/// of the array, at a nested array or object (whose keys, if any, are keys of their own), at
/// an empty string, or where the input is not JSON.
pub(crate) fn next_array_element(input: &[u8], at: usize) -> Option<((usize, usize), usize)> {
    let start = at + skip_json_space(input, at);
    let (span, after) = match *input.get(start)? {
        b']' | b'[' | b'{' | b',' => return None,
        b'"' => {
            let end = json_string_end(input, start + 1)?;
            ((start + 1, end), end + 1)
        }
        _ => {
            let limit = input.len().min(start + KEY_VALUE_MAX_BYTES);
            let end = start
                + input[start..limit]
                    .iter()
                    .take_while(|&&byte| {
                        !matches!(byte, b',' | b']' | b'}') && !is_json_space(byte)
                    })
                    .count();
            ((start, end), end)
        }
    };
    let comma = after + skip_json_space(input, after);
    if span.0 == span.1 || !matches!(input.get(comma), Some(b',' | b']')) {
        return None;
    }
    Some((span, comma + 1))
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

/// After `key=` (form, text, logs inside JSON strings) or `key:` (text): a quoted value
/// outside forms, otherwise up to the next delimiter.
fn bare_key_value(input: &[u8], separator: usize, syntax: Syntax) -> Option<(usize, usize)> {
    let n = input.len();
    let mut at = separator + 1;
    if syntax != Syntax::Form {
        while at < n && input[at] == b' ' {
            at += 1;
        }
    }
    let quote = input
        .get(at)
        .copied()
        .filter(|byte| matches!(byte, b'"' | b'\''));
    if let Some(quote) = quote.filter(|_| syntax != Syntax::Form) {
        let start = at + 1;
        let limit = n.min(start + KEY_VALUE_MAX_BYTES);
        return Some((start, start + memchr::memchr(quote, &input[start..limit])?));
    }
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
    Some((start, end))
}

/// Word boundaries of a key without allocating: separators, lower→Upper, digit→Upper,
/// `APIKey` → `API|Key`. Returns the number of words written to `ranges`.
#[inline]
pub(crate) fn key_segment_ranges(
    key: &[u8],
    ranges: &mut [(usize, usize); MAX_KEY_SEGMENTS],
) -> usize {
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

/// The words of a key, lowercased: `apiKey` → `api key`, `X-API-KEY` → `x api key`,
/// `SSN__c` → `ssn c`, `date_of_birth` → `date of birth`.
pub(crate) fn key_segments(key: &[u8]) -> Vec<String> {
    let mut ranges = [(0usize, 0usize); MAX_KEY_SEGMENTS];
    let count = key_segment_ranges(key, &mut ranges);
    ranges[..count]
        .iter()
        .map(|&(start, end)| String::from_utf8_lossy(&key[start..end]).to_ascii_lowercase())
        .collect()
}

/// Whether the key's words contain `words` as a contiguous run (case-insensitive).
pub(crate) fn key_contains_words(
    key: &[u8],
    segments: &[(usize, usize)],
    words: &[String],
) -> bool {
    !words.is_empty()
        && segments.windows(words.len()).any(|window| {
            window
                .iter()
                .zip(words)
                .all(|(&(start, end), word)| key[start..end].eq_ignore_ascii_case(word.as_bytes()))
        })
}

/// Words too common in keys to stand for a `key_context` entry (`api_key` stands on `api`).
const WEAK_KEY_WORDS: &[&str] = &[
    "key", "id", "number", "date", "of", "client", "user", "name", "code", "value", "data",
];

/// The word that stands for a `key_context` entry: its longest word that is not a weak one
/// (the longest word if all are weak). A key whose words contain the entry contains this word.
pub(crate) fn anchor_word(entry: &[String]) -> Option<&str> {
    entry
        .iter()
        .filter(|word| !WEAK_KEY_WORDS.contains(&word.as_str()))
        .max_by_key(|word| word.len())
        .or_else(|| entry.iter().max_by_key(|word| word.len()))
        .map(String::as_str)
}

/// A set of lowercase words, looked up by a key's words case-insensitively without hashing:
/// per word length, a 64-bit filter on the first letter, then a comparison with the few words
/// of that length.
#[derive(Debug, Default)]
pub(crate) struct AnchorWords {
    /// Per length, bit `first byte & 63` of each word of that length.
    first_letters: Vec<u64>,
    /// Per length, the words of that length and their ids.
    by_length: Vec<Vec<(Box<[u8]>, usize)>>,
    count: usize,
    /// The fewest ASCII letters in a word: a key with fewer letters holds none of the words.
    pub(crate) min_letters: usize,
}

impl AnchorWords {
    /// Adds `word` (lowercased) and returns its id; the same word always gets the same id.
    pub(crate) fn insert(&mut self, word: &str) -> usize {
        let word = word.to_ascii_lowercase().into_bytes();
        let len = word.len();
        if let Some(id) = self.find(&word) {
            return id;
        }
        if self.by_length.len() <= len {
            self.by_length.resize_with(len + 1, Vec::new);
            self.first_letters.resize(len + 1, 0);
        }
        let letters = word
            .iter()
            .filter(|byte| byte.is_ascii_alphabetic())
            .count();
        self.min_letters = if self.count == 0 {
            letters
        } else {
            self.min_letters.min(letters)
        };
        let id = self.count;
        self.count += 1;
        self.first_letters[len] |= 1u64 << (word.first().copied().unwrap_or(0) & 63);
        self.by_length[len].push((word.into_boxed_slice(), id));
        id
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The id of `segment` (any case), if it is one of the words.
    #[inline]
    pub(crate) fn find(&self, segment: &[u8]) -> Option<usize> {
        let len = segment.len();
        let first = segment.first()?.to_ascii_lowercase();
        if self.first_letters.get(len)? & (1u64 << (first & 63)) == 0 {
            return None;
        }
        self.by_length[len]
            .iter()
            .find(|(word, _)| segment.eq_ignore_ascii_case(word))
            .map(|&(_, id)| id)
    }

    /// Whether `segment` (any case) is one of the words.
    #[inline]
    pub(crate) fn contains(&self, segment: &[u8]) -> bool {
        self.find(segment).is_some()
    }
}

/// Longest key whose verdict is remembered and computed without a byte loop.
const WINDOW: usize = 32;

/// Whether a key holds an anchor word (and no `\` or newline, which no key the scanner reads
/// holds), remembered for keys up to 32 bytes. JSON repeats its keys, within a body and from
/// one body to the next, so a repeated key costs two 16-byte loads, a multiplication and a
/// comparison. A key seen for the first time is split into words with SIMD byte-class masks
/// and bit arithmetic (longer keys by a byte loop).
///
/// One memo per thread (kept with the scanner's other per-thread scratch), tagged with the id
/// of the scanner whose anchor words it reflects and emptied when another scanner uses it.
pub(crate) struct KeyVerdicts {
    scanner_id: u64,
    /// Per set, two ways: the 32 bytes holding a key, zeroed outside it, as four little-endian
    /// words (all zero: empty, which no key is).
    keys: [[[u64; 4]; 2]; VERDICT_SETS],
    /// Bit `2 * set + way`: the key there holds an anchor word.
    verdicts: [u64; VERDICT_SETS * 2 / 64],
    /// Bit `set`: the way to replace next in that set (the one used less recently).
    replace_next: [u64; VERDICT_SETS / 64],
}

/// Sets of the memo, two keys each: 512 keys, 16 KiB.
const VERDICT_SETS: usize = 256;

impl KeyVerdicts {
    pub(crate) const EMPTY: KeyVerdicts = KeyVerdicts {
        scanner_id: 0,
        keys: [[[0; 4]; 2]; VERDICT_SETS],
        verdicts: [0; VERDICT_SETS * 2 / 64],
        replace_next: [0; VERDICT_SETS / 64],
    };

    /// Makes the memo valid for the scanner `scanner_id`: emptied if it was another's.
    pub(crate) fn use_for(&mut self, scanner_id: u64) {
        if self.scanner_id != scanner_id {
            *self = KeyVerdicts::EMPTY;
            self.scanner_id = scanner_id;
        }
    }

    /// The verdict for the key held by `key` (32 bytes, zero outside the key), from `classify`
    /// the first time. The same key at another place in the 32 bytes is another entry, with
    /// the same verdict: NUL bytes separate words like any non-alphanumeric byte.
    #[inline(always)]
    fn verdict(&mut self, key: [u64; 4], classify: impl FnOnce() -> bool) -> bool {
        let folded =
            key[0] ^ key[1].rotate_left(17) ^ key[2].rotate_left(31) ^ key[3].rotate_left(47);
        let set = (folded.wrapping_mul(0x9e37_79b9_7f4a_7c15)
            >> (64 - VERDICT_SETS.trailing_zeros())) as usize;
        // Word by word, in registers: comparing the key as one 32-byte value makes the
        // compiler store it and load it back wider, which stalls.
        for way in 0..2 {
            let known = &self.keys[set][way];
            if known[0] == key[0] && known[1] == key[1] && known[2] == key[2] && known[3] == key[3]
            {
                let slot = 2 * set + way;
                self.mark_used(set, way);
                return self.verdicts[slot / 64] & (1u64 << (slot % 64)) != 0;
            }
        }
        self.remember(set, key, classify())
    }

    #[inline(always)]
    fn mark_used(&mut self, set: usize, way: usize) {
        let bit = 1u64 << (set % 64);
        if way == 0 {
            self.replace_next[set / 64] |= bit;
        } else {
            self.replace_next[set / 64] &= !bit;
        }
    }

    #[cold]
    #[inline(never)]
    fn remember(&mut self, set: usize, key: [u64; 4], verdict: bool) -> bool {
        let way = usize::from(self.replace_next[set / 64] & (1u64 << (set % 64)) != 0);
        self.keys[set][way] = key;
        let slot = 2 * set + way;
        if verdict {
            self.verdicts[slot / 64] |= 1u64 << (slot % 64);
        } else {
            self.verdicts[slot / 64] &= !(1u64 << (slot % 64));
        }
        self.mark_used(set, way);
        verdict
    }

    /// Whether `input[start..end]` (`start < end`) is a key that holds one of `words`.
    #[inline]
    pub(crate) fn holds_anchor_word(
        &mut self,
        input: &[u8],
        start: usize,
        end: usize,
        words: &AnchorWords,
    ) -> bool {
        let len = end - start;
        if len > WINDOW {
            return key_holds_anchor_word(&input[start..end], words);
        }
        let bytes: [u8; WINDOW] = match input.get(start..start + WINDOW) {
            Some(window) => window.try_into().expect("32 bytes"),
            None => padded_window(&input[start..end]),
        };
        let in_key = if len == WINDOW {
            u32::MAX
        } else {
            (1u32 << len) - 1
        };
        self.verdict(masked_words(&bytes, WINDOW * 2 - len), || {
            key_in_window_holds_anchor_word(&bytes, in_key, words)
        })
    }

    /// The key ended by the `"` at `close`, when it is followed by `:`. Reads the 32 bytes
    /// before the quote once: the opening quote is the last `"` among them, and the key's
    /// verdict comes from the same bytes.
    #[inline(always)]
    pub(crate) fn quoted_key(
        &mut self,
        input: &[u8],
        close: usize,
        words: &AnchorWords,
    ) -> QuotedKey {
        if close < WINDOW || input[close - 1] == b'\\' {
            return QuotedKey::Unresolved;
        }
        let bytes: [u8; WINDOW] = input[close - WINDOW..close].try_into().expect("32 bytes");
        let quotes = window_quotes(&bytes);
        if quotes == 0 {
            return QuotedKey::Unresolved;
        }
        let open_index = 31 - quotes.leading_zeros();
        let open = close - WINDOW + open_index as usize;
        if open + 1 == close || (open > 0 && input[open - 1] == b'\\') {
            return QuotedKey::NotAKey;
        }
        let in_key = !((2u64 << open_index) - 1) as u32;
        let key = masked_words(&bytes, close - open - 1);
        let holds_anchor_word = self.verdict(key, || {
            key_in_window_holds_anchor_word(&bytes, in_key, words)
        });
        QuotedKey::Key {
            span: KeySpan {
                start: open + 1,
                end: close,
                form: KeyForm::Quoted { escaped: false },
            },
            holds_anchor_word,
        }
    }
}

/// What [`KeyVerdicts::quoted_key`] found.
pub(crate) enum QuotedKey {
    /// A key of up to 31 bytes.
    Key {
        span: KeySpan,
        holds_anchor_word: bool,
    },
    /// Empty, or its opening quote is escaped while its closing one is not.
    NotAKey,
    /// Longer, escaped (`\"key\":`) or near the start: read it as any other terminator.
    Unresolved,
}

/// 32 zero bytes, 32 `0xff` bytes, 32 zero bytes: the 32 bytes at offset `len` keep the last
/// `len` bytes of a window, those at `64 - len` its first `len` bytes.
static WINDOW_MASKS: [u8; 3 * WINDOW] = {
    let mut masks = [0u8; 3 * WINDOW];
    let mut index = WINDOW;
    while index < 2 * WINDOW {
        masks[index] = 0xff;
        index += 1;
    }
    masks
};

/// `bytes` as four little-endian words, masked by the 32 bytes of [`WINDOW_MASKS`] at
/// `mask_offset` (`len` keeps the last `len` bytes, `64 - len` the first `len`).
#[inline(always)]
fn masked_words(bytes: &[u8; WINDOW], mask_offset: usize) -> [u64; 4] {
    let mask: &[u8; WINDOW] = WINDOW_MASKS[mask_offset..mask_offset + WINDOW]
        .try_into()
        .expect("32 bytes");
    let word = |data: &[u8; WINDOW], index: usize| {
        u64::from_le_bytes(data[8 * index..8 * index + 8].try_into().expect("8 bytes"))
    };
    [
        word(bytes, 0) & word(mask, 0),
        word(bytes, 1) & word(mask, 1),
        word(bytes, 2) & word(mask, 2),
        word(bytes, 3) & word(mask, 3),
    ]
}

/// [`key_holds_anchor_word`] for the bytes of `bytes` whose bits are set in `in_key` (one
/// run), without a byte loop.
#[cold]
#[inline(never)]
fn key_in_window_holds_anchor_word(bytes: &[u8; WINDOW], in_key: u32, words: &AnchorWords) -> bool {
    let classes = window_classes(bytes);
    if classes.bad & in_key != 0 {
        return false;
    }
    let (digit, upper, lower) = (
        classes.digit & in_key,
        classes.upper & in_key,
        classes.lower & in_key,
    );
    if ((upper | lower).count_ones() as usize) < words.min_letters {
        return false;
    }
    let alnum = digit | upper | lower;
    // A word starts after a non-alphanumeric, at lower→Upper and digit→Upper, and at the last
    // capital of a run followed by a lowercase letter (`APIKey` → `API|Key`).
    let starts = (alnum & !(alnum << 1))
        | (upper & ((lower | digit) << 1))
        | (upper & (upper << 1) & (lower >> 1));
    let ends = alnum & (!(alnum >> 1) | (starts >> 1));
    let mut remaining = starts;
    while remaining != 0 {
        let segment_start = remaining.trailing_zeros();
        remaining &= remaining - 1;
        let segment_end = (ends >> segment_start).trailing_zeros() + segment_start + 1;
        if words.contains(&bytes[segment_start as usize..segment_end as usize]) {
            return true;
        }
    }
    false
}

/// A key shorter than 32 bytes at the very end of the input, zero-padded.
#[cold]
fn padded_window(key: &[u8]) -> [u8; WINDOW] {
    let mut bytes = [0u8; WINDOW];
    bytes[..key.len()].copy_from_slice(key);
    bytes
}

/// Per byte of 32 bytes around a key: digit, capital, lowercase letter, and `\` or newline
/// (`bad`).
struct WindowClasses {
    digit: u32,
    upper: u32,
    lower: u32,
    bad: u32,
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn window_quotes(bytes: &[u8; WINDOW]) -> u32 {
    use std::arch::x86_64::*;
    // SAFETY: SSE2 is part of the x86_64 baseline; the loads read exactly `bytes`.
    unsafe {
        let quote = _mm_set1_epi8(b'"' as i8);
        let low = _mm_loadu_si128(bytes.as_ptr() as *const __m128i);
        let high = _mm_loadu_si128(bytes.as_ptr().add(16) as *const __m128i);
        (_mm_movemask_epi8(_mm_cmpeq_epi8(low, quote)) as u32)
            | ((_mm_movemask_epi8(_mm_cmpeq_epi8(high, quote)) as u32) << 16)
    }
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn window_classes(bytes: &[u8; WINDOW]) -> WindowClasses {
    use std::arch::x86_64::*;
    // SAFETY: SSE2 is part of the x86_64 baseline; the loads read exactly `bytes`.
    unsafe {
        #[inline(always)]
        unsafe fn in_range(x: __m128i, low: u8, high: u8) -> u32 {
            let shifted = _mm_add_epi8(x, _mm_set1_epi8(128u8.wrapping_sub(low) as i8));
            _mm_movemask_epi8(_mm_cmplt_epi8(
                shifted,
                _mm_set1_epi8((i16::from(high - low) + 1 - 128) as i8),
            )) as u32
        }
        #[inline(always)]
        unsafe fn bad(x: __m128i) -> u32 {
            _mm_movemask_epi8(_mm_or_si128(
                _mm_cmpeq_epi8(x, _mm_set1_epi8(b'\\' as i8)),
                _mm_cmpeq_epi8(x, _mm_set1_epi8(b'\n' as i8)),
            )) as u32
        }
        let low = _mm_loadu_si128(bytes.as_ptr() as *const __m128i);
        let high = _mm_loadu_si128(bytes.as_ptr().add(16) as *const __m128i);
        WindowClasses {
            digit: in_range(low, b'0', b'9') | (in_range(high, b'0', b'9') << 16),
            upper: in_range(low, b'A', b'Z') | (in_range(high, b'A', b'Z') << 16),
            lower: in_range(low, b'a', b'z') | (in_range(high, b'a', b'z') << 16),
            bad: bad(low) | (bad(high) << 16),
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn window_quotes(bytes: &[u8; WINDOW]) -> u32 {
    bytes.iter().enumerate().fold(0u32, |mask, (index, &byte)| {
        if byte == b'"' {
            mask | 1 << index
        } else {
            mask
        }
    })
}

#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
fn window_classes_scalar(bytes: &[u8; WINDOW]) -> WindowClasses {
    let mut classes = WindowClasses {
        digit: 0,
        upper: 0,
        lower: 0,
        bad: 0,
    };
    for (index, &byte) in bytes.iter().enumerate() {
        let bit = 1u32 << index;
        if byte.is_ascii_digit() {
            classes.digit |= bit;
        }
        if byte.is_ascii_uppercase() {
            classes.upper |= bit;
        }
        if byte.is_ascii_lowercase() {
            classes.lower |= bit;
        }
        if byte == b'\\' || byte == b'\n' {
            classes.bad |= bit;
        }
    }
    classes
}

#[cfg(not(target_arch = "x86_64"))]
fn window_classes(bytes: &[u8; WINDOW]) -> WindowClasses {
    window_classes_scalar(bytes)
}

/// Whether one of `key`'s words is one of `words` (and `key` holds no `\\` or newline).
fn key_holds_anchor_word(key: &[u8], words: &AnchorWords) -> bool {
    if key.iter().any(|&byte| byte == b'\\' || byte == b'\n') {
        return false;
    }
    let mut segments = [(0usize, 0usize); MAX_KEY_SEGMENTS];
    let count = key_segment_ranges(key, &mut segments);
    segments[..count]
        .iter()
        .any(|&(start, end)| words.contains(&key[start..end]))
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

    #[test]
    fn keys_are_read_back_from_their_terminator() {
        let check = |input: &str, syntax: Syntax, expected: Option<(&str, KeyForm)>| {
            let at = input.rfind([':', '=']).expect("a terminator");
            let found = key_before(input.as_bytes(), at, syntax, 1)
                .map(|key| (&input[key.start..key.end], key.form));
            assert_eq!(found, expected, "{input}");
        };
        let quoted = KeyForm::Quoted { escaped: false };
        check(r#"{"apiKey":"#, Syntax::Json, Some(("apiKey", quoted)));
        check(r#"{"apiKey" :"#, Syntax::Json, Some(("apiKey", quoted)));
        check(
            r#"{"body":"{\"token\":"#,
            Syntax::Json,
            Some(("token", KeyForm::Quoted { escaped: true })),
        );
        check(r#"{"a\"b":"#, Syntax::Json, None);
        check(
            "x password=",
            Syntax::Text,
            Some(("password", KeyForm::Bare)),
        );
        check(
            "x password =",
            Syntax::Text,
            Some(("password", KeyForm::Bare)),
        );
        check(
            "a=1&user[password]=",
            Syntax::Form,
            Some(("user[password]", KeyForm::Bare)),
        );
        check("a=1&password =", Syntax::Form, None);
        check("see https:", Syntax::Text, Some(("https", KeyForm::Bare)));
        check("see https://", Syntax::Text, None);
        check("token:", Syntax::Form, None);
    }

    #[test]
    fn short_keys_are_split_like_long_ones() {
        let mut words = AnchorWords::default();
        for word in ["token", "pass", "ssn", "api", "dob", "key"] {
            words.insert(word);
        }
        let keys = [
            "apiKey",
            "APIKey",
            "api_key",
            "x-api-key",
            "SSN__c",
            "ssn2",
            "myToken",
            "TOKEN",
            "tokens",
            "passenger",
            "PASS",
            "userPass",
            "DOB",
            "dobDate",
            "a\\token",
            "to\nken",
            "TokenPass",
            "token9Pass",
            "pASS",
            "x",
            "9",
            "ApiKEYx",
            "KEYs",
            "key_",
            "_key",
            "access.token",
            "2024-01-01T10",
            "abcdefghijkl_api",
        ];
        let mut verdicts = Box::new(KeyVerdicts::EMPTY);
        for _ in 0..2 {
            for key in keys {
                let expected = key_holds_anchor_word(key.as_bytes(), &words);
                let padded = format!("{key}\":1}}");
                assert_eq!(
                    verdicts.holds_anchor_word(padded.as_bytes(), 0, key.len(), &words),
                    expected,
                    "{key}"
                );
                assert_eq!(
                    verdicts.holds_anchor_word(key.as_bytes(), 0, key.len(), &words),
                    expected,
                    "{key} at the end of the input"
                );
            }
        }
    }

    /// A seeded xorshift generator of inputs: bytes from the edges of every class the window
    /// functions compute (and the bytes around them), or any byte at all.
    struct Bytes(u64);

    impl Bytes {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }

        fn input(&mut self, len: usize, alphabet: &[u8]) -> Vec<u8> {
            (0..len)
                .map(|_| match self.below(4) {
                    0 => self.below(256) as u8,
                    _ => alphabet[self.below(alphabet.len())],
                })
                .collect()
        }
    }

    const EDGE_BYTES: &[u8] = b":=\"\\\n\0 /09@AZ[`az{_-.\x7f\x80\xc3\xe9\xff";

    #[test]
    fn window_classes_match_the_scalar_definition() {
        let mut generator = Bytes(0x9e37_79b9_7f4a_7c15);
        for len in 0..=70 {
            for _ in 0..64 {
                let input = generator.input(len, EDGE_BYTES);
                // Every window the scan reads: 32 bytes of the input, or a shorter key at
                // the end of the input, zero-padded.
                let windows: Vec<[u8; WINDOW]> = if len < WINDOW {
                    vec![padded_window(&input)]
                } else {
                    input
                        .windows(WINDOW)
                        .map(|window| window.try_into().expect("32 bytes"))
                        .collect()
                };
                for window in windows {
                    let quotes = window
                        .iter()
                        .enumerate()
                        .filter(|&(_, &byte)| byte == b'"')
                        .fold(0u32, |mask, (index, _)| mask | 1 << index);
                    assert_eq!(window_quotes(&window), quotes, "{window:?}");
                    let (simd, scalar) = (window_classes(&window), window_classes_scalar(&window));
                    assert_eq!(
                        (simd.digit, simd.upper, simd.lower, simd.bad),
                        (scalar.digit, scalar.upper, scalar.lower, scalar.bad),
                        "{window:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn window_verdicts_match_the_byte_loop_on_random_keys() {
        let mut words = AnchorWords::default();
        for word in ["token", "pass", "ssn", "api", "key"] {
            words.insert(word);
        }
        let pieces: &[&[u8]] = &[
            b"token", b"Token", b"PASS", b"api", b"Key", b"ssn", b"tokens", b"apiKey", b"_", b"-",
        ];
        let mut generator = Bytes(0x2545_f491_4f6c_dd1d);
        let mut verdicts = Box::new(KeyVerdicts::EMPTY);
        let mut held = 0;
        for len in 1..=70 {
            for _ in 0..64 {
                // Edge bytes with anchor words (and near misses) dropped in, cut to `len`.
                let mut input = Vec::new();
                while input.len() < len {
                    if generator.below(3) == 0 {
                        input.extend_from_slice(pieces[generator.below(pieces.len())]);
                    } else {
                        let run = generator.below(4) + 1;
                        input.extend(generator.input(run, EDGE_BYTES));
                    }
                }
                input.truncate(len);
                let start = generator.below(len);
                let end = start + 1 + generator.below(len - start);
                let expected = key_holds_anchor_word(&input[start..end], &words);
                held += usize::from(expected);
                assert_eq!(
                    verdicts.holds_anchor_word(&input, start, end, &words),
                    expected,
                    "{:?} in {input:?}",
                    String::from_utf8_lossy(&input[start..end])
                );
            }
        }
        assert!(held >= 500, "only {held} keys hold an anchor word");
    }

    #[test]
    fn anchor_words_are_matched_case_insensitively() {
        let mut words = AnchorWords::default();
        for word in ["token", "pass", "ssn"] {
            words.insert(word);
        }
        assert!(words.contains(b"Token"));
        assert!(words.contains(b"SSN"));
        assert!(!words.contains(b"tokens"));
        assert!(!words.contains(b"pas"));
        assert_eq!(anchor_word(&["api".into(), "key".into()]), Some("api"));
        assert_eq!(anchor_word(&["key".into()]), Some("key"));
    }
}
