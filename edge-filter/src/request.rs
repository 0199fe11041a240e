//! What the filter reads from and writes to HTTP headers: credentials, bypass rules,
//! the `WWW-Authenticate` challenge and claim header values.

// Reads untrusted request input and feed bytes: no input may panic the VM.
#![deny(clippy::indexing_slicing, clippy::unwrap_used)]

use crate::reason::{Challenge, Reason};

/// The authorization scheme the token came with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scheme {
    /// `Authorization: Bearer`.
    Bearer,
    /// `Authorization: DPoP` (RFC 9449).
    Dpop,
}

/// Extracts the token from an `Authorization` value; schemes are case-insensitive and the
/// token must be a plausible compact JWS (visible ASCII, no spaces).
pub(crate) fn extract_token(authorization: Option<&[u8]>) -> Result<(Scheme, &str), Reason> {
    let value = authorization.ok_or(Reason::Missing)?;
    let value = std::str::from_utf8(value).map_err(|_| Reason::Malformed)?;
    let value = value.trim_matches([' ', '\t']);
    let (scheme, token) = value.split_once(' ').ok_or(Reason::Malformed)?;
    let scheme = if scheme.eq_ignore_ascii_case("bearer") {
        Scheme::Bearer
    } else if scheme.eq_ignore_ascii_case("dpop") {
        Scheme::Dpop
    } else {
        // Another scheme (Basic, ...) carries no bearer token for us.
        return Err(Reason::Missing);
    };
    let token = token.trim_start_matches(' ');
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Reason::Malformed);
    }
    Ok((scheme, token))
}

/// The path without query or fragment.
pub(crate) fn path_only(path: &str) -> &str {
    path.split(['?', '#']).next().unwrap_or(path)
}

/// The path as bypass rules see it, or `None` when it has no single meaning.
///
/// Query and fragment are dropped, percent-encoded unreserved characters (RFC 3986
/// section 2.3) decoded, duplicate slashes merged and dot segments resolved (a `..` above
/// the root stays at the root, as Envoy's `normalize_path` does). A path that upstreams
/// could read differently from us is refused: an encoded `/`, `\` or `%`, a raw `\`,
/// a NUL or control byte, non-ASCII bytes or a broken escape. Other escapes are kept,
/// with upper-case hex.
pub fn normalize_path(raw: &str) -> Option<String> {
    let path = path_only(raw);
    if !path.starts_with('/') {
        return None;
    }
    let bytes = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let value = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            if value.is_ascii_alphanumeric() || b"-._~".contains(&value) {
                decoded.push(char::from(value));
            } else if b"/\\%".contains(&value) || !(0x20..0x7f).contains(&value) {
                return None;
            } else {
                decoded.push('%');
                decoded.push_str(&format!("{value:02X}"));
            }
            i += 3;
            continue;
        }
        if b == b'\\' || !(0x21..0x7f).contains(&b) {
            return None;
        }
        decoded.push(char::from(b));
        i += 1;
    }
    // Segments after merging slashes; dot segments resolved against the stack.
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (n, segment) in segments.iter().enumerate() {
        match *segment {
            "" | "." => trailing_slash = n == last,
            ".." => {
                out.pop();
                trailing_slash = n == last;
            }
            s => {
                out.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut normal = String::with_capacity(decoded.len());
    for s in &out {
        normal.push('/');
        normal.push_str(s);
    }
    if trailing_slash || normal.is_empty() {
        normal.push('/');
    }
    Some(normal)
}

/// True when `path` (no query) is its own normal form: `/`-rooted, only unreserved
/// characters other than `.`, no empty segment inside.
fn is_plain_path(path: &str) -> bool {
    path.starts_with('/')
        && !path.contains("//")
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'~'))
}

/// True when `path` matches a bypass rule: exact, or a prefix for rules ending in `*`,
/// compared on the [normalised](normalize_path) path; a path without a single meaning is
/// never bypassed.
pub fn is_bypassed(rules: &[String], path: &str) -> bool {
    if rules.is_empty() {
        return false;
    }
    let normalized;
    let path = match path_only(path) {
        // Already normal (the usual request): nothing to decode, merge or resolve.
        plain if is_plain_path(plain) => plain,
        _ => match normalize_path(path) {
            Some(p) => {
                normalized = p;
                normalized.as_str()
            }
            None => return false,
        },
    };
    rules.iter().any(|rule| match rule.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => path == *rule,
    })
}

