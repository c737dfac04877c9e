//! The Merkle tree over stored hashes: indexing, the incremental builder, roots at any size,
//! inclusion and consistency proofs (generation and verification).
//!
//! # Stored hashes
//!
//! Every *full* subtree of the log — the leaf hashes (level 0) and each perfect subtree of
//! `2^level` leaves starting at a multiple of `2^level` — has exactly one stored hash. They are
//! kept in one append-only sequence in the order they become known: when leaf `i` is appended,
//! its leaf hash is stored, followed by the hashes of the subtrees that leaf completes, lowest
//! first. So the storage layer only ever appends, and:
//!
//! * the number of stored hashes for a tree of `size` leaves is `2·size − popcount(size)`
//!   ([`stored_hash_count`]),
//! * the full subtree `(level, n)` — leaves `[n·2^level, (n+1)·2^level)` — is stored at
//!   `position(last leaf) + level` where `position(i) = 2·i − popcount(i)`
//!   ([`stored_hash_index`]).
//!
//! Any tree hash for a range `[lo, hi)` is the right fold of at most `log2(hi − lo)` full
//! subtrees, so a root at any past size, an inclusion proof and a consistency proof each read
//! O(log n) stored hashes and never recompute the tree.

use crate::hash::{empty_root, node_hash, Hash};

/// Position of leaf `i`'s hash in the stored-hash sequence.
fn leaf_position(leaf_index: u64) -> u64 {
    2 * leaf_index - u64::from(leaf_index.count_ones())
}

/// Index in the stored-hash sequence of the full subtree at `level` (0 = leaves) number `n`,
/// covering leaves `[n·2^level, (n+1)·2^level)`.
pub fn stored_hash_index(level: u8, n: u64) -> u64 {
    let last_leaf = ((n + 1) << level) - 1;
    leaf_position(last_leaf) + u64::from(level)
}

/// Number of stored hashes in a tree of `size` leaves.
pub fn stored_hash_count(size: u64) -> u64 {
    2 * size - u64::from(size.count_ones())
}

/// Errors while reading stored hashes or generating proofs.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// The hash source could not provide a stored hash.
    #[error("stored hash {index} could not be read: {reason}")]
    HashUnavailable { index: u64, reason: String },
    /// The leaf index is not inside the tree.
    #[error("leaf index {index} is outside a tree of size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    /// The two tree sizes do not form a valid consistency range.
    #[error("no consistency proof from size {old_size} to size {new_size}: need 0 < old ≤ new")]
    InvalidSizes { old_size: u64, new_size: u64 },
}

/// A source of stored hashes (a file, a database table, a `Vec` in memory).
pub trait HashReader {
    /// Returns the stored hash at `index` (see [`stored_hash_index`]).
    fn read_hash(&self, index: u64) -> Result<Hash, TreeError>;
}

impl HashReader for [Hash] {
    fn read_hash(&self, index: u64) -> Result<Hash, TreeError> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.get(i).copied())
            .ok_or_else(|| TreeError::HashUnavailable {
                index,
                reason: format!("only {} hashes in memory", self.len()),
            })
    }
}

impl HashReader for Vec<Hash> {
    fn read_hash(&self, index: u64) -> Result<Hash, TreeError> {
        self.as_slice().read_hash(index)
    }
}

impl<T: HashReader + ?Sized> HashReader for &T {
    fn read_hash(&self, index: u64) -> Result<Hash, TreeError> {
        (**self).read_hash(index)
    }
}

/// Largest power of two strictly smaller than `n` (n ≥ 2).
fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// The full subtrees `(level, n)` whose concatenation is the leaf range `[lo, hi)`, left to right.
fn full_subtrees(mut lo: u64, hi: u64) -> impl Iterator<Item = (u8, u64)> {
    std::iter::from_fn(move || {
        if lo >= hi {
            return None;
        }
        let align = if lo == 0 { 63 } else { lo.trailing_zeros() };
        let fits = 63 - (hi - lo).leading_zeros();
        let level = align.min(fits) as u8;
        let item = (level, lo >> level);
        lo += 1 << level;
        Some(item)
    })
}

