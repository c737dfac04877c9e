//! What a request must not carry to a vendor: the caller's own token, and what looks like any
//! caller token `postern` made.
//!
//! A caller identified by its certificate has no token of its own to look for, yet the service
//! may hold one (an old one of its own, or another service's) in what it sends; a caller with a
//! token may hold another's. Either would hand the vendor a key to Postern. A token `postern
//! callers token` makes is `pst_` and 43 base64url characters. It is recognised in a run of
//! base64url characters that holds it with at most [`GLUE`] more on either side (`session-pst_…`,
//! `pst_…_2`: a name glued to it), whose 43 characters after the prefix hold a capital letter, as
//! random ones do (all but once in 5·10⁹). A longer run, a random cookie or hash, holds the
//! pattern by chance once in a while and is not one; nor is a `snake_case` name such as
//! `convert_to_pst_timezone_2024_…` or a file name such as `mailbox_pst_<uuid>_export`, whose
//! letters are all lower-case.
//!
//! [`Needles`] is what a body is searched for (shared by every reading of one body), [`Seen`]
//! one reading's search as it streams: whether a token is decided in each piece, whether what
//! was read so far ends with what more of the body could complete into one, and whether the
//! body's end completes one.

use std::cell::RefCell;
use std::sync::{Arc, LazyLock};

use memchr::memmem;

use crate::{CALLER_TOKEN_PREFIX, TOKEN_RANDOM_CHARS};

const PREFIX: &[u8] = CALLER_TOKEN_PREFIX.as_bytes();
/// The length of a caller token `postern callers token` makes.
pub(crate) const TOKEN_LEN: usize = PREFIX.len() + TOKEN_RANDOM_CHARS;
/// How many base64url characters may stand glued to either side of a token in a run taken for
/// one: a name or a counter a program glued to it (`session-`, `x`, `_2`). A random run that short
/// holds the prefix once in about 10⁶ (17 places, each one in 64⁴), and its 43 characters after
/// it must look random too.
pub(crate) const GLUE: usize = 16;
/// A token-shaped run with its glue, and the byte before it: what a search must keep of what it
/// read to decide a run that ends in the next piece.
const SHAPE_SPAN: usize = TOKEN_LEN + 2 * GLUE + 1;

static PREFIX_FINDER: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(PREFIX));

fn base64url(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_')
}

/// How the bytes from a prefix at `at` stand.
#[derive(Debug, PartialEq, Eq)]
enum Run {
    /// Not a token: too short or too long a run, or one whose characters are not random.
    Not,
    /// A token: the prefix, its random part and what is glued after it (`n` characters in all),
    /// and a byte that ends the run.
    Token(usize),
    /// Every byte to the end of `bytes` may be part of a token (`n` characters of it after the
    /// prefix): what follows decides.
    Open(usize),
}

/// Whether `n` characters after a prefix, ended there, make a token with at most `glue`
/// characters glued after it.
fn token_long(n: usize, glue: usize) -> bool {
    (TOKEN_RANDOM_CHARS..=TOKEN_RANDOM_CHARS + glue).contains(&n)
}

/// How the run from the prefix at `at` in `bytes` stands, with at most `glue` characters after
/// the token (what stands before the prefix is [`starts_run`]'s).
fn run_at(bytes: &[u8], at: usize, glue: usize) -> Run {
    let random = &bytes[at + PREFIX.len()..];
    let most = TOKEN_RANDOM_CHARS + glue;
    let run = random
        .iter()
        .take(most + 1)
        .take_while(|&&byte| base64url(byte))
        .count();
    // The token's own characters, once all read, are random: a capital among them.
    if run >= TOKEN_RANDOM_CHARS
        && !random[..TOKEN_RANDOM_CHARS]
            .iter()
            .any(u8::is_ascii_uppercase)
    {
        return Run::Not;
    }
    if run == random.len() && run <= most {
        Run::Open(run)
    } else if token_long(run, glue) {
        Run::Token(run)
    } else {
        Run::Not
    }
}

/// Whether the prefix at `at` in `bytes` starts a run with at most `glue` base64url characters
/// glued before it: a byte that is not base64url stands within `glue + 1` bytes before it, or
/// the stream's first byte does (`stream_start`: `bytes` begin where the stream does). Where
/// `bytes` begin within those bytes and not at the stream's start, what stood before is not in
/// them: not a start here (a reading that holds it decides).
fn starts_run(bytes: &[u8], at: usize, stream_start: bool, glue: usize) -> bool {
    let glued = bytes[..at]
        .iter()
        .rev()
        .take(glue + 1)
        .take_while(|&&byte| base64url(byte))
        .count();
    match glued {
        _ if glued > glue => false,
        _ if glued < at => true,
        _ => stream_start,
    }
}

/// Whether `bytes`, a whole text (its start and end bound a run), hold what looks like a caller
/// token `postern` made.
pub(crate) fn token_shaped(bytes: &[u8]) -> bool {
    PREFIX_FINDER
        .find_iter(bytes)
        .any(|at| shaped_in_whole(bytes, at))
}

/// Whether the prefix at `at` in `bytes`, a whole text, starts a token-shaped run.
fn shaped_in_whole(bytes: &[u8], at: usize) -> bool {
    starts_run(bytes, at, true, GLUE)
        && match run_at(bytes, at, GLUE) {
            Run::Token(_) => true,
            Run::Open(n) => token_long(n, GLUE),
            Run::Not => false,
        }
}

/// How many of `bytes`' last bytes are the start of `needle` (fewer than all of it): the
/// longest such run, or 0. Only the places that hold the needle's first byte are tried.
pub(crate) fn started(bytes: &[u8], needle: &[u8]) -> usize {
    let Some(&first) = needle.first() else {
        return 0;
    };
    let from = bytes.len().saturating_sub(needle.len() - 1);
    // From the earliest place: the first that starts the needle is the longest run.
    memchr::memchr_iter(first, &bytes[from..])
        .map(|at| from + at)
        .find(|&at| needle.starts_with(&bytes[at..]))
        .map_or(0, |at| bytes.len() - at)
}

/// What one request's body is searched for: its caller's own token (if it has one), also as
/// base64 carries it, and what looks like any caller token `postern` made ([module docs](self)).
#[derive(Clone)]
pub(crate) struct Needles {
    mine: Option<Arc<Mine>>,
}

/// The caller's own token as a body is searched for it. Made once for each token a thread meets
/// in turn ([`Mine::of`]), not for every body: the same caller's next body, on its keep-alive
/// connection, usually follows.
struct Mine {
    /// The token itself. One that starts with the prefix, as every token `postern` makes does,
    /// is found where the prefix is (which the search for token-shaped runs finds anyway);
    /// another (a token set by its hash alone) is searched for as it is (a prepared finder
    /// would keep a copy of it that is not zeroized).
    own: zeroize::Zeroizing<Vec<u8>>,
    /// The token inside base64 text ([`base64_forms`]), then in UTF-16 ([`utf16_forms`]).
    encoded: Vec<zeroize::Zeroizing<Vec<u8>>>,
    /// How many of `encoded` are base64 forms (those [`Unwrapped`] looks for).
    base64: usize,
    /// For each base64 form, how many of its first characters encode the prefix alone (none
    /// for a token without it): public, so [`Unwrapped`] need not hold them back.
    public: Vec<usize>,
}

/// The prefix inside base64 text, at each of the three places in a 3-byte group: the
/// characters made of its bits alone, with which the token's base64 form from that place
/// begins ([`base64_forms`]).
const PREFIX_IN_BASE64: [&[u8]; 3] = [b"cHN0X", b"BzdF", b"wc3Rf"];

thread_local! {
    /// The last caller token this thread searched a body for, with its forms: zeroized when
    /// another token replaces it or the thread ends, with no time limit (an idle worker keeps
    /// it until then, docs/CREDENTIALS.md).
    static LAST_MINE: RefCell<Option<Arc<Mine>>> = const { RefCell::new(None) };
}

impl Mine {
    fn new(own: &[u8]) -> Self {
        let mut encoded = base64_forms(own);
        let base64 = encoded.len();
        let public = encoded
            .iter()
            .map(|form| match own.starts_with(PREFIX) {
                true => PREFIX_IN_BASE64
                    .iter()
                    .find(|prefix| form.starts_with(prefix))
                    .map_or(0, |prefix| prefix.len()),
                false => 0,
            })
            .collect();
        encoded.extend(utf16_forms(own).into_iter().filter(|form| !form.is_empty()));
        Mine {
            own: zeroize::Zeroizing::new(own.to_vec()),
            encoded,
            base64,
            public,
        }
    }

