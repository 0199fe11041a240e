//! The edge filter's decision path, set up as the cases `bench/edge-bench` runs under
//! callgrind and `benches/verify.rs` runs under criterion.

use std::hint::black_box;

use edge_filter::authz::{Authorizer, Freshness, Outcome, Request, Rules};
use edge_filter::replay::MemoryGuard;
use serde_json::json;
use shared::edgeset::{EdgeUpdate, Entry, RevocationSet, TokenKeys, UpdateKind, entry_key};
use shared::jws::{Limits, sign};
use shared::revocation::TokenIds;
use shared::{Alg, Keyring, Kind, SigningKey, Validation};

/// The time every case runs at.
pub const NOW: i64 = 1_800_000_000;
/// Every case, by name.
pub const CASES: &[&str] = &[
    "cached-eddsa",
    "cached-mldsa",
    "uncached-eddsa",
    "uncached-mldsa",
    "verify-eddsa",
    "verify-mldsa",
    "verify-eddsa-dalek",
    "verify-es256",
    "verify-es256-p256",
    "proof-eddsa",
    "proof-es256",
    "proof-mldsa",
    "eddsa-key-table",
    "lookup-1k",
    "lookup-1m",
];

/// The bench keys (fixed seeds).
pub fn key(alg: Alg) -> SigningKey {
    SigningKey::from_seed(alg, &[7; 32])
}

/// A token shaped like the control plane's (same claims, same header).
pub fn token(key: &SigningKey, n: u32) -> String {
    let claims = json!({
        "iss": "pq-control-plane", "sub": format!("user-{n}"), "aud": "pq-api",
        "exp": NOW + 3600, "iat": NOW - 10, "nbf": NOW - 10,
        "jti": format!("Xq3v9Lw2Zk8PaT0cR5nB7g{n:04}"), "sid": format!("sid-{n}"),
        "scope": "read write",
    });
    sign(
        key,
        "at+jwt",
        Some(&key.kid()),
        None,
        claims.to_string().as_bytes(),
    )
    .unwrap_or_default()
}

/// The bench config of `envoy/bench-edge-filter.yaml`.
pub fn authorizer(cache: usize) -> Authorizer {
    let mut ring = Keyring::new();
    ring.add(key(Alg::EdDsa).verifying_key());
    ring.add(key(Alg::MlDsa65).verifying_key());
    Authorizer::new(
        ring,
        Rules {
            validation: Validation {
                issuers: vec!["pq-control-plane".into()],
                audience: Some("pq-api".into()),
                leeway: 30,
            },
            limits: Limits::default(),
            claim_headers: [("sub", "x-auth-sub"), ("jti", "x-auth-jti")]
                .into_iter()
                .chain([("scope", "x-auth-scope"), ("sid", "x-auth-sid")])
                .map(|(c, h)| (c.to_owned(), h.to_owned()))
                .collect(),
            dpop_max_age: 60,
            fail_open: false,
            cache_max_entries: cache,
        },
    )
}

/// `n` revoked jtis, as the control plane would send them.
pub fn set_of(n: u32) -> RevocationSet {
    let mut set = RevocationSet::new();
    let entries = (0..n)
        .map(|i| Entry {
            key: entry_key(Kind::Jti, &format!("revoked-{i}")),
            expires_at: (NOW + 3600) as u32,
            not_before: 0,
        })
        .collect();
    let update = EdgeUpdate {
        kind: UpdateKind::Snapshot,
        base_seq: 0,
        seq: 1,
        generated_at: NOW,
        entries,
        leeway: None,
        feed: None,
        jwks: None,
    };
    set.apply(update).unwrap_or_default();
    set
}

/// An `Authorization` value.
pub fn bearer(token: &str) -> Vec<u8> {
    format!("Bearer {token}").into_bytes()
}

/// One request through `Authorizer::authorize`; true when it is allowed.
pub fn authorize(auth: &mut Authorizer, set: &RevocationSet, header: &[u8]) -> bool {
    let req = Request {
        authorization: Some(header),
        dpop: None,
        dpop_headers: 0,
        method: "GET",
        scheme: "http",
        authority: "127.0.0.1:10000",
        path: "/",
    };
    // No DPoP in these tokens: the guard is never consulted.
    let mut replay = MemoryGuard::new(1);
    matches!(
        auth.authorize(&req, set, Freshness::Fresh, NOW, &mut replay),
        Outcome::Allow { .. }
    )
}

