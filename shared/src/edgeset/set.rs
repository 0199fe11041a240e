//! The revocation set an edge VM holds and checks every request against.

use super::entry::{Entry, sort_and_merge};
use super::update::{EdgeSetError, EdgeUpdate, UpdateKind};
use super::{TokenKeys, clamp_u32, wire};
use crate::revocation::{Kind, TokenIds, covers};

pub(super) mod blob;

/// Buckets of the key index: the largest power of two at most `n / 2`, so a bucket
/// holds 2 to 4 keys on average whatever the set's size (keys are SHA-256 prefixes,
/// uniformly spread), and a lookup costs the same at 1,000 and at 1,000,000 entries.
pub(super) fn bucket_bits(n: usize) -> u32 {
    if n < 4 { 0 } else { (n / 2).ilog2().min(32) }
}

/// The bucket of `key`: its top `bits` bits.
fn bucket_of(key: u64, bits: u32) -> usize {
    key.checked_shr(64 - bits).unwrap_or(0) as usize
}

/// `starts[j]` is the position of the first key of bucket `j` (and `starts[2^bits]` the
/// number of keys); empty for no keys.
fn bucket_starts(keys: &[u64], bits: u32) -> Vec<u32> {
    if keys.is_empty() {
        return Vec::new();
    }
    let mut starts = vec![0u32; (1usize << bits) + 1];
    for &key in keys {
        // Always there: a bucket is below 2^bits.
        if let Some(count) = starts.get_mut(bucket_of(key, bits) + 1) {
            *count += 1;
        }
    }
    let mut sum = 0;
    for start in &mut starts {
        sum += *start;
        *start = sum;
    }
    starts
}

/// Buckets longer than this (only keys chosen to collide make them) are bisected.
const SCAN_LIMIT: usize = 16;

/// Bits of mantissa of an in-memory expiry code (see [`RevocationSet`]).
const SET_MANTISSA_BITS: u32 = 11;

/// The revocation set as one edge VM holds it, about 11 bytes an entry at 1,000,000:
///
/// - the keys sorted (8 bytes), and a bucket index on their top bits (the position of
///   each bucket's first key, u32, one bucket per 2 to 4 keys: 1 to 2 bytes an entry), so
///   a lookup reads two index words and scans a few keys, at any size;
/// - the expiries as 16-bit codes counted from the set's `expiry_base` (2 bytes): exact
///   seconds up to 2,047 s, then at most 1/2,048 of the time later, **rounded up**, never
///   down, like the wire's 13-bit codes but finer; the base is the earliest expiry (or
///   the update time) of the snapshot the set was built from, so re-encoding a decoded
///   expiry gives the same code and a delta never moves an entry again;
/// - the rare not-befores (subject revocations with a cut-off) apart, sorted by key;
/// - the entries deltas added since those arrays were last built, apart ("recent", at
///   most [`RECENT_MAX`], exact, sorted by key): a delta costs its own size, not the
///   set's, and the arrays are rebuilt (and expired entries dropped) only when the recent
///   entries fill up, a snapshot arrives, or the set would otherwise exceed its limit.
#[derive(Debug, Clone, Default)]
pub struct RevocationSet {
    seq: u64,
    generated_at: i64,
    pub(super) expiry_base: u32,
    pub(super) keys: Vec<u64>,
    expiry_codes: Vec<u16>,
    bucket_bits: u32,
    bucket_starts: Vec<u32>,
    pub(super) not_before: Vec<(u64, u32)>,
    /// `seq` and `generated_at` when the arrays were built.
    base_seq: u64,
    base_generated_at: i64,
    /// Entries added by deltas since the arrays were built: sorted, one per key.
    pub(super) recent: Vec<Entry>,
    /// How many of `recent` have a key the arrays do not hold.
    recent_new: usize,
    /// Bumped each time the arrays are rebuilt.
    generation: u64,
}

/// Most entries kept apart from the arrays before they are rebuilt.
pub const RECENT_MAX: usize = 4096;

impl RevocationSet {
    /// An empty set at sequence 0.
    pub fn new() -> Self {
        RevocationSet::default()
    }

