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
    #[error("content-encoding `{encoding}` is not supported for scanning (supported: identity, gzip, x-gzip, deflate, br)")]
    UnsupportedEncoding { encoding: String },
    #[error("body is not valid `{encoding}` data")]
    Corrupt { encoding: String },
}

/// Returns the bytes to scan: `body` itself when there is no content coding, or the decoded
/// body for `gzip`, `deflate` and `br` (codings listed in one header are undone last first).
/// Decoding stops at `max_bytes`: a longer body is `Unscanned { TooLarge }`.
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
        "br" => brotli::Decompressor::new(body, 4096)
            .take(limit)
            .read_to_end(&mut output),
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

/// Undoes a body's `Content-Encoding` as its pieces come (codings undone last first, as
/// [`decode_for_scan`] does), for readers that look at a body while it streams and hold none of
/// it. Its decoded bytes are handed on piece by piece; decoding past `max_bytes` in all, data
/// that is not valid for its coding, or a body that ends mid-stream is an [`Unscanned`].
pub struct StreamDecoder {
    /// The codings to undo, in the order they are undone (the last applied first).
    stages: Vec<Stage>,
    max_bytes: usize,
}

enum Stage {
    Gzip(flate2::write::MultiGzDecoder<Capped>),
    Zlib(flate2::write::ZlibDecoder<Capped>),
    Deflate(flate2::write::DeflateDecoder<Capped>),
    Brotli(Box<brotli::DecompressorWriter<Capped>>),
    /// `deflate`, before its first two bytes tell a zlib stream (as RFC 9110 names it) from raw
    /// DEFLATE (as some clients send it): they are held until then.
    Sniffing(Vec<u8>),
}

/// A stage's decoded output, taken after each write; refuses to grow past the cap, so one
/// small piece of a compression bomb cannot fill memory before the cap is checked.
struct Capped {
    out: Vec<u8>,
    total: usize,
    max_bytes: usize,
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
    /// The decoder for `content_encoding` (one header's list, or several lines joined with `,`):
    /// `Ok(None)` when there is nothing to undo (no coding, or `identity`),
    /// `Err(UnsupportedEncoding)` for a coding other than gzip, x-gzip, deflate and br.
    pub fn new(content_encoding: &str, max_bytes: usize) -> Result<Option<Self>, Unscanned> {
        Self::check(content_encoding)?;
        let mut stages = Vec::new();
        for coding in content_encoding.split(',').rev() {
            let coding = coding.trim().to_ascii_lowercase();
            let capped = Capped {
                out: Vec::new(),
                total: 0,
                max_bytes,
            };
            stages.push(match coding.as_str() {
                "" | "identity" => continue,
                "gzip" | "x-gzip" => Stage::Gzip(flate2::write::MultiGzDecoder::new(capped)),
                "deflate" => Stage::Sniffing(Vec::new()),
                "br" => Stage::Brotli(Box::new(brotli::DecompressorWriter::new(capped, 4096))),
                _ => {
                    return Err(Unscanned {
                        reason: UnscannedReason::UnsupportedEncoding { encoding: coding },
                    })
                }
            });
        }
        Ok((!stages.is_empty()).then_some(StreamDecoder { stages, max_bytes }))
    }

    /// Whether every coding `content_encoding` names can be undone (gzip, x-gzip, deflate, br;
    /// `identity` and empty items are nothing to undo), without building a decoder.
    pub fn check(content_encoding: &str) -> Result<(), Unscanned> {
        for coding in content_encoding.split(',') {
            let coding = coding.trim();
            let known = ["", "identity", "gzip", "x-gzip", "deflate", "br"];
            if !known.iter().any(|known| coding.eq_ignore_ascii_case(known)) {
                return Err(Unscanned {
                    reason: UnscannedReason::UnsupportedEncoding {
                        encoding: coding.to_ascii_lowercase(),
                    },
                });
            }
        }
        Ok(())
    }

    /// Decodes the next piece of the body, handing what it decodes to `decoded` (perhaps in
    /// several pieces, perhaps none yet).
    pub fn feed(&mut self, data: &[u8], decoded: &mut dyn FnMut(&[u8])) -> Result<(), Unscanned> {
        self.pass(0, data, false, decoded)
    }

    /// The body ended: what the decoders still hold is handed on; a stream cut short is
    /// `Corrupt`.
    pub fn finish(&mut self, decoded: &mut dyn FnMut(&[u8])) -> Result<(), Unscanned> {
        self.pass(0, &[], true, decoded)
    }

    /// `data` into stage `at` (and its output on through the stages after it), then, at the
    /// end, each stage finished in turn.
    fn pass(
        &mut self,
        at: usize,
        data: &[u8],
        end: bool,
        decoded: &mut dyn FnMut(&[u8]),
    ) -> Result<(), Unscanned> {
        let max_bytes = self.max_bytes;
        let Some(stage) = self.stages.get_mut(at) else {
            if !data.is_empty() {
                decoded(data);
            }
            return Ok(());
        };
        let out = stage.write(data, end, max_bytes)?;
        self.pass(at + 1, &out, end, decoded)
    }
}

