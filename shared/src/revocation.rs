//! Signed revocation events: what a region broadcasts when it revokes something.

// Parses untrusted input: no input may panic it.
#![deny(clippy::indexing_slicing, clippy::unwrap_used)]

use serde::{Deserialize, Serialize};

use crate::envelope::{self, TYP_REVOCATION, TYP_REVOCATION_BATCH};
use crate::keys::{Keyring, SigningKey};
use crate::merkle::{self, Tree};
use crate::{JoseError, b64};

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

    /// Signs the event alone with an ML-DSA-65 key as a compact JWS
    /// (`typ: revocation-event+jwt`). [`sign_batch`] signs many with one signature.
    pub fn sign(&self, key: &SigningKey) -> Result<String, JoseError> {
        envelope::seal(key, TYP_REVOCATION, &self.canonical_bytes())
    }

    /// Verifies a signed event, in either form (a compact JWS of its own, or a member of a
    /// signed batch, see [`sign_batch`]), against trusted keys and decodes it; the event
    /// must be in canonical form and its `kid` must be the key that signed it.
    pub fn verify(token: &str, keys: &Keyring) -> Result<RevocationEvent, JoseError> {
        RevocationEvent::verify_with(token, keys, None).and_then(Verified::own_kid)
    }

    /// [`RevocationEvent::verify`] that skips the signature of a batch root `roots`
    /// already verified (the key that signed it must still be in `keys`), so each other
    /// event of that batch costs only its inclusion proof; roots it verifies are added.
    pub fn verify_cached(
        token: &str,
        keys: &Keyring,
        roots: &mut VerifiedRoots,
    ) -> Result<RevocationEvent, JoseError> {
        RevocationEvent::verify_with(token, keys, Some(roots)).and_then(Verified::own_kid)
    }

    /// [`RevocationEvent::verify_cached`] that leaves the comparison of the event's `kid`
    /// with its signer's to the caller (who may count it apart), and names the signer.
    pub fn verify_signer(
        token: &str,
        keys: &Keyring,
        roots: &mut VerifiedRoots,
    ) -> Result<Verified, JoseError> {
        RevocationEvent::verify_with(token, keys, Some(roots))
    }

    fn verify_with(
        token: &str,
        keys: &Keyring,
        roots: Option<&mut VerifiedRoots>,
    ) -> Result<Verified, JoseError> {
        let (payload, signer) = if token.starts_with('{') {
            open_batch_member(token, keys, roots)?
        } else {
            let opened = envelope::open_with_header(token, &[TYP_REVOCATION], keys, MAX_EVENT_LEN)?;
            let signer = opened.header.kid.ok_or(JoseError::MissingKid)?;
            (opened.payload, signer)
        };
        let event: RevocationEvent = crate::json::from_slice(&payload, "payload")?;
        if event.canonical_bytes() != payload {
            return Err(JoseError::Malformed(
                "event payload is not in canonical form",
            ));
        }
        if keys.get(&event.kid).is_none() {
            return Err(JoseError::UnknownKey(event.kid));
        }
        Ok(Verified { event, signer })
    }

    /// What a signed event (either form) claims, read WITHOUT checking its signature:
    /// the signer's `kid` its header names, and the event. Only for refusing cheaply what
    /// verification would let through and the caller refuses anyway (an expired event,
    /// one already applied, one claiming another key or region), never for accepting.
    /// `None` when it is not even well formed.
    pub fn claimed(token: &str) -> Option<(String, RevocationEvent)> {
        #[derive(Deserialize)]
        struct Kid {
            kid: String,
        }
        if token.len() > MAX_EVENT_LEN {
            return None;
        }
        let (protected, event) = if token.starts_with('{') {
            let jws: FlattenedJws = serde_json::from_str(token).ok()?;
            (jws.protected, b64::decode(&jws.header.event, "event").ok()?)
        } else {
            let mut parts = token.split('.');
            let (Some(protected), Some(payload), Some(_), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return None;
            };
            (protected.to_owned(), b64::decode(payload, "payload").ok()?)
        };
        let header = b64::decode(&protected, "protected header").ok()?;
        let kid = serde_json::from_slice::<Kid>(&header).ok()?.kid;
        Some((kid, serde_json::from_slice(&event).ok()?))
    }

    /// True when this event revokes a token with these identifiers.
    pub fn matches(&self, ids: &TokenIds<'_>) -> bool {
        ids.value(self.kind) == Some(self.value.as_str()) && covers(self.not_before, ids.iat)
    }
}

/// A verified event and the `kid` of the key whose signature covers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The event.
    pub event: RevocationEvent,
    /// The signer's `kid` (the JWS header's, or the batch root's).
    pub signer: String,
}

