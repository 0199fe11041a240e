//! An independent JOSE implementation (`jwt-simple`, with its own ML-DSA code) and ours
//! agree on EdDSA and ML-DSA-65 tokens: it verifies ours with the public key from our
//! JWK (for ML-DSA-65 the RFC 9964 `AKP` JWK itself), and we verify its tokens.

use jwt_simple::prelude::{
    Claims, Duration, Ed25519KeyPair, Ed25519PublicKey, EdDSAKeyPairLike as _,
    EdDSAPublicKeyLike as _, JWTClaims, MLDSA65KeyPair, MLDSA65PublicKey, MLDSAKeyPairLike as _,
    MLDSAPublicKeyLike as _, NoCustomClaims, VerificationOptions,
};
use shared::jwk::Jwk;
use shared::jws::{self, Jws, Limits};
use shared::keys::{Alg, Keyring, SigningKey, VerifyingKey};

/// An access token for `sub` signed with `key` the way the control plane signs them.
fn our_token(key: &SigningKey, sub: &str, jti: &str) -> String {
    let payload = serde_json::json!({
        "iss": "pq-control-plane", "sub": sub, "aud": "pq-api",
        "exp": 4_000_000_000_i64, "iat": 1_700_000_000_i64, "nbf": 1_700_000_000_i64, "jti": jti
    });
    jws::sign(
        key,
        "at+jwt",
        Some(&key.kid()),
        None,
        payload.to_string().as_bytes(),
    )
    .expect("sign")
}

#[test]
fn jwt_simple_verifies_our_eddsa_tokens() {
    let key = SigningKey::from_seed(Alg::EdDsa, &[7; 32]);
    let token = our_token(&key, "alice", "j1");
    let public = Ed25519PublicKey::from_bytes(&key.verifying_key().to_bytes()).expect("their key");
    let claims: JWTClaims<NoCustomClaims> = public
        .verify_token(&token, Some(VerificationOptions::default()))
        .expect("jwt-simple verifies our token");
    assert_eq!(claims.subject.as_deref(), Some("alice"));
    assert_eq!(claims.jwt_id.as_deref(), Some("j1"));

    // One flipped signature byte: refused there too.
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut sig = shared::b64::decode(&parts[2], "sig").unwrap();
    sig[0] ^= 1;
    parts[2] = shared::b64::encode(&sig);
    assert!(
        public
            .verify_token::<NoCustomClaims>(&parts.join("."), None)
            .is_err()
    );
}

#[test]
fn we_verify_jwt_simple_eddsa_tokens() {
    let theirs = Ed25519KeyPair::generate();
    let public = VerifyingKey::from_bytes(Alg::EdDsa, &theirs.public_key().to_bytes())
        .expect("their public key is a valid Ed25519 key for us");
    let kid = public.thumbprint();
    let mut ring = Keyring::new();
    ring.add(public);
    let theirs = theirs.with_key_id(&kid);
    let claims = Claims::create(Duration::from_hours(1)).with_subject("bob");
    let token = theirs.sign(claims).expect("jwt-simple signs");
    let jws = Jws::parse(&token, &Limits::default()).expect("strict parse accepts it");
    jws.verify(&ring).expect("we verify it");
    let payload: serde_json::Value = serde_json::from_slice(&jws.payload).expect("json");
    assert_eq!(payload["sub"], "bob");
    // Signed by another key under the same kid: refused.
    let impostor = Ed25519KeyPair::generate().with_key_id(&kid);
    let forged = impostor
        .sign(Claims::create(Duration::from_hours(1)).with_subject("bob"))
        .expect("sign");
    let forged = Jws::parse(&forged, &Limits::default()).expect("parse");
    assert!(forged.verify(&ring).is_err());
}

#[test]
fn jwt_simple_verifies_our_ml_dsa_65_tokens_with_our_jwk() {
    let key = SigningKey::from_seed(Alg::MlDsa65, &[9; 32]);
    let kid = key.kid();
    let token = our_token(&key, "carol", "j2");
    let jwk = serde_json::to_string(&key.verifying_key().to_jwk()).expect("jwk");
    let public = MLDSA65PublicKey::from_jwk(&jwk).expect("jwt-simple reads our AKP JWK");
    let claims: JWTClaims<NoCustomClaims> = public
        .verify_token(&token, Some(VerificationOptions::default()))
        .expect("jwt-simple verifies our ML-DSA-65 token");
    assert_eq!(claims.subject.as_deref(), Some("carol"));
    assert_eq!(
        public.jwk_thumbprint(),
        kid,
        "both compute the same RFC 7638 kid"
    );

    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut sig = shared::b64::decode(&parts[2], "sig").unwrap();
    sig[100] ^= 1;
    parts[2] = shared::b64::encode(&sig);
    assert!(
        public
            .verify_token::<NoCustomClaims>(&parts.join("."), None)
            .is_err()
    );
}

#[test]
fn we_verify_jwt_simple_ml_dsa_65_tokens_with_its_jwk() {
    let theirs = MLDSA65KeyPair::generate();
    let jwk = Jwk::parse(theirs.public_key().to_jwk().as_bytes()).expect("we read its AKP JWK");
    let public = jwk.to_verifying_key().expect("an ML-DSA-65 key for us");
    let kid = public.thumbprint();
    let mut ring = Keyring::new();
    ring.add(public);
    let theirs = theirs.with_key_id(&kid);
    let token = theirs
        .sign(Claims::create(Duration::from_hours(1)).with_subject("dave"))
        .expect("jwt-simple signs");
    let jws = Jws::parse(&token, &Limits::default()).expect("strict parse accepts it");
    assert_eq!(jws.alg, Alg::MlDsa65);
    jws.verify(&ring).expect("we verify it");
    let payload: serde_json::Value = serde_json::from_slice(&jws.payload).expect("json");
    assert_eq!(payload["sub"], "dave");

    let impostor = MLDSA65KeyPair::generate().with_key_id(&kid);
    let forged = impostor
        .sign(Claims::create(Duration::from_hours(1)).with_subject("dave"))
        .expect("sign");
    let forged = Jws::parse(&forged, &Limits::default()).expect("parse");
    assert!(forged.verify(&ring).is_err());
}
