//! Signing and verifying keys for the JOSE algorithms we allow: EdDSA (also named
//! `Ed25519`), ML-DSA-65, and ES256 (P-256, for device keys and DPoP proofs).

// Parses untrusted input: no input may panic it.
#![deny(clippy::indexing_slicing, clippy::unwrap_used)]

use ed25519_dalek::Signer as _;
use ml_dsa::{KeyExport as _, Keypair as _, MlDsa65};

use std::sync::Arc;

pub use crate::alg::Alg;
use crate::ed25519::KeyTable;
use crate::jwk::{Jwk, JwkSet};
use crate::{JoseError, b64};

/// ML-DSA-65 public key length (FIPS 204).
pub const MLDSA65_PUBLIC_KEY_LEN: usize = 1952;
/// ML-DSA-65 signature length (FIPS 204).
pub const MLDSA65_SIGNATURE_LEN: usize = 3309;
/// ES256 signature length: `r || s`, 32 bytes each, big-endian (RFC 7518 section 3.4;
/// not DER).
pub const ES256_SIGNATURE_LEN: usize = 64;

/// A public key bound to exactly one algorithm.
#[derive(Clone)]
pub enum VerifyingKey {
    /// Ed25519 public key.
    Ed25519(ed25519_dalek::VerifyingKey),
    /// ML-DSA-65 public key (decoded once: decoding costs more than a verification).
    MlDsa65(Box<ml_dsa::VerifyingKey<MlDsa65>>),
    /// P-256 public key (ES256), a point checked to be on the curve.
    P256(Box<p256::ecdsa::VerifyingKey>),
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "VerifyingKey({}, {})",
            self.alg().as_str(),
            self.thumbprint()
        )
    }
}

impl PartialEq for VerifyingKey {
    fn eq(&self, other: &Self) -> bool {
        self.alg() == other.alg() && self.to_bytes() == other.to_bytes()
    }
}

impl VerifyingKey {
    /// Decodes raw public key bytes for `alg`.
    pub fn from_bytes(alg: Alg, bytes: &[u8]) -> Result<Self, JoseError> {
        match alg {
            Alg::EdDsa => {
                let raw: &[u8; 32] = bytes
                    .try_into()
                    .map_err(|_| JoseError::BadKey("Ed25519 public key must be 32 bytes"))?;
                let key = ed25519_dalek::VerifyingKey::from_bytes(raw)
                    .map_err(|_| JoseError::BadKey("Ed25519 public key is not a curve point"))?;
                if key.is_weak() {
                    return Err(JoseError::BadKey("Ed25519 public key has small order"));
                }
                Ok(VerifyingKey::Ed25519(key))
            }
            Alg::MlDsa65 => {
                let enc = ml_dsa::EncodedVerifyingKey::<MlDsa65>::try_from(bytes)
                    .map_err(|_| JoseError::BadKey("ML-DSA-65 public key must be 1952 bytes"))?;
                Ok(VerifyingKey::MlDsa65(Box::new(
                    ml_dsa::VerifyingKey::decode(&enc),
                )))
            }
            Alg::Es256 => {
                // Only the uncompressed SEC1 form (what a JWK's x and y make): 0x04 || x || y.
                if bytes.len() != 65 || bytes.first() != Some(&0x04) {
                    return Err(JoseError::BadKey(
                        "P-256 public key must be 0x04 and 32-byte x and y coordinates",
                    ));
                }
                // Refuses coordinates of p or more, points off the curve and the identity.
                let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(bytes)
                    .map_err(|_| JoseError::BadKey("P-256 public key is not a curve point"))?;
                Ok(VerifyingKey::P256(Box::new(key)))
            }
        }
    }

    /// The only algorithm this key verifies.
    pub fn alg(&self) -> Alg {
        match self {
            VerifyingKey::Ed25519(_) => Alg::EdDsa,
            VerifyingKey::MlDsa65(_) => Alg::MlDsa65,
            VerifyingKey::P256(_) => Alg::Es256,
        }
    }

    /// Refuses a token whose header names another `alg` than this key's (for an Ed25519
    /// key, `EdDSA` and `Ed25519` both name its algorithm: see [`Alg::EdDsa`]).
    pub fn expect_alg(&self, header: Alg) -> Result<(), JoseError> {
        if self.alg() == header {
            Ok(())
        } else {
            Err(JoseError::AlgMismatch {
                header: header.as_str(),
                key: self.alg().as_str(),
            })
        }
    }

