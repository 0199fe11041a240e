//! Plugin configuration: the JSON given to the filter in Envoy's `configuration`, parsed
//! and checked once in `on_configure`, with every problem reported at once.

use std::collections::BTreeMap;

use serde::Deserialize;
use shared::jws::Limits;
use shared::{JwkSet, Keyring, Validation};

/// Where the verification keys come from.
#[derive(Debug, Clone)]
pub(crate) enum KeySource {
    /// A JWKS given inline in the plugin configuration.
    Inline(Keyring),
    /// The control plane's JWKS, fetched by the poller and refreshed periodically.
    Fetched,
}

/// How to reach the control plane's edge feed (an Envoy cluster).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ControlPlane {
    /// Envoy cluster name of the control plane.
    pub(crate) cluster: String,
    /// `:authority` sent with the calls.
    pub(crate) authority: String,
    /// Path of the revocation feed.
    pub(crate) feed_path: String,
    /// Path of the JWKS.
    pub(crate) jwks_path: String,
    /// `wait` asked of the long poll, in seconds.
    pub(crate) poll_wait_seconds: u64,
    /// How often a fetched JWKS is refreshed, in seconds.
    pub(crate) jwks_refresh_seconds: u64,
    /// Pause after a failed call before the next one, in milliseconds; doubled per
    /// failure in a row up to [`RETRY_CAP_MILLIS`] (or this value, if larger).
    pub(crate) retry_millis: u64,
    /// Least time between two JWKS fetches triggered by tokens with an unknown `kid`.
    pub(crate) jwks_min_refetch_seconds: u64,
    /// The edge credential sent with feed calls (`authorization: Bearer ...`), if any.
    pub(crate) edge_credential: Option<String>,
    /// The name this edge gives itself in feed calls (`x-edge-instance`); `None` until
    /// `on_configure` fills in Envoy's node id.
    pub(crate) edge_instance: Option<String>,
}

/// Longest `edge_credential`.
const MAX_CREDENTIAL: usize = 256;

/// Longest `edge_instance` (the control plane refuses longer ones).
pub(crate) const MAX_INSTANCE: usize = 128;

fn is_instance_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"._~:@/+=-".contains(&b)
}

/// `edge_instance` from Envoy's node id: characters the control plane refuses become
/// `_`, cut to its length limit; `None` when nothing is left.
pub(crate) fn instance_from_node_id(id: &str) -> Option<String> {
    let name: String = id
        .bytes()
        .take(MAX_INSTANCE)
        .map(|b| {
            if is_instance_char(b) {
                char::from(b)
            } else {
                '_'
            }
        })
        .collect();
    (!name.is_empty()).then_some(name)
}

/// Longest pause between calls after failures in a row, unless `retry_millis` is longer.
pub(crate) const RETRY_CAP_MILLIS: u64 = 5_000;

/// What to do with requests while the revocation set is older than the bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum OnStale {
    /// Answer 503 (fail closed).
    #[default]
    Deny,
    /// Keep serving with the last known set (fail open).
    Allow,
}

/// Which part of the edge a plugin instance plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Role {
    /// The HTTP filter: checks requests; one of its VMs polls when no poller service runs.
    #[default]
    Filter,
    /// A singleton `envoy.bootstrap.wasm` service with the filter's `vm_id`: it polls from
    /// Envoy's main thread, so verifying and decoding a large snapshot never stalls a
    /// worker. It takes the poller lease from any filter VM that holds it.
    Poller,
}