/// The Merkle tree hash `MTH(D[lo:hi])` from stored hashes. `[lo, hi)` must be a range that
/// occurs in the RFC 6962 recursion (lo a multiple of the largest power of two ≤ hi − lo),
/// which holds for every range used by roots and proofs.
fn range_hash<R: HashReader + ?Sized>(lo: u64, hi: u64, reader: &R) -> Result<Hash, TreeError> {
    let mut parts = Vec::with_capacity(64);
    for (level, n) in full_subtrees(lo, hi) {
        parts.push(reader.read_hash(stored_hash_index(level, n))?);
    }
    let mut acc = parts.pop().unwrap_or_else(empty_root);
    while let Some(left) = parts.pop() {
        acc = node_hash(&left, &acc);
    }
    Ok(acc)
}

/// The root hash of the tree of the first `size` leaves, from stored hashes.
pub fn tree_root<R: HashReader + ?Sized>(size: u64, reader: &R) -> Result<Hash, TreeError> {
    if size == 0 {
        return Ok(empty_root());
    }
    range_hash(0, size, reader)
}

/// The RFC 9162 §2.1.3.1 inclusion proof for leaf `index` in the tree of `size` leaves,
/// from the leaf's sibling up to the root's child.
pub fn inclusion_proof<R: HashReader + ?Sized>(
    index: u64,
    size: u64,
    reader: &R,
) -> Result<Vec<Hash>, TreeError> {
    if index >= size {
        return Err(TreeError::IndexOutOfRange { index, size });
    }
    let mut proof = Vec::new();
    inclusion_path(index, 0, size, reader, &mut proof)?;
    Ok(proof)
}

fn inclusion_path<R: HashReader + ?Sized>(
    m: u64,
    lo: u64,
    hi: u64,
    reader: &R,
    out: &mut Vec<Hash>,
) -> Result<(), TreeError> {
    let n = hi - lo;
    if n == 1 {
        return Ok(());
    }
    let k = split_point(n);
    if m < k {
        inclusion_path(m, lo, lo + k, reader, out)?;
        out.push(range_hash(lo + k, hi, reader)?);
    } else {
        inclusion_path(m - k, lo + k, hi, reader, out)?;
        out.push(range_hash(lo, lo + k, reader)?);
    }
    Ok(())
}

/// The RFC 9162 §2.1.4.1 consistency proof between the tree of `old_size` leaves and the tree
/// of `new_size` leaves (empty when the sizes are equal).
pub fn consistency_proof<R: HashReader + ?Sized>(
    old_size: u64,
    new_size: u64,
    reader: &R,
) -> Result<Vec<Hash>, TreeError> {
    if old_size == 0 || old_size > new_size {
        return Err(TreeError::InvalidSizes { old_size, new_size });
    }
    let mut proof = Vec::new();
    consistency_subproof(old_size, 0, new_size, true, reader, &mut proof)?;
    Ok(proof)
}

fn consistency_subproof<R: HashReader + ?Sized>(
    m: u64,
    lo: u64,
    hi: u64,
    old_is_whole_subtree: bool,
    reader: &R,
    out: &mut Vec<Hash>,
) -> Result<(), TreeError> {
    let n = hi - lo;
    if m == n {
        if !old_is_whole_subtree {
            out.push(range_hash(lo, hi, reader)?);
        }
        return Ok(());
    }
    let k = split_point(n);
    if m <= k {
        consistency_subproof(m, lo, lo + k, old_is_whole_subtree, reader, out)?;
        out.push(range_hash(lo + k, hi, reader)?);
    } else {
        consistency_subproof(m - k, lo + k, hi, false, reader, out)?;
        out.push(range_hash(lo, lo + k, reader)?);
    }
    Ok(())
}

