//! The set's arrays as bytes, for passing them between the VMs of one filter build: an
//! internal layout, not a wire format.

use super::super::wire;
use super::{
    EdgeSetError, Entry, RECENT_MAX, RevocationSet, SET_MANTISSA_BITS, bucket_bits, bucket_starts,
};

const BLOB_MAGIC: &[u8; 4] = b"PQRS";
const RECENT_MAGIC: &[u8; 4] = b"PQRR";
const RECENT_VERSION: u8 = 1;
pub(in crate::edgeset) const RECENT_HEADER_LEN: usize = 4 + 1 + 8 + 8 + 8;
const BLOB_VERSION: u8 = 2;
pub(in crate::edgeset) const BLOB_HEADER_LEN: usize = 4 + 1 + 8 + 8 + 4 + 8 + 8;

/// The whole little-endian u64s of `bytes` (a partial one at the end is left out).
fn le_u64s(bytes: &[u8]) -> Vec<u64> {
    bytes
        .as_chunks()
        .0
        .iter()
        .map(|&c| u64::from_le_bytes(c))
        .collect()
}

/// The whole little-endian u32s of `bytes` (a partial one at the end is left out).
fn le_u32s(bytes: &[u8]) -> Vec<u32> {
    bytes
        .as_chunks()
        .0
        .iter()
        .map(|&c| u32::from_le_bytes(c))
        .collect()
}

impl RevocationSet {
    /// The arrays exactly as held (not the recent entries: [`recent_to_bytes`]), as bytes,
    /// for passing them between the VMs of one filter build (an internal layout, not a
    /// wire format: no rounding, so arrays published and loaded again are the same, and
    /// loading them is copies, one sortedness check and the bucket index rebuilt in the
    /// same pass). `seq` and `generated_at` are those of the last rebuild when recent
    /// entries were added since:
    ///
    /// [`recent_to_bytes`]: Self::recent_to_bytes
    ///
    /// ```text
    /// "PQRS" | 2 | seq u64 | generated_at i64 | expiry_base u32 | n u64 | m u64
    /// | n keys u64 | n expiry codes u16 | m not-before keys u64 | m not-befores u32
    /// ```
    pub fn to_bytes(&self) -> Vec<u8> {
        let n = self.keys.len();
        let m = self.not_before.len();
        let mut out = Vec::with_capacity(BLOB_HEADER_LEN + n * 10 + m * 12);
        out.extend_from_slice(BLOB_MAGIC);
        out.push(BLOB_VERSION);
        out.extend_from_slice(&self.base_seq.to_le_bytes());
        out.extend_from_slice(&self.base_generated_at.to_le_bytes());
        out.extend_from_slice(&self.expiry_base.to_le_bytes());
        out.extend_from_slice(&(n as u64).to_le_bytes());
        out.extend_from_slice(&(m as u64).to_le_bytes());
        out.extend(self.keys.iter().flat_map(|k| k.to_le_bytes()));
        out.extend(self.expiry_codes.iter().flat_map(|c| c.to_le_bytes()));
        out.extend(self.not_before.iter().flat_map(|(k, _)| k.to_le_bytes()));
        out.extend(self.not_before.iter().flat_map(|(_, t)| t.to_le_bytes()));
        out
    }

