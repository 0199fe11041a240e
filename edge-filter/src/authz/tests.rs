use serde_json::json;
use shared::dpop::{DpopClaims, ath, sign_proof};
use shared::edgeset::{EdgeUpdate, Entry, UpdateKind, entry_key};
use shared::jws::sign;
use shared::{Alg, Kind, SigningKey};

use super::*;
use crate::replay::MemoryGuard;

const NOW: i64 = 1_700_000_000;

fn ed_key() -> SigningKey {
    SigningKey::from_seed(Alg::EdDsa, &[7; 32])
}

fn ml_key() -> SigningKey {
    SigningKey::from_seed(Alg::MlDsa65, &[9; 32])
}

fn keyring() -> Keyring {
    let mut ring = Keyring::new();
    ring.add(ed_key().verifying_key());
    ring.add(ml_key().verifying_key());
    ring
}

fn rules() -> Rules {
    Rules {
        validation: Validation {
            issuers: vec!["https://issuer.test".into()],
            audience: Some("api".into()),
            leeway: 30,
        },
        limits: Limits::default(),
        claim_headers: vec![
            ("sub".into(), "x-auth-sub".into()),
            ("scope".into(), "x-auth-scope".into()),
            ("tenant.id".into(), "x-tenant".into()),
        ],
        dpop_max_age: 60,
        fail_open: false,
        cache_max_entries: 100,
    }
}

fn claims() -> serde_json::Value {
    json!({
        "iss": "https://issuer.test", "sub": "alice", "aud": "api",
        "exp": NOW + 300, "iat": NOW - 10, "nbf": NOW - 10,
        "jti": "jti-1", "sid": "sid-1", "scope": "read write", "tenant": {"id": "t1"}
    })
}

fn token_with(key: &SigningKey, typ: &str, claims: &serde_json::Value) -> String {
    sign(
        key,
        typ,
        Some(&key.kid()),
        None,
        claims.to_string().as_bytes(),
    )
    .unwrap()
}

fn token(claims: &serde_json::Value) -> String {
    token_with(&ed_key(), "at+jwt", claims)
}

fn request(authorization: &str) -> Request<'_> {
    Request {
        authorization: Some(authorization.as_bytes()),
        dpop: None,
        dpop_headers: 0,
        method: "GET",
        scheme: "https",
        authority: "api.test",
        path: "/things?x=1",
    }
}

fn decide(az: &mut Authorizer, authorization: &str, set: &RevocationSet) -> Outcome {
    az.authorize(
        &request(authorization),
        set,
        Freshness::Fresh,
        NOW,
        &mut MemoryGuard::default(),
    )
}

fn reason(outcome: Outcome) -> Option<Reason> {
    match outcome {
        Outcome::Deny { reason, .. } => Some(reason),
        _ => None,
    }
}

fn set_with(entries: &[(Kind, &str, u32)]) -> RevocationSet {
    let mut set = RevocationSet::new();
    set.apply(EdgeUpdate {
        kind: UpdateKind::Snapshot,
        base_seq: 0,
        seq: 1,
        generated_at: NOW,
        entries: entries
            .iter()
            .map(|&(kind, value, not_before)| Entry {
                key: entry_key(kind, value),
                expires_at: (NOW + 3600) as u32,
                not_before,
            })
            .collect(),
        leeway: None,
        feed: None,
        jwks: None,
    })
    .unwrap();
    set
}

#[test]
fn a_valid_token_is_allowed_with_its_claim_headers_and_then_served_from_the_cache() {
    let mut az = Authorizer::new(keyring(), rules());
    let bearer = format!("Bearer {}", token(&claims()));
    let set = RevocationSet::new();
    let Outcome::Allow { token, cache_hit } = decide(&mut az, &bearer, &set) else {
        panic!("refused")
    };
    assert!(!cache_hit);
    assert_eq!(
        token.headers,
        vec![
            ("x-auth-sub".to_owned(), "alice".to_owned()),
            ("x-auth-scope".to_owned(), "read write".to_owned()),
            ("x-tenant".to_owned(), "t1".to_owned()),
        ]
    );
    assert!(matches!(
        decide(&mut az, &bearer, &set),
        Outcome::Allow {
            cache_hit: true,
            ..
        }
    ));
}

