//! The digit detectors: native detectors for digit-shaped classes (cards, IBAN, SSN, phone,
//! IP).
//!
//! The block pass (`blocks.rs`) hands over the few positions worth a look — a digit not glued
//! to a preceding letter, digit or `_`, a digit after a capital letter (IBAN), a hex digit
//! touching `:` (IPv6). What is left is a short *numeric token* (digit groups joined by single
//! ` `, `-`, `.`, `(`, `)`), classified by its shape and then validated (Luhn, mod-97, ranges).
//! Nothing here allocates.

use crate::validators::{
    card_issuer_known, iban_expected_length, iban_valid, luhn_valid, us_ssn_valid,
};
use crate::RawFinding;

/// Rule indexes of the enabled native detectors.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct DigitDetectors {
    pub card: Option<u16>,
    pub iban: Option<u16>,
    pub us_ssn: Option<u16>,
    pub phone: Option<u16>,
    pub ip_address: Option<u16>,
}

impl DigitDetectors {
    pub(crate) fn any(&self) -> bool {
        self.card.is_some()
            || self.iban.is_some()
            || self.us_ssn.is_some()
            || self.phone.is_some()
            || self.ip_address.is_some()
    }
}

const MAX_GROUPS: usize = 8;

#[inline]
pub(crate) fn is_word(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_'
}

#[inline]
fn digit_run_end(input: &[u8], mut at: usize) -> usize {
    while at < input.len() && input[at].is_ascii_digit() {
        at += 1;
    }
    at
}

struct NumericToken {
    start: usize,
    end: usize,
    groups: [u8; MAX_GROUPS],
    group_count: usize,
    /// The single separator byte used between groups, or 0 if mixed / none.
    uniform_separator: u8,
    digit_count: usize,
    has_paren: bool,
}

/// Groups of digits joined by short separators, starting at the digit run at `start`.
fn numeric_token(input: &[u8], start: usize) -> NumericToken {
    let mut token = NumericToken {
        start,
        end: start,
        groups: [0; MAX_GROUPS],
        group_count: 0,
        uniform_separator: 0,
        digit_count: 0,
        has_paren: false,
    };
    let mut at = start;
    let mut first_separator = None;
    let mut mixed = false;
    loop {
        let run_end = digit_run_end(input, at);
        let len = run_end - at;
        token.groups[token.group_count] = len.min(255) as u8;
        token.group_count += 1;
        token.digit_count += len;
        token.end = run_end;
        if token.group_count == MAX_GROUPS || token.digit_count > 24 {
            break;
        }
        // `/` or `_` between groups (`4111/1111/…`, `4111_1111_…`, card numbers pasted from
        // file names and form widgets): a separator only when it is the token's every separator,
        // so a phone number or date followed by `/` keeps its end.
        if let Some(&odd) = input.get(run_end).filter(|&&byte| is_odd_separator(byte)) {
            if first_separator.is_some_and(|previous| previous != odd)
                || !input.get(run_end + 1).is_some_and(u8::is_ascii_digit)
            {
                break;
            }
            first_separator = Some(odd);
            at = run_end + 1;
            continue;
        }
        // Separator: 1 or 2 bytes of ` -.()`, then a digit.
        let mut sep_len = 0;
        while sep_len < 2
            && run_end + sep_len < input.len()
            && matches!(input[run_end + sep_len], b' ' | b'-' | b'.' | b'(' | b')')
        {
            sep_len += 1;
        }
        if sep_len == 0
            || run_end + sep_len >= input.len()
            || !input[run_end + sep_len].is_ascii_digit()
        {
            break;
        }
        if first_separator.is_some_and(is_odd_separator) {
            break;
        }
        let separator = &input[run_end..run_end + sep_len];
        if separator.contains(&b'(') || separator.contains(&b')') {
            token.has_paren = true;
        }
        let key = if sep_len == 1 { separator[0] } else { 0 };
        match first_separator {
            None => first_separator = Some(key),
            Some(previous) if previous != key => mixed = true,
            Some(_) => {}
        }
        at = run_end + sep_len;
    }
    token.uniform_separator = if mixed {
        0
    } else {
        first_separator.unwrap_or(0)
    };
    token
}

