//! Native matchers for the built-in regexes that run most often: the same matches as the
//! `regex` crate gives for those patterns, without its per-call cost (several hundred
//! nanoseconds for a 30-byte value, on its general engines).
//!
//! A rule gets a native matcher only when its regex is, byte for byte, one of the patterns
//! below; any other regex — a rule file that replaces a built-in, say — runs on `regex` as
//! before. The tests at the bottom check each matcher against `regex` on generated inputs.

/// `email`: `local@domain.tld`, its letters and digits of any script (`jörg@bücher.de`,
/// `用户@例子.广告`: Unicode `Alphabetic` and `N`, what `char::is_alphanumeric` tells). The
/// address is group 1; the character after it, if there is one, must be no letter, digit or
/// `_` — a word boundary that also holds after a letter outside ASCII — and is part of the
/// whole match. Domain labels have no length bound (the ASCII pattern's `{1,63}` on these
/// classes compiles past the regex size limit).
pub(crate) const EMAIL: &str = r"([\p{Alphabetic}\p{N}._%+\-]{1,64}@[\p{Alphabetic}\p{N}\-]+(?:\.[\p{Alphabetic}\p{N}\-]+){0,8}\.\p{Alphabetic}{2,24})(?:[^\p{Alphabetic}\p{N}_]|\z)";
/// `email-percent-encoded`: `local%40domain.tld`.
pub(crate) const EMAIL_PERCENT_ENCODED: &str = r"[A-Za-z0-9._+\-]{1,64}%40[A-Za-z0-9\-]{1,63}(?:\.[A-Za-z0-9\-]{1,63}){0,8}\.[A-Za-z]{2,24}(?-u:\b)";
/// `jwt`: `eyJ….eyJ….signature`.
pub(crate) const JWT: &str =
    r"(?-u:\b)eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*";
/// `aws-access-key-id`.
pub(crate) const AWS_ACCESS_KEY: &str = r"(?-u:\b)(?:AKIA|ASIA)[A-Z2-7]{16}(?-u:\b)";
/// `github-token`.
pub(crate) const GITHUB_TOKEN: &str = r"(?-u:\b)(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36,}(?-u:\b)";
/// `github-fine-grained-token`.
pub(crate) const GITHUB_FINE_GRAINED_TOKEN: &str = r"(?-u:\b)github_pat_[A-Za-z0-9_]{82}(?-u:\b)";
/// `stripe-secret-key`.
pub(crate) const STRIPE_SECRET_KEY: &str =
    r"(?-u:\b)(?:(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}|whsec_[A-Za-z0-9]{24,})(?-u:\b)";
/// `slack-token`.
pub(crate) const SLACK_TOKEN: &str = r"(?-u:\b)(?:xox[bpares](?:-[0-9]{1,16}){0,3}-[A-Za-z0-9]{10,64}|xoxe\.xox[bp]-1-[A-Za-z0-9]{20,}|xapp-[0-9]-[A-Z0-9]{6,16}-[0-9]{6,16}-[a-f0-9]{32,80})(?-u:\b)";
/// `openai-api-key`.
pub(crate) const OPENAI_API_KEY: &str = r"(?-u:\b)sk-(?:(?:proj|svcacct|admin)-)?[A-Za-z0-9_\-]{16,}T3BlbkFJ[A-Za-z0-9_\-]{16,}(?-u:\b)";
/// `private-key`: a PEM private key block.
pub(crate) const PRIVATE_KEY: &str = r"-----BEGIN[A-Z ]{0,24} PRIVATE KEY(?: BLOCK)?-----[\s\S]{16,}?-----END[A-Z ]{0,24} PRIVATE KEY(?: BLOCK)?-----";
/// `generic-secret`: a whole value of printable ASCII, after an optional auth scheme.
pub(crate) const GENERIC_SECRET_VALUE: &str = r"\A(?:(?:Bearer|Basic|Token) )?([\x21-\x7e]{8,})\z";
/// `date-of-birth`: a whole value that is a date, optionally with a midnight time.
pub(crate) const DATE_VALUE: &str = r"\A([0-9]{4}-[0-9]{2}-[0-9]{2}|[0-9]{1,2}/[0-9]{1,2}/[0-9]{4}|[0-9]{1,2}\.[0-9]{1,2}\.[0-9]{4}|[0-9]{8})(?:T00:00:00(?:\.000)?Z?)?\z";

/// A native matcher standing in for one of the patterns above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// [`EMAIL`] (`separator` `@`) or [`EMAIL_PERCENT_ENCODED`] (`%40`).
    Email { percent_encoded: bool },
    /// [`JWT`].
    Jwt,
    /// [`AWS_ACCESS_KEY`].
    AwsAccessKey,
    /// [`GITHUB_TOKEN`].
    GithubToken,
    /// [`GITHUB_FINE_GRAINED_TOKEN`].
    GithubFineGrainedToken,
    /// [`STRIPE_SECRET_KEY`].
    StripeSecretKey,
    /// [`SLACK_TOKEN`].
    SlackToken,
    /// [`OPENAI_API_KEY`].
    OpenaiApiKey,
    /// [`PRIVATE_KEY`].
    PrivateKey,
    /// [`GENERIC_SECRET_VALUE`].
    GenericSecretValue,
    /// [`DATE_VALUE`].
    DateValue,
}

impl Shape {
    /// The native matcher for `pattern`, if it has one.
    pub(crate) fn for_pattern(pattern: &str) -> Option<Shape> {
        match pattern {
            EMAIL => Some(Shape::Email {
                percent_encoded: false,
            }),
            EMAIL_PERCENT_ENCODED => Some(Shape::Email {
                percent_encoded: true,
            }),
            JWT => Some(Shape::Jwt),
            AWS_ACCESS_KEY => Some(Shape::AwsAccessKey),
            GITHUB_TOKEN => Some(Shape::GithubToken),
            GITHUB_FINE_GRAINED_TOKEN => Some(Shape::GithubFineGrainedToken),
            STRIPE_SECRET_KEY => Some(Shape::StripeSecretKey),
            SLACK_TOKEN => Some(Shape::SlackToken),
            OPENAI_API_KEY => Some(Shape::OpenaiApiKey),
            PRIVATE_KEY => Some(Shape::PrivateKey),
            GENERIC_SECRET_VALUE => Some(Shape::GenericSecretValue),
            DATE_VALUE => Some(Shape::DateValue),
            _ => None,
        }
    }