/// True for an RFC 9110 token (a method name, a header name): non-empty, `tchar` only.
pub(crate) fn is_token(value: &[u8]) -> bool {
    !value.is_empty()
        && value
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b))
}

/// The request facts a CORS preflight is recognised by.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Preflight<'a> {
    /// `:method`.
    pub(crate) method: &'a str,
    /// `Origin`.
    pub(crate) origin: Option<&'a [u8]>,
    /// `Access-Control-Request-Method`.
    pub(crate) request_method: Option<&'a [u8]>,
    /// `Content-Length`.
    pub(crate) content_length: Option<&'a [u8]>,
    /// A `Transfer-Encoding` header is present.
    pub(crate) transfer_encoding: bool,
    /// The headers end the stream: no body follows.
    pub(crate) end_of_stream: bool,
}

/// True for a CORS preflight (Fetch standard): `OPTIONS` with an `Origin`, an
/// `Access-Control-Request-Method` that is a method token, and no body. Anything else is
/// an ordinary request and needs a token.
pub(crate) fn is_cors_preflight(req: &Preflight<'_>) -> bool {
    req.method == "OPTIONS"
        && req.origin.is_some_and(|o| !o.is_empty())
        && req.request_method.is_some_and(is_token)
        && req
            .content_length
            .is_none_or(|l| l.iter().all(|b| *b == b'0'))
        && !req.transfer_encoding
        && req.end_of_stream
}

/// A header name folded for comparison: lower case, `_` read as `-` (CGI and WSGI
/// servers turn both into the same `HTTP_X_AUTH_SUB` variable).
pub(crate) fn fold_header_name(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'_' => '-',
            b => char::from(b.to_ascii_lowercase()),
        })
        .collect()
}

/// True when an incoming header called `name` could reach the upstream as one of the
/// (already [folded](fold_header_name)) claim headers.
pub(crate) fn is_claim_header_alias(name: &str, folded_claim_headers: &[String]) -> bool {
    // Byte by byte, as `fold_header_name` folds: no copy per header per request.
    let fold = |b: u8| {
        if b == b'_' {
            b'-'
        } else {
            b.to_ascii_lowercase()
        }
    };
    folded_claim_headers
        .iter()
        .any(|f| f.len() == name.len() && f.bytes().zip(name.bytes()).all(|(f, n)| f == fold(n)))
}

/// The proof algorithms the edge verifies, as the `algs` of a `DPoP` challenge
/// (RFC 9449 section 7.1): `shared::dpop::PROOF_ALGS_CHALLENGE` (Ed25519 under both of
/// its names, ES256, ML-DSA-65). A literal so the challenges stay static strings; a test
/// holds it equal to the shared list.
macro_rules! dpop_algs {
    () => {
        "EdDSA Ed25519 ES256 ML-DSA-65"
    };
}

macro_rules! per_reason {
    ($($reason:ident => $name:literal, $dpop_error:literal),* $(,)?) => {
        /// The `WWW-Authenticate` value for a refusal: RFC 6750 section 3 for a bearer
        /// request, RFC 9449 section 7.1 for a DPoP one (`invalid_dpop_proof` for a proof
        /// problem, `invalid_token` for everything else, with the accepted `algs`).
        pub(crate) fn challenge(reason: Reason, scheme: Challenge) -> &'static str {
            match (scheme, reason) {
                $((Challenge::Bearer, Reason::$reason) => concat!(
                    "Bearer error=\"invalid_token\", error_description=\"", $name, "\""
                ),)*
                $((Challenge::Dpop, Reason::$reason) => concat!(
                    "DPoP error=\"", $dpop_error, "\", error_description=\"", $name,
                    "\", algs=\"", dpop_algs!(), "\""
                ),)*
            }
        }

        /// The JSON body sent with a refusal: the challenge's `error`, the reason.
        pub(crate) fn error_body(reason: Reason) -> &'static str {
            match reason {
                $(Reason::$reason => concat!(
                    "{\"error\":\"", $dpop_error, "\",\"error_description\":\"", $name,
                    "\"}\n"
                ),)*
            }
        }
    };
}

