//! A caller token written with escapes in a request body.
//!
//! A vendor reads a form body percent-decoded (`key=%70st_…`), a JSON body with its string
//! escapes undone (`"key": "\u0070st_…"`), and an XML body (a SOAP API's) with its character
//! references undone (`<key>&#112;st_…`), so a token written any of these ways reaches it as
//! surely as one written plainly. [`EscapedToken`] reads a body as it streams in the three
//! readings — each kind of escape undone on its own, as a vendor reads one kind (undone together,
//! `\t%30…` would read as a tab and `0…`, where a form reads `\t0…`) — whatever the body's type,
//! since a type can be misstated and the token is a random string no body holds by chance, and
//! finds in each what the body as sent is searched for ([`Needles`]: the caller's own token,
//! and what looks like any caller token `postern` made). Until a reading's escape character (`%`, `\`,
//! or for XML `&#`) appears, that reading is the body as sent, which
//! [`crate::body::ForwardBody`] searches already: a body without any costs a `memchr` pass per
//! reading per frame, and what lies between escapes is copied in bulk. After it, a frame without one (and with no escape left open before it) reads as
//! sent as well: it is searched only where it meets what the reading read before.
//!
//! Each kind is also undone, once more, in what each reading reads once it has read an escape:
//! a JSON document percent-encoded in a form field (`data=%7B%22k%22%3A%22%5Cu0070st_…`), which
//! a vendor percent-decodes and then parses; `%HH` written with JSON escapes (`"\u002570st_…"`),
//! a URL in a JSON string that the vendor decodes again; JSON in a JSON string (`"{\"k\":
//! \"\\u0070st_…\"}"`), a payload a vendor parses twice; `%2570st_…`, percent-encoded twice;
//! and an XML document in a JSON string (`\u0026#112;`) or a form field (`%26%23112%3B`).
//! Not read: three layers or more, nor other encodings a vendor could be told to undo (HTML's
//! named references beyond XML's five, such as `&lowbar;` for `_`, which an XML parser does not
//! know). Base64 and UTF-16 are not undone either; the caller's own token is found in them
//! by its fixed forms ([`crate::tokens::base64_forms`], [`crate::tokens::utf16_forms`], in
//! every reading).

use crate::tokens::{Base64Shaped, Needles, Seen};

/// The three readings of a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `%HH`, as a form (or a URL in a body) is read.
    Percent,
    /// JSON's string escapes: `\uHHHH`, `\"`, `\\`, `\/`, `\b`, `\f`, `\n`, `\r`, `\t`.
    Json,
    /// XML's numeric character references, `&#112;` and `&#x70;` (`;` required, as XML has
    /// it; HTML's `&#112` without it is not read), as an XML API (SOAP) reads a document. The
    /// named ones (`&amp;`…) are left as written: so XML written inside XML text (`&amp;#112;`)
    /// is not read.
    Xml,
}

impl Kind {
    /// The byte that starts an escape.
    fn mark(self) -> u8 {
        match self {
            Kind::Percent => b'%',
            Kind::Json => b'\\',
            Kind::Xml => b'&',
        }
    }

    /// What an escape is once its mark is read.
    fn begun(self) -> Pending {
        match self {
            Kind::Percent => Pending::Percent(None),
            Kind::Json => Pending::Backslash,
            Kind::Xml => Pending::Ampersand,
        }
    }
}

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
    /// `&`.
    Ampersand,
    /// `&#`, its `x` or `X` if hex (`radix`, else 0), the leading zeros after it (any number,
    /// as XML parsers take them), then up to [`MAX_REFERENCE_DIGITS`] digits.
    Reference {
        radix: u8,
        zeros: u32,
        read: [u8; MAX_REFERENCE_DIGITS],
        digits: u8,
    },
}

impl Pending {
    /// Whether the escape begun tells something of the character it stands for, so what was
    /// read up to it is held back until it ends. A `&` or `&#` alone (with its leading zeros)
    /// does not: the frames of a form, which often end in `&`, go as they come.
    fn tells(self) -> bool {
        match self {
            Pending::None | Pending::Ampersand => false,
            Pending::Reference { digits, .. } => digits > 0,
            Pending::Percent(_) | Pending::Backslash | Pending::Unicode { .. } => true,
        }
    }
}