#[test]
fn ml_dsa_tokens_are_verified_too() {
    let mut az = Authorizer::new(keyring(), rules());
    let bearer = format!("Bearer {}", token_with(&ml_key(), "at+jwt", &claims()));
    assert!(matches!(
        decide(&mut az, &bearer, &RevocationSet::new()),
        Outcome::Allow { .. }
    ));
}

#[test]
fn each_rejection_reason_is_produced() {
    let mut az = Authorizer::new(keyring(), rules());
    let set = RevocationSet::new();
    let with = |patch: serde_json::Value| {
        let mut c = claims();
        for (k, v) in patch.as_object().unwrap() {
            c[k] = v.clone();
        }
        format!("Bearer {}", token(&c))
    };
    let good = token(&claims());
    let (h, p, _) = (
        good.split('.').next().unwrap(),
        good.split('.').nth(1).unwrap(),
        (),
    );
    let other = SigningKey::from_seed(Alg::EdDsa, &[8; 32]);
    let forged = sign(
        &other,
        "at+jwt",
        Some(&ed_key().kid()),
        None,
        claims().to_string().as_bytes(),
    )
    .unwrap();
    let cases: Vec<(String, Reason)> = vec![
        ("Bearer not.a.token".into(), Reason::Malformed),
        (format!("Bearer {h}.{p}"), Reason::Malformed),
        (
            format!("Bearer {}", token_with(&ed_key(), "JWT", &claims())),
            Reason::Malformed,
        ),
        (
            format!("Bearer {}", token_with(&other, "at+jwt", &claims())),
            Reason::UnknownKey,
        ),
        (format!("Bearer {forged}"), Reason::BadSignature),
        (with(json!({"exp": NOW - 100})), Reason::Expired),
        (with(json!({"nbf": NOW + 100})), Reason::NotYetValid),
        (with(json!({"iss": "https://evil"})), Reason::WrongIssuer),
        (with(json!({"aud": ["other"]})), Reason::WrongAudience),
        (with(json!({"exp": "soon"})), Reason::Malformed),
    ];
    for (authorization, expected) in cases {
        assert_eq!(
            reason(decide(&mut az, &authorization, &set)),
            Some(expected),
            "{authorization}"
        );
    }
    assert_eq!(
        reason(az.authorize(
            &Request {
                authorization: None,
                ..request("")
            },
            &set,
            Freshness::Fresh,
            NOW,
            &mut MemoryGuard::default()
        )),
        Some(Reason::Missing)
    );
    assert_eq!(az.cached(), 0, "refused tokens are never cached");
}

#[test]
fn revocations_apply_to_cached_tokens_by_jti_sub_kid_and_sid() {
    let bearer = format!("Bearer {}", token(&claims()));
    let kid = ed_key().kid();
    for (kind, value) in [
        (Kind::Jti, "jti-1"),
        (Kind::Sub, "alice"),
        (Kind::Kid, kid.as_str()),
        (Kind::Sid, "sid-1"),
    ] {
        let mut az = Authorizer::new(keyring(), rules());
        assert!(matches!(
            decide(&mut az, &bearer, &RevocationSet::new()),
            Outcome::Allow { .. }
        ));
        let revoked = set_with(&[(kind, value, 0)]);
        assert_eq!(
            decide(&mut az, &bearer, &revoked),
            Outcome::Deny {
                reason: Reason::Revoked,
                cache_hit: true,
                challenge: Challenge::Bearer,
            },
            "{kind:?}"
        );
    }
}

#[test]
fn a_subject_revocation_spares_tokens_issued_after_its_not_before() {
    let mut az = Authorizer::new(keyring(), rules());
    let bearer = format!("Bearer {}", token(&claims()));
    let before = set_with(&[(Kind::Sub, "alice", (NOW - 20) as u32)]);
    assert!(matches!(
        decide(&mut az, &bearer, &before),
        Outcome::Allow { .. }
    ));
    let after = set_with(&[(Kind::Sub, "alice", NOW as u32)]);
    assert_eq!(
        reason(decide(&mut az, &bearer, &after)),
        Some(Reason::Revoked)
    );
}