    /// Raw public key bytes (for P-256 the uncompressed SEC1 point, 65 bytes).
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            VerifyingKey::Ed25519(k) => k.to_bytes().to_vec(),
            VerifyingKey::MlDsa65(k) => k.encode().to_vec(),
            VerifyingKey::P256(k) => k.to_sec1_point(false).as_bytes().to_vec(),
        }
    }

    /// Verifies `signature` over `message` (strict Ed25519; ML-DSA with an empty context;
    /// ES256 as 64 bytes `r || s` with `0 < r, s < n`, either `s` and its negation being
    /// valid, as JOSE does not ask for low `s`).
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), JoseError> {
        match self {
            VerifyingKey::Ed25519(key) => {
                let sig = ed25519_dalek::Signature::from_slice(signature)
                    .map_err(|_| JoseError::BadSignature)?;
                key.verify_strict(message, &sig)
                    .map_err(|_| JoseError::BadSignature)
            }
            VerifyingKey::MlDsa65(key) => {
                let sig = ml_dsa::Signature::<MlDsa65>::try_from(signature)
                    .map_err(|_| JoseError::BadSignature)?;
                if key.verify_with_context(message, &[], &sig) {
                    Ok(())
                } else {
                    Err(JoseError::BadSignature)
                }
            }
            VerifyingKey::P256(key) => {
                // `from_slice` refuses any length but 64 (a DER signature among them) and
                // r or s outside 1..n; `es256` answers as `p256`'s verify does, faster.
                let sig = p256::ecdsa::Signature::from_slice(signature)
                    .map_err(|_| JoseError::BadSignature)?;
                if crate::es256::verify(key, message, &sig) {
                    Ok(())
                } else {
                    Err(JoseError::BadSignature)
                }
            }
        }
    }

    /// The public JWK (RFC 8037 OKP, RFC 9964 AKP or RFC 7518 EC), with `kid` set to the
    /// thumbprint.
    pub fn to_jwk(&self) -> Jwk {
        let mut jwk = self.thumbprint_jwk();
        jwk.kid = Some(self.thumbprint());
        jwk.use_ = Some("sig".into());
        jwk
    }

    /// RFC 7638 thumbprint (SHA-256, base64url), also used as the `kid`.
    pub fn thumbprint(&self) -> String {
        self.thumbprint_jwk().thumbprint()
    }

    fn thumbprint_jwk(&self) -> Jwk {
        match self {
            VerifyingKey::Ed25519(k) => Jwk::okp(b64::encode(k.as_bytes())),
            VerifyingKey::MlDsa65(k) => Jwk::akp(Alg::MlDsa65, b64::encode(&k.encode())),
            VerifyingKey::P256(k) => {
                let point = k.to_sec1_point(false);
                let xy = point.as_bytes().get(1..).unwrap_or_default();
                let (x, y) = xy.split_at(xy.len() / 2);
                Jwk::ec(b64::encode(x), b64::encode(y))
            }
        }
    }
}

/// A private key; every kind is stored as 32 bytes (its seed, or for P-256 its scalar).
pub enum SigningKey {
    /// Ed25519 private key.
    Ed25519(Box<ed25519_dalek::SigningKey>),
    /// ML-DSA-65 private key, expanded from its seed.
    MlDsa65(Box<ml_dsa::SigningKey<MlDsa65>>),
    /// P-256 private key (ES256): device keys and tests; never a token key.
    P256(Box<p256::ecdsa::SigningKey>),
}

impl SigningKey {
    /// Derives the key for `alg` from a 32-byte seed (RFC 8037 `d`, RFC 9964 `priv`).
    ///
    /// For ES256 the seed is the private scalar itself (RFC 7518 `d`, big-endian). The
    /// rare 32 bytes that are no scalar (zero, or the group order or more: about one
    /// random seed in 2^32) are replaced by their SHA-256 until they are one, so every
    /// seed gives a key; [`SigningKey::seed`] returns the scalar used.
    pub fn from_seed(alg: Alg, seed: &[u8; 32]) -> Self {
        match alg {
            Alg::EdDsa => {
                SigningKey::Ed25519(Box::new(ed25519_dalek::SigningKey::from_bytes(seed)))
            }
            Alg::MlDsa65 => SigningKey::MlDsa65(Box::new(ml_dsa::SigningKey::from_seed(
                &ml_dsa::B32::from(*seed),
            ))),
            Alg::Es256 => {
                let mut scalar = *seed;
                loop {
                    if let Ok(key) = p256::ecdsa::SigningKey::from_slice(&scalar) {
                        return SigningKey::P256(Box::new(key));
                    }
                    scalar = crate::sha256(&scalar);
                }
            }
        }
    }

    /// Generates a fresh key from OS randomness.
    #[cfg(feature = "rand")]
    pub fn generate(alg: Alg) -> Self {
        SigningKey::from_seed(alg, &crate::random::bytes::<32>())
    }

