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

// Decodes untrusted feed bytes on the edge: no input may panic it (the children too).
#![deny(clippy::indexing_slicing, clippy::unwrap_used)]

mod entry;
mod set;
mod update;
mod wire;

#[cfg(test)]
#[expect(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    reason = "a test fails on an unexpected input"
)]
mod tests;

pub use entry::{Entry, TokenKeys, entry_key};
pub use set::{RECENT_MAX, RevocationSet};
pub use update::{EdgeSetError, EdgeUpdate, UpdateKind, wire_expiry};

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

fn clamp_u32(t: i64) -> u32 {
    t.clamp(0, i64::from(u32::MAX)) as u32
}