    /// Like `regex.find_at(haystack, at)` with `haystack` being `input[..window_end]` — the
    /// leftmost-first match starting at or after `at`, with `haystack[..at]` as look-behind
    /// context — when that match starts at or before `last_start`; `None` when there is no
    /// such match. Returns (match start, match end, capture group 1 start, capture group 1
    /// end), the group being the whole match for patterns without one. `memo` keeps what one
    /// call learns of `input` for the next (see [`ShapeMemo`]).
    pub(crate) fn find_at(
        self,
        input: &[u8],
        window_end: usize,
        at: usize,
        last_start: usize,
        memo: &mut ShapeMemo,
    ) -> Option<(usize, usize, usize, usize)> {
        let haystack = &input[..window_end];
        let (start, end) = match self {
            Shape::Email {
                percent_encoded: false,
            } => return email_find_at(haystack, at, last_start),
            Shape::Email {
                percent_encoded: true,
            } => percent_encoded_email_find_at(haystack, at, last_start)?,
            Shape::Jwt => jwt_find_at(haystack, at, last_start)?,
            Shape::AwsAccessKey => leftmost(haystack, at, last_start, b"A", aws_access_key_at)?,
            Shape::GithubToken => leftmost(haystack, at, last_start, b"g", github_token_at)?,
            Shape::GithubFineGrainedToken => {
                leftmost(haystack, at, last_start, b"g", github_fine_grained_token_at)?
            }
            Shape::StripeSecretKey => {
                leftmost(haystack, at, last_start, b"srw", stripe_secret_key_at)?
            }
            Shape::SlackToken => leftmost(haystack, at, last_start, b"x", slack_token_at)?,
            Shape::OpenaiApiKey => leftmost(haystack, at, last_start, b"s", openai_api_key_at)?,
            Shape::PrivateKey => private_key_find_at(input, window_end, at, last_start, memo)?,
            Shape::GenericSecretValue | Shape::DateValue => {
                // Anchored at both ends: only a search from the start can match.
                if at > 0 {
                    return None;
                }
                let (group_start, group_end) = self.match_whole(haystack)?;
                return Some((0, haystack.len(), group_start, group_end));
            }
        };
        Some((start, end, start, end))
    }

    /// For the `\A…\z` patterns: whether all of `value` matches, and the span of group 1.
    /// For the others: the leftmost-first match in `value`.
    pub(crate) fn match_whole(self, value: &[u8]) -> Option<(usize, usize)> {
        match self {
            Shape::GenericSecretValue => generic_secret_value(value),
            Shape::DateValue => date_value(value),
            Shape::Email { .. }
            | Shape::Jwt
            | Shape::AwsAccessKey
            | Shape::GithubToken
            | Shape::GithubFineGrainedToken
            | Shape::StripeSecretKey
            | Shape::SlackToken
            | Shape::OpenaiApiKey
            | Shape::PrivateKey => {
                let memo = &mut ShapeMemo::default();
                let (_, _, start, end) = self.find_at(value, value.len(), 0, value.len(), memo)?;
                Some((start, end))
            }
        }
    }
}

#[inline]
fn is_word(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_'
}

#[inline]
fn run_length(bytes: &[u8], from: usize, class: impl Fn(u8) -> bool) -> usize {
    bytes.get(from..).map_or(0, |rest| {
        rest.iter().take_while(|&&byte| class(byte)).count()
    })
}

fn is_email_domain_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'-'
}

/// The character encoded at `at` and its length in bytes; `None` at the end or at bytes that
/// are not UTF-8 (which no class of [`EMAIL`] matches).
#[inline]
fn char_at(bytes: &[u8], at: usize) -> Option<(char, usize)> {
    let first = *bytes.get(at)?;
    if first.is_ascii() {
        return Some((char::from(first), 1));
    }
    let len = match first {
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => return None,
    };
    let text = std::str::from_utf8(bytes.get(at..at + len)?).ok()?;
    text.chars().next().map(|found| (found, len))
}

/// The character that ends at `end` and starts at or after `floor`, and its length.
#[inline]
fn char_before(bytes: &[u8], end: usize, floor: usize) -> Option<(char, usize)> {
    if end <= floor {
        return None;
    }
    let last = bytes[end - 1];
    if last.is_ascii() {
        return Some((char::from(last), 1));
    }
    let mut start = end - 1;
    while start > floor && end - start < 4 && bytes[start] & 0xC0 == 0x80 {
        start -= 1;
    }
    let (found, len) = char_at(bytes, start)?;
    (start + len == end).then_some((found, len))
}

/// The run of `class` characters at `from`: its length in bytes and in characters.
#[inline]
fn char_run(bytes: &[u8], from: usize, class: impl Fn(char) -> bool) -> (usize, usize) {
    let (mut at, mut chars) = (from, 0);
    while let Some((found, len)) = char_at(bytes, at).filter(|&(found, _)| class(found)) {
        debug_assert!(class(found));
        at += len;
        chars += 1;
    }
    (at - from, chars)
}

fn is_email_local_char(found: char) -> bool {
    found.is_alphanumeric() || matches!(found, '.' | '_' | '%' | '+' | '-')
}

fn is_email_label_char(found: char) -> bool {
    found.is_alphanumeric() || found == '-'
}

/// [`EMAIL`], as (match start, match end, address start, address end). A match holds exactly
/// one `@` (no class holds it), so `@`s are visited in order: for each, the domain after it
/// either matches or not, whatever the start, and the leftmost start is the earliest
/// character of the run of local-part characters before it, at most 64 back and not before
/// `at`.
fn email_find_at(
    haystack: &[u8],
    at: usize,
    last_start: usize,
) -> Option<(usize, usize, usize, usize)> {
    let mut from = at;
    loop {
        let position = from + memchr::memchr(b'@', haystack.get(from..)?)?;
        let mut start = position;
        let mut chars = 0;
        while chars < 64 {
            match char_before(haystack, start, at) {
                Some((found, len)) if is_email_local_char(found) => {
                    start -= len;
                    chars += 1;
                }
                _ => break,
            }
        }
        if start > last_start {
            // Every later `@` has its start later still.
            return None;
        }
        if start < position {
            if let Some((end, whole_end)) = unicode_email_domain_end(haystack, position + 1) {
                return Some((start, whole_end, start, end));
            }
        }
        from = position + 1;
    }
}

