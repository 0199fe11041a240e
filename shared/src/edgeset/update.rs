//! The signed update an edge receives: a snapshot or a delta, its binary payload (format
//! version 2, see the module doc of `edgeset`) and its envelope.

use super::entry::{Entry, sort_and_merge};
use super::{MAX_FEED_LEEWAY, clamp_u32, is_feed_id, wire};
use crate::JoseError;
use crate::envelope::{self, TYP_EDGE_DELTA, TYP_EDGE_SNAPSHOT};
use crate::keys::{Keyring, SigningKey};

pub(super) const MAGIC: &[u8; 4] = b"PQRV";
pub(super) const VERSION: u8 = 2;
pub(super) const HEADER_LEN: usize = 4 + 1 + 1 + 8 + 8 + 8;

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
    /// The clock leeway in seconds the entries assume: each covers its tokens until their
    /// `exp` plus this. Travels in the signed protected header, not in the payload:
    /// [`sign`](EdgeUpdate::sign) writes it, [`open`](EdgeUpdate::open) reads it,
    /// [`decode`](EdgeUpdate::decode) gives `None`. `None`: the control plane did not say
    /// (built before the member existed).
    pub leeway: Option<u32>,
    /// The feed the update belongs to (see the module doc): in the signed protected
    /// header like `leeway`; `None` from a control plane built before the member existed.
    pub feed: Option<String>,
    /// The digest of the JWKS its control plane served when it was signed
    /// ([`jwks_digest`](super::jwks_digest), see the module doc): in the signed protected
    /// header like `feed`, in the same form; `None` from a control plane built before the
    /// member existed.
    pub jwks: Option<String>,
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

/// Seconds since the epoch of `base` plus expiry `code`, capped at `u32::MAX`; a code
/// above the first one that reaches the cap is not canonical.
fn expiry_at(base: u32, code: u16) -> Result<u32, EdgeSetError> {
    let at = u64::from(base) + wire::expiry_seconds(code);
    if at < u64::from(u32::MAX) {
        return Ok(at as u32);
    }
    if code > 0 && u64::from(base) + wire::expiry_seconds(code - 1) >= u64::from(u32::MAX) {
        return Err(EdgeSetError::Malformed("non-canonical expiry"));
    }
    Ok(u32::MAX)
}

/// The expiry an entry has after a trip through the wire in an update made at
/// `generated_at`: never earlier than `expires_at` (see the module doc for the rule).
pub fn wire_expiry(generated_at: i64, expires_at: u32) -> u32 {
    let base = clamp_u32(generated_at);
    let code = wire::expiry_code(u64::from(expires_at.saturating_sub(base)));
    // `expiry_code` never rounds down, so this is always Ok; the fallback keeps it so.
    expiry_at(base, code).unwrap_or(u32::MAX).max(expires_at)
}

