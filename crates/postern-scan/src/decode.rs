//! Decoding compressed bodies for scanning, within a byte cap. A body that cannot be decoded
//! within the cap is [`Unscanned`] — the caller records that, never silently skips it.

use std::borrow::Cow;
use std::io::Read;

/// Why a body was not scanned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("body not scanned: {reason}")]
pub struct Unscanned {
    pub reason: UnscannedReason,
}

/// The reason a body was not scanned; `Display` is stable text for events.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnscannedReason {
    #[error("body exceeds scan_max_body_bytes ({max_bytes}) after decoding")]
    TooLarge { max_bytes: usize },
    #[error("content-encoding `{encoding}` is not supported for scanning (supported: identity, gzip, x-gzip, deflate, br, zstd)")]
    UnsupportedEncoding { encoding: String },
    #[error("body is not valid `{encoding}` data")]
    Corrupt { encoding: String },
    #[error("the `br` body's window ({window_bits} bits) is larger than Postern decodes (a request's {MAX_BROTLI_WINDOW_BITS} bits at most, 4 MiB, the encoders' default; a response's 24, RFC 7932's largest)")]
    WindowTooLarge { window_bits: u32 },
    #[error("the `zstd` body's window is larger than 8 MiB, the most RFC 9659 lets the zstd content coding use")]
    ZstdWindowTooLarge,
    #[error(
        "the body lists {count} content codings; Postern undoes at most {MAX_CODINGS} for scanning"
    )]
    TooManyCodings { count: usize },
}

/// The most content codings a body may list and still be decoded for scanning: each is undone
/// whole, up to `scan_max_body_bytes`, so a head listing thousands (`gzip, gzip, …`) would
/// cost thousands of decodes. Real senders list one.
pub const MAX_CODINGS: usize = 3;

/// The largest `br` window a [`StreamDecoder`] takes: 2^22 bytes (4 MiB), the default of the
/// reference encoder and of the libraries built on it. The window is most of the decoder's
/// memory for a body (beside its Huffman tables, a few MiB at most), allocated
/// whole (up to 16 MiB, at 24 bits) once a body's stream is longer than it, whatever the
/// body's size.
pub const MAX_BROTLI_WINDOW_BITS: u32 = 22;

/// The largest `zstd` window (log 2) a [`StreamDecoder`] takes: 8 MiB, the most RFC 9659 (§3)
/// lets the `zstd` content coding use, and the least a decoder must take. libzstd refuses a
/// frame whose window is larger (a frame in one segment declares its size as its window)
/// before it allocates it; the window is most of a request decoder's memory (about 8.4 MiB in
/// all at this limit). One exception is libzstd's: a frame that declares its content size, at
/// most 64 KiB (the decoder's output buffer), and lies whole within one input step (512
/// bytes, `INPUT_STEP`) is decoded in one pass into that buffer, with no window to hold,
/// whatever window it declares.
/// [`decode_for_scan`] (a response, whole) decodes in one pass too, so takes any window.
pub const MAX_ZSTD_WINDOW_LOG: u32 = 23;

/// Returns the bytes to scan: `body` itself when there is no content coding, or the decoded
/// body for `gzip`, `deflate`, `br` and `zstd` (codings listed in one header are undone last
/// first).
/// Decoding stops at `max_bytes`: a longer body is `Unscanned { TooLarge }`; one listing more
/// than [`MAX_CODINGS`] codings is `Unscanned { TooManyCodings }`, decoded not at all.
pub fn decode_for_scan<'a>(
    body: &'a [u8],
    content_encoding: Option<&str>,
    max_bytes: usize,
) -> Result<Cow<'a, [u8]>, Unscanned> {
    let codings: Vec<String> = content_encoding
        .unwrap_or("")
        .split(',')
        .map(|coding| coding.trim().to_ascii_lowercase())
        .filter(|coding| !coding.is_empty() && coding != "identity")
        .collect();
    if codings.len() > MAX_CODINGS {
        return Err(Unscanned {
            reason: UnscannedReason::TooManyCodings {
                count: codings.len(),
            },
        });
    }
    if codings.is_empty() {
        if body.len() > max_bytes {
            return Err(Unscanned {
                reason: UnscannedReason::TooLarge { max_bytes },
            });
        }
        return Ok(Cow::Borrowed(body));
    }
    let mut current: Cow<'a, [u8]> = Cow::Borrowed(body);
    for coding in codings.iter().rev() {
        current = Cow::Owned(decode_one(&current, coding, max_bytes)?);
    }
    Ok(current)
}

fn decode_one(body: &[u8], coding: &str, max_bytes: usize) -> Result<Vec<u8>, Unscanned> {
    let corrupt = || Unscanned {
        reason: UnscannedReason::Corrupt {
            encoding: coding.to_owned(),
        },
    };
    let mut output = Vec::new();
    // Read one byte past the cap to tell "exactly max" from "more than max".
    let limit = (max_bytes as u64).saturating_add(1);
    let result = match coding {
        "gzip" | "x-gzip" => flate2::read::MultiGzDecoder::new(body)
            .take(limit)
            .read_to_end(&mut output),
        "deflate" => {
            let zlib = flate2::read::ZlibDecoder::new(body)
                .take(limit)
                .read_to_end(&mut output);
            if zlib.is_err() {
                output.clear();
                flate2::read::DeflateDecoder::new(body)
                    .take(limit)
                    .read_to_end(&mut output)
            } else {
                zlib
            }
        }
        // RFC 7932's windows only (up to 16 MiB): the reader would take "large window" brotli,
        // whose windows reach 1 GiB.
        "br" => match body.first().map(|first| brotli_window_bits(*first)) {
            Some(window_bits) if window_bits > 24 => {
                return Err(Unscanned {
                    reason: UnscannedReason::WindowTooLarge { window_bits },
                })
            }
            _ => brotli::Decompressor::new(body, 4096)
                .take(limit)
                .read_to_end(&mut output),
        },
        // Whole, in one pass: the output is the frames' history, so no window is allocated and
        // a frame decodes within the cap whatever window it declares (libzstd and curl take
        // up to 2^27 bytes by default, browsers 2^23: whatever a client decodes is scanned).
        // The room starts at the first frame's content size where it declares one (one-shot
        // encoders do), and grows by doubling, each try decoding afresh, up to one byte past
        // the cap: at most log2(cap / 64 KiB) + 1 tries, about twice the cap decoded in all.
        // (Some corrupt blocks — one decoding past the 128 KiB block maximum — fail every try
        // for room, so end as TooLarge rather than Corrupt: unscanned all the same.)
        "zstd" => {
            let mut context = zstd::zstd_safe::DCtx::create();
            let limit = max_bytes.saturating_add(1);
            let declared = match zstd::zstd_safe::get_frame_content_size(body) {
                Ok(Some(size)) => usize::try_from(size).unwrap_or(usize::MAX),
                _ => body.len().saturating_mul(8),
            };
            let mut room = declared.max(1 << 16).min(limit);
            return loop {
                let mut output = Vec::with_capacity(room);
                match context.decompress(&mut output, body) {
                    Ok(_) if output.len() <= max_bytes => break Ok(output),
                    Err(ZSTD_DESTINATION_TOO_SMALL) if room < limit => {
                        room = room.saturating_mul(2).min(limit)
                    }
                    Ok(_) | Err(ZSTD_DESTINATION_TOO_SMALL) => {
                        break Err(Unscanned {
                            reason: UnscannedReason::TooLarge { max_bytes },
                        })
                    }
                    // Not a zstd frame (bytes after the last frame among them), corrupt, cut
                    // short, or a frame that needs a dictionary.
                    Err(_) => break Err(corrupt()),
                }
            };
        }
        other => {
            return Err(Unscanned {
                reason: UnscannedReason::UnsupportedEncoding {
                    encoding: other.to_owned(),
                },
            })
        }
    };
    result.map_err(|_| corrupt())?;
    if output.len() > max_bytes {
        return Err(Unscanned {
            reason: UnscannedReason::TooLarge { max_bytes },
        });
    }
    Ok(output)
}

