//! Property tests: the parsers return errors, never panic, on arbitrary input.

use proptest::prelude::*;
use shared::edgeset::EdgeUpdate;
use shared::jws::{Jws, Limits};
use shared::keys::Keyring;
use shared::{Jwk, JwkSet, b64, dpop};

fn jws_like() -> impl Strategy<Value = String> {
    let part = prop_oneof![
        "[A-Za-z0-9_-]{0,40}",
        any::<Vec<u8>>().prop_map(|b| b64::encode(&b)),
        "[ -~]{0,60}".prop_map(|s| b64::encode(s.as_bytes())),
        Just(b64::encode(br#"{"alg":"EdDSA","kid":"k","typ":"at+jwt"}"#)),
        Just(b64::encode(br#"{"alg":"ML-DSA-65","crit":[]}"#)),
    ];
    (part.clone(), part.clone(), part, 0usize..4).prop_map(|(a, b, c, extra)| {
        let mut t = format!("{a}.{b}.{c}");
        t.push_str(&".x".repeat(extra));
        t
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn jws_parsing_never_panics(token in jws_like()) {
        if let Ok(jws) = Jws::parse(&token, &Limits::default()) {
            let _ = jws.verify(&Keyring::new());
            let _ = jws.claims::<shared::AccessClaims>();
        }
    }

    #[test]
    fn arbitrary_strings_never_panic_the_parsers(s in "\\PC{0,200}") {
        let _ = Jws::parse(&s, &Limits::default());
        prop_assert_eq!(b64::decode_public(&s, "x"), b64::decode(&s, "x"));
        let _ = Jwk::parse(s.as_bytes()).map(|j| j.to_verifying_key());
        let _ = JwkSet::parse(s.as_bytes());
        let _ = dpop::verify_proof(&s, &dpop::ProofRequirements {
            method: "GET", uri: "/", now: 0, max_age: 1, access_token: None, nonce: None, jkt: None,
        });
    }

    #[test]
    fn the_fast_base64_decoder_agrees_with_the_constant_time_one(
        bytes in proptest::collection::vec(any::<u8>(), 0..64),
        noise in "[A-Za-z0-9_=+/ -]{0,48}",
        cut in 0usize..4,
    ) {
        let valid = b64::encode(&bytes);
        prop_assert_eq!(b64::decode_public(&valid, "x"), Ok(bytes));
        for text in [noise, valid[..valid.len().saturating_sub(cut)].to_string()] {
            prop_assert_eq!(b64::decode_public(&text, "x"), b64::decode(&text, "x"));
        }
    }

    #[test]
    fn edge_update_decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = EdgeUpdate::decode(&bytes, 1_000);
        let mut framed = b"PQRV\x02\x01".to_vec();
        framed.extend_from_slice(&bytes);
        let _ = EdgeUpdate::decode(&framed, 1_000);
        let _ = shared::edgeset::RevocationSet::from_bytes(&bytes, 1_000);
        let mut blob = b"PQRS\x01".to_vec();
        blob.extend_from_slice(&bytes);
        let _ = shared::edgeset::RevocationSet::from_bytes(&blob, 1_000);
    }
}