/// `/` and `_`: separators only of a token that has no other (see [`numeric_token`]); of the
/// classes, only a card is read from such a token.
#[inline]
fn is_odd_separator(byte: u8) -> bool {
    matches!(byte, b'/' | b'_')
}

impl NumericToken {
    fn groups(&self) -> &[u8] {
        &self.groups[..self.group_count]
    }
}

fn digits_of(input: &[u8], start: usize, end: usize, buffer: &mut [u8; 32]) -> usize {
    let mut count = 0;
    for &byte in &input[start..end] {
        if byte.is_ascii_digit() && count < buffer.len() {
            buffer[count] = byte;
            count += 1;
        }
    }
    count
}

/// Whether the digit run `input[at..run_end]` (`at` not after a digit) is a lone number that
/// cannot be a card (`"id":1234567890`, `/issues/42`): nothing that could join it to a phone
/// number, SSN, IBAN or address is around it, and it has not 13-19 digits. Such a number is
/// skipped whole. Four digits before `/` or `_` and a digit may be a card's first group
/// (`4111/1111/…`; `/issues/4111/labels` is lone, as [`numeric_token`] would not take the `/`);
/// digits after a letter only reach here as an IBAN's check digits.
#[inline(always)]
pub(crate) fn is_lone_short_number(input: &[u8], at: usize, run_end: usize) -> bool {
    let prev = if at > 0 { input[at - 1] } else { b' ' };
    let after = input.get(run_end).copied().unwrap_or(b' ');
    let len = run_end - at;
    let may_join = matches!(after, b' ' | b'-' | b'.' | b'(' | b')')
        || (len == 4
            && is_odd_separator(after)
            && input.get(run_end + 1).is_some_and(u8::is_ascii_digit))
        || matches!(prev, b'+' | b'(' | b'B' | b'b' | b'%')
        || prev.is_ascii_alphabetic();
    !may_join && !(13..=19).contains(&len)
}

/// What the digit pass carries from one candidate to the next.
#[derive(Debug, Default)]
pub(crate) struct DigitState {
    /// Candidates before this position were consumed by an earlier token.
    pub resume: usize,
    ipv6_checked_until: usize,
}

/// Looks at the candidate at `at` and records in `state` from where to look again.
pub(crate) fn examine(
    input: &[u8],
    at: usize,
    touches_colon: bool,
    detectors: DigitDetectors,
    state: &mut DigitState,
    out: &mut Vec<RawFinding>,
) {
    state.resume = examine_at(input, at, touches_colon, detectors, state, out);
}