impl Stage {
    /// Writes `data` (and finishes the stream at `end`), returning what it decoded.
    fn write(&mut self, data: &[u8], end: bool, max_bytes: usize) -> Result<Vec<u8>, Unscanned> {
        if let Stage::Sniffing(held) = self {
            held.extend_from_slice(data);
            if held.len() < 2 && !end {
                return Ok(Vec::new());
            }
            let held = std::mem::take(held);
            let capped = Capped {
                out: Vec::new(),
                total: 0,
                max_bytes,
            };
            // A zlib header: compression method 8, window ≤ 32 KiB, check bits (RFC 1950).
            let zlib = held.len() >= 2
                && held[0] & 0x0f == 8
                && held[0] >> 4 <= 7
                && u16::from_be_bytes([held[0], held[1]]) % 31 == 0;
            *self = if zlib {
                Stage::Zlib(flate2::write::ZlibDecoder::new(capped))
            } else {
                Stage::Deflate(flate2::write::DeflateDecoder::new(capped))
            };
            return self.write(&held, end, max_bytes);
        }
        let (encoding, result, capped) = match self {
            Stage::Gzip(decoder) => (
                "gzip",
                write_then(decoder, data, end, |d| d.try_finish()),
                decoder.get_mut(),
            ),
            Stage::Zlib(decoder) => (
                "deflate",
                write_then(decoder, data, end, |d| d.try_finish()),
                decoder.get_mut(),
            ),
            Stage::Deflate(decoder) => (
                "deflate",
                write_then(decoder, data, end, |d| d.try_finish()),
                decoder.get_mut(),
            ),
            Stage::Brotli(decoder) => (
                "br",
                write_then(&mut **decoder, data, end, |d| d.close()),
                decoder.get_mut(),
            ),
            Stage::Sniffing(..) => unreachable!("replaced above"),
        };
        if result.is_err() {
            let reason = if capped.total > capped.max_bytes {
                UnscannedReason::TooLarge { max_bytes }
            } else {
                UnscannedReason::Corrupt {
                    encoding: encoding.to_owned(),
                }
            };
            return Err(Unscanned { reason });
        }
        Ok(std::mem::take(&mut capped.out))
    }
}

/// Writes `data` into `decoder` and flushes it (so what it decoded is handed on now, not with
/// the next piece); at `end`, finishes the stream with `finish`.
fn write_then<D: std::io::Write>(
    decoder: &mut D,
    data: &[u8],
    end: bool,
    finish: impl FnOnce(&mut D) -> std::io::Result<()>,
) -> std::io::Result<()> {
    decoder.write_all(data)?;
    decoder.flush()?;
    if end {
        finish(decoder)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn streamed(
        encoding: &str,
        body: &[u8],
        pieces: usize,
        max: usize,
    ) -> Result<Vec<u8>, Unscanned> {
        let mut decoder = StreamDecoder::new(encoding, max)?.expect("a coding to undo");
        let mut out = Vec::new();
        for piece in body.chunks(pieces.max(1)) {
            decoder.feed(piece, &mut |decoded| out.extend_from_slice(decoded))?;
        }
        decoder.finish(&mut |decoded| out.extend_from_slice(decoded))?;
        Ok(out)
    }

    /// Streamed, in pieces of any size, a body decodes to what [`decode_for_scan`] makes of it
    /// whole, for every coding and for codings stacked.
    #[test]
    fn a_stream_decodes_as_the_whole_body_does() {
        let text: Vec<u8> = (0..20_000u32)
            .flat_map(|n| format!("{n},").into_bytes())
            .collect();
        let gzip = |data: &[u8]| {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        };
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
        let brotli = |data: &[u8]| {
            let mut out = Vec::new();
            let mut e = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
            e.write_all(data).unwrap();
            drop(e);
            out
        };
        for (encoding, body) in [
            ("gzip", gzip(&text)),
            ("deflate", zlib),
            ("Deflate", raw),
            ("br", brotli(&text)),
            ("gzip, br", brotli(&gzip(&text))),
        ] {
            let whole = decode_for_scan(&body, Some(encoding), 1 << 24).unwrap();
            assert_eq!(&*whole, &text[..], "{encoding}");
            for pieces in [1, 2, 7, 1000, body.len()] {
                let out = streamed(encoding, &body, pieces, 1 << 24).unwrap();
                assert!(out == text, "{encoding} in pieces of {pieces}");
            }
            // Decoded past the cap: refused, whatever the pieces.
            for pieces in [1, 1000] {
                let error = streamed(encoding, &body, pieces, text.len() - 1).unwrap_err();
                assert!(
                    matches!(error.reason, UnscannedReason::TooLarge { .. }),
                    "{encoding}"
                );
            }
        }
        assert!(StreamDecoder::new("identity", 10).unwrap().is_none());
        assert!(StreamDecoder::new("", 10).unwrap().is_none());
        let unknown = StreamDecoder::new("gzip, zstd", 10).err().unwrap();
        assert!(matches!(
            unknown.reason,
            UnscannedReason::UnsupportedEncoding { .. }
        ));
        let cut = gzip(&text);
        let error = streamed("gzip", &cut[..cut.len() / 2], 100, 1 << 24).unwrap_err();
        assert!(matches!(error.reason, UnscannedReason::Corrupt { .. }));
    }
}