    /// `own`'s, this thread's last ones when they are `own`'s. Compared in constant time, so
    /// how much of a token matches the kept one does not show in how long a body takes (a
    /// whole match shows, as work not done: that the same token came before on this thread).
    fn of(own: &[u8]) -> Arc<Mine> {
        let made = || Arc::new(Mine::new(own));
        LAST_MINE
            .try_with(|cell| {
                let Ok(mut last) = cell.try_borrow_mut() else {
                    return made();
                };
                if let Some(mine) = last.as_ref().filter(|mine| same(&mine.own, own)) {
                    return mine.clone();
                }
                let mine = made();
                *last = Some(mine.clone());
                mine
            })
            .unwrap_or_else(|_| made())
    }
}

/// Whether `a` and `b` are the same bytes, in a time that depends on their lengths only.
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    // `black_box` keeps the compiler from ending the loop at the first difference.
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .fold(0u8, |acc, (x, y)| std::hint::black_box(acc | (x ^ y)))
            == 0
}

/// A token shorter than this many bytes is not looked for as base64: its forms would be too
/// short to tell from chance in base64 text.
const BASE64_MIN_TOKEN: usize = 12;

/// What base64 text (standard or URL-safe alphabet, padded or not) holds wherever it encodes
/// `token`, whatever bytes surround it: the token starts at one of three places in a 3-byte
/// group, and for each the characters made of its bits alone are fixed (the first and last
/// may mix in a neighbour's bits and are left out). A `Basic` credential in a JSON body, a
/// token base64'd as a whole or inside a larger document, are found so.
/// `token` (ASCII, as a caller token is) in UTF-16, little- and big-endian: a JSON body a
/// vendor's parser reads as UTF-16 when it sees one (RFC 4627's detection, as Jackson does).
/// Nothing for a token that is not ASCII.
pub(crate) fn utf16_forms(token: &[u8]) -> [zeroize::Zeroizing<Vec<u8>>; 2] {
    if !token.is_ascii() {
        return Default::default();
    }
    let spread = |little: bool| {
        let mut form = zeroize::Zeroizing::new(Vec::with_capacity(token.len() * 2));
        for &byte in token {
            form.extend_from_slice(&match little {
                true => [byte, 0],
                false => [0, byte],
            });
        }
        form
    };
    [spread(true), spread(false)]
}

pub(crate) fn base64_forms(token: &[u8]) -> Vec<zeroize::Zeroizing<Vec<u8>>> {
    use base64::Engine as _;
    let mut forms: Vec<zeroize::Zeroizing<Vec<u8>>> = Vec::new();
    if token.len() < BASE64_MIN_TOKEN {
        return forms;
    }
    // One buffer for the three groups and one for their text, zeroized when dropped: `offset`
    // bytes before the token and two after, so that every character its bits end in is
    // written in full.
    let mut group = zeroize::Zeroizing::new(vec![0u8; token.len() + 4]);
    let mut text = zeroize::Zeroizing::new(vec![0u8; group.len().div_ceil(3) * 4]);
    for offset in 0..3usize {
        let group = &mut group[2 - offset..];
        group[offset..offset + token.len()].copy_from_slice(token);
        let Ok(written) = base64::engine::general_purpose::STANDARD_NO_PAD
            .encode_slice(&group[..], &mut text[..])
        else {
            continue;
        };
        // Characters whose six bits lie within the token's bits.
        let first = (8 * offset).div_ceil(6);
        let end = (8 * (offset + token.len()) / 6).min(written);
        let standard = &text[first..end];
        if !forms.iter().any(|form| form[..] == *standard) {
            forms.push(zeroize::Zeroizing::new(standard.to_vec()));
        }
        if standard.iter().any(|&c| c == b'+' || c == b'/') {
            let url_safe: Vec<u8> = standard
                .iter()
                .map(|&c| match c {
                    b'+' => b'-',
                    b'/' => b'_',
                    c => c,
                })
                .collect();
            forms.push(zeroize::Zeroizing::new(url_safe));
        }
    }
    forms
}

impl Needles {
    /// `own`: the caller's token (ignored when empty).
    pub(crate) fn new(own: Option<&[u8]>) -> Self {
        Needles {
            mine: own.filter(|own| !own.is_empty()).map(Mine::of),
        }
    }

    fn own(&self) -> Option<&[u8]> {
        self.mine.as_deref().map(|mine| &mine.own[..])
    }

    fn encoded(&self) -> impl Iterator<Item = &[u8]> {
        self.mine
            .iter()
            .flat_map(|mine| mine.encoded.iter().map(|form| &form[..]))
    }

    /// Whether `bytes` hold the caller's token inside base64 text or in UTF-16 (its encoded
    /// forms; not as it stands).
    pub(crate) fn encoded_in(&self, bytes: &[u8]) -> bool {
        self.encoded()
            .any(|form| crate::proxy::contains(bytes, form))
    }

    /// The caller's token's base64 forms ([`base64_forms`]).
    fn base64(&self) -> &[zeroize::Zeroizing<Vec<u8>>] {
        self.mine
            .as_deref()
            .map_or(&[], |mine| &mine.encoded[..mine.base64])
    }

    /// For each of [`Needles::base64`], how many of its first characters are public.
    fn public(&self) -> &[usize] {
        self.mine.as_deref().map_or(&[], |mine| &mine.public)
    }

    /// Whether `bytes`, a whole text (its start and end bound a run), hold the caller's token
    /// or a token-shaped run.
    pub(crate) fn in_whole(&self, bytes: &[u8]) -> bool {
        self.found(bytes, |at| shaped_in_whole(bytes, at))
    }

    /// Whether `bytes` hold the caller's own token anywhere, or the prefix at an offset
    /// `shaped` accepts. One pass over the prefix's places serves both when the own token
    /// starts with the prefix, as every token `postern` makes does.
    fn found(&self, bytes: &[u8], shaped: impl Fn(usize) -> bool) -> bool {
        if self.encoded_in(bytes) {
            return true;
        }
        match self.own() {
            Some(token) if token.starts_with(PREFIX) => PREFIX_FINDER
                .find_iter(bytes)
                .any(|at| bytes[at..].starts_with(token) || shaped(at)),
            Some(token) if crate::proxy::contains(bytes, token) => true,
            _ => PREFIX_FINDER.find_iter(bytes).any(shaped),
        }
    }

    /// Whether `piece`, read after other bytes, holds the caller's own token, or a token-shaped
    /// run decided inside it (the bytes before and after it read there): what [`Seen::read`]
    /// finds in a piece whatever was read before it.
    fn inside(&self, piece: &[u8]) -> bool {
        self.found(piece, |at| {
            starts_run(piece, at, false, GLUE) && matches!(run_at(piece, at, GLUE), Run::Token(_))
        })
    }

    /// How many of the last bytes read a search keeps, to find a token across pieces: all but
    /// the last byte of the caller's own token or of its longest base64 form, and at least a
    /// token-shaped run and the byte before it.
    pub(crate) fn keep(&self) -> usize {
        self.own()
            .into_iter()
            .chain(self.encoded())
            .map(|needle| needle.len() - 1)
            .max()
            .unwrap_or(0)
            .max(SHAPE_SPAN)
    }

    /// The caller's own token and its base64 forms: what a tail may hold the start of.
    fn own_forms(&self) -> impl Iterator<Item = &[u8]> {
        self.own().into_iter().chain(self.encoded())
    }
}

/// Keeps in `tail`, after `piece` is read, the last `keep` bytes read (only what is kept of
/// `piece` is copied).
fn keep_last(tail: &mut Vec<u8>, piece: &[u8], keep: usize) {
    if piece.len() >= keep {
        tail.clear();
        tail.extend_from_slice(&piece[piece.len() - keep..]);
    } else {
        tail.extend_from_slice(piece);
        tail.drain(..tail.len().saturating_sub(keep));
    }
}

/// One reading of a body searched as it streams: the last [`Needles::keep`] bytes read.
#[derive(Default, Clone)]
pub(crate) struct Seen {
    tail: Vec<u8>,
}

impl Seen {
    /// Whether the tail is all that was read (the stream's first byte is in it).
    fn holds_the_start(&self, needles: &Needles) -> bool {
        self.tail.len() < needles.keep()
    }

    /// Reads `piece` after what was read before: whether the caller's token now ends in it, or
    /// a token-shaped run is now decided (the byte after it read).
    pub(crate) fn read(&mut self, needles: &Needles, piece: &[u8]) -> bool {
        let found = self.across(needles, piece) || needles.inside(piece);
        self.skip(needles, piece);
        found
    }

    /// [`Seen::read`] of a piece whose inside was searched already, with nothing found
    /// ([`Needles::inside`]: the same bytes read by another search, as an escaped reading of a
    /// body reads a frame that holds no escape): only what it decides with the bytes read before
    /// it is searched.
    pub(crate) fn read_searched(&mut self, needles: &Needles, piece: &[u8]) -> bool {
        debug_assert!(
            !needles.inside(piece),
            "a piece searched already holds a token"
        );
        let found = self.across(needles, piece);
        self.skip(needles, piece);
        found
    }

