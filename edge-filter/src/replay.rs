//! The DPoP proof replay cache: a bounded hash table of recently used proof `jti`s,
//! stored as fixed-size buckets in proxy-wasm shared data so that every worker of one
//! Envoy sees every proof (RFC 9449 section 11.1).
//!
//! A proof is identified by the SHA-256 of its key thumbprint and `jti` (one client
//! cannot burn another's `jti`), truncated to 16 bytes, and kept until its `iat` window
//! ends: after that the proof is refused as stale anyway. Each bucket is one shared-data
//! value of at most `BUCKET_ENTRIES` entries of 20 bytes (hash and expiry); a full
//! bucket refuses the new proof (fail closed) rather than forgetting a live one.

// Reads untrusted request input and feed bytes: no input may panic the VM.
#![deny(clippy::indexing_slicing, clippy::unwrap_used)]

use shared::sha256;

/// Entries per bucket.
pub(crate) const BUCKET_ENTRIES: usize = 16;
/// Bytes per entry: 16 of hash, 4 of expiry (u32 seconds).
pub(crate) const ENTRY_BYTES: usize = 20;

/// The cache key of a proof.
pub(crate) fn proof_id(jkt: &str, jti: &str) -> [u8; 16] {
    let mut input = Vec::with_capacity(jkt.len() + jti.len() + 1);
    input.extend_from_slice(jkt.as_bytes());
    input.push(0);
    input.extend_from_slice(jti.as_bytes());
    let digest = sha256(&input);
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    id
}

/// Which bucket of `buckets` a proof id lives in.
pub(crate) fn bucket_of(id: &[u8; 16], buckets: u32) -> u32 {
    let word = u32::from_le_bytes([id[0], id[1], id[2], id[3]]);
    word % buckets.max(1)
}

/// What the cache says about a proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// First use: write this bucket back (compare-and-swap) to record it.
    Fresh(Vec<u8>),
    /// The proof was already used within its window.
    Replayed,
    /// The bucket holds `BUCKET_ENTRIES` live proofs: refused, fail closed.
    Full,
}

/// Checks a proof against a bucket and returns the bucket with it recorded.
///
/// Expired entries are dropped on the way; garbage (a length that is not a multiple of
/// the entry size) reads as an empty bucket.
pub(crate) fn check_and_record(bucket: &[u8], id: &[u8; 16], expires_at: u32, now: u32) -> Verdict {
    let mut live = Vec::with_capacity((BUCKET_ENTRIES + 1) * ENTRY_BYTES);
    if bucket.len().is_multiple_of(ENTRY_BYTES) {
        for entry in bucket.as_chunks::<ENTRY_BYTES>().0 {
            // Always there: an entry is 16 bytes of hash and 4 of expiry.
            let Some((hash, expiry)) = entry.split_last_chunk::<4>() else {
                continue;
            };
            let expiry = u32::from_le_bytes(*expiry);
            if expiry <= now {
                continue;
            }
            if hash == id {
                return Verdict::Replayed;
            }
            live.extend_from_slice(entry);
        }
    }
    if live.len() / ENTRY_BYTES >= BUCKET_ENTRIES {
        return Verdict::Full;
    }
    live.extend_from_slice(id);
    live.extend_from_slice(&expires_at.to_le_bytes());
    Verdict::Fresh(live)
}

/// Where the authorizer records proofs: shared data in Envoy, a map in tests.
pub trait ReplayGuard {
    /// True when the proof `id`, valid until `expires_at`, is used for the first time
    /// (and is now recorded); false for a replay or when it cannot be recorded.
    fn first_use(&mut self, id: [u8; 16], expires_at: i64, now: i64) -> bool;
}

/// An in-memory guard with the same bucket rules (tests, fuzzing).
#[derive(Debug, Default)]
pub struct MemoryGuard {
    buckets: std::collections::HashMap<u32, Vec<u8>>,
    /// Number of buckets (at least 1).
    pub(crate) bucket_count: u32,
}

impl MemoryGuard {
    /// An empty guard with `bucket_count` buckets.
    pub fn new(bucket_count: u32) -> MemoryGuard {
        MemoryGuard {
            bucket_count,
            ..MemoryGuard::default()
        }
    }
}

fn clamp_u32(t: i64) -> u32 {
    u32::try_from(t.max(0)).unwrap_or(u32::MAX)
}

impl ReplayGuard for MemoryGuard {
    fn first_use(&mut self, id: [u8; 16], expires_at: i64, now: i64) -> bool {
        let b = bucket_of(&id, self.bucket_count);
        let current = self.buckets.get(&b).cloned().unwrap_or_default();
        match check_and_record(&current, &id, clamp_u32(expires_at), clamp_u32(now)) {
            Verdict::Fresh(next) => {
                self.buckets.insert(b, next);
                true
            }
            Verdict::Replayed | Verdict::Full => false,
        }
    }
}

/// Converts seconds for the bucket format.
pub(crate) fn seconds_u32(t: i64) -> u32 {
    clamp_u32(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u32 = 1_700_000_000;

    #[test]
    fn a_proof_is_accepted_once_within_its_window() {
        let id = proof_id("jkt", "p-1");
        let Verdict::Fresh(bucket) = check_and_record(&[], &id, NOW + 60, NOW) else {
            panic!("first use");
        };
        assert_eq!(bucket.len(), ENTRY_BYTES);
        assert_eq!(
            check_and_record(&bucket, &id, NOW + 60, NOW + 59),
            Verdict::Replayed
        );
        // Past its window the entry is dropped (the proof itself is stale by then).
        assert!(matches!(
            check_and_record(&bucket, &id, NOW + 200, NOW + 60),
            Verdict::Fresh(b) if b.len() == ENTRY_BYTES
        ));
        // Another key with the same jti is another proof.
        assert_ne!(proof_id("other", "p-1"), id);
    }

    #[test]
    fn a_full_bucket_refuses_new_proofs_until_entries_expire() {
        let mut bucket = Vec::new();
        for n in 0..BUCKET_ENTRIES {
            match check_and_record(&bucket, &proof_id("k", &n.to_string()), NOW + 10, NOW) {
                Verdict::Fresh(b) => bucket = b,
                other => panic!("entry {n}: {other:?}"),
            }
        }
        let late = proof_id("k", "late");
        assert_eq!(
            check_and_record(&bucket, &late, NOW + 10, NOW),
            Verdict::Full
        );
        assert!(matches!(
            check_and_record(&bucket, &late, NOW + 20, NOW + 10),
            Verdict::Fresh(_)
        ));
        assert!(matches!(
            check_and_record(b"garbage", &late, NOW + 20, NOW),
            Verdict::Fresh(b) if b.len() == ENTRY_BYTES
        ));
    }

    #[test]
    fn the_memory_guard_spreads_proofs_over_buckets() {
        let mut guard = MemoryGuard {
            bucket_count: 64,
            ..MemoryGuard::default()
        };
        let now = i64::from(NOW);
        for n in 0..200 {
            assert!(guard.first_use(proof_id("k", &n.to_string()), now + 60, now));
        }
        assert!(!guard.first_use(proof_id("k", "7"), now + 60, now + 1));
        assert_eq!(bucket_of(&[0; 16], 0), 0);
    }
}