impl Verified {
    /// The event, when it names the key that signed it: a trusted key cannot sign events
    /// in another key's name.
    pub fn own_kid(self) -> Result<RevocationEvent, JoseError> {
        if self.event.kid == self.signer {
            Ok(self.event)
        } else {
            Err(JoseError::Malformed(
                "the event's kid is not the key that signed it",
            ))
        }
    }
}

/// The Merkle tree a batch root names (RFC 9162 with SHA-256).
const BATCH_TREE: &str = "rfc9162-sha256";

/// Most events one batch signature covers.
pub const MAX_BATCH: usize = 1 << 16;

/// The signed payload of a batch: the Merkle root over the events' canonical bytes.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchRoot {
    tree: String,
    size: u64,
    root: String,
}

/// What travels with each event of a batch, in the JWS's unprotected header.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchMember {
    /// The event's canonical bytes, base64url.
    event: String,
    index: u64,
    /// RFC 9162 inclusion proof, base64url hashes, leaf to root.
    proof: Vec<String>,
}

/// A flattened JWS JSON serialization (RFC 7515 7.2.2) with the member in `header`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FlattenedJws {
    protected: String,
    payload: String,
    signature: String,
    header: BatchMember,
}

/// Signs a batch of events with ONE ML-DSA-65 signature and returns each event's signed
/// form, in order. Each stands alone: a flattened JWS JSON (RFC 7515 7.2.2) whose
/// protected header has `typ: revocation-batch+jws`, whose payload is
/// `{"tree":"rfc9162-sha256","size":N,"root":"<b64url>"}` (the RFC 9162 Merkle tree over
/// the events' canonical bytes), and whose unprotected `header` carries this event's
/// canonical bytes (`event`, base64url), its `index` and its inclusion `proof`. A
/// consumer verifies the JWS with any JOSE library, then the proof, then decodes the
/// event ([`RevocationEvent::verify`] does all three).
pub fn sign_batch(events: &[RevocationEvent], key: &SigningKey) -> Result<Vec<String>, JoseError> {
    if events.is_empty() || events.len() > MAX_BATCH {
        return Err(JoseError::Malformed("a batch holds 1 to 65536 events"));
    }
    let bytes: Vec<Vec<u8>> = events
        .iter()
        .map(RevocationEvent::canonical_bytes)
        .collect();
    let tree = Tree::new(bytes.iter().map(|b| merkle::leaf_hash(b)).collect())
        .ok_or(JoseError::Malformed("an empty batch"))?;
    let root = BatchRoot {
        tree: BATCH_TREE.to_owned(),
        size: events.len() as u64,
        root: b64::encode(&tree.root()),
    };
    let root = serde_json::to_vec(&root).map_err(|_| JoseError::SigningFailed)?;
    let compact = envelope::seal(key, TYP_REVOCATION_BATCH, &root)?;
    let mut parts = compact.split('.');
    let (Some(protected), Some(payload), Some(signature)) =
        (parts.next(), parts.next(), parts.next())
    else {
        return Err(JoseError::SigningFailed);
    };
    bytes
        .iter()
        .enumerate()
        .map(|(index, event)| {
            let proof = tree.proof(index).ok_or(JoseError::SigningFailed)?;
            let member = BatchMember {
                event: b64::encode(event),
                index: index as u64,
                proof: proof.iter().map(|h| b64::encode(h)).collect(),
            };
            join_parts(protected, payload, signature, &member).ok_or(JoseError::SigningFailed)
        })
        .collect()
}

/// Splits a batch member (see [`sign_batch`]) into the signed root its batch shares, as
/// a compact JWS, and the member's own part (the `header` JSON). Storage keeps the root
/// once per batch; [`join_batch_member`] puts the two back together byte for byte.
/// `None` for anything that is not a well-formed batch member (nothing is verified).
pub fn split_batch_member(signed: &str) -> Option<(String, String)> {
    if !signed.starts_with('{') {
        return None;
    }
    let jws: FlattenedJws = serde_json::from_str(signed).ok()?;
    let joined = join_parts(&jws.protected, &jws.payload, &jws.signature, &jws.header)?;
    // Only a member in the exact form this module writes splits: joining must give it back.
    if joined != signed {
        return None;
    }
    let root = format!("{}.{}.{}", jws.protected, jws.payload, jws.signature);
    Some((root, serde_json::to_string(&jws.header).ok()?))
}