/// Undoes a request body's `Content-Encoding` as its pieces come, for readers that look at a
/// body while it streams and hold none of it. One coding only — `gzip` (`x-gzip`), `deflate`
/// (zlib-wrapped as RFC 9110 names it, or raw as some clients send it), `br` (with a window
/// of at most [`MAX_BROTLI_WINDOW_BITS`]; a larger one is [`UnscannedReason::WindowTooLarge`])
/// or `zstd` (RFC 8878 frames, one after another, with windows of at most
/// [`MAX_ZSTD_WINDOW_LOG`]; a larger one is [`UnscannedReason::ZstdWindowTooLarge`]);
/// `identity` items are nothing to undo. Codings stacked are refused, since a server may undo
/// some of them and not the others (each layer in between would have to be read as well).
///
/// Its decoded bytes are handed on piece by piece, at most about 1 MiB at a time for gzip and
/// deflate (the input is fed in small steps, so a compression bomb never fills memory at once)
/// and 64 KiB for br and zstd (whose few bytes may stand for megabytes: their decoders are
/// driven with an output buffer of that size), each with
/// the reading it belongs to: `0`, or — for a `deflate` body that starts both as a zlib stream
/// and as a raw DEFLATE stored block (about 1 zlib stream in 65,536 does) — `0` for its zlib
/// reading and `1` for its raw one, decoded side by side, since a server may take either:
/// each is a body of its own to its readers ([`READINGS`]). A reading whose stream ends before
/// the body does ends there (the bytes after it are the other reading's); decoding past
/// `max_bytes` in any reading, data not valid for its coding in any reading (decoders differ in
/// what they forgive, so one may read on where Postern would stop), a body that ends mid-stream,
/// or bytes after the end of every reading, is an [`Unscanned`], and so is anything fed after
/// one.
pub struct StreamDecoder {
    lanes: Lanes,
    /// Whether any byte was fed: a body with none is nothing to decode.
    fed: bool,
    /// The body was refused: every later piece is too.
    failed: Option<Unscanned>,
}

/// The most readings a [`StreamDecoder`] hands on: a `deflate` body read both as zlib (`0`)
/// and as raw DEFLATE (`1`).
pub const READINGS: usize = 2;

enum Lanes {
    /// `deflate`, until its first five bytes tell a zlib stream from raw DEFLATE (or show it
    /// may be both): held until then, with the cap.
    Sniffing(Vec<u8>, usize),
    /// The readings still decoding (boxed: a decoder's state is large); a reading that failed
    /// is `None`.
    Reading([Option<Box<Stage>>; READINGS]),
}

/// The most decoded bytes one step hands on: what [`INPUT_STEP`] bytes of input can become
/// (DEFLATE's most is 258 bytes per bit) plus the decoder's own buffer.
#[cfg(test)]
const MAX_STEP_OUTPUT: usize = INPUT_STEP * 258 * 8 + 32 * 1024;

/// The input fed to the decoder at a time: small enough that a bomb's step stays near 1 MiB,
/// large enough that stepping costs little (the decoder is flushed once per piece, not per
/// step).
const INPUT_STEP: usize = 512;

enum Stage {
    Gzip(flate2::write::MultiGzDecoder<Capped>),
    Zlib(flate2::write::ZlibDecoder<Capped>),
    Deflate(flate2::write::DeflateDecoder<Capped>),
    /// Boxed: its state is several times the others'.
    Brotli(Box<BrotliStage>),
    Zstd(ZstdStage),
}

/// A decoder's output since it was last taken; refuses to grow past the cap.
struct Capped {
    out: Vec<u8>,
    total: usize,
    max_bytes: usize,
}

impl Capped {
    fn new(max_bytes: usize) -> Self {
        Capped {
            out: Vec::new(),
            total: 0,
            max_bytes,
        }
    }
}

impl std::io::Write for Capped {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.total = self.total.saturating_add(data.len());
        if self.total > self.max_bytes {
            return Err(std::io::Error::other("decoded past the cap"));
        }
        self.out.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl StreamDecoder {
    /// The decoder for `coding` (what [`StreamDecoder::check`] found to undo), each reading
    /// capped at `max_bytes` decoded.
    pub fn new(coding: Coding, max_bytes: usize) -> Self {
        let lanes = match coding {
            Coding::Gzip => Lanes::Reading([
                Some(Box::new(Stage::Gzip(flate2::write::MultiGzDecoder::new(
                    Capped::new(max_bytes),
                )))),
                None,
            ]),
            Coding::Brotli => Lanes::Reading([
                Some(Box::new(Stage::Brotli(Box::new(BrotliStage::new(
                    max_bytes,
                ))))),
                None,
            ]),
            Coding::Zstd => {
                Lanes::Reading([Some(Box::new(Stage::Zstd(ZstdStage::new(max_bytes)))), None])
            }
            Coding::Deflate => Lanes::Sniffing(Vec::new(), max_bytes),
        };
        StreamDecoder {
            lanes,
            fed: false,
            failed: None,
        }
    }

    /// The one coding `content_encoding` names to undo (`None`: nothing to undo), without
    /// building a decoder; `UnsupportedEncoding` (naming the header's text) for a coding other
    /// than gzip, x-gzip, deflate, br and zstd, or for more than one.
    pub fn check(content_encoding: &str) -> Result<Option<Coding>, Unscanned> {
        let refused = |encoding: &str| Unscanned {
            reason: UnscannedReason::UnsupportedEncoding {
                encoding: encoding.trim().to_ascii_lowercase(),
            },
        };
        let mut found = None;
        for coding in content_encoding.split(',') {
            let coding = coding.trim();
            let this = if coding.is_empty() || coding.eq_ignore_ascii_case("identity") {
                continue;
            } else if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                Coding::Gzip
            } else if coding.eq_ignore_ascii_case("deflate") {
                Coding::Deflate
            } else if coding.eq_ignore_ascii_case("br") {
                Coding::Brotli
            } else if coding.eq_ignore_ascii_case("zstd") {
                Coding::Zstd
            } else {
                return Err(refused(coding));
            };
            if found.replace(this).is_some() {
                return Err(refused(content_encoding));
            }
        }
        Ok(found)
    }

