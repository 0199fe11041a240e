//! The refresh handshake: hybrid KEM (X-Wing: X25519 + ML-KEM-768), HKDF-SHA256 and
//! ChaCha20-Poly1305, all bound to the transcript of the exchange.
//!
//! The client makes an ephemeral key pair per refresh and forgets the secret after
//! opening the answer, so a recorded exchange cannot be decrypted later.

use chacha20poly1305::ChaCha20Poly1305;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use x_wing::{Decapsulator as _, KeyExport as _, TryDecapsulate as _};

use crate::sha256;

/// Length of an X-Wing encapsulation (public) key.
pub const PUBLIC_KEY_LEN: usize = x_wing::ENCAPSULATION_KEY_SIZE;
/// Length of an X-Wing ciphertext.
pub const CIPHERTEXT_LEN: usize = x_wing::CIPHERTEXT_SIZE;
/// Randomness consumed by one encapsulation.
pub const ENCAPSULATION_RANDOMNESS_LEN: usize = x_wing::ENCAPSULATION_RANDOMNESS_SIZE;

const INFO: &[u8] = b"pq-token refresh v1";

/// Why a handshake step failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KemError {
    /// The public key is not a valid X-Wing encapsulation key.
    #[error("invalid hybrid KEM public key")]
    BadPublicKey,
    /// The KEM ciphertext has the wrong length or is rejected.
    #[error("invalid hybrid KEM ciphertext")]
    BadCiphertext,
    /// Decryption failed: wrong key, altered data or a different transcript.
    #[error("sealed box does not open (altered data or different transcript)")]
    OpenFailed,
}

/// The client's ephemeral secret (a 32-byte X-Wing seed).
pub struct EphemeralSecret {
    seed: [u8; 32],
}

impl EphemeralSecret {
    /// The secret and its public key from a 32-byte seed.
    pub fn from_seed(seed: [u8; 32]) -> (EphemeralSecret, Vec<u8>) {
        let key = x_wing::DecapsulationKey::from(seed);
        let public = key.encapsulation_key().to_bytes().to_vec();
        (EphemeralSecret { seed }, public)
    }

    /// A fresh secret and its public key.
    #[cfg(feature = "rand")]
    pub fn generate() -> (EphemeralSecret, Vec<u8>) {
        EphemeralSecret::from_seed(crate::random::bytes())
    }

    /// The X-Wing shared secret for `kem_ciphertext`.
    pub fn decapsulate(&self, kem_ciphertext: &[u8]) -> Result<[u8; 32], KemError> {
        let ct =
            x_wing::Ciphertext::try_from(kem_ciphertext).map_err(|_| KemError::BadCiphertext)?;
        let key = x_wing::DecapsulationKeyRejectNonContrib::from(self.seed);
        let shared = key
            .try_decapsulate(&ct)
            .map_err(|_| KemError::BadCiphertext)?;
        Ok(shared.into())
    }

    /// Decapsulates `kem_ciphertext`, derives the key and opens `sealed`.
    pub fn open(
        &self,
        kem_ciphertext: &[u8],
        transcript: &[u8],
        sealed: &[u8],
    ) -> Result<Vec<u8>, KemError> {
        let shared = self.decapsulate(kem_ciphertext)?;
        aead(&shared, kem_ciphertext, transcript)
            .decrypt(
                &Default::default(),
                Payload {
                    msg: sealed,
                    aad: transcript,
                },
            )
            .map_err(|_| KemError::OpenFailed)
    }
}

/// The server's answer: the KEM ciphertext and the sealed plaintext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedBox {
    /// X-Wing ciphertext (1120 bytes).
    pub kem_ciphertext: Vec<u8>,
    /// ChaCha20-Poly1305 ciphertext and tag.
    pub sealed: Vec<u8>,
}

/// Checks that `public_key` is an X-Wing encapsulation key, without encapsulating.
pub fn check_public_key(public_key: &[u8]) -> Result<(), KemError> {
    x_wing::EncapsulationKey::try_from(public_key)
        .map(|_| ())
        .map_err(|_| KemError::BadPublicKey)
}

/// X-Wing encapsulation with caller-supplied randomness: `(ciphertext, shared secret)`.
pub fn encapsulate(
    public_key: &[u8],
    randomness: [u8; ENCAPSULATION_RANDOMNESS_LEN],
) -> Result<(Vec<u8>, [u8; 32]), KemError> {
    let key = x_wing::EncapsulationKey::try_from(public_key).map_err(|_| KemError::BadPublicKey)?;
    let (ct, shared) = key.encapsulate_deterministic(&randomness.into());
    Ok((ct.to_vec(), shared.into()))
}

/// Encapsulates to `public_key` with caller-supplied randomness and seals `plaintext`.
pub fn seal(
    public_key: &[u8],
    randomness: [u8; ENCAPSULATION_RANDOMNESS_LEN],
    transcript: &[u8],
    plaintext: &[u8],
) -> Result<SealedBox, KemError> {
    let (kem_ciphertext, shared) = encapsulate(public_key, randomness)?;
    let sealed = aead(&shared, &kem_ciphertext, transcript)
        .encrypt(
            &Default::default(),
            Payload {
                msg: plaintext,
                aad: transcript,
            },
        )
        .map_err(|_| KemError::OpenFailed)?;
    Ok(SealedBox {
        kem_ciphertext,
        sealed,
    })
}

/// [`seal`] with OS randomness.
#[cfg(feature = "rand")]
pub fn seal_random(
    public_key: &[u8],
    transcript: &[u8],
    plaintext: &[u8],
) -> Result<SealedBox, KemError> {
    seal(public_key, crate::random::bytes(), transcript, plaintext)
}

/// One AEAD key per encapsulation, so the all-zero nonce is never reused under a key.
fn aead(shared: &[u8], kem_ciphertext: &[u8], transcript: &[u8]) -> ChaCha20Poly1305 {
    let salt = sha256(transcript);
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(&salt), shared);
    let mut info = INFO.to_vec();
    info.extend_from_slice(&sha256(kem_ciphertext));
    let mut key = [0u8; 32];
    #[expect(
        clippy::expect_used,
        reason = "32 bytes is always a valid HKDF-SHA256 output length"
    )]
    hk.expand(&info, &mut key).expect("32-byte HKDF output");
    ChaCha20Poly1305::new(&key.into())
}
