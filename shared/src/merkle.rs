//! A Merkle tree over a batch of messages, as RFC 9162 (Certificate Transparency 2.0)
//! defines it with SHA-256: one signature over the root covers every message, and each
//! message travels with the proof that it is in the tree.
//!
//! Leaf hash `SHA-256(0x00 || message)`, node hash `SHA-256(0x01 || left || right)`;
//! a tree of `n` leaves splits at the largest power of two below `n` (RFC 9162 2.1.1),
//! which is the same as pairing each level left to right and carrying an odd last node
//! up unchanged. Proofs are RFC 9162 2.1.3 inclusion proofs.

use sha2::{Digest as _, Sha256};

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// Longest inclusion proof accepted: enough for 2^32 leaves.
pub const MAX_PROOF_LEN: usize = 32;

/// The hash of one leaf.
pub fn leaf_hash(message: &[u8]) -> Hash {
    Sha256::new()
        .chain_update([0u8])
        .chain_update(message)
        .finalize()
        .into()
}

fn node_hash(left: &Hash, right: &Hash) -> Hash {
    Sha256::new()
        .chain_update([1u8])
        .chain_update(left)
        .chain_update(right)
        .finalize()
        .into()
}

/// A whole tree, level by level: built once per batch, then the root and every leaf's
/// proof are read off it (`n log n` hashes in all, not `n` per proof).
#[derive(Debug, Clone)]
pub struct Tree {
    /// `levels[0]` holds the leaf hashes, the last level the root alone.
    levels: Vec<Vec<Hash>>,
}

impl Tree {
    /// The tree over `leaves` (leaf hashes, in order). `None` for no leaves.
    pub fn new(leaves: Vec<Hash>) -> Option<Tree> {
        if leaves.is_empty() {
            return None;
        }
        let mut levels = vec![leaves];
        while let Some(level) = levels.last().filter(|l| l.len() > 1) {
            let next = level
                .chunks(2)
                .map(|pair| match pair {
                    [left, right] => node_hash(left, right),
                    // The odd last node (chunks are never empty).
                    _ => pair[0],
                })
                .collect();
            levels.push(next);
        }
        Some(Tree { levels })
    }

    /// The number of leaves.
    pub fn size(&self) -> usize {
        self.levels[0].len()
    }

    /// The root hash.
    pub fn root(&self) -> Hash {
        self.levels[self.levels.len() - 1][0]
    }

    /// The inclusion proof of leaf `index` (empty for a tree of one); `None` when out of
    /// range.
    pub fn proof(&self, index: usize) -> Option<Vec<Hash>> {
        if index >= self.size() {
            return None;
        }
        let mut proof = Vec::with_capacity(self.levels.len());
        let mut i = index;
        for level in &self.levels[..self.levels.len() - 1] {
            // An odd last node has no sibling at this level: it is carried up.
            if let Some(sibling) = level.get(i ^ 1) {
                proof.push(*sibling);
            }
            i >>= 1;
        }
        Some(proof)
    }
}

/// Checks that `leaf` is leaf `index` of the tree of `size` leaves whose root is `root`
/// (RFC 9162 2.1.3.2).
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, proof: &[Hash], root: &Hash) -> bool {
    if index >= size || proof.len() > MAX_PROOF_LEN {
        return false;
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && r == *root
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 9162 2.1.1's recursive definition, to check the level-by-level build.
    fn reference_root(leaves: &[Hash]) -> Hash {
        if leaves.len() == 1 {
            return leaves[0];
        }
        let k = leaves.len().next_power_of_two() / 2;
        node_hash(&reference_root(&leaves[..k]), &reference_root(&leaves[k..]))
    }

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    #[test]
    fn the_root_is_the_rfc_9162_root_and_every_proof_verifies() {
        for n in 1..=70 {
            let tree = Tree::new(leaves(n)).unwrap();
            assert_eq!(tree.root(), reference_root(&leaves(n)), "size {n}");
            for i in 0..n {
                let proof = tree.proof(i).unwrap();
                assert!(
                    verify_inclusion(&leaves(n)[i], i as u64, n as u64, &proof, &tree.root()),
                    "size {n} index {i}"
                );
            }
            assert!(tree.proof(n).is_none());
        }
    }

    #[test]
    fn a_proof_fails_for_another_leaf_index_size_or_root() {
        let n = 13;
        let all = leaves(n);
        let tree = Tree::new(all.clone()).unwrap();
        let root = tree.root();
        for i in 0..n {
            let proof = tree.proof(i).unwrap();
            let other = (i + 1) % n;
            assert!(!verify_inclusion(
                &all[other],
                i as u64,
                n as u64,
                &proof,
                &root
            ));
            assert!(!verify_inclusion(
                &all[i],
                other as u64,
                n as u64,
                &proof,
                &root
            ));
            assert!(!verify_inclusion(
                &all[i], i as u64, i as u64, &proof, &root
            ));
            let mut bad_root = root;
            bad_root[0] ^= 1;
            assert!(!verify_inclusion(
                &all[i], i as u64, n as u64, &proof, &bad_root
            ));
            let mut tampered = proof.clone();
            tampered[0][31] ^= 1;
            assert!(!verify_inclusion(
                &all[i], i as u64, n as u64, &tampered, &root
            ));
            let mut longer = proof.clone();
            longer.push(root);
            assert!(!verify_inclusion(
                &all[i], i as u64, n as u64, &longer, &root
            ));
            assert!(!verify_inclusion(
                &all[i],
                i as u64,
                n as u64,
                &proof[1..],
                &root
            ));
        }
    }

    #[test]
    fn a_leaf_is_not_a_node() {
        // Domain separation: the two children's bytes as a leaf do not hash to the node.
        let (a, b) = (leaf_hash(b"a"), leaf_hash(b"b"));
        let mut joined = a.to_vec();
        joined.extend_from_slice(&b);
        assert_ne!(leaf_hash(&joined), node_hash(&a, &b));
    }
}
