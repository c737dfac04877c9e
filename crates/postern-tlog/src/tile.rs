//! C2SP tlog-tiles math: tile coordinates, paths and entry bundles.
//!
//! A hash tile at tile level `L` holds the stored hashes of tree level `8·L`; tile `N` holds
//! the hashes `N·256 + i` for `i < W`. A full tile has `W = 256`; the rightmost tile of a level
//! may be partial (`1 ≤ W ≤ 255`) and is named with a `.p/<W>` suffix. Entry bundles use the
//! same coordinates as level-0 tiles and hold each entry as a big-endian `u16` length and its
//! bytes.

use crate::hash::{Hash, HASH_SIZE};
use crate::tree::{stored_hash_index, HashReader, TreeError};

/// Tree levels per tile.
pub const TILE_HEIGHT: u8 = 8;
/// Hashes (or entries) in a full tile.
pub const TILE_WIDTH: u64 = 256;
/// Largest entry an entry bundle can carry (its length is a `u16`).
pub const MAX_ENTRY_BYTES: usize = u16::MAX as usize;

/// Errors in tile paths and entry bundles.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TileError {
    #[error("not a tlog-tiles path: {0:?}")]
    BadPath(String),
    #[error("tile width {0} is invalid: must be 1..=256")]
    BadWidth(u64),
    #[error("entry of {0} bytes does not fit an entry bundle (max 65535)")]
    EntryTooLarge(usize),
    #[error("entry bundle is truncated at byte {0}")]
    TruncatedBundle(usize),
}

/// A hash tile: tile level (0..=7), index within the level, width (1..=256).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HashTile {
    pub level: u8,
    pub n: u64,
    pub width: u16,
}

/// An entry bundle: index (same as the level-0 tile) and width (1..=256).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EntryBundle {
    pub n: u64,
    pub width: u16,
}

/// Any resource under `tile/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TileResource {
    Hashes(HashTile),
    Entries(EntryBundle),
}

/// `N` as zero-padded 3-digit path elements, all but the last prefixed with `x`:
/// 1234067 → `x001/x234/067`.
pub fn encode_tile_index(n: u64) -> String {
    let mut groups = vec![n % 1000];
    let mut rest = n / 1000;
    while rest > 0 {
        groups.push(rest % 1000);
        rest /= 1000;
    }
    let mut out = String::new();
    for (i, group) in groups.iter().rev().enumerate() {
        if i > 0 {
            out.push('/');
        }
        if i + 1 < groups.len() {
            out.push('x');
        }
        out.push_str(&format!("{group:03}"));
    }
    out
}

fn width_suffix(width: u16) -> String {
    if u64::from(width) == TILE_WIDTH {
        String::new()
    } else {
        format!(".p/{width}")
    }
}

impl HashTile {
    /// `tile/<L>/<N>[.p/<W>]`.
    pub fn path(&self) -> String {
        format!(
            "tile/{}/{}{}",
            self.level,
            encode_tile_index(self.n),
            width_suffix(self.width)
        )
    }

    /// The tree level whose hashes this tile holds.
    pub fn tree_level(&self) -> u8 {
        self.level * TILE_HEIGHT
    }

    /// Stored-hash indexes of the hashes in this tile, left to right.
    pub fn stored_hash_indexes(&self) -> impl Iterator<Item = u64> + '_ {
        (0..u64::from(self.width))
            .map(|i| stored_hash_index(self.tree_level(), self.n * TILE_WIDTH + i))
    }

    /// The tile's bytes (concatenated hashes) from stored hashes.
    pub fn read<R: HashReader + ?Sized>(&self, reader: &R) -> Result<Vec<u8>, TreeError> {
        let mut out = Vec::with_capacity(usize::from(self.width) * HASH_SIZE);
        for index in self.stored_hash_indexes() {
            out.extend_from_slice(&reader.read_hash(index)?.0);
        }
        Ok(out)
    }
}

impl EntryBundle {
    /// `tile/entries/<N>[.p/<W>]`.
    pub fn path(&self) -> String {
        format!(
            "tile/entries/{}{}",
            encode_tile_index(self.n),
            width_suffix(self.width)
        )
    }

    /// Index of the first entry in the bundle.
    pub fn first_entry_index(&self) -> u64 {
        self.n * TILE_WIDTH
    }
}

/// Width of tile `n` at tile `level` in a tree of `tree_size` leaves: 256 if full, the partial
/// width if it is the rightmost partial tile, `None` if the tile does not exist at that size.
pub fn tile_width(level: u8, n: u64, tree_size: u64) -> Option<u16> {
    let level_shift = u32::from(level) * u32::from(TILE_HEIGHT);
    if level_shift >= 64 {
        return None;
    }
    let hashes_at_level = tree_size >> level_shift;
    let start = n.checked_mul(TILE_WIDTH)?;
    if hashes_at_level <= start {
        return None;
    }
    let width = (hashes_at_level - start).min(TILE_WIDTH);
    Some(width as u16)
}

