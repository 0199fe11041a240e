//! The refresh handshake (hybrid KEM + AEAD) and DPoP device proofs.

use shared::dpop::{self, DpopClaims, DpopError, ProofRequirements};
use shared::kem::{self, EphemeralSecret, KemError};
use shared::keys::{Alg, SigningKey};

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
fn device_proofs_verify_for_both_key_types() {
    for alg in [Alg::EdDsa, Alg::MlDsa65] {
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