/// The validated filter configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Filter, or the singleton poller service.
    pub(crate) role: Role,
    /// `iss`, `aud` and clock skew rules.
    pub(crate) validation: Validation,
    /// Token size limit.
    pub(crate) limits: Limits,
    /// Verification keys.
    pub(crate) keys: KeySource,
    /// The control plane feed.
    pub(crate) control_plane: ControlPlane,
    /// Largest accepted age of the revocation set, in seconds.
    pub(crate) staleness_bound_seconds: i64,
    /// Behaviour past the staleness bound.
    pub(crate) on_stale: OnStale,
    /// `(claim path, header name)`: claims forwarded upstream; dotted paths reach into objects.
    pub(crate) claim_headers: Vec<(String, String)>,
    /// Remove `Authorization` (and `DPoP`) before forwarding.
    pub(crate) strip_authorization: bool,
    /// Paths served without a token: exact, or a prefix when the rule ends with `*`.
    pub(crate) bypass_paths: Vec<String>,
    /// Let CORS preflight requests through without a token.
    pub(crate) cors_preflight_bypass: bool,
    /// Most verified tokens kept in the cache of each VM.
    pub(crate) cache_max_entries: usize,
    /// Most entries accepted in a revocation update.
    pub(crate) max_revocations: u64,
    /// Largest distance between a DPoP proof's `iat` and now, in seconds.
    pub(crate) dpop_max_age_seconds: i64,
    /// Buckets of the DPoP replay cache (each holds up to 16 live proofs).
    pub(crate) dpop_replay_buckets: u32,
    /// The public origins (`scheme://authority`, lower case) a DPoP proof may be made
    /// for; empty: whatever `:scheme` and `:authority` the request names.
    pub(crate) dpop_origins: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawControlPlane {
    cluster: String,
    authority: Option<String>,
    #[serde(default = "default_feed_path")]
    feed_path: String,
    #[serde(default = "default_jwks_path")]
    jwks_path: String,
    #[serde(default = "default_poll_wait")]
    poll_wait_seconds: u64,
    #[serde(default = "default_jwks_refresh")]
    jwks_refresh_seconds: u64,
    #[serde(default = "default_retry")]
    retry_millis: u64,
    #[serde(default = "default_min_refetch")]
    jwks_min_refetch_seconds: u64,
    edge_credential: Option<String>,
    edge_instance: Option<String>,
}

/// `issuer`: one string (the form every existing config has) or a list, accepted during
/// an issuer switch or from several regions.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    role: Role,
    issuer: Option<OneOrMany>,
    audience: Option<String>,
    #[serde(default = "default_leeway")]
    leeway_seconds: i64,
    jwks: Option<serde_json::Value>,
    control_plane: RawControlPlane,
    #[serde(default = "default_staleness")]
    staleness_bound_seconds: i64,
    #[serde(default)]
    on_stale: OnStale,
    #[serde(default)]
    claim_headers: BTreeMap<String, String>,
    #[serde(default)]
    strip_authorization: bool,
    #[serde(default)]
    bypass_paths: Vec<String>,
    #[serde(default = "yes")]
    cors_preflight_bypass: bool,
    #[serde(default = "default_cache")]
    cache_max_entries: usize,
    #[serde(default = "default_max_token")]
    max_token_bytes: usize,
    #[serde(default = "default_max_revocations")]
    max_revocations: u64,
    #[serde(default = "default_dpop_age")]
    dpop_max_age_seconds: i64,
    #[serde(default = "default_replay_buckets")]
    dpop_replay_buckets: u32,
    #[serde(default)]
    dpop_origins: Vec<String>,
}

/// `scheme://authority` in lower case, when `origin` is an http(s) origin with no path,
/// query, fragment, user info or white space.
fn parse_origin(origin: &str) -> Option<String> {
    let lower = origin.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"))?;
    let clean = !rest.is_empty()
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
    clean.then_some(lower)
}

fn default_feed_path() -> String {
    "/v1/edge/revocations".into()
}
fn default_jwks_path() -> String {
    "/.well-known/jwks.json".into()
}
fn default_poll_wait() -> u64 {
    10
}
fn default_jwks_refresh() -> u64 {
    300
}
fn default_retry() -> u64 {
    1000
}
fn default_leeway() -> i64 {
    30
}
fn default_staleness() -> i64 {
    30
}
fn yes() -> bool {
    true
}
fn default_cache() -> usize {
    10_000
}
fn default_max_token() -> usize {
    16 * 1024
}
fn default_max_revocations() -> u64 {
    1_000_000
}
fn default_dpop_age() -> i64 {
    60
}
fn default_min_refetch() -> u64 {
    1
}
fn default_replay_buckets() -> u32 {
    1024
}

/// Headers the mapping may not overwrite: pseudo-headers, routing and credentials.
const RESERVED_HEADERS: &[&str] = &["authorization", "host", "dpop", "content-length", "te"];

fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.!#$%&'*+^`|~".contains(&b)
        })
}