    /// Whether the caller's token or a token-shaped run begun in what was read before `piece`,
    /// or at its first byte, now stands decided (the rest of `piece` is [`Needles::inside`]'s).
    fn across(&mut self, needles: &Needles, piece: &[u8]) -> bool {
        let keep = needles.keep();
        let before = self.tail.len();
        let stream_start = self.holds_the_start(needles);
        // Across the seam: the tail and enough of `piece` to end any needle or run begun in the
        // tail (only the seam is copied).
        self.tail
            .extend_from_slice(&piece[..piece.len().min(keep + 1)]);
        let seam = &self.tail[..];
        let across = needles.found(seam, |at| {
            // Runs whose start (the bytes before the prefix, up to its glue) is not all in the
            // piece, and whose end (the byte after them) was not read before: those ended in the
            // tail were decided then.
            at <= before + GLUE
                && starts_run(seam, at, stream_start, GLUE)
                && matches!(run_at(seam, at, GLUE), Run::Token(n) if at + PREFIX.len() + n >= before)
        });
        self.tail.truncate(before);
        across
    }

    /// Reads `piece` without searching it (it is searched elsewhere): only the tail is kept.
    pub(crate) fn skip(&mut self, needles: &Needles, piece: &[u8]) {
        keep_last(&mut self.tail, piece, needles.keep());
    }

    /// Whether what was read so far ends with what more of the body could complete into the
    /// caller's token or a token-shaped run (a whole one too, until the byte after it).
    pub(crate) fn in_progress(&self, needles: &Needles) -> bool {
        self.pending(needles) > 0
    }

    /// How many of the last bytes read could be the start of the caller's token or of a
    /// token-shaped run that more of the body completes (or, for a whole run, that the byte
    /// after it decides): what must not reach the vendor yet. `0` when no byte read could be,
    /// so a body whose pieces end elsewhere is sent as it comes (a caller streaming small
    /// messages, each answered before the next, is not stalled).
    ///
    /// A byte that could not start either when it was read never can later: what decides it
    /// (the bytes from it to the end, and the one before it) is already read.
    pub(crate) fn pending(&self, needles: &Needles) -> usize {
        let tail = &self.tail[..];
        let stream_start = self.holds_the_start(needles);
        let own = needles
            .own_forms()
            .map(|needle| started(tail, needle))
            .max()
            .unwrap_or(0);
        let prefix = (1..PREFIX.len())
            .rev()
            .find(|&len| {
                tail.ends_with(&PREFIX[..len])
                    && starts_run(tail, tail.len() - len, stream_start, GLUE)
            })
            .unwrap_or(0);
        let run = PREFIX_FINDER
            .find_iter(tail)
            .find(|&at| {
                starts_run(tail, at, stream_start, GLUE)
                    && matches!(run_at(tail, at, GLUE), Run::Open(_))
            })
            .map_or(0, |at| tail.len() - at);
        own.max(prefix).max(run)
    }

    /// Whether the body's end, after what was read, completes a token-shaped run.
    pub(crate) fn ends_in_token(&self, needles: &Needles) -> bool {
        let tail = &self.tail[..];
        let stream_start = self.holds_the_start(needles);
        PREFIX_FINDER.find_iter(tail).any(|at| {
            starts_run(tail, at, stream_start, GLUE)
                && matches!(run_at(tail, at, GLUE), Run::Open(n) if token_long(n, GLUE))
        })
    }
}

/// One reading of a body searched as it streams with its line breaks left out, for the
/// caller's token's base64 forms: base64 wrapped into lines, as MIME (76 characters and CRLF),
/// PEM (64 and LF) and the `base64` tool write it and a vendor's decoder reads it (RFC 2045
/// §6.8: line breaks are ignored). The breaks are CR and LF as sent, their JSON escapes `\r`
/// and `\n`, and their percent-encodings `%0D` and `%0A` (either case). A form that no break
/// splits is the reading as sent's ([`Seen`]): here only what a break splits is new.
#[derive(Default, Clone)]
pub(crate) struct Unwrapped {
    /// The last bytes read with the breaks left out: all but the last byte of the longest
    /// base64 form.
    tail: Vec<u8>,
    /// How many bytes were read with the breaks left out.
    read: u64,
    /// Where the last break left out stood: how many bytes were read before it.
    last_break: Option<u64>,
    /// The end of the last piece, when it may begin a break's escape (`\`, `%` or `%0`): read
    /// with the next piece.
    partial: Vec<u8>,
    /// A piece read with its breaks left out (kept for its allocation).
    out: Vec<u8>,
}

/// Where the first `%0` at or after `from` in `bytes` is, if any (where a percent-encoded
/// break may begin; `%` is found by memchr, with no searcher built for a short needle).
fn percent_zero(bytes: &[u8], from: usize) -> Option<usize> {
    memchr::memchr_iter(b'%', &bytes[from..])
        .map(|at| from + at)
        .find(|&at| bytes.get(at + 1) == Some(&b'0'))
}

/// Whether `bytes` hold what may begin a line break as [`Unwrapped`] reads them.
fn may_break(bytes: &[u8]) -> bool {
    memchr::memchr3(b'\r', b'\n', b'\\', bytes).is_some()
        || percent_zero(bytes, 0).is_some()
        || bytes.last() == Some(&b'%')
}

impl Unwrapped {
    /// Whether `bytes`, a whole text searched as it stands already with nothing found
    /// ([`Needles::in_whole`]), hold a base64 form of the caller's token that a line break
    /// splits. A text with no break is not read again (nor copied).
    pub(crate) fn in_whole(needles: &Needles, bytes: &[u8]) -> bool {
        may_break(bytes) && Unwrapped::default().read(needles, bytes)
    }

    /// Reads `piece`, searched as it stands already with nothing found ([`Seen::read`] or
    /// [`Needles::in_whole`]): whether a base64 form of the caller's token that a line break
    /// splits now stands in what was read.
    pub(crate) fn read(&mut self, needles: &Needles, piece: &[u8]) -> bool {
        let forms = needles.base64();
        let Some(keep) = forms.iter().map(|form| form.len() - 1).max() else {
            return false;
        };
        let candidates = !self.partial.is_empty() || may_break(piece);
        let in_tail = |tail: &[u8]| forms.iter().any(|form| crate::proxy::contains(tail, form));
        if candidates && self.unwrap(piece) {
            // A break was left out: all of the piece is searched, after the tail.
            self.tail.extend_from_slice(&self.out);
            self.read += self.out.len() as u64;
            let found = in_tail(&self.tail);
            let excess = self.tail.len().saturating_sub(keep);
            self.tail.drain(..excess);
            return found;
        }
        let unchanged: &[u8] = if candidates { &self.out } else { piece };
        // Only the seam, once a break was left out before: the piece's inside was searched
        // as it stands, and before any break the reading is the body as sent.
        let before = self.tail.len();
        self.tail
            .extend_from_slice(&unchanged[..unchanged.len().min(keep)]);
        let found = self.last_break.is_some() && in_tail(&self.tail);
        self.tail.truncate(before);
        self.read += unchanged.len() as u64;
        keep_last(&mut self.tail, unchanged, keep);
        found
    }

    /// Writes `piece` (after what `partial` kept) to `out` with its line breaks left out, and
    /// keeps in `partial` an end that may begin one: whether a break was left out. (What
    /// `partial` holds is no base64 character, so `out` holds no form that the reading as sent
    /// did not search, unless a break was left out.)
    fn unwrap(&mut self, piece: &[u8]) -> bool {
        let joined;
        let input: &[u8] = if self.partial.is_empty() {
            piece
        } else {
            joined = [&self.partial[..], piece].concat();
            self.partial.clear();
            &joined
        };
        self.out.clear();
        let mut broke = false;
        let mut at = 0;
        // The next places that may begin a break, each found again once passed.
        let mut percent = percent_zero(input, 0);
        let mut other = memchr::memchr3(b'\r', b'\n', b'\\', input);
        loop {
            if percent.is_some_and(|p| p < at) {
                percent = percent_zero(input, at);
            }
            if other.is_some_and(|p| p < at) {
                other = memchr::memchr3(b'\r', b'\n', b'\\', &input[at..]).map(|p| p + at);
            }
            let Some(next) = percent.into_iter().chain(other).min() else {
                self.out.extend_from_slice(&input[at..]);
                break;
            };
            self.out.extend_from_slice(&input[at..next]);
            let rest = &input[next..];
            let len = match rest {
                [b'\r' | b'\n', ..] => 1,
                [b'\\', b'r' | b'n', ..] => 2,
                [b'%', b'0', b'a' | b'A' | b'd' | b'D', ..] => 3,
                [b'\\'] | [b'%', b'0'] => {
                    self.partial.extend_from_slice(rest);
                    break;
                }
                _ => {
                    self.out.push(rest[0]);
                    at = next + 1;
                    continue;
                }
            };
            broke = true;
            self.last_break = Some(self.read + self.out.len() as u64);
            at = next + len;
        }
        if self.partial.is_empty() && input.last() == Some(&b'%') {
            self.out.pop();
            self.partial.push(b'%');
        }
        broke
    }