#[test]
fn a_cached_token_expires_on_time() {
    let mut az = Authorizer::new(keyring(), rules());
    let bearer = format!("Bearer {}", token(&claims()));
    let set = RevocationSet::new();
    assert!(matches!(
        decide(&mut az, &bearer, &set),
        Outcome::Allow { .. }
    ));
    let later = az.authorize(
        &request(&bearer),
        &set,
        Freshness::Fresh,
        NOW + 400,
        &mut MemoryGuard::default(),
    );
    assert_eq!(reason(later), Some(Reason::Expired));
    assert_eq!(az.cached(), 0);
}

#[test]
fn a_stale_set_fails_closed_by_default_and_open_when_configured() {
    let bearer = format!("Bearer {}", token(&claims()));
    let set = set_with(&[(Kind::Jti, "jti-1", 0)]);
    let mut closed = Authorizer::new(keyring(), rules());
    assert_eq!(
        closed.authorize(
            &request(&bearer),
            &set,
            Freshness::Stale,
            NOW,
            &mut MemoryGuard::default()
        ),
        Outcome::Unavailable
    );
    let mut open = Authorizer::new(
        keyring(),
        Rules {
            fail_open: true,
            ..rules()
        },
    );
    assert_eq!(
        reason(open.authorize(
            &request(&bearer),
            &set,
            Freshness::Stale,
            NOW,
            &mut MemoryGuard::default()
        )),
        Some(Reason::Revoked),
        "failing open still enforces the last known set"
    );
    assert!(matches!(
        open.authorize(
            &request(&bearer),
            &RevocationSet::new(),
            Freshness::Stale,
            NOW,
            &mut MemoryGuard::default()
        ),
        Outcome::Allow { .. }
    ));
    // Invalid tokens stay 401 whatever the set's freshness.
    assert_eq!(
        reason(closed.authorize(
            &request("Bearer x"),
            &set,
            Freshness::Stale,
            NOW,
            &mut MemoryGuard::default()
        )),
        Some(Reason::Malformed)
    );
}

/// A DPoP proof by `key` for `htm htu` at `iat`, bound to `token`.
fn dpop_proof(key: &SigningKey, jti: &str, htm: &str, htu: &str, iat: i64, token: &str) -> String {
    sign_proof(
        key,
        &DpopClaims {
            jti: jti.into(),
            htm: htm.into(),
            htu: htu.into(),
            iat,
            ath: Some(ath(token)),
            nonce: None,
        },
    )
    .unwrap()
}

#[test]
fn a_bound_token_needs_a_matching_dpop_proof() {
    let device = SigningKey::from_seed(Alg::EdDsa, &[3; 32]);
    let mut c = claims();
    c["cnf"] = json!({"jkt": device.kid()});
    let access = token(&c);
    let bearer = format!("DPoP {access}");
    let proof = |key: &SigningKey, htm: &str, htu: &str, iat: i64, token: &str| {
        dpop_proof(key, "p1", htm, htu, iat, token)
    };
    let mut az = Authorizer::new(keyring(), rules());
    let set = RevocationSet::new();
    let good = proof(&device, "GET", "https://api.test/things", NOW, &access);
    let run = |az: &mut Authorizer, dpop: Option<&str>| {
        let req = Request {
            dpop: dpop.map(str::as_bytes),
            ..request(&bearer)
        };
        az.authorize(
            &req,
            &set,
            Freshness::Fresh,
            NOW,
            &mut MemoryGuard::default(),
        )
    };
    assert!(matches!(run(&mut az, Some(&good)), Outcome::Allow { .. }));
    let other = SigningKey::from_seed(Alg::EdDsa, &[4; 32]);
    for bad in [
        None,
        Some("garbage".to_owned()),
        Some(proof(
            &other,
            "GET",
            "https://api.test/things",
            NOW,
            &access,
        )),
        Some(proof(
            &device,
            "POST",
            "https://api.test/things",
            NOW,
            &access,
        )),
        Some(proof(
            &device,
            "GET",
            "https://api.test/other",
            NOW,
            &access,
        )),
        Some(proof(
            &device,
            "GET",
            "https://api.test/things",
            NOW - 600,
            &access,
        )),
        Some(proof(&device, "GET", "https://api.test/things", NOW, "x")),
    ] {
        assert_eq!(
            reason(run(&mut az, bad.as_deref())),
            Some(Reason::InvalidDpopProof)
        );
    }
}

