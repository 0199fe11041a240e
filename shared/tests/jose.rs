//! Round trips and every rejection path of the strict JWS, JWK and claims code.

use shared::claims::{AccessClaims, Audience, ClaimsError, TYP_ACCESS_TOKEN, Validation};
use shared::jws::{self, Jws, Limits};
use shared::keys::{Alg, Keyring, SigningKey};
use shared::{JoseError, Jwk, JwkSet, b64};

fn key(alg: Alg, n: u8) -> SigningKey {
    SigningKey::from_seed(alg, &[n; 32])
}

fn claims() -> AccessClaims {
    AccessClaims {
        iss: "https://issuer.example".into(),
        sub: "alice".into(),
        aud: Audience::One("api".into()),
        exp: 2_000,
        iat: 1_000,
        nbf: 1_000,
        jti: "j1".into(),
        sid: Some("s1".into()),
        scope: None,
        client_id: None,
        cnf: None,
        extra: Default::default(),
    }
}

fn token(key: &SigningKey, claims: &AccessClaims) -> String {
    let payload = serde_json::to_vec(claims).unwrap();
    jws::sign(key, TYP_ACCESS_TOKEN, Some(&key.kid()), None, &payload).unwrap()
}

fn ring(keys: &[&SigningKey]) -> Keyring {
    let mut ring = Keyring::new();
    for k in keys {
        ring.add(k.verifying_key());
    }
    ring
}

/// A token with an arbitrary header and payload and a garbage signature.
fn forged(header: &str, payload: &str) -> String {
    format!(
        "{}.{}.{}",
        b64::encode(header.as_bytes()),
        b64::encode(payload.as_bytes()),
        b64::encode(&[7; 64])
    )
}

#[test]
fn an_ed25519_key_verifies_tokens_named_eddsa_or_ed25519_and_no_other_alg() {
    let ed = key(Alg::EdDsa, 1);
    let payload = b64::encode(&serde_json::to_vec(&claims()).unwrap());
    let signed = |alg: &str| {
        let header = format!(r#"{{"alg":"{alg}","typ":"at+jwt","kid":"{}"}}"#, ed.kid());
        let input = format!("{}.{payload}", b64::encode(header.as_bytes()));
        let sig = ed.sign(input.as_bytes()).unwrap();
        format!("{input}.{}", b64::encode(&sig))
    };
    for alg in ["EdDSA", "Ed25519"] {
        let (got, _) = AccessClaims::verify(&signed(alg), &ring(&[&ed]), &Limits::default())
            .unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(got, claims());
    }
    for alg in ["ES256", "ML-DSA-65"] {
        assert!(matches!(
            AccessClaims::verify(&signed(alg), &ring(&[&ed]), &Limits::default()).unwrap_err(),
            JoseError::AlgMismatch { key: "EdDSA", .. }
        ));
    }
    // Our own tokens keep the name every verifier knows.
    let ours = token(&ed, &claims());
    assert_eq!(
        Jws::parse(&ours, &Limits::default()).unwrap().header.alg,
        "EdDSA"
    );
}

#[test]
fn a_p256_key_verifies_es256_and_no_other_alg() {
    let ec = key(Alg::Es256, 1);
    let t = token(&ec, &claims());
    assert_eq!(
        Jws::parse(&t, &Limits::default()).unwrap().header.alg,
        "ES256"
    );
    let (got, _) = AccessClaims::verify(&t, &ring(&[&ec]), &Limits::default()).unwrap();
    assert_eq!(got, claims());
    // An Ed25519-signed token whose kid names the P-256 key.
    let ed = key(Alg::EdDsa, 1);
    let payload = serde_json::to_vec(&claims()).unwrap();
    let forged = jws::sign(&ed, TYP_ACCESS_TOKEN, Some(&ec.kid()), None, &payload).unwrap();
    assert!(matches!(
        AccessClaims::verify(&forged, &ring(&[&ec]), &Limits::default()).unwrap_err(),
        JoseError::AlgMismatch {
            header: "EdDSA",
            key: "ES256"
        }
    ));
}

/// P-256 group order n, big-endian.
const P256_N: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

/// `n - s` for a 32-byte big-endian `s < n`.
fn negate_mod_n(s: &[u8]) -> [u8; 32] {
    let mut out = [0; 32];
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let d = i16::from(P256_N[i]) - i16::from(s[i]) - borrow;
        borrow = i16::from(d < 0);
        out[i] = d.rem_euclid(256) as u8;
    }
    out
}

