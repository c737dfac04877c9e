//! A second look at characters that stand for ASCII ones: full-width forms and HTML numeric
//! character references.
//!
//! `４１１１ １１１１ １１１１ １１１１` (full-width digits, as East Asian input methods type
//! them) and `&#52;&#49;&#49;&#49;…` (an HTML-escaped card number) are the same values as their
//! ASCII spelling to whoever reads them, but no detector looks at them as sent. When a body
//! holds such a digit or `@`, the scanner also scans a copy with every such character folded
//! to ASCII — the full-width forms U+FF01–U+FF5E and the ideographic space U+3000 as NFKC
//! folds them, and `&#NN;` / `&#xHH;` of a printable ASCII character — and reports what only
//! the copy holds over the original bytes (so a redaction masks the whole spelling). Folding
//! only on a digit or `@` keeps the cost to bodies that can hide a number or an address: CJK
//! text full of full-width punctuation alone is not scanned twice.
//!
//! Named references (`&commat;`), other Unicode digits (Arabic-Indic, Devanagari, …) and
//! other compatibility forms are not folded.

/// The copy of `input` with full-width forms and numeric references of ASCII characters
/// folded, and for each byte of the copy the offset in `input` where its spelling starts, then
/// `input.len()`: a range `a..b` of the copy is `origin[a]..origin[b]` of `input`. `None` when
/// `input` spells no digit or `@` so.
#[cfg(test)]
pub(crate) fn fold(input: &[u8]) -> Option<(Vec<u8>, Vec<usize>)> {
    if !spells_digit_or_at(input) {
        return None;
    }
    Some(fold_spelled(input))
}

/// [`fold`] of an input known to spell a digit or `@` so.
pub(crate) fn fold_spelled(input: &[u8]) -> (Vec<u8>, Vec<usize>) {
    // Every spelling folded starts with one of these (the ideographic space with 0xE3).
    let first = memchr::memchr3(0xEF, 0xE3, b'&', input).unwrap_or(input.len());
    let mut folded = Vec::with_capacity(input.len());
    let mut origin = Vec::with_capacity(input.len() + 1);
    folded.extend_from_slice(&input[..first]);
    origin.extend(0..first);
    let mut at = first;
    while at < input.len() {
        origin.push(at);
        match folded_at(input, at) {
            Some((byte, len)) => {
                folded.push(byte);
                at += len;
            }
            None => {
                folded.push(input[at]);
                at += 1;
            }
        }
    }
    origin.push(input.len());
    (folded, origin)
}

/// Whether `input` spells a digit or `@` as a full-width form or a numeric reference. One
/// `memchr2` for the lead byte of U+FF01–U+FF5E and the `#` of `&#`: not `&`, which stands in
/// every pair of a form and would stop the search at each.
pub(crate) fn spells_digit_or_at(input: &[u8]) -> bool {
    memchr::memchr2_iter(0xEF, b'#', input).any(|at| spells_digit_or_at_from(input, at))
}

/// [`spells_digit_or_at`] at the `0xEF` and `#` bytes of one 64-byte block of the block pass
/// (`blocks.rs`), which starts at `block_start` and has them at the bits of `mask`.
#[cold]
pub(crate) fn spells_digit_or_at_any(input: &[u8], block_start: usize, mut mask: u64) -> bool {
    while mask != 0 {
        let at = block_start + mask.trailing_zeros() as usize;
        mask &= mask - 1;
        if at < input.len() && spells_digit_or_at_from(input, at) {
            return true;
        }
    }
    false
}

/// Whether the `0xEF` or `#` at `at` starts (or, `#`, is the second byte of) a spelling of a
/// digit or `@`.
#[inline]
fn spells_digit_or_at_from(input: &[u8], at: usize) -> bool {
    let start = match input[at] {
        b'#' if at > 0 && input[at - 1] == b'&' => at - 1,
        b'#' => return false,
        _ => at,
    };
    matches!(folded_at(input, start), Some((b'0'..=b'9' | b'@', _)))
}

/// The ASCII byte spelled at `at`, and the spelling's length: a full-width form, the
/// ideographic space, or a numeric character reference of a printable ASCII character.
#[inline]
fn folded_at(input: &[u8], at: usize) -> Option<(u8, usize)> {
    match input.get(at..at + 3).unwrap_or_default() {
        // U+FF01..U+FF3F and U+FF40..U+FF5E: U+FF01 + n is `!` + n.
        &[0xEF, 0xBC, low @ 0x81..=0xBF] => Some((low - 0x81 + b'!', 3)),
        &[0xEF, 0xBD, low @ 0x80..=0x9E] => Some((low - 0x80 + b'`', 3)),
        [0xE3, 0x80, 0x80] => Some((b' ', 3)),
        [b'&', b'#', _] => numeric_reference(input, at),
        _ => None,
    }
}

/// `&#NN;` or `&#xHH;` at `at` naming a printable ASCII character (space to `~`), with its
/// closing `;`.
fn numeric_reference(input: &[u8], at: usize) -> Option<(u8, usize)> {
    let (radix, digits_start) = match input.get(at + 2) {
        Some(b'x' | b'X') => (16, at + 3),
        _ => (10, at + 2),
    };
    let mut value = 0u32;
    let mut end = digits_start;
    while let Some(digit) = input
        .get(end)
        .and_then(|&byte| char::from(byte).to_digit(radix))
    {
        value = value * radix + digit;
        end += 1;
        if end - digits_start > 7 {
            return None;
        }
    }
    if end == digits_start || input.get(end) != Some(&b';') {
        return None;
    }
    let byte = u8::try_from(value)
        .ok()
        .filter(|byte| (0x20..=0x7E).contains(byte))?;
    Some((byte, end + 1 - at))
}

#[cfg(test)]
mod tests {
    use super::fold;

    #[test]
    fn full_width_forms_and_references_are_folded_where_they_stand() {
        assert_eq!(fold(b"plain 4111 and \xEF\xBC\x8C only"), None);
        assert_eq!(fold(b"a=1&b=2&#39;x&#;&#x;"), None);
        let input = "ｐ＝４１ &#x34;&#49;x&#64 &#9;".as_bytes();
        let (folded, origin) = fold(input).unwrap();
        assert_eq!(folded, b"p=41 41x&#64 &#9;");
        assert_eq!(origin.len(), folded.len() + 1);
        // `4` of `&#x34;`, `1` of `&#49;`: each byte maps to where its spelling starts.
        assert_eq!(&input[origin[5]..origin[7]], b"&#x34;&#49;");
        assert_eq!(&input[origin[0]..origin[4]], "ｐ＝４１".as_bytes());
        assert_eq!(origin[folded.len()], input.len());
        let (folded, _) = fold("\u{3000}～０".as_bytes()).unwrap();
        assert_eq!(folded, b" ~0");
    }
}
