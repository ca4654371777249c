//! RFC 9162 (Certificate Transparency 2.0) Merkle tree hashes, inclusion and
//! consistency proofs, and the compact "frontier" that lets a log extend its
//! tree head one leaf at a time.
//!
//! The leaf data of record `i` is its 32-byte chain hash, so
//! `leaf_hash = SHA-256(0x00 || chain_hash)` and
//! `node_hash = SHA-256(0x01 || left || right)`.

use crate::keys::sha256;

/// A 32-byte hash.
pub type Hash = [u8; 32];

/// RFC 9162 leaf hash of `data`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(&[0]);
    ctx.update(data);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// RFC 9162 interior node hash.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut buf = [0u8; 65];
    buf[0] = 1;
    buf[1..33].copy_from_slice(left);
    buf[33..].copy_from_slice(right);
    sha256(buf)
}

/// The hash of an empty tree.
pub fn empty_root() -> Hash {
    sha256([])
}

fn largest_power_of_two_below(n: usize) -> usize {
    debug_assert!(n > 1);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// MTH over leaf hashes.
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = largest_power_of_two_below(n);
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// The audit path of leaf `m` in the tree of `leaves` (RFC 9162 §2.1.3.1).
pub fn inclusion_proof(m: usize, leaves: &[Hash]) -> Vec<Hash> {
    let n = leaves.len();
    if n <= 1 || m >= n {
        return Vec::new();
    }
    let k = largest_power_of_two_below(n);
    if m < k {
        let mut p = inclusion_proof(m, &leaves[..k]);
        p.push(root(&leaves[k..]));
        p
    } else {
        let mut p = inclusion_proof(m - k, &leaves[k..]);
        p.push(root(&leaves[..k]));
        p
    }
}

/// The consistency proof from the tree of the first `m` leaves to the tree of
/// all `leaves` (RFC 9162 §2.1.4.1).
pub fn consistency_proof(m: usize, leaves: &[Hash]) -> Vec<Hash> {
    if m == 0 || m >= leaves.len() {
        return Vec::new();
    }
    subproof(m, leaves, true)
}

fn subproof(m: usize, leaves: &[Hash], complete: bool) -> Vec<Hash> {
    let n = leaves.len();
    if m == n {
        return if complete {
            Vec::new()
        } else {
            vec![root(leaves)]
        };
    }
    let k = largest_power_of_two_below(n);
    if m <= k {
        let mut p = subproof(m, &leaves[..k], complete);
        p.push(root(&leaves[k..]));
        p
    } else {
        let mut p = subproof(m - k, &leaves[k..], false);
        p.push(root(&leaves[..k]));
        p
    }
}

/// Every level of a tree, built once, so that many inclusion proofs cost
/// O(log n) each (a filtered export proves each of its records). Building
/// bottom-up and carrying a level's odd last node up unchanged gives the
/// same tree as RFC 9162's recursive split.
pub struct Levels(Vec<Vec<Hash>>);

impl Levels {
    /// The levels over `leaves` (leaf hashes).
    pub fn new(leaves: Vec<Hash>) -> Self {
        let mut levels = vec![leaves];
        while levels.last().is_some_and(|l| l.len() > 1) {
            let below = levels.last().map(Vec::as_slice).unwrap_or_default();
            let up = below
                .chunks(2)
                .map(|pair| match pair {
                    [l, r] => node_hash(l, r),
                    [only] => *only,
                    _ => empty_root(),
                })
                .collect();
            levels.push(up);
        }
        Levels(levels)
    }

    /// The root.
    pub fn root(&self) -> Hash {
        self.0
            .last()
            .and_then(|l| l.first())
            .copied()
            .unwrap_or_else(empty_root)
    }

    /// The inclusion proof of leaf `index` (as [`inclusion_proof`]).
    pub fn proof(&self, index: usize) -> Vec<Hash> {
        let mut out = Vec::new();
        let mut i = index;
        for level in &self.0[..self.0.len().saturating_sub(1)] {
            if let Some(sibling) = level.get(i ^ 1) {
                out.push(*sibling);
            }
            i >>= 1;
        }
        out
    }
}

/// Verifies an inclusion proof (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    path: &[Hash],
    expected_root: &Hash,
) -> bool {
    if index >= size {
        return false;
    }
    let (mut f_n, mut s_n) = (index, size - 1);
    let mut r = *leaf;
    for p in path {
        if s_n == 0 {
            return false;
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = node_hash(p, &r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    s_n == 0 && &r == expected_root
}

/// Verifies a consistency proof (RFC 9162 §2.1.4.2).
pub fn verify_consistency(
    first: u64,
    second: u64,
    first_root: &Hash,
    second_root: &Hash,
    proof: &[Hash],
) -> bool {
    if first == second {
        return proof.is_empty() && first_root == second_root;
    }
    if first == 0 || first > second || proof.is_empty() {
        return false;
    }
    let mut path: Vec<Hash> = proof.to_vec();
    if first.is_power_of_two() {
        path.insert(0, *first_root);
    }
    let (mut f_n, mut s_n) = (first - 1, second - 1);
    while f_n & 1 == 1 {
        f_n >>= 1;
        s_n >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if s_n == 0 {
            return false;
        }
        if f_n & 1 == 1 || f_n == s_n {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    &fr == first_root && &sr == second_root && s_n == 0
}

/// The roots of the perfect subtrees that make up a tree of `size` leaves,
/// largest first: enough to extend the tree and compute its root without
/// the leaves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    nodes: Vec<Hash>,
}

impl Frontier {
    /// Rebuilds a frontier from its size and concatenated node hashes.
    pub fn from_parts(size: u64, bytes: &[u8]) -> Option<Self> {
        if bytes.len() % 32 != 0 || bytes.len() / 32 != size.count_ones() as usize {
            return None;
        }
        let nodes = bytes
            .chunks_exact(32)
            .map(|c| {
                let mut h = [0u8; 32];
                h.copy_from_slice(c);
                h
            })
            .collect();
        Some(Frontier { size, nodes })
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Concatenated node hashes (for storage).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.nodes.concat()
    }

    /// Appends a leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        let mut h = leaf;
        let mut size = self.size;
        // Each trailing 1 bit of the old size is a perfect subtree that the
        // new leaf completes into a larger one.
        while size & 1 == 1 {
            let Some(left) = self.nodes.pop() else { break };
            h = node_hash(&left, &h);
            size >>= 1;
        }
        self.nodes.push(h);
        self.size += 1;
    }

    /// The tree head (MTH) of the leaves so far.
    pub fn root(&self) -> Hash {
        let mut iter = self.nodes.iter().rev();
        match iter.next() {
            None => empty_root(),
            Some(last) => iter.fold(*last, |acc, left| node_hash(left, &acc)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(&(i as u64).to_be_bytes()))
            .collect()
    }

    #[test]
    fn frontier_matches_recursive_root() {
        let all = leaves(70);
        let mut f = Frontier::default();
        assert_eq!(f.root(), empty_root());
        for (i, l) in all.iter().enumerate() {
            f.push(*l);
            assert_eq!(f.root(), root(&all[..=i]), "size {}", i + 1);
            let again = Frontier::from_parts(f.size(), &f.to_bytes()).unwrap();
            assert_eq!(again, f);
        }
    }

    #[test]
    fn levels_give_the_rfc_proofs() {
        for n in 1..=40 {
            let all = leaves(n);
            let levels = Levels::new(all.clone());
            assert_eq!(levels.root(), root(&all), "root of {n}");
            for m in 0..n {
                assert_eq!(
                    levels.proof(m),
                    inclusion_proof(m, &all),
                    "proof of {m} in {n}"
                );
            }
        }
    }

    #[test]
    fn proofs_verify_and_detect_tampering() {
        let all = leaves(23);
        for n in 1..=all.len() {
            let r = root(&all[..n]);
            for m in 0..n {
                let p = inclusion_proof(m, &all[..n]);
                assert!(
                    verify_inclusion(&all[m], m as u64, n as u64, &p, &r),
                    "inclusion {m} in {n}"
                );
                if n > 1 {
                    assert!(!verify_inclusion(
                        &all[(m + 1) % n],
                        m as u64,
                        n as u64,
                        &p,
                        &r
                    ));
                }
            }
            for m in 1..n {
                let p = consistency_proof(m, &all[..n]);
                let r1 = root(&all[..m]);
                assert!(
                    verify_consistency(m as u64, n as u64, &r1, &r, &p),
                    "consistency {m} -> {n}"
                );
                assert!(!verify_consistency(
                    m as u64,
                    n as u64,
                    &leaf_hash(b"x"),
                    &r,
                    &p
                ));
            }
        }
    }
}