    /// The 32-byte seed (keep secret); for P-256 the scalar.
    pub fn seed(&self) -> [u8; 32] {
        match self {
            SigningKey::Ed25519(k) => k.to_bytes(),
            SigningKey::MlDsa65(k) => k.to_bytes().into(),
            SigningKey::P256(k) => k.to_bytes().into(),
        }
    }

    /// The algorithm of this key.
    pub fn alg(&self) -> Alg {
        match self {
            SigningKey::Ed25519(_) => Alg::EdDsa,
            SigningKey::MlDsa65(_) => Alg::MlDsa65,
            SigningKey::P256(_) => Alg::Es256,
        }
    }

    /// The matching public key.
    pub fn verifying_key(&self) -> VerifyingKey {
        match self {
            SigningKey::Ed25519(k) => VerifyingKey::Ed25519(k.verifying_key()),
            SigningKey::MlDsa65(k) => VerifyingKey::MlDsa65(Box::new(k.verifying_key())),
            SigningKey::P256(k) => VerifyingKey::P256(Box::new(*k.verifying_key())),
        }
    }

    /// The `kid`: the public key's RFC 7638 thumbprint.
    pub fn kid(&self) -> String {
        self.verifying_key().thumbprint()
    }

    /// Signs `message` (deterministic Ed25519; deterministic ML-DSA, empty context;
    /// ES256 with an RFC 6979 nonce, as 64 bytes `r || s`).
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, JoseError> {
        match self {
            SigningKey::Ed25519(k) => Ok(k.sign(message).to_bytes().to_vec()),
            SigningKey::P256(k) => {
                let sig: p256::ecdsa::Signature =
                    k.try_sign(message).map_err(|_| JoseError::SigningFailed)?;
                Ok(sig.to_bytes().to_vec())
            }
            SigningKey::MlDsa65(k) => k
                .expanded_key()
                .sign_deterministic(message, &[])
                .map(|sig| sig.encode().to_vec())
                .map_err(|_| JoseError::SigningFailed),
        }
    }

    /// The private JWK (public members plus `d` or `priv`).
    pub fn to_private_jwk(&self) -> Jwk {
        let mut jwk = self.verifying_key().to_jwk();
        let seed = b64::encode(&self.seed());
        match self {
            SigningKey::Ed25519(_) | SigningKey::P256(_) => jwk.d = Some(seed),
            SigningKey::MlDsa65(_) => jwk.priv_ = Some(seed),
        }
        jwk
    }

    /// Imports a private JWK, checking that its public part matches the seed.
    pub fn from_private_jwk(jwk: &Jwk) -> Result<Self, JoseError> {
        let public = jwk.to_verifying_key()?;
        let seed = match public.alg() {
            Alg::EdDsa | Alg::Es256 => jwk.d.as_deref(),
            Alg::MlDsa65 => jwk.priv_.as_deref(),
        }
        .ok_or(JoseError::BadKey("JWK has no private key"))?;
        let key = SigningKey::from_seed(public.alg(), &b64::decode_array(seed, "private key")?);
        if key.verifying_key() != public {
            return Err(JoseError::BadKey("private key does not match public key"));
        }
        Ok(key)
    }
}

/// The trusted public keys, looked up by `kid`; each key verifies only its own `alg`.
///
/// An Ed25519 key gets its table of multiples when it enters the keyring (110 KiB, built in
/// about the time of nine verifications; see the `ed25519` module), so every verification
/// through the keyring uses it and none builds it. A [`VerifyingKey`] used on its own
/// (e.g. a device key checked once) has no table.
#[derive(Clone, Default)]
pub struct Keyring {
    keys: Vec<TrustedKey>,
}

#[derive(Clone)]
struct TrustedKey {
    kid: String,
    key: VerifyingKey,
    table: Option<Arc<KeyTable>>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.keys.iter().map(|k| (&k.kid, &k.key)))
            .finish()
    }
}

impl Keyring {
    /// An empty keyring.
    pub fn new() -> Self {
        Keyring::default()
    }

    /// Adds a key under `kid`, replacing a key with the same `kid`.
    pub fn insert(&mut self, kid: String, key: VerifyingKey) {
        self.keys.retain(|k| k.kid != kid);
        let table = match &key {
            VerifyingKey::Ed25519(k) => Some(KeyTable::new(k)),
            VerifyingKey::MlDsa65(_) | VerifyingKey::P256(_) => None,
        };
        self.keys.push(TrustedKey { kid, key, table });
    }

    /// Adds a key under its thumbprint.
    pub fn add(&mut self, key: VerifyingKey) {
        self.insert(key.thumbprint(), key);
    }