// Static strings: a refusal allocates nothing. A test checks they agree with `as_str`.
// The second name is the `error` code: only a proof problem is not `invalid_token`.
per_reason! {
    Missing => "missing", "invalid_token",
    Malformed => "malformed", "invalid_token",
    UnknownKey => "unknown_key", "invalid_token",
    BadSignature => "bad_signature", "invalid_token",
    Expired => "expired", "invalid_token",
    NotYetValid => "not_yet_valid", "invalid_token",
    WrongIssuer => "wrong_issuer", "invalid_token",
    WrongAudience => "wrong_audience", "invalid_token",
    Revoked => "revoked", "invalid_token",
    InvalidDpopProof => "invalid_dpop_proof", "invalid_dpop_proof",
}

/// True when an `Authorization` value names the `DPoP` scheme, whatever follows (used
/// to pick the challenge when the credential itself could not be read).
pub(crate) fn names_dpop_scheme(authorization: Option<&[u8]>) -> bool {
    authorization.is_some_and(|v| match v.trim_ascii_start().split_first_chunk::<4>() {
        Some((scheme, [b' ' | b'\t', ..])) => scheme.eq_ignore_ascii_case(b"dpop"),
        _ => false,
    })
}

/// The `htu` of a request for DPoP: scheme, authority and path, without query.
pub(crate) fn htu(scheme: &str, authority: &str, path: &str) -> String {
    format!("{scheme}://{authority}{}", path_only(path))
}

/// A claim as a header value: strings as they are, numbers and booleans printed, arrays
/// of strings joined with `,`, anything else as compact JSON. `None` when the value
/// could not travel safely in a header (control characters, or over 4 KiB).
pub(crate) fn claim_header_value(value: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    let text = match value {
        Value::Null => return None,
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Array(items) if items.iter().all(Value::is_string) => items
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    };
    let safe = text.len() <= 4096 && !text.chars().any(char::is_control);
    safe.then_some(text)
}

/// Looks up a dotted claim path (`cnf.jkt`) in the claims object.
pub(crate) fn claim_at<'v>(
    claims: &'v serde_json::Value,
    path: &str,
) -> Option<&'v serde_json::Value> {
    path.split('.')
        .try_fold(claims, |value, member| value.as_object()?.get(member))
}