    /// Builds the set from entries sorted by key with no repeats; expiries before
    /// `expiry_base` are kept as `expiry_base` (later, never earlier).
    fn from_sorted(
        seq: u64,
        generated_at: i64,
        expiry_base: u32,
        entries: &[Entry],
    ) -> RevocationSet {
        let keys: Vec<u64> = entries.iter().map(|e| e.key).collect();
        let bucket_bits = bucket_bits(keys.len());
        RevocationSet {
            seq,
            generated_at,
            base_seq: seq,
            base_generated_at: generated_at,
            expiry_base,
            expiry_codes: entries
                .iter()
                .map(|e| {
                    let offset = u64::from(e.expires_at.saturating_sub(expiry_base));
                    wire::float_code(offset, SET_MANTISSA_BITS)
                })
                .collect(),
            bucket_starts: bucket_starts(&keys, bucket_bits),
            bucket_bits,
            keys,
            not_before: entries
                .iter()
                .filter(|e| e.not_before != 0)
                .map(|e| (e.key, e.not_before))
                .collect(),
            recent: Vec::new(),
            recent_new: 0,
            generation: 0,
        }
    }

    /// The expiry base for a set built from `entries` in an update made at
    /// `generated_at`: the earliest time any of them needs.
    fn base_for(generated_at: i64, entries: &[Entry]) -> u32 {
        entries
            .iter()
            .map(|e| e.expires_at)
            .fold(clamp_u32(generated_at), u32::min)
    }

    /// The expiry of the entry at position `i` (seconds since the epoch).
    pub(super) fn expiry(&self, i: usize) -> u32 {
        let code = self.expiry_codes.get(i).copied().unwrap_or(0);
        let at = u64::from(self.expiry_base) + wire::float_seconds(code, SET_MANTISSA_BITS);
        u32::try_from(at).unwrap_or(u32::MAX)
    }

    /// The position of `key`: two index reads and a scan of its bucket.
    pub(super) fn find(&self, key: u64) -> Option<usize> {
        let j = bucket_of(key, self.bucket_bits);
        let (lo, hi) = (
            *self.bucket_starts.get(j)? as usize,
            *self.bucket_starts.get(j + 1)? as usize,
        );
        let bucket = self.keys.get(lo..hi)?;
        if bucket.len() > SCAN_LIMIT {
            return bucket.binary_search(&key).ok().map(|i| lo + i);
        }
        let (i, &found) = bucket.iter().enumerate().find(|&(_, &k)| k >= key)?;
        (found == key).then_some(lo + i)
    }

    /// The entries of the arrays, sorted by key.
    fn base_entries(&self) -> Vec<Entry> {
        let mut nbf = self.not_before.iter().peekable();
        self.keys
            .iter()
            .enumerate()
            .map(|(i, &key)| Entry {
                key,
                expires_at: self.expiry(i),
                not_before: nbf.next_if(|(k, _)| *k == key).map_or(0, |(_, t)| *t),
            })
            .collect()
    }

    /// Every entry, the recent ones merged in, sorted by key.
    fn entries(&self) -> Vec<Entry> {
        let mut entries = self.base_entries();
        if !self.recent.is_empty() {
            entries.extend_from_slice(&self.recent);
            sort_and_merge(&mut entries);
        }
        entries
    }

    /// The entry under `key`, the arrays' and the recent one merged.
    pub(super) fn entry(&self, key: u64) -> Option<Entry> {
        let base = self.find(key).map(|i| Entry {
            key,
            expires_at: self.expiry(i),
            not_before: self
                .not_before
                .binary_search_by_key(&key, |(k, _)| *k)
                .ok()
                .and_then(|j| self.not_before.get(j))
                .map_or(0, |&(_, t)| t),
        });
        if self.recent.is_empty() {
            return base;
        }
        let recent = match self.recent.binary_search_by_key(&key, |e| e.key) {
            Ok(j) => self.recent.get(j).copied(),
            Err(_) => None,
        };
        match (base, recent) {
            (Some(mut b), Some(r)) => {
                b.merge(&r);
                Some(b)
            }
            (b, r) => b.or(r),
        }
    }

    /// Rebuilds the arrays from `entries` (sorted, merged), with no recent entries.
    fn rebuilt(&self, seq: u64, generated_at: i64, base: u32, entries: &[Entry]) -> RevocationSet {
        RevocationSet {
            generation: self.generation.wrapping_add(1),
            ..RevocationSet::from_sorted(seq, generated_at, base, entries)
        }
    }

    /// Bytes the entries take in memory (capacity included).
    pub fn memory_bytes(&self) -> usize {
        self.keys.capacity() * 8
            + self.expiry_codes.capacity() * 2
            + self.bucket_starts.capacity() * 4
            + self.not_before.capacity() * 16
            + self.recent.capacity() * 16
    }