#[test]
fn a_dpop_proof_is_used_once_and_only_one_proof_may_come() {
    let device = SigningKey::from_seed(Alg::EdDsa, &[3; 32]);
    let mut c = claims();
    c["cnf"] = json!({"jkt": device.kid()});
    let access = token(&c);
    let bearer = format!("DPoP {access}");
    let proof = |jti: &str| {
        sign_proof(
            &device,
            &DpopClaims {
                jti: jti.into(),
                htm: "GET".into(),
                htu: "https://api.test/things".into(),
                iat: NOW,
                ath: Some(ath(&access)),
                nonce: None,
            },
        )
        .unwrap()
    };
    let mut az = Authorizer::new(keyring(), rules());
    let set = RevocationSet::new();
    let mut guard = MemoryGuard::default();
    let mut run = |dpop: &str, count: usize, now: i64| {
        let req = Request {
            dpop: Some(dpop.as_bytes()),
            dpop_headers: count,
            ..request(&bearer)
        };
        az.authorize(&req, &set, Freshness::Fresh, now, &mut guard)
    };
    let first = proof("once");
    assert!(matches!(run(&first, 1, NOW), Outcome::Allow { .. }));
    assert_eq!(
        reason(run(&first, 1, NOW + 1)),
        Some(Reason::InvalidDpopProof),
        "a replayed proof is refused"
    );
    assert!(matches!(
        run(&proof("twice"), 1, NOW + 1),
        Outcome::Allow { .. }
    ));
    let two = proof("two");
    assert_eq!(reason(run(&two, 2, NOW)), Some(Reason::InvalidDpopProof));
    let joined = format!("{two}, {}", proof("three"));
    assert_eq!(reason(run(&joined, 1, NOW)), Some(Reason::InvalidDpopProof));
    // The refused duplicates did not burn the proof: it was never checked.
    assert!(matches!(run(&two, 1, NOW), Outcome::Allow { .. }));
}

#[test]
fn new_keys_flush_the_cache() {
    let mut az = Authorizer::new(keyring(), rules());
    let bearer = format!("Bearer {}", token(&claims()));
    assert!(matches!(
        decide(&mut az, &bearer, &RevocationSet::new()),
        Outcome::Allow { .. }
    ));
    let mut only_ml = Keyring::new();
    only_ml.add(ml_key().verifying_key());
    az.set_keys(only_ml);
    assert_eq!(
        reason(decide(&mut az, &bearer, &RevocationSet::new())),
        Some(Reason::UnknownKey)
    );
}

#[test]
fn a_token_dated_in_the_future_is_refused_at_the_edge() {
    let mut az = Authorizer::new(keyring(), rules());
    let set = RevocationSet::new();
    let mut c = claims();
    c["iat"] = json!(NOW + 10 * 365 * 86_400);
    c["jti"] = json!("jti-future");
    let authorization = format!("Bearer {}", token(&c));
    assert_eq!(
        reason(decide(&mut az, &authorization, &set)),
        Some(Reason::NotYetValid)
    );
    // Within the leeway (30 s) it is still a clock difference, not a forgery.
    c["iat"] = json!(NOW + 20);
    let authorization = format!("Bearer {}", token(&c));
    assert_eq!(reason(decide(&mut az, &authorization, &set)), None);
}

#[test]
fn the_application_at_jwt_media_type_is_accepted_at_the_edge() {
    let mut az = Authorizer::new(keyring(), rules());
    let set = RevocationSet::new();
    for typ in ["application/at+jwt", "Application/AT+JWT"] {
        let authorization = format!("Bearer {}", token_with(&ed_key(), typ, &claims()));
        assert_eq!(reason(decide(&mut az, &authorization, &set)), None, "{typ}");
    }
}

fn rules_with_leeway(leeway: i64) -> Rules {
    let mut rules = rules();
    rules.validation.leeway = leeway;
    rules
}

/// A token whose `exp` passed `ago` seconds before `NOW`.
fn expired(ago: i64, jti: &str) -> String {
    let mut c = claims();
    c["exp"] = json!(NOW - ago);
    c["jti"] = json!(jti);
    format!("Bearer {}", token(&c))
}

