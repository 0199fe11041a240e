//! Access-token claims (RFC 9068 `at+jwt`) and their time, issuer and audience checks.

// Parses untrusted input: no input may panic it.
#![deny(clippy::indexing_slicing, clippy::unwrap_used)]

use serde::{Deserialize, Serialize};

use crate::JoseError;
use crate::jws::{Jws, Limits};
use crate::keys::Keyring;

/// `typ` of access tokens (RFC 9068).
pub const TYP_ACCESS_TOKEN: &str = "at+jwt";

/// `aud`: one string or an array of strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    /// A single audience.
    One(String),
    /// Several audiences.
    Many(Vec<String>),
}

impl Audience {
    /// True when `aud` names `audience`.
    pub fn contains(&self, audience: &str) -> bool {
        match self {
            Audience::One(a) => a == audience,
            Audience::Many(all) => all.iter().any(|a| a == audience),
        }
    }
}

/// Confirmation claim (RFC 7800 / RFC 9449): the device key's thumbprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    /// RFC 7638 thumbprint of the key that must sign DPoP proofs.
    pub jkt: String,
}

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// Issuer.
    pub iss: String,
    /// Subject.
    pub sub: String,
    /// Audience.
    pub aud: Audience,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
    /// Issued at.
    pub iat: i64,
    /// Not before.
    pub nbf: i64,
    /// Token id.
    pub jti: String,
    /// Session (refresh family) id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// Space-separated scopes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// OAuth client id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Proof-of-possession key binding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
    /// Any other claims, kept as given.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// What a token must satisfy besides its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validation {
    /// The accepted `iss` values (one, or several while an issuer changes or when peers'
    /// tokens are accepted); empty: `iss` is not checked.
    pub issuers: Vec<String>,
    /// An audience that `aud` must contain, if any.
    pub audience: Option<String>,
    /// Allowed clock skew in seconds.
    pub leeway: i64,
}

impl Default for Validation {
    fn default() -> Self {
        Validation {
            issuers: Vec::new(),
            audience: None,
            leeway: 30,
        }
    }
}

/// Why valid-looking claims were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimsError {
    /// `exp` has passed (beyond the leeway).
    #[error("token expired {ago} s ago")]
    Expired {
        /// Seconds since `exp`.
        ago: i64,
    },
    /// `nbf` is in the future (beyond the leeway).
    #[error("token not valid for another {wait} s")]
    NotYetValid {
        /// Seconds until `nbf`.
        wait: i64,
    },
    /// `iat` is in the future (beyond the leeway): a token dated ahead would escape a
    /// subject's not-before (`revoke_sub` compares it with `iat`).
    #[error("token issued {ahead} s in the future")]
    IssuedInFuture {
        /// Seconds `iat` is ahead of now.
        ahead: i64,
    },
    /// `iss` is none of the accepted issuers.
    #[error("issuer {0:?} is not accepted")]
    WrongIssuer(String),
    /// `aud` does not contain the configured audience.
    #[error("audience does not include {0:?}")]
    WrongAudience(String),
}

impl ClaimsError {
    /// A short machine-readable reason, as reported at the edge.
    pub fn reason(&self) -> &'static str {
        match self {
            ClaimsError::Expired { .. } => "expired",
            ClaimsError::NotYetValid { .. } => "not_yet_valid",
            ClaimsError::IssuedInFuture { .. } => "issued_in_future",
            ClaimsError::WrongIssuer(_) => "wrong_issuer",
            ClaimsError::WrongAudience(_) => "wrong_audience",
        }
    }
}

impl AccessClaims {
    /// Checks time (with leeway: `exp`, `nbf`, and `iat` not in the future), issuer and
    /// audience at `now`.
    pub fn validate(&self, rules: &Validation, now: i64) -> Result<(), ClaimsError> {
        if now >= self.exp.saturating_add(rules.leeway) {
            return Err(ClaimsError::Expired {
                ago: now.saturating_sub(self.exp),
            });
        }
        if self.nbf > now.saturating_add(rules.leeway) {
            return Err(ClaimsError::NotYetValid {
                wait: self.nbf.saturating_sub(now),
            });
        }
        if self.iat > now.saturating_add(rules.leeway) {
            return Err(ClaimsError::IssuedInFuture {
                ahead: self.iat.saturating_sub(now),
            });
        }
        if !rules.issuers.is_empty() && !rules.issuers.contains(&self.iss) {
            return Err(ClaimsError::WrongIssuer(self.iss.clone()));
        }
        if let Some(aud) = rules
            .audience
            .as_ref()
            .filter(|aud| !self.aud.contains(aud))
        {
            return Err(ClaimsError::WrongAudience(aud.clone()));
        }
        Ok(())
    }

    /// Parses an access token, checks its `typ` and signature against `keys`, and returns
    /// the claims together with the verifying key's `kid` (time is not checked here).
    pub fn verify(
        token: &str,
        keys: &Keyring,
        limits: &Limits,
    ) -> Result<(AccessClaims, String), JoseError> {
        let jws = Jws::parse(token, limits)?;
        jws.expect_typ(TYP_ACCESS_TOKEN)?;
        jws.verify(keys)?;
        let kid = jws.header.kid.clone().unwrap_or_default();
        Ok((jws.claims()?, kid))
    }

    /// Decodes the claims without verifying anything (inspection only).
    pub fn decode_unverified(
        token: &str,
        limits: &Limits,
    ) -> Result<(AccessClaims, crate::jws::Header), JoseError> {
        let jws = Jws::parse(token, limits)?;
        Ok((jws.claims()?, jws.header))
    }
}
