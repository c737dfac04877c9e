//! The vendor's answer read for the credential Postern injected, as it streams to the caller.
//!
//! Apps never see a vendor credential: that is what injecting it is for. A vendor may still
//! echo it back: an echo or debug endpoint that returns the request it got, an error message
//! that quotes the key it refused, a webhook or "test request" resource that stores the
//! headers it was sent. A response header that carries it is dropped
//! ([`crate::proxy::echoes_secret`]); this module reads the body.
//!
//! - An answer without a coding is **redacted in place**: every occurrence of the secret, in
//!   each form Postern knows it by ([`crate::runtime::IntegrationRuntime::secret_needles`], an
//!   OAuth2 client's access tokens), is overwritten with as many `*`, so the length the vendor
//!   declared stays true and a JSON document stays valid. A frame is passed on at once unless
//!   it ends with what could be the start of a secret: only those last bytes wait for the next
//!   frame, or the body's end (a streamed answer, Server-Sent Events say, is not held back).
//! - An answer with a `Content-Encoding` (gzip, deflate, br) cannot be rewritten without
//!   coding it again, so it is read decoded, as the caller will read it, and **cut** before the
//!   frame whose decoding completes a secret: frames since its decoding began to end with what
//!   could start one wait until more shows that it does not. That holds because these decoders
//!   hand on what each frame decodes to (gzip and deflate are flushed after every frame; the
//!   brotli decoder writes out what it has decoded whenever it runs out of input), so only the
//!   few bits of a symbol not yet whole are ever passed on unread. A coding Postern cannot undo
//!   is refused before the answer's head ([`EchoFilter::for_answer`]), and so is `zstd`:
//!   libzstd decodes a compressed block (up to 128 KiB) only once all of it has come, so the
//!   frames carrying a block's literals — a secret among them, stored as it is or in Huffman
//!   streams the caller could decode alone — would be passed on before its decoding showed the
//!   secret. The vendor is not offered `zstd` ([`crate::scan::narrow_accept_encoding`],
//!   [`crate::scan::without_zstd`]). An answer that decodes past `max_response_body_bytes`, or
//!   is not valid for its coding, is cut too: it could not be read.
//!
//! Either way the call's event says `secret_echoed` (docs/EVENTS.md).

use std::sync::Arc;

use bytes::Bytes;
use zeroize::Zeroizing;

/// A secret in every form it is looked for.
pub type Needles = Arc<Vec<Zeroizing<Vec<u8>>>>;

/// What an answer's frame became.
#[derive(Debug, PartialEq, Eq)]
pub enum Filtered {
    /// Bytes to pass on (never empty), and whether a secret was overwritten in them.
    Pass(Bytes, bool),
    /// Nothing yet: the frame waits for more (it may end with a secret's start).
    Held,
    /// The answer must end here, unsent.
    Cut(Cut),
}

/// The most of a coded answer held back while its decoding could be completing a secret: far
/// above what a coding needs to show the next byte (gzip and deflate decode each frame as it
/// comes, brotli too; zstd, which waits for whole blocks of up to 128 KiB, is not read here).
pub const MAX_HELD_CODED: usize = 1 << 20;

/// Why a coded answer was cut.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Cut {
    /// Its decoding holds a secret.
    SecretEchoed,
    /// It is not valid for its coding, or its window is larger than Postern decodes, or more
    /// than [`MAX_HELD_CODED`] of it came while its decoding could still be completing a secret.
    Undecodable,
    /// It decodes past `max_response_body_bytes`.
    TooLarge,
}

impl Cut {
    /// The event's reason.
    pub fn reason(self) -> &'static str {
        match self {
            Cut::SecretEchoed => "secret_echoed",
            Cut::Undecodable => "response_undecodable",
            Cut::TooLarge => "response_too_large",
        }
    }
}

/// The injected secrets one answer is read for, and how far it was read.
pub struct EchoFilter {
    /// The integration's secret forms, and an OAuth2 client's current access tokens.
    needles: [Option<Needles>; 2],
    /// One less than the longest needle: what a frame may hold back at most.
    keep: usize,
    reading: Reading,
}

