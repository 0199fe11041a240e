//! Hostile input through real Envoy: the filter refuses it and no VM ever fails.

use serde_json::json;
use shared::b64;
use tests::http;
use tests::tokens::{self, claims, mint};

use crate::Stack;

/// A small deterministic generator, so a failing case can be replayed.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn jws(header: &serde_json::Value, payload: &[u8], signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64::encode(header.to_string().as_bytes()),
        b64::encode(payload),
        b64::encode(signature)
    )
}

/// Authorization values: structural garbage, hostile headers and claims, mutations.
fn corpus() -> Vec<Vec<u8>> {
    let valid = mint(&claims("mallory", "jti-m", "sid-m"));
    let kid = tokens::kid(&valid);
    let ok_payload = claims("mallory", "jti-m", "sid-m").to_string();
    let mut out: Vec<Vec<u8>> = [
        "",
        "Bearer",
        "Bearer ",
        "Bearer .",
        "Bearer ..",
        "Bearer ...",
        "Bearer a.b",
        "Bearer a.b.c.d",
        "Bearer ====.====.====",
        "Bearer \t",
        "DPoP",
        "Bearer a..c",
        "Basic Zm9vOmJhcg==",
        "Bearer eyJ",
        "bearer a.b.c",
        "Bearer a.b.c trailing",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    out.push(b"Bearer \x80\xff\xfe.\xc3\x28.\xa0\xa1".to_vec());
    out.push(format!("Bearer {}", "A".repeat(20_000)).into_bytes());
    out.push(format!("Bearer {}", "a.".repeat(5_000)).into_bytes());
    out.push(format!("Bearer {valid}=").into_bytes());
    // A standard-alphabet character in the signature (the token may have no '-' to swap).
    if let Some((signed, signature)) = valid.rsplit_once('.') {
        out.push(format!("Bearer {signed}.+{}", signature.get(1..).unwrap_or("")).into_bytes());
    }
    let headers = [
        json!({"alg": "none", "typ": "at+jwt", "kid": kid}),
        json!({"alg": "HS256", "typ": "at+jwt", "kid": kid}),
        json!({"alg": "RS256", "typ": "at+jwt", "kid": kid}),
        json!({"alg": "EdDSA", "typ": "at+jwt", "kid": kid, "crit": ["exp"]}),
        json!({"alg": "EdDSA", "typ": "at+jwt"}),
        json!({"alg": "EdDSA", "typ": "at+jwt", "kid": 7}),
        json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "x".repeat(4000)}),
        json!({"alg": "ML-DSA-65", "typ": "at+jwt", "kid": kid}),
        json!(["not", "an", "object"]),
        json!("string"),
    ];
    for header in &headers {
        out.push(format!("Bearer {}", jws(header, ok_payload.as_bytes(), &[0; 64])).into_bytes());
    }
    let header = json!({"alg": "EdDSA", "typ": "at+jwt", "kid": kid});
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let payloads: Vec<Vec<u8>> = vec![
        br#"{"alg":"EdDSA","alg":"none"}"#.to_vec(),
        deep.into_bytes(),
        b"\xff\xfe\x00".to_vec(),
        b"{}".to_vec(),
        br#"{"exp":1e999,"iat":-1,"nbf":"x"}"#.to_vec(),
        br#"{"sub":null}"#.to_vec(),
    ];
    for payload in &payloads {
        out.push(format!("Bearer {}", jws(&header, payload, &[1; 64])).into_bytes());
    }
    // Correctly signed tokens with hostile claims.
    let now = tokens::now();
    for claims in [
        json!({"iss": tokens::ISSUER, "sub": "x", "aud": {"o": 1}, "exp": now + 60, "iat": now, "nbf": now, "jti": "j"}),
        json!({"iss": tokens::ISSUER, "sub": "x", "aud": tokens::AUDIENCE, "exp": i64::MAX, "iat": i64::MIN, "nbf": i64::MAX, "jti": "j"}),
        json!({"iss": tokens::ISSUER, "sub": "x\r\nx-evil: 1", "aud": tokens::AUDIENCE, "exp": now + 60, "iat": now, "nbf": now, "jti": "j", "scope": "\u{0}", "cnf": {"jkt": "k"}}),
        json!({"iss": tokens::ISSUER, "sub": "x", "aud": tokens::AUDIENCE, "exp": now + 60, "iat": now, "nbf": now, "jti": "j", "cnf": {"jkt": "abc"}}),
        json!({"iss": tokens::ISSUER, "sub": "x", "aud": tokens::AUDIENCE, "exp": now + 60, "iat": now, "nbf": now, "jti": "j", "cnf": "nope"}),
    ] {
        out.push(format!("Bearer {}", mint(&claims)).into_bytes());
        out.push(format!("DPoP {}", mint(&claims)).into_bytes());
    }
    // Random mutations of a valid token.
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let alphabet = b"ABCxyz019-_.=+/ \x00\x7f\x80";
    for _ in 0..300 {
        let mut t = valid.clone().into_bytes();
        for _ in 0..=rng.below(3) {
            let at = rng.below(t.len());
            match rng.below(3) {
                0 => t[at] = alphabet[rng.below(alphabet.len())],
                1 => {
                    t.remove(at);
                }
                _ => t.insert(at, alphabet[rng.below(alphabet.len())]),
            }
        }
        if t == valid.as_bytes() {
            continue; // a replacement by the same character: still the valid token
        }
        let mut v = b"Bearer ".to_vec();
        v.extend_from_slice(&t);
        out.push(v);
    }
    out
}