/// Why the plugin configuration was refused (`on_configure` logs it and returns false).
#[derive(Debug)]
pub enum ConfigError {
    /// Not JSON of the expected shape: bad syntax, an unknown field, a wrong type, no
    /// `control_plane`.
    Json(serde_json::Error),
    /// JSON of the right shape with wrong values: every one found, in field order.
    Invalid(Vec<Problem>),
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("invalid edge-filter configuration: ")?;
        match self {
            ConfigError::Json(e) => write!(f, "{e}"),
            ConfigError::Invalid(problems) => {
                for (i, problem) in problems.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "{problem}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// One wrong value of the plugin configuration, named by its field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The inline `jwks` is no JWKS this filter takes.
    Jwks(shared::JoseError),
    /// The inline `jwks` holds no key of an algorithm this filter verifies.
    JwksNoUsableKey,
    /// `control_plane.cluster` is empty.
    EmptyCluster,
    /// A path (`control_plane.feed_path`, `control_plane.jwks_path`) is not absolute.
    RelativePath(&'static str),
    /// A number outside its range.
    Range {
        /// The field, with its parent (`control_plane.retry_millis`).
        field: &'static str,
        /// Least value allowed.
        min: u64,
        /// Largest value allowed.
        max: u64,
    },
    /// A number that must be above 0 is 0.
    NotPositive(&'static str),
    /// `control_plane.edge_credential` is empty, too long or not visible ASCII.
    EdgeCredential,
    /// `control_plane.edge_instance` is empty, too long or has a character the control
    /// plane refuses.
    EdgeInstance,
    /// `staleness_bound_seconds` is under one long poll and a margin: a healthy feed
    /// would flap between fresh and stale.
    StalenessBelowPollWait {
        /// `poll_wait_seconds + 2`.
        min: i64,
    },
    /// An item of `dpop_origins` is no `http(s)://host[:port]` origin.
    DpopOrigin(String),
    /// A key of `claim_headers` is no dotted claim path.
    ClaimPath(String),
    /// A value of `claim_headers` is no header name, or one the mapping may not set.
    ClaimHeader {
        /// The claim path.
        claim: String,
        /// The header name, lower case.
        header: String,
    },
    /// An item of `bypass_paths` is not absolute.
    BypassPath(String),
    /// `issuer` is an empty list (which would accept any issuer).
    EmptyIssuerList,
    /// `issuer` is, or holds, a blank string.
    EmptyIssuer,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Jwks(e) => write!(f, "jwks: {e}"),
            Problem::JwksNoUsableKey => {
                f.write_str("jwks: no usable key (OKP Ed25519, EC P-256 or AKP ML-DSA-65)")
            }
            Problem::EmptyCluster => f.write_str("control_plane.cluster: must not be empty"),
            Problem::RelativePath(name) => write!(f, "control_plane.{name}: must start with '/'"),
            Problem::Range { field, min, max } => write!(f, "{field}: must be {min}..={max}"),
            Problem::NotPositive(field) => write!(f, "{field}: must be positive"),
            Problem::EdgeCredential => write!(
                f,
                "control_plane.edge_credential: must be 1..={MAX_CREDENTIAL} visible ASCII characters"
            ),
            Problem::EdgeInstance => write!(
                f,
                "control_plane.edge_instance: must be 1..={MAX_INSTANCE} characters of A-Z a-z 0-9 . _ ~ : @ / + = -"
            ),
            Problem::StalenessBelowPollWait { min } => write!(
                f,
                "staleness_bound_seconds: must be at least poll_wait_seconds + 2 = {min}"
            ),
            Problem::DpopOrigin(origin) => write!(
                f,
                "dpop_origins: {origin:?} is not an http(s)://host[:port] origin (no path)"
            ),
            Problem::ClaimPath(claim) => write!(f, "claim_headers: bad claim path {claim:?}"),
            Problem::ClaimHeader { claim, header } => write!(
                f,
                "claim_headers.{claim}: {header:?} is not an allowed header name"
            ),
            Problem::BypassPath(path) => write!(f, "bypass_paths: {path:?} must start with '/'"),
            Problem::EmptyIssuerList => f.write_str(
                "issuer: an empty list would accept any issuer; leave it out to mean that",
            ),
            Problem::EmptyIssuer => f.write_str("issuer: must not be empty"),
        }
    }
}

/// [`Problem::Range`] when `value` is outside `min..=max`.
fn check_range(problems: &mut Vec<Problem>, field: &'static str, value: u64, min: u64, max: u64) {
    if !(min..=max).contains(&value) {
        problems.push(Problem::Range { field, min, max });
    }
}

/// [`Problem::NotPositive`] when `value` is 0.
fn check_positive(problems: &mut Vec<Problem>, field: &'static str, value: u64) {
    if value == 0 {
        problems.push(Problem::NotPositive(field));
    }
}

impl Config {
    /// Parses and checks the plugin configuration JSON; the error lists every problem.
    pub fn parse(bytes: &[u8]) -> Result<Config, ConfigError> {
        let raw: RawConfig = serde_json::from_slice(bytes).map_err(ConfigError::Json)?;
        let mut problems = Vec::new();

        let keys = match &raw.jwks {
            None => KeySource::Fetched,
            Some(value) => match serde_json::to_vec(value)
                .map_err(|e| shared::JoseError::Json {
                    part: "jwks",
                    reason: e.to_string(),
                })
                .and_then(|b| JwkSet::parse(&b))
                .and_then(|set| Keyring::from_jwks(&set))
            {
                Ok(ring) if ring.is_empty() => {
                    problems.push(Problem::JwksNoUsableKey);
                    KeySource::Fetched
                }
                Ok(ring) => KeySource::Inline(ring),
                Err(e) => {
                    problems.push(Problem::Jwks(e));
                    KeySource::Fetched
                }
            },
        };

        let cp = raw.control_plane;
        if cp.cluster.is_empty() {
            problems.push(Problem::EmptyCluster);
        }
        for (name, path) in [("feed_path", &cp.feed_path), ("jwks_path", &cp.jwks_path)] {
            if !path.starts_with('/') {
                problems.push(Problem::RelativePath(name));
            }
        }
        check_range(
            &mut problems,
            "control_plane.poll_wait_seconds",
            cp.poll_wait_seconds,
            1,
            300,
        );
        check_positive(
            &mut problems,
            "control_plane.jwks_refresh_seconds",
            cp.jwks_refresh_seconds,
        );
        check_range(
            &mut problems,
            "control_plane.jwks_min_refetch_seconds",
            cp.jwks_min_refetch_seconds,
            1,
            3600,
        );
        if let Some(credential) = &cp.edge_credential {
            // Sent as a header value: visible ASCII only, never a header injection.
            let ok = !credential.is_empty()
                && credential.len() <= MAX_CREDENTIAL
                && credential.bytes().all(|b| b.is_ascii_graphic());
            if !ok {
                problems.push(Problem::EdgeCredential);
            }
        }
        if let Some(instance) = &cp.edge_instance
            && (instance.is_empty()
                || instance.len() > MAX_INSTANCE
                || !instance.bytes().all(is_instance_char))
        {
            problems.push(Problem::EdgeInstance);
        }
        check_range(
            &mut problems,
            "dpop_replay_buckets",
            raw.dpop_replay_buckets.into(),
            1,
            65_536,
        );
        check_range(
            &mut problems,
            "control_plane.retry_millis",
            cp.retry_millis,
            1,
            600_000,
        );
        // A heartbeat arrives at least every `wait` seconds; a bound below that would
        // flap between fresh and stale on a healthy feed.
        let min_bound = i64::try_from(cp.poll_wait_seconds)
            .unwrap_or(i64::MAX)
            .saturating_add(2);
        if raw.staleness_bound_seconds < min_bound {
            problems.push(Problem::StalenessBelowPollWait { min: min_bound });
        }
        if !(0..=3600).contains(&raw.leeway_seconds) {
            problems.push(Problem::Range {
                field: "leeway_seconds",
                min: 0,
                max: 3600,
            });
        }
        if !(1..=3600).contains(&raw.dpop_max_age_seconds) {
            problems.push(Problem::Range {
                field: "dpop_max_age_seconds",
                min: 1,
                max: 3600,
            });
        }
        let mut dpop_origins = Vec::new();
        for origin in &raw.dpop_origins {
            match parse_origin(origin) {
                Some(o) => dpop_origins.push(o),
                None => problems.push(Problem::DpopOrigin(origin.clone())),
            }
        }
        if raw.cache_max_entries == 0 {
            problems.push(Problem::NotPositive("cache_max_entries"));
        }
        if !(64..=1024 * 1024).contains(&raw.max_token_bytes) {
            problems.push(Problem::Range {
                field: "max_token_bytes",
                min: 64,
                max: 1024 * 1024,
            });
        }
        check_positive(&mut problems, "max_revocations", raw.max_revocations);
        let mut claim_headers = Vec::new();
        for (claim, header) in raw.claim_headers {
            let header = header.to_ascii_lowercase();
            if claim.is_empty() || claim.split('.').any(str::is_empty) {
                problems.push(Problem::ClaimPath(claim.clone()));
            }
            if !is_header_name(&header) || RESERVED_HEADERS.contains(&header.as_str()) {
                problems.push(Problem::ClaimHeader {
                    claim: claim.clone(),
                    header: header.clone(),
                });
            }
            claim_headers.push((claim, header));
        }
        for path in &raw.bypass_paths {
            if !path.starts_with('/') {
                problems.push(Problem::BypassPath(path.clone()));
            }
        }

        let issuers = match raw.issuer {
            None => Vec::new(),
            Some(OneOrMany::One(one)) => vec![one],
            Some(OneOrMany::Many(many)) => {
                if many.is_empty() {
                    problems.push(Problem::EmptyIssuerList);
                }
                many
            }
        };
        if issuers.iter().any(|i| i.trim().is_empty()) {
            problems.push(Problem::EmptyIssuer);
        }

        if !problems.is_empty() {
            return Err(ConfigError::Invalid(problems));
        }
        let authority = cp.authority.unwrap_or_else(|| cp.cluster.clone());
        Ok(Config {
            role: raw.role,
            validation: Validation {
                issuers,
                audience: raw.audience,
                leeway: raw.leeway_seconds,
            },
            limits: Limits {
                max_token_len: raw.max_token_bytes,
            },
            keys,
            control_plane: ControlPlane {
                cluster: cp.cluster,
                authority,
                feed_path: cp.feed_path,
                jwks_path: cp.jwks_path,
                poll_wait_seconds: cp.poll_wait_seconds,
                jwks_refresh_seconds: cp.jwks_refresh_seconds,
                retry_millis: cp.retry_millis,
                jwks_min_refetch_seconds: cp.jwks_min_refetch_seconds,
                edge_credential: cp.edge_credential,
                edge_instance: cp.edge_instance,
            },
            staleness_bound_seconds: raw.staleness_bound_seconds,
            on_stale: raw.on_stale,
            claim_headers,
            strip_authorization: raw.strip_authorization,
            bypass_paths: raw.bypass_paths,
            cors_preflight_bypass: raw.cors_preflight_bypass,
            cache_max_entries: raw.cache_max_entries,
            max_revocations: raw.max_revocations,
            dpop_max_age_seconds: raw.dpop_max_age_seconds,
            dpop_replay_buckets: raw.dpop_replay_buckets,
            dpop_origins,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpop_origins_are_http_origins_without_a_path() {
        assert_eq!(
            parse_origin("HTTPS://API.example:8443").as_deref(),
            Some("https://api.example:8443")
        );
        for bad in [
            "api.example",
            "https://",
            "https://a/b",
            "ftp://a",
            "https://a?b",
            "https://u@a",
        ] {
            assert_eq!(parse_origin(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_minimal_config_gets_the_documented_defaults() {
        let c = Config::parse(br#"{"control_plane":{"cluster":"cp"}}"#).unwrap();
        assert!(matches!(c.keys, KeySource::Fetched));
        assert_eq!(c.control_plane.authority, "cp");
        assert_eq!(c.control_plane.feed_path, "/v1/edge/revocations");
        assert_eq!(c.staleness_bound_seconds, 30);
        assert_eq!(c.on_stale, OnStale::Deny);
        assert!(c.cors_preflight_bypass);
        assert!(!c.strip_authorization);
        assert_eq!(c.control_plane.jwks_min_refetch_seconds, 1);
        assert_eq!(c.dpop_replay_buckets, 1024);
        assert_eq!(c.role, Role::Filter);
    }

    #[test]
    fn issuer_is_one_string_as_before_or_a_list_during_a_switch() {
        let with = |issuer: &str| {
            Config::parse(
                format!(r#"{{"issuer":{issuer},"control_plane":{{"cluster":"cp"}}}}"#).as_bytes(),
            )
        };
        assert_eq!(
            with(r#""pq-control-plane""#).unwrap().validation.issuers,
            ["pq-control-plane"]
        );
        assert_eq!(
            with(r#"["https://cp.example", "pq-control-plane"]"#)
                .unwrap()
                .validation
                .issuers,
            ["https://cp.example", "pq-control-plane"]
        );
        let none = Config::parse(br#"{"control_plane":{"cluster":"cp"}}"#).unwrap();
        assert!(none.validation.issuers.is_empty());
        for bad in [
            "[]",
            r#""""#,
            r#"["https://cp.example", ""]"#,
            "1",
            r#"{"a":1}"#,
        ] {
            assert!(with(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_poller_service_is_named_by_its_role() {
        let c = Config::parse(br#"{"role":"poller","control_plane":{"cluster":"cp"}}"#).unwrap();
        assert_eq!(c.role, Role::Poller);
        let err =
            Config::parse(br#"{"role":"leader","control_plane":{"cluster":"cp"}}"#).unwrap_err();
        assert!(matches!(err, ConfigError::Json(_)), "{err:?}");
        let err = err.to_string();
        assert!(
            err.starts_with("invalid edge-filter configuration: unknown variant `leader`"),
            "{err}"
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = Config::parse(
            br#"{"control_plane":{"cluster":"","poll_wait_seconds":20},
                 "staleness_bound_seconds":5,
                 "claim_headers":{"sub":"Authorization","scope":"bad header"},
                 "bypass_paths":["health"]}"#,
        )
        .unwrap_err();
        let ConfigError::Invalid(problems) = &err else {
            panic!("{err:?}");
        };
        assert_eq!(problems.len(), 5, "{problems:?}");
        assert_eq!(
            err.to_string(),
            "invalid edge-filter configuration: control_plane.cluster: must not be empty; \
             staleness_bound_seconds: must be at least poll_wait_seconds + 2 = 22; \
             claim_headers.scope: \"bad header\" is not an allowed header name; \
             claim_headers.sub: \"authorization\" is not an allowed header name; \
             bypass_paths: \"health\" must start with '/'"
        );
    }

    #[test]
    fn unknown_fields_and_bad_json_are_refused() {
        assert!(Config::parse(br#"{"control_plane":{"cluster":"cp"},"isuer":"x"}"#).is_err());
        assert!(Config::parse(b"not json").is_err());
        assert!(Config::parse(b"{}").is_err());
    }

    #[test]
    fn the_edge_credential_and_instance_are_optional_and_checked() {
        let c = Config::parse(br#"{"control_plane":{"cluster":"cp"}}"#).unwrap();
        assert_eq!(c.control_plane.edge_credential, None);
        assert_eq!(c.control_plane.edge_instance, None);
        let c = Config::parse(
            br#"{"control_plane":{"cluster":"cp","edge_credential":"ec_abc","edge_instance":"node-1"}}"#,
        )
        .unwrap();
        assert_eq!(c.control_plane.edge_credential.as_deref(), Some("ec_abc"));
        assert_eq!(c.control_plane.edge_instance.as_deref(), Some("node-1"));
        for bad in [
            r#"{"control_plane":{"cluster":"cp","edge_credential":""}}"#,
            r#"{"control_plane":{"cluster":"cp","edge_credential":"a b"}}"#,
            "{\"control_plane\":{\"cluster\":\"cp\",\"edge_credential\":\"a\\r\\nx: y\"}}",
            r#"{"control_plane":{"cluster":"cp","edge_instance":"a b"}}"#,
        ] {
            assert!(Config::parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_node_id_becomes_an_instance_name_the_control_plane_accepts() {
        assert_eq!(
            instance_from_node_id("sidecar~10.0.0.1~pod-1.ns~ns.svc.cluster.local").as_deref(),
            Some("sidecar~10.0.0.1~pod-1.ns~ns.svc.cluster.local")
        );
        assert_eq!(instance_from_node_id("a b\"c").as_deref(), Some("a_b_c"));
        assert_eq!(instance_from_node_id(""), None);
        assert_eq!(
            instance_from_node_id(&"x".repeat(500)).map(|s| s.len()),
            Some(MAX_INSTANCE)
        );
    }

    #[test]
    fn an_inline_jwks_must_hold_a_usable_key() {
        assert!(
            Config::parse(br#"{"control_plane":{"cluster":"cp"},"jwks":{"keys":[]}}"#).is_err()
        );
        assert!(
            Config::parse(br#"{"control_plane":{"cluster":"cp"},"jwks":{"keys":[{"kty":"OKP","crv":"Ed25519","x":"AAAA"}]}}"#)
                .is_err()
        );
    }
}