enum Reading {
    /// No coding: the bytes at the last frame's end that could start a secret.
    Plain(Zeroizing<Vec<u8>>),
    /// A coding: the decoder, the last bytes of each of its readings (two for a `deflate`
    /// answer that may read either way), and the frames held back, as sent; and the decoder's
    /// share of [`RESPONSE_DECODER_BUDGET`] (a `br` window's).
    Coded {
        decoder: Box<postern_scan::StreamDecoder>,
        tails: [Zeroizing<Vec<u8>>; postern_scan::READINGS],
        held: Vec<Bytes>,
        _permit: Option<crate::body::DecoderPermit<'static>>,
    },
}

/// What the `br` answers being read for the injected credential at once may hold for their
/// decoders' windows (4 MiB each), all callers together, as [`crate::body::REQUEST_DECODER_BUDGET`]
/// bounds request bodies': past it (or past a caller's quarter) the next such answer is refused
/// (`503 response_decoders_busy`) rather than let answers nobody reads take the gateway's
/// memory. `gzip` and `deflate` (a 32 KiB window) are not counted.
pub const RESPONSE_DECODER_BUDGET: usize = 512 << 20;

/// The process's [`RESPONSE_DECODER_BUDGET`].
static RESPONSE_DECODERS: crate::body::DecoderBudget =
    crate::body::DecoderBudget::new(RESPONSE_DECODER_BUDGET, RESPONSE_DECODER_BUDGET / 4);

/// Why an answer cannot be read for the credential as it streams.
#[derive(Debug, PartialEq, Eq)]
pub enum Unreadable {
    /// A `Content-Encoding` Postern cannot undo, or read as it streams (its text, cut short).
    Coding(String),
    /// [`RESPONSE_DECODER_BUDGET`] is spent.
    DecodersBusy,
}

impl EchoFilter {
    /// The filter for an answer whose headers are `headers`, read for `fixed` (the
    /// integration's secret forms) and `minted` (an OAuth2 client's tokens): `Ok(None)` when
    /// there is nothing to look for; `Err` with the coding's name when the answer has a
    /// `Content-Encoding` Postern cannot undo (stacked codings, unknown ones) or cannot read
    /// as it streams (`zstd`: see the module's notes), which the caller must not be handed
    /// unread.
    pub fn for_answer(
        headers: &http::HeaderMap,
        fixed: &Needles,
        minted: Option<Needles>,
        (max_decoded, caller): (u64, Option<&std::sync::Arc<str>>),
    ) -> Result<Option<Self>, Unreadable> {
        let (needles, keep) = secrets(fixed, minted);
        if needles.iter().all(Option::is_none) {
            return Ok(None);
        }
        let coding = match crate::scan::all_values(headers, &http::header::CONTENT_ENCODING) {
            None => None,
            Some(encoding) => match postern_scan::StreamDecoder::check(&encoding) {
                Ok(coding) if coding != Some(postern_scan::Coding::Zstd) => coding,
                _ => {
                    return Err(Unreadable::Coding(
                        encoding.chars().take(40).collect::<String>(),
                    ))
                }
            },
        };
        let reading = match coding {
            None => Reading::Plain(Zeroizing::new(Vec::new())),
            Some(coding) => Reading::Coded {
                _permit: RESPONSE_DECODERS
                    .take(coding, caller)
                    .map_err(|_| Unreadable::DecodersBusy)?,
                decoder: Box::new(postern_scan::StreamDecoder::new(
                    coding,
                    usize::try_from(max_decoded).unwrap_or(usize::MAX),
                )),
                tails: Default::default(),
                held: Vec::new(),
            },
        };
        Ok(Some(EchoFilter {
            needles,
            keep,
            reading,
        }))
    }

    /// Reads the answer's next `data`; `last`: nothing comes after it.
    pub fn filter(&mut self, data: Bytes, last: bool) -> Filtered {
        match &mut self.reading {
            Reading::Plain(_) => self.plain(data, last),
            Reading::Coded { .. } => self.coded(data, last),
        }
    }

    /// What is held back when the answer ends: passed on, as nothing more can complete a
    /// secret (`None`: nothing held).
    pub fn end(&mut self) -> Option<Bytes> {
        let rest = match &mut self.reading {
            Reading::Plain(held) => Bytes::from(std::mem::take(&mut **held)),
            Reading::Coded { held, .. } => concat(std::mem::take(held)),
        };
        (!rest.is_empty()).then_some(rest)
    }