#[test]
fn exp_gets_no_more_leeway_than_the_feed_says_its_revocations_assume() {
    let set = RevocationSet::new();
    // leeway_seconds: 120, a feed that says nothing (an older control plane): its own.
    let mut az = Authorizer::new(keyring(), rules_with_leeway(120));
    assert_eq!(az.set_feed_leeway(None), None);
    assert_eq!(reason(decide(&mut az, &expired(60, "j-60"), &set)), None);
    // The feed's entries assume 30 s: a token 60 s past `exp` is expired, cached or not.
    assert_eq!(
        az.set_feed_leeway(Some(30)),
        Some(ExpLeeway::Clamped {
            configured: 120,
            feed: 30
        })
    );
    assert_eq!(az.exp_leeway().clamped_by(), 90);
    assert_eq!(
        decide(&mut az, &expired(60, "j-60"), &set),
        Outcome::Deny {
            reason: Reason::Expired,
            cache_hit: true,
            challenge: Challenge::Bearer,
        }
    );
    assert_eq!(az.cached(), 0);
    assert_eq!(
        reason(decide(&mut az, &expired(60, "j-60b"), &set)),
        Some(Reason::Expired)
    );
    assert_eq!(reason(decide(&mut az, &expired(20, "j-20"), &set)), None);
    // Reported once per change, not per update or request.
    assert_eq!(az.set_feed_leeway(Some(30)), None);
    // A feed that stops saying (a control plane rolled back): the configured one again.
    assert_eq!(az.set_feed_leeway(None), Some(ExpLeeway::Configured(120)));
    assert_eq!(reason(decide(&mut az, &expired(60, "j-60c"), &set)), None);
}

#[test]
fn a_feed_that_assumes_more_leeway_than_configured_changes_nothing() {
    let set = RevocationSet::new();
    let mut az = Authorizer::new(keyring(), rules_with_leeway(30));
    assert_eq!(az.set_feed_leeway(Some(600)), None);
    assert_eq!(az.set_feed_leeway(Some(30)), None);
    assert_eq!(az.exp_leeway(), ExpLeeway::Configured(30));
    assert_eq!(
        reason(decide(&mut az, &expired(60, "j-60"), &set)),
        Some(Reason::Expired)
    );
    assert_eq!(reason(decide(&mut az, &expired(20, "j-20"), &set)), None);
    // Zero is a leeway the feed can say.
    assert_eq!(
        az.set_feed_leeway(Some(0)),
        Some(ExpLeeway::Clamped {
            configured: 30,
            feed: 0
        })
    );
    assert_eq!(
        reason(decide(&mut az, &expired(0, "j-0"), &set)),
        Some(Reason::Expired)
    );
}

#[test]
fn nbf_keeps_the_configured_leeway_when_the_feed_clamps_exp() {
    let set = RevocationSet::new();
    let mut az = Authorizer::new(keyring(), rules_with_leeway(120));
    az.set_feed_leeway(Some(30));
    let mut c = claims();
    c["nbf"] = json!(NOW + 60);
    c["iat"] = json!(NOW + 60);
    let authorization = format!("Bearer {}", token(&c));
    assert_eq!(reason(decide(&mut az, &authorization, &set)), None);
}

#[test]
fn a_dpop_proof_for_another_origin_is_refused_when_the_origins_are_configured() {
    let device = SigningKey::from_seed(Alg::EdDsa, &[3; 32]);
    let mut c = claims();
    c["cnf"] = json!({"jkt": device.kid()});
    let access = token(&c);
    let bearer = format!("DPoP {access}");
    let proof = |htu: &str, jti: &str| dpop_proof(&device, jti, "GET", htu, NOW, &access);
    let set = RevocationSet::new();
    let run = |az: &mut Authorizer, authority: &str, dpop: &str| {
        let req = Request {
            authority,
            dpop: Some(dpop.as_bytes()),
            ..request(&bearer)
        };
        az.authorize(
            &req,
            &set,
            Freshness::Fresh,
            NOW,
            &mut MemoryGuard::default(),
        )
    };
    // A proof made for another resource server, replayed here with its Host.
    let foreign = proof("https://other.test/things", "p-foreign");
    let mut open = Authorizer::new(keyring(), rules());
    assert!(
        matches!(
            run(&mut open, "other.test", &foreign),
            Outcome::Allow { .. }
        ),
        "without configured origins the request's own authority is trusted"
    );
    let mut pinned = Authorizer::new(keyring(), rules());
    pinned.set_dpop_origins(vec!["https://api.test".into()]);
    assert_eq!(
        reason(run(&mut pinned, "other.test", &foreign)),
        Some(Reason::InvalidDpopProof)
    );
    let ours = proof("https://api.test/things", "p-ours");
    assert!(matches!(
        run(&mut pinned, "api.test", &ours),
        Outcome::Allow { .. }
    ));
}

