//! Refresh sessions: refresh-token families with rotation, reuse detection, device
//! binding (DPoP-style proofs) and forward-secret delivery of the rotated token.
//!
//! A session (`sid`) is created for a subject, optionally bound to a device key (its
//! RFC 7638 thumbprint becomes `cnf.jkt` of every access token of the session) or to a
//! plain `client_binding` string (the seed's weaker mode). Refresh tokens are opaque
//! random strings; only their SHA-256 is stored. Every refresh rotates the presented
//! token; presenting a rotated one again revokes the whole session through the signed
//! revocation path (`Kind::Sid`), stored in the same commit that marks it revoked.
//! Every write goes through the region's writer, and nothing is signed inside it.
//!
//! With `kem_public_key` the rotated token is sealed to the client's ephemeral X-Wing
//! key over the [`transcript`] of the exchange, so a recorded exchange cannot be opened
//! later once the client has dropped its ephemeral secret.
//!
//! This file holds the types and the use cases; the SQL is in `store`, the device proofs
//! in `proof` and the sealed delivery in `seal`.

mod proof;
mod seal;
mod store;

use serde_json::json;
use shared::claims::Confirmation;
use shared::kem::{self, SealedBox};
use shared::{Kind, b64, random, sha256};

use crate::region::{self, Issued, Region, check_value};
use crate::store::audit;
use crate::store::db;
use crate::time::{now, rfc3339};
use proof::{parse_device_jwk, prove, publish_proof, verify_proof};
use store::{Creation, Rotated, Rotation, Session, find_session, find_token, mark_revoked};

pub(crate) use crate::config::MAX_REFRESH_DAYS as MAX_DAYS;
pub(crate) use proof::{check_possession, record_proof};
pub use seal::transcript;

/// Longest refresh token accepted as input (ours are 46 characters).
const MAX_TOKEN_LEN: usize = 512;

/// Prefix of every refresh token, so they are recognisable in logs and scanners.
const TOKEN_PREFIX: &str = "rt_";

/// True when `token` has the form of a refresh token (access tokens are JWS).
pub(crate) fn is_refresh_token(token: &str) -> bool {
    token.starts_with(TOKEN_PREFIX)
}

/// What went wrong with a refresh-session operation.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The request itself is malformed; the message says how.
    #[error("{0}")]
    InvalidRequest(String),
    /// The refresh token was never issued here (or is garbled).
    #[error("refresh token is not known")]
    UnknownToken,
    /// The session of the refresh token has expired.
    #[error("refresh token expired at {}", rfc3339(*.0))]
    Expired(i64),
    /// The session was revoked; the message says when and how.
    #[error("{0}")]
    Revoked(String),
    /// A rotated refresh token was presented again; the session is now revoked.
    #[error("refresh token reuse detected; session revoked")]
    ReusedRefreshToken {
        /// The revoked session.
        sid: String,
        /// The sid revocation event.
        event_id: String,
    },
    /// The DPoP proof is missing, invalid, replayed or signed by another key.
    #[error("{0}")]
    InvalidProof(String),
    /// The DPoP proof is valid but lacks the server's current nonce (RFC 9449 8).
    #[error("{0}")]
    UseDpopNonce(String),
    /// The requested scope is not the session's (RFC 6749 6: never more than granted).
    #[error("{0}")]
    InvalidScope(String),
    /// The `client_binding` is missing or does not match the session.
    #[error("{0}")]
    BindingMismatch(String),
    /// No refresh session has this id.
    #[error("no refresh session {0:?}")]
    UnknownSession(String),
    /// A region operation (signing, audit, storage) failed.
    #[error(transparent)]
    Region(#[from] region::Error),
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::Region(region::Error::Storage(e))
    }
}

impl From<audit::AppendError> for Error {
    fn from(e: audit::AppendError) -> Self {
        Error::Region(region::Error::Audit(e))
    }
}