    /// Whether what was read with the breaks left out ends with the start of a base64 form of
    /// the caller's token that a break splits, or that an escape begun may split, and that
    /// holds more than the characters that encode the prefix alone: more of the body could
    /// complete it, and nothing as sent shows where it began. (A start no longer than those is
    /// public, and a message that ends in a line break after a `c`, `B` or `w` is not held.)
    pub(crate) fn in_progress(&self, needles: &Needles) -> bool {
        let forms = needles.base64().iter().zip(needles.public());
        forms.into_iter().any(|(form, &public)| {
            let started = started(&self.tail, form);
            started > public
                && (!self.partial.is_empty()
                    || self
                        .last_break
                        .is_some_and(|at| at + started as u64 > self.read))
        })
    }
}

/// What a search for a `postern`-made token base64'd keeps of what it read: a window's
/// widest span ([`base64_shaped_at`]: the group before, and the groups from the prefix's to
/// the one holding the byte after the token).
const BASE64_SPAN: usize = 4 + window_chars(2);

/// How many characters from the group where the prefix stands at `place` to the end of the
/// group that holds the byte after the token.
const fn window_chars(place: usize) -> usize {
    ((place + TOKEN_LEN) / 3 + 1) * 4
}

static PREFIX_IN_BASE64_FINDERS: LazyLock<[memmem::Finder<'static>; 3]> =
    LazyLock::new(|| PREFIX_IN_BASE64.map(memmem::Finder::new));

/// The 6 bits a base64 character stands for, in either alphabet (standard or URL-safe).
fn sextet(c: u8) -> Option<u8> {
    Some(match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' | b'-' => 62,
        b'/' | b'_' => 63,
        _ => return None,
    })
}

/// How a `postern`-made token base64'd stands where `bytes` hold the prefix's form for `place`
/// ([`PREFIX_IN_BASE64`]) at `at`: decoded from the prefix's group to the group holding the
/// byte after the token, it must read as a token-shaped run does ([`run_at`]). Where the text
/// may hold a group before the prefix's (four base64 characters stand there), it is read both
/// with that group (whose last byte, before a token first in its group, must end a run) and as
/// beginning at the prefix's group (a text after a `/`, say, of which those characters are
/// not): a token either way is one. `ended`: `bytes` end where the text does (a body's last).
/// `Open` while what is read so far cannot tell.
fn base64_shaped_at(bytes: &[u8], at: usize, place: usize, ended: bool) -> Run {
    // The prefix's group: `place` bytes of it before the prefix, written in as many
    // characters before the form.
    let before = [0, 2, 3][place];
    let Some(group) = at.checked_sub(before) else {
        return Run::Not;
    };
    if bytes[group..at].iter().any(|&c| sextet(c).is_none()) {
        return Run::Not;
    }
    let with_group_before =
        bytes[..group].len() >= 4 && bytes[group - 4..group].iter().all(|&c| sextet(c).is_some());
    let alone = decoded_run(bytes, group, group, place, ended);
    if matches!(alone, Run::Token(_)) || !with_group_before {
        return alone;
    }
    match decoded_run(bytes, group - 4, group, place, ended) {
        Run::Not => alone,
        run => run,
    }
}

/// [`base64_shaped_at`]'s reading of the text decoded from `from` (the prefix's `group`, or the
/// group before it).
fn decoded_run(bytes: &[u8], from: usize, group: usize, place: usize, ended: bool) -> Run {
    let lead = (group - from) / 4 * 3;
    // The groups up to the one holding the byte after the token.
    let wanted = group + window_chars(place);
    let mut decoded = [0u8; BASE64_SPAN / 4 * 3];
    let (mut len, mut bits, mut held) = (0, 0u32, 0);
    let mut at_end = false;
    for (i, &c) in bytes[from..].iter().enumerate() {
        if from + i == wanted {
            break;
        }
        let Some(value) = sextet(c) else {
            at_end = true;
            break;
        };
        bits = bits << 6 | u32::from(value);
        held += 6;
        if held >= 8 {
            held -= 8;
            decoded[len] = (bits >> held) as u8;
            len += 1;
        }
    }
    // The text ended before the window did (a character that is none of base64's, padding, or
    // the end of what was read when that is the body's end).
    let closed = at_end || (bytes.len() < wanted && ended);
    let decoded = &decoded[..len];
    let token_at = lead + place;
    if decoded.len() < token_at + PREFIX.len() {
        return if closed { Run::Not } else { Run::Open(0) };
    }
    if !decoded[token_at..].starts_with(PREFIX) || !starts_run(decoded, token_at, true, 0) {
        return Run::Not;
    }
    match run_at(decoded, token_at, 0) {
        Run::Open(n) if n == TOKEN_RANDOM_CHARS && closed => Run::Token(n),
        Run::Open(_) if closed => Run::Not,
        run => run,
    }
}

/// One reading of a body searched as it streams for a token `postern` made that is base64'd:
/// another caller's `Basic` credential, a document holding one encoded whole. Where the
/// prefix's form stands ([`PREFIX_IN_BASE64`]: fixed, whatever surrounds it) the text around
/// it is decoded and read as a token-shaped run is ([`base64_shaped_at`]). The caller's own
/// token is found so by its own forms ([`Needles`]); this finds any.
#[derive(Default, Clone)]
pub(crate) struct Base64Shaped {
    /// The last [`BASE64_SPAN`] bytes read.
    tail: Vec<u8>,
}

impl Base64Shaped {
    /// Whether `bytes`, a whole text, hold a token `postern` made, base64'd.
    pub(crate) fn in_whole(bytes: &[u8]) -> bool {
        Self::decided(bytes, true).0
    }

    /// Searches `bytes` at each place the prefix's form stands: whether a token stands
    /// decided, and whether one is still open.
    fn decided(bytes: &[u8], ended: bool) -> (bool, bool) {
        let mut open = false;
        for (place, finder) in PREFIX_IN_BASE64_FINDERS.iter().enumerate() {
            for at in finder.find_iter(bytes) {
                match base64_shaped_at(bytes, at, place, ended) {
                    Run::Token(_) => return (true, false),
                    Run::Open(_) => open = true,
                    Run::Not => {}
                }
            }
        }
        (false, open)
    }

    /// Reads `piece` after what was read before: whether a token base64'd now stands decided.
    pub(crate) fn read(&mut self, piece: &[u8]) -> bool {
        // Across the seam: the tail and enough of the piece to end any window begun in it.
        let before = self.tail.len();
        self.tail
            .extend_from_slice(&piece[..piece.len().min(BASE64_SPAN)]);
        let (across, _) = Self::decided(&self.tail, false);
        self.tail.truncate(before);
        // Inside the piece: windows whose groups it shows (those at its start, the seam's).
        let inside = !across && Self::decided(piece, false).0;
        keep_last(&mut self.tail, piece, BASE64_SPAN);
        across || inside
    }

    /// Whether what was read ends inside a window that more of the body decides: from the
    /// prefix's form on, what follows it is the token's own characters, held back.
    pub(crate) fn in_progress(&self) -> bool {
        Self::decided(&self.tail, false).1
    }

    /// Whether the body, ending after what was read, ends with a token base64'd.
    pub(crate) fn ends_in_token(&self) -> bool {
        Self::decided(&self.tail, true).0
    }

    /// Becomes what `other` is, keeping its own buffer (no allocation once it has one).
    pub(crate) fn copy_from(&mut self, other: &Base64Shaped) {
        self.tail.clear();
        self.tail.extend_from_slice(&other.tail);
    }
}

/// The prefix in UTF-16 as both byte orders hold it: little-endian's `p\0s\0t\0_\0` and
/// big-endian's `\0p\0s\0t\0_` share these bytes.
const PREFIX_IN_UTF16: [u8; 7] = *b"p\0s\0t\0_";

static PREFIX_IN_UTF16_FINDER: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(&PREFIX_IN_UTF16));

/// What a search for a `postern`-made token in UTF-16 keeps of what it read: the code unit
/// before a token, the token's, and the one after it.
const UTF16_SPAN: usize = 2 * (TOKEN_LEN + 2);