/// The most leading zeros of a broken character reference written back.
const MAX_WRITTEN_ZEROS: u32 = 16;

/// The most significant digits a character reference may have: U+10FFFF is 1114111.
const MAX_REFERENCE_DIGITS: usize = 7;

/// One reading of the body: its escapes undone as they come.
#[derive(Clone)]
struct Reading {
    kind: Kind,
    pending: Pending,
    /// The search of the body as this reading gives it (its last bytes: a token split across
    /// frames is still found).
    seen: Seen,
    /// The search for a `postern`-made token base64'd in what this reading gives (base64 text
    /// whose characters are escaped), from its first escape on: until then the body as sent,
    /// searched so already ([`Base64Shaped`]), whose state it starts from.
    shaped: Option<Base64Shaped>,
    /// Whether the body held this reading's escape character yet.
    escaped: bool,
}

impl Reading {
    fn new(kind: Kind) -> Self {
        Reading {
            kind,
            pending: Pending::None,
            seen: Seen::default(),
            shaped: None,
            escaped: false,
        }
    }

    /// Whether `piece` holds this reading's escape character. For XML, only where it may begin
    /// a character reference (`&#`, or `&` ending the piece): `&` alone is common in forms.
    fn marked(&self, piece: &[u8]) -> bool {
        match self.kind {
            Kind::Xml => {
                piece.last() == Some(&b'&') || memchr::memmem::find(piece, b"&#").is_some()
            }
            kind => memchr::memchr(kind.mark(), piece).is_some(),
        }
    }

    /// Reads `piece`, searched as it stands already with nothing found ([`EscapedToken::read`])
    /// (`out`, scratch space, holds what this reading reads it as, once it has read an escape):
    /// whether a token now stands in this reading. `marked`: whether `piece` holds this
    /// reading's escape character, when known. `before`: the base64 search of what this reading
    /// read before `piece` while it had no escape (the body as sent, or what the reading it is
    /// nested in gave), for its own to start from at its first escape.
    fn read(
        &mut self,
        needles: &Needles,
        piece: &[u8],
        out: &mut Vec<u8>,
        marked: Option<bool>,
        before: Option<&Base64Shaped>,
    ) -> bool {
        let marked = marked.unwrap_or_else(|| self.marked(piece));
        if !marked && self.pending == Pending::None {
            if !self.escaped {
                // The body as sent so far: only its tail is kept (no search).
                self.seen.skip(needles, piece);
                return false;
            }
            // Read as it stands, as it was searched already: only where it meets what this
            // reading read before is left to search.
            out.clear();
            out.extend_from_slice(piece);
            return self.seen.read_searched(needles, piece)
                || self.shaped.get_or_insert_default().read(piece);
        }
        if !self.escaped {
            self.shaped = Some(before.cloned().unwrap_or_default());
        }
        self.escaped = true;
        out.clear();
        self.pending = unescape(self.kind, self.pending, piece, out);
        self.seen.read(needles, out) || self.shaped.get_or_insert_default().read(out)
    }

    /// Whether more of the body could complete a token in this reading in a way the body as
    /// sent does not show: an escape was read, and the reading ends with a token's start or
    /// within an escape.
    fn in_progress(&self, needles: &Needles) -> bool {
        self.escaped
            && (self.pending.tells()
                || self.seen.in_progress(needles)
                || self.shaped.as_ref().is_some_and(Base64Shaped::in_progress))
    }

    /// Whether the body, ending here, ends with a token-shaped run in this reading (an escape
    /// left unfinished stands as written: it ends the run).
    fn ends_in_token(&self, needles: &Needles) -> bool {
        self.escaped
            && (self.seen.ends_in_token(needles)
                || self
                    .shaped
                    .as_ref()
                    .is_some_and(Base64Shaped::ends_in_token))
    }
}