/// Parses a path relative to the log prefix: `tile/<L>/<N>[.p/<W>]` or
/// `tile/entries/<N>[.p/<W>]`. Rejects any non-canonical spelling.
pub fn parse_tile_path(path: &str) -> Result<TileResource, TileError> {
    let bad = || TileError::BadPath(path.to_string());
    let rest = path.strip_prefix("tile/").ok_or_else(bad)?;
    let (kind, rest) = rest.split_once('/').ok_or_else(bad)?;
    let (index_part, width) = match rest.split_once(".p/") {
        Some((index_part, width_text)) => {
            let width = parse_decimal(width_text).ok_or_else(bad)?;
            if !(1..TILE_WIDTH).contains(&width) {
                return Err(bad());
            }
            (index_part, width as u16)
        }
        None => (rest, TILE_WIDTH as u16),
    };
    let n = parse_tile_index(index_part).ok_or_else(bad)?;
    if kind == "entries" {
        return Ok(TileResource::Entries(EntryBundle { n, width }));
    }
    let level = parse_decimal(kind).ok_or_else(bad)?;
    if level > 63 || level * u64::from(TILE_HEIGHT) > 63 {
        return Err(bad());
    }
    Ok(TileResource::Hashes(HashTile {
        level: level as u8,
        n,
        width,
    }))
}

/// ASCII decimal without leading zeroes (except "0").
fn parse_decimal(text: &str) -> Option<u64> {
    if text.is_empty()
        || !text.bytes().all(|b| b.is_ascii_digit())
        || (text.len() > 1 && text.starts_with('0'))
    {
        return None;
    }
    text.parse().ok()
}

fn parse_tile_index(text: &str) -> Option<u64> {
    let groups: Vec<&str> = text.split('/').collect();
    let mut n: u64 = 0;
    for (i, group) in groups.iter().enumerate() {
        let digits = if i + 1 < groups.len() {
            group.strip_prefix('x')?
        } else {
            group
        };
        if digits.len() != 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        n = n.checked_mul(1000)?.checked_add(digits.parse().ok()?)?;
    }
    // Canonical: the leading group is non-zero unless it is the only group.
    if groups.len() > 1 && groups[0] == "x000" {
        return None;
    }
    Some(n)
}

/// Encodes entries as a bundle: each as big-endian `u16` length + bytes.
pub fn encode_entry_bundle<'a>(
    entries: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Vec<u8>, TileError> {
    let mut out = Vec::new();
    for entry in entries {
        append_bundle_entry(&mut out, entry)?;
    }
    Ok(out)
}

/// Appends one entry to a bundle being built.
pub fn append_bundle_entry(bundle: &mut Vec<u8>, entry: &[u8]) -> Result<(), TileError> {
    let len = u16::try_from(entry.len()).map_err(|_| TileError::EntryTooLarge(entry.len()))?;
    bundle.extend_from_slice(&len.to_be_bytes());
    bundle.extend_from_slice(entry);
    Ok(())
}

/// Splits an entry bundle into its entries.
pub fn decode_entry_bundle(bundle: &[u8]) -> Result<Vec<&[u8]>, TileError> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < bundle.len() {
        let header = bundle
            .get(pos..pos + 2)
            .ok_or(TileError::TruncatedBundle(pos))?;
        let len = usize::from(u16::from_be_bytes([header[0], header[1]]));
        let entry = bundle
            .get(pos + 2..pos + 2 + len)
            .ok_or(TileError::TruncatedBundle(pos))?;
        out.push(entry);
        pos += 2 + len;
    }
    Ok(out)
}

/// The stored hash of a tile's `i`-th element, for tools that fetched a tile; `None` when the
/// tile is too short to hold it (an `i` whose offset does not fit a `usize` included).
pub fn tile_hash_at(tile_bytes: &[u8], i: usize) -> Option<Hash> {
    let start = i.checked_mul(HASH_SIZE)?;
    let end = start.checked_add(HASH_SIZE)?;
    tile_bytes.get(start..end).and_then(Hash::from_slice)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_hash_at_reads_each_hash_and_nothing_past_the_tile() {
        let tile: Vec<u8> = (0..2 * HASH_SIZE).map(|b| b as u8).collect();
        assert_eq!(tile_hash_at(&tile, 0), Hash::from_slice(&tile[..HASH_SIZE]));
        assert_eq!(tile_hash_at(&tile, 1), Hash::from_slice(&tile[HASH_SIZE..]));
        assert_eq!(tile_hash_at(&tile, 2), None);
        assert_eq!(tile_hash_at(&tile[..HASH_SIZE + 1], 1), None, "a torn hash");
        // Offsets that overflow: unchecked, `i * 32` panics in debug builds and wraps in
        // release ones, where `(usize::MAX / 32 + 1) * 32` is 0: the tile's first hash.
        for i in [
            usize::MAX,
            usize::MAX / HASH_SIZE,
            usize::MAX / HASH_SIZE + 1,
        ] {
            assert_eq!(tile_hash_at(&tile, i), None, "i = {i}");
        }
    }
}
