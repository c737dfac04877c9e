//! An independent verifier written from the RFC 6962 §2.1 text: its own hashing, its own
//! Merkle Tree Hash, PATH and PROOF definitions over the raw leaves, and proof checking by
//! re-running the RFC recursion. It calls no production function except to obtain the proofs
//! and roots under test.

use postern_tlog::{
    consistency_proof, inclusion_proof, tree_root, verify_consistency, verify_inclusion, Hash,
    TreeBuilder,
};
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

type H = [u8; 32];

fn mth_leaf(data: &[u8]) -> H {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

fn mth_node(left: &H, right: &H) -> H {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// k: the largest power of two smaller than n (RFC 6962 §2.1).
fn k_of(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// MTH(D[n]) straight from the definition.
fn mth(d: &[Vec<u8>]) -> H {
    match d.len() {
        0 => Sha256::digest([]).into(),
        1 => mth_leaf(&d[0]),
        n => {
            let k = k_of(n);
            mth_node(&mth(&d[..k]), &mth(&d[k..]))
        }
    }
}

/// PATH(m, D[n]) (RFC 6962 §2.1.1).
fn path(m: usize, d: &[Vec<u8>]) -> Vec<H> {
    let n = d.len();
    if n == 1 {
        return vec![];
    }
    let k = k_of(n);
    if m < k {
        let mut p = path(m, &d[..k]);
        p.push(mth(&d[k..]));
        p
    } else {
        let mut p = path(m - k, &d[k..]);
        p.push(mth(&d[..k]));
        p
    }
}

/// SUBPROOF(m, D[n], b) (RFC 6962 §2.1.2).
fn subproof(m: usize, d: &[Vec<u8>], b: bool) -> Vec<H> {
    let n = d.len();
    if m == n {
        return if b { vec![] } else { vec![mth(d)] };
    }
    let k = k_of(n);
    if m <= k {
        let mut p = subproof(m, &d[..k], b);
        p.push(mth(&d[k..]));
        p
    } else {
        let mut p = subproof(m - k, &d[k..], false);
        p.push(mth(&d[..k]));
        p
    }
}

/// Rebuilds the root implied by an audit path, consuming the path from its end (the outermost
/// recursion level's sibling is the last element).
fn root_from_path(m: usize, n: usize, leaf: H, proof: &mut Vec<H>) -> Option<H> {
    if n == 1 {
        return Some(leaf);
    }
    let k = k_of(n);
    let sibling = proof.pop()?;
    if m < k {
        Some(mth_node(&root_from_path(m, k, leaf, proof)?, &sibling))
    } else {
        Some(mth_node(
            &sibling,
            &root_from_path(m - k, n - k, leaf, proof)?,
        ))
    }
}

fn independent_verify_inclusion(m: usize, n: usize, leaf: H, proof: &[H], root: H) -> bool {
    if m >= n {
        return false;
    }
    let mut rest = proof.to_vec();
    matches!(root_from_path(m, n, leaf, &mut rest), Some(r) if r == root && rest.is_empty())
}

/// Re-runs SUBPROOF: returns (hash of the old tree's part of this subtree, hash of the subtree).
fn roots_from_subproof(
    m: usize,
    n: usize,
    b: bool,
    old_root: H,
    proof: &mut Vec<H>,
) -> Option<(H, H)> {
    if m == n {
        if b {
            return Some((old_root, old_root));
        }
        let h = proof.pop()?;
        return Some((h, h));
    }
    let k = k_of(n);
    let last = proof.pop()?;
    if m <= k {
        let (old, new) = roots_from_subproof(m, k, b, old_root, proof)?;
        Some((old, mth_node(&new, &last)))
    } else {
        let (old, new) = roots_from_subproof(m - k, n - k, false, old_root, proof)?;
        Some((mth_node(&last, &old), mth_node(&last, &new)))
    }
}

fn independent_verify_consistency(
    m: usize,
    n: usize,
    old_root: H,
    new_root: H,
    proof: &[H],
) -> bool {
    if m == 0 || m > n {
        return false;
    }
    let mut rest = proof.to_vec();
    matches!(
        roots_from_subproof(m, n, true, old_root, &mut rest),
        Some((o, nw)) if o == old_root && nw == new_root && rest.is_empty()
    )
}

fn raw(hashes: &[Hash]) -> Vec<H> {
    hashes.iter().map(|h| h.0).collect()
}

fn leaves(count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| format!("entry {i}").into_bytes())
        .collect()
}

fn stored_hashes(d: &[Vec<u8>]) -> Vec<Hash> {
    let mut builder = TreeBuilder::new();
    let mut stored = Vec::new();
    for leaf in d {
        builder.append(postern_tlog::leaf_hash(leaf), &mut stored);
    }
    stored
}

/// Checks one inclusion proof both ways, and that a corrupted proof fails both verifiers.
fn check_inclusion(d: &[Vec<u8>], stored: &[Hash], m: usize, n: usize) {
    let proof = inclusion_proof(m as u64, n as u64, stored).unwrap();
    let root = tree_root(n as u64, stored).unwrap();
    assert_eq!(root.0, mth(&d[..n]), "root {n}");
    assert_eq!(raw(&proof), path(m, &d[..n]), "PATH({m}, D[{n}])");
    assert!(
        independent_verify_inclusion(m, n, mth_leaf(&d[m]), &raw(&proof), root.0),
        "independent inclusion {m} {n}"
    );
    let leaf = postern_tlog::leaf_hash(&d[m]);
    verify_inclusion(m as u64, n as u64, &leaf, &proof, &root).unwrap();
    if !proof.is_empty() {
        let mut bad = proof.clone();
        bad[m % proof.len()].0[0] ^= 1;
        assert!(!independent_verify_inclusion(
            m,
            n,
            leaf.0,
            &raw(&bad),
            root.0
        ));
        assert!(verify_inclusion(m as u64, n as u64, &leaf, &bad, &root).is_err());
        let short = &proof[..proof.len() - 1];
        assert!(verify_inclusion(m as u64, n as u64, &leaf, short, &root).is_err());
    }
    if n > 1 {
        let wrong_index = (m + 1) % n;
        assert!(
            verify_inclusion(wrong_index as u64, n as u64, &leaf, &proof, &root).is_err()
                || d[wrong_index] == d[m]
        );
    }
}

fn check_consistency(d: &[Vec<u8>], stored: &[Hash], m: usize, n: usize) {
    let proof = consistency_proof(m as u64, n as u64, stored).unwrap();
    let old_root = tree_root(m as u64, stored).unwrap();
    let new_root = tree_root(n as u64, stored).unwrap();
    assert_eq!(
        raw(&proof),
        subproof(m, &d[..n], true),
        "PROOF({m}, D[{n}])"
    );
    assert!(
        independent_verify_consistency(m, n, old_root.0, new_root.0, &raw(&proof)),
        "independent consistency {m} {n}"
    );
    verify_consistency(m as u64, n as u64, &old_root, &new_root, &proof).unwrap();
    if !proof.is_empty() {
        let mut bad = proof.clone();
        bad[(m + n) % proof.len()].0[31] ^= 0x80;
        assert!(!independent_verify_consistency(
            m,
            n,
            old_root.0,
            new_root.0,
            &raw(&bad)
        ));
        assert!(verify_consistency(m as u64, n as u64, &old_root, &new_root, &bad).is_err());
    }
    if m < n {
        let other = Hash(mth(&d[1..=m]));
        assert!(verify_consistency(m as u64, n as u64, &other, &new_root, &proof).is_err());
    }
}

#[test]
fn every_proof_up_to_64_leaves_matches_the_rfc() {
    let d = leaves(64);
    let stored = stored_hashes(&d);
    for n in 1..=64 {
        for m in 0..n {
            check_inclusion(&d, &stored, m, n);
        }
        for m in 1..=n {
            check_consistency(&d, &stored, m, n);
        }
    }
}

#[test]
fn random_proofs_in_a_larger_tree_match_the_rfc() {
    let d = leaves(1000);
    let stored = stored_hashes(&d);
    let mut rng = rand::rngs::StdRng::seed_from_u64(6962);
    for _ in 0..200 {
        let n = rng.gen_range(1..=d.len());
        let m = rng.gen_range(0..n);
        check_inclusion(&d, &stored, m, n);
        check_consistency(&d, &stored, m.max(1), n);
    }
}
