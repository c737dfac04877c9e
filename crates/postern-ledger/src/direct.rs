//! Direct, synchronous writes to the active segment (`O_DIRECT | O_DSYNC`).
//!
//! A group commit's cost is mostly its sync. Written this way, a batch reaches stable storage in
//! the `pwrite` itself, without the page cache and without a separate `fdatasync`: on this
//! project's build machine ~30 % less time and ~25 % less CPU per commit than a buffered write
//! followed by `fdatasync` (`bench/sync_cost.py`; docs/AUDIT.md, "Direct I/O").
//!
//! Direct I/O moves whole blocks from a block-aligned buffer to a block-aligned offset. Each
//! batch therefore rewrites the segment's last partial block (its bytes are kept here, as
//! `tail`) with the new frames after it, and pads the final block with zeros. Those zeros are
//! what [`FrameStop::Padding`](crate::frame::FrameStop::Padding) recognises when the segment is
//! read back; the ledger trims them when it rolls to a new segment and when it closes.
//!
//! Rewriting the last block in place also rewrites the acknowledged records in it, with the
//! same bytes: a device that writes each sector atomically (what every disk promises) leaves them
//! intact whatever happens; a crash mid-write can only tear the new records, which start-up then
//! discards as a torn tail.
//!
//! The segment grows ahead of its records, [`GROW_BYTES`] at a time: before a batch would write
//! past the bytes already written, zeros are written (durably) up to the next `GROW_BYTES`
//! boundary. Every batch then overwrites blocks that are allocated and inside the file's durable
//! size, so its synchronous write changes no metadata and needs no journal commit: on this
//! project's VM ~18 % less time and ~19 % less CPU per commit than a write that grows the file
//! (`bench/sync_cost.py`, "O_DIRECT, prezeroed"). PostgreSQL zero-fills its WAL segments ahead
//! of use for the same reason. An overwrite can be torn anywhere in its range, not only in its
//! last block, so records go out in pieces of at most [`MAX_WRITE_BYTES`], each durable before
//! the next: start-up forgives damage within that distance of the end of the segment's data
//! (`frame.rs`), and only there. Zeros after the records are padding to start-up and readers;
//! a roll and a clean close cut them off.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use crate::error::{io_error, LedgerError};
use crate::frame::{GROW_BYTES, MAX_WRITE_BYTES, PAD_BLOCK_BYTES};

pub(crate) struct DirectSegment {
    file: File,
    /// The file's bytes before this offset are written and durable (records, then zeros): a
    /// write that ends here or before changes no metadata.
    written_end: u64,
    /// The segment's bytes from its last block boundary to its end: what the next write puts
    /// in front of its frames.
    tail: Vec<u8>,
    /// What `tail` becomes once the batch just written is committed ([`DirectSegment::commit`]).
    next_tail: Vec<u8>,
    /// Holds the block-aligned window that is written (a `Vec` has no alignment of its own).
    staging: Vec<u8>,
    /// Zeros, block-aligned within, for growing the segment (made on the first growth).
    zeros: Vec<u8>,
}

impl DirectSegment {
    /// Opens the segment at `path`, whose committed bytes end with `tail` (its bytes after the
    /// last block boundary), for direct synchronous writes. `Ok(None)` when the filesystem
    /// refuses direct I/O (`EINVAL`, e.g. tmpfs before Linux 6.6): the caller writes through
    /// the page cache and syncs instead.
    pub(crate) fn open(path: &Path, tail: &[u8]) -> Result<Option<DirectSegment>, LedgerError> {
        debug_assert!(tail.len() < PAD_BLOCK_BYTES);
        match OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT | libc::O_DSYNC)
            .open(path)
        {
            Ok(file) => Ok(Some(DirectSegment {
                written_end: file.metadata().map_err(io_error(path))?.len(),
                file,
                tail: tail.to_vec(),
                next_tail: Vec::new(),
                staging: Vec::new(),
                zeros: Vec::new(),
            })),
            Err(error) if error.raw_os_error() == Some(libc::EINVAL) => Ok(None),
            Err(error) => Err(io_error(path)(error)),
        }
    }

    /// Writes `frames` at `end`, the segment's committed length, and returns once they are on
    /// stable storage. The kept tail only moves on with [`DirectSegment::commit`], once the whole
    /// batch has succeeded: a batch that fails after this write (or in it) is redone from the
    /// same blocks.
    pub(crate) fn write(&mut self, frames: &[u8], end: u64) -> io::Result<()> {
        let block = PAD_BLOCK_BYTES as u64;
        if end % block != self.tail.len() as u64 {
            return Err(io::Error::other(format!(
                "direct write at offset {end} does not follow the {}-byte tail kept for it",
                self.tail.len()
            )));
        }
        let start = end - self.tail.len() as u64;
        let used = self.tail.len() + frames.len();
        let padded = used.next_multiple_of(PAD_BLOCK_BYTES);
        let window_end = start + padded as u64;
        if window_end > self.written_end {
            self.grow(window_end.next_multiple_of(GROW_BYTES))?;
        }
        if self.staging.len() < padded + PAD_BLOCK_BYTES {
            self.staging.resize(padded + PAD_BLOCK_BYTES, 0);
        }
        let align = self.staging.as_ptr().align_offset(PAD_BLOCK_BYTES);
        let window = &mut self.staging[align..align + padded];
        window[..self.tail.len()].copy_from_slice(&self.tail);
        window[self.tail.len()..used].copy_from_slice(frames);
        window[used..].fill(0);
        // In pieces, each durable before the next starts: a crash tears at most the last one,
        // which is what start-up forgives (`frame.rs`, `MAX_WRITE_BYTES`).
        for (i, piece) in window.chunks(MAX_WRITE_BYTES).enumerate() {
            self.file
                .write_all_at(piece, start + (i * MAX_WRITE_BYTES) as u64)?;
        }
        let new_tail = used - used % PAD_BLOCK_BYTES;
        self.next_tail.clear();
        self.next_tail.extend_from_slice(&window[new_tail..used]);
        Ok(())
    }

    /// Writes zeros from the end of what is written (rounded up to a block: the block it ends in
    /// holds records, and the next write of records covers it) to `to`, durably. A crash during
    /// it leaves zeros or the old size, never damage.
    fn grow(&mut self, to: u64) -> io::Result<()> {
        let from = self.written_end.next_multiple_of(PAD_BLOCK_BYTES as u64);
        if self.zeros.is_empty() {
            self.zeros = vec![0; MAX_WRITE_BYTES + PAD_BLOCK_BYTES];
        }
        let align = self.zeros.as_ptr().align_offset(PAD_BLOCK_BYTES);
        let zeros = &self.zeros[align..align + MAX_WRITE_BYTES];
        let mut at = from;
        while at < to {
            let len = (to - at).min(MAX_WRITE_BYTES as u64) as usize;
            self.file.write_all_at(&zeros[..len], at)?;
            at += len as u64;
        }
        self.written_end = to;
        Ok(())
    }

    /// The batch last written is committed: its last partial block is the new tail.
    pub(crate) fn commit(&mut self) {
        std::mem::swap(&mut self.tail, &mut self.next_tail);
    }

    /// The file was cut to `len` (a failed batch undone): bytes past it are no longer written.
    pub(crate) fn truncated(&mut self, len: u64) {
        self.written_end = self.written_end.min(len);
    }
}