/// Why a proof did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("leaf index {index} is outside a tree of size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("invalid tree sizes: old size {old_size} must be ≤ new size {new_size}, and not 0")]
    InvalidSizes { old_size: u64, new_size: u64 },
    #[error("the proof has the wrong number of hashes")]
    WrongLength,
    #[error("the proof does not lead to the expected root hash")]
    RootMismatch,
}

/// Verifies an inclusion proof (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let mut f_n = index;
    let mut s_n = size - 1;
    let mut r = *leaf;
    for p in proof {
        if s_n == 0 {
            return Err(ProofError::WrongLength);
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = node_hash(p, &r);
            while f_n & 1 == 0 && f_n != 0 {
                f_n >>= 1;
                s_n >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    if s_n != 0 {
        return Err(ProofError::WrongLength);
    }
    if r != *root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// Verifies a consistency proof (RFC 9162 §2.1.4.2). Equal sizes need an empty proof and
/// equal roots.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old_size == 0 || old_size > new_size {
        return Err(ProofError::InvalidSizes { old_size, new_size });
    }
    if old_size == new_size {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength);
        }
        return if old_root == new_root {
            Ok(())
        } else {
            Err(ProofError::RootMismatch)
        };
    }
    if proof.is_empty() {
        return Err(ProofError::WrongLength);
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old_size.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let mut f_n = old_size - 1;
    let mut s_n = new_size - 1;
    while f_n & 1 == 1 {
        f_n >>= 1;
        s_n >>= 1;
    }
    let mut f_r = path[0];
    let mut s_r = path[0];
    for c in &path[1..] {
        if s_n == 0 {
            return Err(ProofError::WrongLength);
        }
        if f_n & 1 == 1 || f_n == s_n {
            f_r = node_hash(c, &f_r);
            s_r = node_hash(c, &s_r);
            while f_n & 1 == 0 && f_n != 0 {
                f_n >>= 1;
                s_n >>= 1;
            }
        } else {
            s_r = node_hash(&s_r, c);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    if s_n != 0 {
        return Err(ProofError::WrongLength);
    }
    if f_r != *old_root || s_r != *new_root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// The incremental tree: appends leaf hashes and yields the stored hashes to persist.
///
/// It keeps only the right edge of the tree (one hash per set bit of the size), so it is
/// O(log n) in memory; [`TreeBuilder::from_stored`] restores it from stored hashes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TreeBuilder {
    size: u64,
    /// Roots of the perfect subtrees making up the tree, largest (leftmost) first.
    right_edge: Vec<Hash>,
}

impl TreeBuilder {
    /// An empty tree.
    pub fn new() -> TreeBuilder {
        TreeBuilder::default()
    }

    /// Restores the builder for a tree of `size` leaves, reading O(log size) stored hashes.
    pub fn from_stored<R: HashReader + ?Sized>(
        size: u64,
        reader: &R,
    ) -> Result<TreeBuilder, TreeError> {
        let mut right_edge = Vec::new();
        for (level, n) in full_subtrees(0, size) {
            right_edge.push(reader.read_hash(stored_hash_index(level, n))?);
        }
        Ok(TreeBuilder { size, right_edge })
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends one leaf hash; pushes onto `new_stored_hashes` the stored hashes that become
    /// known, in stored order (the leaf hash, then each completed subtree, lowest first).
    pub fn append(&mut self, leaf: Hash, new_stored_hashes: &mut Vec<Hash>) {
        new_stored_hashes.push(leaf);
        let mut acc = leaf;
        let mut size_bits = self.size;
        while size_bits & 1 == 1 {
            let left = self
                .right_edge
                .pop()
                .expect("a set size bit always has its subtree on the right edge");
            acc = node_hash(&left, &acc);
            new_stored_hashes.push(acc);
            size_bits >>= 1;
        }
        self.right_edge.push(acc);
        self.size += 1;
    }

    /// The root hash of the current tree.
    pub fn root(&self) -> Hash {
        let mut iter = self.right_edge.iter().rev();
        let Some(last) = iter.next() else {
            return empty_root();
        };
        iter.fold(*last, |acc, left| node_hash(left, &acc))
    }
}