/// Reads a body for a caller token with its percent-encoding, and apart from that its JSON
/// string escapes, undone, and each kind undone in what the other reads ([module
/// docs](self)), with the [`Needles`] the body as sent is searched with.
pub(crate) struct EscapedToken {
    /// Percent, JSON, then XML, each on the body as sent.
    readings: [Reading; 3],
    /// `nested[i]`: each kind undone once more in what `readings[i]` reads (`nested[i][k]`:
    /// kind `k`; a JSON document percent-encoded in a form field; `%HH` written with JSON
    /// escapes; JSON in a JSON string; `%2570`, percent-encoded twice), from the frame of
    /// `readings[i]`'s first escape on (until then `readings[i]` reads the body as sent: the pair
    /// starts as `readings` stood before that frame). One box for the pair: both begin at once.
    nested: [Option<Box<[Reading; 3]>>; 3],
    /// A reading's bytes of the frame being read (kept for their allocations).
    out: Vec<u8>,
    nested_out: Vec<u8>,
    /// What a reading's base64 search stood at before the frame, for the readings nested in it
    /// (kept for its allocation).
    before: Base64Shaped,
}

impl EscapedToken {
    pub(crate) fn new() -> Self {
        EscapedToken {
            readings: [
                Reading::new(Kind::Percent),
                Reading::new(Kind::Json),
                Reading::new(Kind::Xml),
            ],
            nested: Default::default(),
            out: Vec::new(),
            nested_out: Vec::new(),
            before: Base64Shaped::default(),
        }
    }

    /// Reads the body's next `piece`: whether a token `needles` looks for, one kind of escape
    /// undone, now stands in what was read. `piece` must have been searched as it stands with
    /// the same `needles`, with nothing found (by the body's search as sent, [`Seen::read`], or
    /// for a whole text [`Needles::in_whole`]): where a reading reads it unchanged, only its
    /// seam with what that reading read before is searched here. (So is each nested reading's
    /// input, by the reading that hands it over.) `as_sent`: the search for a `postern`-made
    /// token base64'd in the body as sent, as it stood before `piece` ([`Base64Shaped`]), which
    /// each reading's own starts from at its first escape.
    pub(crate) fn read(&mut self, needles: &Needles, piece: &[u8], as_sent: &Base64Shaped) -> bool {
        let EscapedToken {
            readings,
            nested,
            out,
            nested_out,
            before,
        } = self;
        let marked = [0, 1, 2].map(|i| readings[i].marked(piece));
        for i in 0..3 {
            // This reading's first escape.
            if marked[i] && !readings[i].escaped {
                nested[i] = Some(Box::new(readings.clone()));
            }
        }
        for (i, reading) in readings.iter_mut().enumerate() {
            // What this reading gave before `piece`, for a reading nested in it that has had no
            // escape yet (one may come in what it gives of `piece`).
            // Copied into a kept buffer: it is asked for every frame while such a reading waits.
            let waiting = nested[i]
                .as_ref()
                .is_some_and(|nested| nested.iter().any(|reading| !reading.escaped));
            if waiting {
                before.copy_from(reading.shaped.as_ref().unwrap_or(as_sent));
            }
            if reading.read(needles, piece, out, Some(marked[i]), Some(as_sent)) {
                return true;
            }
            for nested in nested[i].iter_mut().flat_map(|nested| nested.iter_mut()) {
                if nested.read(needles, out, nested_out, None, Some(&*before)) {
                    return true;
                }
            }
        }
        false
    }

    /// Whether more of the body could complete a token from what was read so far in a way the
    /// body as sent does not show, in either reading. Frames read since are held back by
    /// [`crate::body::ForwardBody`] (as sent, a token's start may be written in many more bytes
    /// than its own length).
    pub(crate) fn in_progress(&self, needles: &Needles) -> bool {
        self.all().any(|reading| reading.in_progress(needles))
    }

    /// Whether the body, ending after what was read, ends with a token-shaped run in either
    /// reading.
    pub(crate) fn ends_in_token(&self, needles: &Needles) -> bool {
        self.all().any(|reading| reading.ends_in_token(needles))
    }

    /// Every reading: the two on the body as sent, and the nested ones begun.
    fn all(&self) -> impl Iterator<Item = &Reading> {
        self.readings.iter().chain(
            self.nested
                .iter()
                .flatten()
                .flat_map(|nested| nested.iter()),
        )
    }
}

/// `text`, a whole text (a header value, a URL), with its JSON string escapes undone as a body's
/// JSON reading undoes them (an escape broken off, at the end too, stands as written); `None`
/// when it has no `\`.
pub(crate) fn json_unescaped(text: &[u8]) -> Option<Vec<u8>> {
    memchr::memchr(b'\\', text)?;
    let mut out = Vec::with_capacity(text.len());
    let pending = unescape(Kind::Json, Pending::None, text, &mut out);
    // A byte that continues no escape: what is pending is written as it stands.
    let _ = step(pending, 0, &mut out);
    Some(out)
}