    /// Decodes the next piece of the body, handing what it decodes to `decoded` with its
    /// reading (perhaps in several pieces, perhaps none yet).
    pub fn feed(
        &mut self,
        data: &[u8],
        decoded: &mut dyn FnMut(usize, &[u8]),
    ) -> Result<(), Unscanned> {
        self.fed |= !data.is_empty();
        let written = data
            .chunks(INPUT_STEP)
            .try_for_each(|step| self.write(step, Step::More, decoded))
            // What the decoder holds back of the last step is handed on now, not with the next
            // piece.
            .and_then(|()| self.write(&[], Step::Flush, decoded));
        self.remember(written)
    }

    /// Which readings are still decoding (the second only for a body that reads two ways).
    pub fn readings(&self) -> [bool; READINGS] {
        match &self.lanes {
            Lanes::Sniffing(..) => [true, false],
            Lanes::Reading(lanes) => [lanes[0].is_some(), lanes[1].is_some()],
        }
    }

    /// A refusal is for good: kept, and given again for anything fed after it.
    fn remember(&mut self, written: Result<(), Unscanned>) -> Result<(), Unscanned> {
        if let Err(error) = &written {
            self.failed = Some(error.clone());
        }
        written
    }

    /// The body ended: what the decoder still holds is handed on; a stream cut short (in every
    /// reading) is `Corrupt`. A body with no bytes at all is nothing to decode.
    pub fn finish(&mut self, decoded: &mut dyn FnMut(usize, &[u8])) -> Result<(), Unscanned> {
        if !self.fed {
            return Ok(());
        }
        let written = self.write(&[], Step::End, decoded);
        self.remember(written)
    }

    /// Writes `data` to every reading (and ends them at `Step::End`), handing on what each
    /// decodes.
    fn write(
        &mut self,
        data: &[u8],
        step: Step,
        decoded: &mut dyn FnMut(usize, &[u8]),
    ) -> Result<(), Unscanned> {
        if let Some(failed) = &self.failed {
            return Err(failed.clone());
        }
        if let Lanes::Sniffing(held, max_bytes) = &mut self.lanes {
            held.extend_from_slice(data);
            if held.len() < 5 && step != Step::End {
                return Ok(());
            }
            let held = std::mem::take(held);
            let capped = || Capped::new(*max_bytes);
            // A zlib header: compression method 8, window ≤ 32 KiB, check bits (RFC 1950).
            let zlib = held.len() >= 2
                && held[0] & 0x0f == 8
                && held[0] >> 4 <= 7
                && u16::from_be_bytes([held[0], held[1]]) % 31 == 0;
            let zlib_stage = || Box::new(Stage::Zlib(flate2::write::ZlibDecoder::new(capped())));
            let raw_stage =
                || Box::new(Stage::Deflate(flate2::write::DeflateDecoder::new(capped())));
            self.lanes = Lanes::Reading(match (zlib, zlib && also_stored_block(&held)) {
                // Valid both ways perhaps, and read differently each way: both are read.
                (_, true) => [Some(zlib_stage()), Some(raw_stage())],
                (true, false) => [Some(zlib_stage()), None],
                (false, _) => [Some(raw_stage()), None],
            });
            for piece in held.chunks(INPUT_STEP) {
                self.write(piece, Step::More, decoded)?;
            }
            return self.write(&[], step, decoded);
        }
        let Lanes::Reading(lanes) = &mut self.lanes else {
            unreachable!("sniffed above");
        };
        let two = lanes.iter().all(Option::is_some);
        let mut ended = None;
        for (reading, lane) in lanes.iter_mut().enumerate() {
            let Some(stage) = lane else {
                continue;
            };
            let written = stage.write(data, step, &mut |piece| decoded(reading, piece));
            match written {
                Written::Ok => {}
                // Of two readings, one whose stream ended before the body does ends there: the
                // bytes after it are the other's.
                Written::AfterEnd(error) if two => {
                    *lane = None;
                    ended = Some(error);
                }
                // Past the cap (a bomb whichever a server takes), not valid for its coding, cut
                // short, or bytes after the end of the only reading.
                Written::AfterEnd(error) | Written::Failed(error) => return Err(error),
            }
        }
        match ended {
            Some(error) if lanes.iter().all(Option::is_none) => Err(error),
            _ => Ok(()),
        }
    }
}

/// What a write to a [`Stage`] does after taking its input.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Nothing more: more input follows.
    More,
    /// Hands on all it decoded so far.
    Flush,
    /// Ends the stream (a stream cut short is an error).
    End,
}

/// A coding [`StreamDecoder`] undoes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Gzip,
    Deflate,
    Brotli,
    Zstd,
}

/// The window a `br` stream declares in its first byte (RFC 7932 §9.1: WBITS, read from the
/// low bits up), in bits; for the "large window" mark of brotli's extension (not RFC 7932),
/// its largest, 30.
fn brotli_window_bits(first: u8) -> u32 {
    if first & 1 == 0 {
        return 16;
    }
    match (first >> 1) & 0b111 {
        0 => match (first >> 4) & 0b111 {
            0 => 17,
            1 => 30,
            n => 8 + u32::from(n),
        },
        n => 17 + u32::from(n),
    }
}

/// Whether `head` (a `deflate` body's first bytes, at least 5) is also a raw DEFLATE stored
/// block: its header's padding, then a length and its complement. A zlib header whose method is
/// 8 always reads as a stored block's first byte, so such a body could be read both ways.
fn also_stored_block(head: &[u8]) -> bool {
    head.len() >= 5
        && head[0] & 0b110 == 0
        && u16::from_le_bytes([head[1], head[2]]) == !u16::from_le_bytes([head[3], head[4]])
}