/// A `POST /token/refresh/create` request.
#[derive(Debug, Clone, Default)]
pub(crate) struct CreateRequest {
    /// `sub` of the session's access tokens.
    pub subject: String,
    /// The device's public JWK (OKP Ed25519 or AKP ML-DSA-65).
    pub device_jwk: Option<serde_json::Value>,
    /// A client fingerprint the refresh requests must repeat (weaker mode).
    pub client_binding: Option<String>,
    /// Session lifetime in days (`CP_REFRESH_DAYS` when `None`).
    pub expires_days: Option<i64>,
    /// `scope` of the session's access tokens.
    pub scope: Option<String>,
}

/// A created session.
#[derive(Debug, Clone)]
pub(crate) struct Created {
    /// The first refresh token (the only time it is shown in clear for a bound session).
    pub refresh_token: String,
    /// The session id (`sid`).
    pub session_id: String,
    /// The first access token.
    pub access: Issued,
    /// Seconds until the session expires.
    pub refresh_expires_in: i64,
}

/// The request a DPoP proof must match: method and URL as the client used them.
#[derive(Debug, Clone)]
pub(crate) struct ProofTarget {
    /// `POST`.
    pub method: String,
    /// `Host` of the request (authority).
    pub host: String,
    /// Path of the request.
    pub path: String,
}

/// A `POST /token/refresh` request.
#[derive(Debug, Clone)]
pub(crate) struct RefreshRequest {
    /// The presented refresh token.
    pub refresh_token: String,
    /// The client's ephemeral X-Wing public key (decoded).
    pub kem_public_key: Option<Vec<u8>>,
    /// The client binding string, in binding mode.
    pub client_binding: Option<String>,
    /// The `DPoP` header.
    pub dpop: Option<String>,
    /// What the proof must be for.
    pub target: ProofTarget,
    /// When set, a bound session's proof must carry one of these server nonces.
    pub accepted_nonces: Option<Vec<String>>,
    /// When false, a bound session without `kem_public_key` gets the rotated token in
    /// clear (RFC 9449 token endpoint: the refresh token is useless without the device
    /// key); when true (`/token/refresh`) it must be sealed.
    pub seal_bound: bool,
    /// The `scope` the client asks for (RFC 6749 6); it must be the session's.
    pub scope: Option<String>,
}

/// How the rotated refresh token is delivered.
#[derive(Debug, Clone)]
pub(crate) enum Delivery {
    /// In clear (no KEM key was given).
    Clear(String),
    /// Sealed to the client's ephemeral KEM key.
    Sealed {
        /// The sealed box.
        sealed: SealedBox,
        /// base64url SHA-256 of the transcript.
        transcript_hash: String,
    },
}

/// A successful refresh.
#[derive(Debug, Clone)]
pub(crate) struct Refreshed {
    /// The new access token.
    pub access: Issued,
    /// The rotated refresh token.
    pub delivery: Delivery,
    /// The session.
    pub session_id: String,
    /// Seconds until the session expires.
    pub refresh_expires_in: i64,
}

/// Who asks to revoke a session.
#[derive(Debug, Clone)]
pub(crate) enum RevokeTarget {
    /// The holder of a refresh token of the session.
    Token(String),
    /// The admin, by session id.
    Session(String),
}

/// A revoked session.
#[derive(Debug, Clone)]
pub(crate) struct SessionRevoked {
    /// The session.
    pub session_id: String,
    /// The sid revocation event (the earlier one when it was already revoked).
    pub event_id: String,
}