/// Appends `piece` to `out` with escapes of `kind` undone, after an escape `pending` from the
/// piece before; returns the escape left pending at its end. `%HH` is the byte `HH`;
/// `\uHHHH` the code point's UTF-8 (a lone surrogate: U+FFFD); `\"`, `\\`, `\/`, `\b`, `\f`,
/// `\n`, `\r`, `\t` their characters. Anything else is kept as it stands — an escape that
/// breaks off included, with the byte that broke it read afresh. What lies between escapes is
/// copied whole.
fn unescape(kind: Kind, mut pending: Pending, mut piece: &[u8], out: &mut Vec<u8>) -> Pending {
    let mark = kind.mark();
    loop {
        if pending == Pending::None {
            let Some(at) = memchr::memchr(mark, piece) else {
                out.extend_from_slice(piece);
                return Pending::None;
            };
            out.extend_from_slice(&piece[..at]);
            piece = &piece[at + 1..];
            pending = kind.begun();
        }
        let Some((&byte, rest)) = piece.split_first() else {
            return pending;
        };
        piece = rest;
        pending = match step(pending, byte, out) {
            Some(pending) => pending,
            // Broken off (its bytes written as they stand): the byte read afresh.
            None if byte == mark => kind.begun(),
            None => {
                out.push(byte);
                Pending::None
            }
        };
    }
}

/// One byte of an escape begun: the escape as it stands after it (`Pending::None` once it is
/// complete and written to `out`), or `None` when the byte breaks it off (its bytes so far
/// written to `out` as they stand, the byte itself not).
fn step(pending: Pending, byte: u8, out: &mut Vec<u8>) -> Option<Pending> {
    let digit = hex(byte).is_some();
    let next = match (pending, byte) {
        (Pending::Percent(None), _) if digit => Pending::Percent(Some(byte)),
        (Pending::Percent(Some(first)), _) if digit => {
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
        (Pending::Unicode { read, digits: 3 }, _) if digit => {
            let code = hex_value(&[read[0], read[1], read[2], byte]);
            let character = char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER);
            out.extend_from_slice(character.encode_utf8(&mut [0; 4]).as_bytes());
            Pending::None
        }
        (Pending::Unicode { mut read, digits }, _) if digit => {
            read[usize::from(digits)] = byte;
            Pending::Unicode {
                read,
                digits: digits + 1,
            }
        }
        (Pending::Ampersand, b'#') => Pending::Reference {
            radix: 0,
            zeros: 0,
            read: [0; MAX_REFERENCE_DIGITS],
            digits: 0,
        },
        (
            Pending::Reference {
                radix: 0,
                zeros: 0,
                read,
                digits: 0,
            },
            b'x' | b'X',
        ) => Pending::Reference {
            radix: byte,
            zeros: 0,
            read,
            digits: 0,
        },
        (
            Pending::Reference {
                radix,
                zeros,
                mut read,
                digits,
            },
            _,
        ) if (if radix == 0 {
            byte.is_ascii_digit()
        } else {
            digit
        }) =>
        {
            if byte == b'0' && digits == 0 {
                Pending::Reference {
                    radix,
                    zeros: zeros.saturating_add(1),
                    read,
                    digits,
                }
            } else if usize::from(digits) < MAX_REFERENCE_DIGITS {
                read[usize::from(digits)] = byte;
                Pending::Reference {
                    radix,
                    zeros,
                    read,
                    digits: digits + 1,
                }
            } else {
                write_broken(pending, out);
                return None;
            }
        }
        (
            Pending::Reference {
                radix,
                zeros,
                read,
                digits,
            },
            b';',
        ) if zeros > 0 || digits > 0 => {
            let read = &read[..usize::from(digits)];
            let code = match radix {
                0 => read
                    .iter()
                    .fold(0u32, |value, &d| value * 10 + u32::from(d - b'0')),
                _ => hex_value(read),
            };
            match char::from_u32(code).filter(|&c| c != '\0') {
                Some(character) => {
                    out.extend_from_slice(character.encode_utf8(&mut [0; 4]).as_bytes());
                    Pending::None
                }
                // Not a character: the reference stands as written (`;` included).
                None => {
                    write_broken(pending, out);
                    out.push(b';');
                    Pending::None
                }
            }
        }
        (broken, _) => {
            write_broken(broken, out);
            return None;
        }
    };
    Some(next)
}