/// Builds a case (setup, not measured) and returns one iteration of it.
pub fn case(name: &str) -> Option<Box<dyn FnMut() -> bool>> {
    let run: Box<dyn FnMut() -> bool> = match name {
        "cached-eddsa" | "cached-mldsa" => {
            let alg = if name == "cached-eddsa" {
                Alg::EdDsa
            } else {
                Alg::MlDsa65
            };
            let mut auth = authorizer(1000);
            let set = set_of(1000);
            let header = bearer(&token(&key(alg), 1));
            authorize(&mut auth, &set, &header);
            Box::new(move || authorize(&mut auth, &set, black_box(&header)))
        }
        "uncached-eddsa" | "uncached-mldsa" => {
            let alg = if name == "uncached-eddsa" {
                Alg::EdDsa
            } else {
                Alg::MlDsa65
            };
            // A one-entry cache and two tokens in turn: every request verifies.
            let mut auth = authorizer(1);
            let set = set_of(1000);
            let headers = [bearer(&token(&key(alg), 1)), bearer(&token(&key(alg), 2))];
            let mut i = 0;
            Box::new(move || {
                i += 1;
                authorize(&mut auth, &set, black_box(&headers[i % 2]))
            })
        }
        "verify-eddsa" | "verify-mldsa" => {
            let alg = if name == "verify-eddsa" {
                Alg::EdDsa
            } else {
                Alg::MlDsa65
            };
            // As the filter verifies: through its keyring (Ed25519 with the key's table).
            let signing = key(alg);
            let mut ring = Keyring::new();
            ring.add(signing.verifying_key());
            let kid = signing.kid();
            let token = token(&signing, 1);
            let (input, sig) = token.rsplit_once('.')?;
            let sig = shared::b64::decode(sig, "signature").ok()?;
            let input = input.to_owned();
            Box::new(move || {
                ring.verify(&kid, alg, black_box(input.as_bytes()), &sig)
                    .is_ok()
            })
        }
        "verify-eddsa-dalek" => {
            // The same token by ed25519-dalek's `verify_strict` alone (no table).
            let signing = key(Alg::EdDsa);
            let verifying = signing.verifying_key();
            let token = token(&signing, 1);
            let (input, sig) = token.rsplit_once('.')?;
            let sig = shared::b64::decode(sig, "signature").ok()?;
            let input = input.to_owned();
            Box::new(move || verifying.verify(black_box(input.as_bytes()), &sig).is_ok())
        }
        "verify-es256" => {
            // An ES256 signature over a token-sized input with a decoded P-256 key, as a
            // device key is used (no keyring, no table): the counterpart of
            // `verify-eddsa-dalek`.
            let signing = key(Alg::Es256);
            let verifying = signing.verifying_key();
            let token = token(&signing, 1);
            let (input, sig) = token.rsplit_once('.')?;
            let sig = shared::b64::decode(sig, "signature").ok()?;
            let input = input.to_owned();
            Box::new(move || verifying.verify(black_box(input.as_bytes()), &sig).is_ok())
        }
        "verify-es256-p256" => {
            // The same signature by the `p256` crate's own verifier, which `shared` used
            // before its faster double multiplication (`shared/src/es256.rs`).
            use p256::ecdsa::signature::Verifier as _;
            let signing = key(Alg::Es256);
            let verifying =
                p256::ecdsa::VerifyingKey::from_sec1_bytes(&signing.verifying_key().to_bytes())
                    .ok()?;
            let token = token(&signing, 1);
            let (input, sig) = token.rsplit_once('.')?;
            let sig = shared::b64::decode(sig, "signature").ok()?;
            let sig = p256::ecdsa::Signature::from_slice(&sig).ok()?;
            let input = input.to_owned();
            Box::new(move || verifying.verify(black_box(input.as_bytes()), &sig).is_ok())
        }
        "proof-eddsa" | "proof-es256" | "proof-mldsa" => {
            // What the filter does per DPoP proof: `dpop::verify_proof` (parse, decode the
            // header's JWK, verify, thumbprint, claims), with the proof key's own alg.
            let alg = match name {
                "proof-eddsa" => Alg::EdDsa,
                "proof-es256" => Alg::Es256,
                _ => Alg::MlDsa65,
            };
            let device = key(alg);
            let access = token(&key(Alg::EdDsa), 1);
            let claims = shared::dpop::DpopClaims {
                jti: "Xq3v9Lw2Zk8PaT0cR5nB7g".into(),
                htm: "GET".into(),
                htu: "http://127.0.0.1:10000/".into(),
                iat: NOW,
                ath: Some(shared::dpop::ath(&access)),
                nonce: None,
            };
            let proof = shared::dpop::sign_proof(&device, &claims).ok()?;
            let jkt = device.kid();
            Box::new(move || {
                let req = shared::dpop::ProofRequirements {
                    method: "GET",
                    uri: "http://127.0.0.1:10000/",
                    now: NOW,
                    max_age: 60,
                    access_token: Some(&access),
                    nonce: None,
                    jkt: Some(&jkt),
                };
                shared::dpop::verify_proof(black_box(&proof), &req).is_ok()
            })
        }
        "eddsa-key-table" => {
            // What a JWKS load costs per Ed25519 key: decoding it and building its table.
            let public = key(Alg::EdDsa).verifying_key();
            Box::new(move || {
                let mut ring = Keyring::new();
                ring.add(black_box(public.clone()));
                ring.len() == 1
            })
        }
        "lookup-1k" | "lookup-1m" => {
            // As the filter does per request: the token's keys were computed when it was
            // verified, so a lookup is four searches of the set. The cost of a search
            // depends on where its key falls, so the cases walk 1,024 tokens in turn
            // (none revoked) and count the mean.
            let set = set_of(if name == "lookup-1k" { 1000 } else { 1_000_000 });
            let tokens: Vec<TokenKeys> = (0..1024)
                .map(|n| {
                    TokenKeys::new(&TokenIds {
                        jti: &format!("Xq3v9Lw2Zk8PaT0cR5nB7g{n:04}"),
                        sub: &format!("user-{n}"),
                        kid: "kid",
                        sid: Some(&format!("sid-{n}")),
                        iat: NOW - 10,
                    })
                })
                .collect();
            let mut i = 0;
            Box::new(move || {
                i = (i + 1) % tokens.len();
                set.check_keys(black_box(&tokens[i]), NOW).is_none()
            })
        }
        _ => return None,
    };
    Some(run)
}