/// A minimal DER `SEQUENCE { INTEGER r, INTEGER s }` of 32-byte `r` and `s`.
fn der(r: &[u8], s: &[u8]) -> Vec<u8> {
    let int = |v: &[u8]| {
        let mut body = v.to_vec();
        if body[0] & 0x80 != 0 {
            body.insert(0, 0);
        }
        let mut out = vec![0x02, body.len() as u8];
        out.extend(body);
        out
    };
    let (r, s) = (int(r), int(s));
    let mut out = vec![0x30, (r.len() + s.len()) as u8];
    out.extend(r);
    out.extend(s);
    out
}

#[test]
fn es256_signatures_are_64_raw_bytes_with_either_s_and_nothing_else() {
    let ec = key(Alg::Es256, 2);
    let public = ec.verifying_key();
    let msg = b"header.payload";
    let sig = ec.sign(msg).unwrap();
    assert_eq!(sig.len(), 64);
    public.verify(msg, &sig).unwrap();
    // JOSE does not ask for low s: (r, n - s) is as valid as (r, s).
    let mut other_s = sig.clone();
    other_s[32..].copy_from_slice(&negate_mod_n(&sig[32..]));
    assert_ne!(other_s, sig);
    public.verify(msg, &other_s).unwrap();
    // DER (what many ECDSA APIs return), truncated, padded, zero or out-of-range parts.
    let mut zero_r = sig.clone();
    zero_r[..32].fill(0);
    let mut big_s = sig.clone();
    big_s[32..].copy_from_slice(&P256_N);
    for bad in [
        der(&sig[..32], &sig[32..]),
        sig[..63].to_vec(),
        [sig.as_slice(), &[0]].concat(),
        zero_r,
        big_s,
        vec![],
    ] {
        assert_eq!(
            public.verify(msg, &bad).unwrap_err(),
            JoseError::BadSignature,
            "{}",
            bad.len()
        );
    }
}