fn examine_at(
    input: &[u8],
    at: usize,
    touches_colon: bool,
    detectors: DigitDetectors,
    state: &mut DigitState,
    out: &mut Vec<RawFinding>,
) -> usize {
    let n = input.len();
    // IPv6: a hex span around this position that contains ':'.
    if let Some(rule) = detectors.ip_address {
        if touches_colon && at >= state.ipv6_checked_until {
            if let Some((start, end, valid)) = ipv6_candidate(input, at) {
                state.ipv6_checked_until = end;
                if valid {
                    out.push(RawFinding { rule, start, end });
                    return end;
                }
            }
        }
    }
    if !input[at].is_ascii_digit() || (at > 0 && input[at - 1].is_ascii_digit()) {
        return at + 1;
    }
    let run_end = digit_run_end(input, at);
    let prev = if at > 0 { input[at - 1] } else { b' ' };

    if is_lone_short_number(input, at, run_end) {
        return run_end;
    }

    // IBAN: two letters of one case right before the check digits.
    if let Some(rule) = detectors.iban {
        if at >= 2
            && ((input[at - 1].is_ascii_uppercase() && input[at - 2].is_ascii_uppercase())
                || (input[at - 1].is_ascii_lowercase() && input[at - 2].is_ascii_lowercase()))
            && (at < 3 || !is_word(input[at - 3]))
        {
            if let Some(end) = iban_at(input, at - 2) {
                out.push(RawFinding {
                    rule,
                    start: at - 2,
                    end,
                });
                return end;
            }
        }
    }

    if prev == b'%'
        && run_end - at == 1
        && input[at] == b'2'
        && input
            .get(run_end)
            .is_some_and(|b| b.eq_ignore_ascii_case(&b'B'))
    {
        // `%2B` (a percent-encoded `+`): the number starts after it.
        return run_end + 1;
    }
    // Part of an identifier: `ch_3Mm`, `9f86d0`, `ORD-2024-0001`, `v1.2`, `1.5`.
    let percent_plus = prev.eq_ignore_ascii_case(&b'B')
        && at >= 3
        && input[at - 3] == b'%'
        && input[at - 2] == b'2';
    let glued_before = is_word(prev)
        || (matches!(prev, b'-' | b'.' | b'/' | b'#') && at >= 2 && is_word(input[at - 2]));
    if let Some(rule) = detectors.card.filter(|_| !glued_before) {
        if let Some(end) = json_float_card(input, at, run_end) {
            out.push(RawFinding {
                rule,
                start: at,
                end,
            });
            return end;
        }
    }
    // `_` then a digit is a separator the token may take (`4111_1111_1111_1111`).
    let glued_after = run_end < n
        && (input[run_end].is_ascii_alphabetic()
            || (input[run_end] == b'_' && !input.get(run_end + 1).is_some_and(u8::is_ascii_digit)));
    if (glued_before && !percent_plus) || glued_after {
        return run_end;
    }

    let token = numeric_token(input, at);
    let next = if token.end < n {
        input[token.end]
    } else {
        b' '
    };
    if is_word(next) || (next == b'.' && token.end + 1 < n && input[token.end + 1].is_ascii_digit())
    {
        return token.end;
    }
    let plus = prev == b'+';
    let open_paren = prev == b'(';
    let plus_len = if percent_plus { 3 } else { usize::from(plus) };
    classify(input, &token, plus_len, open_paren, detectors, out);
    token.end.max(at + 1)
}