/// The end of the domain of [`EMAIL`] matched at `from`, as leftmost-first matching ends it,
/// and the end of the character after it (the whole match's end). As in
/// [`email_domain_end`], labels are whole runs (no label class holds `.`); the top-level
/// domain's length is counted in characters.
fn unicode_email_domain_end(haystack: &[u8], from: usize) -> Option<(usize, usize)> {
    let (first_bytes, first_chars) = char_run(haystack, from, is_email_label_char);
    if first_chars == 0 {
        return None;
    }
    let mut dots = [0usize; 9];
    dots[0] = from + first_bytes;
    if haystack.get(dots[0]) != Some(&b'.') {
        return None;
    }
    let mut labels = 0;
    while labels < 8 {
        let (bytes, chars) = char_run(haystack, dots[labels] + 1, is_email_label_char);
        let next = dots[labels] + 1 + bytes;
        if chars == 0 || haystack.get(next) != Some(&b'.') {
            break;
        }
        labels += 1;
        dots[labels] = next;
    }
    (0..=labels).rev().find_map(|taken| {
        let tld_start = dots[taken] + 1;
        let (bytes, chars) = char_run(haystack, tld_start, char::is_alphabetic);
        let end = tld_start + bytes;
        if !(2..=24).contains(&chars) {
            return None;
        }
        if end == haystack.len() {
            return Some((end, end));
        }
        // Not UTF-8 after the address: `[^…]` matches no such byte.
        let (after, len) = char_at(haystack, end)?;
        (!(after.is_alphanumeric() || after == '_')).then_some((end, end + len))
    })
}

/// [`EMAIL_PERCENT_ENCODED`]. As [`email_find_at`], in ASCII and bytes: the leftmost start is
/// the earliest position of the run of local-part bytes before the `%40`, at most 64 bytes back
/// and not before `at`.
fn percent_encoded_email_find_at(
    haystack: &[u8],
    at: usize,
    last_start: usize,
) -> Option<(usize, usize)> {
    let separator: &[u8] = b"%40";
    let is_local =
        |byte: u8| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'+' | b'-');
    let mut from = at;
    loop {
        let position = from + memchr::memmem::find(haystack.get(from..)?, separator)?;
        let mut start = position;
        while start > at && position - start < 64 && is_local(haystack[start - 1]) {
            start -= 1;
        }
        if start > last_start {
            // Every later separator has its start later still.
            return None;
        }
        if start < position {
            if let Some(end) = email_domain_end(haystack, position + separator.len()) {
                return Some((start, end));
            }
        }
        from = position + 1;
    }
}

/// The end of `[A-Za-z0-9\-]{1,63}(?:\.[A-Za-z0-9\-]{1,63}){0,8}\.[A-Za-z]{2,24}(?-u:\b)`
/// ([`EMAIL_PERCENT_ENCODED`]'s domain)
/// matched at `from`, as leftmost-first (greedy) matching ends it. No label class holds `.`, so
/// every label is a whole run; the repetition takes as many labels as it can, giving one back
/// at a time until the top-level domain and the word boundary fit.
fn email_domain_end(haystack: &[u8], from: usize) -> Option<usize> {
    let first = run_length(haystack, from, is_email_domain_byte);
    if !(1..=63).contains(&first) {
        return None;
    }
    // dots[k]: the `.` after the first label and `k` more labels.
    let mut dots = [0usize; 9];
    dots[0] = from + first;
    if haystack.get(dots[0]) != Some(&b'.') {
        return None;
    }
    let mut labels = 0;
    while labels < 8 {
        let len = run_length(haystack, dots[labels] + 1, is_email_domain_byte);
        let next = dots[labels] + 1 + len;
        if !(1..=63).contains(&len) || haystack.get(next) != Some(&b'.') {
            break;
        }
        labels += 1;
        dots[labels] = next;
    }
    (0..=labels).rev().find_map(|taken| {
        let tld_start = dots[taken] + 1;
        let letters = run_length(haystack, tld_start, |byte| byte.is_ascii_alphabetic());
        let end = tld_start + letters;
        ((2..=24).contains(&letters) && haystack.get(end).is_none_or(|&byte| !is_word(byte)))
            .then_some(end)
    })
}

fn is_base64url_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-'
}

/// [`JWT`]: at each `eyJ` that starts a word, a header run, `.eyJ`, a payload run (each at
/// least 8 bytes after `eyJ`, and whole: no run class holds `.`), `.` and the signature run.
fn jwt_find_at(haystack: &[u8], at: usize, last_start: usize) -> Option<(usize, usize)> {
    let mut from = at;
    loop {
        let start = from + memchr::memmem::find(haystack.get(from..)?, b"eyJ")?;
        if start > last_start {
            return None;
        }
        if start == 0 || !is_word(haystack[start - 1]) {
            let header = run_length(haystack, start + 3, is_base64url_byte);
            let dot = start + 3 + header;
            if header >= 8
                && haystack.get(dot) == Some(&b'.')
                && haystack.get(dot + 1..dot + 4) == Some(b"eyJ")
            {
                let payload = run_length(haystack, dot + 4, is_base64url_byte);
                let dot = dot + 4 + payload;
                if payload >= 8 && haystack.get(dot) == Some(&b'.') {
                    let signature = run_length(haystack, dot + 1, is_base64url_byte);
                    return Some((start, dot + 1 + signature));
                }
            }
        }
        from = start + 1;
    }
}

/// The leftmost start in `at..=last_start` — a position holding one of `first_bytes` — at
/// which `match_at` matches, with the end it gives.
fn leftmost(
    haystack: &[u8],
    at: usize,
    last_start: usize,
    first_bytes: &[u8],
    match_at: impl Fn(&[u8], usize) -> Option<usize>,
) -> Option<(usize, usize)> {
    let end = last_start.saturating_add(1).min(haystack.len());
    let mut start = at;
    while start < end {
        let window = &haystack[start..end];
        let offset = match *first_bytes {
            [one] => memchr::memchr(one, window),
            [one, two] => memchr::memchr2(one, two, window),
            [one, two, three] => memchr::memchr3(one, two, three, window),
            _ => Some(0),
        }?;
        start += offset;
        if let Some(match_end) = match_at(haystack, start) {
            return Some((start, match_end));
        }
        start += 1;
    }
    None
}

/// `(?-u:\b)` before a pattern that starts with a word byte.
#[inline]
fn word_starts_at(haystack: &[u8], at: usize) -> bool {
    at == 0 || !is_word(haystack[at - 1])
}

/// `(?-u:\b)` after a match that ends with a word byte.
#[inline]
fn word_ends_at(haystack: &[u8], at: usize) -> bool {
    haystack.get(at).is_none_or(|&byte| !is_word(byte))
}

