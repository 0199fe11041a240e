//! Differential: an Ed25519 signature checked through a keyring (the key's table of
//! multiples) must get exactly the answer of ed25519-dalek's `verify_strict` (a
//! `VerifyingKey` used alone), for valid signatures mutated by the input and for
//! arbitrary keys, messages and signatures.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use shared::{Alg, Keyring, SigningKey, VerifyingKey};

fn signer() -> &'static (SigningKey, Keyring) {
    static KEY: OnceLock<(SigningKey, Keyring)> = OnceLock::new();
    KEY.get_or_init(|| {
        let key = SigningKey::from_seed(Alg::EdDsa, &[7; 32]);
        let mut ring = Keyring::new();
        ring.insert("k".into(), key.verifying_key());
        (key, ring)
    })
}

fn check(ring: &Keyring, key: &VerifyingKey, message: &[u8], signature: &[u8]) {
    let ours = ring.verify("k", Alg::EdDsa, message, signature).is_ok();
    let dalek = key.verify(message, signature).is_ok();
    assert_eq!(ours, dalek, "message {message:?} signature {signature:?}");
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        // A valid signature by the fixed key, XORed with up to 64 bytes of the input
        // (all zeros leaves it valid); the rest is the message.
        let (signing, ring) = signer();
        let (mask, message) = rest.split_at(rest.len().min(64));
        let Ok(mut signature) = signing.sign(message) else {
            return;
        };
        for (s, m) in signature.iter_mut().zip(mask) {
            *s ^= m;
        }
        check(ring, &signing.verifying_key(), message, &signature);
    } else {
        // Key, signature and message all from the input.
        let Some((key, rest)) = rest.split_first_chunk::<32>() else {
            return;
        };
        let Ok(key) = VerifyingKey::from_bytes(Alg::EdDsa, key) else {
            return;
        };
        let (signature, message) = rest.split_at(rest.len().min(64));
        let mut ring = Keyring::new();
        ring.insert("k".into(), key.clone());
        check(&ring, &key, message, signature);
    }
});