/// A card number written as a JSON number in floating-point form, as serialisers that hold it
/// in a double write it: `4111111111111111.0` (Python), `4.111111111111111E15` (Java,
/// Jackson). The JSON number starting at `at` (its integer part ends at `run_end`), standing as
/// a JSON value (after `:`, `,` or `[`; before `,`, `}`, `]`, a blank or the end), whose value
/// is an integer of 13–19 digits with a known issuer prefix that passes Luhn: returns the
/// number's end. The integer form is an ordinary digit run and is read as one.
fn json_float_card(input: &[u8], at: usize, run_end: usize) -> Option<usize> {
    if !matches!(input.get(run_end), Some(b'.' | b'e' | b'E')) {
        return None;
    }
    let before = input[..at]
        .iter()
        .rev()
        .find(|byte| !byte.is_ascii_whitespace());
    if !matches!(before, Some(b':' | b',' | b'[')) {
        return None;
    }
    let mut end = run_end;
    let fraction = if input.get(end) == Some(&b'.') {
        let fraction_end = digit_run_end(input, end + 1);
        let fraction = (end + 1, fraction_end);
        end = fraction_end;
        fraction
    } else {
        (end, end)
    };
    if fraction.0 == fraction.1 && input.get(end) == Some(&b'.') {
        return None;
    }
    let mut exponent: i64 = 0;
    if matches!(input.get(end), Some(b'e' | b'E')) {
        end += 1;
        let negative = input.get(end) == Some(&b'-');
        if matches!(input.get(end), Some(b'-' | b'+')) {
            end += 1;
        }
        let exponent_end = digit_run_end(input, end);
        if exponent_end == end || exponent_end - end > 3 {
            return None;
        }
        let magnitude = input[end..exponent_end]
            .iter()
            .fold(0i64, |value, &digit| value * 10 + i64::from(digit - b'0'));
        exponent = if negative { -magnitude } else { magnitude };
        end = exponent_end;
    }
    if !input
        .get(end)
        .is_none_or(|&byte| matches!(byte, b',' | b'}' | b']') || byte.is_ascii_whitespace())
    {
        return None;
    }
    // The integer: the mantissa's digits, shifted by the exponent less the fraction's length;
    // a negative shift drops digits that must be zeros (`….0`).
    let mut digits = [0u8; 32];
    let mut count = 0;
    for &digit in input[at..run_end]
        .iter()
        .chain(&input[fraction.0..fraction.1])
    {
        if count == 0 && digit == b'0' {
            continue;
        }
        *digits.get_mut(count)? = digit;
        count += 1;
    }
    let shift = exponent - (fraction.1 - fraction.0) as i64;
    if shift >= 0 {
        for _ in 0..shift {
            *digits.get_mut(count)? = b'0';
            count += 1;
        }
    } else {
        let dropped = usize::try_from(-shift).ok()?;
        let kept = count.checked_sub(dropped)?;
        if digits[kept..count].iter().any(|&digit| digit != b'0') {
            return None;
        }
        count = kept;
    }
    let digits = &digits[..count];
    ((13..=19).contains(&count) && card_issuer_known(digits) && luhn_valid(digits)).then_some(end)
}

fn classify(
    input: &[u8],
    token: &NumericToken,
    plus_len: usize,
    open_paren: bool,
    detectors: DigitDetectors,
    out: &mut Vec<RawFinding>,
) {
    let groups = token.groups();
    let sep = token.uniform_separator;
    let plus = plus_len > 0;
    let mut digits = [0u8; 32];

    // Payment card.
    if let Some(rule) = detectors.card {
        if !plus && !open_paren && !token.has_paren && (13..=19).contains(&token.digit_count) {
            let shape_ok = groups.len() == 1
                || (matches!(sep, b' ' | b'-' | b'.' | b'/' | b'_')
                    && matches!(
                        groups,
                        [4, 4, 4, 4]
                            | [4, 6, 5]
                            | [4, 6, 4]
                            | [4, 4, 4, 4, 3]
                            | [4, 4, 4, 1]
                            | [4, 4, 4, 2]
                            | [4, 4, 4, 3]
                            | [4, 4, 5]
                            | [4, 4, 4, 4, 2]
                            | [4, 4, 4, 4, 1]
                    ));
            if shape_ok {
                let count = digits_of(input, token.start, token.end, &mut digits);
                if card_issuer_known(&digits[..count]) && luhn_valid(&digits[..count]) {
                    out.push(RawFinding {
                        rule,
                        start: token.start,
                        end: token.end,
                    });
                    return;
                }
            }
        }
    }

    // US SSN: AAA-GG-SSSS.
    if let Some(rule) = detectors.us_ssn {
        if !plus && !open_paren && sep == b'-' && groups == [3, 2, 4] {
            if us_ssn_valid(&input[token.start..token.end]) {
                out.push(RawFinding {
                    rule,
                    start: token.start,
                    end: token.end,
                });
            }
            return;
        }
    }

    // IPv4 dotted quad.
    if let Some(rule) = detectors.ip_address {
        if !plus && sep == b'.' && groups.len() == 4 && groups.iter().all(|&g| (1..=3).contains(&g))
        {
            // The same rule as the regex path's validator (leading-zero octets are refused).
            if crate::validators::ip_address_valid(&input[token.start..token.end]) {
                out.push(RawFinding {
                    rule,
                    start: token.start,
                    end: token.end,
                });
            }
            return;
        }
    }

    // Phone numbers; never from a token joined by `/` or `_` (`12/31/1990`, `2024_01_15`).
    if let Some(rule) = detectors.phone.filter(|_| !is_odd_separator(sep)) {
        let first_digit = input[token.start];
        if plus {
            // E.164, possibly with grouping: +1 415 555 2671, +44 20 7946 0958, +14155552671.
            if (8..=15).contains(&token.digit_count)
                && first_digit != b'0'
                && (groups.len() == 1 || groups.len() >= 3 || token.digit_count >= 10)
            {
                out.push(RawFinding {
                    rule,
                    start: token.start - plus_len,
                    end: token.end,
                });
            }
            return;
        }
        if let Some(start) = double_zero_international(input, token) {
            out.push(RawFinding {
                rule,
                start,
                end: token.end,
            });
            return;
        }
        // US national: (415) 555-2671, 415-555-2671, 415.555.2671, 415 555 2671.
        let mut exchange = token.start + 3;
        while exchange < token.end && !input[exchange].is_ascii_digit() {
            exchange += 1;
        }
        if groups == [3, 3, 4]
            && (b'2'..=b'9').contains(&first_digit)
            && (b'2'..=b'9').contains(&input[exchange])
        {
            let paren_ok = if open_paren {
                token.has_paren
            } else {
                !token.has_paren && matches!(sep, b'-' | b'.' | b' ')
            };
            if paren_ok {
                let start = if open_paren {
                    token.start - 1
                } else {
                    token.start
                };
                out.push(RawFinding {
                    rule,
                    start,
                    end: token.end,
                });
            }
            return;
        }
        // Trunk-prefixed national numbers: 020 7946 0958, 01 23 45 67 89, 030 12345678.
        if first_digit == b'0'
            && !open_paren
            && !token.has_paren
            && matches!(sep, b' ' | b'-')
            && (10..=11).contains(&token.digit_count)
            && (2..=5).contains(&groups.len())
            && groups.iter().all(|&g| g >= 2)
            && groups[0] <= 5
            && input.get(token.start + 1) != Some(&b'0')
        {
            out.push(RawFinding {
                rule,
                start: token.start,
                end: token.end,
            });
        }
    }
}