/// `(?-u:\b)` anywhere: the bytes on either side differ in being word bytes.
#[inline]
fn is_word_boundary(haystack: &[u8], at: usize) -> bool {
    let before = at > 0 && is_word(haystack[at - 1]);
    let after = haystack.get(at).is_some_and(|&byte| is_word(byte));
    before != after
}

/// A run of `class` bytes from `from`, then a word boundary: its end, when its length is in
/// `lengths`. (Every class here holds only word bytes, so the run must be whole and followed
/// by a non-word byte: ending it earlier would leave a word byte on both sides.)
#[inline]
fn word_run_end(
    haystack: &[u8],
    from: usize,
    class: impl Fn(u8) -> bool,
    lengths: std::ops::RangeInclusive<usize>,
) -> Option<usize> {
    let len = run_length(haystack, from, class);
    (lengths.contains(&len) && word_ends_at(haystack, from + len)).then_some(from + len)
}

/// A run of `class` bytes from `from` (length in `lengths`) followed by `-`: the `-`'s
/// position. (No class here holds `-`, so the run must be whole.)
#[inline]
fn run_then_dash(
    haystack: &[u8],
    from: usize,
    class: impl Fn(u8) -> bool,
    lengths: std::ops::RangeInclusive<usize>,
) -> Option<usize> {
    let len = run_length(haystack, from, class);
    (lengths.contains(&len) && haystack.get(from + len) == Some(&b'-')).then_some(from + len)
}

/// [`AWS_ACCESS_KEY`] at `start`.
fn aws_access_key_at(haystack: &[u8], start: usize) -> Option<usize> {
    let prefix = haystack.get(start..start + 4)?;
    if !word_starts_at(haystack, start) || (prefix != b"AKIA" && prefix != b"ASIA") {
        return None;
    }
    word_run_end(
        haystack,
        start + 4,
        |byte| byte.is_ascii_uppercase() || (b'2'..=b'7').contains(&byte),
        16..=16,
    )
}

/// [`GITHUB_TOKEN`] at `start`.
fn github_token_at(haystack: &[u8], start: usize) -> Option<usize> {
    let prefix = haystack.get(start..start + 4)?;
    if !word_starts_at(haystack, start)
        || &prefix[..2] != b"gh"
        || !matches!(prefix[2], b'p' | b'o' | b'u' | b's' | b'r')
        || prefix[3] != b'_'
    {
        return None;
    }
    word_run_end(
        haystack,
        start + 4,
        |byte| byte.is_ascii_alphanumeric(),
        36..=usize::MAX,
    )
}

/// [`GITHUB_FINE_GRAINED_TOKEN`] at `start`.
fn github_fine_grained_token_at(haystack: &[u8], start: usize) -> Option<usize> {
    if !word_starts_at(haystack, start) || haystack.get(start..start + 11)? != b"github_pat_" {
        return None;
    }
    // 82 word bytes: a longer run leaves a word byte after the 82nd.
    let body = haystack.get(start + 11..start + 93)?;
    (body.iter().all(|&byte| is_word(byte)) && word_ends_at(haystack, start + 93))
        .then_some(start + 93)
}

/// [`STRIPE_SECRET_KEY`] at `start`: `sk_`/`rk_` + `live_`/`test_` + 16 or more
/// alphanumerics, or `whsec_` + 24 or more.
fn stripe_secret_key_at(haystack: &[u8], start: usize) -> Option<usize> {
    if !word_starts_at(haystack, start) {
        return None;
    }
    let alphanumeric = |byte: u8| byte.is_ascii_alphanumeric();
    let head = haystack.get(start..start + 8);
    if let Some(head) = head {
        if matches!(&head[..3], b"sk_" | b"rk_") && matches!(&head[3..], b"live_" | b"test_") {
            return word_run_end(haystack, start + 8, alphanumeric, 16..=usize::MAX);
        }
    }
    if haystack.get(start..start + 6)? == b"whsec_" {
        return word_run_end(haystack, start + 6, alphanumeric, 24..=usize::MAX);
    }
    None
}

/// [`SLACK_TOKEN`] at `start`, its three alternatives in order.
fn slack_token_at(haystack: &[u8], start: usize) -> Option<usize> {
    if !word_starts_at(haystack, start) {
        return None;
    }
    let digit = |byte: u8| byte.is_ascii_digit();
    let alphanumeric = |byte: u8| byte.is_ascii_alphanumeric();
    // xox[bpares], up to three `-digits` groups (as many as there are, then fewer), then
    // `-` and 10-64 alphanumerics.
    if haystack.get(start..start + 3) == Some(b"xox")
        && haystack
            .get(start + 3)
            .is_some_and(|byte| b"bpares".contains(byte))
    {
        let mut dashes = [start + 4; 4];
        let mut groups = 0;
        while groups < 3 && haystack.get(dashes[groups]) == Some(&b'-') {
            match run_then_dash(haystack, dashes[groups] + 1, digit, 1..=16) {
                Some(next) => {
                    groups += 1;
                    dashes[groups] = next;
                }
                None => break,
            }
        }
        for taken in (0..=groups).rev() {
            let dash = dashes[taken];
            if haystack.get(dash) == Some(&b'-') {
                if let Some(end) = word_run_end(haystack, dash + 1, alphanumeric, 10..=64) {
                    return Some(end);
                }
            }
        }
    }
    // xoxe.xox[bp]-1- and 20 or more alphanumerics.
    if let Some(head) = haystack.get(start..start + 12) {
        if &head[..8] == b"xoxe.xox" && matches!(head[8], b'b' | b'p') && &head[9..] == b"-1-" {
            if let Some(end) = word_run_end(haystack, start + 12, alphanumeric, 20..=usize::MAX) {
                return Some(end);
            }
        }
    }
    // xapp-<digit>-<6-16 of A-Z0-9>-<6-16 digits>-<32-80 hex>.
    let head = haystack.get(start..start + 7)?;
    if &head[..5] != b"xapp-" || !head[5].is_ascii_digit() || head[6] != b'-' {
        return None;
    }
    let upper_or_digit = |byte: u8| byte.is_ascii_uppercase() || byte.is_ascii_digit();
    let dash = run_then_dash(haystack, start + 7, upper_or_digit, 6..=16)?;
    let dash = run_then_dash(haystack, dash + 1, digit, 6..=16)?;
    let lower_hex = |byte: u8| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte);
    word_run_end(haystack, dash + 1, lower_hex, 32..=80)
}

