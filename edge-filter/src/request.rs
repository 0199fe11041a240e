//! What the filter reads from and writes to HTTP headers: credentials, bypass rules,
//! the `WWW-Authenticate` challenge and claim header values.

use crate::authz::Reason;

/// The authorization scheme the token came with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `Authorization: Bearer`.
    Bearer,
    /// `Authorization: DPoP` (RFC 9449).
    Dpop,
}

/// Extracts the token from an `Authorization` value; schemes are case-insensitive and the
/// token must be a plausible compact JWS (visible ASCII, no spaces).
pub fn extract_token(authorization: Option<&[u8]>) -> Result<(Scheme, &str), Reason> {
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
pub fn path_only(path: &str) -> &str {
    path.split(['?', '#']).next().unwrap_or(path)
}

/// True when `path` matches a bypass rule: exact, or a prefix for rules ending in `*`.
pub fn is_bypassed(rules: &[String], path: &str) -> bool {
    let path = path_only(path);
    rules.iter().any(|rule| match rule.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => path == rule,
    })
}

/// True for a CORS preflight: `OPTIONS` with `Access-Control-Request-Method`.
pub fn is_cors_preflight(method: &str, has_request_method_header: bool) -> bool {
    method == "OPTIONS" && has_request_method_header
}

/// The `WWW-Authenticate` value for a refusal (RFC 6750 section 3).
pub fn challenge(reason: Reason) -> String {
    format!(
        "Bearer error=\"invalid_token\", error_description=\"{}\"",
        reason.as_str()
    )
}

/// The JSON body sent with a refusal.
pub fn error_body(reason: Reason) -> String {
    format!(
        "{{\"error\":\"invalid_token\",\"error_description\":\"{}\"}}\n",
        reason.as_str()
    )
}

/// The `htu` of a request for DPoP: scheme, authority and path, without query.
pub fn htu(scheme: &str, authority: &str, path: &str) -> String {
    format!("{scheme}://{authority}{}", path_only(path))
}

/// A claim as a header value: strings as they are, numbers and booleans printed, arrays
/// of strings joined with `,`, anything else as compact JSON. `None` when the value
/// could not travel safely in a header (control characters, or over 4 KiB).
pub fn claim_header_value(value: &serde_json::Value) -> Option<String> {
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
pub fn claim_at<'v>(claims: &'v serde_json::Value, path: &str) -> Option<&'v serde_json::Value> {
    path.split('.')
        .try_fold(claims, |value, member| value.as_object()?.get(member))
}

#[cfg(test)]
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
        assert!(is_cors_preflight("OPTIONS", true));
        assert!(!is_cors_preflight("OPTIONS", false));
        assert!(!is_cors_preflight("GET", true));
    }

    #[test]
    fn the_challenge_names_the_reason() {
        assert_eq!(
            challenge(Reason::Expired),
            "Bearer error=\"invalid_token\", error_description=\"expired\""
        );
        assert!(error_body(Reason::Revoked).contains("\"revoked\""));
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
