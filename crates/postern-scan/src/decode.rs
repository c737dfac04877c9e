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
