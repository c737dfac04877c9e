//! The caller's token written with escapes in a request body.
//!
//! A vendor reads a form body percent-decoded (`key=%70st_…`) and a JSON body with its string
//! escapes undone (`"key": "\u0070st_…"`), so a token written either way reaches it as surely as
//! one written plainly. [`EscapedToken`] reads a body as it streams with both kinds of escape
//! undone — whatever the body's type, since a type can be misstated and the token is a random
//! string no body holds by chance — and finds the token in what that gives. Until the body
//! holds an escape character (`%` or `\`), what it gives is the body as sent, which
//! [`crate::body::ForwardBody`] searches already: a body without one costs one `memchr2` pass
//! per frame.

use memchr::memmem;

use crate::body::appended_finds;

/// An escape begun at the end of what was read so far, with the bytes of it read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    None,
    /// `%` and, once read, its first hex digit.
    Percent(Option<u8>),
    /// `\`.
    Backslash,
    /// `\u` and the first `digits` of its hex digits.
    Unicode {
        read: [u8; 3],
        digits: u8,
    },
}

/// Reads a body for the caller's token with its percent-encoding and JSON string escapes
/// undone ([module docs](self)).
pub(crate) struct EscapedToken {
    finder: memmem::Finder<'static>,
    /// The last `token length - 1` bytes of the body as unescaped so far: a token split across
    /// frames is still found.
    tail: Vec<u8>,
    pending: Pending,
    /// Whether the body held an escape character yet.
    escaped: bool,
    /// The unescaped bytes of the frame being read (kept for its allocation).
    out: Vec<u8>,
}

impl EscapedToken {
    /// For a non-empty `token`.
    pub(crate) fn new(token: &[u8]) -> Self {
        debug_assert!(!token.is_empty());
        EscapedToken {
            finder: memmem::Finder::new(token).into_owned(),
            tail: Vec::new(),
            pending: Pending::None,
            escaped: false,
            out: Vec::new(),
        }
    }

    /// Reads the body's next `piece`: whether the token, its escapes undone, now stands in
    /// what was read.
    pub(crate) fn read(&mut self, piece: &[u8]) -> bool {
        let keep = self.finder.needle().len() - 1;
        if !self.escaped {
            if memchr::memchr2(b'%', b'\\', piece).is_none() {
                // Unescaped, the body is as sent so far: only its tail is kept.
                self.tail
                    .extend_from_slice(&piece[piece.len().saturating_sub(keep)..]);
                self.tail.drain(..self.tail.len().saturating_sub(keep));
                return false;
            }
            self.escaped = true;
        }
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        self.pending = unescape(self.pending, piece, &mut out);
        let found = appended_finds(&self.finder, &mut self.tail, &out);
        self.tail.drain(..self.tail.len().saturating_sub(keep));
        self.out = out;
        found
    }

    /// Whether more of the body could complete the token from what was read so far in a way
    /// the body as sent does not show: an escape was read, and the body read unescaped ends
    /// with the token's start, or within an escape. Frames read since are held back by
    /// [`crate::body::ForwardBody`] (as sent, the token's start may be written in many more
    /// bytes than its own length).
    pub(crate) fn in_progress(&self) -> bool {
        if !self.escaped {
            return false;
        }
        if self.pending != Pending::None {
            return true;
        }
        let needle = self.finder.needle();
        (1..=self.tail.len().min(needle.len() - 1)).any(|len| self.tail.ends_with(&needle[..len]))
    }
}

/// Appends `piece` to `out` with its escapes undone, after an escape `pending` from the piece
/// before; returns the escape left pending at its end. `%HH` is the byte `HH`; `\uHHHH` the
/// code point's UTF-8 (a lone surrogate: U+FFFD); `\"`, `\\`, `\/`, `\b`, `\f`, `\n`, `\r`,
/// `\t` their characters. Anything else is kept as it stands — an escape that breaks off
/// included, with the byte that broke it read afresh.
fn unescape(mut pending: Pending, piece: &[u8], out: &mut Vec<u8>) -> Pending {
    for &byte in piece {
        pending = match (pending, byte) {
            (Pending::None, b'%') => Pending::Percent(None),
            (Pending::None, b'\\') => Pending::Backslash,
            (Pending::None, _) => {
                out.push(byte);
                Pending::None
            }
            (Pending::Percent(None), _) if hex(byte).is_some() => Pending::Percent(Some(byte)),
            (Pending::Percent(Some(first)), _) if hex(byte).is_some() => {
                out.push(hex_value(&[first, byte]) as u8);
                Pending::None
            }
            (Pending::Backslash, b'u') => Pending::Unicode {
                read: [0; 3],
                digits: 0,
            },
            (Pending::Backslash, b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                out.push(match byte {
                    b'b' => 0x08,
                    b'f' => 0x0c,
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    _ => byte,
                });
                Pending::None
            }
            (Pending::Unicode { read, digits: 3 }, _) if hex(byte).is_some() => {
                let code = hex_value(&[read[0], read[1], read[2], byte]);
                let character = char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER);
                out.extend_from_slice(character.encode_utf8(&mut [0; 4]).as_bytes());
                Pending::None
            }
            (Pending::Unicode { mut read, digits }, _) if hex(byte).is_some() => {
                read[usize::from(digits)] = byte;
                Pending::Unicode {
                    read,
                    digits: digits + 1,
                }
            }
            // An escape broken off: as written, and the byte that broke it read afresh.
            (broken, _) => {
                match broken {
                    Pending::Percent(first) => {
                        out.push(b'%');
                        out.extend(first);
                    }
                    Pending::Backslash => out.push(b'\\'),
                    Pending::Unicode { read, digits } => {
                        out.extend_from_slice(b"\\u");
                        out.extend_from_slice(&read[..usize::from(digits)]);
                    }
                    // (Matched above: a byte after no escape is never one that breaks it.)
                    Pending::None => {}
                }
                unescape(Pending::None, &[byte], out)
            }
        };
    }
    pending
}