    /// Removes the trailer fields that hold a secret in their name or value (as the answer's
    /// header fields are read: [`crate::proxy::echoes_secret`]): whether there was one.
    pub fn trailers(&self, trailers: &mut http::HeaderMap) -> bool {
        let leaks = |name: &http::HeaderName, value: &http::HeaderValue| {
            self.needles
                .iter()
                .flatten()
                .any(|needles| crate::proxy::echoes_secret(name, value.as_bytes(), needles))
        };
        !crate::proxy::remove_fields(trailers, leaks).is_empty()
    }

    /// Bytes held back, not yet passed on.
    pub fn held(&self) -> usize {
        match &self.reading {
            Reading::Plain(held) => held.len(),
            Reading::Coded { held, .. } => held.iter().map(Bytes::len).sum(),
        }
    }

    fn plain(&mut self, data: Bytes, last: bool) -> Filtered {
        let Reading::Plain(held) = &mut self.reading else {
            unreachable!("a plain reading")
        };
        let needles = forms(&self.needles);
        // Most frames hold no secret and end with nothing that could start one: passed on as
        // they came, uncopied.
        if held.is_empty()
            && !needles
                .clone()
                .any(|needle| crate::proxy::contains(&data, needle))
            && (last || starts_a_needle(&data, needles.clone(), self.keep) == 0)
        {
            return match data.is_empty() {
                true => Filtered::Held,
                false => Filtered::Pass(data, false),
            };
        }
        let mut bytes = std::mem::take(&mut **held);
        bytes.extend_from_slice(&data);
        let redacted = overwrite(&mut bytes, needles.clone());
        let hold = match last {
            true => 0,
            false => starts_a_needle(&bytes, needles, self.keep),
        };
        **held = bytes.split_off(bytes.len() - hold);
        match bytes.is_empty() {
            true => Filtered::Held,
            false => Filtered::Pass(Bytes::from(bytes), redacted),
        }
    }

    fn coded(&mut self, data: Bytes, last: bool) -> Filtered {
        let EchoFilter {
            needles,
            keep,
            reading:
                Reading::Coded {
                    decoder,
                    tails,
                    held,
                    ..
                },
        } = self
        else {
            unreachable!("a coded reading")
        };
        let (needles, keep) = (forms(needles), *keep);
        let mut found = false;
        let fed = decoder.feed(&data, &mut |reading, piece| {
            found |= read_decoded(&mut tails[reading], piece, needles.clone(), keep);
        });
        // A secret decoded before the decoding failed is what the answer is cut for.
        if found {
            held.clear();
            return Filtered::Cut(Cut::SecretEchoed);
        }
        if let Err(unscanned) = fed {
            return Filtered::Cut(match unscanned.reason {
                postern_scan::UnscannedReason::TooLarge { .. } => Cut::TooLarge,
                _ => Cut::Undecodable,
            });
        }
        let alive = decoder.readings();
        let waiting = !last
            && tails
                .iter()
                .zip(alive)
                .any(|(tail, alive)| alive && starts_a_needle(tail, needles.clone(), keep) > 0);
        if waiting {
            held.push(data);
            // What the coding holds back is bounded by its window and blocks, not by the
            // answer: more than this undecided (empty stored blocks after a decoded secret's
            // first byte, say) is not waited for, it is cut, or a vendor (or whoever stands in
            // for it on a plaintext upstream) could have each call held up to
            // `max_response_body_bytes` in memory.
            if held.iter().map(Bytes::len).sum::<usize>() > MAX_HELD_CODED {
                held.clear();
                return Filtered::Cut(Cut::Undecodable);
            }
            return Filtered::Held;
        }
        let out = match held.is_empty() {
            true => data,
            false => {
                held.push(data);
                concat(std::mem::take(held))
            }
        };
        match out.is_empty() {
            true => Filtered::Held,
            false => Filtered::Pass(out, false),
        }
    }
}

/// The secrets an answer is read for (`fixed`, the integration's forms; `minted`, an OAuth2
/// client's tokens; either left out when it has none), and one less than the longest form:
/// what a reading keeps of its last bytes.
pub(crate) fn secrets(fixed: &Needles, minted: Option<Needles>) -> ([Option<Needles>; 2], usize) {
    let needles = [
        Some(fixed.clone()).filter(|n| !n.is_empty()),
        minted.filter(|n| !n.is_empty()),
    ];
    let keep = forms(&needles)
        .map(<[u8]>::len)
        .max()
        .unwrap_or(0)
        .saturating_sub(1);
    (needles, keep)
}

