//! The revocation set pushed to the edge: compact entries, a binary wire format for
//! snapshots and deltas, and the lookup the filter runs on every request.
//!
//! An entry is about 11 bytes in memory: a 64-bit hash of `(kind, value)`, a 16-bit
//! expiry code, and its share of a bucket index on the keys' top bits (the optional
//! not-before, rare, is kept apart). The keys are uniformly spread hashes and a bucket
//! holds 2 to 4 of them on average, so a lookup costs the same at any set size
//! (see [`RevocationSet`]).
//!
//! # Wire format, version 2
//!
//! About 7.4 bytes an entry at 1,000,000 entries (at most k + 16 bits an entry whatever
//! the keys, with k below). Integers are little-endian; varints are minimal LEB128.
//!
//! ```text
//! "PQRV" | version 2 | kind (0 snapshot, 1 delta) | base_seq u64 | seq u64 | generated_at i64
//! | count varint | nbf_count varint
//! | nbf_count x (index gap varint, zigzag varint of not_before - generated_at)
//! | bit stream, least significant bit first, to the end of the payload:
//!     count x (key gap: Rice code with k = 63 - floor(log2 count), i.e. gap >> k in
//!              unary (that many 0 bits, then a 1) and the low k bits of the gap;
//!              expiry: a 13-bit code)
//!     then zero bits up to the byte boundary
//! ```
//!
//! Entries are sorted by key with no repeats; the first key gap is the key itself, each
//! later one is `key - previous - 1`. Not-before indices are entry positions, increasing;
//! the first gap is the index itself, each later one `index - previous - 1`. Not-befores
//! are exact seconds.
//!
//! **Expiry rule: rounded up, never down.** An entry must never expire before the tokens it
//! covers could stop being valid, so an expiry is sent as the smallest 13-bit code at or
//! after it, counted from `generated_at` (clamped to u32): codes 0-511 are exact seconds,
//! then the step doubles with the time, at most 1/256 of it (8 s at an hour, 2.3 hours
//! at 30 days), up to `u32::MAX`; an expiry at or before `generated_at` is sent as
//! `generated_at`. [`wire_expiry`] gives the value an entry comes back with. Decoding a
//! payload and encoding it again at the same `generated_at` gives the same bytes.
//!
//! Strictness: every truncated, overlong, non-minimal or out-of-range input (a key that
//! overflows 64 bits, a not-before index past the count, a non-zero padding bit, a byte
//! after the bit stream, an expiry code past the first that reaches `u32::MAX`) is an
//! error; nothing is allocated before the input is known to be long enough for the
//! declared counts. Version 1 (varint deltas, about 10 bytes an entry) is no longer
//! read: the control plane and the edge filter ship together and must be upgraded as
//! a pair.
//!
//! # The leeway the revocations assume
//!
//! An entry covers its tokens until their `exp` plus the control plane's clock leeway;
//! an edge that accepted tokens for longer than that would accept a revoked token once
//! its entry lapsed. So a signed update says the leeway its entries assume, in seconds,
//! as the member `leeway` of its protected JWS header ([`EdgeUpdate::leeway`]), not in
//! the binary payload (whose bytes and version stay as they were), and the edge never
//! applies more than that to `exp`. The member is optional and not `crit`: an edge
//! built before it existed ignores it and keeps its own leeway, and an edge that meets
//! an update without it (a control plane built before it existed) does the same. So
//! control planes are upgraded first, then edges. An update that declares more than
//! [`MAX_FEED_LEEWAY`] is refused like any malformed one (the set goes stale if nothing
//! better comes): no control plane allows that much, and applying a huge leeway by
//! mistake would be worse than not serving.
//!
//! # The feed an update belongs to
//!
//! Sequence numbers count in one feed: the history of one control-plane database. A
//! second control plane, or one restored from a backup, counts in another, and a delta
//! from it applied on top of a set from the first would skip revocations. So an update
//! names its feed in the protected header member `feed` ([`EdgeUpdate::feed`]): a random
//! id made when the feed's history starts (new after a restore), at most
//! [`MAX_FEED_ID_LEN`] characters of `A-Z a-z 0-9 - _`; anything else is refused like a
//! malformed update. An edge applies a delta only to a set from the same feed and takes
//! a snapshot first otherwise. Optional and not `crit`, like `leeway`: older edges
//! ignore it.
//!
//! # The keys an edge should hold
//!
//! An update also says which JWKS its control plane serves at the time it was signed:
//! the protected header member `jwks` ([`EdgeUpdate::jwks`]) is the SHA-256 of the JWKS
//! document's bytes, in base64url without padding ([`jwks_digest`]). An edge whose
//! JWKS has another digest fetches it again, so a key rotation reaches every edge with
//! the next update (the control plane wakes its parked polls for it) instead of at the
//! next periodic refresh. Same form as a feed id; optional and not `crit`.