/// Creates a session and its first refresh and access tokens.
pub(crate) fn create(region: &Region, request: CreateRequest, via: &str) -> Result<Created, Error> {
    let ttl = check_create_request(region, &request)?;
    let device_jkt = request.device_jwk.map(parse_device_jwk).transpose()?;
    let t = now();
    let session = Session {
        sid: random::id(),
        subject: request.subject,
        scope: request.scope,
        device_jkt,
        binding_hash: request
            .client_binding
            .as_deref()
            .map(|b| sha256(b.as_bytes()).to_vec()),
        created_at: t,
        expires_at: t + ttl,
        revoked_at: None,
        revocation_event: None,
    };
    let access = mint(region, &session, t)?;
    let refresh_token = new_token();
    let creation = Creation {
        first_hash: token_hash(&refresh_token),
        region: region.settings().region.clone(),
        audit_row: json!({
            "sid": session.sid, "sub": session.subject, "scope": session.scope,
            "device_jkt": session.device_jkt,
            "client_binding": session.binding_hash.is_some(),
            "expires_at": session.expires_at, "jti": access.claims.jti, "via": via,
        }),
        session: session.clone(),
    };
    region.writer().run(move |tx| creation.write(tx))?;
    publish_session_state(region, &session, Some(0), "active");
    Ok(Created {
        refresh_token,
        session_id: session.sid,
        access,
        refresh_expires_in: ttl,
    })
}

/// Rotates a refresh token: checks the input, the presenter (device proof or client
/// binding) and the session, seals the new token and signs the access token, then, in
/// one writer job, records the proof, re-checks the token's state, rotates it and writes
/// the audit row; the new state is published to Redis after the commit. A rotated token
/// presented again revokes the whole session ([`revoke_session`]: signed after that job,
/// stored by another).
pub(crate) fn refresh(region: &Region, request: RefreshRequest) -> Result<Refreshed, Error> {
    check_refresh_request(&request)?;
    let hash = token_hash(&request.refresh_token);
    let t = now();
    let session = find_token(&*region.db().read()?, &hash)?
        .ok_or(Error::UnknownToken)?
        .session;

    // Who may refresh: checked before the state, so neither a stolen token without
    // the device key nor a replayed exchange can trigger (or learn about) anything.
    let proof = check_presenter(&request, &session, t)?;
    check_asked(&request, &session)?;
    check_live(region, &session, t)?;

    // Everything that can fail on bad input happens before the commit, so a refused
    // request never burns the presented token.
    let next = new_token();
    let delivery = seal::deliver(&next, &session.sid, &request)?;
    let access = mint(region, &session, t)?;

    if let Some((jkt, jti)) = &proof {
        publish_proof(region, jkt, jti);
    }
    let rotation = Rotation {
        hash,
        next_hash: token_hash(&next),
        proof,
        t,
        region: region.settings().region.clone(),
        audit_row: json!({
            "sid": session.sid, "jti": access.claims.jti,
            "sealed": matches!(delivery, Delivery::Sealed { .. }),
            "device_jkt": session.device_jkt,
        }),
    };
    let rotated = region.writer().run(move |tx| rotation.write(tx))?;
    settle_rotation(region, rotated, access, delivery, t)
}

/// Revokes a session by one of its refresh tokens (any generation) or by its id.
/// Revoking a revoked session again answers with its first revocation event.
pub(crate) fn revoke(region: &Region, target: RevokeTarget) -> Result<SessionRevoked, Error> {
    let (session, via) = match target {
        RevokeTarget::Token(token) => {
            let hash = token_hash(presented_token(&token)?);
            let session = find_token(&*region.db().read()?, &hash)?
                .ok_or(Error::UnknownToken)?
                .session;
            (session, "api:/token/refresh/revoke (holder)")
        }
        RevokeTarget::Session(sid) => {
            check_value("session_id", &sid)?;
            let session =
                find_session(&*region.db().read()?, &sid)?.ok_or(Error::UnknownSession(sid))?;
            (session, "api:/token/refresh/revoke (admin)")
        }
    };
    revoke_session(region, &session, via)
}