#[test]
fn ec_jwks_must_be_p256_points_with_32_byte_canonical_coordinates() {
    let good = key(Alg::Es256, 3).verifying_key().to_jwk();
    assert_eq!(good.to_verifying_key().unwrap().alg(), Alg::Es256);
    let with = |f: &dyn Fn(&mut Jwk)| {
        let mut jwk = good.clone();
        f(&mut jwk);
        jwk.to_verifying_key()
    };
    let x = good.x.clone().unwrap();
    let y = good.y.clone().unwrap();
    let mut y_bytes = b64::decode(&y, "y").unwrap();
    y_bytes[31] ^= 1;
    let off_curve = b64::encode(&y_bytes);
    let off = off_curve.clone();
    type Edit<'a> = Box<dyn Fn(&mut Jwk) + 'a>;
    let cases: Vec<(&str, Edit<'_>)> = vec![
        ("P-384", Box::new(|j| j.crv = Some("P-384".into()))),
        ("no crv", Box::new(|j| j.crv = None)),
        ("no y", Box::new(|j| j.y = None)),
        ("short x", Box::new(|j| j.x = Some(b64::encode(&[1; 31])))),
        ("long x", Box::new(|j| j.x = Some(b64::encode(&[1; 33])))),
        ("padded x", Box::new(|j| j.x = Some(format!("{x}=")))),
        ("off curve", Box::new(move |j| j.y = Some(off.clone()))),
        ("x = p", Box::new(|j| j.x = Some(b64::encode(&[0xff; 32])))),
        ("alg EdDSA", Box::new(|j| j.alg = Some("EdDSA".into()))),
        ("alg ES384", Box::new(|j| j.alg = Some("ES384".into()))),
    ];
    for (what, f) in &cases {
        assert!(with(f.as_ref()).is_err(), "{what}");
    }
    // The last base64url character of a 32-byte value carries two unused bits.
    let last = x.chars().last().unwrap();
    let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let i = alphabet.find(last).unwrap();
    let non_canonical = format!("{}{}", &x[..42], &alphabet[(i ^ 1)..(i ^ 1) + 1]);
    let set_x = |j: &mut Jwk| j.x = Some(non_canonical.clone());
    assert!(with(&set_x).is_err());
    // An AKP key may not claim to be an Ed25519 key.
    let akp = Jwk {
        kty: "AKP".into(),
        alg: Some("EdDSA".into()),
        pub_: Some(b64::encode(&[9; 32])),
        ..Jwk::default()
    };
    assert!(akp.to_verifying_key().is_err());
    // `y` takes part in the thumbprint: members crv, kty, x, y in that order.
    let other_y = Jwk {
        y: Some(off_curve),
        ..good.clone()
    };
    assert_ne!(other_y.thumbprint(), good.thumbprint());
}

#[test]
fn access_tokens_round_trip_for_both_algorithms() {
    for alg in [Alg::EdDsa, Alg::MlDsa65] {
        let k = key(alg, 1);
        let t = token(&k, &claims());
        let (got, kid) = AccessClaims::verify(&t, &ring(&[&k]), &Limits::default()).unwrap();
        assert_eq!(got, claims());
        assert_eq!(kid, k.kid());
        got.validate(&Validation::default(), 1_500).unwrap();
    }
}

#[test]
fn a_signature_from_another_key_is_refused() {
    let signer = key(Alg::EdDsa, 1);
    let other = key(Alg::EdDsa, 2);
    let t = token(&signer, &claims());
    let mut trusted = Keyring::new();
    trusted.insert(signer.kid(), other.verifying_key());
    assert_eq!(
        AccessClaims::verify(&t, &trusted, &Limits::default()).unwrap_err(),
        JoseError::BadSignature
    );
}

#[test]
fn an_altered_payload_is_refused() {
    let k = key(Alg::MlDsa65, 1);
    let t = token(&k, &claims());
    let parts: Vec<&str> = t.split('.').collect();
    let mut c = claims();
    c.sub = "mallory".into();
    let altered = format!(
        "{}.{}.{}",
        parts[0],
        b64::encode(&serde_json::to_vec(&c).unwrap()),
        parts[2]
    );
    assert_eq!(
        AccessClaims::verify(&altered, &ring(&[&k]), &Limits::default()).unwrap_err(),
        JoseError::BadSignature
    );
}

#[test]
fn the_header_alg_must_equal_the_keys_alg() {
    let ed = key(Alg::EdDsa, 1);
    let ml = key(Alg::MlDsa65, 1);
    // An ML-DSA-signed token whose kid names the Ed25519 key.
    let payload = serde_json::to_vec(&claims()).unwrap();
    let t = jws::sign(&ml, TYP_ACCESS_TOKEN, Some(&ed.kid()), None, &payload).unwrap();
    assert!(matches!(
        AccessClaims::verify(&t, &ring(&[&ed]), &Limits::default()).unwrap_err(),
        JoseError::AlgMismatch {
            header: "ML-DSA-65",
            key: "EdDSA"
        }
    ));
}

