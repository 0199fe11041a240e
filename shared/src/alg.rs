//! The JOSE signature algorithms this project accepts, by name.

use crate::JoseError;

/// A signature algorithm accepted by this project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    /// Ed25519 (RFC 8037), under either JOSE name: the polymorphic `EdDSA` or the
    /// fully specified `Ed25519` of RFC 9864. Only Ed25519 keys exist here, so the two
    /// names select the same algorithm, and an Ed25519 key accepts both and nothing else.
    EdDsa,
    /// ML-DSA-65 (FIPS 204, RFC 9964), pure mode with an empty context.
    MlDsa65,
    /// ECDSA over P-256 with SHA-256 (RFC 7518 section 3.4): device keys and DPoP
    /// proofs. The control plane never signs its own tokens with it.
    Es256,
}

impl Alg {
    /// The JOSE name we write. For Ed25519 that is `EdDSA`, the name every verifier
    /// knows (Envoy's `jwt_authn` among them); `Ed25519` is accepted when reading.
    pub fn as_str(self) -> &'static str {
        match self {
            Alg::EdDsa => "EdDSA",
            Alg::MlDsa65 => "ML-DSA-65",
            Alg::Es256 => "ES256",
        }
    }

    /// Parses a JOSE `alg` (`EdDSA` and `Ed25519` alike), naming the refused families
    /// precisely.
    pub fn parse(name: &str) -> Result<Alg, JoseError> {
        match name {
            "EdDSA" | "Ed25519" => Ok(Alg::EdDsa),
            "ML-DSA-65" => Ok(Alg::MlDsa65),
            "ES256" => Ok(Alg::Es256),
            _ if name.eq_ignore_ascii_case("none") => Err(JoseError::AlgNone),
            _ if name.starts_with("HS") => Err(JoseError::Hmac(name.to_owned())),
            _ => Err(JoseError::UnsupportedAlg(name.to_owned())),
        }
    }
}

impl std::str::FromStr for Alg {
    type Err = JoseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Alg::parse(s)
    }
}
