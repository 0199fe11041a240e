//! Crypto and wire formats shared by the control plane, the edge filter and clients.
//!
//! Everything here is portable: no I/O, no async runtime, and no randomness on any
//! verification path. Randomness is only drawn by the optional `rand` feature (key
//! generation, signing nonces for identifiers) or handed in by the caller.

// Clients and other services build on this API: every public item says what it is.
#![deny(missing_docs)]

mod alg;
pub mod b64;
pub mod claims;
pub mod dpop;
mod ed25519;
pub mod edgeset;
pub mod envelope;
pub mod error;
mod es256;
pub mod json;
pub mod jwk;
pub mod jws;
pub mod kem;
pub mod keys;
pub mod merkle;
#[cfg(feature = "rand")]
pub mod random;
pub mod revocation;

#[cfg(feature = "js")]
pub mod js;

pub use claims::{AccessClaims, Audience, ClaimsError, Validation};
pub use error::JoseError;
pub use jwk::{Jwk, JwkSet};
pub use jws::Limits;
pub use keys::{Alg, Keyring, SigningKey, VerifyingKey};
pub use revocation::{Kind, RevocationEvent};

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}
