//! The revocation set pushed to the edge: compact entries, a binary wire format for
//! snapshots and deltas, and the lookup the filter runs on every request.
//!
//! An entry is 12 bytes in memory: a 64-bit hash of `(kind, value)` and the expiry as u32
//! seconds (the optional not-before, rare, is kept apart). On the wire the entries are sorted by hash
//! and delta-encoded with varints, about 10 bytes each.

use crate::JoseError;
use crate::envelope::{self, TYP_EDGE_DELTA, TYP_EDGE_SNAPSHOT};
use crate::keys::{Keyring, SigningKey};
use crate::revocation::{Kind, RevocationEvent, TokenIds, covers, stronger_not_before};

const MAGIC: &[u8; 4] = b"PQRV";
const VERSION: u8 = 1;
const HEADER_LEN: usize = 4 + 1 + 1 + 8 + 8 + 8;

/// The hash of `(kind, value)` under which an entry is stored.
pub fn entry_key(kind: Kind, value: &str) -> u64 {
    use sha2::Digest;
    // Fed in two parts: no copy of the value per lookup.
    let digest = sha2::Sha256::new()
        .chain_update([kind.tag()])
        .chain_update(value.as_bytes())
        .finalize();
    u64::from_be_bytes([
        digest[0], digest[1], digest[2], digest[3], digest[4], digest[5], digest[6], digest[7],
    ])
}

/// A token's identifiers as the set looks them up: their [`entry_key`]s, computed once
/// per verified token (the edge keeps them with its cached verification), so each
/// request costs only the lookups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenKeys {
    /// One key per [`Kind::ALL`] entry; `None` where the token has no such identifier.
    keys: [Option<u64>; 4],
    /// `iat`, for not-before entries.
    iat: i64,
}

impl TokenKeys {
    /// The keys of a token's identifiers.
    pub fn new(ids: &TokenIds<'_>) -> TokenKeys {
        TokenKeys {
            keys: Kind::ALL.map(|kind| ids.value(kind).map(|value| entry_key(kind, value))),
            iat: ids.iat,
        }
    }
}

fn clamp_u32(t: i64) -> u32 {
    t.clamp(0, i64::from(u32::MAX)) as u32
}

/// One revoked identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// [`entry_key`] of the identifier.
    pub key: u64,
    /// Seconds since the epoch after which the entry can match no valid token.
    pub expires_at: u32,
    /// 0: every token; otherwise only tokens issued at or before this second.
    pub not_before: u32,
}

impl Entry {
    /// The entry for a revocation event.
    pub fn from_event(event: &RevocationEvent) -> Entry {
        Entry {
            key: entry_key(event.kind, &event.value),
            expires_at: clamp_u32(event.expires_at),
            not_before: event.not_before.map_or(0, |t| clamp_u32(t).max(1)),
        }
    }

    fn merge(&mut self, other: &Entry) {
        self.expires_at = self.expires_at.max(other.expires_at);
        // 0 is "no not-before" on the wire; the rule itself lives in `revocation`.
        let as_option = |t: u32| (t != 0).then_some(i64::from(t));
        self.not_before =
            stronger_not_before(as_option(self.not_before), as_option(other.not_before))
                .map_or(0, clamp_u32);
    }
}

/// Whether an update replaces the set or adds to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateKind {
    /// The whole set as of `seq`.
    Snapshot,
    /// Entries added after `base_seq` up to `seq`.
    Delta,
}

/// A snapshot or delta as sent to the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeUpdate {
    /// Snapshot or delta.
    pub kind: UpdateKind,
    /// For a delta, the sequence number it applies on top of; 0 for a snapshot.
    pub base_seq: u64,
    /// The feed sequence number this update brings the set to.
    pub seq: u64,
    /// When the control plane produced it (seconds since the epoch).
    pub generated_at: i64,
    /// The entries, in any order.
    pub entries: Vec<Entry>,
}

/// Why an edge update was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EdgeSetError {
    /// The signature or envelope is invalid.
    #[error("invalid envelope: {0}")]
    Envelope(#[from] JoseError),
    /// The binary payload is malformed.
    #[error("malformed edge update: {0}")]
    Malformed(&'static str),
    /// More entries than the configured maximum.
    #[error("edge update has {0} entries, over the limit")]
    TooManyEntries(u64),
    /// A delta that does not start at the set's current sequence number.
    #[error("delta starts at {base}, the set is at {current}")]
    SequenceGap {
        /// The delta's base.
        base: u64,
        /// The set's sequence number.
        current: u64,
    },
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], EdgeSetError> {
        let (head, rest) = self
            .bytes
            .split_first_chunk::<N>()
            .ok_or(EdgeSetError::Malformed("truncated"))?;
        self.bytes = rest;
        Ok(*head)
    }

    fn varint(&mut self) -> Result<u64, EdgeSetError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let [byte] = self.take::<1>()?;
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(EdgeSetError::Malformed("varint overflows 64 bits"));
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                if byte == 0 && shift > 0 {
                    return Err(EdgeSetError::Malformed("non-minimal varint"));
                }
                return Ok(value);
            }
        }
        Err(EdgeSetError::Malformed("varint too long"))
    }
}

