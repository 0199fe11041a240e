//! Why the filter refuses a request, and which challenge its `WWW-Authenticate` names:
//! the vocabulary shared by the token checks ([`crate::authz`]) and the request parsing
//! and answers ([`crate::request`]).

use shared::{ClaimsError, JoseError};

/// Why a request was refused, as reported in `error_description` and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// No bearer token.
    Missing,
    /// Not a well-formed access token.
    Malformed,
    /// No trusted key has the token's `kid`.
    UnknownKey,
    /// The signature does not verify.
    BadSignature,
    /// `exp` has passed.
    Expired,
    /// `nbf` is in the future.
    NotYetValid,
    /// `iss` is not the configured issuer.
    WrongIssuer,
    /// `aud` does not name the configured audience.
    WrongAudience,
    /// The token, its subject, key or session is revoked.
    Revoked,
    /// The token is bound to a key (`cnf.jkt`) and no valid DPoP proof came with it.
    InvalidDpopProof,
}

impl Reason {
    /// Every reason, in metric order.
    pub(crate) const ALL: [Reason; 10] = [
        Reason::Missing,
        Reason::Malformed,
        Reason::UnknownKey,
        Reason::BadSignature,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::WrongIssuer,
        Reason::WrongAudience,
        Reason::Revoked,
        Reason::InvalidDpopProof,
    ];

    /// The reported name.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reason::Missing => "missing",
            Reason::Malformed => "malformed",
            Reason::UnknownKey => "unknown_key",
            Reason::BadSignature => "bad_signature",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::WrongIssuer => "wrong_issuer",
            Reason::WrongAudience => "wrong_audience",
            Reason::Revoked => "revoked",
            Reason::InvalidDpopProof => "invalid_dpop_proof",
        }
    }

    pub(crate) fn from_jose(e: &JoseError) -> Reason {
        match e {
            JoseError::UnknownKey(_) => Reason::UnknownKey,
            JoseError::BadSignature => Reason::BadSignature,
            _ => Reason::Malformed,
        }
    }

    pub(crate) fn from_claims(e: &ClaimsError) -> Reason {
        // Enum to enum: a renamed variant is a compile error, never another reason.
        match e {
            ClaimsError::Expired { .. } => Reason::Expired,
            // A token dated ahead is not valid yet either.
            ClaimsError::NotYetValid { .. } | ClaimsError::IssuedInFuture { .. } => {
                Reason::NotYetValid
            }
            ClaimsError::WrongIssuer(_) => Reason::WrongIssuer,
            ClaimsError::WrongAudience(_) => Reason::WrongAudience,
        }
    }
}

/// The scheme a refusal's `WWW-Authenticate` challenge names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    /// `Bearer` (RFC 6750 section 3): a bearer request with an unbound token.
    Bearer,
    /// `DPoP` (RFC 9449 section 7.1): the request used the `DPoP` scheme, sent a `DPoP`
    /// header, or its token is bound to a key (`cnf.jkt`). A DPoP client reads
    /// `invalid_dpop_proof` as "prove again" and `invalid_token` as "get a new token".
    Dpop,
}