fn hex(byte: u8) -> Option<u32> {
    char::from(byte).to_digit(16)
}

/// The value of hex digits ([`hex`] said each is one).
fn hex_value(digits: &[u8]) -> u32 {
    digits
        .iter()
        .fold(0, |value, &digit| value << 4 | hex(digit).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &[u8] = b"pst_0123456789abcdefghij";

    fn unescaped(text: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        assert_eq!(unescape(Pending::None, text, &mut out), Pending::None);
        out
    }

    /// Every byte of `text` percent-encoded, or JSON-escaped, in upper or lower case.
    fn encodings(text: &[u8]) -> Vec<Vec<u8>> {
        let percent = |upper: bool| {
            text.iter()
                .flat_map(|byte| match upper {
                    true => format!("%{byte:02X}").into_bytes(),
                    false => format!("%{byte:02x}").into_bytes(),
                })
                .collect()
        };
        let json = text
            .iter()
            .flat_map(|byte| format!("\\u{:04x}", byte).into_bytes())
            .collect();
        // One character escaped in each way, the rest as they stand.
        let mixed = [&b"%70"[..], b"\\u0073", b"t_", &text[4..]].concat();
        vec![percent(true), percent(false), json, mixed]
    }

    #[test]
    fn escapes_are_undone_as_vendors_undo_them() {
        assert_eq!(unescaped(b"a%41%2fb"), b"aA/b");
        assert_eq!(unescaped(br#"\u0041\/\"\\\n\t"#), b"A/\"\\\n\t");
        assert_eq!(unescaped(br"\u00e9\u20ac"), "é€".as_bytes());
        assert_eq!(unescaped(br"\ud83d"), "\u{fffd}".as_bytes());
        // Escapes that break off stand as written, and what broke them is read afresh.
        assert_eq!(unescaped(b"%%41%4g"), b"%A%4g");
        assert_eq!(unescaped(br"\u00%41\q\\u0041"), br"\u00A\q\u0041");
    }

    #[test]
    fn a_token_escaped_either_way_is_found_wherever_the_frames_split_it() {
        let start = br#"{"amount": 1, "key": ""#;
        for escaped in encodings(TOKEN) {
            let body = [&start[..], &escaped, b"\"}"].concat();
            for split in 0..=body.len() {
                let mut reading = EscapedToken::new(TOKEN);
                let found = reading.read(&body[..split]) || reading.read(&body[split..]);
                assert!(found, "{} split at {split}", String::from_utf8_lossy(&body));
            }
            // Part-way through the escaped token, more of the body may complete it: the frames
            // read so far are to be held back.
            for split in start.len() + 1..start.len() + escaped.len() {
                assert!(
                    reading_after(&body[..split]).in_progress(),
                    "split at {split}"
                );
            }
        }
    }

    fn reading_after(text: &[u8]) -> EscapedToken {
        let mut reading = EscapedToken::new(TOKEN);
        assert!(!reading.read(text));
        reading
    }

    #[test]
    fn what_a_vendor_would_not_read_as_the_token_is_not_it() {
        // An escaped backslash before `u0070`: JSON reads `\u0070st_…` as text.
        let body = [&br#"{"k": "\\u0070"#[..], &TOKEN[1..], b"\"}"].concat();
        assert!(!EscapedToken::new(TOKEN).read(&body));
        // The token with one character missing, escaped.
        let mut short = encodings(&TOKEN[..TOKEN.len() - 1]).remove(0);
        short.extend_from_slice(b"&x=1");
        assert!(!EscapedToken::new(TOKEN).read(&short));
        // A body without escapes is left to the search as sent; ending with the token's
        // start, it is not "in progress" here (the search as sent holds its tail back).
        let mut plain = reading_after(b"amount=1&key=pst_01");
        assert!(!plain.in_progress());
        assert!(!plain.read(b"x"));
        // Once an escape is read, an unescaped tail that starts the token is.
        assert!(reading_after(b"a=%41&key=pst_01").in_progress());
        assert!(reading_after(b"a=%41&key=%7").in_progress());
        assert!(!reading_after(b"a=%41&key=x").in_progress());
    }
}