/// [`OPENAI_API_KEY`] at `start`. Everything after `sk-` up to the `T3BlbkFJ` marker and
/// after it is one run of `[A-Za-z0-9_-]`; the first part takes as much as it can, so the
/// marker is the last one that leaves 16 bytes on each side, and the second part ends at the
/// last word boundary it can reach.
fn openai_api_key_at(haystack: &[u8], start: usize) -> Option<usize> {
    if !word_starts_at(haystack, start) || haystack.get(start..start + 3)? != b"sk-" {
        return None;
    }
    let is_body = |byte: u8| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-';
    let run_end = start + 3 + run_length(haystack, start + 3, is_body);
    let group = [&b"proj-"[..], b"svcacct-", b"admin-"]
        .into_iter()
        .find(|group| haystack[start + 3..run_end].starts_with(group))
        .map_or(0, <[u8]>::len);
    // With the optional `proj-`/`svcacct-`/`admin-` first, then without.
    let options = if group > 0 {
        [Some(group), Some(0)]
    } else {
        [Some(0), None]
    };
    for body_start in options.into_iter().flatten().map(|group| start + 3 + group) {
        let mut marker_limit = run_end;
        while let Some(marker) =
            memchr::memmem::rfind(haystack.get(body_start..marker_limit)?, b"T3BlbkFJ")
        {
            let marker = body_start + marker;
            marker_limit = marker + 7;
            if marker < body_start + 16 {
                break;
            }
            let tail_start = marker + 8;
            let end = (tail_start + 16..=run_end)
                .rev()
                .find(|&end| is_word_boundary(haystack, end));
            if let Some(end) = end {
                return Some(end);
            }
        }
    }
    None
}

/// What matching [`PRIVATE_KEY`] has learned of one input, kept from one keyword hit to the
/// next. Every `-----BEGIN` hit would otherwise search the 16 KiB after it for a footer and
/// check it for UTF-8 again, so that a body of headers with no footer cost 16 KiB of passes
/// per 27-byte header; remembered, each header is decided in a small constant time, and each
/// stretch of the input is searched once per scan (whose hits come in input order).
///
/// A memo is for one input: every call given it must be given that input (its window may
/// differ), since what it holds are positions in it.
#[derive(Debug, Default)]
pub(crate) struct ShapeMemo {
    /// `(from, footer)`: the first private-key footer (its start and end) that starts at or
    /// after `from`, `None` when there is none up to the end of the input.
    footer: Option<(usize, Option<(usize, usize)>)>,
    /// `(from, until)`: `input[from..until]` is valid UTF-8, `from` is a character boundary,
    /// and `until` is the end of the input or where the first invalid sequence after `from`
    /// starts.
    utf8: Option<(usize, usize)>,
}

impl ShapeMemo {
    /// The first private-key footer in `input` that starts at or after `from`: the start and
    /// end of `-----END[A-Z ]{0,24} PRIVATE KEY(?: BLOCK)?-----`.
    fn footer_from(&mut self, input: &[u8], from: usize) -> Option<(usize, usize)> {
        let footer = match self.footer {
            // No footer starts between where the last search began and what it found (or the
            // end), so that answers for any point between them.
            Some((known_from, footer))
                if known_from <= from && footer.is_none_or(|(start, _)| start >= from) =>
            {
                return footer;
            }
            // Before where the last search began: only the bytes up to there are new.
            Some((known_from, footer)) if from < known_from => {
                next_footer(input, from, known_from).or(footer)
            }
            _ => next_footer(input, from, input.len()),
        };
        self.footer = Some((from, footer));
        footer
    }

    /// Where the first sequence that is not UTF-8 at or after `from` starts in `input` (its
    /// length when there is none), `from` being a character boundary.
    fn utf8_until(&mut self, input: &[u8], from: usize) -> usize {
        if let Some((known_from, until)) = self.utf8 {
            // A boundary inside a stretch known to be valid is a boundary of the same
            // decoding, which meets the same invalid sequence at its end.
            if (known_from..=until).contains(&from) {
                return until;
            }
        }
        let rest = input.get(from..).unwrap_or_default();
        let until = from
            + match std::str::from_utf8(rest) {
                Ok(_) => rest.len(),
                Err(error) => error.valid_up_to(),
            };
        self.utf8 = Some((from, until));
        until
    }
}

/// [`PRIVATE_KEY`] in `input[..window_end]`: a `-----BEGIN … PRIVATE KEY-----` header, then
/// the first footer that starts 16 characters or more after it (the body is lazy), with valid
/// UTF-8 between. Beyond `window_end` the input is read only to find where its next footer
/// and next invalid byte lie, which `memo` keeps for the calls after this one. A header whose
/// body has no footer tells nothing of a later header's (a byte that is not UTF-8 may end the
/// first body before the second begins), so each is tried, as the regex tries them.
fn private_key_find_at(
    input: &[u8],
    window_end: usize,
    at: usize,
    last_start: usize,
    memo: &mut ShapeMemo,
) -> Option<(usize, usize)> {
    let haystack = &input[..window_end];
    let mut from = at;
    loop {
        let start = from + memchr::memmem::find(haystack.get(from..)?, b"-----BEGIN")?;
        if start > last_start {
            return None;
        }
        if let Some(header_end) = pem_marker_end(haystack, start + 10) {
            if let Some(end) = private_key_end(input, window_end, header_end, memo) {
                return Some((start, end));
            }
        }
        from = start + 1;
    }
}

/// Where the match of a private-key header that ends at `header_end` ends, in
/// `input[..window_end]`: at the end of the first footer that starts 16 characters or more
/// after the header, if the bytes up to it are valid UTF-8 and it ends in the window.
///
/// Only the first footer at or after the 16th character needs trying: a later one ends later
/// (two can share no bytes but the dashes between them), so cannot fit a window this one
/// overruns, and holds this one's bytes before it, which must be valid UTF-8 too. A footer that
/// fits in the window is found the same way in the whole input, and one that does not is not
/// searched for again by later headers.
fn private_key_end(
    input: &[u8],
    window_end: usize,
    header_end: usize,
    memo: &mut ShapeMemo,
) -> Option<usize> {
    // The 16th character ends 16 bytes or more after the header: a footer from there is
    // needed, and when there is none in the window (the answer to a body of headers and no
    // footers), the header is decided without decoding its body.
    let (footer, end) = memo.footer_from(input, header_end + 16)?;
    if end > window_end {
        return None;
    }
    // `[\s\S]` is any Unicode scalar value: the body is valid UTF-8, at least 16 characters
    // long, and cannot run past an invalid byte. Sixteen characters take at most 64 bytes, so
    // only those need decoding to know where the 16th ends.
    let head = &input[header_end..window_end.min(header_end + 64)];
    let head = match std::str::from_utf8(head) {
        Ok(text) => text,
        Err(error) => std::str::from_utf8(&head[..error.valid_up_to()]).unwrap_or_default(),
    };
    let sixteen_chars = head
        .char_indices()
        .nth(15)
        .map(|(at, c)| header_end + at + c.len_utf8())?;
    let (footer, end) = match footer >= sixteen_chars {
        true => (footer, end),
        false => memo.footer_from(input, sixteen_chars)?,
    };
    // `header_end` follows a `-`, so it is a character boundary.
    (end <= window_end && footer + 8 <= memo.utf8_until(input, header_end)).then_some(end)
}