use crate::JoseError;
use crate::envelope::{self, TYP_EDGE_DELTA, TYP_EDGE_SNAPSHOT};
use crate::keys::{Keyring, SigningKey};
use crate::revocation::{Kind, RevocationEvent, TokenIds, covers, stronger_not_before};

mod wire;

const MAGIC: &[u8; 4] = b"PQRV";
const VERSION: u8 = 2;
const HEADER_LEN: usize = 4 + 1 + 1 + 8 + 8 + 8;

/// The largest leeway an update may declare, in seconds (a day); see the module doc.
pub const MAX_FEED_LEEWAY: u32 = 86_400;

/// The longest feed id an update may carry; see the module doc.
pub const MAX_FEED_ID_LEN: usize = 64;

/// True when `id` is a well-formed feed id: 1 to [`MAX_FEED_ID_LEN`] characters of the
/// base64url alphabet.
pub fn is_feed_id(id: &str) -> bool {
    (1..=MAX_FEED_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The digest of a JWKS document that edge updates carry: the SHA-256 of its bytes,
/// base64url without padding (see the module doc).
pub fn jwks_digest(document: &[u8]) -> String {
    crate::b64::encode(&crate::sha256(document))
}

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
    /// ([`jwks_digest`], see the module doc): in the signed protected header like `feed`,
    /// in the same form; `None` from a control plane built before the member existed.
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

/// Buckets of the key index: the largest power of two at most `n / 2`, so a bucket
/// holds 2 to 4 keys on average whatever the set's size (keys are SHA-256 prefixes,
/// uniformly spread), and a lookup costs the same at 1,000 and at 1,000,000 entries.
fn bucket_bits(n: usize) -> u32 {
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
        starts[bucket_of(key, bits) + 1] += 1;
    }
    for j in 1..starts.len() {
        starts[j] += starts[j - 1];
    }
    starts
}

/// Buckets longer than this (only keys chosen to collide make them) are bisected.
const SCAN_LIMIT: usize = 16;

/// Bits of mantissa of an in-memory expiry code (see [`RevocationSet`]).
const SET_MANTISSA_BITS: u32 = 11;

const BLOB_MAGIC: &[u8; 4] = b"PQRS";
const RECENT_MAGIC: &[u8; 4] = b"PQRR";
const RECENT_VERSION: u8 = 1;
const RECENT_HEADER_LEN: usize = 4 + 1 + 8 + 8 + 8;
const BLOB_VERSION: u8 = 2;
const BLOB_HEADER_LEN: usize = 4 + 1 + 8 + 8 + 4 + 8 + 8;

fn le_u64s(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
        .collect()
}

fn le_u32s(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap_or_default()))
        .collect()
}

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
    expiry_base: u32,
    keys: Vec<u64>,
    expiry_codes: Vec<u16>,
    bucket_bits: u32,
    bucket_starts: Vec<u32>,
    not_before: Vec<(u64, u32)>,
    /// `seq` and `generated_at` when the arrays were built.
    base_seq: u64,
    base_generated_at: i64,
    /// Entries added by deltas since the arrays were built: sorted, one per key.
    recent: Vec<Entry>,
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
    fn expiry(&self, i: usize) -> u32 {
        let code = self.expiry_codes.get(i).copied().unwrap_or(0);
        let at = u64::from(self.expiry_base) + wire::float_seconds(code, SET_MANTISSA_BITS);
        u32::try_from(at).unwrap_or(u32::MAX)
    }

    /// The position of `key`: two index reads and a scan of its bucket.
    fn find(&self, key: u64) -> Option<usize> {
        let j = bucket_of(key, self.bucket_bits);
        let (lo, hi) = (
            *self.bucket_starts.get(j)? as usize,
            *self.bucket_starts.get(j + 1)? as usize,
        );
        let bucket = self.keys.get(lo..hi)?;
        if bucket.len() > SCAN_LIMIT {
            return bucket.binary_search(&key).ok().map(|i| lo + i);
        }
        let i = bucket.iter().position(|&k| k >= key)?;
        (bucket[i] == key).then_some(lo + i)
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
    fn entry(&self, key: u64) -> Option<Entry> {
        let base = self.find(key).map(|i| Entry {
            key,
            expires_at: self.expiry(i),
            not_before: self
                .not_before
                .binary_search_by_key(&key, |(k, _)| *k)
                .map_or(0, |j| self.not_before[j].1),
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
        let (keys, rest) = rest.split_at(n * 8);
        let (codes, rest) = rest.split_at(n * 2);
        let (nbf_keys, nbf_times) = rest.split_at(m * 8);
        let keys = le_u64s(keys);
        if keys.windows(2).any(|w| w[0] >= w[1]) {
            return Err(EdgeSetError::Malformed("entries not strictly sorted"));
        }
        let expiry_codes: Vec<u16> = codes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
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
        if set.not_before.windows(2).any(|w| w[0].0 >= w[1].0)
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
            .chunks_exact(16)
            .map(|c| Entry {
                key: u64::from_le_bytes(c[..8].try_into().unwrap_or_default()),
                expires_at: u32::from_le_bytes(c[8..12].try_into().unwrap_or_default()),
                not_before: u32::from_le_bytes(c[12..].try_into().unwrap_or_default()),
            })
            .collect();
        if recent.windows(2).any(|w| w[0].key >= w[1].key) {
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
mod layout_tests {
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

#[cfg(test)]
mod wire_tests {
    use super::*;

    fn xorshift(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    const AT: i64 = 1_800_000_000;

    fn sample() -> EdgeUpdate {
        let mut seed = 0x1234_5678_9abc_def1;
        let mut entries: Vec<Entry> = (0..500)
            .map(|i| Entry {
                key: xorshift(&mut seed),
                expires_at: (AT + i64::from(i) * 37 % 7_200) as u32,
                not_before: if i % 50 == 0 {
                    (AT - 100 + i64::from(i)) as u32
                } else {
                    0
                },
            })
            .collect();
        // The edges of the key space, neighbours, and the edges of time.
        let e = |key, expires_at, not_before| Entry {
            key,
            expires_at,
            not_before,
        };
        entries.extend([
            e(0, (AT + 1) as u32, 1),
            e(1, (AT - 50) as u32, 0),
            e(u64::MAX - 1, u32::MAX, 0),
            e(u64::MAX, (AT + 31_536_000) as u32, u32::MAX),
            e(1 << 40, 0, 0),
        ]);
        EdgeUpdate {
            kind: UpdateKind::Delta,
            base_seq: 7,
            seq: 9,
            generated_at: AT,
            entries,
            leeway: None,
            feed: None,
            jwks: None,
        }
    }

    fn rounded(update: &EdgeUpdate) -> Vec<Entry> {
        let mut entries = update.entries.clone();
        sort_and_merge(&mut entries);
        for e in &mut entries {
            e.expires_at = wire_expiry(update.generated_at, e.expires_at);
        }
        entries
    }

    #[test]
    fn updates_round_trip_with_expiries_rounded_up_and_bytes_stable() {
        for update in [
            sample(),
            EdgeUpdate {
                entries: Vec::new(),
                ..sample()
            },
            EdgeUpdate {
                entries: sample().entries[..1].to_vec(),
                kind: UpdateKind::Snapshot,
                base_seq: 0,
                ..sample()
            },
        ] {
            let bytes = update.encode();
            let back = EdgeUpdate::decode(&bytes, 1_000).unwrap();
            assert_eq!(back.entries, rounded(&update));
            assert_eq!(
                (back.kind, back.base_seq, back.seq, back.generated_at),
                (
                    update.kind,
                    update.base_seq,
                    update.seq,
                    update.generated_at
                )
            );
            assert_eq!(back.encode(), bytes, "one update, one encoding");
        }
    }

    #[test]
    fn expiries_are_never_rounded_down() {
        let base = AT as u32;
        for expires_at in [
            0,
            1,
            base - 1,
            base,
            base + 1,
            base + 511,
            base + 512,
            base + 513,
        ]
        .into_iter()
        .chain((0..20_000).map(|i| base + i * 997))
        .chain([u32::MAX - 1, u32::MAX])
        {
            let sent = wire_expiry(AT, expires_at);
            assert!(sent >= expires_at, "{expires_at} -> {sent}");
            // Late by at most 1/256 of the time left, or lifted to generated_at.
            let left = expires_at.saturating_sub(base);
            assert!(
                sent - expires_at.max(base) <= left / 256,
                "{expires_at} -> {sent}"
            );
        }
        assert_eq!(wire_expiry(AT, base + 3_600), base + 3_600);
        assert_eq!(wire_expiry(AT, base + 3_601), base + 3_608);
        assert_eq!(wire_expiry(AT, base - 10), base);
        assert_eq!(wire_expiry(AT, u32::MAX), u32::MAX);
        // generated_at outside u32 is clamped on both sides alike.
        assert_eq!(wire_expiry(-5, 100), 100);
        assert_eq!(wire_expiry(i64::MAX, 100), u32::MAX);
    }

    #[test]
    fn every_truncation_and_extension_is_refused() {
        let bytes = sample().encode();
        for cut in 0..bytes.len() {
            assert!(
                EdgeUpdate::decode(&bytes[..cut], 1_000).is_err(),
                "cut {cut}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(EdgeUpdate::decode(&longer, 1_000).is_err());
    }

    #[test]
    fn a_flipped_bit_is_refused_or_reads_as_another_canonical_update() {
        let bytes = sample().encode();
        let mut refused = 0;
        for i in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[i / 8] ^= 1 << (i % 8);
            match EdgeUpdate::decode(&flipped, 1_000) {
                Ok(update) => assert_eq!(update.encode(), flipped, "bit {i}"),
                Err(_) => refused += 1,
            }
        }
        assert!(refused > 0);
    }

    /// A payload with a hand-made bit stream.
    fn crafted(generated_at: i64, count: u64, nbf: &[(u64, u64)], body: &[(u64, u32)]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[VERSION, 0]);
        out.extend_from_slice(&0u64.to_le_bytes());
        out.extend_from_slice(&1u64.to_le_bytes());
        out.extend_from_slice(&generated_at.to_le_bytes());
        wire::put_varint(&mut out, count);
        wire::put_varint(&mut out, nbf.len() as u64);
        for &(gap, t) in nbf {
            wire::put_varint(&mut out, gap);
            wire::put_varint(&mut out, t);
        }
        let mut bits = wire::BitWriter::new(out);
        for &(value, width) in body {
            if width == u32::MAX {
                bits.put_unary(value);
            } else {
                bits.put(value, width);
            }
        }
        bits.finish()
    }

    const UNARY: u32 = u32::MAX;

    #[test]
    fn malformed_payloads_are_each_refused_with_a_reason() {
        let malformed = |bytes: &[u8], max: u64| match EdgeUpdate::decode(bytes, max) {
            Err(EdgeSetError::Malformed(why)) => why,
            other => panic!("{other:?}"),
        };
        // A well-formed one-entry payload, to change one thing at a time.
        let k1 = u64::from(wire::rice_k(1));
        let good = crafted(AT, 1, &[], &[(0, UNARY), (5, k1 as u32), (60, 13)]);
        assert_eq!(EdgeUpdate::decode(&good, 10).unwrap().entries[0].key, 5);

        let mut bad = good.clone();
        bad[0] = b'X';
        assert_eq!(malformed(&bad, 10), "bad magic");
        let mut v1 = good.clone();
        v1[4] = 1;
        assert_eq!(malformed(&v1, 10), "unsupported version");
        let mut kind = good.clone();
        kind[5] = 2;
        assert_eq!(malformed(&kind, 10), "unknown update kind");
        let mut backwards = good.clone();
        backwards[5] = 1;
        backwards[6] = 5;
        assert_eq!(malformed(&backwards, 10), "delta ends before it starts");
        assert_eq!(
            EdgeUpdate::decode(&good, 0),
            Err(EdgeSetError::TooManyEntries(1))
        );
        // A huge declared count on a short input: refused before any allocation.
        let huge = crafted(AT, 1 << 40, &[], &[(0, UNARY)]);
        assert_eq!(malformed(&huge, u64::MAX), "truncated");
        // Non-minimal count varint.
        let mut long = good[..HEADER_LEN].to_vec();
        long.extend_from_slice(&[0x81, 0x00]);
        long.extend_from_slice(&good[HEADER_LEN + 1..]);
        assert_eq!(malformed(&long, 10), "non-minimal varint");
        // Not-befores: more than entries, past the count, zero.
        let two = |nbf: &[(u64, u64)]| {
            crafted(
                AT,
                2,
                nbf,
                &[(0, UNARY), (5, 62), (60, 13), (0, UNARY), (5, 62), (60, 13)],
            )
        };
        assert!(EdgeUpdate::decode(&two(&[(1, 0)]), 10).is_ok());
        assert_eq!(
            malformed(&two(&[(0, 0), (0, 0), (0, 0)]), 10),
            "more not-befores than entries"
        );
        assert_eq!(
            malformed(&two(&[(2, 0)]), 10),
            "not-before index out of range"
        );
        assert_eq!(
            malformed(&two(&[(0, 0), (1, 0)]), 10),
            "not-before index out of range"
        );
        assert_eq!(
            malformed(&two(&[(0, wire::zigzag(-AT))]), 10),
            "time out of range"
        );
        assert_eq!(
            malformed(&two(&[(0, wire::zigzag(1 << 40))]), 10),
            "time out of range"
        );
        // A key past 2^64: the last possible key, then one more.
        let over = crafted(
            AT,
            2,
            &[],
            &[
                (3, UNARY),
                ((1 << 62) - 1, 62),
                (60, 13),
                (0, UNARY),
                (0, 62),
                (60, 13),
            ],
        );
        assert_eq!(malformed(&over, 10), "key out of range");
        // A quotient past what k bits of remainder can carry.
        let far = crafted(AT, 1, &[], &[(2, UNARY), (0, 63), (60, 13)]);
        assert_eq!(malformed(&far, 10), "key gap out of range");
        // Two expiry codes for u32::MAX: only the first is canonical.
        let near = i64::from(u32::MAX) - 10;
        let first = wire::expiry_code(10);
        let ok = crafted(near, 1, &[], &[(0, UNARY), (5, 63), (u64::from(first), 13)]);
        assert_eq!(
            EdgeUpdate::decode(&ok, 10).unwrap().entries[0].expires_at,
            u32::MAX
        );
        let next = crafted(
            near,
            1,
            &[],
            &[(0, UNARY), (5, 63), (u64::from(first) + 1, 13)],
        );
        assert_eq!(malformed(&next, 10), "non-canonical expiry");
        // Padding: a one bit, or a whole extra byte.
        let mut padded = good.clone();
        *padded.last_mut().unwrap() |= 0x80;
        assert_eq!(malformed(&padded, 10), "non-zero padding");
        let mut extra = good.clone();
        extra.push(0);
        assert_eq!(malformed(&extra, 10), "trailing bytes");
    }

    #[test]
    fn a_million_uniform_keys_take_under_eight_bytes_each_and_any_keys_stay_bounded() {
        let mut seed = 7;
        let uniform: Vec<Entry> = (0..1_000_000)
            .map(|i| Entry {
                key: xorshift(&mut seed),
                expires_at: (AT + 60 + i % 3_600) as u32,
                not_before: 0,
            })
            .collect();
        let update = |entries| EdgeUpdate {
            kind: UpdateKind::Snapshot,
            base_seq: 0,
            seq: 1,
            generated_at: AT,
            entries,
            leeway: None,
            feed: None,
            jwks: None,
        };
        let bytes = update(uniform).encode();
        assert!(bytes.len() < 7_500_000, "{} bytes", bytes.len());
        assert_eq!(
            EdgeUpdate::decode(&bytes, 1_000_000).unwrap().entries.len(),
            1_000_000
        );
        // Worst case: all keys bunched at one end and one far away, far expiries.
        let mut skewed: Vec<Entry> = (0..999_999)
            .map(|i| Entry {
                key: i,
                expires_at: u32::MAX - i as u32,
                not_before: 0,
            })
            .collect();
        skewed.push(Entry {
            key: u64::MAX,
            expires_at: 0,
            not_before: 0,
        });
        let bytes = update(skewed).encode();
        assert!(bytes.len() <= HEADER_LEN + 10 + 1_000_000 * (44 + 3 + 13) / 8);
        assert_eq!(
            EdgeUpdate::decode(&bytes, 1_000_000).unwrap().entries.len(),
            1_000_000
        );
    }

    /// A set holding exactly `keys` (any order, repeats merged), expiring at `AT + 60`.
    fn set_of_keys(keys: &[u64]) -> RevocationSet {
        let mut set = RevocationSet::new();
        let entries = keys
            .iter()
            .map(|&key| Entry {
                key,
                expires_at: (AT + 60) as u32,
                not_before: 0,
            })
            .collect();
        set.apply(EdgeUpdate {
            kind: UpdateKind::Snapshot,
            base_seq: 0,
            seq: 1,
            generated_at: AT,
            entries,
            leeway: None,
            feed: None,
            jwks: None,
        })
        .unwrap();
        set
    }

    #[test]
    fn the_bucket_index_finds_what_binary_search_finds_in_any_spread() {
        let mut seed = 99;
        let mut sets: Vec<Vec<u64>> = vec![
            (0..1_000).map(|_| xorshift(&mut seed)).collect(),
            (0..100_000).map(|_| xorshift(&mut seed)).collect(),
            (0..5_000).collect(),
            // Clustered: dense runs far apart (long buckets, bisected), and a long tail.
            (0..3_000)
                .map(|i| (i % 3) << 62 | i)
                .chain((0..40).map(|i| u64::MAX - (1 << i)))
                .collect(),
            (0..64).map(|i| 1u64 << i).collect(),
            vec![0, u64::MAX],
        ];
        // Every size around the bucket-count steps, small sets included.
        sets.extend((0..40).map(|n| (0..n).map(|_| xorshift(&mut seed)).collect()));
        for mut keys in sets {
            keys.sort_unstable();
            keys.dedup();
            let set = set_of_keys(&keys);
            assert_eq!(set.keys, keys);
            let mut probes: Vec<u64> = keys.clone();
            probes.extend(keys.iter().map(|k| k.wrapping_add(1)));
            probes.extend(keys.iter().map(|k| k.wrapping_sub(1)));
            probes.extend((0..2_000).map(|_| xorshift(&mut seed)));
            probes.extend([0, 1, u64::MAX - 1, u64::MAX]);
            for key in probes {
                assert_eq!(set.find(key), keys.binary_search(&key).ok(), "{key}");
            }
        }
    }

    #[test]
    fn recent_entries_and_rebuilds_hold_what_one_merged_set_would() {
        use std::collections::BTreeMap;
        let mut seed = 11;
        let mut set = RevocationSet::new();
        let mut reference: BTreeMap<u64, Entry> = BTreeMap::new();
        let mut rebuilds = 0;
        for round in 0..300u64 {
            let size = match round % 9 {
                0 => 3_000,
                1 => 0,
                _ => (xorshift(&mut seed) % 40) as usize,
            };
            let entries: Vec<Entry> = (0..size)
                .map(|_| Entry {
                    // Half from a small pool, so keys repeat across updates and merge.
                    key: if xorshift(&mut seed).is_multiple_of(2) {
                        xorshift(&mut seed) % 2_000
                    } else {
                        xorshift(&mut seed)
                    },
                    expires_at: (AT + 1_000 + (xorshift(&mut seed) % 100_000) as i64) as u32,
                    not_before: if xorshift(&mut seed).is_multiple_of(5) {
                        (AT - (xorshift(&mut seed) % 1_000) as i64) as u32
                    } else {
                        0
                    },
                })
                .collect();
            let snapshot = round % 100 == 0;
            if snapshot {
                reference.clear();
            }
            for e in &entries {
                reference
                    .entry(e.key)
                    .and_modify(|r| r.merge(e))
                    .or_insert(*e);
            }
            let generation = set.generation();
            set.apply(EdgeUpdate {
                kind: if snapshot {
                    UpdateKind::Snapshot
                } else {
                    UpdateKind::Delta
                },
                base_seq: if snapshot { 0 } else { round },
                seq: round + 1,
                generated_at: AT + round as i64,
                entries,
                leeway: None,
                feed: None,
                jwks: None,
            })
            .unwrap();
            rebuilds += usize::from(set.generation() != generation);
            assert!(set.recent.len() <= RECENT_MAX);
            assert_eq!(set.len(), reference.len(), "round {round}");
            for (&key, r) in &reference {
                let got = set.entry(key).unwrap();
                assert_eq!(got.not_before, r.not_before, "round {round}");
                let left = r.expires_at - set.expiry_base;
                assert!(
                    got.expires_at >= r.expires_at && got.expires_at - r.expires_at <= left / 1024,
                    "round {round}: {} held as {}",
                    r.expires_at,
                    got.expires_at
                );
            }
            for _ in 0..200 {
                let key = xorshift(&mut seed);
                assert_eq!(set.entry(key).is_some(), reference.contains_key(&key));
            }
        }
        // Snapshots, large deltas and a full recent part all rebuilt; most deltas did not.
        assert!((6..150).contains(&rebuilds), "{rebuilds} rebuilds");
    }

    #[test]
    fn recent_entries_travel_apart_and_are_refused_when_they_do_not_fit() {
        let mut seed = 3;
        let keys: Vec<u64> = (0..1_000).map(|_| xorshift(&mut seed)).collect();
        let mut poller = set_of_keys(&keys);
        let delta: Vec<Entry> = (0..10)
            .map(|i| Entry {
                key: if i < 3 { keys[i] } else { xorshift(&mut seed) },
                expires_at: (AT + 7_200) as u32,
                not_before: if i == 5 { AT as u32 } else { 0 },
            })
            .collect();
        let generation = poller.generation();
        poller
            .apply(EdgeUpdate {
                kind: UpdateKind::Delta,
                base_seq: 1,
                seq: 2,
                generated_at: AT + 5,
                entries: delta,
                leeway: None,
                feed: None,
                jwks: None,
            })
            .unwrap();
        assert_eq!(poller.generation(), generation, "kept apart, no rebuild");
        assert_eq!(poller.len(), 1_007);
        // A worker holding the arrays loads the recent part and holds what the poller does.
        let mut worker = RevocationSet::from_bytes(&poller.to_bytes(), 2_000).unwrap();
        assert_eq!(worker.seq(), 1);
        let recent = poller.recent_to_bytes();
        worker.load_recent(&recent, 2_000).unwrap();
        assert_eq!((worker.seq(), worker.generated_at()), (2, AT + 5));
        assert_eq!(worker.to_snapshot(), poller.to_snapshot());
        assert_eq!(worker.len(), 1_007);
        // Refused, leaving the worker as it was: over the limit, truncated, out of order.
        let before = worker.clone();
        assert_eq!(
            worker.load_recent(&recent, 1_006),
            Err(EdgeSetError::TooManyEntries(1_007))
        );
        for cut in 0..recent.len() {
            assert!(worker.load_recent(&recent[..cut], 2_000).is_err());
        }
        let mut swapped = recent.clone();
        let at = RECENT_HEADER_LEN;
        let (a, b) = swapped[at..at + 32].split_at_mut(16);
        a.swap_with_slice(b);
        assert!(worker.load_recent(&swapped, 2_000).is_err());
        assert!(worker.holds_the_same_as(&before));
    }

    #[test]
    fn buckets_hold_two_to_four_keys_on_average_at_any_size() {
        for n in [4usize, 5, 7, 8, 999, 1_000, 1_024, 65_537, 1_000_000] {
            let buckets = 1usize << bucket_bits(n);
            let mean = n as f64 / buckets as f64;
            assert!((2.0..4.0).contains(&mean), "{n}: {mean}");
        }
        let mut seed = 7;
        let keys: Vec<u64> = (0..1_000_000).map(|_| xorshift(&mut seed)).collect();
        let set = set_of_keys(&keys);
        // 8 bytes a key, 2 an expiry, 4 per bucket: about 11 bytes an entry, under 12.
        let per_entry = set.memory_bytes() as f64 / set.len() as f64;
        assert!(per_entry < 11.1, "{per_entry}");
    }

    #[test]
    fn in_memory_expiries_are_rounded_up_by_under_a_2048th_and_kept_through_deltas() {
        let mut seed = 5;
        let mut set = RevocationSet::new();
        let snapshot: Vec<Entry> = (0..5_000)
            .map(|i| Entry {
                key: xorshift(&mut seed),
                expires_at: (AT + (i * i) % 40_000_000) as u32,
                not_before: 0,
            })
            .collect();
        set.apply(EdgeUpdate {
            kind: UpdateKind::Snapshot,
            base_seq: 0,
            seq: 1,
            generated_at: AT,
            entries: snapshot.clone(),
            leeway: None,
            feed: None,
            jwks: None,
        })
        .unwrap();
        let check = |set: &RevocationSet, given: &[Entry]| {
            for e in given {
                let i = set.find(e.key).unwrap();
                let held = set.expiry(i);
                let left = e.expires_at - set.expiry_base;
                assert!(held >= e.expires_at, "{} -> {held}: earlier", e.expires_at);
                assert!(
                    held - e.expires_at <= left / 2048,
                    "{} -> {held}",
                    e.expires_at
                );
            }
        };
        check(&set, &snapshot);
        let held: Vec<u32> = (0..set.len()).map(|i| set.expiry(i)).collect();
        // A delta too large to stay apart rebuilds the arrays at the same base: nothing
        // moves. An expiry before the base comes back as the base: later, never earlier.
        let mut delta = vec![
            Entry {
                key: 3,
                expires_at: u32::MAX,
                not_before: 0,
            },
            Entry {
                key: 4,
                expires_at: 10,
                not_before: 0,
            },
        ];
        delta.extend((0..RECENT_MAX as u64).map(|i| Entry {
            key: 5 + i,
            expires_at: (AT + 60) as u32,
            not_before: 0,
        }));
        let generation = set.generation();
        set.apply(EdgeUpdate {
            kind: UpdateKind::Delta,
            base_seq: 1,
            seq: 2,
            generated_at: AT + 100,
            entries: delta,
            leeway: None,
            feed: None,
            jwks: None,
        })
        .unwrap();
        assert_ne!(set.generation(), generation, "rebuilt");
        assert!(set.recent.is_empty());
        check(&set, &snapshot);
        assert_eq!(set.expiry(set.find(3).unwrap()), u32::MAX);
        assert_eq!(set.expiry(set.find(4).unwrap()), set.expiry_base);
        let keys: std::collections::HashSet<u64> = snapshot.iter().map(|e| e.key).collect();
        let again: Vec<u32> = (0..set.len())
            .filter(|&i| keys.contains(&set.keys[i]))
            .map(|i| set.expiry(i))
            .collect();
        assert_eq!(again, held);
    }

    #[test]
    fn the_shared_blob_is_the_set_exactly_and_refuses_anything_else() {
        let mut set = RevocationSet::new();
        set.apply(EdgeUpdate {
            kind: UpdateKind::Snapshot,
            ..sample()
        })
        .unwrap();
        let blob = set.to_bytes();
        assert_eq!(
            blob.len(),
            BLOB_HEADER_LEN + set.len() * 10 + set.not_before.len() * 12
        );
        assert!(
            RevocationSet::from_bytes(&blob, 1_000)
                .unwrap()
                .holds_the_same_as(&set)
        );
        assert!(
            RevocationSet::from_bytes(&RevocationSet::new().to_bytes(), 0)
                .unwrap()
                .holds_the_same_as(&RevocationSet::new())
        );
        assert_eq!(
            RevocationSet::from_bytes(&blob, 10).err(),
            Some(EdgeSetError::TooManyEntries(set.len() as u64))
        );
        for cut in 0..blob.len() {
            assert!(RevocationSet::from_bytes(&blob[..cut], 1_000).is_err());
        }
        let mut longer = blob.clone();
        longer.extend_from_slice(&[0; 12]);
        assert!(RevocationSet::from_bytes(&longer, 1_000).is_err());
        let at = BLOB_HEADER_LEN;
        let mut unsorted = blob.clone();
        unsorted[at..at + 16].rotate_left(8);
        assert!(RevocationSet::from_bytes(&unsorted, 1_000).is_err());
        let mut late = blob.clone();
        let codes_at = at + set.len() * 8;
        late[codes_at..codes_at + 2].copy_from_slice(&u16::MAX.to_le_bytes());
        assert!(RevocationSet::from_bytes(&late, 1_000).is_err());
        let nbf_at = at + set.len() * 10;
        let mut stray = blob.clone();
        stray[nbf_at + 3] ^= 1;
        assert!(RevocationSet::from_bytes(&stray, 1_000).is_err());
        let mut zero = blob.clone();
        let times = nbf_at + set.not_before.len() * 8;
        zero[times..times + 4].fill(0);
        assert!(RevocationSet::from_bytes(&zero, 1_000).is_err());
        let mut counts = blob.clone();
        counts[at - 8..at].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(RevocationSet::from_bytes(&counts, u64::MAX).is_err());
    }
}