fn challenge_of(outcome: Outcome) -> Option<(Reason, Challenge)> {
    match outcome {
        Outcome::Deny {
            reason, challenge, ..
        } => Some((reason, challenge)),
        _ => None,
    }
}

#[test]
fn every_refusal_of_a_dpop_request_answers_with_the_dpop_challenge() {
    let device = SigningKey::from_seed(Alg::EdDsa, &[3; 32]);
    let other = SigningKey::from_seed(Alg::EdDsa, &[4; 32]);
    let bound = |jti: &str, exp: i64| {
        let mut c = claims();
        c["cnf"] = json!({"jkt": device.kid()});
        c["jti"] = json!(jti);
        c["exp"] = json!(exp);
        token(&c)
    };
    let live = bound("bound-live", NOW + 300);
    let old = bound("bound-old", NOW - 600);
    let proof = |key: &SigningKey, jti: &str, token: &str| {
        dpop_proof(key, jti, "GET", "https://api.test/things", NOW, token)
    };
    let revoked = set_with(&[(Kind::Jti, "bound-live", 0)]);
    let empty = RevocationSet::new();
    let mut az = Authorizer::new(keyring(), rules());
    let mut guard = MemoryGuard::default();
    let mut run = |authorization: &str, dpop: Option<&str>, set: &RevocationSet| {
        let req = Request {
            dpop: dpop.map(str::as_bytes),
            dpop_headers: usize::from(dpop.is_some()),
            ..request(authorization)
        };
        challenge_of(az.authorize(&req, set, Freshness::Fresh, NOW, &mut guard))
    };
    let dpop_scheme = format!("DPoP {live}");
    let first = proof(&device, "p-first", &live);
    assert_eq!(run(&dpop_scheme, Some(&first), &empty), None);
    let proof_problem = Some((Reason::InvalidDpopProof, Challenge::Dpop));
    assert_eq!(
        run(&dpop_scheme, Some(&first), &empty),
        proof_problem,
        "replayed"
    );
    assert_eq!(run(&dpop_scheme, None, &empty), proof_problem, "no proof");
    let wrong = proof(&other, "p-wrong", &live);
    assert_eq!(
        run(&dpop_scheme, Some(&wrong), &empty),
        proof_problem,
        "wrong key"
    );
    let fresh = proof(&device, "p-revoked", &live);
    assert_eq!(
        run(&dpop_scheme, Some(&fresh), &revoked),
        Some((Reason::Revoked, Challenge::Dpop))
    );
    let expired = proof(&device, "p-expired", &old);
    assert_eq!(
        run(&format!("DPoP {old}"), Some(&expired), &empty),
        Some((Reason::Expired, Challenge::Dpop))
    );
    // A bound token sent as a bearer token, with no proof: its claims say it is DPoP.
    assert_eq!(
        run(&format!("Bearer {old}"), None, &empty),
        Some((Reason::Expired, Challenge::Dpop))
    );
    assert_eq!(run(&format!("Bearer {live}"), None, &empty), proof_problem);
    // The credential cannot be read, but the scheme or the proof says DPoP.
    assert_eq!(
        run("DPoP not.a.token", None, &empty),
        Some((Reason::Malformed, Challenge::Dpop))
    );
    assert_eq!(
        run("DPoP a b", None, &empty),
        Some((Reason::Malformed, Challenge::Dpop))
    );
    assert_eq!(
        run("Basic dXNlcg==", Some(&first), &empty),
        Some((Reason::Missing, Challenge::Dpop))
    );
}

#[test]
fn a_bearer_request_with_an_unbound_token_keeps_the_bearer_challenge() {
    let mut az = Authorizer::new(keyring(), rules());
    let set = set_with(&[(Kind::Jti, "jti-revoked", 0)]);
    let mut c = claims();
    c["jti"] = json!("jti-revoked");
    for (authorization, reason) in [
        (expired(60, "j-old"), Reason::Expired),
        (format!("Bearer {}", token(&c)), Reason::Revoked),
        ("Bearer not.a.token".to_owned(), Reason::Malformed),
        ("Basic dXNlcg==".to_owned(), Reason::Missing),
    ] {
        assert_eq!(
            challenge_of(decide(&mut az, &authorization, &set)),
            Some((reason, Challenge::Bearer)),
            "{authorization}"
        );
    }
}