/// Every form of every secret looked for.
pub(crate) fn forms(needles: &[Option<Needles>; 2]) -> impl Iterator<Item = &[u8]> + Clone {
    needles
        .iter()
        .flatten()
        .flat_map(|n| n.iter())
        .map(|needle| needle.as_slice())
        .filter(|needle| !needle.is_empty())
}

/// Reads a decoded `piece` after `tail` (the reading's last bytes): whether a secret ends in
/// it. The tail keeps the reading's last `keep` bytes.
pub(crate) fn read_decoded<'a>(
    tail: &mut Vec<u8>,
    piece: &[u8],
    needles: impl Iterator<Item = &'a [u8]> + Clone,
    keep: usize,
) -> bool {
    // Across the seam: the tail and as much of the piece as could end a needle begun in it.
    let seam_from = tail.len();
    tail.extend_from_slice(&piece[..piece.len().min(keep)]);
    let across = needles
        .clone()
        .any(|needle| memchr::memmem::find_iter(tail, needle).any(|at| at < seam_from));
    let inside = needles
        .clone()
        .any(|needle| crate::proxy::contains(piece, needle));
    if piece.len() >= keep {
        tail.clear();
        tail.extend_from_slice(&piece[piece.len() - keep..]);
    } else {
        let excess = tail.len().saturating_sub(keep);
        tail.drain(..excess);
    }
    across || inside
}

/// How many of `bytes`' last bytes (fewer than `keep + 1`) are the start of a needle: the
/// longest such run, or 0.
pub(crate) fn starts_a_needle<'a>(
    bytes: &[u8],
    needles: impl Iterator<Item = &'a [u8]> + Clone,
    keep: usize,
) -> usize {
    let tail = &bytes[bytes.len().saturating_sub(keep)..];
    needles
        .map(|needle| crate::tokens::started(tail, needle))
        .max()
        .unwrap_or(0)
}

/// Overwrites every occurrence of a needle in `bytes` with `*`: whether there was one.
fn overwrite<'a>(bytes: &mut [u8], needles: impl Iterator<Item = &'a [u8]>) -> bool {
    let mut spans = Vec::new();
    for needle in needles {
        spans.extend(memchr::memmem::find_iter(bytes, needle).map(|at| at..at + needle.len()));
    }
    for span in &spans {
        bytes[span.clone()].fill(b'*');
    }
    !spans.is_empty()
}