/// An international number dialled with `00` for `+` (`0044 20 7946 0958`,
/// `00 44 20 7946 0958`, `001-415-555-2671`): grouped (at least three groups, one joiner of
/// ` `, `-` or `.`), the `00` and an assigned country code making up the first group (or `00`
/// alone, then the code), and 8–15 digits after the `00`, as after a `+`. Without the grouping
/// and the code the shape is any zero-padded number (`0012345678`), so neither is optional.
/// Returns the number's start.
fn double_zero_international(input: &[u8], token: &NumericToken) -> Option<usize> {
    let groups = token.groups();
    if input.get(token.start..token.start + 2) != Some(b"00")
        || token.has_paren
        || !matches!(token.uniform_separator, b' ' | b'-' | b'.')
        || groups.len() < 3
        || !(10..=17).contains(&token.digit_count)
    {
        return None;
    }
    let code = match groups[0] {
        2 => {
            let second = token.start + 3;
            input.get(second..second + usize::from(groups[1]))?
        }
        3..=5 => &input[token.start + 2..token.start + usize::from(groups[0])],
        _ => return None,
    };
    country_code_assigned(code).then_some(token.start)
}

/// Whether `code` is an assigned E.164 country calling code. Codes are prefix-free: a
/// three-digit code starts with two digits that are neither a two-digit code nor `1…`/`7…`;
/// zones of spare codes (`28x`, `83x`, `89x`) are left out.
fn country_code_assigned(code: &[u8]) -> bool {
    let value = code
        .iter()
        .fold(0u32, |value, &digit| value * 10 + u32::from(digit - b'0'));
    match code.len() {
        1 => matches!(value, 1 | 7),
        2 => matches!(
            value,
            20 | 27 | 30..=34 | 36 | 39 | 40 | 41 | 43..=49 | 51..=58 | 60..=66 | 81 | 82 | 84
                | 86 | 90..=95 | 98
        ),
        3 => matches!(
            value / 10,
            21..=26 | 29 | 35 | 37 | 38 | 42 | 50 | 59 | 67..=69 | 80 | 85 | 87 | 88 | 96 | 97
                | 99
        ),
        _ => false,
    }
}

