//! Known-answer tests from the standards: RFC 8037 (EdDSA JWS), NIST ACVP ML-DSA-65
//! (FIPS 204) and the X-Wing draft's test vectors.

use serde::Deserialize;
use shared::jws::{Jws, Limits};
use shared::keys::{Alg, SigningKey, VerifyingKey};
use shared::{Jwk, b64, kem};

#[derive(Deserialize)]
struct Rfc8037 {
    d: String,
    x: String,
    thumbprint: String,
    jws: String,
}

#[test]
fn rfc8037_ed25519_jws_example_verifies_and_signs_identically() {
    let v: Rfc8037 = serde_json::from_str(include_str!("vectors/rfc8037.json")).unwrap();
    let seed: [u8; 32] = b64::decode(&v.d, "d").unwrap().try_into().unwrap();
    let key = SigningKey::from_seed(Alg::EdDsa, &seed);
    let public = key.verifying_key();
    assert_eq!(b64::encode(&public.to_bytes()), v.x);
    assert_eq!(public.thumbprint(), v.thumbprint);

    let jws = Jws::parse(&v.jws, &Limits::default()).unwrap();
    assert_eq!(jws.payload, b"Example of Ed25519 signing");
    jws.verify_with(&public).unwrap();

    let (input, signature) = v.jws.rsplit_once('.').unwrap();
    assert_eq!(b64::encode(&key.sign(input.as_bytes()).unwrap()), signature);

    let jwk = Jwk {
        kty: "OKP".into(),
        crv: Some("Ed25519".into()),
        x: Some(v.x.clone()),
        ..Jwk::default()
    };
    assert_eq!(jwk.thumbprint(), v.thumbprint);
    assert_eq!(jwk.to_verifying_key().unwrap(), public);
}

#[derive(Deserialize)]
struct MlDsaKeyGen {
    seed: String,
    pk: String,
}

#[test]
fn mldsa65_key_generation_matches_acvp() {
    let v: MlDsaKeyGen = serde_json::from_str(include_str!("vectors/mldsa65_keygen.json")).unwrap();
    let seed: [u8; 32] = hex::decode(&v.seed).unwrap().try_into().unwrap();
    let key = SigningKey::from_seed(Alg::MlDsa65, &seed);
    assert_eq!(
        hex::encode_upper(key.verifying_key().to_bytes()),
        v.pk.to_uppercase()
    );
    assert_eq!(key.seed(), seed);
}

#[derive(Deserialize)]
struct MlDsaSigVer {
    pk: String,
    message: String,
    context: String,
    signature: String,
    #[serde(rename = "testPassed")]
    test_passed: bool,
}

#[test]
fn mldsa65_signature_verification_matches_acvp() {
    let v: MlDsaSigVer = serde_json::from_str(include_str!("vectors/mldsa65_sigver.json")).unwrap();
    assert!(v.context.is_empty() && v.test_passed);
    let key = VerifyingKey::from_bytes(Alg::MlDsa65, &hex::decode(&v.pk).unwrap()).unwrap();
    let mut message = hex::decode(&v.message).unwrap();
    let signature = hex::decode(&v.signature).unwrap();
    key.verify(&message, &signature).unwrap();
    message[0] ^= 1;
    assert!(key.verify(&message, &signature).is_err());
}

#[derive(Deserialize)]
struct XWing {
    seed: String,
    eseed: String,
    ss: String,
    pk: String,
    ct: String,
}

#[test]
fn xwing_draft_vectors_match() {
    let vectors: Vec<XWing> =
        serde_json::from_str(include_str!("vectors/xwing-draft.json")).unwrap();
    assert!(!vectors.is_empty());
    for v in vectors {
        let seed: [u8; 32] = hex::decode(&v.seed).unwrap().try_into().unwrap();
        let (_, public) = kem::EphemeralSecret::from_seed(seed);
        assert_eq!(hex::encode(&public), v.pk);
        let eseed: [u8; 64] = hex::decode(&v.eseed).unwrap().try_into().unwrap();
        let (ct, ss) = kem::encapsulate(&public, eseed).unwrap();
        assert_eq!(hex::encode(&ct), v.ct);
        assert_eq!(hex::encode(ss), v.ss);
        let (secret, _) = kem::EphemeralSecret::from_seed(seed);
        assert_eq!(hex::encode(secret.decapsulate(&ct).unwrap()), v.ss);
        let sealed = kem::seal(&public, eseed, b"transcript", b"secret").unwrap();
        assert_eq!(sealed.kem_ciphertext, ct);
        assert_eq!(
            secret
                .open(&sealed.kem_ciphertext, b"transcript", &sealed.sealed)
                .unwrap(),
            b"secret"
        );
    }
}