fn concat(frames: Vec<Bytes>) -> Bytes {
    match frames.len() {
        0 => Bytes::new(),
        1 => frames.into_iter().next().unwrap_or_default(),
        _ => Bytes::from(frames.concat()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_scan::testing::gzip;

    const KEY: &[u8] = b"sk_live_0123456789abcdefghij";

    fn needles(forms: &[&[u8]]) -> Needles {
        Arc::new(forms.iter().map(|f| Zeroizing::new(f.to_vec())).collect())
    }

    fn filter(headers: &[(&str, &str)]) -> EchoFilter {
        let mut map = http::HeaderMap::new();
        for (name, value) in headers {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                http::HeaderValue::from_str(value).unwrap(),
            );
        }
        EchoFilter::for_answer(&map, &needles(&[KEY]), None, (1 << 20, None))
            .unwrap()
            .expect("a filter")
    }

    /// Everything the filter passes on for `frames`, in order, and whether it redacted or cut.
    fn run(filter: &mut EchoFilter, frames: &[&[u8]]) -> (Vec<u8>, bool, Option<Cut>) {
        let mut out = Vec::new();
        let mut redacted = false;
        for (i, frame) in frames.iter().enumerate() {
            match filter.filter(Bytes::copy_from_slice(frame), i + 1 == frames.len()) {
                Filtered::Pass(bytes, r) => {
                    assert!(!bytes.is_empty());
                    out.extend_from_slice(&bytes);
                    redacted |= r;
                }
                Filtered::Held => {}
                Filtered::Cut(reason) => return (out, redacted, Some(reason)),
            }
        }
        out.extend_from_slice(&filter.end().unwrap_or_default());
        (out, redacted, None)
    }

    fn splits(body: &[u8]) -> impl Iterator<Item = Vec<&[u8]>> {
        (0..=body.len()).flat_map(move |a| {
            (a..=body.len()).map(move |b| vec![&body[..a], &body[a..b], &body[b..]])
        })
    }

    #[test]
    fn an_echoed_key_is_overwritten_in_place_however_the_answer_is_split() {
        let body = b"{\"error\":\"invalid key sk_live_0123456789abcdefghij\",\"k\":\"sk_live_0123456789abcdefghij\"}";
        let expected = b"{\"error\":\"invalid key ****************************\",\"k\":\"****************************\"}";
        for frames in splits(body) {
            let (out, redacted, cut) = run(&mut filter(&[]), &frames);
            assert_eq!(
                out,
                expected,
                "split {:?}",
                frames.iter().map(|f| f.len()).collect::<Vec<_>>()
            );
            assert!(redacted);
            assert_eq!(cut, None);
        }
    }

    #[test]
    fn an_answer_without_the_key_passes_unchanged_and_only_a_possible_start_waits() {
        let mut f = filter(&[]);
        let frame = Bytes::from_static(b"data: {\"id\":1}\n\n");
        // Passed as it came: the same allocation, nothing held.
        match f.filter(frame.clone(), false) {
            Filtered::Pass(out, false) => assert_eq!(out.as_ptr(), frame.as_ptr()),
            other => panic!("{other:?}"),
        }
        assert_eq!(f.held(), 0);
        // A frame ending in `sk_li` keeps those five bytes until the next shows they are not
        // the key's start.
        assert_eq!(
            f.filter(Bytes::from_static(b"token sk_li"), false),
            Filtered::Pass(Bytes::from_static(b"token "), false)
        );
        assert_eq!(f.held(), 5);
        assert_eq!(
            f.filter(Bytes::from_static(b"ne\n"), false),
            Filtered::Pass(Bytes::from_static(b"sk_line\n"), false)
        );
        // At the body's end nothing waits.
        assert_eq!(
            f.filter(Bytes::from_static(b"sk_"), true),
            Filtered::Pass(Bytes::from_static(b"sk_"), false)
        );
    }

    /// A `br` answer's decoder takes its window (4 MiB) of the response decoders' budget for
    /// as long as its filter lives, one caller at most a quarter of it: past that the next is
    /// refused, another caller's still read, and the share comes back when a filter goes.
    #[test]
    fn br_answers_hold_at_most_the_response_decoder_budget() {
        let mut map = http::HeaderMap::new();
        map.insert("content-encoding", "br".parse().unwrap());
        let map = map;
        let (one, other): (std::sync::Arc<str>, std::sync::Arc<str>) =
            ("budget-test-one".into(), "budget-test-other".into());
        let filter = |caller: &std::sync::Arc<str>| {
            EchoFilter::for_answer(&map, &needles(&[KEY]), None, (1 << 20, Some(caller)))
        };
        let part = RESPONSE_DECODER_BUDGET / 4 / (4 << 20);
        let mut held: Vec<_> = (0..part).map(|_| filter(&one).unwrap()).collect();
        assert_eq!(filter(&one).err(), Some(Unreadable::DecodersBusy));
        assert!(filter(&other).is_ok());
        held.pop();
        assert!(filter(&one).is_ok());
        // gzip takes no share.
        let mut gzip = http::HeaderMap::new();
        gzip.insert("content-encoding", "gzip".parse().unwrap());
        let gzipped = EchoFilter::for_answer(&gzip, &needles(&[KEY]), None, (1 << 20, Some(&one)));
        assert!(gzipped.is_ok());
    }

    #[test]
    fn every_form_of_the_secret_is_overwritten() {
        let encoded = b"sk%2Blive";
        let mut f = EchoFilter::for_answer(
            &http::HeaderMap::new(),
            &needles(&[b"sk+live", encoded]),
            Some(needles(&[b"oauth-token-1"])),
            (1 << 20, None),
        )
        .unwrap()
        .unwrap();
        let (out, redacted, _) = run(&mut f, &[b"a sk+live b sk%2Blive c oauth-token-1 d"]);
        assert_eq!(out, b"a ******* b ********* c ************* d");
        assert!(redacted);
    }

    #[test]
    fn nothing_to_look_for_is_no_filter() {
        let none = EchoFilter::for_answer(
            &http::HeaderMap::new(),
            &needles(&[]),
            None,
            (1 << 20, None),
        );
        assert!(matches!(none, Ok(None)));
    }

    #[test]
    fn a_coding_postern_cannot_undo_is_refused() {
        let mut map = http::HeaderMap::new();
        map.insert(http::header::CONTENT_ENCODING, "gzip, br".parse().unwrap());
        let refused = EchoFilter::for_answer(&map, &needles(&[KEY]), None, (1 << 20, None));
        assert_eq!(refused.err(), Some(Unreadable::Coding("gzip, br".into())));
    }

    #[test]
    fn a_coded_answer_holding_the_key_is_cut_before_the_frame_that_completes_it() {
        let mut body = vec![b'x'; 5000];
        body.extend_from_slice(KEY);
        body.extend_from_slice(&[b'y'; 5000]);
        let gz = gzip(&body);
        for size in [1, 7, 64, 1000, gz.len()] {
            let frames: Vec<&[u8]> = gz.chunks(size).collect();
            let (out, _, cut) = run(&mut filter(&[("content-encoding", "gzip")]), &frames);
            assert_eq!(cut, Some(Cut::SecretEchoed), "frames of {size}");
            // What was passed on decodes to the x's at most: not even the key's first byte
            // went out.
            let mut decoded = Vec::new();
            let _ = std::io::Read::read_to_end(
                &mut flate2::read::GzDecoder::new(&out[..]),
                &mut decoded,
            );
            assert!(
                decoded.iter().all(|&b| b == b'x'),
                "frames of {size} sent more than the x's"
            );
        }
    }

    #[test]
    fn a_coded_answer_without_the_key_passes_whole() {
        let body = b"{\"id\":\"ch_1\",\"note\":\"sk_li is not a key\"}".repeat(200);
        let gz = gzip(&body);
        for size in [1, 13, 512, gz.len()] {
            let frames: Vec<&[u8]> = gz.chunks(size).collect();
            let (out, redacted, cut) = run(&mut filter(&[("content-encoding", "gzip")]), &frames);
            assert_eq!((cut, redacted), (None, false));
            assert_eq!(out, gz, "frames of {size}");
        }
    }

    #[test]
    fn a_key_decoded_before_the_decoding_fails_is_what_the_answer_is_cut_for() {
        let mut frame = gzip(KEY);
        frame.extend_from_slice(b"then not gzip at all");
        let (_, _, cut) = run(&mut filter(&[("content-encoding", "gzip")]), &[&frame]);
        assert_eq!(cut, Some(Cut::SecretEchoed));
    }

    /// A coded answer whose decoding stops on a secret's first byte and then shows nothing more
    /// (empty stored blocks, which a hostile vendor may send without end): past
    /// [`MAX_HELD_CODED`] held it is cut, not held in memory to its end.
    #[test]
    fn a_coded_answer_held_undecided_is_cut_past_the_bound() {
        use std::io::Write as _;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(b"invalid key: s").unwrap();
        encoder.flush().unwrap();
        let start = Bytes::from(encoder.get_ref().clone());
        // Empty non-final stored blocks, byte-aligned after the sync flush: 80 KiB a frame.
        let empty = Bytes::from([0u8, 0, 0, 0xff, 0xff].repeat(16 * 1024));
        let mut f = filter(&[("content-encoding", "gzip")]);
        assert_eq!(
            f.filter(start, false),
            Filtered::Held,
            "it may start the key"
        );
        let mut cut = None;
        for _ in 0..(2 * MAX_HELD_CODED / empty.len()) {
            match f.filter(empty.clone(), false) {
                Filtered::Held => {}
                Filtered::Cut(reason) => {
                    cut = Some(reason);
                    break;
                }
                Filtered::Pass(..) => panic!("nothing was decoded, nothing passes"),
            }
        }
        assert_eq!(cut, Some(Cut::Undecodable));
        assert_eq!(f.held(), 0);
    }

    #[test]
    fn trailer_fields_holding_the_key_are_removed() {
        let f = filter(&[]);
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "16".parse().unwrap());
        trailers.insert(
            "grpc-message",
            "invalid key sk_live_0123456789abcdefghij".parse().unwrap(),
        );
        // Percent-decoded too, as header fields are.
        trailers.insert(
            "x-debug",
            "k=sk%5Flive_0123456789abcdefghij".parse().unwrap(),
        );
        assert!(f.trailers(&mut trailers));
        assert_eq!(trailers.len(), 1);
        assert_eq!(trailers["grpc-status"], "16");
        assert!(!f.trailers(&mut trailers));
    }

    /// An echo endpoint's answer: ~100 KiB of bytes no entropy coding shrinks, each run of
    /// them sent twice (so the block is compressed, its literals stored as they are), with the
    /// key among the literals; and where the key starts.
    fn echo_answer() -> (Vec<u8>, usize) {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut body = Vec::new();
        while body.len() < 100 * 1024 {
            let run: Vec<u8> = (0..64)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            body.extend_from_slice(&run);
            body.extend_from_slice(&run);
        }
        let at = body.len();
        body.extend_from_slice(KEY);
        body.extend_from_within(..4096);
        (body, at)
    }

    /// Why a zstd answer is refused: libzstd hands on nothing of a compressed block until the
    /// whole block has come, so reading it decoded, frame by frame, would pass on the frames
    /// carrying its literals — here the key itself, stored as it is — before the decoding
    /// showed it.
    #[test]
    fn libzstd_decodes_a_block_only_once_all_of_it_has_come() {
        let (body, at) = echo_answer();
        let coded = postern_scan::testing::zstd(&body, 20);
        let key_sent_by =
            memchr::memmem::find(&coded, KEY).expect("the key stored as it is") + KEY.len();
        let mut decoder = postern_scan::StreamDecoder::new(postern_scan::Coding::Zstd, 1 << 20);
        // The bytes fed before the frame that first decoded to anything.
        let (mut before, mut decoded) = (0, 0);
        for frame in coded.chunks(1000) {
            decoder
                .feed(frame, &mut |_, piece| decoded += piece.len())
                .unwrap();
            if decoded > 0 {
                break;
            }
            before += frame.len();
        }
        assert!(decoded > at, "the block came out whole");
        // Every frame before the one that decoded anything was passed on, and they held the key.
        assert!(
            before >= key_sent_by,
            "the key was sent by byte {key_sent_by}; output came after byte {before} of {}",
            coded.len()
        );
    }

    #[test]
    fn a_zstd_answer_is_refused_before_any_of_it_is_read() {
        for coding in ["zstd", "ZSTD"] {
            let mut map = http::HeaderMap::new();
            map.insert(http::header::CONTENT_ENCODING, coding.parse().unwrap());
            let refused = EchoFilter::for_answer(&map, &needles(&[KEY]), None, (1 << 20, None));
            assert_eq!(refused.err(), Some(Unreadable::Coding(coding.into())));
        }
        // With nothing to look for there is no filter, and nothing refused.
        let mut map = http::HeaderMap::new();
        map.insert(http::header::CONTENT_ENCODING, "zstd".parse().unwrap());
        let none = EchoFilter::for_answer(&map, &needles(&[]), None, (1 << 20, None));
        assert!(matches!(none, Ok(None)));
    }

    /// The answer libzstd would have leaked, in br and in gzip: cut before the frame that
    /// completes the key, and nothing passed on decodes to any of it (the brotli decoder writes
    /// out what it has decoded whenever it runs out of input; gzip is flushed every frame).
    #[test]
    fn a_br_or_gzip_echo_answer_is_cut_before_any_of_the_key_went_out() {
        let (body, at) = echo_answer();
        for (coding, name, coded) in [
            (
                postern_scan::Coding::Brotli,
                "br",
                postern_scan::testing::brotli(&body, 22),
            ),
            (postern_scan::Coding::Gzip, "gzip", gzip(&body)),
        ] {
            for size in [1, 100, 1000, 16 * 1024] {
                let frames: Vec<&[u8]> = coded.chunks(size).collect();
                let (out, _, cut) = run(&mut filter(&[("content-encoding", name)]), &frames);
                assert_eq!(cut, Some(Cut::SecretEchoed), "{name}, frames of {size}");
                assert!(
                    !crate::proxy::contains(&out, KEY),
                    "{name}, frames of {size}"
                );
                let mut decoder = postern_scan::StreamDecoder::new(coding, 1 << 20);
                let mut decoded = Vec::new();
                let _ = decoder.feed(&out, &mut |_, piece| decoded.extend_from_slice(piece));
                assert!(
                    decoded.len() <= at && body.starts_with(&decoded),
                    "{name}, frames of {size}: {} bytes decoded, the key at {at}",
                    decoded.len()
                );
            }
        }
    }

    #[test]
    fn a_coded_answer_not_valid_for_its_coding_is_cut() {
        let (_, _, cut) = run(
            &mut filter(&[("content-encoding", "gzip")]),
            &[b"this is not gzip at all"],
        );
        assert_eq!(cut, Some(Cut::Undecodable));
    }
}
