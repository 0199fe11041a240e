//! The error every JOSE parse or verification step reports, one variant per failure.

/// Why a compact JWS, a JWK or a signed envelope was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoseError {
    /// The input is longer than the configured limit.
    #[error("token is {len} bytes, over the {max}-byte limit")]
    TooLarge {
        /// Length of the input.
        len: usize,
        /// Configured maximum.
        max: usize,
    },
    /// The compact serialization is not three non-empty dot-separated parts.
    #[error("malformed compact JWS: {0}")]
    Malformed(&'static str),
    /// A part is not canonical unpadded base64url.
    #[error("{0} is not canonical unpadded base64url")]
    Base64(&'static str),
    /// A JSON object repeats a member name.
    #[error("duplicate JSON member {0:?}")]
    DuplicateMember(String),
    /// The JSON is invalid or does not have the expected shape.
    #[error("invalid JSON in {part}: {reason}")]
    Json {
        /// Which part (header, payload, jwk).
        part: &'static str,
        /// The parser's explanation.
        reason: String,
    },
    /// `alg: none` is never accepted.
    #[error("unsecured JWS (alg none) is not accepted")]
    AlgNone,
    /// HMAC algorithms are never accepted (no shared secrets, no key confusion).
    #[error("HMAC algorithm {0} is not accepted")]
    Hmac(String),
    /// An algorithm this crate does not implement.
    #[error("unsupported algorithm {0:?}")]
    UnsupportedAlg(String),
    /// The header's `alg` differs from the algorithm the key is allowed for.
    #[error("header alg {header} does not match the key's alg {key}")]
    AlgMismatch {
        /// `alg` from the header.
        header: &'static str,
        /// `alg` bound to the key.
        key: &'static str,
    },
    /// The header lists a critical extension this implementation does not understand.
    #[error("unsupported critical header parameter(s): {0}")]
    UnknownCrit(String),
    /// The header's `typ` is not the one expected in this context.
    #[error("unexpected typ {found:?}, expected {expected:?}")]
    WrongType {
        /// `typ` found (if any).
        found: Option<String>,
        /// `typ` required.
        expected: &'static str,
    },
    /// The header carries no `kid` although one is required.
    #[error("header has no kid")]
    MissingKid,
    /// No trusted key has this `kid`.
    #[error("no trusted key with kid {0:?}")]
    UnknownKey(String),
    /// The key material is not a valid key for its algorithm.
    #[error("invalid key: {0}")]
    BadKey(&'static str),
    /// The signature does not verify.
    #[error("signature verification failed")]
    BadSignature,
    /// Signing failed (only on internal errors of the signature scheme).
    #[error("signing failed")]
    SigningFailed,
}

impl JoseError {
    /// A short machine-readable reason, as reported at the edge.
    pub fn reason(&self) -> &'static str {
        match self {
            JoseError::UnknownKey(_) | JoseError::MissingKid => "unknown_key",
            JoseError::BadSignature | JoseError::AlgMismatch { .. } => "bad_signature",
            _ => "malformed",
        }
    }
}
