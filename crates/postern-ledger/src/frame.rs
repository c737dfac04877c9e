//! Record framing: `u32 BE length ‖ u32 BE CRC-32C(bytes) ‖ bytes`, used by log segments and
//! the checkpoint history.

/// Bytes before each record's payload.
pub const FRAME_HEADER_BYTES: usize = 8;
/// Largest payload (the tlog-tiles entry bundle limit).
pub const MAX_RECORD_BYTES: usize = u16::MAX as usize;
/// Direct I/O writes whole blocks of this size: a segment written that way ends in zeros up to
/// the next block boundary (see [`FrameStop::Padding`]).
pub const PAD_BLOCK_BYTES: usize = 4096;
/// The active segment grows ahead of its records in steps of this many bytes of zeros, written
/// and durable before records are written over them (`direct.rs`).
pub const GROW_BYTES: u64 = 1 << 20;
/// The most one write of records carries, direct or through the page cache (a larger batch is
/// written in pieces, each durable before the next starts): the most a crash can tear.
/// Block-aligned.
pub const MAX_WRITE_BYTES: usize = 256 * 1024;

/// Appends one framed record to `out`.
pub fn push_frame(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_be_bytes());
    out.extend_from_slice(payload);
}

/// What stopped a scan before the end of the data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameStop {
    /// The data ends in what looks like a torn record (short, all zeros, or a bad final record):
    /// everything from `offset` on can be discarded, unless a signed checkpoint covers the entry
    /// there (it was durable before the checkpoint, so a crash cannot have torn it: the caller
    /// then reports `reason` as corruption).
    TornTail { offset: u64, reason: String },
    /// A damaged record with valid data after it: refuse.
    Corrupt { offset: u64, reason: String },
    /// The active segment's data ends in zeros after the final record: the padding of a direct
    /// I/O write and the zeros the segment is grown by, not a record. The records end at
    /// `offset`.
    Padding { offset: u64 },
}

/// One decoded frame: byte offset of its header and its payload.
pub struct Frame<'a> {
    pub offset: u64,
    pub payload: &'a [u8],
}

/// How a file's end may legitimately look after a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// A file no longer written (an earlier segment): any damage is corruption.
    Sealed,
    /// A file only ever appended to through the page cache, one record synced at a time (the
    /// checkpoint history): a damaged record is a torn tail when nothing valid follows it.
    Appended,
    /// The active segment. Where direct I/O wrote it, the file is block-aligned: zeros from the
    /// last record to the end are padding, a damaged record reaching into the last
    /// [`MAX_WRITE_BYTES`] before them (what the last direct write, torn by a crash, can have
    /// covered) is a torn tail, and a record length above [`MAX_RECORD_BYTES`] is corruption
    /// wherever it is (a crash cannot set a length's high bytes). Otherwise it was written
    /// through the page cache (or closed cleanly): as `Appended`, and a damaged record reaching
    /// into the last [`MAX_WRITE_BYTES`] of the file is a torn tail too (the last write, not yet
    /// synced, may have reached the disk as any of its pages and not the others, which then
    /// read as zeros).
    Active,
}

impl Tail {
    /// The rule for a segment: the last one is active, the others sealed.
    pub fn of_segment(last: bool) -> Tail {
        if last {
            Tail::Active
        } else {
            Tail::Sealed
        }
    }
}