/// An IBAN starting at `start` (country code), compact or in groups of four: returns its end.
/// Written in capitals, or all in lower case (`de89 3704 0044 0532 0130 00`, as some forms and
/// databases keep it): the BBAN's letters are in the country code's case, so a mixed-case
/// token (base64, an id) is not read as one.
fn iban_at(input: &[u8], start: usize) -> Option<usize> {
    let country = [
        input[start].to_ascii_uppercase(),
        input[start + 1].to_ascii_uppercase(),
    ];
    let expected = iban_expected_length(&country)?;
    let lower_case = input[start].is_ascii_lowercase();
    let mut at = start;
    let mut count = 0;
    while count < expected && at < input.len() {
        let byte = input[at];
        let letter = if lower_case {
            byte.is_ascii_lowercase()
        } else {
            byte.is_ascii_uppercase()
        };
        if byte.is_ascii_digit() || letter {
            count += 1;
            at += 1;
        } else if byte == b' '
            && count % 4 == 0
            && count > 0
            && at + 1 < input.len()
            && input[at + 1].is_ascii_alphanumeric()
        {
            at += 1;
        } else {
            return None;
        }
    }
    if count != expected || (at < input.len() && is_word(input[at])) {
        return None;
    }
    iban_valid(&input[start..at]).then_some(at)
}

#[inline]
fn is_ipv6_byte(byte: u8) -> bool {
    byte.is_ascii_hexdigit() || byte == b':' || byte == b'.'
}

/// A span of hex digits, `:` and `.` around `at` with at least two colons: `(start, end, valid)`.
/// Returns `None` quickly when no colon is adjacent.
fn ipv6_candidate(input: &[u8], at: usize) -> Option<(usize, usize, bool)> {
    // Quick reject: a ':' within 5 bytes on either side, over hex digits only.
    let mut probe = at;
    while probe < input.len() && probe < at + 5 && input[probe].is_ascii_hexdigit() {
        probe += 1;
    }
    let colon_after = probe < input.len() && input[probe] == b':';
    let mut back = at;
    while back > 0 && at - back < 5 && input[back - 1].is_ascii_hexdigit() {
        back -= 1;
    }
    let colon_before = back > 0 && input[back - 1] == b':';
    if !colon_after && !colon_before {
        return None;
    }
    let mut start = at;
    while start > 0 && at - start < 45 && is_ipv6_byte(input[start - 1]) {
        start -= 1;
    }
    let mut end = at;
    while end < input.len() && end - start < 45 && is_ipv6_byte(input[end]) {
        end += 1;
    }
    // Trim a trailing '.' or a lone trailing ':' (end of sentence, `key:`).
    while end > start && input[end - 1] == b'.' {
        end -= 1;
    }
    let span = &input[start..end];
    let colons = span.iter().filter(|&&b| b == b':').count();
    let compressed = span.windows(2).any(|pair| pair == b"::");
    if colons < 2 || !(compressed || colons == 7) {
        return Some((start, end, false));
    }
    let before_ok = start == 0 || !is_word(input[start - 1]);
    let after_ok = end == input.len() || !is_word(input[end]);
    let valid = before_ok
        && after_ok
        && std::str::from_utf8(span)
            .ok()
            .and_then(|text| text.parse::<std::net::Ipv6Addr>().ok())
            .is_some()
        && span.iter().any(u8::is_ascii_digit);
    Some((start, end, valid))
}