/// Revokes the session of a refresh token presented by its holder (`/oauth2/revoke`,
/// `/token/refresh/revoke`; `via` names which). A session bound to a device key
/// (`device_jkt`) is ended only with a DPoP proof of that key for this request (`htm`
/// `POST`, `htu` the URL, no `ath`, never seen before), as a refresh needs one: a copy of
/// the refresh token alone cannot log its owner out. `UnknownToken` when no session has
/// this token.
pub(crate) fn revoke_presented(
    region: &Region,
    token: &str,
    proof: Option<&str>,
    target: &ProofTarget,
    via: &'static str,
) -> Result<SessionRevoked, Error> {
    let hash = token_hash(presented_token(token)?);
    let session = find_token(&*region.db().read()?, &hash)?
        .ok_or(Error::UnknownToken)?
        .session;
    if let Some(jkt) = &session.device_jkt {
        if proof.is_none() {
            return Err(Error::InvalidProof(
                "this refresh token's session is bound to a device key: a DPoP header with a \
                 proof of that key is required to revoke it"
                    .into(),
            ));
        }
        prove(region, proof, None, jkt, target)?;
    }
    revoke_session(region, &session, via)
}

/// Checks a create request's values; returns the session's lifetime in seconds.
fn check_create_request(region: &Region, request: &CreateRequest) -> Result<i64, Error> {
    check_value("subject", &request.subject)?;
    if let Some(scope) = &request.scope {
        check_value("scope", scope)?;
    }
    if let Some(binding) = &request.client_binding {
        check_value("client_binding", binding)?;
    }
    let days = request
        .expires_days
        .unwrap_or(region.settings().refresh_secs / 86_400);
    if !(1..=MAX_DAYS).contains(&days) {
        return Err(Error::InvalidRequest(format!(
            "expires_days must be between 1 and {MAX_DAYS}, got {days}"
        )));
    }
    Ok(request
        .expires_days
        .map_or(region.settings().refresh_secs, |d| d * 86_400))
}

/// Checks the sizes of a refresh request's token and KEM key. The token is not trimmed:
/// the transcript hashes it exactly as the client sent it.
fn check_refresh_request(request: &RefreshRequest) -> Result<(), Error> {
    let presented = &request.refresh_token;
    if presented.is_empty() {
        return Err(Error::InvalidRequest(
            "refresh_token must not be empty".into(),
        ));
    }
    if presented.len() > MAX_TOKEN_LEN {
        return Err(Error::InvalidRequest(format!(
            "refresh_token is {} bytes, over the {MAX_TOKEN_LEN}-byte limit",
            presented.len()
        )));
    }
    if let Some(pk) = &request.kem_public_key
        && pk.len() != kem::PUBLIC_KEY_LEN
    {
        return Err(Error::InvalidRequest(format!(
            "kem_public_key must be {} bytes (an X-Wing public key), got {}",
            kem::PUBLIC_KEY_LEN,
            pk.len()
        )));
    }
    Ok(())
}

/// Checks who presents the token: with a proof of the session's device key (returned as
/// its `(jkt, jti)`, recorded by the rotation) and with the session's client binding,
/// whichever the session has.
fn check_presenter(
    request: &RefreshRequest,
    session: &Session,
    t: i64,
) -> Result<Option<(String, String)>, Error> {
    let proof = match &session.device_jkt {
        Some(jkt) => Some(verify_proof(
            request.dpop.as_deref(),
            jkt,
            &request.target,
            t,
            None,
            request.accepted_nonces.as_deref(),
        )?),
        None => None,
    };
    if let Some(expected) = &session.binding_hash {
        let given = request.client_binding.as_deref().ok_or_else(|| {
            Error::BindingMismatch("this session needs its client_binding".into())
        })?;
        if !constant_time_eq(&sha256(given.as_bytes()), expected) {
            return Err(Error::BindingMismatch(
                "client_binding does not match the session".into(),
            ));
        }
    }
    Ok(proof)
}