/// Writes the bytes of an escape that broke off, as they stand.
fn write_broken(broken: Pending, out: &mut Vec<u8>) {
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
        Pending::Ampersand => out.push(b'&'),
        Pending::Reference {
            radix,
            zeros,
            read,
            digits,
        } => {
            out.extend_from_slice(b"&#");
            if radix != 0 {
                out.push(radix);
            }
            // At most a few of its leading zeros: any number of them reads as one run of
            // zeros before what follows, and writing each back would let a small compressed
            // body grow the reading's buffers with its decoded size.
            out.resize(out.len() + zeros.min(MAX_WRITTEN_ZEROS) as usize, b'0');
            out.extend_from_slice(&read[..usize::from(digits)]);
        }
        Pending::None => {}
    }
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

/// For tests: a text with every byte escaped, as a token is written to slip past a search of
/// the body as sent.
#[cfg(test)]
pub(crate) mod every_byte {
    /// `text` with every byte written as `escape` writes it.
    pub(crate) fn escaped(text: &[u8], escape: impl Fn(u8) -> String) -> Vec<u8> {
        text.iter()
            .flat_map(|&byte| escape(byte).into_bytes())
            .collect()
    }

    /// `text` with every byte percent-encoded, `%HH` in upper-case hex (`.to_ascii_lowercase()`
    /// of it for lower case).
    pub(crate) fn percent_encoded(text: &[u8]) -> Vec<u8> {
        escaped(text, |byte| format!("%{byte:02X}"))
    }

    /// `text` with every byte written as JSON's `\u00hh`, in lower-case hex.
    pub(crate) fn json_escaped(text: &[u8]) -> Vec<u8> {
        escaped(text, |byte| format!("\\u{byte:04x}"))
    }

    /// `text` with every byte written as an XML character reference, `&#NNN;`.
    pub(crate) fn xml_escaped(text: &[u8]) -> Vec<u8> {
        escaped(text, |byte| format!("&#{byte};"))
    }
}

#[cfg(test)]
mod tests {
    use super::every_byte::{self, json_escaped, percent_encoded, xml_escaped};
    use super::*;
    use crate::tokens::GLUE;

    const TOKEN: &[u8] = b"pst_0123456789abcdefghij";

    /// An [`EscapedToken`] with the needles it reads for. (What it reads is not searched as
    /// sent first, as [`EscapedToken::read`] expects: no case here looks to it for a token
    /// standing whole in a piece without escapes, which that search finds.)
    struct Search {
        needles: Needles,
        escaped: EscapedToken,
        /// The base64 search of the body as sent, which the body's reading keeps.
        as_sent: Base64Shaped,
    }

    impl Search {
        fn new(token: &[u8]) -> Self {
            Search::with(Needles::new(Some(token)))
        }

        fn with(needles: Needles) -> Self {
            Search {
                needles,
                escaped: EscapedToken::new(),
                as_sent: Base64Shaped::default(),
            }
        }

        fn read(&mut self, piece: &[u8]) -> bool {
            let found = self.escaped.read(&self.needles, piece, &self.as_sent);
            self.as_sent.read(piece);
            found
        }

        fn in_progress(&self) -> bool {
            self.escaped.in_progress(&self.needles)
        }
    }

    fn unescaped(kind: Kind, text: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        assert_eq!(unescape(kind, Pending::None, text, &mut out), Pending::None);
        out
    }

    /// Every byte of `text` percent-encoded (upper and lower case), or JSON-escaped; and its
    /// first character escaped each way, the rest as it stands.
    fn encodings(text: &[u8]) -> Vec<Vec<u8>> {
        vec![
            percent_encoded(text),
            percent_encoded(text).to_ascii_lowercase(),
            json_escaped(text),
            [format!("%{:02x}", text[0]).as_bytes(), &text[1..]].concat(),
            [format!("\\u{:04X}", text[0]).as_bytes(), &text[1..]].concat(),
            xml_escaped(text),
            every_byte::escaped(text, |byte| format!("&#x{byte:x};")),
            every_byte::escaped(text, |byte| format!("&#X{byte:02X};")),
            every_byte::escaped(text, |byte| format!("&#{:0>9};", byte)),
            [format!("&#x{:04x};", text[0]).as_bytes(), &text[1..]].concat(),
        ]
    }

