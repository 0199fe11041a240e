//! JavaScript bindings for clients (feature `js`): device keys, DPoP proofs and the
//! client side of the refresh handshake.

use wasm_bindgen::prelude::*;

use crate::dpop::{self, DpopClaims, ProofRequirements};
use crate::kem::{self, EphemeralSecret};
use crate::keys::{Alg, SigningKey};
use crate::{b64, random};

fn js_err(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

/// A device key (Ed25519, P-256 or ML-DSA-65) that signs refresh and DPoP proofs. (A
/// browser that wants a non-extractable P-256 key makes it with WebCrypto instead: see
/// `clients/js`.)
#[wasm_bindgen]
pub struct DeviceKey {
    key: SigningKey,
}

#[wasm_bindgen]
impl DeviceKey {
    /// A new key for `alg` (`"EdDSA"` or its RFC 9864 name `"Ed25519"`, `"ES256"`, or
    /// `"ML-DSA-65"`).
    #[wasm_bindgen(constructor)]
    pub fn generate(alg: &str) -> Result<DeviceKey, JsError> {
        Ok(DeviceKey {
            key: SigningKey::generate(Alg::parse(alg).map_err(js_err)?),
        })
    }

    /// Restores a key from its `alg` and base64url seed (see `seed`; for ES256 the private
    /// scalar).
    #[wasm_bindgen(js_name = fromSeed)]
    pub fn from_seed(alg: &str, seed: &str) -> Result<DeviceKey, JsError> {
        let alg = Alg::parse(alg).map_err(js_err)?;
        let seed = b64::decode_array::<32>(seed, "seed").map_err(js_err)?;
        Ok(DeviceKey {
            key: SigningKey::from_seed(alg, &seed),
        })
    }

    /// The secret seed, base64url, for storage in the client's key store.
    pub fn seed(&self) -> String {
        b64::encode(&self.key.seed())
    }

    /// The public JWK as a JSON string.
    #[wasm_bindgen(js_name = publicJwk)]
    pub fn public_jwk(&self) -> String {
        serde_json::to_string(&self.key.verifying_key().to_jwk()).unwrap_or_default()
    }

    /// The RFC 7638 thumbprint (`cnf.jkt`).
    pub fn thumbprint(&self) -> String {
        self.key.kid()
    }

    /// Signs a proof for `method` and `uri` at `iat` (seconds), optionally bound to an
    /// access token and a server nonce.
    #[wasm_bindgen(js_name = signProof)]
    pub fn sign_proof(
        &self,
        method: &str,
        uri: &str,
        iat: f64,
        access_token: Option<String>,
        nonce: Option<String>,
    ) -> Result<String, JsError> {
        let claims = DpopClaims {
            jti: random::id(),
            htm: method.to_owned(),
            htu: uri.to_owned(),
            iat: iat as i64,
            ath: access_token.as_deref().map(dpop::ath),
            nonce,
        };
        dpop::sign_proof(&self.key, &claims).map_err(js_err)
    }
}

/// Checks a proof and returns the thumbprint of the key that signed it.
#[wasm_bindgen(js_name = verifyProof)]
pub fn verify_proof(
    proof: &str,
    method: &str,
    uri: &str,
    now: f64,
    max_age: f64,
    access_token: Option<String>,
) -> Result<String, JsError> {
    let req = ProofRequirements {
        method,
        uri,
        now: now as i64,
        max_age: max_age as i64,
        access_token: access_token.as_deref(),
        nonce: None,
        jkt: None,
    };
    dpop::verify_proof(proof, &req)
        .map(|p| p.jkt)
        .map_err(js_err)
}

/// An ephemeral hybrid KEM key pair for one refresh; drop it after `open`.
#[wasm_bindgen]
pub struct EphemeralKem {
    secret: EphemeralSecret,
    public: Vec<u8>,
}

#[wasm_bindgen]
impl EphemeralKem {
    /// A fresh X-Wing key pair.
    #[wasm_bindgen(constructor)]
    pub fn generate() -> EphemeralKem {
        let (secret, public) = EphemeralSecret::generate();
        EphemeralKem { secret, public }
    }

    /// The public key, base64url (send it with the refresh request).
    #[wasm_bindgen(js_name = publicKey)]
    pub fn public_key(&self) -> String {
        b64::encode(&self.public)
    }

    /// Decapsulates and opens the server's answer (both base64url) bound to `transcript`.
    pub fn open(
        &self,
        kem_ciphertext: &str,
        transcript: &str,
        sealed: &str,
    ) -> Result<String, JsError> {
        let ct = b64::decode(kem_ciphertext, "kem ciphertext").map_err(js_err)?;
        let sealed = b64::decode(sealed, "sealed").map_err(js_err)?;
        let plain = self
            .secret
            .open(&ct, transcript.as_bytes(), &sealed)
            .map_err(js_err)?;
        String::from_utf8(plain).map_err(js_err)
    }
}

/// Encapsulates to `public_key` and seals `plaintext`; returns `{kemCiphertext, sealed}`
/// as JSON (both base64url). The server does this; clients may use it to test.
#[wasm_bindgen(js_name = hybridSeal)]
pub fn hybrid_seal(public_key: &str, transcript: &str, plaintext: &str) -> Result<String, JsError> {
    let public = b64::decode(public_key, "public key").map_err(js_err)?;
    let sealed =
        kem::seal_random(&public, transcript.as_bytes(), plaintext.as_bytes()).map_err(js_err)?;
    Ok(serde_json::json!({
        "kemCiphertext": b64::encode(&sealed.kem_ciphertext),
        "sealed": b64::encode(&sealed.sealed),
    })
    .to_string())
}