#[cfg(test)]
#[expect(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    reason = "a test fails on an unexpected input"
)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bearer_and_dpop_tokens_are_extracted_case_insensitively() {
        assert_eq!(
            extract_token(Some(b"Bearer a.b.c")),
            Ok((Scheme::Bearer, "a.b.c"))
        );
        assert_eq!(
            extract_token(Some(b"bearer  a.b.c ")),
            Ok((Scheme::Bearer, "a.b.c"))
        );
        assert_eq!(extract_token(Some(b"DPoP x")), Ok((Scheme::Dpop, "x")));
    }

    #[test]
    fn missing_or_garbled_credentials_are_named() {
        assert_eq!(extract_token(None), Err(Reason::Missing));
        assert_eq!(extract_token(Some(b"Basic dXNlcg==")), Err(Reason::Missing));
        assert_eq!(extract_token(Some(b"Bearer")), Err(Reason::Malformed));
        assert_eq!(extract_token(Some(b"Bearer ")), Err(Reason::Malformed));
        assert_eq!(extract_token(Some(b"Bearer a b")), Err(Reason::Malformed));
        assert_eq!(
            extract_token(Some(b"Bearer \xff\xfe")),
            Err(Reason::Malformed)
        );
        assert_eq!(extract_token(Some(b"")), Err(Reason::Malformed));
    }

    #[test]
    fn bypass_rules_match_exact_paths_and_prefixes_ignoring_the_query() {
        let rules = vec!["/health".to_owned(), "/public/*".to_owned()];
        assert!(is_bypassed(&rules, "/health"));
        assert!(is_bypassed(&rules, "/health?probe=1"));
        assert!(!is_bypassed(&rules, "/healthz"));
        assert!(is_bypassed(&rules, "/public/logo.png"));
        assert!(!is_bypassed(&rules, "/private"));
    }

    #[test]
    fn bypass_prefixes_match_the_normalised_path_only() {
        let rules = vec!["/public/*".to_owned(), "/health".to_owned()];
        for path in [
            "/public/logo.png",
            "/public/a/../b",
            "//public//x",
            "/public/%61bc",
            "/%70ublic/x",
            "/public/x?../../admin",
            "/public/a%20b",
            "/./health",
        ] {
            assert!(is_bypassed(&rules, path), "{path} should bypass");
        }
        for path in [
            "/public/../admin/secret",
            "/public/%2e%2e/admin/secret",
            "/public/%2E%2E/admin",
            "/public/.%2e/admin",
            "/public/..",
            "/public/x/../../admin",
            "/public%2f../admin",
            "/public/%2fadmin",
            "/public/%5c..%5cadmin",
            "/public\\..\\admin",
            "/public/%25",
            "/public/%zz",
            "/public/%2",
            "/public/\u{e9}",
            "/publicity",
            "public/x",
            "*",
            "/health/x",
        ] {
            assert!(!is_bypassed(&rules, path), "{path} must not bypass");
        }
        assert_eq!(
            normalize_path("/a//b/./c/../d/").as_deref(),
            Some("/a/b/d/")
        );
        assert_eq!(normalize_path("/../..").as_deref(), Some("/"));
        assert_eq!(normalize_path("/a/%7euser").as_deref(), Some("/a/~user"));
        assert_eq!(normalize_path("/a%3fb").as_deref(), Some("/a%3Fb"));
        assert_eq!(normalize_path("/a%2Fb"), None);
    }

    #[test]
    fn a_preflight_has_an_origin_a_method_token_and_no_body() {
        let ok = Preflight {
            method: "OPTIONS",
            origin: Some(b"https://app.example"),
            request_method: Some(b"POST"),
            content_length: None,
            transfer_encoding: false,
            end_of_stream: true,
        };
        assert!(is_cors_preflight(&ok));
        assert!(is_cors_preflight(&Preflight {
            content_length: Some(b"0"),
            ..ok
        }));
        for (label, bad) in [
            (
                "GET",
                Preflight {
                    method: "GET",
                    ..ok
                },
            ),
            ("no origin", Preflight { origin: None, ..ok }),
            (
                "empty origin",
                Preflight {
                    origin: Some(b""),
                    ..ok
                },
            ),
            (
                "no method",
                Preflight {
                    request_method: None,
                    ..ok
                },
            ),
            (
                "empty method",
                Preflight {
                    request_method: Some(b""),
                    ..ok
                },
            ),
            (
                "bad method",
                Preflight {
                    request_method: Some(b"PO ST"),
                    ..ok
                },
            ),
            (
                "method list",
                Preflight {
                    request_method: Some(b"GET,POST"),
                    ..ok
                },
            ),
            (
                "body",
                Preflight {
                    content_length: Some(b"5"),
                    ..ok
                },
            ),
            (
                "chunked",
                Preflight {
                    transfer_encoding: true,
                    ..ok
                },
            ),
            (
                "stream open",
                Preflight {
                    end_of_stream: false,
                    ..ok
                },
            ),
        ] {
            assert!(!is_cors_preflight(&bad), "{label}");
        }
    }

    #[test]
    fn claim_headers_are_matched_with_underscores_and_case_folded() {
        let claims = vec![
            fold_header_name("x-auth-sub"),
            fold_header_name("x_auth_scope"),
        ];
        for name in [
            "x-auth-sub",
            "X-Auth-Sub",
            "x_auth_sub",
            "X_AUTH-SUB",
            "x-auth-scope",
            "X_Auth-Scope",
        ] {
            assert!(is_claim_header_alias(name, &claims), "{name}");
        }
        for name in ["x-auth-subject", "xauthsub", "x-auth", "x.auth.sub"] {
            assert!(!is_claim_header_alias(name, &claims), "{name}");
        }
    }

    #[test]
    fn the_challenge_names_the_reason() {
        assert_eq!(
            challenge(Reason::Expired, Challenge::Bearer),
            "Bearer error=\"invalid_token\", error_description=\"expired\""
        );
        assert!(error_body(Reason::Revoked).contains("\"revoked\""));
        for reason in Reason::ALL {
            assert_eq!(
                challenge(reason, Challenge::Bearer),
                format!(
                    "Bearer error=\"invalid_token\", error_description=\"{}\"",
                    reason.as_str()
                )
            );
            let body: serde_json::Value = serde_json::from_str(error_body(reason)).unwrap();
            assert_eq!(body["error_description"], reason.as_str());
        }
    }

    #[test]
    fn a_dpop_refusal_gets_the_rfc_9449_challenge_with_the_accepted_algs() {
        assert_eq!(
            challenge(Reason::InvalidDpopProof, Challenge::Dpop),
            "DPoP error=\"invalid_dpop_proof\", error_description=\"invalid_dpop_proof\", \
             algs=\"EdDSA Ed25519 ES256 ML-DSA-65\""
        );
        assert_eq!(
            challenge(Reason::Revoked, Challenge::Dpop),
            "DPoP error=\"invalid_token\", error_description=\"revoked\", \
             algs=\"EdDSA Ed25519 ES256 ML-DSA-65\""
        );
        for reason in Reason::ALL {
            let error = if reason == Reason::InvalidDpopProof {
                "invalid_dpop_proof"
            } else {
                "invalid_token"
            };
            assert_eq!(
                challenge(reason, Challenge::Dpop),
                format!(
                    "DPoP error=\"{error}\", error_description=\"{}\", algs=\"{}\"",
                    reason.as_str(),
                    dpop_algs!()
                )
            );
            let body: serde_json::Value = serde_json::from_str(error_body(reason)).unwrap();
            assert_eq!(body["error"], error, "the body's error is the challenge's");
        }
    }

    #[test]
    fn every_algorithm_the_dpop_challenge_lists_is_one_shared_verifies() {
        assert_eq!(dpop_algs!(), shared::dpop::PROOF_ALGS_CHALLENGE);
        for name in dpop_algs!().split(' ') {
            assert!(shared::Alg::parse(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn the_dpop_scheme_is_recognised_before_the_credential_is_read() {
        assert!(names_dpop_scheme(Some(b"DPoP a.b.c")));
        assert!(names_dpop_scheme(Some(b" dpop  a b")));
        assert!(!names_dpop_scheme(Some(b"Bearer a.b.c")));
        assert!(!names_dpop_scheme(Some(b"DPoPx a")));
        assert!(!names_dpop_scheme(Some(b"DPoP")));
        assert!(!names_dpop_scheme(None));
    }

    #[test]
    fn claims_become_safe_header_values() {
        assert_eq!(
            claim_header_value(&json!("alice")).as_deref(),
            Some("alice")
        );
        assert_eq!(claim_header_value(&json!(42)).as_deref(), Some("42"));
        assert_eq!(
            claim_header_value(&json!(["a", "b"])).as_deref(),
            Some("a,b")
        );
        assert_eq!(
            claim_header_value(&json!({"k": 1})).as_deref(),
            Some("{\"k\":1}")
        );
        assert_eq!(claim_header_value(&json!("a\r\nx-evil: 1")), None);
        assert_eq!(claim_header_value(&json!(null)), None);
        let claims = json!({"cnf": {"jkt": "abc"}, "sub": "s"});
        assert_eq!(claim_at(&claims, "cnf.jkt"), Some(&json!("abc")));
        assert_eq!(claim_at(&claims, "sub.x"), None);
        assert_eq!(
            htu("https", "api.example", "/a?b=c"),
            "https://api.example/a"
        );
    }
}

#[cfg(test)]
mod fast_path_tests {
    use super::*;

    #[test]
    fn a_plain_path_is_its_own_normal_form() {
        // Every path over a small alphabet of the characters that matter, up to 6 long.
        let alphabet = ['/', 'a', '-', '_', '~', '.', '%', 'Z'];
        let mut paths = vec![String::new()];
        for _ in 0..6 {
            let next: Vec<String> = paths
                .iter()
                .flat_map(|p| alphabet.iter().map(move |c| format!("{p}{c}")))
                .collect();
            paths.extend(next);
            paths.dedup();
        }
        for path in paths {
            if is_plain_path(&path) {
                assert_eq!(
                    normalize_path(&path).as_deref(),
                    Some(path.as_str()),
                    "{path}"
                );
            }
        }
    }

    #[test]
    fn claim_header_aliases_match_as_folded_names_do() {
        let folded = vec![fold_header_name("X-Auth-Sub")];
        for name in ["x-auth-sub", "X_AUTH_SUB", "x_Auth-sub"] {
            assert!(is_claim_header_alias(name, &folded), "{name}");
        }
        for name in ["x-auth-su", "x-auth-subs", "x-auth-süb", "x.auth.sub", ""] {
            assert!(!is_claim_header_alias(name, &folded), "{name}");
        }
    }
}