    #[test]
    fn escapes_are_undone_as_vendors_undo_them() {
        assert_eq!(unescaped(Kind::Percent, b"a%41%2fb\\n"), b"aA/b\\n");
        assert_eq!(
            unescaped(Kind::Json, br#"\u0041\/\"\\\n\t%41"#),
            b"A/\"\\\n\t%41"
        );
        assert_eq!(unescaped(Kind::Json, br"\u00e9\u20ac"), "é€".as_bytes());
        assert_eq!(
            unescaped(Kind::Xml, b"a&#65;&#x42;&#X43;&#0000068;&#xe9;&amp;b"),
            "aABCDé&amp;b".as_bytes()
        );
        // A broken reference's many leading zeros are written back as a few.
        let mut zeros = b"&#".to_vec();
        zeros.resize(100_000, b'0');
        zeros.push(b'x');
        assert_eq!(
            unescaped(Kind::Xml, &zeros),
            [&b"&#"[..], &[b'0'; 16], b"x"].concat()
        );
        // What is no character reference, or none of a character, stands as written.
        for text in [
            &b"&#;&#x;&#y;&#x1g;&# 65;&#65 "[..],
            b"&#1114112;&#0;&#xD800;",
            b"&#12345678;&#x12345678;",
            b"a=1&b=2&&#",
        ] {
            let mut out = Vec::new();
            let pending = unescape(Kind::Xml, Pending::None, text, &mut out);
            write_broken(pending, &mut out);
            assert_eq!(out, text, "{}", String::from_utf8_lossy(text));
        }
        assert_eq!(unescaped(Kind::Json, br"\ud83d"), "\u{fffd}".as_bytes());
        // Escapes that break off stand as written, and what broke them is read afresh.
        assert_eq!(
            unescaped(Kind::Percent, b"%%41%4g%"[..7].as_ref()),
            b"%A%4g"
        );
        assert_eq!(
            unescaped(Kind::Json, br"\u00\u0041\q\\u0041"),
            br"\u00A\q\u0041"
        );
        // A piece may end inside an escape: it is completed by the next.
        let mut out = Vec::new();
        let pending = unescape(Kind::Json, Pending::None, br"ab\u00", &mut out);
        assert_eq!(
            unescape(Kind::Json, pending, b"41c", &mut out),
            Pending::None
        );
        assert_eq!(out, b"abAc");
    }

    #[test]
    fn a_token_escaped_either_way_is_found_wherever_the_frames_split_it() {
        let start = br#"{"amount": 1, "key": ""#;
        for escaped in encodings(TOKEN) {
            let body = [&start[..], &escaped, b"\"}"].concat();
            for split in 0..=body.len() {
                let mut reading = Search::new(TOKEN);
                let found = reading.read(&body[..split]) || reading.read(&body[split..]);
                assert!(found, "{} split at {split}", String::from_utf8_lossy(&body));
            }
            // Part-way through the escaped token, more of the body may complete it: the frames
            // read so far are to be held back (from the first byte that tells something of a
            // character: not a lone `&`, `&#`, `&#x` or leading zeros).
            let untold = |read: &[u8]| {
                let reference = read.rsplit(|&b| b == b'&').next().unwrap_or_default();
                read.contains(&b'&')
                    && (reference.is_empty()
                        || reference[0] == b'#'
                            && reference[1..]
                                .iter()
                                .enumerate()
                                .all(|(i, &b)| b == b'0' || (i == 0 && (b == b'x' || b == b'X'))))
            };
            for split in start.len() + 1..start.len() + escaped.len() {
                if untold(&body[start.len()..split]) {
                    continue;
                }
                assert!(
                    reading_after(TOKEN, &body[..split]).in_progress(),
                    "split at {split}"
                );
            }
        }
    }

    /// Each kind is undone on its own, as a vendor reads a body one way: a token whose
    /// characters are hex digits or JSON escape letters is found where the other kind's mark
    /// stands before it.
    #[test]
    fn each_reading_undoes_one_kind_of_escape() {
        let cases: [(&[u8], &[u8]); 3] = [
            // A form reads `\t0ken…`: a tab only to a JSON reading.
            (b"t0kenABCDEFGHIJKLMNOP", br"a=\t%30kenABCDEFGHIJKLMNOP&b=1"),
            // JSON reads `%deadbeef…`: a byte 0xde only to a percent reading.
            (
                b"deadbeef0123456789",
                br#"{"k": "%de\u0061dbeef0123456789"}"#,
            ),
            // Both as sent around the other kind's escape.
            (
                b"pst_0123456789abcdef",
                br#"{"k": "%pst_0123456789abcdef\n"}"#,
            ),
        ];
        for (token, body) in cases {
            assert!(
                Search::new(token).read(body),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    fn reading_after(token: &[u8], text: &[u8]) -> Search {
        let mut reading = Search::new(token);
        assert!(!reading.read(text));
        reading
    }

    /// One kind inside the other: a JSON document percent-encoded in a form field (its `\u`
    /// escapes percent-encoded too), and `%HH` written with JSON's `\u0025`; and each inside
    /// itself: JSON in a JSON string, percent-encoded twice. Found wherever the frames split
    /// them, the first escape of either kind in any frame.
    #[test]
    fn a_token_escaped_one_kind_inside_another_is_found() {
        let json = json_escaped(TOKEN);
        let document = [&br#"{"k": ""#[..], &json, b"\"}"].concat();
        let form: Vec<u8> = document
            .iter()
            .flat_map(|&byte| match byte.is_ascii_alphanumeric() {
                true => vec![byte],
                false => format!("%{byte:02X}").into_bytes(),
            })
            .collect();
        let percent_in_json = every_byte::escaped(TOKEN, |byte| format!("\\u0025{byte:02x}"));
        // JSON in a JSON string, and percent-encoded twice: the same kind inside itself.
        let json_in_json: Vec<u8> = document
            .iter()
            .flat_map(|&byte| match byte {
                b'"' | b'\\' => vec![b'\\', byte],
                _ => vec![byte],
            })
            .collect();
        let twice = every_byte::escaped(TOKEN, |byte| format!("%25{byte:02X}"));
        // An XML document in a JSON string (`&` as `\u0026`), and in a form field.
        let xml_in_json = every_byte::escaped(TOKEN, |byte| format!("\\u0026#{byte};"));
        let xml_in_form = every_byte::escaped(TOKEN, |byte| format!("%26%23{byte}%3B"));
        for body in [
            [&br#"{"soap": "<k>"#[..], &xml_in_json, b"</k>\"}"].concat(),
            [
                &b"a=1&envelope=%3Ck%3E"[..],
                &xml_in_form,
                b"%3C%2Fk%3E&b=2",
            ]
            .concat(),
            [&b"a=1&data="[..], &form, b"&b=2"].concat(),
            [&br#"{"n": "\n", "url": ""#[..], &percent_in_json, b"\"}"].concat(),
            [&br#"{"payload": ""#[..], &json_in_json, b"\"}"].concat(),
            [&b"next="[..], &twice, b"&b=2"].concat(),
        ] {
            for split in 0..=body.len() {
                let mut reading = Search::new(TOKEN);
                let found = reading.read(&body[..split]) || reading.read(&body[split..]);
                assert!(found, "{} split at {split}", String::from_utf8_lossy(&body));
            }
        }
    }

    /// Without a token of its own to look for (a caller identified by its certificate), what
    /// looks like any caller token `postern` made is found escaped, wherever the frames split
    /// it, and at the body's end (decided by the end: one more character would make it none).
    #[test]
    fn a_token_shaped_run_is_found_escaped_without_a_token_to_look_for() {
        let shaped = [&b"pst_"[..], &[b'Q'; 43]].concat();
        for escaped in encodings(&shaped) {
            let body = [&b"a=1&key="[..], &escaped].concat();
            for split in 0..=body.len() {
                let mut search = Search::with(Needles::new(None));
                let found = search.read(&body[..split])
                    || search.read(&body[split..])
                    || search.escaped.ends_in_token(&search.needles);
                assert!(found, "{} split at {split}", String::from_utf8_lossy(&body));
                // More characters than may be glued to a token make the run too long for one.
                assert!(
                    !search.read(&[b'Q'; GLUE + 1])
                        && !search.escaped.ends_in_token(&search.needles)
                );
            }
        }
    }

    /// Another caller's token base64'd (a `Basic` credential) with escapes over the base64
    /// text — some or all of its characters percent-encoded, JSON-escaped or written as XML
    /// references — is found, wherever the frames split it, by a caller without a token of its
    /// own to look for (so no form of its own finds it). (A token's base64 holds no `+` or `/`:
    /// its characters' low six bits never make 62 or 63.)
    #[test]
    fn another_callers_token_base64d_with_escapes_is_found() {
        use base64::Engine as _;
        let mut fuzz = crate::fuzz::Fuzz(0x0bad_5eed_1234_5678);
        for case in 0..60usize {
            let token = crate::tokens::tests::random_token(&mut fuzz);
            let engine = &base64::engine::general_purpose::STANDARD;
            let text = engine.encode([&b"AC42:"[..], &token].concat());
            assert!(!text.contains('+') && !text.contains('/'));
            let escape = |text: &str, fuzz: &mut crate::fuzz::Fuzz| -> String {
                let kind = case % 3;
                let all = case % 2 == 0;
                text.bytes()
                    .map(|byte| match (kind, all || fuzz.next().is_multiple_of(2)) {
                        (0, true) => format!("%{byte:02X}"),
                        (1, true) => format!("\\u{byte:04x}"),
                        (2, true) => format!("&#{byte};"),
                        _ => char::from(byte).to_string(),
                    })
                    .collect()
            };
            let escaped = escape(&text, &mut fuzz);
            let body = format!("a=1&auth=Basic%20{escaped}&b=2");
            let body = body.as_bytes();
            assert!(!Base64Shaped::in_whole(body), "the search as sent finds it");
            for split in (0..=body.len()).step_by(1 + case % 7) {
                let mut search = Search::with(Needles::new(None));
                let found = search.read(&body[..split])
                    || search.read(&body[split..])
                    || search.escaped.ends_in_token(&search.needles);
                assert!(found, "{} split at {split}", String::from_utf8_lossy(body));
            }
            // One character fewer, and a space after it: no token.
            let short = engine.encode([&b"AC42:"[..], &token[..46], b" "].concat());
            let body = format!("a=1&auth={}&b=2", escape(&short, &mut fuzz));
            let mut search = Search::with(Needles::new(None));
            assert!(
                !search.read(body.as_bytes()) && !search.escaped.ends_in_token(&search.needles),
                "{body}"
            );
        }
    }

    #[test]
    fn what_a_vendor_would_not_read_as_the_token_is_not_it() {
        // An escaped backslash before `u0070`: JSON reads `\u0070st_…` as text, and read once
        // more (JSON in a JSON string) as the token; with two escaped backslashes, twice
        // unescaped it is still text (three layers are not read).
        let body = [&br#"{"k": "\\u0070"#[..], &TOKEN[1..], b"\"}"].concat();
        assert!(Search::new(TOKEN).read(&body));
        let body = [&br#"{"k": "\\\\u0070"#[..], &TOKEN[1..], b"\"}"].concat();
        assert!(!Search::new(TOKEN).read(&body));
        // The token with one character missing, escaped.
        let mut short = encodings(&TOKEN[..TOKEN.len() - 1]).remove(0);
        short.extend_from_slice(b"&x=1");
        assert!(!Search::new(TOKEN).read(&short));
        // Escaped in both kinds at once is read, as a form field holding JSON is (percent,
        // then JSON); see `a_token_escaped_one_kind_inside_another_is_found`.
        let mixed = [&b"%70\\u0073"[..], &TOKEN[2..]].concat();
        assert!(Search::new(TOKEN).read(&mixed));
        // A body without escapes is left to the search as sent; ending with the token's
        // start, it is not "in progress" here (the search as sent holds its tail back).
        let mut plain = reading_after(TOKEN, b"amount=1&key=pst_01");
        assert!(!plain.in_progress());
        assert!(!plain.read(b"x"));
        // Once an escape is read, a reading whose tail starts the token is.
        assert!(reading_after(TOKEN, b"a=%41&key=pst_01").in_progress());
        assert!(reading_after(TOKEN, b"a=%41&key=%7").in_progress());
        assert!(reading_after(TOKEN, br"a=\n&key=\u007").in_progress());
        assert!(!reading_after(TOKEN, b"a=%41&key=x").in_progress());
    }
}