impl EdgeUpdate {
    /// The binary payload (format version 2, see the module doc). Entries are sorted and
    /// merged by key; expiries are rounded up as [`wire_expiry`] says.
    pub fn encode(&self) -> Vec<u8> {
        let mut entries = self.entries.clone();
        sort_and_merge(&mut entries);
        let not_befores: Vec<(usize, u32)> = entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.not_before != 0)
            .map(|(i, e)| (i, e.not_before))
            .collect();
        let mut out =
            Vec::with_capacity(HEADER_LEN + 20 + entries.len() * 8 + not_befores.len() * 8);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(match self.kind {
            UpdateKind::Snapshot => 0,
            UpdateKind::Delta => 1,
        });
        out.extend_from_slice(&self.base_seq.to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.generated_at.to_le_bytes());
        wire::put_varint(&mut out, entries.len() as u64);
        wire::put_varint(&mut out, not_befores.len() as u64);
        let mut next_index = 0;
        for &(index, not_before) in &not_befores {
            wire::put_varint(&mut out, (index - next_index) as u64);
            next_index = index + 1;
            wire::put_varint(
                &mut out,
                wire::zigzag(i64::from(not_before).wrapping_sub(self.generated_at)),
            );
        }
        let k = wire::rice_k(entries.len() as u64);
        let base = clamp_u32(self.generated_at);
        let mut bits = wire::BitWriter::new(out);
        let mut previous: Option<u64> = None;
        for e in &entries {
            // Keys are strictly increasing after the merge: later gaps are at least 1.
            let gap = previous.map_or(e.key, |p| e.key - p - 1);
            previous = Some(e.key);
            bits.put_unary(gap >> k);
            bits.put(gap, k);
            let code = wire::expiry_code(u64::from(e.expires_at.saturating_sub(base)));
            bits.put(u64::from(code), wire::EXPIRY_BITS);
        }
        bits.finish()
    }

    /// Decodes a binary payload, refusing anything malformed, non-canonical or over
    /// `max_entries`; allocates only after checking that the input can hold the count.
    pub fn decode(bytes: &[u8], max_entries: u64) -> Result<EdgeUpdate, EdgeSetError> {
        let mut r = wire::Reader { bytes };
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
        let nbf_count = r.varint()?;
        if nbf_count > count {
            return Err(EdgeSetError::Malformed("more not-befores than entries"));
        }
        // Each not-before takes at least 2 bytes.
        if nbf_count > (r.bytes.len() / 2) as u64 {
            return Err(EdgeSetError::Malformed("truncated"));
        }
        let mut not_befores = Vec::with_capacity(nbf_count as usize);
        let mut next_index = 0u64;
        for _ in 0..nbf_count {
            let index = next_index
                .checked_add(r.varint()?)
                .filter(|&i| i < count)
                .ok_or(EdgeSetError::Malformed("not-before index out of range"))?;
            next_index = index + 1;
            let at = generated_at
                .checked_add(wire::unzigzag(r.varint()?))
                .and_then(|t| u32::try_from(t).ok())
                .filter(|&t| t != 0)
                .ok_or(EdgeSetError::Malformed("time out of range"))?;
            not_befores.push((index, at));
        }
        let k = wire::rice_k(count);
        let mut bits = r.into_bits();
        // Each entry takes at least k + 1 + 13 bits: bound the allocation by the input.
        if count.saturating_mul(u64::from(k + 1 + wire::EXPIRY_BITS)) > bits.remaining_bits() {
            return Err(EdgeSetError::Malformed("truncated"));
        }
        let base = clamp_u32(generated_at);
        let max_quotient = u64::MAX >> k;
        let mut not_befores = not_befores.into_iter().peekable();
        let mut entries = Vec::with_capacity(count as usize);
        let mut previous: Option<u64> = None;
        for index in 0..count {
            let gap = (bits.unary(max_quotient)? << k) | bits.get(k)?;
            let key = match previous {
                None => Some(gap),
                Some(p) => p.checked_add(gap).and_then(|x| x.checked_add(1)),
            }
            .ok_or(EdgeSetError::Malformed("key out of range"))?;
            previous = Some(key);
            let code = bits.get(wire::EXPIRY_BITS)? as u16;
            entries.push(Entry {
                key,
                expires_at: expiry_at(base, code)?,
                not_before: not_befores
                    .next_if(|&(i, _)| i == index)
                    .map_or(0, |(_, t)| t),
            });
        }
        bits.finish()?;
        Ok(EdgeUpdate {
            kind,
            base_seq,
            seq,
            generated_at,
            entries,
            leeway: None,
            feed: None,
            jwks: None,
        })
    }

    /// Signs the update with the region's ML-DSA-65 key; `leeway`, when set, goes in the
    /// protected header.
    pub fn sign(&self, key: &SigningKey) -> Result<String, JoseError> {
        let typ = match self.kind {
            UpdateKind::Snapshot => TYP_EDGE_SNAPSHOT,
            UpdateKind::Delta => TYP_EDGE_DELTA,
        };
        if self.feed.as_deref().is_some_and(|f| !is_feed_id(f)) {
            return Err(JoseError::Malformed("feed id"));
        }
        if self.jwks.as_deref().is_some_and(|d| !is_feed_id(d)) {
            return Err(JoseError::Malformed("jwks digest"));
        }
        envelope::seal_edge(
            key,
            typ,
            self.leeway,
            self.feed.as_deref(),
            self.jwks.as_deref(),
            &self.encode(),
        )
    }

    /// Verifies and decodes a signed update; its `typ` must agree with its kind, and a
    /// declared `leeway` must be at most [`MAX_FEED_LEEWAY`], a declared `feed` a
    /// well-formed id ([`is_feed_id`]).
    pub fn open(token: &str, keys: &Keyring, max_entries: u64) -> Result<EdgeUpdate, EdgeSetError> {
        let max_len = HEADER_LEN
            .saturating_add((max_entries as usize).saturating_mul(30))
            .saturating_mul(4)
            / 3
            + 8192;
        let opened =
            envelope::open_with_header(token, &[TYP_EDGE_SNAPSHOT, TYP_EDGE_DELTA], keys, max_len)?;
        let leeway = opened
            .header
            .leeway
            .map(|l| {
                u32::try_from(l)
                    .ok()
                    .filter(|&l| l <= MAX_FEED_LEEWAY)
                    .ok_or(EdgeSetError::Malformed("leeway over the maximum"))
            })
            .transpose()?;
        let feed = match opened.header.feed {
            Some(f) if !is_feed_id(&f) => return Err(EdgeSetError::Malformed("bad feed id")),
            feed => feed,
        };
        let jwks = match opened.header.jwks {
            Some(d) if !is_feed_id(&d) => return Err(EdgeSetError::Malformed("bad jwks digest")),
            jwks => jwks,
        };
        let typ = opened.typ;
        let update = EdgeUpdate {
            leeway,
            feed,
            jwks,
            ..EdgeUpdate::decode(&opened.payload, max_entries)?
        };
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