/// The first private-key footer in `input` that starts at or after `from` and before `to`.
fn next_footer(input: &[u8], from: usize, to: usize) -> Option<(usize, usize)> {
    let mut search = from;
    // A footer starting before `to` has its `-----END` end before `to + 8`.
    let searched = input.get(..to.saturating_add(7).min(input.len()))?;
    loop {
        let start = search + memchr::memmem::find(searched.get(search..)?, b"-----END")?;
        if let Some(end) = pem_marker_end(input, start + 8) {
            return Some((start, end));
        }
        search = start + 1;
    }
}

/// After `-----BEGIN` or `-----END` at `from`: `[A-Z ]{0,24} PRIVATE KEY(?: BLOCK)?-----`.
/// No class here holds `-`, so the run of `[A-Z ]` must be all of it up to `-----`, and it must
/// end in ` PRIVATE KEY` (tried first: the greedy prefix is then longer) or
/// ` PRIVATE KEY BLOCK`, at most 24 bytes after `from`.
fn pem_marker_end(haystack: &[u8], from: usize) -> Option<usize> {
    let len = run_length(haystack, from, |byte| {
        byte.is_ascii_uppercase() || byte == b' '
    });
    let run = &haystack[from..from + len];
    if haystack.get(from + len..from + len + 5) != Some(b"-----") {
        return None;
    }
    let fits = |suffix: &[u8]| run.ends_with(suffix) && run.len() - suffix.len() <= 24;
    (fits(b" PRIVATE KEY") || fits(b" PRIVATE KEY BLOCK")).then_some(from + len + 5)
}

/// [`GENERIC_SECRET_VALUE`]: group 1 is the value after a `Bearer `/`Basic `/`Token ` prefix
/// when what follows is at least 8 printable non-space bytes, otherwise the whole value when
/// it is (a value with the prefix and less behind it holds a space, so it is not).
fn generic_secret_value(value: &[u8]) -> Option<(usize, usize)> {
    let printable =
        |bytes: &[u8]| bytes.len() >= 8 && bytes.iter().all(|b| (0x21..=0x7e).contains(b));
    for prefix in [&b"Bearer "[..], b"Basic ", b"Token "] {
        if let Some(rest) = value.strip_prefix(prefix) {
            if printable(rest) {
                return Some((prefix.len(), value.len()));
            }
        }
    }
    printable(value).then_some((0, value.len()))
}

