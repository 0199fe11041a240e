//! One revoked identifier as the edge holds it: its key, expiry and not-before.

use super::clamp_u32;
use crate::revocation::{Kind, RevocationEvent, TokenIds, stronger_not_before};

/// The hash of `(kind, value)` under which an entry is stored.
pub fn entry_key(kind: Kind, value: &str) -> u64 {
    use sha2::Digest;
    // Fed in two parts: no copy of the value per lookup.
    let digest: [u8; 32] = sha2::Sha256::new()
        .chain_update([kind.tag()])
        .chain_update(value.as_bytes())
        .finalize()
        .into();
    let [a, b, c, d, e, f, g, h, ..] = digest;
    u64::from_be_bytes([a, b, c, d, e, f, g, h])
}

/// A token's identifiers as the set looks them up: their [`entry_key`]s, computed once
/// per verified token (the edge keeps them with its cached verification), so each
/// request costs only the lookups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenKeys {
    /// One key per [`Kind::ALL`] entry; `None` where the token has no such identifier.
    pub(super) keys: [Option<u64>; 4],
    /// `iat`, for not-before entries.
    pub(super) iat: i64,
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

    pub(super) fn merge(&mut self, other: &Entry) {
        self.expires_at = self.expires_at.max(other.expires_at);
        // 0 is "no not-before" on the wire; the rule itself lives in `revocation`.
        let as_option = |t: u32| (t != 0).then_some(i64::from(t));
        self.not_before =
            stronger_not_before(as_option(self.not_before), as_option(other.not_before))
                .map_or(0, clamp_u32);
    }
}

pub(super) fn sort_and_merge(entries: &mut Vec<Entry>) {
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
