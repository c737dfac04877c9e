//! Record framing: `u32 BE length ‖ u32 BE CRC-32C(bytes) ‖ bytes`, used by log segments and
//! the checkpoint history.

/// Bytes before each record's payload.
pub const FRAME_HEADER_BYTES: usize = 8;
/// Largest payload (the tlog-tiles entry bundle limit).
pub const MAX_RECORD_BYTES: usize = u16::MAX as usize;
/// Direct I/O writes whole blocks of this size: a segment written that way ends in zeros up to
/// the next block boundary (see [`FrameStop::Padding`]).
pub const PAD_BLOCK_BYTES: usize = 4096;

/// Appends one framed record to `out`.
pub fn push_frame(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_be_bytes());
    out.extend_from_slice(payload);
}

/// What stopped a scan before the end of the data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameStop {
    /// The data ends in a torn record (short, all zeros, or a bad final record): everything
    /// from `offset` on can be discarded.
    TornTail { offset: u64 },
    /// A damaged record with valid data after it: refuse.
    Corrupt { offset: u64, reason: String },
    /// The data ends in zeros that fill its last [`PAD_BLOCK_BYTES`] block after the final
    /// record: the padding of a direct I/O write, not a record. The records end at `offset`.
    Padding { offset: u64 },
}

/// One decoded frame: byte offset of its header and its payload.
pub struct Frame<'a> {
    pub offset: u64,
    pub payload: &'a [u8],
}

/// Walks the framed records in `data`, calling `on_frame` for each valid one. A damaged record
/// is a torn tail when `tail_allowed` and nothing valid can follow it (the record runs past the
/// end, or is the last one, or only zeros follow) or when it reaches into the last block of a
/// block-aligned file (the block a direct write rewrites in place); otherwise it is corruption.
/// With `tail_allowed`, zeros that fill a block-aligned file's last block after its last record
/// are [`FrameStop::Padding`].
pub fn scan_frames<E>(
    data: &[u8],
    tail_allowed: bool,
    mut on_frame: impl FnMut(Frame<'_>) -> Result<(), E>,
) -> Result<Option<FrameStop>, E> {
    let mut pos = 0usize;
    let block_aligned = data.len().is_multiple_of(PAD_BLOCK_BYTES);
    // Whether a record ending at `end` (an offset in `data`) reaches into the last block of a
    // block-aligned file: a crash during a direct write can tear only that block.
    let in_rewritten_block =
        |end: usize| block_aligned && end > data.len().saturating_sub(PAD_BLOCK_BYTES);
    while pos < data.len() {
        let remaining = &data[pos..];
        // Only the active (last) segment is ever padded; a valid record is never all zeros
        // (its length is at least 1), so padding cannot stand for one.
        if tail_allowed
            && block_aligned
            && remaining.len() < PAD_BLOCK_BYTES
            && remaining.iter().all(|&b| b == 0)
        {
            return Ok(Some(FrameStop::Padding { offset: pos as u64 }));
        }
        let torn_or_corrupt = |reason: String, looks_torn: bool| {
            let only_zeros = remaining.iter().all(|&b| b == 0);
            if tail_allowed && (looks_torn || only_zeros) {
                FrameStop::TornTail { offset: pos as u64 }
            } else {
                FrameStop::Corrupt {
                    offset: pos as u64,
                    reason,
                }
            }
        };
        if remaining.len() < FRAME_HEADER_BYTES {
            return Ok(Some(torn_or_corrupt(
                format!("{} stray bytes after the last record", remaining.len()),
                true,
            )));
        }
        let len = u32::from_be_bytes(remaining[0..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_be_bytes(remaining[4..8].try_into().expect("4 bytes"));
        if len == 0 || len > MAX_RECORD_BYTES {
            let runs_past_end = len > remaining.len() - FRAME_HEADER_BYTES;
            return Ok(Some(torn_or_corrupt(
                format!("record length {len} is invalid (must be 1..=65535)"),
                runs_past_end || in_rewritten_block(pos + FRAME_HEADER_BYTES),
            )));
        }
        let end = FRAME_HEADER_BYTES + len;
        if end > remaining.len() {
            return Ok(Some(torn_or_corrupt(
                format!(
                    "record of {len} bytes runs past the end of the file ({} bytes left)",
                    remaining.len() - FRAME_HEADER_BYTES
                ),
                true,
            )));
        }
        let payload = &remaining[FRAME_HEADER_BYTES..end];
        if crc32c::crc32c(payload) != crc {
            return Ok(Some(torn_or_corrupt(
                "CRC-32C mismatch (the record's bytes were altered)".to_string(),
                end == remaining.len() || in_rewritten_block(pos + end),
            )));
        }
        on_frame(Frame {
            offset: pos as u64,
            payload,
        })?;
        pos += end;
    }
    Ok(None)
}