/// How a `postern`-made token in UTF-16 stands where its code units begin at `start` in
/// `bytes` (`little`: little-endian): read back into ASCII, with the unit before it, as a
/// token-shaped run is ([`run_at`]); a unit that is not an ASCII character ends the run.
/// `ended`: `bytes` end where the text does. `bounded`: `bytes` begin where the text does (so
/// a token at their start has nothing before it). `None` where the unit before it is not in
/// `bytes` and they do not begin the text: a reading that holds that unit decides.
fn utf16_shaped_at(
    bytes: &[u8],
    start: usize,
    little: bool,
    ended: bool,
    bounded: bool,
) -> Option<Run> {
    let unit = |at: usize| -> u8 {
        let (char, high) = match little {
            true => (bytes[at], bytes[at + 1]),
            false => (bytes[at + 1], bytes[at]),
        };
        match high {
            0 => char,
            // Not ASCII: nothing a run holds.
            _ => 0xff,
        }
    };
    // The unit before, then the token's units and the one after it.
    let mut decoded = [0u8; TOKEN_LEN + 2];
    decoded[0] = match start {
        2.. => unit(start - 2),
        // A text that begins with half a unit: its byte is what stands before (the other
        // byte order's reading of the same text, one byte on, sees that byte so).
        1 if bounded => bytes[0],
        0 if bounded => b' ',
        _ => return None,
    };
    let units = ((bytes.len() - start) / 2).min(TOKEN_LEN + 1);
    for (i, slot) in decoded[1..=units].iter_mut().enumerate() {
        *slot = unit(start + 2 * i);
    }
    // The text ended before the unit after the token was read. A last byte alone is no
    // character (a vendor's decoder drops it, or reads U+FFFD). Where the bytes are read in
    // units one byte off their own (both byte orders are read at every offset: a UTF-16 part
    // need not begin at an even one), a run may so be taken for a token one character longer
    // than it is, or run on past a unit that is not ASCII: such a near token is refused,
    // never a token missed.
    let closed = ended && units < TOKEN_LEN + 1;
    let decoded = &decoded[..=units];
    if units < PREFIX.len() {
        return Some(if closed { Run::Not } else { Run::Open(0) });
    }
    if !decoded[1..].starts_with(PREFIX) || !starts_run(decoded, 1, false, 0) {
        return Some(Run::Not);
    }
    Some(match run_at(decoded, 1, 0) {
        Run::Open(n) if closed && n == TOKEN_RANDOM_CHARS => Run::Token(n),
        Run::Open(_) if closed => Run::Not,
        run => run,
    })
}

/// One reading of a body searched as it streams for a token `postern` made, in UTF-16 (either
/// byte order): another caller's token in a JSON body a vendor's parser reads as UTF-16 when
/// it sees one (RFC 4627's detection, as Jackson does). The caller's own token is found so by
/// its own forms ([`Needles`]); this finds any. Where the prefix's units stand
/// ([`PREFIX_IN_UTF16`]) the units around them are read back into ASCII
/// ([`utf16_shaped_at`]).
#[derive(Default, Clone)]
pub(crate) struct Utf16Shaped {
    /// The last [`UTF16_SPAN`] bytes read.
    tail: Vec<u8>,
    /// How many bytes were read in all (up to past [`UTF16_SPAN`]).
    read: usize,
}

impl Utf16Shaped {
    /// Whether `bytes`, a whole text, hold a token `postern` made, in UTF-16.
    pub(crate) fn in_whole(bytes: &[u8]) -> bool {
        Self::decided(bytes, true, true).0
    }

    /// Searches `bytes` at each place the prefix's units stand, in both byte orders: whether a
    /// token stands decided, and whether one is still open.
    fn decided(bytes: &[u8], ended: bool, bounded: bool) -> (bool, bool) {
        let mut open = false;
        for at in PREFIX_IN_UTF16_FINDER.find_iter(bytes) {
            let big = at.checked_sub(1).filter(|&start| bytes[start] == 0);
            for (start, little) in [(Some(at), true), (big, false)] {
                let Some(start) = start else { continue };
                match utf16_shaped_at(bytes, start, little, ended, bounded) {
                    Some(Run::Token(_)) => return (true, false),
                    Some(Run::Open(_)) => open = true,
                    Some(Run::Not) | None => {}
                }
            }
        }
        (false, open)
    }

    /// Whether the tail holds every byte read (the stream's first among them).
    fn holds_the_start(&self) -> bool {
        self.read <= UTF16_SPAN
    }

    /// Reads `piece` after what was read before: whether a token in UTF-16 now stands decided.
    pub(crate) fn read(&mut self, piece: &[u8]) -> bool {
        // Across the seam: the tail and enough of the piece to end any token begun in it, or
        // at its first two bytes (whose unit before the piece does not hold).
        let before = self.tail.len();
        let bounded = self.holds_the_start();
        self.tail
            .extend_from_slice(&piece[..piece.len().min(UTF16_SPAN)]);
        let (across, _) = Self::decided(&self.tail, false, bounded);
        self.tail.truncate(before);
        let inside = !across && Self::decided(piece, false, false).0;
        keep_last(&mut self.tail, piece, UTF16_SPAN);
        self.read = self.read.saturating_add(piece.len());
        across || inside
    }

    /// Whether what was read ends inside a token in UTF-16 that more of the body decides: from
    /// the prefix's units on, what follows them is the token's own characters, held back.
    pub(crate) fn in_progress(&self) -> bool {
        Self::decided(&self.tail, false, self.holds_the_start()).1
    }