impl EdgeUpdate {
    /// The binary payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut entries = self.entries.clone();
        sort_and_merge(&mut entries);
        let mut out = Vec::with_capacity(HEADER_LEN + 5 + entries.len() * 11);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(match self.kind {
            UpdateKind::Snapshot => 0,
            UpdateKind::Delta => 1,
        });
        out.extend_from_slice(&self.base_seq.to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.generated_at.to_le_bytes());
        put_varint(&mut out, entries.len() as u64);
        let mut previous = 0u64;
        for e in &entries {
            put_varint(&mut out, e.key.wrapping_sub(previous));
            previous = e.key;
            put_varint(
                &mut out,
                zigzag(i64::from(e.expires_at) - self.generated_at),
            );
            let nbf = if e.not_before == 0 {
                0
            } else {
                1 + zigzag(i64::from(e.not_before) - self.generated_at)
            };
            put_varint(&mut out, nbf);
        }
        out
    }

    /// Decodes a binary payload, refusing anything malformed or over `max_entries`.
    pub fn decode(bytes: &[u8], max_entries: u64) -> Result<EdgeUpdate, EdgeSetError> {
        let mut r = Reader { bytes };
        if &r.take::<4>()? != MAGIC {
            return Err(EdgeSetError::Malformed("bad magic"));
        }
        if r.take::<1>()? != [VERSION] {
            return Err(EdgeSetError::Malformed("unsupported version"));
        }
        let kind = match r.take::<1>()? {
            [0] => UpdateKind::Snapshot,
            [1] => UpdateKind::Delta,
            _ => return Err(EdgeSetError::Malformed("unknown update kind")),
        };
        let base_seq = u64::from_le_bytes(r.take()?);
        let seq = u64::from_le_bytes(r.take()?);
        let generated_at = i64::from_le_bytes(r.take()?);
        if kind == UpdateKind::Delta && base_seq > seq {
            return Err(EdgeSetError::Malformed("delta ends before it starts"));
        }
        let count = r.varint()?;
        if count > max_entries {
            return Err(EdgeSetError::TooManyEntries(count));
        }
        // Each entry takes at least 3 bytes: bound the allocation by the input.
        if count > (r.bytes.len() / 3) as u64 {
            return Err(EdgeSetError::Malformed("truncated"));
        }
        let time = |delta: u64| -> Result<u32, EdgeSetError> {
            let t = generated_at
                .checked_add(unzigzag(delta))
                .ok_or(EdgeSetError::Malformed("time out of range"))?;
            u32::try_from(t).map_err(|_| EdgeSetError::Malformed("time out of range"))
        };
        let mut entries = Vec::with_capacity(count as usize);
        let mut previous = 0u64;
        for i in 0..count {
            let gap = r.varint()?;
            if i > 0 && gap == 0 {
                return Err(EdgeSetError::Malformed("entries not strictly sorted"));
            }
            let key = previous
                .checked_add(gap)
                .ok_or(EdgeSetError::Malformed("entries not strictly sorted"))?;
            previous = key;
            let expires_at = time(r.varint()?)?;
            let not_before = match r.varint()? {
                0 => 0,
                n => time(n - 1)?.max(1),
            };
            entries.push(Entry {
                key,
                expires_at,
                not_before,
            });
        }
        if !r.bytes.is_empty() {
            return Err(EdgeSetError::Malformed("trailing bytes"));
        }
        Ok(EdgeUpdate {
            kind,
            base_seq,
            seq,
            generated_at,
            entries,
        })
    }

    /// Signs the update with the region's ML-DSA-65 key.
    pub fn sign(&self, key: &SigningKey) -> Result<String, JoseError> {
        let typ = match self.kind {
            UpdateKind::Snapshot => TYP_EDGE_SNAPSHOT,
            UpdateKind::Delta => TYP_EDGE_DELTA,
        };
        envelope::seal(key, typ, &self.encode())
    }

    /// Verifies and decodes a signed update; its `typ` must agree with its kind.
    pub fn open(token: &str, keys: &Keyring, max_entries: u64) -> Result<EdgeUpdate, EdgeSetError> {
        let max_len = HEADER_LEN
            .saturating_add((max_entries as usize).saturating_mul(30))
            .saturating_mul(4)
            / 3
            + 8192;
        let (typ, payload) =
            envelope::open(token, &[TYP_EDGE_SNAPSHOT, TYP_EDGE_DELTA], keys, max_len)?;
        let update = EdgeUpdate::decode(&payload, max_entries)?;
        let expected = match update.kind {
            UpdateKind::Snapshot => TYP_EDGE_SNAPSHOT,
            UpdateKind::Delta => TYP_EDGE_DELTA,
        };
        if typ != expected {
            return Err(EdgeSetError::Malformed(
                "typ does not match the update kind",
            ));
        }
        Ok(update)
    }
}

fn sort_and_merge(entries: &mut Vec<Entry>) {
    entries.sort_unstable_by_key(|e| e.key);
    entries.dedup_by(|later, kept| {
        if later.key == kept.key {
            kept.merge(later);
            true
        } else {
            false
        }
    });
}