    /// Adds every key of `other` (its Ed25519 tables shared, not rebuilt), replacing keys
    /// with the same `kid`.
    pub fn merge(&mut self, other: &Keyring) {
        for key in &other.keys {
            self.keys.retain(|k| k.kid != key.kid);
            self.keys.push(key.clone());
        }
    }

    /// The key with this `kid`.
    pub fn get(&self, kid: &str) -> Option<&VerifyingKey> {
        self.keys.iter().find(|k| k.kid == kid).map(|k| &k.key)
    }

    /// Verifies `signature` over `message` with the key `kid`, which must be for `alg`
    /// (Ed25519 through the key's table: the same answers as [`VerifyingKey::verify`]).
    pub fn verify(
        &self,
        kid: &str,
        alg: Alg,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), JoseError> {
        let trusted = self
            .keys
            .iter()
            .find(|k| k.kid == kid)
            .ok_or_else(|| JoseError::UnknownKey(kid.to_owned()))?;
        trusted.key.expect_alg(alg)?;
        match &trusted.table {
            Some(table) if table.verify_strict(message, signature) => Ok(()),
            Some(_) => Err(JoseError::BadSignature),
            None => trusted.key.verify(message, signature),
        }
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when no key is trusted.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// All `(kid, key)` pairs.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &VerifyingKey)> {
        self.keys.iter().map(|k| (k.kid.as_str(), &k.key))
    }

    /// Builds a keyring from a JWKS. Keys of other types are skipped (a JWKS may serve
    /// more than we use); a key of ours that is invalid is an error. Keys without a `kid`
    /// get their thumbprint.
    pub fn from_jwks(set: &JwkSet) -> Result<Keyring, JoseError> {
        let mut ring = Keyring::new();
        for jwk in &set.keys {
            if !jwk.is_supported() {
                continue;
            }
            let key = jwk.to_verifying_key()?;
            let kid = jwk.kid.clone().unwrap_or_else(|| key.thumbprint());
            ring.insert(kid, key);
        }
        Ok(ring)
    }
}

/// Reading a key from its JWK lives here, beside the keys, so that `jwk` stays a pure
/// format module.
impl Jwk {
    /// The public key; the JWK's `alg`, when present, must agree with its type (`EdDSA`
    /// or `Ed25519` for an OKP Ed25519 key, `ES256` for EC P-256, `ML-DSA-65` for AKP).
    pub fn to_verifying_key(&self) -> Result<VerifyingKey, JoseError> {
        let (alg, public) = match (self.kty.as_str(), self.crv.as_deref()) {
            ("OKP", Some("Ed25519")) => (Alg::EdDsa, self.x.as_deref()),
            ("OKP", _) => return Err(JoseError::BadKey("OKP key must use curve Ed25519")),
            ("EC", Some("P-256")) => return self.p256_key(),
            ("EC", _) => return Err(JoseError::BadKey("EC key must use curve P-256")),
            ("AKP", _) => {
                let alg = self
                    .alg
                    .as_deref()
                    .ok_or(JoseError::BadKey("AKP key needs alg"))?;
                match Alg::parse(alg)? {
                    Alg::MlDsa65 => (Alg::MlDsa65, self.pub_.as_deref()),
                    _ => return Err(JoseError::BadKey("AKP key must be for ML-DSA-65")),
                }
            }
            _ => return Err(JoseError::BadKey("unsupported kty")),
        };
        self.expect_declared_alg(alg)?;
        let public = public.ok_or(JoseError::BadKey("JWK has no public key member"))?;
        VerifyingKey::from_bytes(alg, &b64::decode(public, "public key")?)
    }

    fn expect_declared_alg(&self, alg: Alg) -> Result<(), JoseError> {
        match self.alg.as_deref() {
            Some(declared) if Alg::parse(declared)? != alg => {
                Err(JoseError::BadKey("JWK alg does not match its key type"))
            }
            _ => Ok(()),
        }
    }

    /// An EC P-256 key: `x` and `y` exactly 32 bytes each in canonical base64url (leading
    /// zeros kept, RFC 7518 6.2.1.2), the point on the curve.
    fn p256_key(&self) -> Result<VerifyingKey, JoseError> {
        self.expect_declared_alg(Alg::Es256)?;
        let coordinate = |member: &Option<String>, what| {
            let text = member
                .as_deref()
                .ok_or(JoseError::BadKey("EC key needs x and y"))?;
            b64::decode_array::<32>(text, what)
                .map_err(|_| JoseError::BadKey("EC P-256 x and y must be 32 bytes of base64url"))
        };
        let x = coordinate(&self.x, "x")?;
        let y = coordinate(&self.y, "y")?;
        let mut point = [0x04; 65];
        point[1..33].copy_from_slice(&x);
        point[33..].copy_from_slice(&y);
        VerifyingKey::from_bytes(Alg::Es256, &point)
    }
}