impl Stage {
    /// Writes `data` (and finishes the stream at `end`), handing on what it decodes — on an
    /// error too, up to where it stopped (what a lenient decoder hands on before it gives up).
    fn write(&mut self, data: &[u8], step: Step, decoded: &mut dyn FnMut(&[u8])) -> Written {
        let (encoding, result, capped) = match self {
            Stage::Gzip(decoder) => (
                "gzip",
                write_then(decoder, data, step, |d| d.try_finish()),
                decoder.get_mut(),
            ),
            Stage::Zlib(decoder) => (
                "deflate",
                write_then(decoder, data, step, |d| d.try_finish()),
                decoder.get_mut(),
            ),
            Stage::Deflate(decoder) => (
                "deflate",
                write_then(decoder, data, step, |d| d.try_finish()),
                decoder.get_mut(),
            ),
            Stage::Brotli(stage) => return stage.write(data, step, decoded),
            Stage::Zstd(stage) => return stage.write(data, step, decoded),
        };
        let out = std::mem::take(&mut capped.out);
        if !out.is_empty() {
            decoded(&out);
        }
        let Err(error) = result else {
            return Written::Ok;
        };
        if capped.total > capped.max_bytes {
            let reason = UnscannedReason::TooLarge {
                max_bytes: capped.max_bytes,
            };
            return Written::Failed(Unscanned { reason });
        }
        let corrupt = corrupt(encoding);
        // A decoder whose stream has ended takes no more: the rest could not be written.
        match error.kind() {
            std::io::ErrorKind::WriteZero => Written::AfterEnd(corrupt),
            _ => Written::Failed(corrupt),
        }
    }
}

fn corrupt(encoding: &str) -> Unscanned {
    Unscanned {
        reason: UnscannedReason::Corrupt {
            encoding: encoding.to_owned(),
        },
    }
}

/// The output a `br` or `zstd` step hands on at a time: a few bytes of either may stand for
/// megabytes, so its decoder writes into this much and hands it on before it goes on.
const DECODER_OUTPUT: usize = 64 * 1024;

/// A `br` decoder driven directly (RFC 7932 only: no large-window streams), its output handed
/// on [`DECODER_OUTPUT`] bytes at a time, up to `max_bytes` in all.
struct BrotliStage {
    state: brotli::BrotliState<
        brotli::enc::StandardAlloc,
        brotli::enc::StandardAlloc,
        brotli::enc::StandardAlloc,
    >,
    output: Box<[u8]>,
    total: usize,
    max_bytes: usize,
    /// The stream's first byte, which declares its window, was read.
    started: bool,
    /// The stream's end was decoded: any byte after it is not the stream's.
    ended: bool,
}

impl BrotliStage {
    fn new(max_bytes: usize) -> Self {
        let alloc = brotli::enc::StandardAlloc::default;
        BrotliStage {
            state: brotli::BrotliState::new_strict(alloc(), alloc(), alloc()),
            output: vec![0; DECODER_OUTPUT].into_boxed_slice(),
            total: 0,
            max_bytes,
            started: false,
            ended: false,
        }
    }

    fn write(&mut self, data: &[u8], step: Step, decoded: &mut dyn FnMut(&[u8])) -> Written {
        if let (false, Some(first)) = (self.started, data.first()) {
            self.started = true;
            // A window too large for Postern, or one only "large window" brotli (not RFC 7932)
            // has, is refused before anything is decoded.
            let window_bits = brotli_window_bits(*first);
            if window_bits > MAX_BROTLI_WINDOW_BITS {
                let reason = UnscannedReason::WindowTooLarge { window_bits };
                return Written::Failed(Unscanned { reason });
            }
        }
        if self.ended {
            return match data.is_empty() {
                true => Written::Ok,
                false => Written::AfterEnd(corrupt("br")),
            };
        }
        let (mut available_in, mut input_offset) = (data.len(), 0);
        loop {
            let (mut available_out, mut output_offset, mut total_out) = (self.output.len(), 0, 0);
            let result = brotli::BrotliDecompressStream(
                &mut available_in,
                &mut input_offset,
                data,
                &mut available_out,
                &mut output_offset,
                &mut self.output,
                &mut total_out,
                &mut self.state,
            );
            self.total = self.total.saturating_add(output_offset);
            if self.total > self.max_bytes {
                let reason = UnscannedReason::TooLarge {
                    max_bytes: self.max_bytes,
                };
                return Written::Failed(Unscanned { reason });
            }
            if output_offset > 0 {
                decoded(&self.output[..output_offset]);
            }
            match result {
                brotli::BrotliResult::NeedsMoreOutput => continue,
                brotli::BrotliResult::ResultSuccess => {
                    self.ended = true;
                    return match available_in {
                        0 => Written::Ok,
                        _ => Written::AfterEnd(corrupt("br")),
                    };
                }
                // All of `data` was taken; a stream that ends here is cut short.
                brotli::BrotliResult::NeedsMoreInput => {
                    return match step {
                        Step::End => Written::Failed(corrupt("br")),
                        Step::More | Step::Flush => Written::Ok,
                    };
                }
                brotli::BrotliResult::ResultFailure => return Written::Failed(corrupt("br")),
            }
        }
    }
}

/// The error libzstd gives for a frame whose window is over [`MAX_ZSTD_WINDOW_LOG`] (its
/// error codes are returned negated).
const ZSTD_WINDOW_TOO_LARGE: usize = 0usize.wrapping_sub(
    zstd::zstd_safe::zstd_sys::ZSTD_ErrorCode::ZSTD_error_frameParameter_windowTooLarge as usize,
);

/// libzstd's error for output that does not fit the room given it.
const ZSTD_DESTINATION_TOO_SMALL: usize = 0usize
    .wrapping_sub(zstd::zstd_safe::zstd_sys::ZSTD_ErrorCode::ZSTD_error_dstSize_tooSmall as usize);

/// A `zstd` decoder (libzstd, RFC 8878 frames only: no legacy formats, no dictionaries), its
/// output handed on [`DECODER_OUTPUT`] bytes at a time, up to `max_bytes` in all. A body is any
/// number of frames, one after another (skippable frames among them), as RFC 8878 §3.1 has it;
/// it must end where a frame does.
struct ZstdStage {
    context: zstd::zstd_safe::DCtx<'static>,
    output: Box<[u8]>,
    total: usize,
    max_bytes: usize,
    /// Part of a frame was taken and its end not yet decoded: a body that ends here is cut
    /// short.
    mid_frame: bool,
}

impl ZstdStage {
    fn new(max_bytes: usize) -> Self {
        let mut context = zstd::zstd_safe::DCtx::create();
        context
            .set_parameter(zstd::zstd_safe::DParameter::WindowLogMax(
                MAX_ZSTD_WINDOW_LOG,
            ))
            .expect("a window limit within libzstd's range is always taken");
        ZstdStage {
            context,
            output: vec![0; DECODER_OUTPUT].into_boxed_slice(),
            total: 0,
            max_bytes,
            mid_frame: false,
        }
    }