/// The revocation set as one edge VM holds it, 12 bytes an entry: the keys sorted (a
/// binary search over 8-byte keys only), the expiries beside them, and the rare
/// not-befores (subject revocations with a cut-off) apart, sorted by key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevocationSet {
    seq: u64,
    generated_at: i64,
    keys: Vec<u64>,
    expires_at: Vec<u32>,
    not_before: Vec<(u64, u32)>,
}

impl RevocationSet {
    /// An empty set at sequence 0.
    pub fn new() -> Self {
        RevocationSet::default()
    }

    fn from_sorted(seq: u64, generated_at: i64, entries: &[Entry]) -> RevocationSet {
        RevocationSet {
            seq,
            generated_at,
            keys: entries.iter().map(|e| e.key).collect(),
            expires_at: entries.iter().map(|e| e.expires_at).collect(),
            not_before: entries
                .iter()
                .filter(|e| e.not_before != 0)
                .map(|e| (e.key, e.not_before))
                .collect(),
        }
    }

    /// The entries, sorted by key.
    fn entries(&self) -> Vec<Entry> {
        let mut nbf = self.not_before.iter().peekable();
        self.keys
            .iter()
            .zip(&self.expires_at)
            .map(|(&key, &expires_at)| Entry {
                key,
                expires_at,
                not_before: nbf.next_if(|(k, _)| *k == key).map_or(0, |(_, t)| *t),
            })
            .collect()
    }

    /// Bytes the entries take in memory (capacity included).
    pub fn memory_bytes(&self) -> usize {
        self.keys.capacity() * 8 + self.expires_at.capacity() * 4 + self.not_before.capacity() * 16
    }

    /// The feed sequence number the set is at.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// When the control plane produced the newest update applied.
    pub fn generated_at(&self) -> i64 {
        self.generated_at
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when nothing is revoked.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
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
        let entries = match update.kind {
            UpdateKind::Snapshot => {
                let mut entries = update.entries;
                sort_and_merge(&mut entries);
                entries
            }
            UpdateKind::Delta => {
                if update.base_seq != self.seq {
                    return Err(EdgeSetError::SequenceGap {
                        base: update.base_seq,
                        current: self.seq,
                    });
                }
                let mut entries = self.entries();
                if update.entries.len() > 64 {
                    entries.extend(update.entries);
                    sort_and_merge(&mut entries);
                } else {
                    for e in update.entries {
                        match entries.binary_search_by_key(&e.key, |x| x.key) {
                            Ok(i) => entries[i].merge(&e),
                            Err(i) => entries.insert(i, e),
                        }
                    }
                }
                entries
            }
        };
        if entries.len() as u64 > max_entries {
            return Err(EdgeSetError::TooManyEntries(entries.len() as u64));
        }
        *self = RevocationSet::from_sorted(update.seq, update.generated_at, &entries);
        Ok(())
    }

    /// Drops entries that can no longer match a valid token.
    pub fn prune(&mut self, now: i64) {
        let now = clamp_u32(now);
        if self.expires_at.iter().all(|&t| t > now) {
            return;
        }
        let mut entries = self.entries();
        entries.retain(|e| e.expires_at > now);
        *self = RevocationSet::from_sorted(self.seq, self.generated_at, &entries);
    }

    /// The first kind under which the token is revoked at `now`, if any.
    pub fn check(&self, ids: &TokenIds<'_>, now: i64) -> Option<Kind> {
        if self.keys.is_empty() {
            return None;
        }
        self.check_keys(&TokenKeys::new(ids), now)
    }

    /// [`check`](Self::check) with the keys computed beforehand.
    pub fn check_keys(&self, token: &TokenKeys, now: i64) -> Option<Kind> {
        if self.keys.is_empty() {
            return None;
        }
        let now = clamp_u32(now);
        Kind::ALL
            .into_iter()
            .zip(token.keys)
            .find(|&(_, key)| {
                let Some(key) = key else {
                    return false;
                };
                let Ok(i) = self.keys.binary_search(&key) else {
                    return false;
                };
                let not_before = match self.not_before.binary_search_by_key(&key, |(k, _)| *k) {
                    Ok(j) => Some(i64::from(self.not_before[j].1)),
                    Err(_) => None,
                };
                self.expires_at[i] > now && covers(not_before, token.iat)
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
        }
    }
}

#[cfg(test)]
mod layout_tests {
    use super::*;

    fn update(kind: UpdateKind, base_seq: u64, seq: u64, entries: Vec<Entry>) -> EdgeUpdate {
        EdgeUpdate {
            kind,
            base_seq,
            seq,
            generated_at: 100,
            entries,
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
        assert_eq!(set.not_before, vec![(1, 120), (5, 130)]);
        assert!(set.memory_bytes() >= 105 * 12);
        set.prune(350);
        let keys: Vec<u64> = set.to_snapshot().entries.iter().map(|e| e.key).collect();
        assert_eq!(&keys[..4], &[3, 5, 9, 100]);
        assert_eq!(set.not_before, vec![(5, 130)]);
    }
}
