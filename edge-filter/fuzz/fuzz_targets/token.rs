//! Everything a request can put in front of the filter: the `Authorization` and `DPoP`
//! headers go through the full decision, and the bytes through the strict JWS parser.
#![no_main]

use std::sync::OnceLock;

use edge_filter::authz::{Authorizer, Freshness, Request, Rules};
use edge_filter::replay::MemoryGuard;
use libfuzzer_sys::fuzz_target;
use shared::edgeset::RevocationSet;
use shared::jws::{Jws, Limits};
use shared::{Alg, Keyring, SigningKey, Validation};

fn keyring() -> &'static Keyring {
    static KEYS: OnceLock<Keyring> = OnceLock::new();
    KEYS.get_or_init(|| {
        let mut ring = Keyring::new();
        ring.add(SigningKey::from_seed(Alg::EdDsa, &[7; 32]).verifying_key());
        ring.add(SigningKey::from_seed(Alg::MlDsa65, &[9; 32]).verifying_key());
        ring
    })
}

fuzz_target!(|data: &[u8]| {
    // A NUL byte (never valid in a header) separates Authorization from DPoP.
    let (authorization, dpop) = match data.iter().position(|b| *b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    if let Ok(text) = std::str::from_utf8(authorization) {
        if let Ok(jws) = Jws::parse(text, &Limits::default()) {
            let _ = jws.verify(keyring());
            let _ = jws.claims::<shared::AccessClaims>();
        }
    }
    let mut authorizer = Authorizer::new(
        keyring().clone(),
        Rules {
            validation: Validation::default(),
            limits: Limits::default(),
            claim_headers: vec![
                ("sub".into(), "x-sub".into()),
                ("a.b".into(), "x-ab".into()),
            ],
            dpop_max_age: 60,
            fail_open: false,
            cache_max_entries: 4,
        },
    );
    let req = Request {
        authorization: Some(authorization),
        dpop: Some(dpop),
        dpop_headers: 1,
        method: "GET",
        scheme: "https",
        authority: "api.test",
        path: "/x",
    };
    let set = RevocationSet::new();
    let mut replay = MemoryGuard::new(4);
    for _ in 0..2 {
        let _ = authorizer.authorize(&req, &set, Freshness::Fresh, 1_700_000_000, &mut replay);
    }
});
