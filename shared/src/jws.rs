//! Strict compact JWS (RFC 7515) for EdDSA (also named `Ed25519`), ML-DSA-65 and ES256.

// Parses untrusted tokens on the edge's hot path: no input may panic it.
#![deny(clippy::indexing_slicing, clippy::unwrap_used)]

use serde::{Deserialize, Serialize};

use crate::jwk::Jwk;
use crate::keys::{Alg, Keyring, SigningKey, VerifyingKey};
use crate::{JoseError, b64, json};

/// Size limits applied before any decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest accepted compact serialization, in bytes.
    pub max_token_len: usize,
}

impl Default for Limits {
    /// 16 KiB: an ML-DSA-65 token is about 5 KiB.
    fn default() -> Self {
        Limits {
            max_token_len: 16 * 1024,
        }
    }
}

/// The protected header members we read; other members are ignored unless listed in `crit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Header {
    /// Signature algorithm.
    pub alg: String,
    /// Media type of the whole JWS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub typ: Option<String>,
    /// Key id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// Embedded public key (DPoP proofs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwk: Option<Jwk>,
    /// Critical extensions: we understand none, so any value is refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crit: Option<serde_json::Value>,
    /// Edge snapshots and deltas: the clock leeway in seconds their revocations assume
    /// (each entry covers its tokens until their `exp` plus this). A private member,
    /// not listed in `crit`: parsers that do not know it ignore it, so an edge built
    /// before it existed keeps its own leeway (see [`crate::edgeset`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leeway: Option<u64>,
    /// Edge snapshots and deltas: the id of the feed they belong to (made when the
    /// feed's history starts, new after a restore). Private and not `crit`, like
    /// `leeway`: an edge built before it existed ignores it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feed: Option<String>,
    /// Edge snapshots and deltas: the digest of the JWKS document the control plane
    /// serves at the time (see [`crate::edgeset`], "The keys an edge should hold").
    /// Private and not `crit`, like `leeway`: an edge built before it existed ignores it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks: Option<String>,
}

/// A parsed but not yet verified compact JWS.
#[derive(Debug, Clone)]
pub struct Jws<'a> {
    /// The decoded protected header.
    pub header: Header,
    /// `header.alg`, parsed.
    pub alg: Alg,
    /// The decoded payload.
    pub payload: Vec<u8>,
    signing_input: &'a str,
    signature: Vec<u8>,
}

impl<'a> Jws<'a> {
    /// Splits, decodes and checks a compact JWS without verifying it.
    pub fn parse(token: &'a str, limits: &Limits) -> Result<Jws<'a>, JoseError> {
        if token.len() > limits.max_token_len {
            return Err(JoseError::TooLarge {
                len: token.len(),
                max: limits.max_token_len,
            });
        }
        let three_parts = JoseError::Malformed("expected three dot-separated parts");
        // The signing input is everything before the last dot: header, dot, payload.
        let Some((signing_input, s)) = token.rsplit_once('.') else {
            return Err(three_parts);
        };
        let Some((h, p)) = signing_input.split_once('.') else {
            return Err(three_parts);
        };
        if p.contains('.') {
            return Err(three_parts);
        }
        if h.is_empty() || s.is_empty() {
            return Err(JoseError::Malformed("empty header or signature"));
        }
        // Header, payload and signature are public: the fast variable-time decoder.
        let header: Header = json::from_slice(&b64::decode_public(h, "header")?, "header")?;
        let alg = Alg::parse(&header.alg)?;
        if let Some(crit) = &header.crit {
            return Err(JoseError::UnknownCrit(crit.to_string()));
        }
        Ok(Jws {
            alg,
            payload: b64::decode_public(p, "payload")?,
            signature: b64::decode_public(s, "signature")?,
            signing_input,
            header,
        })
    }

    /// Requires the header `typ` to be the media type `expected`: compared
    /// case-insensitively, with or without its `application/` prefix (RFC 7515 4.1.9; RFC
    /// 9068 section 4 names `at+jwt` and `application/at+jwt` alike).
    pub fn expect_typ(&self, expected: &'static str) -> Result<(), JoseError> {
        match &self.header.typ {
            Some(t) if same_media_type(t, expected) => Ok(()),
            found => Err(JoseError::WrongType {
                found: found.clone(),
                expected,
            }),
        }
    }

    /// Verifies the signature with `key`, whose algorithm must equal the header's.
    pub fn verify_with(&self, key: &VerifyingKey) -> Result<(), JoseError> {
        key.expect_alg(self.alg)?;
        key.verify(self.signing_input.as_bytes(), &self.signature)
    }

    /// Finds the key by `kid` in `keys` and verifies with it.
    pub fn verify(&self, keys: &Keyring) -> Result<(), JoseError> {
        let kid = self.header.kid.as_deref().ok_or(JoseError::MissingKid)?;
        keys.verify(
            kid,
            self.alg,
            self.signing_input.as_bytes(),
            &self.signature,
        )
    }

    /// Decodes the payload as strict JSON.
    pub fn claims<T: serde::de::DeserializeOwned>(&self) -> Result<T, JoseError> {
        json::from_slice(&self.payload, "payload")
    }
}

/// True when the `typ` values `a` and `b` name the same media type: RFC 7515 4.1.9 says a
/// value without `/` stands for `application/` + it, and media types compare
/// case-insensitively (RFC 2045).
pub fn same_media_type(a: &str, b: &str) -> bool {
    fn full(t: &str) -> std::borrow::Cow<'_, str> {
        if t.contains('/') {
            t.into()
        } else {
            format!("application/{t}").into()
        }
    }
    full(a).eq_ignore_ascii_case(&full(b))
}

/// Signs `payload` as a compact JWS with `alg` from the key and the given `typ` and `kid`.
pub fn sign(
    key: &SigningKey,
    typ: &str,
    kid: Option<&str>,
    jwk: Option<Jwk>,
    payload: &[u8],
) -> Result<String, JoseError> {
    sign_with_header(
        key,
        Header {
            typ: Some(typ.into()),
            kid: kid.map(str::to_owned),
            jwk,
            ..Header::default()
        },
        payload,
    )
}

/// Signs `payload` as a compact JWS under `header`, whose `alg` is set from the key.
pub fn sign_with_header(
    key: &SigningKey,
    header: Header,
    payload: &[u8],
) -> Result<String, JoseError> {
    let header = Header {
        alg: key.alg().as_str().into(),
        ..header
    };
    let header = serde_json::to_vec(&header).map_err(|_| JoseError::SigningFailed)?;
    let mut token = b64::encode(&header);
    token.push('.');
    token.push_str(&b64::encode(payload));
    let signature = key.sign(token.as_bytes())?;
    token.push('.');
    token.push_str(&b64::encode(&signature));
    Ok(token)
}