    fn write(&mut self, data: &[u8], step: Step, decoded: &mut dyn FnMut(&[u8])) -> Written {
        let mut input = zstd::zstd_safe::InBuffer::around(data);
        // Nothing is left behind between writes, so a write of nothing has nothing to do (and
        // libzstd counts calls that make no progress, failing the 16th).
        while !data.is_empty() {
            let taken_before = input.pos();
            let mut output = zstd::zstd_safe::OutBuffer::around(&mut self.output[..]);
            let result = self.context.decompress_stream(&mut output, &mut input);
            let produced = output.pos();
            self.total = self.total.saturating_add(produced);
            if self.total > self.max_bytes {
                let reason = UnscannedReason::TooLarge {
                    max_bytes: self.max_bytes,
                };
                return Written::Failed(Unscanned { reason });
            }
            if produced > 0 {
                decoded(&self.output[..produced]);
            }
            match result {
                // The frame that was being decoded ended, all of it handed on.
                Ok(0) => self.mid_frame = false,
                Ok(_) if input.pos() > taken_before => self.mid_frame = true,
                Ok(_) => {}
                Err(ZSTD_WINDOW_TOO_LARGE) => {
                    let reason = UnscannedReason::ZstdWindowTooLarge;
                    return Written::Failed(Unscanned { reason });
                }
                // Not a zstd frame (bytes after the last frame among them), corrupt, or a frame
                // that needs a dictionary.
                Err(_) => return Written::Failed(corrupt("zstd")),
            }
            // A full output buffer may leave more decoded output behind it.
            if input.pos() == data.len() && produced < self.output.len() {
                break;
            }
            // libzstd takes input or gives output on every call; should it not, the body is
            // refused rather than the loop spun.
            if input.pos() == taken_before && produced == 0 {
                return Written::Failed(corrupt("zstd"));
            }
        }
        match (step, self.mid_frame) {
            (Step::End, true) => Written::Failed(corrupt("zstd")),
            _ => Written::Ok,
        }
    }
}

/// `data` encoded again in `coding`, for a body masked after it was decoded: gzip (level 6),
/// br (quality 5, a 4 MiB window, what [`StreamDecoder`] reads) or zstd (level 3, one frame
/// declaring its size). `None` for `deflate`: which of its two forms (zlib-wrapped or raw) the
/// vendor reads cannot be told from the coding's name, so a masked body is not sent in either.
pub fn encode(coding: Coding, data: &[u8]) -> Option<Vec<u8>> {
    use std::io::Write as _;
    match coding {
        Coding::Gzip => {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            encoder.write_all(data).ok()?;
            encoder.finish().ok()
        }
        Coding::Brotli => {
            // Writing to memory cannot fail; `into_inner` ends the stream.
            let mut encoder =
                brotli::CompressorWriter::new(Vec::new(), 4096, 5, MAX_BROTLI_WINDOW_BITS);
            encoder.write_all(data).ok()?;
            Some(encoder.into_inner())
        }
        Coding::Zstd => zstd::bulk::compress(data, 3).ok(),
        Coding::Deflate => None,
    }
}

/// What a write to one reading came to.
enum Written {
    Ok,
    /// Its stream ended before the bytes written did.
    AfterEnd(Unscanned),
    /// Past the cap, or not valid for its coding.
    Failed(Unscanned),
}

/// Writes `data` into `decoder`, then flushes it or finishes the stream with `finish`, as
/// `step` says.
fn write_then<D: std::io::Write>(
    decoder: &mut D,
    data: &[u8],
    step: Step,
    finish: impl FnOnce(&mut D) -> std::io::Result<()>,
) -> std::io::Result<()> {
    if let Err(error) = decoder.write_all(data) {
        // What was decoded before the error is handed on.
        let _ = decoder.flush();
        return Err(error);
    }
    match step {
        Step::More => Ok(()),
        Step::Flush => decoder.flush(),
        Step::End => finish(decoder),
    }
}

/// Bodies for tests, here and in the gateway's.
#[doc(hidden)]
pub mod testing {
    use std::io::Write as _;

    /// `data` in gzip (the fastest level).
    pub fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    /// `data` in `zstd` (level 3), its frame declaring a window of `2^window_log` bytes (no
    /// content size, so the window is not shrunk to the data's).
    pub fn zstd(data: &[u8], window_log: u32) -> Vec<u8> {
        let mut encoder = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
        encoder.include_contentsize(false).unwrap();
        encoder
            .set_parameter(zstd::zstd_safe::CParameter::WindowLog(window_log))
            .unwrap();
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    /// `data` in `br` (quality 5), with a window of `lgwin` bits.
    pub fn brotli(data: &[u8], lgwin: u32) -> Vec<u8> {
        let mut encoder = brotli::CompressorWriter::new(Vec::new(), 4096, 5, lgwin);
        encoder.write_all(data).unwrap();
        encoder.into_inner()
    }

    /// A `deflate` body that is a valid zlib stream — one stored block of 65,278 bytes, whose
    /// length makes its first five bytes a raw DEFLATE stored block too — whose raw reading is
    /// a stored block of 257 of its first bytes and then `hidden`, compressed, which its zlib
    /// reading never shows (it reads those compressed bytes as they stand).
    pub fn two_way_deflate(hidden: &[u8]) -> Vec<u8> {
        let mut raw = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        raw.write_all(hidden).unwrap();
        two_way_zlib(&raw.finish().unwrap())
    }

    /// The valid zlib stream of [`two_way_deflate`], with `raw` as the bytes its raw reading
    /// takes after its first stored block (as they stand, to its zlib reading).
    pub fn two_way_zlib(raw: &[u8]) -> Vec<u8> {
        let mut data = b"a=".to_vec();
        data.resize(255, b'x');
        data.extend_from_slice(raw);
        data.resize(0xfefe, b'x');
        let (mut a, mut b) = (1u32, 0u32);
        for &byte in &data {
            a = (a + u32::from(byte)) % 65_521;
            b = (b + a) % 65_521;
        }
        let mut body = vec![0x78, 0x01, 0x01, 0xfe, 0xfe, 0x01, 0x01];
        body.extend_from_slice(&data);
        body.extend_from_slice(&((b << 16) | a).to_be_bytes());
        body
    }
}

#[cfg(test)]
mod tests {
    use super::testing::brotli;
    use super::*;
    use std::io::Write as _;