    /// Whether the body, ending after what was read, ends with a token in UTF-16.
    pub(crate) fn ends_in_token(&self) -> bool {
        Self::decided(&self.tail, true, self.holds_the_start()).0
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn token() -> Vec<u8> {
        [PREFIX, &[b'A'; TOKEN_RANDOM_CHARS][..]].concat()
    }

    /// A token as `postern callers token` makes one, its random part drawn from `fuzz`.
    pub(crate) fn random_token(fuzz: &mut crate::fuzz::Fuzz) -> Vec<u8> {
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        PREFIX
            .iter()
            .copied()
            .chain((0..TOKEN_RANDOM_CHARS).map(|_| alphabet[fuzz.next() as usize % 64]))
            .collect()
    }

    /// Reads `pieces` in turn: whether a token was found in one of them or at the end.
    fn found_in(needles: &Needles, pieces: &[&[u8]]) -> bool {
        let mut seen = Seen::default();
        pieces.iter().any(|piece| seen.read(needles, piece)) || seen.ends_in_token(needles)
    }

    #[test]
    fn a_token_shaped_run_is_found_wherever_the_pieces_split_it() {
        let token = token();
        let needles = Needles::new(None);
        for (before, after) in [
            (&b"{\"key\": \""[..], &b"\"}"[..]),
            (b"", b""),
            (b"a=1&k=", b""),
            (b"", b"&a=1"),
            (&[b'x'; 200][..], b" tail"),
        ] {
            let mut body = before.to_vec();
            if !before.is_empty() && before[before.len() - 1].is_ascii_alphanumeric() {
                body.push(b' ');
            }
            body.extend_from_slice(&token);
            body.extend_from_slice(after);
            assert!(token_shaped(&body) && found_in(&needles, &[&body]));
            for first in 0..=body.len() {
                for second in first..=body.len().min(first + 60) {
                    let pieces = [&body[..first], &body[first..second], &body[second..]];
                    assert!(
                        found_in(&needles, &pieces),
                        "{} split at {first}, {second}",
                        String::from_utf8_lossy(&body)
                    );
                }
            }
        }
    }

    #[test]
    fn a_token_with_a_name_glued_to_it_is_found_wherever_the_pieces_split_it() {
        let token = token();
        let needles = Needles::new(None);
        let glue = [b'g'; GLUE];
        for (before, after) in [
            (&b"session-"[..], &b""[..]),
            (b"{\"k\": \"x", b"\"}"),
            (b"a=", b"_2&b=1"),
            (&glue[..], &glue[..]),
            (&[b"k=", &glue[..]].concat()[..], b"-v2"),
        ] {
            let body = [before, &token[..], after].concat();
            assert!(token_shaped(&body), "{}", String::from_utf8_lossy(&body));
            for first in 0..=body.len() {
                for second in (first..=body.len()).step_by(3) {
                    let pieces = [&body[..first], &body[first..second], &body[second..]];
                    assert!(
                        found_in(&needles, &pieces),
                        "{} split at {first}, {second}",
                        String::from_utf8_lossy(&body)
                    );
                }
            }
        }
    }

    #[test]
    fn longer_or_shorter_runs_are_not_tokens_wherever_the_pieces_split_them() {
        let token = token();
        let needles = Needles::new(None);
        let too_much = [b'x'; GLUE + 1];
        let not_random = [&b"pst_"[..], &[b'a'; TOKEN_RANDOM_CHARS - 1], b"_"].concat();
        let bodies = [
            // One character more glued than a token may have, before or after.
            [&too_much[..], &token[..], b" "].concat(),
            [b" ", &token[..], &too_much[..]].concat(),
            [&token[..], &[b'-'; GLUE + 1]].concat(),
            // One character less.
            [b" ", &token[..TOKEN_LEN - 1], b"\""].concat(),
            // The prefix in the middle of a long run.
            [&[b'q'; 100][..], &token[..], &[b'q'; 100][..]].concat(),
            // Names, not random characters: lower-case letters and `_` after the prefix.
            [b"{\"", &not_random[..], b"\": 1}"].concat(),
            [b"convert_to_", &not_random[..], b"_v2"].concat(),
            // Names with digits: dates, counters, a UUID, all in lower case.
            b"{\"key\": \"exports/pst_export_2024-06-01_jdoe_mailbox_archive_part1.zip\"}".to_vec(),
            b"{\"Key\": \"mailbox_pst_3f2c9a1e-7b4d-4c1a-9e2f-8a6b5c4d3e2f_export.zip\"}".to_vec(),
            b"def test_convert_to_pst_handles_2024_dst_transition_correctly_in_march(self):"
                .to_vec(),
        ];
        for body in bodies {
            assert!(!token_shaped(&body), "{}", String::from_utf8_lossy(&body));
            for first in 0..=body.len() {
                for second in (first..=body.len()).step_by(7) {
                    let pieces = [&body[..first], &body[first..second], &body[second..]];
                    assert!(
                        !found_in(&needles, &pieces),
                        "{} split at {first}, {second}",
                        String::from_utf8_lossy(&body)
                    );
                }
            }
        }
    }

    #[test]
    fn the_callers_own_token_is_found_whatever_its_shape() {
        let needles = Needles::new(Some(b"sk-not-a-postern-shape-0123456789"));
        let body = b"{\"a\": \"xsk-not-a-postern-shape-0123456789x\"}";
        assert!(found_in(&needles, &[body]));
        for split in 0..=body.len() {
            assert!(found_in(&needles, &[&body[..split], &body[split..]]));
        }
        // One with the prefix, found where it stands inside a longer run too (which no
        // token-shaped run is), however split.
        let needles = Needles::new(Some(b"pst_own-0123"));
        let body = b"a=xpst_own-0123456&b=pst_own-012";
        for split in 0..=body.len() {
            assert!(found_in(&needles, &[&body[..split], &body[split..]]));
            let no = &body[15..];
            assert!(!found_in(
                &needles,
                &[&no[..split.min(no.len())], &no[split.min(no.len())..]]
            ));
        }
        assert!(!found_in(&Needles::new(Some(b"")), &[body]));
    }

    #[test]
    fn the_callers_own_token_is_found_in_base64_wherever_it_stood_however_split() {
        use base64::Engine as _;
        let own = b"pst_hy5M0xh23REAwMjp7vLcwaZBjNWbDYhLaGGT6zHhr0Q";
        let needles = Needles::new(Some(own));
        let engines = [
            base64::engine::general_purpose::STANDARD,
            base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ];
        for engine in engines {
            // The token at each of the three places in a 3-byte group, and at the end.
            for before in [&b""[..], b"u", b"AC42:", b"{\"k\":\""] {
                for after in [&b""[..], b"\"}", b"!"] {
                    let plain = [before, &own[..], after].concat();
                    let body = [
                        b"{\"auth\": \"Basic ",
                        engine.encode(&plain).as_bytes(),
                        b"\"}",
                    ]
                    .concat();
                    for split in 0..=body.len() {
                        assert!(
                            found_in(&needles, &[&body[..split], &body[split..]]),
                            "{} split at {split}",
                            String::from_utf8_lossy(&body)
                        );
                    }
                }
            }
        }
        // Any token (random bytes, so `+` and `/` appear), anywhere in what is encoded, by
        // either alphabet, padded or not.
        let mut fuzz = crate::fuzz::Fuzz(0x2545_f491_4f6c_dd1d);
        let mut bytes = |n: usize| -> Vec<u8> { (0..n).map(|_| fuzz.next() as u8).collect() };
        for case in 0..3000 {
            let token = bytes(BASE64_MIN_TOKEN + case % 50);
            let before = bytes(case % 7);
            let after = bytes(case / 7 % 4);
            let plain = [&before[..], &token[..], &after[..]].concat();
            let forms = base64_forms(&token);
            for engine in [
                base64::engine::general_purpose::STANDARD,
                base64::engine::general_purpose::URL_SAFE_NO_PAD,
            ] {
                let text = engine.encode(&plain);
                assert!(
                    forms
                        .iter()
                        .any(|form| crate::proxy::contains(text.as_bytes(), form)),
                    "{token:?} in {text}"
                );
            }
        }
        // Another token's base64, or a short token's, is not the caller's.
        let other = base64::engine::general_purpose::STANDARD
            .encode(b"AC42:pst_hy5M0xh23REAwMjp7vLcwaZBjNWbDYhLaGGT6zHhs0Q");
        assert!(!found_in(&needles, &[other.as_bytes()]));
        assert!(base64_forms(b"short-tok").is_empty());
    }

    /// Reads `pieces` in turn as they stand and with their line breaks left out: whether a
    /// token was found in one of them, and whether the last leaves one in progress.
    fn found_unwrapped(needles: &Needles, pieces: &[&[u8]]) -> (bool, bool) {
        let (mut seen, mut unwrapped) = (Seen::default(), Unwrapped::default());
        let found = pieces
            .iter()
            .any(|piece| seen.read(needles, piece) || unwrapped.read(needles, piece));
        (found, unwrapped.in_progress(needles))
    }

    #[test]
    fn the_callers_own_token_is_found_in_base64_wrapped_into_lines_however_split() {
        use base64::Engine as _;
        let own = b"pst_hy5M0xh23REAwMjp7vLcwaZBjNWbDYhLaGGT6zHhr0Q";
        let other = b"pst_hy5M0xh23REAwMjp7vLcwaZBjNWbDYhLaGGT6zHhs0Q";
        let needles = Needles::new(Some(own));
        let wrap = |text: &str, width: usize, brk: &str| {
            let lines: Vec<&str> = text
                .as_bytes()
                .chunks(width)
                .map(|line| std::str::from_utf8(line).unwrap())
                .collect();
            lines.join(brk)
        };
        // MIME's CRLF, PEM's LF, a JSON string's escapes, a form field's percent-encoding.
        let styles: [(&str, &str, &str); 5] = [
            ("", "\r\n", ""),
            ("", "\n", ""),
            ("{\"file\": \"", "\\n", "\"}"),
            ("{\"file\": \"", "\\r\\n", "\"}"),
            ("to=a&attachment=", "%0D%0a", "&x=1"),
        ];
        for before in [&b""[..], b"u", b"AC42:"] {
            let document = [before, b"{\"api_key\": \"", &own[..], b"\"}"].concat();
            let text = base64::engine::general_purpose::STANDARD.encode(&document);
            for (start, brk, end) in styles {
                for width in [4, 13, 64, 76] {
                    let body = format!("{start}{}{end}", wrap(&text, width, brk));
                    let body = body.as_bytes();
                    for split in 0..=body.len() {
                        let (found, _) =
                            found_unwrapped(&needles, &[&body[..split], &body[split..]]);
                        assert!(found, "{brk:?} width {width} split at {split}");
                    }
                    for first in (0..=body.len()).step_by(5) {
                        let pieces = [
                            &body[..first],
                            &body[first..(first + 3).min(body.len())],
                            &body[(first + 3).min(body.len())..],
                        ];
                        assert!(found_unwrapped(&needles, &pieces).0);
                    }
                    // Another token's, however wrapped, is not the caller's.
                    let others = [before, b"{\"api_key\": \"", &other[..], b"\"}"].concat();
                    let others = base64::engine::general_purpose::STANDARD.encode(&others);
                    let body = format!("{start}{}{end}", wrap(&others, width, brk));
                    assert!(!found_unwrapped(&needles, &[body.as_bytes()]).0);
                }
            }
        }
        // A message that ends in a break after what encodes the prefix alone is not held: the
        // vendor learns nothing of the token from it.
        for public in PREFIX_IN_BASE64 {
            let text = [b"x ", public, b"\r\n"].concat();
            assert_eq!(found_unwrapped(&needles, &[&text]), (false, false));
        }
        // The whole of a form cut by a break past its public start (here 7 characters in) is
        // held back until the piece that decides it; a form's start that no break cuts is left
        // to the reading as sent ([`Seen::pending`]).
        let text = base64::engine::general_purpose::STANDARD.encode(own);
        let form = base64_forms(own)[0].to_vec();
        let at = memmem::find(text.as_bytes(), &form).unwrap();
        let cut = &text[..at + 10];
        for brk in ["\n", "\\n", "%0A"] {
            let body = format!("{}{brk}{}", &cut[..at + 7], &cut[at + 7..]);
            assert_eq!(
                found_unwrapped(&needles, &[body.as_bytes()]),
                (false, true),
                "{brk}"
            );
            let ends_in_a_break = format!("{}{brk}", &cut[..at + 7]);
            assert_eq!(
                found_unwrapped(&needles, &[ends_in_a_break.as_bytes()]),
                (false, true)
            );
        }
        assert_eq!(
            found_unwrapped(&needles, &[b"x\n", cut.as_bytes()]),
            (false, false)
        );
        // An escape that may begin a break holds a form's start back until it is decided.
        assert_eq!(
            found_unwrapped(&needles, &[format!("{}%0", &cut[..at + 7]).as_bytes()]),
            (false, true)
        );
        assert_eq!(
            found_unwrapped(
                &needles,
                &[format!("{}%0", &cut[..at + 7]).as_bytes(), b"9 "]
            ),
            (false, false)
        );
        // A token without the prefix has no public start: one character is held.
        let other = Needles::new(Some(b"sk-not-a-postern-shape-0123456789"));
        let first = base64_forms(b"sk-not-a-postern-shape-0123456789")[0][0];
        assert_eq!(
            found_unwrapped(&other, &[&[b' ', first, b'\n']]),
            (false, true)
        );
        // A caller without a token of its own has no form to look for.
        assert_eq!(
            found_unwrapped(&Needles::new(None), &[b"a\nb"]),
            (false, false)
        );
    }

    #[test]
    fn the_prefix_in_base64_is_what_every_form_of_a_postern_token_begins_with() {
        use base64::Engine as _;
        assert_eq!(PREFIX, b"pst_", "PREFIX_IN_BASE64 is made for this prefix");
        let token = token();
        let forms = base64_forms(&token);
        for (place, prefix) in PREFIX_IN_BASE64.iter().enumerate() {
            assert!(forms.iter().any(|form| form.starts_with(prefix)), "{place}");
            // Whatever bytes stand around it, the prefix at this place is so written.
            for around in [0u8, 0x55, 0xaa, 0xff] {
                let plain = [&vec![around; place][..], PREFIX, &[around; 2]].concat();
                let text = base64::engine::general_purpose::STANDARD.encode(&plain);
                let first = (8 * place).div_ceil(6);
                assert_eq!(&text.as_bytes()[first..first + prefix.len()], *prefix);
            }
        }
    }

    /// Reads `pieces` in turn for a token `postern` made, base64'd: whether one was found in a
    /// piece or at the end, and whether the last piece left one open.
    fn base64_shaped_in(pieces: &[&[u8]]) -> (bool, bool) {
        let mut shaped = Base64Shaped::default();
        let found = pieces.iter().any(|piece| shaped.read(piece));
        let open = !found && shaped.in_progress();
        (found || shaped.ends_in_token(), open)
    }

    #[test]
    fn any_postern_token_base64d_is_found_however_split_and_nothing_like_one() {
        use base64::Engine as _;
        let engines = [
            base64::engine::general_purpose::STANDARD,
            base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ];
        let mut fuzz = crate::fuzz::Fuzz(0x9e37_79b9_7f4a_7c15);
        for case in 0..400 {
            let token = random_token(&mut fuzz);
            // What stands around it: nothing, or bytes that end a run.
            let before: &[u8] = [&b""[..], b"AC42:", b"{\"k\":\"", b" "][case % 4];
            let after: &[u8] = [&b""[..], b"\"}", b":x", b"\n"][case / 4 % 4];
            let plain = [before, &token[..], after].concat();
            let engine = &engines[case % 2];
            let body = format!("{{\"auth\": \"Basic {}\"}}", engine.encode(&plain));
            let body = body.as_bytes();
            assert!(
                Base64Shaped::in_whole(body),
                "{}",
                String::from_utf8_lossy(body)
            );
            for split in (0..=body.len()).step_by(1 + case % 5) {
                assert!(
                    base64_shaped_in(&[&body[..split], &body[split..]]).0,
                    "{} split at {split}",
                    String::from_utf8_lossy(body)
                );
            }
            let pieces: Vec<&[u8]> = body.chunks(1 + case % 9).collect();
            assert!(base64_shaped_in(&pieces).0);
            // The text alone, ending where the token does.
            let alone = engine.encode([before, &token[..]].concat());
            assert!(Base64Shaped::in_whole(alone.as_bytes()), "{alone}");
            // One character more, or a base64url byte before it: not a token.
            for near in [
                [before, &token[..], b"A"].concat(),
                [b"x", &token[..], after].concat(),
                [before, &token[..TOKEN_LEN - 1], after].concat(),
            ] {
                let text = engine.encode(&near);
                assert!(!Base64Shaped::in_whole(text.as_bytes()), "{near:?}");
                let pieces: Vec<&[u8]> = text.as_bytes().chunks(1 + case % 7).collect();
                assert!(!base64_shaped_in(&pieces).0, "{near:?}");
            }
        }
        // A text after a `/` (a path segment), or after one to four base64 characters that are
        // not its own, whose first group holds the token.
        let token = [PREFIX, &[b'Q'; TOKEN_RANDOM_CHARS][..]].concat();
        for engine in &engines {
            let text = engine.encode(&token);
            for lead in ["/", "+", "-", "_", "ab", "abc", "x/", "mest", "/v1/keys/"] {
                let body = format!("{{\"u\": \"https://h/hook{lead}{text}\"}}");
                assert!(Base64Shaped::in_whole(body.as_bytes()), "{body}");
                assert!(base64_shaped_in(&body.as_bytes().chunks(5).collect::<Vec<_>>()).0);
            }
        }
        // Random bytes base64'd hold none (the prefix's forms turn up by chance here and there).
        let random: Vec<u8> = (0..200_000).map(|_| fuzz.next() as u8).collect();
        let text = base64::engine::general_purpose::STANDARD.encode(&random);
        assert!(!Base64Shaped::in_whole(text.as_bytes()));
    }

    #[test]
    fn a_base64d_token_is_open_from_its_prefix_until_decided() {
        use base64::Engine as _;
        let token = token();
        let text =
            base64::engine::general_purpose::STANDARD.encode([b" ", &token[..], b" "].concat());
        let at = PREFIX_IN_BASE64_FINDERS
            .iter()
            .find_map(|finder| finder.find(text.as_bytes()))
            .unwrap();
        let body = text.as_bytes();
        // Before the prefix's form is whole nothing of the token is read: nothing is held.
        assert_eq!(base64_shaped_in(&[&body[..at + 2]]), (false, false));
        // From it on, until the byte after the token.
        for end in at + 6..body.len() - 4 {
            assert_eq!(base64_shaped_in(&[&body[..end]]), (false, true), "{end}");
        }
        assert_eq!(base64_shaped_in(&[body]), (true, false));
        // A run that goes on past the token is decided once it does.
        let longer =
            base64::engine::general_purpose::STANDARD.encode([&token[..], b"AAAA"].concat());
        assert_eq!(base64_shaped_in(&[longer.as_bytes()]), (false, false));
    }

    /// Reads `pieces` in turn for a token `postern` made, in UTF-16: whether one was found in a
    /// piece or at the end, and whether the last piece left one open.
    fn utf16_shaped_in(pieces: &[&[u8]]) -> (bool, bool) {
        let mut shaped = Utf16Shaped::default();
        let found = pieces.iter().any(|piece| shaped.read(piece));
        let open = !found && shaped.in_progress();
        (found || shaped.ends_in_token(), open)
    }

    fn utf16(text: &[u8], little: bool) -> Vec<u8> {
        String::from_utf8_lossy(text)
            .encode_utf16()
            .flat_map(|unit| match little {
                true => unit.to_le_bytes(),
                false => unit.to_be_bytes(),
            })
            .collect()
    }

    #[test]
    fn any_postern_token_in_utf16_is_found_however_split_and_nothing_like_one() {
        assert_eq!(PREFIX_IN_UTF16[..], utf16(PREFIX, true)[..7]);
        assert_eq!(PREFIX_IN_UTF16[..], utf16(PREFIX, false)[1..]);
        let mut fuzz = crate::fuzz::Fuzz(0x2545_f491_4f6c_dd1d);
        for case in 0..400 {
            let token = random_token(&mut fuzz);
            let before: &[u8] = [&b""[..], b"{\"api_key\": \"", b" ", "é:".as_bytes()][case % 4];
            let after: &[u8] = [&b""[..], b"\"}", b"\n", "€".as_bytes()][case / 4 % 4];
            let little = case % 2 == 0;
            let body = utf16(&[before, &token[..], after].concat(), little);
            assert!(Utf16Shaped::in_whole(&body), "{case}");
            for split in (0..=body.len()).step_by(1 + case % 5) {
                assert!(
                    utf16_shaped_in(&[&body[..split], &body[split..]]).0,
                    "{case} split at {split}"
                );
            }
            let pieces: Vec<&[u8]> = body.chunks(1 + case % 9).collect();
            assert!(utf16_shaped_in(&pieces).0, "{case}");
            // One character more, a base64url character before it, one less: not a token.
            // (Not "one more" at the body's very end: read one byte off, big-endian text's
            // last unit is a lone byte, and the run reads as a token; see `utf16_shaped_at`.)
            for near in [
                [before, &token[..], b"A "].concat(),
                [b"x", &token[..], after].concat(),
                [before, &token[..TOKEN_LEN - 1], after].concat(),
            ] {
                let body = utf16(&near, little);
                assert!(!Utf16Shaped::in_whole(&body), "{case} {near:?}");
                for size in [1, 2, 3, 7, 64] {
                    let pieces: Vec<&[u8]> = body.chunks(size).collect();
                    assert!(!utf16_shaped_in(&pieces).0, "{case} {near:?} in {size}");
                }
            }
            // The token as plain ASCII is not this search's (Seen finds it).
            assert!(!Utf16Shaped::in_whole(
                &[before, &token[..], after].concat()
            ));
        }
        // A lone byte after a token at the body's end is no character (a vendor's decoder drops
        // it or reads U+FFFD): the token stands on its own.
        for little in [true, false] {
            let body = [
                utf16(&[b"{\"k\":1} ", &token()[..]].concat(), little),
                vec![b'A'],
            ]
            .concat();
            assert!(Utf16Shaped::in_whole(&body));
            for size in 1..=9 {
                assert!(
                    utf16_shaped_in(&body.chunks(size).collect::<Vec<_>>()).0,
                    "{size}"
                );
            }
        }
        // Random bytes hold none.
        let random: Vec<u8> = (0..200_000).map(|_| fuzz.next() as u8).collect();
        assert!(!Utf16Shaped::in_whole(&random));
    }

    #[test]
    fn a_token_in_utf16_is_open_from_its_prefix_until_decided() {
        let token = token();
        for little in [true, false] {
            let body = utf16(&[b" ", &token[..], b" "].concat(), little);
            // The prefix's units are whole 9 bytes in (a space's unit, then 7 bytes), or 10
            // in big-endian (whose units end with the character).
            let whole = if little { 9 } else { 10 };
            for end in 0..whole {
                assert_eq!(utf16_shaped_in(&[&body[..end]]), (false, false), "{end}");
            }
            // From them on, until the unit after the token; a body that ended there would end
            // with the token once its last character's unit is read (big-endian; little-endian,
            // also its first byte: the same bytes read big-endian one byte on end with the
            // character's unit).
            let complete = body.len() - 2 - usize::from(little);
            for end in whole..body.len() - 1 {
                let (found, open) = utf16_shaped_in(&[&body[..end]]);
                assert!(open, "{end}");
                assert_eq!(found, end >= complete, "{end}");
            }
            assert_eq!(utf16_shaped_in(&[&body]), (true, false));
            // Ending with the token, it is open (held) until the body's end decides it.
            let ends = &body[..body.len() - 2];
            assert_eq!(utf16_shaped_in(&[ends]), (true, true));
            // A run that goes on past the token is decided once it does.
            let longer = utf16(&[&token[..], b"AAAA"].concat(), little);
            assert_eq!(utf16_shaped_in(&[&longer]), (false, false));
        }
    }

    #[test]
    fn the_callers_own_token_is_found_in_utf16_however_split() {
        let own = b"pst_hy5M0xh23REAwMjp7vLcwaZBjNWbDYhLaGGT6zHhr0Q";
        let needles = Needles::new(Some(own));
        let text = format!("{{\"api_key\": \"{}\"}}", String::from_utf8_lossy(own));
        let little: Vec<u8> = text.encode_utf16().flat_map(u16::to_le_bytes).collect();
        let big: Vec<u8> = text.encode_utf16().flat_map(u16::to_be_bytes).collect();
        for body in [little, big] {
            for split in 0..=body.len() {
                assert!(
                    found_in(&needles, &[&body[..split], &body[split..]]),
                    "{split}"
                );
            }
            // One character short is not the token.
            let short = [&body[..30], &body[32..]].concat();
            assert!(!found_in(&needles, &[&short]));
        }
        // A token that is not ASCII has no UTF-16 form here (nor an empty one).
        assert!(utf16_forms("pst_é-not-ascii-token".as_bytes())
            .iter()
            .all(|f| f.is_empty()));
        let needles = Needles::new(Some("tøken-not-ascii-1234".as_bytes()));
        assert!(!found_in(&needles, &[b"nothing here"]));
    }

    #[test]
    fn a_threads_last_token_is_made_once_and_another_replaces_it() {
        let first = [PREFIX, &[b'A'; TOKEN_RANDOM_CHARS][..]].concat();
        let second = [PREFIX, &[b'B'; TOKEN_RANDOM_CHARS][..]].concat();
        let mine = |needles: &Needles| needles.mine.clone().unwrap();
        let a = Needles::new(Some(&first));
        assert!(Arc::ptr_eq(&mine(&a), &mine(&Needles::new(Some(&first)))));
        // Another token is its own, one of the same length that differs in its last byte too
        // (each compared with the token kept just before it).
        let mut near = first.clone();
        *near.last_mut().unwrap() = b'C';
        assert!(!Arc::ptr_eq(&mine(&a), &mine(&Needles::new(Some(&near)))));
        let a = Needles::new(Some(&first));
        let b = Needles::new(Some(&second));
        assert!(!Arc::ptr_eq(&mine(&a), &mine(&b)));
        // Each finds its own token, whole or base64'd, and not the other's.
        use base64::Engine as _;
        let b64 = |token: &[u8]| base64::engine::general_purpose::STANDARD.encode(token);
        let a = Needles::new(Some(&first));
        let other = Needles::new(Some(b"sk-not-a-postern-shape-0123456789"));
        assert!(found_in(&a, &[b64(&first).as_bytes()]));
        assert!(!found_in(&a, &[b64(&second).as_bytes()]));
        assert!(found_in(&b, &[b64(&second).as_bytes()]));
        assert!(found_in(
            &other,
            &[b"x sk-not-a-postern-shape-0123456789 y"]
        ));
        assert!(!found_in(&other, &[b64(&first).as_bytes()]));
    }

    #[test]
    fn started_is_the_longest_run_of_last_bytes_that_starts_the_needle() {
        let slow = |bytes: &[u8], needle: &[u8]| {
            (1..=bytes.len().min(needle.len().saturating_sub(1)))
                .rev()
                .find(|&len| bytes.ends_with(&needle[..len]))
                .unwrap_or(0)
        };
        let texts: [&[u8]; 9] = [
            b"", b"a", b"ab", b"aab", b"abab", b"xxaba", b"abaab", b"ba", b"aaaa",
        ];
        for bytes in texts {
            for needle in texts {
                assert_eq!(
                    started(bytes, needle),
                    slow(bytes, needle),
                    "{bytes:?} {needle:?}"
                );
            }
        }
    }

    #[test]
    fn a_tail_that_more_could_complete_is_in_progress() {
        let token = token();
        let needles = Needles::new(Some(b"own-token-0123"));
        let after = |text: &[u8]| {
            let mut seen = Seen::default();
            assert!(!seen.read(&needles, text));
            seen
        };
        for end in 1..=TOKEN_LEN {
            let seen = after(&[b"k=", &token[..end]].concat());
            assert!(seen.in_progress(&needles), "{end}");
            assert_eq!(seen.ends_in_token(&needles), end == TOKEN_LEN, "{end}");
        }
        assert!(after(b"k=own-to").in_progress(&needles));
        // A run that cannot become a token, or nothing that starts one.
        let glued = [b'x'; GLUE];
        assert!(after(&[b"k=", &glued[..], b"pst_AAAA"].concat()).in_progress(&needles));
        assert!(!after(&[b"k=x", &glued[..], b"pst_AAAA"].concat()).in_progress(&needles));
        let mut seen = after(b"k=p");
        assert!(!seen.read(&needles, b"x"));
        assert!(!seen.in_progress(&needles));
        assert!(after(&[b"k=", &token[..], &glued[..]].concat()).in_progress(&needles));
        assert!(!after(&[b"k=", &token[..], &glued[..], b"x"].concat()).in_progress(&needles));
        assert!(!after(b"k=1&q=").in_progress(&needles));
        // Past the first `keep` bytes, a run is decided by the byte before it.
        let mut seen = after(&[b'x'; 300]);
        assert!(!seen.read(&needles, &token));
        assert!(!seen.in_progress(&needles));
    }
}