/// Checks what the request asks for against the session: the session's own scope (RFC
/// 6749 6, no narrowing), and a sealed delivery where a device-bound session needs one.
fn check_asked(request: &RefreshRequest, session: &Session) -> Result<(), Error> {
    if let Some(asked) = &request.scope {
        let granted: Vec<&str> = session.scope.as_deref().unwrap_or("").split(' ').collect();
        let mut asked_set: Vec<&str> = asked.split(' ').filter(|s| !s.is_empty()).collect();
        let mut granted_set: Vec<&str> = granted.into_iter().filter(|s| !s.is_empty()).collect();
        asked_set.sort_unstable();
        asked_set.dedup();
        granted_set.sort_unstable();
        granted_set.dedup();
        if asked_set != granted_set {
            return Err(Error::InvalidScope(format!(
                "scope {asked:?} is not the session's scope {:?}; narrowing is not supported, \
                 omit scope to keep it",
                session.scope.as_deref().unwrap_or("")
            )));
        }
    }
    if request.seal_bound && session.device_jkt.is_some() && request.kem_public_key.is_none() {
        return Err(Error::InvalidRequest(
            "this session is bound to a device key: kem_public_key is required, the rotated \
             refresh token is only delivered sealed"
                .into(),
        ));
    }
    Ok(())
}

/// Refuses a session that is revoked (see [`revoked_reason`]) or expired at `t`.
fn check_live(region: &Region, session: &Session, t: i64) -> Result<(), Error> {
    if let Some(reason) = revoked_reason(region, session)? {
        return Err(Error::Revoked(reason));
    }
    if session.expires_at <= t {
        return Err(Error::Expired(session.expires_at));
    }
    Ok(())
}

/// What a refresh answers once its writer job has committed: the new tokens (and the
/// session's new state in Redis), or the reason the token was not rotated; a rotated token
/// presented again revokes its session here, with no transaction open.
fn settle_rotation(
    region: &Region,
    rotated: Rotated,
    access: Issued,
    delivery: Delivery,
    t: i64,
) -> Result<Refreshed, Error> {
    match rotated {
        Rotated::Done {
            generation,
            session,
        } => {
            publish_session_state(region, &session, Some(generation), "active");
            Ok(Refreshed {
                access,
                delivery,
                session_id: session.sid,
                refresh_expires_in: session.expires_at - t,
            })
        }
        Rotated::Reused(session) => {
            // Signed now, with no transaction open; committed by a second writer job.
            let revoked = revoke_session(region, &session, "refresh token reuse")?;
            tracing::warn!(sid = %revoked.session_id, "refresh token reuse: session revoked");
            Err(Error::ReusedRefreshToken {
                sid: revoked.session_id,
                event_id: revoked.event_id,
            })
        }
        Rotated::SessionRevoked(at) => Err(Error::Revoked(format!(
            "refresh session was revoked at {}",
            rfc3339(at)
        ))),
        Rotated::TokenRevoked => Err(Error::Revoked(
            "refresh token was revoked with its session".into(),
        )),
        Rotated::Expired(at) => Err(Error::Expired(at)),
    }
}

/// Revokes a session through the signed revocation path: the `sid` event is signed
/// first, outside any transaction (the event signer may batch it with others), then one
/// writer job re-reads the session and, unless a revocation got there first, marks it
/// and its tokens revoked and stores the event with its feed, outbox and audit rows.
/// Revoking a revoked session answers with its first revocation event; a signed event
/// that lost that race is dropped, never stored.
fn revoke_session(
    region: &Region,
    session: &Session,
    via: &'static str,
) -> Result<SessionRevoked, Error> {
    if let Some(event_id) = &session.revocation_event {
        return Ok(SessionRevoked {
            session_id: session.sid.clone(),
            event_id: event_id.clone(),
        });
    }
    let (event, signed) = region.sign_revocation(Kind::Sid, &session.sid, None)?;
    let record = region.recorder(via);
    let origin = region.settings().region.clone();
    let job_event = event.clone();
    let sid = session.sid.clone();
    let outcome = region.writer().run(move |tx| {
        let event = job_event;
        if let Some(first) = mark_revoked(tx, &sid, event.issued_at, &event.event_id)? {
            return Ok::<_, Error>(Err(first));
        }
        let inserted = record.write(tx, &event, &signed)?;
        audit::append_row(
            tx,
            event.issued_at,
            &origin,
            "refresh.revoked",
            json!({ "sid": sid, "event_id": event.event_id, "via": via }),
        )?;
        Ok(Ok(inserted))
    })?;
    let event_id = match outcome {
        Ok(inserted) => {
            publish_session_state(region, session, None, "revoked");
            region
                .announce_revocation(event, inserted, via)
                .event
                .event_id
        }
        Err(first) => first,
    };
    Ok(SessionRevoked {
        session_id: session.sid.clone(),
        event_id,
    })
}