    /// A body gzipped three times is read; one listing four codings (or thousands, as a
    /// vendor's 64 KiB head can) is not decoded at all.
    #[test]
    fn at_most_three_codings_are_undone() {
        let mut body = b"email=someone@example.com".to_vec();
        for _ in 0..3 {
            body = encode(Coding::Gzip, &body).unwrap();
        }
        let decoded = decode_for_scan(&body, Some("gzip, gzip, gzip"), 1 << 20).unwrap();
        assert_eq!(&*decoded, b"email=someone@example.com");
        let many = vec!["gzip"; 4000].join(",");
        for listed in ["gzip, gzip, gzip, gzip", many.as_str()] {
            let error = decode_for_scan(&body, Some(listed), 1 << 20).unwrap_err();
            assert!(
                matches!(error.reason, UnscannedReason::TooManyCodings { .. }),
                "{error:?}"
            );
        }
    }

    /// `body` decoded in `pieces`-byte pieces: each reading's bytes.
    fn readings(
        encoding: &str,
        body: &[u8],
        pieces: usize,
        max: usize,
    ) -> Result<[Vec<u8>; READINGS], Unscanned> {
        let coding = StreamDecoder::check(encoding)?.expect("a coding to undo");
        let mut decoder = StreamDecoder::new(coding, max);
        let mut out = [Vec::new(), Vec::new()];
        let mut hand = |reading: usize, decoded: &[u8]| {
            assert!(
                decoded.len() <= MAX_STEP_OUTPUT,
                "{} bytes at once",
                decoded.len()
            );
            out[reading].extend_from_slice(decoded);
        };
        for piece in body.chunks(pieces.max(1)) {
            decoder.feed(piece, &mut hand)?;
        }
        decoder.finish(&mut hand)?;
        Ok(out)
    }

    /// `body` decoded in `pieces`-byte pieces, one reading.
    fn streamed(
        encoding: &str,
        body: &[u8],
        pieces: usize,
        max: usize,
    ) -> Result<Vec<u8>, Unscanned> {
        let [out, other] = readings(encoding, body, pieces, max)?;
        assert!(other.is_empty(), "{encoding}: one reading");
        Ok(out)
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// Streamed, in pieces of any size, a body decodes to what [`decode_for_scan`] makes of it
    /// whole; a bomb is refused at the cap, handed on in bounded steps until then.
    #[test]
    fn a_stream_decodes_as_the_whole_body_does() {
        let text: Vec<u8> = (0..20_000u32)
            .flat_map(|n| format!("{n},").into_bytes())
            .collect();
        let zlib = {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(&text).unwrap();
            e.finish().unwrap()
        };
        let raw = {
            let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
            e.write_all(&text).unwrap();
            e.finish().unwrap()
        };
        let stored = {
            let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::none());
            e.write_all(&text).unwrap();
            e.finish().unwrap()
        };
        for (encoding, body) in [
            ("gzip", gzip(&text)),
            ("x-gzip", gzip(&text)),
            ("deflate", zlib),
            ("Deflate", raw),
            ("deflate", stored),
            ("identity, gzip", gzip(&text)),
        ] {
            let whole = decode_for_scan(&body, Some(encoding), 1 << 24).unwrap();
            assert_eq!(&*whole, &text[..], "{encoding}");
            for pieces in [1, 2, 7, 1000, body.len()] {
                let out = streamed(encoding, &body, pieces, 1 << 24).unwrap();
                assert!(out == text, "{encoding} in pieces of {pieces}");
            }
            for pieces in [1, 1000] {
                let error = streamed(encoding, &body, pieces, text.len() - 1).unwrap_err();
                assert!(
                    matches!(error.reason, UnscannedReason::TooLarge { .. }),
                    "{encoding}"
                );
            }
        }
        let bomb = gzip(&vec![0; 64 << 20]);
        let error = streamed("gzip", &bomb, bomb.len(), 8 << 20).unwrap_err();
        assert!(matches!(error.reason, UnscannedReason::TooLarge { .. }));
        assert_eq!(
            streamed("gzip", &bomb, 4096, 64 << 20).unwrap().len(),
            64 << 20
        );
    }

    /// What a server may read in ways Postern cannot follow is refused: codings stacked (a
    /// server may undo some and not others), unknown codings, data not valid for its
    /// coding (in any reading) or cut short, and anything fed after a refusal. A body with no
    /// bytes is nothing to decode.
    #[test]
    fn what_cannot_be_read_one_way_is_refused() {
        assert_eq!(StreamDecoder::check("identity"), Ok(None));
        assert_eq!(StreamDecoder::check(""), Ok(None));
        assert_eq!(StreamDecoder::check(" X-Gzip"), Ok(Some(Coding::Gzip)));
        assert_eq!(StreamDecoder::check("BR"), Ok(Some(Coding::Brotli)));
        assert_eq!(StreamDecoder::check("zstd"), Ok(Some(Coding::Zstd)));
        for refused in [
            "gzip, gzip",
            "gzip, deflate",
            "gzip, br",
            "zstd, zstd",
            "gzip, zstd",
            "compress",
            "dcz",
        ] {
            let error = StreamDecoder::check(refused).expect_err(refused);
            assert!(
                matches!(error.reason, UnscannedReason::UnsupportedEncoding { .. }),
                "{refused}"
            );
        }
        let text = b"amount=100&currency=usd".repeat(100);
        let cut = gzip(&text);
        let error = streamed("gzip", &cut[..cut.len() / 2], 100, 1 << 24).unwrap_err();
        assert!(matches!(error.reason, UnscannedReason::Corrupt { .. }));
        let error = streamed("gzip", b"not gzip at all", 100, 1 << 24).unwrap_err();
        assert!(matches!(error.reason, UnscannedReason::Corrupt { .. }));
        // A zlib header (0x78 0x01) that is also a stored block of 0x??01 bytes (the next two
        // bytes are its length's complement), valid neither way: refused, however it arrives.
        let neither = [0x78, 0x01, 0x00, 0xfe, 0xff, b'a', b'b', b'c'];
        for pieces in [1, 5, 8] {
            let error = readings("deflate", &neither, pieces, 1 << 24).unwrap_err();
            assert!(matches!(error.reason, UnscannedReason::Corrupt { .. }));
        }
        let mut empty = StreamDecoder::new(Coding::Gzip, 10);
        empty.finish(&mut |_, _| panic!("nothing decoded")).unwrap();
    }