#[test]
fn a_corpus_of_malformed_requests_and_tokens_never_fails_a_vm() {
    let stack = Stack::with_test_key();
    let valid = mint(&claims("judy", "jti-judy", "sid-judy"));
    stack.envoy.wait_until_serving(&valid);
    let vms_before = stack.envoy.stat("wasm.envoy.wasm.runtime.v8.created");
    let port = stack.envoy.port;

    let corpus = corpus();
    for (i, authorization) in corpus.iter().enumerate() {
        let garbage_dpop: &[u8] = if i % 3 == 0 { b"\xff.\x00.x" } else { b"a.b.c" };
        let headers: Vec<(&str, &[u8])> =
            vec![("authorization", authorization), ("dpop", garbage_dpop)];
        // Envoy itself may refuse some (400, 431); what reaches the filter must be a 401.
        match http::send(port, "GET", "/orders", &headers, b"") {
            Ok(r) => assert!(
                matches!(r.status, 400 | 401 | 413 | 431),
                "case {i}: {} {}",
                r.status,
                r.text()
            ),
            Err(e) => panic!("case {i}: connection failed: {e}"),
        }
    }
    // Odd request lines and paths, straight on the socket.
    for raw in [
        &b"GET /%00%ff?x=\xff HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"[..],
        b"OPTIONS * HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        b"GET http://other/path HTTP/1.1\r\nhost: x\r\nauthorization: Bearer a.b.c\r\nconnection: close\r\n\r\n",
        b"GARBAGE\r\n\r\n",
        b"GET /health?\xff HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        // The filter reads every header name (claim-header spellings, DPoP count): names
        // that are not UTF-8 or not tokens must never reach it as such.
        b"GET /orders HTTP/1.1\r\nhost: x\r\nx-\xff\xfe: 1\r\nconnection: close\r\n\r\n",
        b"GET /health HTTP/1.1\r\nhost: x\r\nx-\xc3\xa9: 1\r\nconnection: close\r\n\r\n",
        b"GET /orders HTTP/1.1\r\nhost: x\r\nx auth: 1\r\nconnection: close\r\n\r\n",
        b"GET /orders HTTP/1.1\r\nhost: x\r\ndpop: a\r\nDPoP: b\r\nDPOP: c\r\nconnection: close\r\n\r\n",
    ] {
        let _ = http::raw(port, raw);
    }

    // A signed claim that cannot be a header value is dropped, never split into two.
    let mut crlf = claims("x\r\nx-evil: 1", "jti-crlf", "sid-crlf");
    crlf["scope"] = json!("read\u{0}");
    let r = http::get(
        port,
        "/orders",
        &[
            ("authorization", &format!("Bearer {}", mint(&crlf))),
            ("x-test-id", "crlf"),
        ],
    )
    .expect("request");
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = stack.upstream.request_with_id("crlf").expect("forwarded");
    assert!(
        !seen
            .iter()
            .any(|(n, _)| n == "x-evil" || n == "x-auth-sub" || n == "x-auth-scope"),
        "{seen:?}"
    );

    let after = http::get_with_token(port, "/orders", &valid).expect("request");
    assert_eq!(
        after.status,
        200,
        "the filter still serves: {}",
        after.text()
    );
    assert_eq!(stack.envoy.wasm_failures(), vec![], "no wasm VM failed");
    assert_eq!(
        stack.envoy.stat("wasm.envoy.wasm.runtime.v8.created"),
        vms_before,
        "no VM was recreated"
    );
    let refused: u64 = stack
        .envoy
        .stats()
        .iter()
        .filter(|(n, _)| n.starts_with("wasmcustom.edge_filter.denied."))
        .map(|(_, v)| v)
        .sum();
    assert!(
        refused as usize >= corpus.len() / 2,
        "the corpus reached the filter ({refused} refusals)"
    );
}
