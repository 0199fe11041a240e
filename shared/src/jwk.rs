//! JSON Web Keys: OKP Ed25519 (RFC 8037), AKP ML-DSA-65 (RFC 9964), RFC 7638 thumbprints.

use serde::{Deserialize, Serialize};

use crate::keys::{Alg, VerifyingKey};
use crate::{JoseError, b64, sha256};

/// One JWK; only the members we use, every other member is ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Jwk {
    /// Key type: `OKP` or `AKP`.
    pub kty: String,
    /// Curve for OKP keys (`Ed25519`).
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
    /// OKP public key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    /// AKP public key.
    #[serde(rename = "pub", skip_serializing_if = "Option::is_none")]
    pub pub_: Option<String>,
    /// OKP private key (seed).
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
            ("OKP", Some("Ed25519")) | ("AKP", _)
        ) && self.alg.as_deref().is_none_or(|a| Alg::parse(a).is_ok())
    }

    /// True when the JWK carries private key material.
    pub fn has_private_part(&self) -> bool {
        self.d.is_some() || self.priv_.is_some()
    }

    /// The public key; the JWK's `alg`, when present, must agree with its type.
    pub fn to_verifying_key(&self) -> Result<VerifyingKey, JoseError> {
        let (alg, public) = match (self.kty.as_str(), self.crv.as_deref()) {
            ("OKP", Some("Ed25519")) => (Alg::EdDsa, self.x.as_deref()),
            ("OKP", _) => return Err(JoseError::BadKey("OKP key must use curve Ed25519")),
            ("AKP", _) => {
                let alg = self
                    .alg
                    .as_deref()
                    .ok_or(JoseError::BadKey("AKP key needs alg"))?;
                (Alg::parse(alg)?, self.pub_.as_deref())
            }
            _ => return Err(JoseError::BadKey("unsupported kty")),
        };
        if let Some(declared) = self.alg.as_deref()
            && Alg::parse(declared)? != alg
        {
            return Err(JoseError::BadKey("JWK alg does not match its key type"));
        }
        let public = public.ok_or(JoseError::BadKey("JWK has no public key member"))?;
        VerifyingKey::from_bytes(alg, &b64::decode(public, "public key")?)
    }

    /// RFC 7638 thumbprint over the required members in lexicographic order
    /// (`crv kty x` for OKP, `alg kty pub` for AKP per RFC 9964).
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