    /// Counts rebuilds of the arrays: unchanged when an update only added recent entries
    /// (what the filter's poller publishes then is the recent entries alone).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// True when `other` holds the same entries laid out the same way at the same
    /// position: what any holder of either can observe. The rebuild count is a holder's
    /// own bookkeeping and is left out (by name, so a new field must be placed here).
    pub fn holds_the_same_as(&self, other: &RevocationSet) -> bool {
        let RevocationSet {
            seq,
            generated_at,
            expiry_base,
            keys,
            expiry_codes,
            bucket_bits,
            bucket_starts,
            not_before,
            base_seq,
            base_generated_at,
            recent,
            recent_new,
            generation: _,
        } = self;
        *seq == other.seq
            && *generated_at == other.generated_at
            && *expiry_base == other.expiry_base
            && *keys == other.keys
            && *expiry_codes == other.expiry_codes
            && *bucket_bits == other.bucket_bits
            && *bucket_starts == other.bucket_starts
            && *not_before == other.not_before
            && *base_seq == other.base_seq
            && *base_generated_at == other.base_generated_at
            && *recent == other.recent
            && *recent_new == other.recent_new
    }

    /// The feed sequence number the set is at.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// When the control plane produced the newest update applied.
    pub fn generated_at(&self) -> i64 {
        self.generated_at
    }

    /// Number of entries (expired ones included until the arrays are next rebuilt).
    pub fn len(&self) -> usize {
        self.keys.len() + self.recent_new
    }

    /// True when nothing is revoked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies a snapshot (replaces the set) or a delta (must start at the current `seq`).
    pub fn apply(&mut self, update: EdgeUpdate) -> Result<(), EdgeSetError> {
        self.apply_within(update, u64::MAX)
    }

    /// Like [`apply`](Self::apply), but refuses an update after which the set would hold
    /// more than `max_entries`; a refused update leaves the set, its `seq` included,
    /// exactly as it was, so the caller never takes a partial set for a current one.
    pub fn apply_within(
        &mut self,
        update: EdgeUpdate,
        max_entries: u64,
    ) -> Result<(), EdgeSetError> {
        self.apply_at(update, None, max_entries)
    }

    /// Like [`apply_within`](Self::apply_within), and with `now` entries that can match no
    /// valid token any more are dropped whenever the arrays are rebuilt, and do not count
    /// against `max_entries` (the arrays are rebuilt at once if they would).
    ///
    /// A small delta joins the recent entries (its cost is its own size); a snapshot, a
    /// delta that fills the recent entries past [`RECENT_MAX`], or one the limit refuses
    /// otherwise, rebuilds the arrays.
    pub fn apply_at(
        &mut self,
        update: EdgeUpdate,
        now: Option<i64>,
        max_entries: u64,
    ) -> Result<(), EdgeSetError> {
        // Positions in the index are u32.
        let max_entries = max_entries.min(u64::from(u32::MAX));
        let too_many = |n: usize| EdgeSetError::TooManyEntries(n as u64);
        let live = |e: &Entry| now.is_none_or(|t| i64::from(e.expires_at) > t);
        if update.kind == UpdateKind::Snapshot {
            let mut entries = update.entries;
            sort_and_merge(&mut entries);
            entries.retain(live);
            if entries.len() as u64 > max_entries {
                return Err(too_many(entries.len()));
            }
            let base = RevocationSet::base_for(update.generated_at, &entries);
            *self = self.rebuilt(update.seq, update.generated_at, base, &entries);
            return Ok(());
        }
        if update.base_seq != self.seq {
            return Err(EdgeSetError::SequenceGap {
                base: update.base_seq,
                current: self.seq,
            });
        }
        if !self.keys.is_empty() && self.recent.len() + update.entries.len() <= RECENT_MAX {
            let mut recent = self.recent.clone();
            recent.extend(update.entries.iter().copied());
            sort_and_merge(&mut recent);
            recent.retain(live);
            let recent_new = recent.iter().filter(|e| self.find(e.key).is_none()).count();
            if (self.keys.len() + recent_new) as u64 <= max_entries {
                self.recent = recent;
                self.recent_new = recent_new;
                self.seq = update.seq;
                self.generated_at = update.generated_at;
                return Ok(());
            }
            // Over the limit as counted: rebuild, which drops what expired, and count again.
        }
        let mut entries = self.entries();
        entries.extend(update.entries);
        sort_and_merge(&mut entries);
        entries.retain(live);
        if entries.len() as u64 > max_entries {
            return Err(too_many(entries.len()));
        }
        let base = if self.keys.is_empty() {
            RevocationSet::base_for(update.generated_at, &entries)
        } else {
            self.expiry_base
        };
        *self = self.rebuilt(update.seq, update.generated_at, base, &entries);
        Ok(())
    }