/// [`DATE_VALUE`]: group 1 is the date, everything before the first `T`; what follows must
/// be one of the midnight suffixes.
fn date_value(value: &[u8]) -> Option<(usize, usize)> {
    let date_end = memchr::memchr(b'T', value).unwrap_or(value.len());
    let (date, time) = value.split_at(date_end);
    if !matches!(
        time,
        b"" | b"T00:00:00" | b"T00:00:00Z" | b"T00:00:00.000" | b"T00:00:00.000Z"
    ) {
        return None;
    }
    let digits = |part: &[u8], lengths: std::ops::RangeInclusive<usize>| {
        lengths.contains(&part.len()) && part.iter().all(u8::is_ascii_digit)
    };
    let separated = |separator: u8| {
        let mut parts = date.split(|&byte| byte == separator);
        matches!(
            (parts.next(), parts.next(), parts.next(), parts.next()),
            (Some(first), Some(second), Some(year), None)
                if digits(first, 1..=2) && digits(second, 1..=2) && digits(year, 4..=4)
        )
    };
    let iso = date.len() == 10
        && date[4] == b'-'
        && date[7] == b'-'
        && digits(&date[..4], 4..=4)
        && digits(&date[5..7], 2..=2)
        && digits(&date[8..], 2..=2);
    (iso || separated(b'/') || separated(b'.') || digits(date, 8..=8)).then_some((0, date_end))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cases per check; `SCAN_SHAPE_CASES=N` runs more.
    fn cases() -> usize {
        std::env::var("SCAN_SHAPE_CASES")
            .ok()
            .and_then(|value| value.parse().ok())
            .unwrap_or(100_000)
    }

    /// A deterministic generator of strings made of pieces the patterns care about.
    struct Pieces {
        state: u64,
    }

    impl Pieces {
        fn next(&mut self) -> u64 {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            self.state
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn string(&mut self, pieces: &[&[u8]], max_pieces: usize) -> Vec<u8> {
            let count = self.below(max_pieces) + 1;
            let mut out = Vec::new();
            for _ in 0..count {
                let piece = pieces[self.below(pieces.len())];
                let repeat = if self.below(8) == 0 {
                    self.below(70) + 1
                } else {
                    1
                };
                for _ in 0..repeat {
                    out.extend_from_slice(piece);
                }
            }
            out
        }
    }

    /// Compares `find_at` with the regex on `cases` haystacks, each a sequence of pieces from
    /// the groups in `template` (one piece of each group in turn, some groups repeated or
    /// skipped), so that most look almost like a match.
    fn check_find(pattern: &str, template: &[&[&[u8]]], cases: usize) {
        let shape = Shape::for_pattern(pattern).expect("a native shape");
        // The size limit the scanner compiles rules with.
        let regex = regex::bytes::RegexBuilder::new(pattern)
            .size_limit(32 << 20)
            .build()
            .unwrap();
        let mut generator = Pieces {
            state: 0x9e37_79b9_7f4a_7c15,
        };
        let mut windows = Pieces {
            state: 0x853c_49e6_748f_ea9b,
        };
        let mut matched = 0;
        for _ in 0..cases {
            let mut haystack = Vec::new();
            for group in template {
                let times = match generator.below(20) {
                    0 => 0,
                    1 => generator.below(12),
                    _ => 1,
                };
                for _ in 0..times {
                    haystack.extend_from_slice(group[generator.below(group.len())]);
                }
            }
            let at = if generator.below(2) == 0 {
                0
            } else {
                generator.below(haystack.len() / 3 + 1)
            };
            let last_start = at + generator.below(haystack.len() + 1);
            let expected = regex
                .captures_at(&haystack, at)
                .filter(|found| found.get(0).unwrap().start() <= last_start)
                .map(|found| {
                    let whole = found.get(0).unwrap();
                    let group = found.get(1).unwrap_or(whole);
                    (whole.start(), whole.end(), group.start(), group.end())
                });
            matched += usize::from(expected.is_some());
            let memo = &mut ShapeMemo::default();
            assert_eq!(
                shape.find_at(&haystack, haystack.len(), at, last_start, memo),
                expected,
                "{:?} at {at} up to {last_start}",
                String::from_utf8_lossy(&haystack)
            );
            // More calls on the same input, each in a window of its own, in any order, with
            // what the calls before learned of the input: as the regex on the window alone.
            // (Their own generator, so the haystacks above stay what they were.)
            for _ in 0..3 {
                let window_end = windows.below(haystack.len() + 1);
                let at = windows.below(window_end + 1);
                let last_start = at + windows.below(window_end + 1);
                let window = &haystack[..window_end];
                let expected = regex
                    .captures_at(window, at)
                    .filter(|found| found.get(0).unwrap().start() <= last_start)
                    .map(|found| {
                        let whole = found.get(0).unwrap();
                        let group = found.get(1).unwrap_or(whole);
                        (whole.start(), whole.end(), group.start(), group.end())
                    });
                assert_eq!(
                    shape.find_at(&haystack, window_end, at, last_start, memo),
                    expected,
                    "{:?} in its first {window_end} bytes at {at} up to {last_start}",
                    String::from_utf8_lossy(&haystack)
                );
            }
        }
        assert!(
            matched >= 500 && cases - matched >= 500,
            "{pattern}: {matched} matches in {cases} cases: the generator needs better pieces"
        );
    }

    fn check_whole(pattern: &str, pieces: &[&[u8]], max_pieces: usize, cases: usize) {
        let shape = Shape::for_pattern(pattern).expect("a native shape");
        let regex = regex::bytes::Regex::new(pattern).unwrap();
        let mut generator = Pieces {
            state: 0x2545_f491_4f6c_dd1d,
        };
        let mut matched = 0;
        for _ in 0..cases {
            let value = generator.string(pieces, max_pieces);
            let expected = regex.captures(&value).map(|captures| {
                let group = captures.get(1).expect("group 1");
                (group.start(), group.end())
            });
            matched += usize::from(expected.is_some());
            assert_eq!(
                shape.match_whole(&value),
                expected,
                "{:?}",
                String::from_utf8_lossy(&value)
            );
        }
        assert!(
            matched >= 500 && cases - matched >= 500,
            "{matched} matches in {cases} cases: the generator needs better pieces"
        );
    }

    #[test]
    fn email_matches_like_the_regex() {
        let noise: &[&[u8]] = &[
            b" ",
            b"\"",
            b"\\n",
            b"x",
            b"@",
            b"%40",
            b"..",
            b"-",
            b"_",
            "请".as_bytes(),
            "。".as_bytes(),
            b"\xc3",
        ];
        let local: &[&[u8]] = &[
            b"jane",
            b".",
            b"_",
            b"%",
            b"+",
            b"-",
            b"Z",
            b"7",
            b"doe.x",
            "jörg".as_bytes(),
            "用户".as_bytes(),
            "٣".as_bytes(),
            "\u{301}".as_bytes(),
            b"\xb6",
        ];
        let label: &[&[u8]] = &[
            b"example",
            b"mail",
            b"x1",
            b"-",
            b"a",
            b"9",
            b"c",
            "bücher".as_bytes(),
            "例子".as_bytes(),
            "é".as_bytes(),
        ];
        let dot: &[&[u8]] = &[b".", b".", b".", b"..", b"_", "。".as_bytes()];
        let tld: &[&[u8]] = &[
            b"com",
            b"co",
            b"uk",
            b"c",
            b"io1",
            b"de",
            b"travel",
            b"_x",
            "广告".as_bytes(),
            "ö".as_bytes(),
            "भारत".as_bytes(),
            "ﾃ".as_bytes(),
        ];
        let tail: &[&[u8]] = &[
            b"",
            b" ",
            b"\"",
            b"1",
            b"-uk",
            b".",
            b"a",
            b"_",
            b"@b.cd",
            "ü".as_bytes(),
            "。".as_bytes(),
            "٣".as_bytes(),
            b"\xff",
            b"\xe4\xb8",
            "\u{301}".as_bytes(),
        ];
        for (pattern, separator) in [
            (EMAIL, &[&b"@"[..], b"@", b"@", b"%40", b"@@"][..]),
            (
                EMAIL_PERCENT_ENCODED,
                &[&b"%40"[..], b"%40", b"%40", b"@", b"%4"][..],
            ),
        ] {
            let template: &[&[&[u8]]] = &[
                noise, local, local, separator, label, dot, label, dot, label, dot, tld, tail,
            ];
            check_find(pattern, template, cases());
        }
    }

    #[test]
    fn jwt_matches_like_the_regex() {
        let noise: &[&[u8]] = &[b" ", b"\"", b"x", b"Bearer ", b".", b"-", b"eyJ"];
        let start: &[&[u8]] = &[b"eyJ", b"eyJ", b"eyJ", b"eyJ", b"eyj", b"xeyJ"];
        let run: &[&[u8]] = &[
            b"hbGciOiJIUzI1NiJ9",
            b"abcdefgh",
            b"abcdefghijk",
            b"abcdefg",
            b"_-",
            b".",
        ];
        let dot: &[&[u8]] = &[b".", b".", b".", b"..", b"-"];
        let tail: &[&[u8]] = &[b"", b"\"", b" ", b"~", b".x"];
        let template: &[&[&[u8]]] = &[noise, start, run, dot, start, run, dot, run, tail];
        check_find(JWT, template, cases());
    }

    #[test]
    fn secret_shapes_match_like_the_regex() {
        let before: &[&[u8]] = &[b" ", b"\"", b"x", b"=", b"_", b"-", b"."];
        let after: &[&[u8]] = &[b"", b" ", b"\"", b"x", b"_", b"-", b".", b"1", b"="];
        let upper: &[&[u8]] = &[
            b"ABCD", b"WXYZ", b"2345", b"ABCD", b"WX27", b"67", b"8", b"A",
        ];
        let aws: &[&[&[u8]]] = &[
            before,
            &[b"AKIA", b"ASIA", b"AKIA", b"AKIB"],
            upper,
            upper,
            upper,
            upper,
            after,
        ];
        check_find(AWS_ACCESS_KEY, aws, cases());

        let ten: &[&[u8]] = &[b"abcdefghij", b"ABCDEFGHIJ", b"0123456789", b"abcdeFGHIJ"];
        let odd: &[&[u8]] = &[b"x", b"_", b"-", b"", b"", b"ab", b"_x"];
        let github: &[&[&[u8]]] = &[
            before,
            &[b"ghp_", b"gho_", b"ghs_", b"ghr_", b"ghx_"],
            ten,
            ten,
            ten,
            odd,
            ten,
            odd,
            after,
        ];
        check_find(GITHUB_TOKEN, github, cases());
        let fine_grained: &[&[&[u8]]] = &[
            before,
            &[b"github_pat_", b"github_pat_", b"github_pa_"],
            ten,
            ten,
            ten,
            ten,
            ten,
            ten,
            ten,
            ten,
            odd,
            after,
        ];
        check_find(GITHUB_FINE_GRAINED_TOKEN, fine_grained, cases());

        let alnum: &[&[u8]] = &[
            b"abcdefghij",
            b"ABCDEFGHIJ",
            b"0123456789",
            b"x",
            b"_",
            b"-",
        ];
        let stripe: &[&[&[u8]]] = &[
            before,
            &[b"sk_live_", b"rk_test_", b"whsec_", b"pk_live_", b"sk_live"],
            alnum,
            alnum,
            alnum,
            after,
        ];
        check_find(STRIPE_SECRET_KEY, stripe, cases());

        let digits: &[&[u8]] = &[b"-123", b"-12345678901", b"-12345678901234567", b"-", b"-1"];
        let tail: &[&[u8]] = &[
            b"-AbCdEfGhIj",
            b"-abcdefghijklmnopqrstuvwxyz",
            b"-12345678901",
            b"x",
        ];
        let slack: &[&[&[u8]]] = &[
            before,
            &[
                b"xoxb",
                b"xoxp",
                b"xoxe",
                b"xoxz",
                b"xoxe.xoxb-1-",
                b"xapp-1-",
                b"xapp-",
            ],
            digits,
            digits,
            digits,
            tail,
            &[b"-A1B2C3", b"-ABCDEFGHIJKLMNOPQ", b"-123456", b""],
            &[b"-1234567", b"-12345", b""],
            &[
                b"-0123456789abcdef0123456789abcdef",
                b"0123456789abcdef",
                b"ab",
                b"",
            ],
            after,
        ];
        check_find(SLACK_TOKEN, slack, cases());

        let body: &[&[u8]] = &[
            b"abcdefghijklmnop",
            b"ABCD-EFGH_",
            b"-",
            b"--",
            b"T3BlbkFJ",
            b"x",
        ];
        let openai: &[&[&[u8]]] = &[
            before,
            &[b"sk-", b"sk-proj-", b"sk-admin-", b"sk-svcacct-", b"sk_"],
            body,
            body,
            &[b"T3BlbkFJ"],
            body,
            body,
            after,
        ];
        check_find(OPENAI_API_KEY, openai, cases());

        let marker: &[&[u8]] = &[
            b" PRIVATE KEY-----",
            b" RSA PRIVATE KEY-----",
            b" PGP PRIVATE KEY BLOCK-----",
            b" CERTIFICATE-----",
            b" ABCDEFGHIJKLMNOPQRSTUVWXYZ PRIVATE KEY-----",
            b" PRIVATE KEY BLOCK----",
        ];
        let pem_body: &[&[u8]] = &[
            b"MIIEowIBAAKCAQEAu1SU1Lf",
            b"\\n",
            b"\n",
            b"abc",
            b"-----",
            "\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}".as_bytes(),
            b"\xff",
            b"\xc3",
            // A header inside a body: after a byte that is not UTF-8, it may start the match.
            b"-----BEGIN PRIVATE KEY-----",
        ];
        let pem: &[&[&[u8]]] = &[
            before,
            &[b"-----BEGIN", b"------BEGIN", b"-----BEGINX"],
            marker,
            pem_body,
            pem_body,
            &[b"-----END", b"-----BEGIN"],
            marker,
            after,
        ];
        check_find(PRIVATE_KEY, pem, cases());
    }

    #[test]
    fn generic_secret_values_match_like_the_regex() {
        let pieces: &[&[u8]] = &[
            b"Bearer ",
            b"Basic ",
            b"Token ",
            b"Bearer",
            b" ",
            b"q8Z!x2Lp",
            b"#",
            b"~",
            b"\t",
            b"\x7f",
            b"a",
            b"\xc3\xa9",
            b"abcdefgh",
        ];
        check_whole(GENERIC_SECRET_VALUE, pieces, 5, cases());
    }

    #[test]
    fn date_values_match_like_the_regex() {
        let pieces: &[&[u8]] = &[
            b"1985-04-12",
            b"12/31/1990",
            b"1.2.1990",
            b"19850412",
            b"1",
            b"12",
            b"1985",
            b"-",
            b"/",
            b".",
            b"T00:00:00",
            b"Z",
            b".000",
            b"T",
            b"x",
            b"0",
        ];
        check_whole(DATE_VALUE, pieces, 4, cases());
    }

    #[test]
    fn the_built_in_rules_use_the_native_patterns() {
        let rules = crate::Rules::builtin();
        let pattern = |id: &str| {
            rules
                .specs()
                .iter()
                .find(|spec| spec.id == id)
                .and_then(|spec| spec.regex.clone())
                .unwrap()
        };
        assert_eq!(pattern("email"), EMAIL);
        assert_eq!(pattern("email-percent-encoded"), EMAIL_PERCENT_ENCODED);
        assert_eq!(pattern("jwt"), JWT);
        assert_eq!(pattern("aws-access-key-id"), AWS_ACCESS_KEY);
        assert_eq!(pattern("github-token"), GITHUB_TOKEN);
        assert_eq!(
            pattern("github-fine-grained-token"),
            GITHUB_FINE_GRAINED_TOKEN
        );
        assert_eq!(pattern("stripe-secret-key"), STRIPE_SECRET_KEY);
        assert_eq!(pattern("slack-token"), SLACK_TOKEN);
        assert_eq!(pattern("openai-api-key"), OPENAI_API_KEY);
        assert_eq!(pattern("private-key"), PRIVATE_KEY);
        assert_eq!(pattern("generic-secret"), GENERIC_SECRET_VALUE);
        assert_eq!(pattern("date-of-birth"), DATE_VALUE);
    }
}
