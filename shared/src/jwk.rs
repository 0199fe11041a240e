//! JSON Web Keys: OKP Ed25519 (RFC 8037), AKP ML-DSA-65 (RFC 9964), EC P-256 (RFC 7518
//! section 6.2, device keys), RFC 7638 thumbprints.

// Parses untrusted input: no input may panic it.
#![deny(clippy::indexing_slicing, clippy::unwrap_used)]

use serde::{Deserialize, Serialize};

use crate::alg::Alg;
use crate::{JoseError, b64, sha256};

/// One JWK; only the members we use, every other member is ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Jwk {
    /// Key type: `OKP`, `AKP` or `EC`.
    pub kty: String,
    /// Curve for OKP keys (`Ed25519`) and EC keys (`P-256`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    /// Algorithm; required for AKP keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    /// Key id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// Public key use (`sig`).
    #[serde(rename = "use", skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
    /// OKP public key, or an EC key's x coordinate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    /// An EC key's y coordinate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    /// AKP public key.
    #[serde(rename = "pub", skip_serializing_if = "Option::is_none")]
    pub pub_: Option<String>,
    /// OKP private key (seed), or an EC key's private scalar.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub d: Option<String>,
    /// AKP private key (seed).
    #[serde(rename = "priv", skip_serializing_if = "Option::is_none")]
    pub priv_: Option<String>,
}

/// A JWK Set (`{"keys": [...]}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct JwkSet {
    /// The keys.
    pub keys: Vec<Jwk>,
}

impl JwkSet {
    /// Parses a JWKS strictly (duplicate members refused).
    pub fn parse(json: &[u8]) -> Result<JwkSet, JoseError> {
        crate::json::from_slice(json, "jwks")
    }
}

impl Jwk {
    pub(crate) fn okp(x: String) -> Jwk {
        Jwk {
            kty: "OKP".into(),
            crv: Some("Ed25519".into()),
            alg: Some(Alg::EdDsa.as_str().into()),
            x: Some(x),
            ..Jwk::default()
        }
    }

    pub(crate) fn ec(x: String, y: String) -> Jwk {
        Jwk {
            kty: "EC".into(),
            crv: Some("P-256".into()),
            alg: Some(Alg::Es256.as_str().into()),
            x: Some(x),
            y: Some(y),
            ..Jwk::default()
        }
    }

    pub(crate) fn akp(alg: Alg, public: String) -> Jwk {
        Jwk {
            kty: "AKP".into(),
            alg: Some(alg.as_str().into()),
            pub_: Some(public),
            ..Jwk::default()
        }
    }

    /// Parses one JWK strictly.
    pub fn parse(json: &[u8]) -> Result<Jwk, JoseError> {
        crate::json::from_slice(json, "jwk")
    }

    /// True for the key types this crate can verify with.
    pub fn is_supported(&self) -> bool {
        matches!(
            (self.kty.as_str(), self.crv.as_deref()),
            ("OKP", Some("Ed25519")) | ("AKP", _) | ("EC", Some("P-256"))
        ) && self.alg.as_deref().is_none_or(|a| Alg::parse(a).is_ok())
    }

    /// True when the JWK carries private key material.
    pub fn has_private_part(&self) -> bool {
        self.d.is_some() || self.priv_.is_some()
    }

    /// RFC 7638 thumbprint over the required members in lexicographic order
    /// (`crv kty x` for OKP, `crv kty x y` for EC, `alg kty pub` for AKP per RFC 9964).
    pub fn thumbprint(&self) -> String {
        let esc = |s: &Option<String>| {
            serde_json::to_string(s.as_deref().unwrap_or("")).unwrap_or_default()
        };
        let canonical = if self.kty == "AKP" {
            format!(
                r#"{{"alg":{},"kty":"AKP","pub":{}}}"#,
                esc(&self.alg),
                esc(&self.pub_)
            )
        } else if self.kty == "EC" {
            format!(
                r#"{{"crv":{},"kty":"EC","x":{},"y":{}}}"#,
                esc(&self.crv),
                esc(&self.x),
                esc(&self.y)
            )
        } else {
            format!(
                r#"{{"crv":{},"kty":{},"x":{}}}"#,
                esc(&self.crv),
                serde_json::to_string(&self.kty).unwrap_or_default(),
                esc(&self.x)
            )
        };
        b64::encode(&sha256(canonical.as_bytes()))
    }
}
