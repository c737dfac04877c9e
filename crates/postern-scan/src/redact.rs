//! Same-length masking of findings, so `Content-Length` stays right and JSON stays valid.

use crate::Finding;

/// Returns a copy of `input` with every finding's bytes masked, keeping the length.
///
/// Inside a string (JSON, form, text) a value becomes `*`s. A bare JSON number becomes `9`s, so
/// the document still parses. A JSON escape (`\n`, `\"`, `\u00e9`) cut by a finding's edge is
/// masked whole, and a multi-byte UTF-8 character cut by an edge is masked whole, so the output
/// is valid JSON and valid UTF-8 whenever the input was.
pub fn redact(input: &[u8], findings: &[Finding]) -> Vec<u8> {
    let mut output = input.to_vec();
    for finding in findings {
        let (mut start, mut end) = (finding.start.min(input.len()), finding.end.min(input.len()));
        if start >= end {
            continue;
        }
        // An escape that starts before the span and continues into it.
        if let Some(escape_start) = escape_start_covering(input, start) {
            start = escape_start;
        }
        // An escape that starts inside the span and continues past it.
        let mut at = start;
        while at < end {
            if input[at] == b'\\' {
                let escape_len = if input.get(at + 1) == Some(&b'u') {
                    6
                } else {
                    2
                };
                if at + escape_len > end {
                    end = (at + escape_len).min(input.len());
                }
                at += escape_len;
            } else {
                at += 1;
            }
        }
        // Whole UTF-8 characters only.
        while start > 0 && is_utf8_continuation(input[start]) {
            start -= 1;
        }
        while end < input.len() && is_utf8_continuation(input[end]) {
            end += 1;
        }
        let mask = if is_bare_json_number(input, start, end) {
            b'9'
        } else {
            b'*'
        };
        for byte in &mut output[start..end] {
            if byte.is_ascii_digit() || mask == b'*' {
                *byte = mask;
            }
        }
    }
    output
}

fn is_utf8_continuation(byte: u8) -> bool {
    byte & 0b1100_0000 == 0b1000_0000
}

/// If `at` is inside a JSON escape sequence (after its backslash), the backslash's index.
fn escape_start_covering(input: &[u8], at: usize) -> Option<usize> {
    for back in 1..=5usize {
        let Some(candidate) = at.checked_sub(back) else {
            break;
        };
        if input[candidate] != b'\\' {
            continue;
        }
        let run = input[..=candidate]
            .iter()
            .rev()
            .take_while(|&&byte| byte == b'\\')
            .count();
        if run % 2 == 0 {
            continue;
        }
        let escape_len = if input.get(candidate + 1) == Some(&b'u') {
            6
        } else {
            2
        };
        if candidate + escape_len > at {
            return Some(candidate);
        }
    }
    None
}

/// A span of digits (and `-+.eE`) standing as a JSON value outside a string: preceded by `:`,
/// `,` or `[` and followed by `,`, `}` or `]` (blanks skipped).
fn is_bare_json_number(input: &[u8], start: usize, end: usize) -> bool {
    if !input[start..end]
        .iter()
        .all(|byte| byte.is_ascii_digit() || matches!(byte, b'-' | b'+' | b'.' | b'e' | b'E'))
    {
        return false;
    }
    let before = input[..start]
        .iter()
        .rev()
        .find(|byte| !byte.is_ascii_whitespace());
    let after = input[end..].iter().find(|byte| !byte.is_ascii_whitespace());
    matches!(before, Some(b':') | Some(b',') | Some(b'['))
        && matches!(after, Some(b',') | Some(b'}') | Some(b']') | None)
}