    /// A `br` body is decoded however it arrives, in one reading, with any window the
    /// reference encoder writes up to 4 MiB (the window its first byte declares is read as the
    /// decoder reads it); a larger window is refused before anything is decoded, and so is a
    /// stream not valid, cut short, followed by more bytes, or decoding past the cap.
    #[test]
    fn a_brotli_body_is_decoded_with_a_window_of_at_most_4_mib() {
        let text: Vec<u8> = (0..20_000u32)
            .flat_map(|n| format!("amount={n}&").into_bytes())
            .collect();
        for lgwin in 10..=24 {
            let body = brotli(&text, lgwin);
            assert_eq!(
                brotli_window_bits(body[0]),
                lgwin,
                "the first byte of lgwin {lgwin}"
            );
            for pieces in [1, 7, 4096, body.len()] {
                match streamed("br", &body, pieces, 1 << 24) {
                    Ok(decoded) if lgwin <= MAX_BROTLI_WINDOW_BITS => {
                        assert_eq!(decoded, text, "lgwin {lgwin}, in pieces of {pieces}")
                    }
                    Err(error) if lgwin > MAX_BROTLI_WINDOW_BITS => assert_eq!(
                        error.reason,
                        UnscannedReason::WindowTooLarge { window_bits: lgwin }
                    ),
                    other => panic!("lgwin {lgwin}, in pieces of {pieces}: {other:?}"),
                }
            }
        }
        // Large-window brotli (its mark: WBITS bits 0b0010001) is not RFC 7932's.
        assert_eq!(brotli_window_bits(0b0010001), 30);
        let body = brotli(&text, 22);
        let cut = streamed("br", &body[..body.len() - 3], 100, 1 << 24).unwrap_err();
        assert!(matches!(cut.reason, UnscannedReason::Corrupt { .. }));
        let after = [&body[..], b"more"].concat();
        let error = streamed("br", &after, 100, 1 << 24).unwrap_err();
        assert!(matches!(error.reason, UnscannedReason::Corrupt { .. }));
        let error = streamed("br", b"\x1b not brotli at all", 100, 1 << 24).unwrap_err();
        assert!(matches!(error.reason, UnscannedReason::Corrupt { .. }));
        let bomb = brotli(&vec![b'a'; 200_000], 22);
        let error = streamed("br", &bomb, 4096, 100_000).unwrap_err();
        assert!(matches!(error.reason, UnscannedReason::TooLarge { .. }));
        // A few hundred bytes that stand for 20 MB are handed on in pieces of at most
        // DECODER_OUTPUT, fed whole or not (not gathered up to the cap first).
        let bomb = brotli(&vec![b'a'; 20_000_000], 22);
        assert!(bomb.len() < 20_000, "{} bytes", bomb.len());
        bomb_is_handed_on_in_pieces(Coding::Brotli, &bomb);
        // Large-window brotli (first byte 0x11 or 0x91) is refused before it is decoded, as a
        // stream and, for a response, whole.
        for first in [0x11, 0x91] {
            let body = [first, 0x80, 0x00, 0x00];
            let error = streamed("br", &body, 4, 1 << 24).unwrap_err();
            assert_eq!(
                error.reason,
                UnscannedReason::WindowTooLarge { window_bits: 30 }
            );
            let error = decode_for_scan(&body, Some("br"), 1 << 24).unwrap_err();
            assert_eq!(
                error.reason,
                UnscannedReason::WindowTooLarge { window_bits: 30 }
            );
        }
    }

    /// `bomb` (20 MB of `a` in a few KiB), fed whole or in pieces of 100 bytes, is handed on
    /// in pieces of at most [`DECODER_OUTPUT`], not gathered up to the cap first.
    fn bomb_is_handed_on_in_pieces(coding: Coding, bomb: &[u8]) {
        for pieces in [bomb.len(), 100] {
            let mut decoder = StreamDecoder::new(coding, 1 << 25);
            let (mut total, mut largest) = (0, 0);
            let mut hand = |_: usize, piece: &[u8]| {
                total += piece.len();
                largest = largest.max(piece.len());
            };
            for piece in bomb.chunks(pieces) {
                decoder.feed(piece, &mut hand).unwrap();
            }
            decoder.finish(&mut hand).unwrap();
            assert_eq!((total, largest), (20_000_000, DECODER_OUTPUT));
        }
    }

