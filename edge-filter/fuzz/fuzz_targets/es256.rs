//! Differential: an ES256 signature checked by `shared` (its own double multiplication,
//! `shared/src/es256.rs`) must get exactly the answer of the `p256` crate's verifier, for
//! valid signatures mutated by the input and for arbitrary keys, messages and signatures.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use p256::ecdsa::signature::Verifier as _;
use shared::{Alg, SigningKey, VerifyingKey};

fn signer() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| SigningKey::from_seed(Alg::Es256, &[7; 32]))
}

fn check(key: &VerifyingKey, message: &[u8], signature: &[u8]) {
    let ours = key.verify(message, signature).is_ok();
    let theirs = p256::ecdsa::VerifyingKey::from_sec1_bytes(&key.to_bytes())
        .ok()
        .zip(p256::ecdsa::Signature::from_slice(signature).ok())
        .is_some_and(|(k, s)| k.verify(message, &s).is_ok());
    assert_eq!(ours, theirs, "message {message:?} signature {signature:?}");
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        // A valid signature by the fixed key, XORed with up to 64 bytes of the input
        // (all zeros leaves it valid); the rest is the message.
        let signing = signer();
        let (mask, message) = rest.split_at(rest.len().min(64));
        let Ok(mut signature) = signing.sign(message) else {
            return;
        };
        for (s, m) in signature.iter_mut().zip(mask) {
            *s ^= m;
        }
        check(&signing.verifying_key(), message, &signature);
    } else {
        // A key from a 32-byte scalar of the input, signature and message from the rest.
        let Some((seed, rest)) = rest.split_first_chunk::<32>() else {
            return;
        };
        let key = SigningKey::from_seed(Alg::Es256, seed).verifying_key();
        let (signature, message) = rest.split_at(rest.len().min(64));
        check(&key, message, signature);
    }
});