/// Describes why a session is revoked, if it is: its own row, a live `sid` revocation
/// (from `POST /revoke` or another region), or a subject revocation at or after the
/// session's creation (the same rule as for the subject's access tokens).
fn revoked_reason(region: &Region, session: &Session) -> Result<Option<String>, Error> {
    if let Some(at) = session.revoked_at {
        let event = match &session.revocation_event {
            Some(id) => db::revocation_by_id(&*region.db().read()?, id)?,
            None => None,
        };
        return Ok(Some(match event {
            Some(event) => format!("refresh session was {}", region::describe(&event)),
            None => format!("refresh session was revoked at {}", rfc3339(at)),
        }));
    }
    if let Some(event) = region.find(Kind::Sid, &session.sid)? {
        return Ok(Some(format!(
            "refresh session was {}",
            region::describe(&event)
        )));
    }
    if let Some(event) = region.find(Kind::Sub, &session.subject)?
        && event
            .not_before
            .is_none_or(|not_before| session.created_at <= not_before)
    {
        return Ok(Some(format!(
            "refresh session was {}",
            region::describe(&event)
        )));
    }
    Ok(None)
}

/// Builds and signs an access token of a session.
fn mint(region: &Region, session: &Session, t: i64) -> Result<Issued, Error> {
    let settings = region.settings();
    let ttl = settings.default_token_secs;
    let claims = region.access_claims(
        region::Grant {
            sub: session.subject.clone(),
            sid: Some(session.sid.clone()),
            scope: session.scope.clone(),
            cnf: session.device_jkt.clone().map(|jkt| Confirmation { jkt }),
            ..Default::default()
        },
        t,
        ttl,
    );
    let (token, _kid, _alg) = region.sign_access(&claims)?;
    Ok(Issued {
        token,
        claims,
        expires_in: ttl,
    })
}

/// Publishes a session's state to the shared cache (`refresh:<sid>`, JSON, until the
/// session expires) for services that read Redis; SQLite stays the truth.
fn publish_session_state(region: &Region, session: &Session, generation: Option<i64>, state: &str) {
    let ttl = session.expires_at - now();
    if ttl <= 0 {
        return;
    }
    let value = json!({
        "sid": session.sid, "sub": session.subject, "generation": generation,
        "state": state, "expires_at": session.expires_at,
        "device_jkt": session.device_jkt,
    });
    let Some(cache) = region.shared_cache() else {
        return;
    };
    if let Err(e) = cache.put_state(&format!("refresh:{}", session.sid), &value.to_string(), ttl) {
        tracing::warn!(error = %e, sid = %session.sid, "refresh state not published to Redis");
    }
}

/// A refresh token presented for revocation, trimmed, when its length is acceptable.
fn presented_token(token: &str) -> Result<&str, Error> {
    let token = token.trim();
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return Err(Error::InvalidRequest(format!(
            "refresh_token must be 1 to {MAX_TOKEN_LEN} bytes"
        )));
    }
    Ok(token)
}

fn new_token() -> String {
    format!("{TOKEN_PREFIX}{}", b64::encode(&random::bytes::<32>()))
}

fn token_hash(token: &str) -> Vec<u8> {
    sha256(token.as_bytes()).to_vec()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq as _;
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_tokens_are_prefixed_random_and_hashed() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == 46, "{a}");
        assert_eq!(token_hash(&a), sha256(a.as_bytes()).to_vec());
    }
}