    /// A `zstd` body is decoded however it arrives, in one reading, whole frames one after
    /// another (skippable ones skipped), with any window up to 8 MiB (RFC 9659's most); a
    /// frame with a larger window — any frame of the body — is refused as a stream before
    /// anything of it is decoded, while a response, decoded whole in one pass, takes any
    /// window. A body not valid, cut short, followed by bytes that are no frame, failing its
    /// checksum, needing a dictionary, in a legacy format, or decoding past the cap is refused
    /// both ways. A bomb is handed on in bounded pieces.
    #[test]
    fn a_zstd_body_is_decoded_with_a_window_of_at_most_8_mib() {
        use crate::testing::zstd;
        let text: Vec<u8> = (0..20_000u32)
            .flat_map(|n| format!("amount={n}&").into_bytes())
            .collect();
        for window_log in [10, 17, 20, MAX_ZSTD_WINDOW_LOG, 24, 27] {
            let body = zstd(&text, window_log);
            for pieces in [1, 7, 4096, body.len()] {
                match streamed("zstd", &body, pieces, 1 << 24) {
                    Ok(decoded) if window_log <= MAX_ZSTD_WINDOW_LOG => {
                        assert_eq!(decoded, text, "window 2^{window_log}, pieces of {pieces}")
                    }
                    Err(error) if window_log > MAX_ZSTD_WINDOW_LOG => {
                        assert_eq!(error.reason, UnscannedReason::ZstdWindowTooLarge)
                    }
                    other => panic!("window 2^{window_log}, pieces of {pieces}: {other:?}"),
                }
            }
            let whole = decode_for_scan(&body, Some("zstd"), 1 << 24).unwrap();
            assert_eq!(whole.as_ref(), &text[..], "window 2^{window_log}, whole");
        }
        // The limit holds for every frame, not the first alone.
        let narrow_then_wide = [zstd(b"first=1&", 17), zstd(&text, 24)].concat();
        for pieces in [1, 4096, narrow_then_wide.len()] {
            let error = streamed("zstd", &narrow_then_wide, pieces, 1 << 24).unwrap_err();
            assert_eq!(error.reason, UnscannedReason::ZstdWindowTooLarge);
        }
        let whole = decode_for_scan(&narrow_then_wide, Some("zstd"), 1 << 24).unwrap();
        assert_eq!(whole.as_ref(), &[&b"first=1&"[..], &text].concat()[..]);
        // Frames one after another, a skippable frame (RFC 8878 §3.1.2) between them.
        let skippable = [
            &0x184D_2A50u32.to_le_bytes()[..],
            &4u32.to_le_bytes(),
            b"skip",
        ]
        .concat();
        let frames = [zstd(b"first=1&", 17), skippable, zstd(b"second=2", 17)].concat();
        for pieces in [1, 3, frames.len()] {
            assert_eq!(
                streamed("zstd", &frames, pieces, 1 << 24).unwrap(),
                b"first=1&second=2"
            );
        }
        let body = zstd(&text, 20);
        // A checksummed frame (RFC 8878 §3.1.1) with one byte of its data flipped.
        let mut checksummed = {
            let mut encoder = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
            encoder.include_checksum(true).unwrap();
            encoder.write_all(&text).unwrap();
            encoder.finish().unwrap()
        };
        assert_eq!(
            decode_for_scan(&checksummed, Some("zstd"), 1 << 24).unwrap(),
            &text[..]
        );
        // One-shot encoders declare the content size; the cap holds all the same.
        let declared = zstd::bulk::compress(&text, 3).unwrap();
        let whole = decode_for_scan(&declared, Some("zstd"), text.len()).unwrap();
        assert_eq!(whole, &text[..]);
        let error = decode_for_scan(&declared, Some("zstd"), text.len() - 1).unwrap_err();
        assert!(matches!(error.reason, UnscannedReason::TooLarge { .. }));
        let middle = checksummed.len() / 2;
        checksummed[middle] ^= 0x10;
        // The same frame asking for dictionary 7 (Dictionary_ID_flag 1, one byte after the
        // window descriptor), which Postern has not.
        assert_eq!(body[4] & 0x23, 0, "no dictionary ID, not one segment");
        let mut with_dictionary = [&body[..6], &[7], &body[6..]].concat();
        with_dictionary[4] |= 1;
        // A valid frame of zstd v0.7 (magic 0xFD2FB527), a format only legacy builds read: a
        // 1 KiB window, one raw block of `hello`, the end block.
        let legacy = [
            &0xFD2F_B527u32.to_le_bytes()[..],
            &[0x00, 0x00, 0x40, 0x00, 0x05],
            b"hello",
            &[0xC0, 0x00, 0x00],
        ]
        .concat();
        for broken in [
            &body[..body.len() - 3],
            &body[..4],
            &[&body[..], b"more"].concat()[..],
            b"not zstd at all",
            &checksummed,
            &with_dictionary,
            &legacy,
        ] {
            let error = streamed("zstd", broken, 100, 1 << 24).unwrap_err();
            assert!(matches!(error.reason, UnscannedReason::Corrupt { .. }));
            let error = decode_for_scan(broken, Some("zstd"), 1 << 24).unwrap_err();
            assert!(matches!(error.reason, UnscannedReason::Corrupt { .. }));
        }
        let error = streamed("zstd", &body, 4096, text.len() - 1).unwrap_err();
        assert!(matches!(error.reason, UnscannedReason::TooLarge { .. }));
        let bomb = zstd(&vec![b'a'; 20_000_000], 20);
        assert!(bomb.len() < 20_000, "{} bytes", bomb.len());
        bomb_is_handed_on_in_pieces(Coding::Zstd, &bomb);
        let error = streamed("zstd", &bomb, 4096, 1_000_000).unwrap_err();
        assert!(matches!(error.reason, UnscannedReason::TooLarge { .. }));
        // Whole, with no content size declared: the room doubles up to the cap, and past it.
        let whole = decode_for_scan(&bomb, Some("zstd"), 1 << 25).unwrap();
        assert_eq!(whole.len(), 20_000_000);
        let error = decode_for_scan(&bomb, Some("zstd"), 1_000_000).unwrap_err();
        assert_eq!(
            error.reason,
            UnscannedReason::TooLarge {
                max_bytes: 1_000_000
            }
        );
        // Damaged anywhere, a body is refused or decodes to no more than the cap; never a
        // panic or a loop that does not end (xorshift, fixed seed).
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as usize
        };
        let small = &text[..20_000];
        let body = zstd(small, 17);
        for _ in 0..2000 {
            let mut damaged = body.clone();
            for _ in 0..1 + next() % 3 {
                let at = next() % damaged.len();
                damaged[at] ^= 1 << (next() % 8);
            }
            // Streamed or whole, a damaged body reads the same, or is refused both ways (with a
            // cap under the 128 KiB block maximum: a block past it fails differently).
            let pieces = 1 + next() % 600;
            let as_streamed = streamed("zstd", &damaged, pieces, small.len() + 100).ok();
            let whole = decode_for_scan(&damaged, Some("zstd"), small.len() + 100).ok();
            assert_eq!(as_streamed.as_deref(), whole.as_deref(), "{damaged:?}");
            assert!(as_streamed.is_none_or(|decoded| decoded.len() <= small.len() + 100));
        }
    }

    /// A `deflate` body valid as zlib that also starts as a raw DEFLATE stored block is read
    /// both ways, side by side, however it arrives: its zlib reading whole, its raw one — here a
    /// stored block of the zlib stream's first bytes, then a block of its own that decodes to
    /// what the zlib reading never shows — until it fails (bytes after its end). Past the cap
    /// in either reading it is refused.
    #[test]
    fn a_deflate_body_that_reads_two_ways_is_read_both_ways() {
        let hidden = b"&_method=DELETE&";
        let body = crate::testing::two_way_deflate(hidden);
        let mut zlib = Vec::new();
        flate2::read::ZlibDecoder::new(&body[..])
            .read_to_end(&mut zlib)
            .unwrap();
        assert!(memchr::memmem::find(&zlib, hidden).is_none());
        for pieces in [1, 7, 4096, body.len()] {
            let [first, second] = readings("deflate", &body, pieces, 1 << 24).unwrap();
            assert_eq!(first, zlib, "in pieces of {pieces}");
            assert!(second.starts_with(&[1, 1]), "in pieces of {pieces}");
            assert!(second.ends_with(hidden), "in pieces of {pieces}");
        }
        let error = readings("deflate", &body, 4096, 1000).unwrap_err();
        assert!(matches!(error.reason, UnscannedReason::TooLarge { .. }));
        // Past the cap in the raw reading only (the zlib one decodes to 65,278 bytes).
        let bomb = crate::testing::two_way_deflate(&vec![b'a'; 200_000]);
        assert!(readings("deflate", &bomb, 4096, 100_000)
            .is_err_and(|error| matches!(error.reason, UnscannedReason::TooLarge { .. })));
        // A reading not valid for its coding mid-stream refuses the body: a lenient decoder may
        // read on where Postern's stopped. (The raw reading of this zlib stream: its stored
        // block, then its next bytes as a block header of the reserved type 3.)
        let broken = crate::testing::two_way_zlib(&[0b111]);
        let error = readings("deflate", &broken, 4096, 1 << 24).unwrap_err();
        assert!(matches!(error.reason, UnscannedReason::Corrupt { .. }));
        let mut decoder = StreamDecoder::new(Coding::Deflate, 1 << 24);
        assert!(decoder.feed(&broken, &mut |_, _| {}).is_err());
        assert!(
            decoder.feed(b"more", &mut |_, _| {}).is_err(),
            "refused for good"
        );
        assert!(decoder.finish(&mut |_, _| {}).is_err(), "refused for good");
    }
}
