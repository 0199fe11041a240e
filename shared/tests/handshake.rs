//! The refresh handshake (hybrid KEM + AEAD) and DPoP device proofs.

use shared::dpop::{self, DpopClaims, DpopError, ProofRequirements};
use shared::kem::{self, EphemeralSecret, KemError};
use shared::keys::{Alg, SigningKey};
use shared::{Jwk, b64};

#[test]
fn a_sealed_refresh_token_opens_only_with_the_same_transcript() {
    let (secret, public) = EphemeralSecret::from_seed([1; 32]);
    let sealed = kem::seal(&public, [2; 64], b"transcript", b"refresh-token").unwrap();
    assert_eq!(
        secret
            .open(&sealed.kem_ciphertext, b"transcript", &sealed.sealed)
            .unwrap(),
        b"refresh-token"
    );
    assert_eq!(
        secret.open(&sealed.kem_ciphertext, b"other", &sealed.sealed),
        Err(KemError::OpenFailed)
    );
    let mut altered = sealed.sealed.clone();
    altered[0] ^= 1;
    assert_eq!(
        secret.open(&sealed.kem_ciphertext, b"transcript", &altered),
        Err(KemError::OpenFailed)
    );
    let (stranger, _) = EphemeralSecret::from_seed([3; 32]);
    assert!(
        stranger
            .open(&sealed.kem_ciphertext, b"transcript", &sealed.sealed)
            .is_err()
    );
    assert_eq!(
        secret.open(&[0; 10], b"transcript", &sealed.sealed),
        Err(KemError::BadCiphertext)
    );
    assert_eq!(
        kem::seal(&[0; 10], [2; 64], b"t", b"p").unwrap_err(),
        KemError::BadPublicKey
    );
}

fn proof(key: &SigningKey, iat: i64, token: Option<&str>) -> String {
    let claims = DpopClaims {
        jti: "p1".into(),
        htm: "POST".into(),
        htu: "https://api.example/token/refresh".into(),
        iat,
        ath: token.map(dpop::ath),
        nonce: None,
    };
    dpop::sign_proof(key, &claims).unwrap()
}

fn req(now: i64) -> ProofRequirements<'static> {
    ProofRequirements {
        method: "POST",
        uri: "https://api.example/token/refresh?x=1",
        now,
        max_age: 60,
        access_token: None,
        nonce: None,
        jkt: None,
    }
}

#[test]
fn device_proofs_verify_for_every_key_type() {
    for alg in [Alg::EdDsa, Alg::Es256, Alg::MlDsa65] {
        let device = SigningKey::from_seed(alg, &[4; 32]);
        let verified = dpop::verify_proof(
            &proof(&device, 1_000, Some("at")),
            &ProofRequirements {
                access_token: Some("at"),
                jkt: Some(&device.kid()),
                ..req(1_010)
            },
        )
        .unwrap();
        assert_eq!(verified.jkt, device.kid());
    }
}

#[test]
fn device_proofs_are_refused_for_the_wrong_request_time_token_or_key() {
    let device = SigningKey::from_seed(Alg::EdDsa, &[4; 32]);
    let p = proof(&device, 1_000, Some("at"));
    assert!(matches!(
        dpop::verify_proof(
            &p,
            &ProofRequirements {
                method: "GET",
                ..req(1_000)
            }
        ),
        Err(DpopError::WrongRequest(_))
    ));
    assert_eq!(
        dpop::verify_proof(&p, &req(1_100)).unwrap_err(),
        DpopError::Stale(100)
    );
    assert_eq!(
        dpop::verify_proof(
            &p,
            &ProofRequirements {
                access_token: Some("other"),
                ..req(1_000)
            }
        )
        .unwrap_err(),
        DpopError::WrongAccessToken
    );
    assert_eq!(
        dpop::verify_proof(
            &p,
            &ProofRequirements {
                jkt: Some("nope"),
                ..req(1_000)
            }
        )
        .unwrap_err(),
        DpopError::WrongKey
    );
    assert_eq!(
        dpop::verify_proof(
            &p,
            &ProofRequirements {
                nonce: Some("n"),
                ..req(1_000)
            }
        )
        .unwrap_err(),
        DpopError::WrongNonce
    );
}

/// A proof signed by `key` under a header written by hand (`alg` and the `jwk` as other
/// libraries write them).
fn proof_with_header(key: &SigningKey, alg: &str, jwk: &Jwk) -> String {
    let header = serde_json::json!({"typ": "dpop+jwt", "alg": alg, "jwk": jwk});
    let claims = serde_json::json!({
        "jti": "p2", "htm": "POST", "htu": "https://api.example/token/refresh", "iat": 1_000
    });
    let input = format!(
        "{}.{}",
        b64::encode(header.to_string().as_bytes()),
        b64::encode(claims.to_string().as_bytes())
    );
    let signature = key.sign(input.as_bytes()).unwrap();
    format!("{input}.{}", b64::encode(&signature))
}

#[test]
fn a_proof_named_ed25519_with_a_webcrypto_style_jwk_is_accepted() {
    let device = SigningKey::from_seed(Alg::EdDsa, &[5; 32]);
    // WebCrypto exports `"alg": "Ed25519"` in the JWK; RFC 9864 libraries sign with it.
    let mut jwk = device.verifying_key().to_jwk();
    jwk.alg = Some("Ed25519".into());
    jwk.kid = None;
    let verified = dpop::verify_proof(
        &proof_with_header(&device, "Ed25519", &jwk),
        &ProofRequirements {
            jkt: Some(&device.kid()),
            ..req(1_000)
        },
    )
    .unwrap();
    assert_eq!(verified.jkt, device.kid());
    // The old name with the new JWK, and the new name with no JWK alg, alike.
    dpop::verify_proof(&proof_with_header(&device, "EdDSA", &jwk), &req(1_000)).unwrap();
    jwk.alg = None;
    dpop::verify_proof(&proof_with_header(&device, "Ed25519", &jwk), &req(1_000)).unwrap();
}

#[test]
fn a_proof_whose_alg_is_not_its_keys_is_refused() {
    let ed = SigningKey::from_seed(Alg::EdDsa, &[5; 32]);
    let ec = SigningKey::from_seed(Alg::Es256, &[5; 32]);
    for (key, alg) in [
        (&ed, "ES256"),
        (&ec, "EdDSA"),
        (&ec, "Ed25519"),
        (&ed, "ML-DSA-65"),
    ] {
        let mut jwk = key.verifying_key().to_jwk();
        jwk.alg = None;
        assert!(
            matches!(
                dpop::verify_proof(&proof_with_header(key, alg, &jwk), &req(1_000)),
                Err(DpopError::Jose(shared::JoseError::AlgMismatch { .. }))
            ),
            "{alg} with a {:?} key",
            key.alg()
        );
    }
    // A JWK whose own alg names another algorithm than its key type.
    let mut jwk = ec.verifying_key().to_jwk();
    jwk.alg = Some("EdDSA".into());
    assert!(dpop::verify_proof(&proof_with_header(&ec, "ES256", &jwk), &req(1_000)).is_err());
}

#[test]
fn the_accepted_proof_algs_are_listed_once_for_metadata_and_challenges() {
    assert_eq!(dpop::PROOF_ALGS.join(" "), dpop::PROOF_ALGS_CHALLENGE);
    for alg in dpop::PROOF_ALGS {
        Alg::parse(alg).unwrap();
    }
}
