//! Known-answer tests from the standards: RFC 8037 (EdDSA JWS), RFC 7515 A.3 (ES256 JWS),
//! RFC 9449 (an ES256 DPoP proof and its key's thumbprint), NIST ACVP ML-DSA-65 (FIPS 204)
//! and the X-Wing draft's test vectors.

use serde::Deserialize;
use shared::dpop::{ProofRequirements, verify_proof};
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
struct Rfc7515A3 {
    d: String,
    x: String,
    y: String,
    thumbprint: String,
    jws: String,
}

#[test]
fn rfc7515_a3_es256_jws_example_verifies_with_its_key_and_ours_verifies_too() {
    let v: Rfc7515A3 = serde_json::from_str(include_str!("vectors/rfc7515_a3.json")).unwrap();
    let jwk = Jwk {
        kty: "EC".into(),
        crv: Some("P-256".into()),
        x: Some(v.x.clone()),
        y: Some(v.y.clone()),
        ..Jwk::default()
    };
    let public = jwk.to_verifying_key().unwrap();
    assert_eq!(public.alg(), Alg::Es256);
    assert_eq!(jwk.thumbprint(), v.thumbprint);
    assert_eq!(public.thumbprint(), v.thumbprint);

    let jws = Jws::parse(&v.jws, &Limits::default()).unwrap();
    assert_eq!(jws.alg, Alg::Es256);
    jws.verify_with(&public).unwrap();

    // The private scalar gives the same public key; ECDSA signatures are randomised (ours
    // use an RFC 6979 nonce), so the RFC's bytes cannot be reproduced, but ours verify.
    let scalar: [u8; 32] = b64::decode(&v.d, "d").unwrap().try_into().unwrap();
    let key = SigningKey::from_seed(Alg::Es256, &scalar);
    assert_eq!(key.verifying_key(), public);
    assert_eq!(key.seed(), scalar);
    let (input, signature) = v.jws.rsplit_once('.').unwrap();
    let ours = key.sign(input.as_bytes()).unwrap();
    assert_eq!(ours.len(), 64);
    public.verify(input.as_bytes(), &ours).unwrap();

    // The private JWK round-trips through the standard EC members.
    let private = key.to_private_jwk();
    assert_eq!(
        (private.x.as_deref(), private.y.as_deref()),
        (Some(&*v.x), Some(&*v.y))
    );
    assert_eq!(private.d.as_deref(), Some(&*v.d));
    assert_eq!(
        SigningKey::from_private_jwk(&private).unwrap().seed(),
        scalar
    );

    let mut tampered = b64::decode(signature, "sig").unwrap();
    tampered[10] ^= 1;
    assert!(public.verify(input.as_bytes(), &tampered).is_err());
}

#[derive(Deserialize)]
struct Rfc9449 {
    proof: String,
    method: String,
    uri: String,
    iat: i64,
    jkt: String,
}

#[test]
fn rfc9449_es256_dpop_proof_example_verifies_and_gives_the_published_jkt() {
    let v: Rfc9449 = serde_json::from_str(include_str!("vectors/rfc9449.json")).unwrap();
    let verified = verify_proof(
        &v.proof,
        &ProofRequirements {
            method: &v.method,
            uri: &v.uri,
            now: v.iat,
            max_age: 60,
            access_token: None,
            nonce: None,
            jkt: Some(&v.jkt),
        },
    )
    .unwrap();
    assert_eq!(verified.jkt, v.jkt);
    assert_eq!(verified.claims.jti, "-BwC3ESc6acc2lTc");
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
