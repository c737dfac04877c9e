//! Hand-written compact JSON output for the hot paths (audit records, call events), byte for
//! byte what `serde_json::to_writer` writes for the same values: strings quoted with only `"`,
//! `\` and control characters escaped (`\b \f \n \r \t`, others as `\u00xx` in lower-case hex),
//! integers in shortest decimal form. serde's generic machinery costs several thousand
//! instructions per record; these helpers write straight into the output buffer.

/// Whether `byte` must be escaped inside a JSON string.
#[inline]
fn needs_escape(byte: u8) -> bool {
    byte < 0x20 || byte == b'"' || byte == b'\\'
}

/// Appends `value` as a JSON string (quotes included).
#[inline]
pub fn push_str(out: &mut Vec<u8>, value: &str) {
    out.push(b'"');
    let bytes = value.as_bytes();
    // No early exit: the whole scan vectorizes, and the strings here are short.
    if !bytes
        .iter()
        .fold(false, |found, &byte| found | needs_escape(byte))
    {
        out.extend_from_slice(bytes);
    } else {
        push_escaped(out, bytes);
    }
    out.push(b'"');
}

#[cold]
fn push_escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut start = 0;
    for (i, &byte) in bytes.iter().enumerate() {
        if !needs_escape(byte) {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        match byte {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\x08' => out.extend_from_slice(b"\\b"),
            b'\x0c' => out.extend_from_slice(b"\\f"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(byte >> 4)],
                HEX[usize::from(byte & 0xf)],
            ]),
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// Appends an unsigned integer in shortest decimal form.
#[inline]
pub fn push_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

/// Appends `value` as a JSON string, or `null`.
#[inline]
pub fn push_opt_str(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(value) => push_str(out, value),
        None => out.extend_from_slice(b"null"),
    }
}

/// Appends `value` as an integer, or `null`.
#[inline]
pub fn push_opt_u64(out: &mut Vec<u8>, value: Option<u64>) {
    match value {
        Some(value) => push_u64(out, value),
        None => out.extend_from_slice(b"null"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped_exactly_as_serde_json_does() {
        let mut samples: Vec<String> = vec![
            String::new(),
            "plain".into(),
            "quote \" and backslash \\".into(),
            "tab\tnew\nline\rcr\x08bs\x0cff".into(),
            "\u{0}\u{1}\u{1f}\u{7f}".into(),
            "ünïcödé ✓ 𝄞".into(),
            "/v1/charges/{id}".into(),
        ];
        // Every single character below 0x80, alone and between text.
        for byte in 0u8..0x80 {
            let c = char::from(byte);
            samples.push(c.to_string());
            samples.push(format!("a{c}b{c}"));
        }
        for sample in samples {
            let mut ours = Vec::new();
            push_str(&mut ours, &sample);
            assert_eq!(
                String::from_utf8(ours).unwrap(),
                serde_json::to_string(&sample).unwrap(),
                "{sample:?}"
            );
        }
    }

    #[test]
    fn integers_and_nulls_match_serde_json() {
        for value in [0u64, 1, 9, 10, 99, 1_000_000, u64::from(u32::MAX), u64::MAX] {
            let mut ours = Vec::new();
            push_opt_u64(&mut ours, Some(value));
            assert_eq!(ours, serde_json::to_vec(&value).unwrap());
        }
        let mut ours = Vec::new();
        push_opt_u64(&mut ours, None);
        push_opt_str(&mut ours, None);
        assert_eq!(ours, b"nullnull");
    }
}