/// The batch member [`split_batch_member`] split; `None` when the parts are not one.
pub fn join_batch_member(root: &str, member: &str) -> Option<String> {
    let mut parts = root.split('.');
    let (Some(protected), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let member: BatchMember = serde_json::from_str(member).ok()?;
    join_parts(protected, payload, signature, &member)
}

fn join_parts(
    protected: &str,
    payload: &str,
    signature: &str,
    member: &BatchMember,
) -> Option<String> {
    // Borrowed twin of `FlattenedJws`: same members, same order, same bytes.
    #[derive(Serialize)]
    struct Joined<'a> {
        protected: &'a str,
        payload: &'a str,
        signature: &'a str,
        header: &'a BatchMember,
    }
    serde_json::to_string(&Joined {
        protected,
        payload,
        signature,
        header: member,
    })
    .ok()
}

/// Checks a batch member's signature and inclusion proof; returns the event's bytes.
/// Batch roots whose signature verified: the last [`VerifiedRoots::CAPACITY`], by the
/// SHA-256 of the signed root (compact JWS), with the key that signed each.
#[derive(Debug, Default, Clone)]
pub struct VerifiedRoots {
    seen: std::collections::VecDeque<VerifiedRoot>,
    /// Roots added so far (a copy tells whether it learnt any).
    added: u64,
}

#[derive(Debug, Clone)]
struct VerifiedRoot {
    digest: merkle::Hash,
    kid: String,
    root: merkle::Hash,
    size: u64,
}

impl VerifiedRoots {
    /// How many roots are remembered.
    pub const CAPACITY: usize = 64;

    fn get(&self, digest: &merkle::Hash, keys: &Keyring) -> Option<(merkle::Hash, u64, String)> {
        self.seen
            .iter()
            .find(|r| r.digest == *digest && keys.get(&r.kid).is_some())
            .map(|r| (r.root, r.size, r.kid.clone()))
    }

    fn insert(&mut self, root: VerifiedRoot) {
        if self.seen.len() == VerifiedRoots::CAPACITY {
            self.seen.pop_front();
        }
        self.seen.push_back(root);
        self.added += 1;
    }

    /// How many roots were ever added: a copy whose count grew learnt something to
    /// [`absorb`](VerifiedRoots::absorb) back.
    pub fn added(&self) -> u64 {
        self.added
    }

    /// Adds the roots `other` verified that this set does not hold yet (a copy taken to
    /// verify without holding a lock gives back what it learnt).
    pub fn absorb(&mut self, other: VerifiedRoots) {
        for root in other.seen {
            if !self.seen.iter().any(|r| r.digest == root.digest) {
                self.insert(root);
            }
        }
    }

    /// Number of roots remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// True when none is.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

fn open_batch_member(
    token: &str,
    keys: &Keyring,
    roots: Option<&mut VerifiedRoots>,
) -> Result<(Vec<u8>, String), JoseError> {
    if token.len() > MAX_EVENT_LEN {
        return Err(JoseError::TooLarge {
            len: token.len(),
            max: MAX_EVENT_LEN,
        });
    }
    let jws: FlattenedJws = crate::json::from_slice(token.as_bytes(), "signed event")?;
    let compact = format!("{}.{}.{}", jws.protected, jws.payload, jws.signature);
    let digest = merkle::leaf_hash(compact.as_bytes());
    let cached = roots.as_deref().and_then(|r| r.get(&digest, keys));
    let (root_hash, size, signer) = match cached {
        Some(known) => known,
        None => {
            let opened =
                envelope::open_with_header(&compact, &[TYP_REVOCATION_BATCH], keys, MAX_EVENT_LEN)?;
            let signer = opened.header.kid.ok_or(JoseError::MissingKid)?;
            let signed = opened.payload;
            let root: BatchRoot = crate::json::from_slice(&signed, "batch root")?;
            if serde_json::to_vec(&root).ok().as_deref() != Some(signed.as_slice()) {
                return Err(JoseError::Malformed("batch root is not in canonical form"));
            }
            if root.tree != BATCH_TREE {
                return Err(JoseError::Malformed("unknown batch tree"));
            }
            let root_hash: merkle::Hash = b64::decode_array(&root.root, "batch root")?;
            if let Some(roots) = roots {
                roots.insert(VerifiedRoot {
                    digest,
                    kid: signer.clone(),
                    root: root_hash,
                    size: root.size,
                });
            }
            (root_hash, root.size, signer)
        }
    };
    let member = jws.header;
    if member.proof.len() > merkle::MAX_PROOF_LEN {
        return Err(JoseError::Malformed("inclusion proof too long"));
    }
    let proof = member
        .proof
        .iter()
        .map(|h| b64::decode_array::<32>(h, "inclusion proof"))
        .collect::<Result<Vec<_>, _>>()?;
    let event = b64::decode(&member.event, "batch event")?;
    if !merkle::verify_inclusion(
        &merkle::leaf_hash(&event),
        member.index,
        size,
        &proof,
        &root_hash,
    ) {
        return Err(JoseError::BadSignature);
    }
    Ok((event, signer))
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