#[test]
fn none_and_hmac_and_unknown_algorithms_are_refused() {
    let limits = Limits::default();
    let none = format!(
        "{}.{}.",
        b64::encode(br#"{"alg":"none"}"#),
        b64::encode(b"{}")
    );
    assert!(matches!(
        Jws::parse(&none, &limits),
        Err(JoseError::Malformed(_))
    ));
    let none = forged(r#"{"alg":"none"}"#, "{}");
    assert_eq!(Jws::parse(&none, &limits).unwrap_err(), JoseError::AlgNone);
    let hs = forged(r#"{"alg":"HS256","kid":"k"}"#, "{}");
    assert_eq!(
        Jws::parse(&hs, &limits).unwrap_err(),
        JoseError::Hmac("HS256".into())
    );
    let rs = forged(r#"{"alg":"RS256"}"#, "{}");
    assert_eq!(
        Jws::parse(&rs, &limits).unwrap_err(),
        JoseError::UnsupportedAlg("RS256".into())
    );
}

#[test]
fn unknown_critical_headers_are_refused() {
    let t = forged(r#"{"alg":"EdDSA","crit":["exp"],"exp":1}"#, "{}");
    assert!(matches!(
        Jws::parse(&t, &Limits::default()),
        Err(JoseError::UnknownCrit(_))
    ));
}

#[test]
fn duplicate_header_members_are_refused() {
    let t = forged(r#"{"alg":"EdDSA","alg":"none"}"#, "{}");
    assert_eq!(
        Jws::parse(&t, &Limits::default()).unwrap_err(),
        JoseError::DuplicateMember("alg".into())
    );
}

#[test]
fn duplicate_claims_are_refused() {
    let k = key(Alg::EdDsa, 1);
    let t = jws::sign(
        &k,
        TYP_ACCESS_TOKEN,
        Some(&k.kid()),
        None,
        br#"{"sub":"a","sub":"b"}"#,
    )
    .unwrap();
    let parsed = Jws::parse(&t, &Limits::default()).unwrap();
    assert_eq!(
        parsed.claims::<serde_json::Value>().unwrap_err(),
        JoseError::DuplicateMember("sub".into())
    );
}

#[test]
fn padded_or_non_canonical_base64_is_refused() {
    let k = key(Alg::EdDsa, 1);
    let t = token(&k, &claims());
    let (head, rest) = t.split_once('.').unwrap();
    let padded = format!("{head}=.{rest}");
    assert_eq!(
        Jws::parse(&padded, &Limits::default()).unwrap_err(),
        JoseError::Base64("header")
    );
    let sig_start = t.rfind('.').unwrap() + 1;
    let mut bad = t.clone();
    bad.insert(sig_start, '+');
    assert_eq!(
        Jws::parse(&bad, &Limits::default()).unwrap_err(),
        JoseError::Base64("signature")
    );
}

#[test]
fn oversized_tokens_are_refused_before_decoding() {
    let limits = Limits { max_token_len: 100 };
    let t = "a".repeat(101);
    assert_eq!(
        Jws::parse(&t, &limits).unwrap_err(),
        JoseError::TooLarge { len: 101, max: 100 }
    );
}

#[test]
fn wrong_part_counts_and_empty_parts_are_refused() {
    let limits = Limits::default();
    for t in ["", "a", "a.b", "a.b.c.d", ".b.c", "a.b."] {
        assert!(
            matches!(Jws::parse(t, &limits), Err(JoseError::Malformed(_))),
            "{t:?}"
        );
    }
}

#[test]
fn a_missing_or_unknown_kid_is_reported_as_such() {
    let k = key(Alg::EdDsa, 1);
    let payload = serde_json::to_vec(&claims()).unwrap();
    let no_kid = jws::sign(&k, TYP_ACCESS_TOKEN, None, None, &payload).unwrap();
    assert_eq!(
        AccessClaims::verify(&no_kid, &ring(&[&k]), &Limits::default()).unwrap_err(),
        JoseError::MissingKid
    );
    let t = token(&k, &claims());
    assert_eq!(
        AccessClaims::verify(&t, &Keyring::new(), &Limits::default()).unwrap_err(),
        JoseError::UnknownKey(k.kid())
    );
}

#[test]
fn access_tokens_need_the_at_jwt_type() {
    let k = key(Alg::EdDsa, 1);
    let t = jws::sign(
        &k,
        "JWT",
        Some(&k.kid()),
        None,
        &serde_json::to_vec(&claims()).unwrap(),
    )
    .unwrap();
    assert!(matches!(
        AccessClaims::verify(&t, &ring(&[&k]), &Limits::default()),
        Err(JoseError::WrongType { .. })
    ));
}

#[test]
fn the_access_token_type_may_carry_its_media_type_prefix_in_any_case() {
    let k = key(Alg::EdDsa, 1);
    let payload = serde_json::to_vec(&claims()).unwrap();
    for typ in [
        "at+jwt",
        "AT+JWT",
        "application/at+jwt",
        "Application/AT+JWT",
    ] {
        let t = jws::sign(&k, typ, Some(&k.kid()), None, &payload).unwrap();
        AccessClaims::verify(&t, &ring(&[&k]), &Limits::default())
            .unwrap_or_else(|e| panic!("typ {typ:?} refused: {e}"));
    }
    for typ in [
        "application/jwt",
        "text/at+jwt",
        "application/at+jwt+x",
        "at",
    ] {
        let t = jws::sign(&k, typ, Some(&k.kid()), None, &payload).unwrap();
        assert!(
            matches!(
                AccessClaims::verify(&t, &ring(&[&k]), &Limits::default()),
                Err(JoseError::WrongType { .. })
            ),
            "typ {typ:?} accepted"
        );
    }
}

#[test]
fn a_token_issued_in_the_future_is_refused_beyond_the_leeway() {
    let mut c = claims();
    // Valid nbf and exp, but dated ten years ahead: it would escape a subject's
    // not-before, which is compared with iat.
    c.iat = 1_000 + 10 * 365 * 86_400;
    let rules = Validation {
        leeway: 10,
        ..Validation::default()
    };
    let err = c.validate(&rules, 1_500).unwrap_err();
    assert_eq!(err.reason(), "issued_in_future");
    c.iat = 1_510;
    c.validate(&rules, 1_500).unwrap();
    c.iat = 1_511;
    assert_eq!(
        c.validate(&rules, 1_500),
        Err(ClaimsError::IssuedInFuture { ahead: 11 })
    );
}

#[test]
fn time_issuer_and_audience_are_checked_with_leeway() {
    let c = claims();
    let rules = Validation {
        issuers: vec!["https://issuer.example".into()],
        audience: Some("api".into()),
        leeway: 10,
    };
    c.validate(&rules, 2_009).unwrap();
    assert_eq!(
        c.validate(&rules, 2_010),
        Err(ClaimsError::Expired { ago: 10 })
    );
    c.validate(&rules, 990).unwrap();
    assert_eq!(
        c.validate(&rules, 989),
        Err(ClaimsError::NotYetValid { wait: 11 })
    );
    let other_iss = Validation {
        issuers: vec!["x".into()],
        ..rules.clone()
    };
    assert_eq!(
        c.validate(&other_iss, 1_500).unwrap_err().reason(),
        "wrong_issuer"
    );
    // During an issuer switch both are accepted, in any order; nothing else is.
    let switching = Validation {
        issuers: vec!["x".into(), "https://issuer.example".into()],
        ..rules.clone()
    };
    c.validate(&switching, 1_500).unwrap();
    let neither = Validation {
        issuers: vec!["x".into(), "https://issuer.example/".into()],
        ..rules.clone()
    };
    assert_eq!(
        c.validate(&neither, 1_500).unwrap_err().reason(),
        "wrong_issuer",
        "compared exactly: a trailing slash is another issuer"
    );
    let other_aud = Validation {
        audience: Some("billing".into()),
        ..rules.clone()
    };
    assert_eq!(
        c.validate(&other_aud, 1_500).unwrap_err().reason(),
        "wrong_audience"
    );
    let mut many = c.clone();
    many.aud = Audience::Many(vec!["x".into(), "api".into()]);
    many.validate(&rules, 1_500).unwrap();
}

#[test]
fn jwks_round_trip_and_keys_keep_their_algorithm() {
    let ed = key(Alg::EdDsa, 1);
    let ml = key(Alg::MlDsa65, 2);
    let set = JwkSet {
        keys: vec![ed.verifying_key().to_jwk(), ml.verifying_key().to_jwk()],
    };
    let json = serde_json::to_vec(&set).unwrap();
    let text = String::from_utf8(json.clone()).unwrap();
    assert!(
        text.contains(r#""kty":"AKP""#)
            && text.contains(r#""alg":"ML-DSA-65""#)
            && text.contains(r#""pub":"#)
    );
    let ring = Keyring::from_jwks(&JwkSet::parse(&json).unwrap()).unwrap();
    assert_eq!(ring.len(), 2);
    assert_eq!(ring.get(&ml.kid()).unwrap().alg(), Alg::MlDsa65);
    assert_eq!(ring.get(&ed.kid()).unwrap().alg(), Alg::EdDsa);
}

#[test]
fn private_jwks_round_trip_and_mismatched_parts_are_refused() {
    for alg in [Alg::EdDsa, Alg::MlDsa65] {
        let k = key(alg, 3);
        let jwk = k.to_private_jwk();
        assert_eq!(SigningKey::from_private_jwk(&jwk).unwrap().seed(), k.seed());
        let mut wrong = jwk.clone();
        let other = b64::encode(&[9; 32]);
        if alg == Alg::EdDsa {
            wrong.d = Some(other)
        } else {
            wrong.priv_ = Some(other)
        }
        assert!(SigningKey::from_private_jwk(&wrong).is_err());
    }
}

#[test]
fn malformed_jwks_are_refused_with_a_reason() {
    let bad = [
        r#"{"kty":"OKP","crv":"X25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#,
        r#"{"kty":"OKP","crv":"Ed25519","x":"AAAA"}"#,
        r#"{"kty":"OKP","crv":"Ed25519","alg":"ML-DSA-65","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#,
        r#"{"kty":"AKP","pub":"AAAA"}"#,
        r#"{"kty":"AKP","alg":"ML-DSA-65","pub":"AAAA"}"#,
        r#"{"kty":"RSA","n":"AQAB"}"#,
    ];
    for json in bad {
        let jwk = Jwk::parse(json.as_bytes()).unwrap();
        assert!(jwk.to_verifying_key().is_err(), "{json}");
    }
}

#[test]
fn error_reasons_match_the_edge_vocabulary() {
    assert_eq!(JoseError::BadSignature.reason(), "bad_signature");
    assert_eq!(JoseError::UnknownKey("k".into()).reason(), "unknown_key");
    assert_eq!(JoseError::AlgNone.reason(), "malformed");
}

#[test]
fn a_merged_keyring_verifies_with_every_key_and_the_merged_one_wins_a_kid() {
    let (ed, ml, other) = (key(Alg::EdDsa, 1), key(Alg::MlDsa65, 2), key(Alg::EdDsa, 3));
    let mut merged = ring(&[&ed]);
    merged.merge(&ring(&[&ml, &other]));
    assert_eq!(merged.len(), 3);
    for k in [&ed, &ml, &other] {
        let jws = token(k, &claims());
        Jws::parse(&jws, &Limits::default())
            .unwrap()
            .verify(&merged)
            .unwrap();
    }
    // Same kid from the other ring: replaced, not doubled.
    merged.merge(&ring(&[&ed]));
    assert_eq!(merged.len(), 3);
}