/// Walks the framed records in `data`, calling `on_frame` for each valid one, and says how the
/// walk stopped if not at the end: torn tail, padding or corruption, as `tail` allows.
pub fn scan_frames<E>(
    data: &[u8],
    tail: Tail,
    mut on_frame: impl FnMut(Frame<'_>) -> Result<(), E>,
) -> Result<Option<FrameStop>, E> {
    let mut pos = 0usize;
    let tail_allowed = tail != Tail::Sealed;
    // Only the active segment is written in padded blocks by direct I/O.
    let padded_tail = tail == Tail::Active && data.len().is_multiple_of(PAD_BLOCK_BYTES);
    // Where its bytes other than zeros end: the zeros after them are padding (the rest of the
    // block the last write ended in, and the zeros the segment was grown by, `direct.rs`).
    let content_end = match padded_tail {
        true => data.iter().rposition(|&b| b != 0).map_or(0, |at| at + 1),
        false => data.len(),
    };
    // Whether a record ending at `end` reaches into what the last write of records covered:
    // each write is durable before the next starts and carries at most `MAX_WRITE_BYTES`, so a
    // crash can tear only the last `MAX_WRITE_BYTES` of the records, anywhere in them. A direct
    // write starts at a block boundary: the last `MAX_WRITE_BYTES` (rounded out to whole blocks)
    // before `content_end`. A write through the page cache starts wherever the records ended,
    // and writeback may have stored any of its pages and not the others before the crash (an
    // earlier one lost, a later one kept): the last `MAX_WRITE_BYTES` of the file.
    let torn_from = match padded_tail {
        true => content_end
            .next_multiple_of(PAD_BLOCK_BYTES)
            .saturating_sub(MAX_WRITE_BYTES),
        false => data.len().saturating_sub(MAX_WRITE_BYTES),
    };
    let in_last_write = |end: usize| tail == Tail::Active && end > torn_from;
    while pos < data.len() {
        let remaining = &data[pos..];
        // Only zeros from this record boundary on: padding. A valid record is never all zeros
        // (its length is at least 1), so padding cannot stand for one. (Their length is not
        // bounded: a crash between growing the segment and writing a large batch into it
        // leaves more than one growth step of them.)
        if padded_tail && pos >= content_end {
            return Ok(Some(FrameStop::Padding { offset: pos as u64 }));
        }
        let torn_or_corrupt = |reason: String, looks_torn: bool| {
            let only_zeros = remaining.iter().all(|&b| b == 0);
            // The history's unsynced write is one record: damaged with no intact record after
            // it, it is that record, torn (say its first page was lost, its second kept). The
            // records of a batch in a segment follow each other in one write: there the
            // distance from the end decides (`in_last_write`).
            let last_record = tail == Tail::Appended
                && first_intact_frame(&remaining[1..], remaining.len()).is_none();
            if tail_allowed && (looks_torn || only_zeros || last_record) {
                FrameStop::TornTail {
                    offset: pos as u64,
                    reason,
                }
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
            let looks_torn = match padded_tail {
                // A crash leaves each block (sector) of a direct write either new or as it was:
                // the same bytes or zeros. A torn length keeps a real one's two high zero bytes,
                // so a length above the limit there is damage, whatever follows it.
                true => len == 0 && in_last_write(pos + FRAME_HEADER_BYTES),
                // A length running past the end is the last record's, torn; in the last write
                // through the page cache, a zero length is a page writeback did not store.
                false => {
                    len > remaining.len() - FRAME_HEADER_BYTES
                        || (len == 0 && in_last_write(pos + FRAME_HEADER_BYTES))
                }
            };
            return Ok(Some(torn_or_corrupt(
                format!("record length {len} is invalid (must be 1..=65535)"),
                looks_torn,
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
                end == remaining.len() || in_last_write(pos + end),
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

/// Where the first whole, intact record in `data` starts, among the offsets below `before`: its
/// length within 1..=[`MAX_RECORD_BYTES`], its bytes inside `data`, its CRC-32C matching. Finds a
/// record boundary without scanning from the start of the file. An offset that is not a
/// boundary passes only by chance: its length needs two zero high bytes, which in the history's
/// text notes only the frame headers hold, and then its CRC-32C must match (one in 2^32).
pub fn first_intact_frame(data: &[u8], before: usize) -> Option<usize> {
    (0..before.min(data.len())).find(|&at| {
        let Some(header) = data.get(at..at + FRAME_HEADER_BYTES) else {
            return false;
        };
        let len = u32::from_be_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_be_bytes(header[4..8].try_into().expect("4 bytes"));
        (1..=MAX_RECORD_BYTES).contains(&len)
            && data
                .get(at + FRAME_HEADER_BYTES..at + FRAME_HEADER_BYTES + len)
                .is_some_and(|payload| crc32c::crc32c(payload) == crc)
    })
}

/// One step of [`AppendedFrames`]: the next record, or the end of the records and how they
/// ended (as [`scan_frames`] says it).
pub enum Step<'a> {
    Frame(Frame<'a>),
    End(Option<FrameStop>),
}

/// The records of a file only ever appended to ([`Tail::Appended`]: the checkpoint history),
/// read from `reader` a chunk at a time, so that memory stays bounded however long the file
/// grows (the history grows by a note per checkpoint, some 6 GB a year at one a second). A
/// record cut by a chunk's end is carried into the next read. Each record, and where and how
/// the records end, is what [`scan_frames`] with [`Tail::Appended`] finds in the whole file:
/// whether a damaged record is torn or corrupt depends on what follows it (an intact record
/// anywhere after it, the end of the file), and that is read on from the damage to find out.
pub struct AppendedFrames<R> {
    reader: R,
    chunk_bytes: usize,
    /// Bytes read and not yet consumed are `buf[start..end]`; the buffer is reused, and grows
    /// only when a read needs more room than it had.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The file offset of `buf[start]`.
    offset: u64,
    eof: bool,
    ended: bool,
}

impl<R: std::io::Read> AppendedFrames<R> {
    /// Reads records from `reader`, whose first byte is at file `offset` (a record boundary),
    /// `chunk_bytes` at a time. The buffer holds at most about two chunks and one record.
    pub fn new(reader: R, offset: u64, chunk_bytes: usize) -> AppendedFrames<R> {
        AppendedFrames {
            reader,
            chunk_bytes: chunk_bytes.max(1),
            buf: Vec::new(),
            start: 0,
            end: 0,
            offset,
            eof: false,
            ended: false,
        }
    }

    /// The next record, or the end of the records. After the end, the end again, with no stop.
    pub fn next_frame(&mut self) -> std::io::Result<Step<'_>> {
        if self.ended {
            return Ok(Step::End(None));
        }
        self.fill(FRAME_HEADER_BYTES)?;
        let left = self.left();
        if left == 0 {
            self.ended = true;
            return Ok(Step::End(None));
        }
        if left < FRAME_HEADER_BYTES {
            let reason = format!("{left} stray bytes after the last record");
            return self.damaged(reason, true, None).map(Step::End);
        }
        let header = &self.buf[self.start..self.start + FRAME_HEADER_BYTES];
        let len = u32::from_be_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_be_bytes(header[4..8].try_into().expect("4 bytes"));
        if len == 0 || len > MAX_RECORD_BYTES {
            let reason = format!("record length {len} is invalid (must be 1..=65535)");
            // As in `scan_frames`: a length running past the end of the file is the last
            // record's, torn. Past the longest record, only reading on tells.
            let past = (len > 0).then(|| self.offset + (FRAME_HEADER_BYTES + len) as u64);
            return self.damaged(reason, false, past).map(Step::End);
        }
        let end = FRAME_HEADER_BYTES + len;
        // A byte more than the record, if there is one: whether the record ends the file.
        self.fill(end + 1)?;
        let left = self.left();
        if end > left {
            let reason = format!(
                "record of {len} bytes runs past the end of the file ({} bytes left)",
                left - FRAME_HEADER_BYTES
            );
            return self.damaged(reason, true, None).map(Step::End);
        }
        let payload = self.start + FRAME_HEADER_BYTES..self.start + end;
        if crc32c::crc32c(&self.buf[payload.clone()]) != crc {
            let reason = "CRC-32C mismatch (the record's bytes were altered)".to_string();
            return self.damaged(reason, end == left, None).map(Step::End);
        }
        let offset = self.offset;
        self.consume(end);
        Ok(Step::Frame(Frame {
            offset,
            payload: &self.buf[payload],
        }))
    }

    fn left(&self) -> usize {
        self.end - self.start
    }

    fn consume(&mut self, bytes: usize) {
        self.start += bytes;
        self.offset += bytes as u64;
    }

    /// Reads until `bytes` are buffered or the file ends. What is left is moved to the front
    /// first, so the buffer holds at most `bytes` and a chunk.
    fn fill(&mut self, bytes: usize) -> std::io::Result<()> {
        if self.left() >= bytes || self.eof {
            return Ok(());
        }
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        while self.end < bytes && !self.eof {
            let room = self.end + self.chunk_bytes;
            if self.buf.len() < room {
                self.buf.resize(room, 0);
            }
            match self.reader.read(&mut self.buf[self.end..room]) {
                Ok(0) => self.eof = true,
                Ok(read) => self.end += read,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// How the damaged record at the current offset ends the records, by the rule of
    /// `scan_frames` for an appended file: torn when it looks torn (`looks_torn`, or its length
    /// reaching `past`, when given, past the end of the file) or when no intact record follows
    /// it, corrupt otherwise. (Only zeros after it is a case of the second: zeros hold no
    /// record.)
    fn damaged(
        &mut self,
        reason: String,
        looks_torn: bool,
        past: Option<u64>,
    ) -> std::io::Result<Option<FrameStop>> {
        self.ended = true;
        let offset = self.offset;
        let torn = looks_torn
            || !self.intact_record_follows()?
            || match past {
                Some(end) => !self.reaches(end)?,
                None => false,
            };
        Ok(Some(match torn {
            true => FrameStop::TornTail { offset, reason },
            false => FrameStop::Corrupt { offset, reason },
        }))
    }

    /// Whether a whole, intact record starts anywhere after the current offset (the search
    /// [`first_intact_frame`] makes in the whole file), reading on a window at a time: an
    /// offset is decided once the window holds the longest record that can start there.
    fn intact_record_follows(&mut self) -> std::io::Result<bool> {
        let longest = FRAME_HEADER_BYTES + MAX_RECORD_BYTES;
        self.consume(1);
        loop {
            self.fill(longest + self.chunk_bytes)?;
            let window = &self.buf[self.start..self.end];
            let decided = match self.eof {
                true => window.len(),
                false => window.len() - longest,
            };
            if first_intact_frame(window, decided).is_some() {
                return Ok(true);
            }
            if self.eof {
                return Ok(false);
            }
            self.consume(decided);
        }
    }

    /// Whether the file reaches offset `end`, reading on (and dropping what is read) as far as
    /// that.
    fn reaches(&mut self, end: u64) -> std::io::Result<bool> {
        loop {
            if self.offset + self.left() as u64 >= end {
                return Ok(true);
            }
            if self.eof {
                return Ok(false);
            }
            self.consume(self.left());
            self.fill(1)?;
        }
    }
}

/// Where a record starts in the last `step` bytes of an appended file of `len` bytes, or in the
/// step before it, and so on: the first offset from which reading the file finds the records a
/// read from its start would find from there (`read_range(from, to)` gives the bytes between two
/// offsets). 0 when no step holds the start of an intact record. The step, and as far after it
/// as a record starting in it can reach, is all that is held at a time.
pub fn boundary_near_end(
    len: u64,
    step: u64,
    mut read_range: impl FnMut(u64, u64) -> std::io::Result<Vec<u8>>,
) -> std::io::Result<u64> {
    let mut start = len;
    loop {
        start = start.saturating_sub(step);
        if start == 0 {
            return Ok(0);
        }
        let reach = start + step + (FRAME_HEADER_BYTES + MAX_RECORD_BYTES) as u64;
        let window = read_range(start, reach.min(len))?;
        if let Some(at) = first_intact_frame(&window, step as usize) {
            return Ok(start + at as u64);
        }
    }
}

/// Whether a [`FrameStop::TornTail`] at entry `entry_index` is corruption after all: when the
/// largest signed checkpoint (`checkpoint_size`) covers that entry, its record was durable before
/// the checkpoint was signed, so no crash can have torn it, wherever it is in the file. Then the
/// reason to report (the scan's `reason`, and why it is not a tear). Open and verify both apply
/// it, so they name the same damage the same way.
pub fn covered_damage(
    checkpoint_size: Option<u64>,
    entry_index: u64,
    reason: &str,
) -> Option<String> {
    let covered = checkpoint_size.filter(|&size| size > entry_index)?;
    Some(format!(
        "{reason}; the last signed checkpoint covers {covered} entries, so this record was durable before it was signed and cannot have been torn by a crash"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records filling exactly two blocks (the file's length is block-aligned): 29 records of
    /// 8 + 265 bytes, then one of whatever is left; and where record 28 (in the last block) is.
    fn aligned_records() -> (Vec<u8>, usize) {
        let mut data = Vec::new();
        let mut record_28 = 0;
        for i in 0..29 {
            if i == 28 {
                record_28 = data.len();
            }
            push_frame(&mut data, &[b'a' + (i % 26) as u8; 265]);
        }
        let left = 2 * PAD_BLOCK_BYTES - data.len() - FRAME_HEADER_BYTES;
        push_frame(&mut data, &vec![b'z'; left]);
        assert_eq!(data.len(), 2 * PAD_BLOCK_BYTES);
        assert!(
            record_28 > PAD_BLOCK_BYTES,
            "record 28 is in the last block"
        );
        (data, record_28)
    }

    /// [`aligned_records`] with a byte of record 28's payload flipped.
    fn aligned_with_damage_in_the_last_block() -> (Vec<u8>, u64) {
        let (mut data, damaged) = aligned_records();
        data[damaged + FRAME_HEADER_BYTES + 3] ^= 0x20;
        (data, damaged as u64)
    }

    #[test]
    fn a_length_above_the_limit_in_a_direct_write_is_damage_not_a_tear() {
        // A lost sector zeroes a length: in the block the last write rewrote, a tear.
        let (mut data, at) = aligned_records();
        data[at..at + 4].fill(0);
        assert!(
            matches!(stop(&data, Tail::Active), Some(FrameStop::TornTail { offset, ref reason }) if offset == at as u64 && reason.contains("is invalid"))
        );
        // A crash cannot set a length's high bytes (a real one's are zero, and a torn block
        // holds new bytes or zeros): a length above the limit is damage, even when it would
        // run past the end of the file.
        for (byte, value) in [(0, 0x80), (1, 0x01), (1, 0x7f)] {
            let (mut data, at) = aligned_records();
            data[at + byte] = value;
            assert!(
                matches!(stop(&data, Tail::Active), Some(FrameStop::Corrupt { offset, ref reason }) if offset == at as u64 && reason.contains("is invalid")),
                "high byte {byte} set to {value:#x}"
            );
        }
        // A file only appended through the page cache keeps the old rule: a length running
        // past the end of the data is the last record, torn.
        let (mut data, _) = aligned_records();
        let last = data.len() - (2 * PAD_BLOCK_BYTES - 29 * (FRAME_HEADER_BYTES + 265));
        data[last] = 0x01;
        assert!(
            matches!(stop(&data, Tail::Appended), Some(FrameStop::TornTail { offset, ref reason }) if offset == last as u64 && reason.contains("is invalid"))
        );
    }

    fn stop(data: &[u8], tail: Tail) -> Option<FrameStop> {
        scan_frames::<()>(data, tail, |_| Ok(())).unwrap()
    }

    #[test]
    fn the_rewritten_block_rule_is_for_the_active_segment_only() {
        let (data, damaged) = aligned_with_damage_in_the_last_block();
        // The active segment: direct I/O rewrites its last block, so a crash can tear it there.
        assert!(
            matches!(stop(&data, Tail::Active), Some(FrameStop::TornTail { offset, ref reason }) if offset == damaged && reason.contains("CRC-32C mismatch"))
        );
        // The checkpoint history is only appended: damage with a valid record after it is
        // corruption, whatever the file's length.
        assert!(
            matches!(stop(&data, Tail::Appended), Some(FrameStop::Corrupt { offset, .. }) if offset == damaged)
        );
        assert!(
            matches!(stop(&data, Tail::Sealed), Some(FrameStop::Corrupt { offset, .. }) if offset == damaged)
        );
    }

    #[test]
    fn whole_blocks_of_zeros_after_the_records_are_padding_of_the_active_segment() {
        // Records in the first block, then the zeros the segment was grown by.
        let mut data = Vec::new();
        push_frame(&mut data, b"one record");
        push_frame(&mut data, b"two records");
        let records = data.len() as u64;
        data.resize(64 * PAD_BLOCK_BYTES, 0);
        assert!(
            matches!(stop(&data, Tail::Active), Some(FrameStop::Padding { offset }) if offset == records)
        );
        // Records ending exactly on a block boundary, then zero blocks.
        let (mut aligned, _) = aligned_with_damage_in_the_last_block();
        let damaged = stop(&aligned, Tail::Active);
        aligned.resize(aligned.len() + 8 * PAD_BLOCK_BYTES, 0);
        // The zeros change nothing: the damaged record is in the last block before them.
        assert_eq!(stop(&aligned, Tail::Active), damaged);
        // Nothing but zeros: an empty segment.
        assert_eq!(
            stop(&vec![0; 4 * PAD_BLOCK_BYTES], Tail::Active),
            Some(FrameStop::Padding { offset: 0 })
        );
        // Elsewhere, zero blocks are a torn tail (appended) or corruption (sealed), as before.
        assert!(
            matches!(stop(&data, Tail::Appended), Some(FrameStop::TornTail { offset, .. }) if offset == records)
        );
        assert!(matches!(
            stop(&data, Tail::Sealed),
            Some(FrameStop::Corrupt { .. })
        ));
    }

    #[test]
    fn zeros_past_a_growth_step_are_padding_too() {
        // What a crash between growing the segment and writing a large batch leaves.
        let mut data = Vec::new();
        push_frame(&mut data, b"one record");
        let records = data.len() as u64;
        data.resize(GROW_BYTES as usize + 2 * PAD_BLOCK_BYTES, 0);
        assert!(
            matches!(stop(&data, Tail::Active), Some(FrameStop::Padding { offset }) if offset == records)
        );
    }

    #[test]
    fn a_last_record_ending_in_zeros_is_kept() {
        // Its length says where it ends: the zeros in it are not padding.
        let mut data = Vec::new();
        push_frame(&mut data, b"one record");
        let mut payload = b"ends in zeros".to_vec();
        payload.resize(3 * PAD_BLOCK_BYTES, 0);
        push_frame(&mut data, &payload);
        let records = data.len() as u64;
        data.resize(
            data.len().next_multiple_of(PAD_BLOCK_BYTES) + PAD_BLOCK_BYTES,
            0,
        );
        let mut seen = 0;
        let stopped = scan_frames::<()>(&data, Tail::Active, |_| {
            seen += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, 2);
        assert_eq!(stopped, Some(FrameStop::Padding { offset: records }));
    }

    /// Records of 1,000 bytes filling more than one write of records, ending off a block
    /// boundary (an unpadded file: a segment written through the page cache), and where each
    /// record starts.
    fn unpadded_records() -> (Vec<u8>, Vec<usize>) {
        let mut data = Vec::new();
        let mut starts = Vec::new();
        for i in 0..400 {
            starts.push(data.len());
            push_frame(&mut data, &[b'a' + (i % 26) as u8; 1000]);
        }
        assert!(data.len() > MAX_WRITE_BYTES + PAD_BLOCK_BYTES);
        assert!(!data.len().is_multiple_of(PAD_BLOCK_BYTES));
        (data, starts)
    }

    #[test]
    fn a_page_lost_in_the_last_write_through_the_page_cache_is_a_tear() {
        // Writeback stored a later page of the last write and not an earlier one, which reads as
        // zeros: the records it touches are torn, with valid records after them.
        let (mut data, starts) = unpadded_records();
        let lost = (data.len() - 10 * PAD_BLOCK_BYTES).next_multiple_of(PAD_BLOCK_BYTES);
        data[lost..lost + PAD_BLOCK_BYTES].fill(0);
        let first_damaged = starts.iter().rposition(|&at| at <= lost).unwrap();
        assert!(
            matches!(stop(&data, Tail::Active), Some(FrameStop::TornTail { offset, .. }) if offset == starts[first_damaged] as u64)
        );
        // A lost page starting with a record's header: its length reads as 0.
        let (mut data, starts) = unpadded_records();
        let page = starts[256];
        assert!(page.is_multiple_of(PAD_BLOCK_BYTES) && page > data.len() - MAX_WRITE_BYTES);
        data[page..page + PAD_BLOCK_BYTES].fill(0);
        assert!(
            matches!(stop(&data, Tail::Active), Some(FrameStop::TornTail { offset, ref reason }) if offset == page as u64 && reason.contains("length 0"))
        );
        // The same damage before the last write was synced before anything after it was
        // written: corruption, as in a sealed segment or the history.
        let (mut data, starts) = unpadded_records();
        let early = starts[10].next_multiple_of(PAD_BLOCK_BYTES);
        assert!(early + PAD_BLOCK_BYTES < data.len() - MAX_WRITE_BYTES);
        data[early..early + PAD_BLOCK_BYTES].fill(0);
        for tail in [Tail::Active, Tail::Appended, Tail::Sealed] {
            assert!(
                matches!(stop(&data, tail), Some(FrameStop::Corrupt { .. })),
                "{tail:?}"
            );
        }
    }

    #[test]
    fn a_damaged_last_note_of_the_history_is_a_tear_whatever_its_damage() {
        let mut data = Vec::new();
        push_frame(&mut data, b"first note");
        let last = data.len();
        push_frame(&mut data, &[b'n'; 300]);
        // Its first page lost (zeros over its header), the rest of it kept: nothing intact
        // follows the damage, so it is the last note, torn.
        let mut torn = data.clone();
        torn[last..last + 20].fill(0);
        assert!(
            matches!(stop(&torn, Tail::Appended), Some(FrameStop::TornTail { offset, .. }) if offset == last as u64)
        );
        // The same damage to the first note, with the second intact after it, is corruption.
        let mut damaged = data.clone();
        damaged[..12].fill(0);
        assert!(matches!(
            stop(&damaged, Tail::Appended),
            Some(FrameStop::Corrupt { offset: 0, .. })
        ));
    }

    #[test]
    fn an_intact_frame_is_found_from_anywhere_before_it() {
        let mut data = b"the end of a note\n".to_vec();
        let first = data.len();
        push_frame(&mut data, b"a note");
        let second = data.len();
        push_frame(&mut data, b"another note");
        assert_eq!(first_intact_frame(&data, data.len()), Some(first));
        assert_eq!(first_intact_frame(&data, first), None);
        assert_eq!(
            first_intact_frame(&data[first + 1..], data.len()),
            Some(second - first - 1)
        );
        // Cut short or damaged: not intact.
        assert_eq!(
            first_intact_frame(&data[..data.len() - 1], data.len()),
            Some(first)
        );
        assert_eq!(
            first_intact_frame(&data[second..data.len() - 1], data.len()),
            None
        );
        data[second + FRAME_HEADER_BYTES] ^= 1;
        assert_eq!(first_intact_frame(&data[first + 1..], data.len()), None);
    }

    /// Every record and the stop `AppendedFrames` finds reading `data` `chunk_bytes` at a time.
    fn streamed(data: &[u8], chunk_bytes: usize) -> (Vec<(u64, Vec<u8>)>, Option<FrameStop>) {
        let mut frames = AppendedFrames::new(data, 0, chunk_bytes);
        let mut found = Vec::new();
        loop {
            match frames.next_frame().unwrap() {
                Step::Frame(frame) => found.push((frame.offset, frame.payload.to_vec())),
                Step::End(stop) => return (found, stop),
            }
        }
    }

    /// What `scan_frames` finds in the whole of `data`, as an appended file.
    fn scanned(data: &[u8]) -> (Vec<(u64, Vec<u8>)>, Option<FrameStop>) {
        let mut found = Vec::new();
        let stop = scan_frames::<()>(data, Tail::Appended, |frame| {
            found.push((frame.offset, frame.payload.to_vec()));
            Ok(())
        })
        .unwrap();
        (found, stop)
    }

    #[test]
    fn reading_an_appended_file_in_chunks_decides_as_scanning_it_whole() {
        let mut notes = Vec::new();
        for i in 0..12 {
            push_frame(
                &mut notes,
                format!("note {i}\n{}\n", "x".repeat(i * 7)).as_bytes(),
            );
        }
        let mut cases = vec![notes.clone()];
        // Cut at every length, each byte changed, runs of zeros, zeros and stray bytes after.
        for len in 0..notes.len() {
            cases.push(notes[..len].to_vec());
        }
        for at in 0..notes.len() {
            let mut damaged = notes.clone();
            damaged[at] ^= 0x41;
            cases.push(damaged);
            let mut zeroed = notes.clone();
            zeroed[at..(at + 13).min(notes.len())].fill(0);
            cases.push(zeroed);
        }
        for tail in [vec![0; 9], vec![0; 3], b"stray".to_vec()] {
            let mut longer = notes.clone();
            longer.extend_from_slice(&tail);
            cases.push(longer);
        }
        for case in &cases {
            let whole = scanned(case);
            for chunk_bytes in [1, 3, 8, 64, 4096] {
                assert_eq!(
                    streamed(case, chunk_bytes),
                    whole,
                    "chunks of {chunk_bytes}"
                );
            }
        }

        // Records longer than a chunk, and lengths above the limit, within the file's reach or
        // past its end: reading on from the damage decides.
        let mut long = Vec::new();
        let mut starts = Vec::new();
        for i in 0..40 {
            starts.push(long.len());
            push_frame(&mut long, &[b'a' + i as u8 % 26; 3000]);
        }
        starts.push(long.len());
        push_frame(&mut long, &vec![b'z'; MAX_RECORD_BYTES]);
        let mut long_cases = vec![long.clone()];
        // Records near the start (a longest record and more after them) and the last ones.
        for &at in starts.iter().step_by(8).chain(&starts[38..]) {
            for length in [0x0001_0000u32, 0x0001_2000, 0x7fff_ffff, 0] {
                let mut damaged = long.clone();
                damaged[at..at + 4].copy_from_slice(&length.to_be_bytes());
                long_cases.push(damaged);
            }
            let mut damaged = long.clone();
            damaged[at + FRAME_HEADER_BYTES + 100] ^= 1;
            long_cases.push(damaged);
        }
        let stops: Vec<_> = long_cases.iter().map(|case| scanned(case).1).collect();
        assert!(stops
            .iter()
            .any(|stop| matches!(stop, Some(FrameStop::Corrupt { .. }))));
        assert!(stops
            .iter()
            .any(|stop| matches!(stop, Some(FrameStop::TornTail { .. }))));
        for case in &long_cases {
            let whole = scanned(case);
            for chunk_bytes in [4096, 1 << 20] {
                assert_eq!(
                    streamed(case, chunk_bytes),
                    whole,
                    "chunks of {chunk_bytes}"
                );
            }
        }
    }

    #[test]
    fn a_boundary_near_the_end_is_where_a_record_starts() {
        let mut data = Vec::new();
        let mut starts = Vec::new();
        for i in 0..400 {
            starts.push(data.len() as u64);
            push_frame(
                &mut data,
                format!("note {i}\n{}\n", "y".repeat(200)).as_bytes(),
            );
        }
        let read = |from: u64, to: u64| Ok(data[from as usize..to as usize].to_vec());
        let from = boundary_near_end(data.len() as u64, 4096, read).unwrap();
        assert!(starts.contains(&from) && from >= data.len() as u64 - 4096);
        // Reading on from there finds the last records a whole scan finds.
        let (tail, stop) = streamed(&data[from as usize..], 1 << 20);
        assert_eq!((tail.last().unwrap().1.clone(), stop), {
            let (all, stop) = scanned(&data);
            (all.last().unwrap().1.clone(), stop)
        });
        // A short file: from its start.
        assert_eq!(boundary_near_end(100, 4096, read).unwrap(), 0);
    }

    #[test]
    fn padding_is_for_the_active_segment_only() {
        let mut data = Vec::new();
        push_frame(&mut data, b"one record");
        let records = data.len() as u64;
        data.resize(PAD_BLOCK_BYTES, 0);
        assert!(
            matches!(stop(&data, Tail::Active), Some(FrameStop::Padding { offset }) if offset == records)
        );
        // An appended file ending in zeros was torn by a crash (it is never padded).
        assert!(
            matches!(stop(&data, Tail::Appended), Some(FrameStop::TornTail { offset, .. }) if offset == records)
        );
        assert!(matches!(
            stop(&data, Tail::Sealed),
            Some(FrameStop::Corrupt { .. })
        ));
    }
}