    /// Loads what [`to_bytes`](Self::to_bytes) wrote, refusing a set over `max_entries`
    /// and anything that is not exactly such a set (wrong length, keys out of order, a
    /// not-before of no entry, a zero not-before, an expiry code past `u32::MAX` seconds).
    pub fn from_bytes(bytes: &[u8], max_entries: u64) -> Result<RevocationSet, EdgeSetError> {
        let mut r = wire::Reader { bytes };
        if &r.take::<4>()? != BLOB_MAGIC {
            return Err(EdgeSetError::Malformed("bad magic"));
        }
        if r.take::<1>()? != [BLOB_VERSION] {
            return Err(EdgeSetError::Malformed("unsupported version"));
        }
        let seq = u64::from_le_bytes(r.take()?);
        let generated_at = i64::from_le_bytes(r.take()?);
        let expiry_base = u32::from_le_bytes(r.take()?);
        let n = u64::from_le_bytes(r.take()?);
        let m = u64::from_le_bytes(r.take()?);
        if n > max_entries.min(u64::from(u32::MAX)) {
            return Err(EdgeSetError::TooManyEntries(n));
        }
        if m > n {
            return Err(EdgeSetError::Malformed("more not-befores than entries"));
        }
        // n and m are at most the input's length over 10 once this holds: no overflow.
        let rest = r.bytes;
        if n.checked_mul(10)
            .and_then(|x| x.checked_add(m.checked_mul(12)?))
            != Some(rest.len() as u64)
        {
            return Err(EdgeSetError::Malformed("set blob length"));
        }
        let (n, m) = (n as usize, m as usize);
        let length = || EdgeSetError::Malformed("set blob length");
        let (keys, rest) = rest.split_at_checked(n * 8).ok_or_else(length)?;
        let (codes, rest) = rest.split_at_checked(n * 2).ok_or_else(length)?;
        let (nbf_keys, nbf_times) = rest.split_at_checked(m * 8).ok_or_else(length)?;
        let keys = le_u64s(keys);
        if !keys.is_sorted_by(|a, b| a < b) {
            return Err(EdgeSetError::Malformed("entries not strictly sorted"));
        }
        let expiry_codes: Vec<u16> = codes
            .as_chunks()
            .0
            .iter()
            .map(|&c| u16::from_le_bytes(c))
            .collect();
        let max_code = wire::float_code(u64::from(u32::MAX - expiry_base), SET_MANTISSA_BITS);
        if expiry_codes.iter().any(|&c| c > max_code) {
            return Err(EdgeSetError::Malformed("expiry code past u32::MAX"));
        }
        let bucket_bits = bucket_bits(keys.len());
        let set = RevocationSet {
            seq,
            generated_at,
            base_seq: seq,
            base_generated_at: generated_at,
            expiry_base,
            bucket_starts: bucket_starts(&keys, bucket_bits),
            bucket_bits,
            keys,
            expiry_codes,
            not_before: le_u64s(nbf_keys)
                .into_iter()
                .zip(le_u32s(nbf_times))
                .collect(),
            recent: Vec::new(),
            recent_new: 0,
            generation: 0,
        };
        if !set.not_before.is_sorted_by(|a, b| a.0 < b.0)
            || set
                .not_before
                .iter()
                .any(|&(key, t)| t == 0 || set.find(key).is_none())
        {
            return Err(EdgeSetError::Malformed("not-before of no entry"));
        }
        Ok(set)
    }

    /// The recent entries (see [`RevocationSet`]) and the set's current `seq` and
    /// `generated_at`, as bytes for the VMs that hold the arrays already:
    ///
    /// ```text
    /// "PQRR" | 1 | seq u64 | generated_at i64 | n u64 | n x (key u64, expires_at u32, not_before u32)
    /// ```
    pub fn recent_to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(RECENT_HEADER_LEN + self.recent.len() * 16);
        out.extend_from_slice(RECENT_MAGIC);
        out.push(RECENT_VERSION);
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.generated_at.to_le_bytes());
        out.extend_from_slice(&(self.recent.len() as u64).to_le_bytes());
        for e in &self.recent {
            out.extend_from_slice(&e.key.to_le_bytes());
            out.extend_from_slice(&e.expires_at.to_le_bytes());
            out.extend_from_slice(&e.not_before.to_le_bytes());
        }
        out
    }

    /// Replaces the recent entries with what [`recent_to_bytes`](Self::recent_to_bytes)
    /// wrote for these arrays. Refuses (leaving the set as it was) more than
    /// [`RECENT_MAX`] entries, keys out of order, a `seq` before the arrays', or a set
    /// that would hold more than `max_entries`.
    pub fn load_recent(&mut self, bytes: &[u8], max_entries: u64) -> Result<(), EdgeSetError> {
        let mut r = wire::Reader { bytes };
        if &r.take::<4>()? != RECENT_MAGIC {
            return Err(EdgeSetError::Malformed("bad magic"));
        }
        if r.take::<1>()? != [RECENT_VERSION] {
            return Err(EdgeSetError::Malformed("unsupported version"));
        }
        let seq = u64::from_le_bytes(r.take()?);
        let generated_at = i64::from_le_bytes(r.take()?);
        let n = u64::from_le_bytes(r.take()?);
        if n > RECENT_MAX as u64 || n.checked_mul(16) != Some(r.bytes.len() as u64) {
            return Err(EdgeSetError::Malformed("recent entries length"));
        }
        if seq < self.base_seq {
            return Err(EdgeSetError::Malformed("recent entries older than the set"));
        }
        let recent: Vec<Entry> = r
            .bytes
            .as_chunks::<16>()
            .0
            .iter()
            .map(|&c| {
                // key u64, expires_at u32, not_before u32, little-endian: one u128, low first.
                let v = u128::from_le_bytes(c);
                Entry {
                    key: v as u64,
                    expires_at: (v >> 64) as u32,
                    not_before: (v >> 96) as u32,
                }
            })
            .collect();
        if !recent.is_sorted_by(|a, b| a.key < b.key) {
            return Err(EdgeSetError::Malformed(
                "recent entries not strictly sorted",
            ));
        }
        let recent_new = recent.iter().filter(|e| self.find(e.key).is_none()).count();
        let len = (self.keys.len() + recent_new) as u64;
        if len > max_entries {
            return Err(EdgeSetError::TooManyEntries(len));
        }
        self.recent = recent;
        self.recent_new = recent_new;
        self.seq = seq;
        self.generated_at = generated_at;
        Ok(())
    }
}