    /// Drops entries that can no longer match a valid token.
    pub fn prune(&mut self, now: i64) {
        let now = clamp_u32(now);
        if (0..self.keys.len()).all(|i| self.expiry(i) > now)
            && self.recent.iter().all(|e| e.expires_at > now)
        {
            return;
        }
        let mut entries = self.entries();
        entries.retain(|e| e.expires_at > now);
        *self = self.rebuilt(self.seq, self.generated_at, self.expiry_base, &entries);
    }

    /// The first kind under which the token is revoked at `now`, if any.
    pub fn check(&self, ids: &TokenIds<'_>, now: i64) -> Option<Kind> {
        if self.is_empty() {
            return None;
        }
        self.check_keys(&TokenKeys::new(ids), now)
    }

    /// [`check`](Self::check) with the keys computed beforehand.
    pub fn check_keys(&self, token: &TokenKeys, now: i64) -> Option<Kind> {
        if self.keys.is_empty() && self.recent.is_empty() {
            return None;
        }
        let now = clamp_u32(now);
        Kind::ALL
            .into_iter()
            .zip(token.keys)
            .find(|&(_, key)| {
                let Some(entry) = key.and_then(|key| self.entry(key)) else {
                    return false;
                };
                let not_before = (entry.not_before != 0).then_some(i64::from(entry.not_before));
                entry.expires_at > now && covers(not_before, token.iat)
            })
            .map(|(kind, _)| kind)
    }

    /// The set as a snapshot update.
    pub fn to_snapshot(&self) -> EdgeUpdate {
        EdgeUpdate {
            kind: UpdateKind::Snapshot,
            base_seq: 0,
            seq: self.seq,
            generated_at: self.generated_at,
            entries: self.entries(),
            leeway: None,
            feed: None,
            jwks: None,
        }
    }
}

#[cfg(test)]
#[expect(
    clippy::indexing_slicing,
    reason = "a test fails on an unexpected input"
)]
mod tests {
    use super::*;

    fn update(kind: UpdateKind, base_seq: u64, seq: u64, entries: Vec<Entry>) -> EdgeUpdate {
        EdgeUpdate {
            kind,
            base_seq,
            seq,
            generated_at: 100,
            entries,
            leeway: None,
            feed: None,
            jwks: None,
        }
    }

    #[test]
    fn the_split_layout_keeps_every_entry_and_not_before() {
        let e = |key, expires_at, not_before| Entry {
            key,
            expires_at,
            not_before,
        };
        let mut set = RevocationSet::new();
        let first = vec![e(9, 500, 0), e(3, 400, 150), e(7, 300, 0), e(1, 200, 120)];
        set.apply(update(UpdateKind::Snapshot, 0, 1, first))
            .expect("snapshot");
        let mut more = vec![e(5, 600, 130), e(3, 450, 0)];
        more.extend((100..200).map(|k| e(k, 700, 0)));
        set.apply(update(UpdateKind::Delta, 1, 2, more))
            .expect("delta");
        let entries = set.to_snapshot().entries;
        assert_eq!(entries.len(), 105);
        assert_eq!(
            &entries[..5],
            &[
                e(1, 200, 120),
                // Merged: the later expiry, and no not-before (all tokens) is the stronger.
                e(3, 450, 0),
                e(5, 600, 130),
                e(7, 300, 0),
                e(9, 500, 0),
            ]
        );
        let not_befores: Vec<(u64, u32)> = entries
            .iter()
            .filter(|e| e.not_before != 0)
            .map(|e| (e.key, e.not_before))
            .collect();
        assert_eq!(not_befores, vec![(1, 120), (5, 130)]);
        assert!(set.memory_bytes() >= 105 * 10);
        set.prune(350);
        let keys: Vec<u64> = set.to_snapshot().entries.iter().map(|e| e.key).collect();
        assert_eq!(&keys[..4], &[3, 5, 9, 100]);
        assert_eq!(set.not_before, vec![(5, 130)]);
    }
}