/// A compact JWS of `claims` signed by `key` under a header written by hand.
fn signed_with_header(
    key: &SigningKey,
    header: &serde_json::Value,
    claims: &serde_json::Value,
) -> String {
    let input = format!(
        "{}.{}",
        shared::b64::encode(header.to_string().as_bytes()),
        shared::b64::encode(claims.to_string().as_bytes())
    );
    let signature = key.sign(input.as_bytes()).unwrap();
    format!("{input}.{}", shared::b64::encode(&signature))
}

/// `Request` for a `DPoP` token and proof at `https://api.test/things?x=1`.
fn dpop_request<'a>(authorization: &'a str, proof: &'a str) -> Request<'a> {
    Request {
        dpop: Some(proof.as_bytes()),
        dpop_headers: 1,
        ..request(authorization)
    }
}

#[test]
fn an_access_token_whose_header_names_ed25519_is_verified_and_no_other_name_is() {
    let mut az = Authorizer::new(keyring(), rules());
    let set = RevocationSet::new();
    let header = |alg: &str| json!({"alg": alg, "typ": "at+jwt", "kid": ed_key().kid()});
    let renamed = signed_with_header(&ed_key(), &header("Ed25519"), &claims());
    assert!(matches!(
        decide(&mut az, &format!("Bearer {renamed}"), &set),
        Outcome::Allow { .. }
    ));
    for alg in ["ES256", "ML-DSA-65"] {
        let wrong = signed_with_header(&ed_key(), &header(alg), &claims());
        assert_eq!(
            reason(decide(&mut az, &format!("Bearer {wrong}"), &set)),
            // The edge reports a header alg that is not the key's as malformed.
            Some(Reason::Malformed),
            "{alg}"
        );
    }
}

#[test]
fn a_bound_token_passes_with_an_es256_proof_of_its_p256_key_or_an_ed25519_named_one() {
    let set = RevocationSet::new();
    for device in [
        SigningKey::from_seed(Alg::Es256, &[3; 32]),
        SigningKey::from_seed(Alg::EdDsa, &[3; 32]),
    ] {
        let mut c = claims();
        c["cnf"] = json!({"jkt": device.kid()});
        let access = token(&c);
        let authorization = format!("DPoP {access}");
        let mut az = Authorizer::new(keyring(), rules());
        let mut run = |proof: &str| {
            az.authorize(
                &dpop_request(&authorization, proof),
                &set,
                Freshness::Fresh,
                NOW,
                &mut MemoryGuard::default(),
            )
        };
        let proof_claims = |jti: &str| {
            json!({"jti": jti, "htm": "GET", "htu": "https://api.test/things", "iat": NOW,
                   "ath": ath(&access)})
        };
        let jwk = device.verifying_key().to_jwk();
        // The name this crate writes (ES256, or EdDSA), and for Ed25519 the RFC 9864 one.
        let names: &[&str] = if device.alg() == Alg::Es256 {
            &["ES256"]
        } else {
            &["EdDSA", "Ed25519"]
        };
        for (i, name) in names.iter().enumerate() {
            let header = json!({"typ": "dpop+jwt", "alg": name, "jwk": jwk});
            let proof = signed_with_header(&device, &header, &proof_claims(&format!("ok{i}")));
            assert!(matches!(run(&proof), Outcome::Allow { .. }), "{name}");
        }
        // Any other alg for the key, or another key of the same type, is refused.
        let other = SigningKey::from_seed(device.alg(), &[4; 32]);
        let wrong_alg = if device.alg() == Alg::Es256 {
            "EdDSA"
        } else {
            "ES256"
        };
        let header = json!({"typ": "dpop+jwt", "alg": wrong_alg, "jwk": jwk});
        let bad_alg = signed_with_header(&device, &header, &proof_claims("bad1"));
        let stranger = dpop_proof(
            &other,
            "bad2",
            "GET",
            "https://api.test/things",
            NOW,
            &access,
        );
        for bad in [bad_alg, stranger] {
            assert_eq!(reason(run(&bad)), Some(Reason::InvalidDpopProof));
        }
    }
}
