//! Signed revocation events: what a region broadcasts when it revokes something.

use serde::{Deserialize, Serialize};

use crate::JoseError;
use crate::envelope::{self, TYP_REVOCATION};
use crate::keys::{Keyring, SigningKey};

/// Longest accepted signed event (an ML-DSA-65 signature is 3309 bytes).
pub const MAX_EVENT_LEN: usize = 8 * 1024;

/// What a revocation matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// One token, by `jti`.
    Jti,
    /// Every token of a subject issued at or before `not_before`.
    Sub,
    /// Every token signed by a key, by `kid`.
    Kid,
    /// Every token of a refresh session, by `sid`.
    Sid,
}

impl Kind {
    /// All kinds, in wire order.
    pub const ALL: [Kind; 4] = [Kind::Jti, Kind::Sub, Kind::Kid, Kind::Sid];

    /// The lowercase name (`jti`, `sub`, `kid`, `sid`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Jti => "jti",
            Kind::Sub => "sub",
            Kind::Kid => "kid",
            Kind::Sid => "sid",
        }
    }

    /// Parses a lowercase name.
    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// Wire tag of the kind.
    pub fn tag(self) -> u8 {
        match self {
            Kind::Jti => 1,
            Kind::Sub => 2,
            Kind::Kid => 3,
            Kind::Sid => 4,
        }
    }
}

/// Whether a revocation with `not_before` covers a token issued at `iat`.
///
/// `None` covers every token; `Some(t)` covers tokens issued at or before second `t`
/// (a token issued in the same second as the revocation is covered, so nothing issued
/// before it can slip through a one-second clock granularity).
pub fn covers(not_before: Option<i64>, iat: i64) -> bool {
    not_before.is_none_or(|t| iat <= t)
}

/// The not-before that covers more tokens: `None` (every token) beats any time, a later
/// time beats an earlier one.
///
/// This and [`strongest`] are the one coverage rule of the project: the control plane's
/// caches, its SQLite fallback, refresh sessions and the edge set all decide with them
/// which of several live revocations of one identifier counts.
pub fn stronger_not_before(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (None, _) | (_, None) => None,
        (Some(a), Some(b)) => Some(a.max(b)),
    }
}

/// Among live revocations of one `(kind, value)`, the one that covers every token any of
/// them covers: no not-before first, then the latest not-before, then the newest.
///
/// A subject revoked at T1 and again at T3 is covered up to T3: a token or session
/// created at T2 between them is revoked, whichever event a lookup meets first.
pub fn strongest<'e>(
    events: impl IntoIterator<Item = &'e RevocationEvent>,
) -> Option<&'e RevocationEvent> {
    events
        .into_iter()
        .max_by_key(|e| (e.not_before.map_or(i64::MAX, |t| t), e.issued_at))
}

/// One revocation, as signed and broadcast.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationEvent {
    /// Unique id; applying an event twice is a no-op.
    pub event_id: String,
    /// What is revoked.
    pub kind: Kind,
    /// The `jti`, `sub`, `kid` or `sid` value.
    pub value: String,
    /// For `sub`: tokens issued at or before this second are revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<i64>,
    /// When no token the event can match is valid any more.
    pub expires_at: i64,
    /// When the revocation was made.
    pub issued_at: i64,
    /// The region that made it.
    pub origin: String,
    /// Random nonce (hex), so two equal revocations still differ.
    pub nonce: String,
    /// `kid` of the ML-DSA-65 key that signs the event.
    pub kid: String,
}

impl RevocationEvent {
    /// The deterministic bytes that are signed: compact JSON, members in declaration order.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Signs the event with an ML-DSA-65 key as a compact JWS.
    pub fn sign(&self, key: &SigningKey) -> Result<String, JoseError> {
        envelope::seal(key, TYP_REVOCATION, &self.canonical_bytes())
    }

    /// Verifies a signed event against trusted keys and decodes it; the payload must be
    /// in canonical form and name the key that signed it.
    pub fn verify(token: &str, keys: &Keyring) -> Result<RevocationEvent, JoseError> {
        let (_, payload) = envelope::open(token, &[TYP_REVOCATION], keys, MAX_EVENT_LEN)?;
        let event: RevocationEvent = crate::json::from_slice(&payload, "payload")?;
        if event.canonical_bytes() != payload {
            return Err(JoseError::Malformed(
                "event payload is not in canonical form",
            ));
        }
        if keys.get(&event.kid).is_none() {
            return Err(JoseError::UnknownKey(event.kid));
        }
        Ok(event)
    }

    /// True when this event revokes a token with these identifiers.
    pub fn matches(&self, ids: &TokenIds<'_>) -> bool {
        ids.value(self.kind) == Some(self.value.as_str()) && covers(self.not_before, ids.iat)
    }
}

/// The identifiers of a token that revocations can match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenIds<'a> {
    /// `jti`.
    pub jti: &'a str,
    /// `sub`.
    pub sub: &'a str,
    /// `kid` of the signing key.
    pub kid: &'a str,
    /// `sid`, if the token belongs to a session.
    pub sid: Option<&'a str>,
    /// `iat`.
    pub iat: i64,
}

impl<'a> TokenIds<'a> {
    /// The value of the identifier of `kind`.
    pub fn value(&self, kind: Kind) -> Option<&'a str> {
        match kind {
            Kind::Jti => Some(self.jti),
            Kind::Sub => Some(self.sub),
            Kind::Kid => Some(self.kid),
            Kind::Sid => self.sid,
        }
    }
}
