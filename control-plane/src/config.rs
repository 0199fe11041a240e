//! Settings of a region, parsed from flags or `CP_*` environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;

use shared::Alg;

/// What every subcommand needs: where the data lives and how tokens look.
#[derive(Debug, Clone, clap::Args)]
pub struct SettingsArgs {
    /// Directory holding the SQLite database and the admin credential; created on first run.
    #[arg(long, env = "CP_DATA_DIR", default_value = "./data", global = true)]
    pub data_dir: PathBuf,
    /// `iss` of issued tokens and `issuer` of the RFC 8414 metadata: the `https` URL
    /// clients fetch `/.well-known/oauth-authorization-server` under (e.g.
    /// `https://cp-a.example`; `http` is for loopback and development). Default:
    /// `CP_PUBLIC_URL`, else `http://` and the listen address (`CP_LISTEN`, also read by
    /// the other subcommands; `localhost` and a warning when it is `0.0.0.0` or `::`).
    /// A value that is not a URL (`pq-control-plane`, the former default) still works,
    /// with a warning: standard OAuth clients cannot discover such an issuer.
    #[arg(long, env = "CP_ISSUER", global = true)]
    pub issuer: Option<String>,
    /// The base URL clients reach this control plane at (behind a proxy, the proxy's),
    /// e.g. `https://cp-a.example`: the issuer when `CP_ISSUER` is unset, and the start
    /// of every endpoint URL in the metadata.
    #[arg(long, env = "CP_PUBLIC_URL", global = true)]
    pub public_url: Option<String>,
    /// More `iss` values accepted when validating tokens, comma-separated, compared
    /// exactly: the former issuer during a switch (keep it one maximum token lifetime
    /// after the switch), and the other regions' issuers (each region has its own).
    #[arg(
        long,
        env = "CP_ACCEPTED_ISSUERS",
        value_delimiter = ',',
        global = true
    )]
    pub accepted_issuers: Vec<String>,
    /// `aud` of issued tokens, and the audience required when validating.
    #[arg(long, env = "CP_AUDIENCE", default_value = "pq-api", global = true)]
    pub audience: String,
    /// Algorithm that signs access tokens: `EdDSA` or `ML-DSA-65` (events are always ML-DSA-65).
    #[arg(long, env = "CP_SIGNING_ALG", default_value = "EdDSA", value_parser = parse_alg, global = true)]
    pub signing_alg: Alg,
    /// Name of this region, recorded as `origin` of its revocation events (`REGION` is
    /// read too when `CP_REGION` is unset).
    #[arg(long, env = "CP_REGION", default_value = "local", global = true)]
    pub region: String,
    /// Lifetime of a token when the request names none, in minutes.
    #[arg(
        long,
        env = "CP_DEFAULT_TOKEN_MINUTES",
        default_value_t = 15,
        global = true
    )]
    pub default_token_minutes: i64,
    /// Longest token lifetime a request may ask for, in minutes (at most
    /// `CP_FLEET_MAX_TOKEN_MINUTES`).
    #[arg(
        long,
        env = "CP_MAX_TOKEN_MINUTES",
        default_value_t = 1440,
        global = true
    )]
    pub max_token_minutes: i64,
    /// Longest token lifetime any region of the fleet may issue, in minutes: a revocation
    /// that cannot see the tokens it matches (by `sub`, `sid`, `kid`, or a `jti` this
    /// region did not issue) is kept this long plus the revocation leeway. Set the same
    /// value on every region, at least every region's `CP_MAX_TOKEN_MINUTES`. Default:
    /// the larger of 1440 and this region's `CP_MAX_TOKEN_MINUTES`.
    #[arg(long, env = "CP_FLEET_MAX_TOKEN_MINUTES", global = true)]
    pub fleet_max_token_minutes: Option<i64>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds (at most
    /// [`REVOCATION_LEEWAY_SECS`], the leeway every revocation covers).
    #[arg(long, env = "CP_LEEWAY_SECONDS", default_value_t = 30, global = true)]
    pub leeway_seconds: i64,
    /// After `keys rotate`, how long new keys are published in the JWKS before they sign,
    /// in seconds, so every edge knows a key before the first token it signs arrives.
    /// Keep it above the edges' `jwks_refresh_seconds`.
    #[arg(
        long,
        env = "CP_KEY_ACTIVATION_SECONDS",
        default_value_t = DEFAULT_KEY_ACTIVATION_SECONDS,
        global = true
    )]
    pub key_activation_seconds: i64,
    /// Redis of this region (e.g. `redis://cp-a:PASSWORD@127.0.0.1:6379/0`, or
    /// `rediss://` for TLS): revocations are cached there under `revoked:{kind}:{value}`
    /// for every service of the region. The user part names the region's ACL user and
    /// its password (percent-encoded). Unset: an in-memory cache.
    #[arg(long, env = "REDIS_URL", global = true)]
    pub redis_url: Option<String>,
    /// PEM file of the CA certificate(s) a `rediss://` Redis's certificate must chain to
    /// (a private CA). Unset: the system's roots. The host in `REDIS_URL` must be a name
    /// or address the certificate holds.
    #[arg(long, env = "CP_REDIS_CA_FILE", global = true)]
    pub redis_ca_file: Option<PathBuf>,
    /// Milliseconds a Redis operation may take before a check falls back to SQLite.
    #[arg(long, env = "CP_REDIS_TIMEOUT_MS", default_value_t = 50, global = true)]
    pub redis_timeout_ms: u64,
    /// Kafka bootstrap servers (e.g. `127.0.0.1:9092`): revocations are published to and
    /// consumed from the other regions through it. Unset: this region stands alone.
    #[arg(long, env = "KAFKA_BOOTSTRAP", global = true)]
    pub kafka_bootstrap: Option<String>,
    /// Topic of signed revocation events.
    #[arg(
        long,
        env = "CP_KAFKA_REVOCATIONS_TOPIC",
        default_value = "revocations",
        global = true
    )]
    pub kafka_revocations_topic: String,
    /// Topic of signed token lifecycle events.
    #[arg(
        long,
        env = "CP_KAFKA_TOKEN_EVENTS_TOPIC",
        default_value = "token-events",
        global = true
    )]
    pub kafka_token_events_topic: String,
    /// Consumer group of this region (default `cp-<region>`).
    #[arg(long, env = "CP_KAFKA_GROUP", global = true)]
    pub kafka_group: Option<String>,
    /// Longest time the broker may hold a fetch, in milliseconds (lower: faster
    /// cross-region delivery on brokers that do not answer a fetch early).
    #[arg(
        long,
        env = "CP_KAFKA_FETCH_WAIT_MS",
        default_value_t = 100,
        global = true
    )]
    pub kafka_fetch_wait_ms: u32,
    /// librdkafka properties for every Kafka client of the region (producer, consumer,
    /// admin), comma-separated `key=value`: the broker's own protection, e.g.
    /// `security.protocol=SASL_SSL,sasl.mechanism=SCRAM-SHA-512,sasl.username=cp-a,sasl.password=...,ssl.ca.location=/etc/kafka/ca.pem`.
    /// The properties the delivery guarantees rest on (`bootstrap.servers`, `group.id`,
    /// `acks`, `enable.idempotence`, `enable.auto.commit`, ...) are refused.
    #[arg(long, env = "CP_KAFKA_CLIENT_CONFIG", global = true)]
    pub kafka_client_config: Option<String>,
    /// The other regions' JWKS: comma-separated URLs or files, each best prefixed with
    /// the region it belongs to (`b=http://cp-b:8000/v1/region/jwks`). Their ML-DSA-65
    /// keys (and this region's own) are the only ones whose events this region applies,
    /// and each signs only events of its region (without a prefix: the region its JWKS
    /// names, if any).
    #[arg(long, env = "PEER_JWKS", global = true, value_delimiter = ',')]
    pub peer_jwks: Vec<String>,
    /// Milliseconds a revocation answer waits for the broker to take the event, so that
    /// `published` says whether it did (the revocation is committed either way).
    #[arg(long, env = "CP_PUBLISH_WAIT_MS", default_value_t = 200, global = true)]
    pub publish_wait_ms: u64,
    /// Lifetime of a refresh session (a refresh-token family) when
    /// `POST /token/refresh/create` names none, in days.
    #[arg(long, env = "CP_REFRESH_DAYS", default_value_t = 30, global = true)]
    pub refresh_days: i64,
}

/// The token signing algorithm: EdDSA (`Ed25519` is read as its other name; tokens still
/// say `EdDSA`) or ML-DSA-65. ES256 is for device keys only.
fn parse_alg(s: &str) -> Result<Alg, String> {
    match Alg::parse(s) {
        Ok(Alg::Es256) => Err(
            "ES256 is accepted for device keys, not for signing tokens (use EdDSA or ML-DSA-65)"
                .into(),
        ),
        Ok(alg) => Ok(alg),
        Err(e) => Err(format!("{e} (use EdDSA or ML-DSA-65)")),
    }
}

/// Flags of `serve` only.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the bound address is logged).
    #[arg(long, env = "CP_LISTEN", default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,
    /// Largest accepted request body, in bytes (larger ones get 413).
    #[arg(long, env = "CP_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,
    /// Longest delta the edge feed serves; a poller further behind gets a snapshot.
    #[arg(long, env = "CP_FEED_MAX_DELTA", default_value_t = 10_000)]
    pub feed_max_delta: u64,
    /// Most connections served at once. At the cap the longest-idle connection (one with
    /// no request in progress) is closed to admit a new one, so idle clients cannot lock
    /// out a revocation. Lowered at start to fit the open-files limit.
    #[arg(long, env = "CP_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// Most edge long polls held at once (more answer 503 with `Retry-After`); at most
    /// half of the connection cap.
    #[arg(long, env = "CP_MAX_LONG_POLLS", default_value_t = 1024)]
    pub max_long_polls: usize,
    /// Whether `GET /v1/edge/revocations` requires an edge credential
    /// (`Authorization: Bearer <credential>`, made by `control-plane edge-credential`):
    /// `off` (never checked), `warn` (default: a poll without one is served, counted in
    /// `cp_edge_polls_unauthenticated_total` and logged; a wrong or revoked one is 401)
    /// or `required` (401 without a valid one). Upgrade order: control planes, filter
    /// module, filter config with `edge_credential`, then `required`.
    #[arg(long, env = "CP_EDGE_CREDENTIALS", value_enum, default_value_t = EdgeCredentials::Warn)]
    pub edge_credentials: EdgeCredentials,
    /// Most feed requests one edge credential may have in progress at once (polls
    /// without a credential, in `warn` mode, share one such allowance), so one caller
    /// cannot take every long-poll slot. Default: half of `CP_MAX_LONG_POLLS`.
    #[arg(long, env = "CP_MAX_LONG_POLLS_PER_CREDENTIAL")]
    pub max_long_polls_per_credential: Option<usize>,
    /// Seconds a client has to send a request's headers once it starts one.
    #[arg(long, env = "CP_HEADER_TIMEOUT_SECONDS", default_value_t = 10)]
    pub header_timeout_seconds: u64,
    /// Seconds a client has to send a request's whole body once its headers are in; a
    /// slower body gets 400 and the connection is closed.
    #[arg(long, env = "CP_BODY_TIMEOUT_SECONDS", default_value_t = 10)]
    pub body_timeout_seconds: u64,
    /// A second address serving the same API with its own connection cap, for the
    /// operators and services that issue and revoke (like Hydra's admin port): traffic on
    /// `--listen` can never starve a revocation sent here. Keep it off the public network.
    #[arg(long, env = "CP_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// Most requests one client address may have in progress at once without the admin
    /// credential or a valid edge credential (from complete headers until the response is
    /// sent); more get 429 at once and their connection is closed. Edge feed polls are
    /// left to the feed's own caps. 0: no limit (behind a reverse proxy every client has
    /// its address).
    #[arg(long, env = "CP_MAX_UNAUTHENTICATED_PER_ADDRESS", default_value_t = 64)]
    pub max_unauthenticated_per_address: usize,
    /// Seconds a connection may stay open with no request in progress.
    #[arg(long, env = "CP_IDLE_TIMEOUT_SECONDS", default_value_t = 30)]
    pub idle_timeout_seconds: u64,
    /// Holder revocations (`/revoke/token`, `/oauth2/revoke` without the admin
    /// credential) a client address may make per minute (0: no limit).
    #[arg(long, env = "CP_HOLDER_REVOKES_PER_MINUTE", default_value_t = 60)]
    pub holder_revokes_per_minute: u32,
    /// Holder revocations per minute with the tokens of one subject (0: no limit).
    #[arg(long, env = "CP_SUBJECT_REVOKES_PER_MINUTE", default_value_t = 10)]
    pub subject_revokes_per_minute: u32,
    /// Whether `POST /oauth2/token` requires DPoP server nonces (RFC 9449 section 8):
    /// `true` (default) or `false`.
    #[arg(long, env = "CP_DPOP_NONCE", default_value_t = true,
        action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub dpop_nonce: bool,
}

/// Whether the edge feed asks for an edge credential (`CP_EDGE_CREDENTIALS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EdgeCredentials {
    /// Not checked at all.
    Off,
    /// A missing credential is served, counted and logged; a wrong one is refused.
    Warn,
    /// A valid credential is required.
    Required,
}

/// The clock leeway every revocation covers, in seconds: an entry lives until the tokens
/// it matches have expired plus this much, and the edge feed says so, so that no checker
/// (this control plane, `CP_LEEWAY_SECONDS`; an edge filter, its `leeway_seconds`,
/// clamped to what the feed says) accepts a token for longer than its revocation lives.
/// A constant, not a setting: entries made under one value must stay valid under the
/// next.
pub const REVOCATION_LEEWAY_SECS: i64 = 300;

/// `CP_KEY_ACTIVATION_SECONDS` by default: above the edge filter's default
/// `jwks_refresh_seconds` (300) with a margin for a slow fetch, so every edge holds a new
/// key before the first token or update it signs arrives.
pub const DEFAULT_KEY_ACTIVATION_SECONDS: i64 = 330;

/// `CP_FLEET_MAX_TOKEN_MINUTES` when unset and `CP_MAX_TOKEN_MINUTES` is lower.
pub const DEFAULT_FLEET_MAX_TOKEN_MINUTES: i64 = 24 * 60;

/// The settings the domain code reads (no clap types).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Data directory.
    pub data_dir: PathBuf,
    /// `iss` of issued tokens and the metadata's `issuer`.
    pub issuer: String,
    /// More `iss` values accepted when validating (a former issuer, the peers').
    pub accepted_issuers: Vec<String>,
    /// The base URL clients reach this control plane at, if set (`CP_PUBLIC_URL`).
    pub public_url: Option<String>,
    /// The issuer was derived from the listen address: `serve` derives it again from
    /// the bound address (port 0 picks one).
    pub issuer_from_listen: bool,
    /// Audience.
    pub audience: String,
    /// Token signing algorithm.
    pub signing_alg: Alg,
    /// Region name.
    pub region: String,
    /// Default token lifetime, seconds.
    pub default_token_secs: i64,
    /// Maximum token lifetime, seconds.
    pub max_token_secs: i64,
    /// Longest token lifetime any region of the fleet may issue, seconds (revocations
    /// that cannot see their tokens cover it).
    pub fleet_max_token_secs: i64,
    /// Clock leeway, seconds.
    pub leeway_secs: i64,
    /// Default refresh session lifetime, seconds.
    pub refresh_secs: i64,
    /// Request body limit, bytes.
    pub max_body_bytes: usize,
    /// Longest edge-feed delta.
    pub feed_max_delta: u64,
    /// Seconds new keys are published before they sign.
    pub key_activation_secs: i64,
    /// Connection cap.
    pub max_connections: usize,
    /// Cap on held long polls.
    pub max_long_polls: usize,
    /// Whether the edge feed asks for an edge credential.
    pub edge_credentials: EdgeCredentials,
    /// Cap on feed requests in progress per edge credential.
    pub max_long_polls_per_credential: usize,
    /// Header read timeout.
    pub header_timeout: std::time::Duration,
    /// Idle connection timeout.
    pub idle_timeout: std::time::Duration,
    /// Time allowed for a request body.
    pub body_timeout: std::time::Duration,
    /// Requests in progress per client address without a credential (0: no limit).
    pub max_unauthenticated_per_address: usize,
    /// Holder revocations per minute per client address.
    pub holder_revokes_per_minute_per_client: u32,
    /// Holder revocations per minute per subject.
    pub holder_revokes_per_minute_per_subject: u32,
    /// Redis URL, if any.
    pub redis_url: Option<String>,
    /// The CA a `rediss://` Redis's certificate is checked against, if not the system's.
    pub redis_ca_file: Option<PathBuf>,
    /// Redis operation timeout.
    pub redis_timeout: std::time::Duration,
    /// Kafka, if any.
    pub kafka: Option<KafkaSettings>,
    /// Peer JWKS sources.
    pub peer_jwks: Vec<String>,
    /// How long a revocation answer waits for the broker.
    pub publish_wait: std::time::Duration,
    /// DPoP proofs at `/oauth2/token` must carry a server nonce.
    pub dpop_nonce: bool,
}

impl Settings {
    /// Defaults for a data directory (what `serve` uses with no flags).
    pub fn new(data_dir: impl Into<PathBuf>) -> Settings {
        Settings {
            data_dir: data_dir.into(),
            issuer: "http://127.0.0.1:8000".into(),
            accepted_issuers: Vec::new(),
            public_url: None,
            issuer_from_listen: false,
            audience: "pq-api".into(),
            signing_alg: Alg::EdDsa,
            region: "local".into(),
            default_token_secs: 15 * 60,
            max_token_secs: 24 * 3600,
            fleet_max_token_secs: 24 * 3600,
            leeway_secs: 30,
            refresh_secs: 30 * 24 * 3600,
            max_body_bytes: 64 * 1024,
            feed_max_delta: 10_000,
            key_activation_secs: DEFAULT_KEY_ACTIVATION_SECONDS,
            max_connections: 4096,
            max_long_polls: 1024,
            edge_credentials: EdgeCredentials::Warn,
            max_long_polls_per_credential: 512,
            header_timeout: std::time::Duration::from_secs(10),
            idle_timeout: std::time::Duration::from_secs(30),
            body_timeout: std::time::Duration::from_secs(10),
            max_unauthenticated_per_address: 64,
            holder_revokes_per_minute_per_client: 60,
            holder_revokes_per_minute_per_subject: 10,
            redis_url: None,
            redis_ca_file: None,
            redis_timeout: std::time::Duration::from_millis(50),
            kafka: None,
            peer_jwks: Vec::new(),
            publish_wait: std::time::Duration::from_millis(200),
            dpop_nonce: true,
        }
    }

    /// Builds and checks settings from flags, reporting every problem at once.
    pub fn from_args(args: &SettingsArgs, serve: Option<&ServeArgs>) -> Result<Settings, String> {
        let mut problems = Vec::new();
        let public_url = args
            .public_url
            .as_deref()
            .map(|u| u.trim().trim_end_matches('/').to_owned());
        if let Some(url) = &public_url
            && !is_http_url(url)
        {
            problems.push(format!(
                "CP_PUBLIC_URL must be an http(s) URL without query or fragment, not {url:?}"
            ));
        }
        let (issuer, issuer_from_listen) = match (&args.issuer, &public_url) {
            (Some(issuer), _) => (issuer.trim().to_owned(), false),
            (None, Some(url)) => (url.clone(), false),
            (None, None) => {
                // `serve` knows its address; the other subcommands read the same variable.
                let listen = serve.map(|s| s.listen).unwrap_or_else(|| {
                    std::env::var("CP_LISTEN")
                        .ok()
                        .and_then(|l| l.parse().ok())
                        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8000)))
                });
                (issuer_for_listen(listen).0, true)
            }
        };
        if issuer.is_empty() {
            problems.push("CP_ISSUER must not be empty".to_owned());
        } else if looks_like_url(&issuer) && !is_http_url(&issuer) {
            problems.push(format!(
                "CP_ISSUER {issuer:?} must be an http(s) URL without query or fragment (RFC 8414)"
            ));
        }
        let accepted_issuers: Vec<String> = args
            .accepted_issuers
            .iter()
            .map(|i| i.trim().to_owned())
            .filter(|i| *i != issuer)
            .collect();
        if accepted_issuers.iter().any(String::is_empty) {
            problems.push("CP_ACCEPTED_ISSUERS must not hold an empty value".to_owned());
        }
        if args.audience.trim().is_empty() {
            problems.push("CP_AUDIENCE must not be empty".to_owned());
        }
        // `REGION` (the name the deployment files use) when `CP_REGION` and the flag are unset.
        let region = match std::env::var("REGION") {
            Ok(r) if std::env::var_os("CP_REGION").is_none() && args.region == "local" => r,
            _ => args.region.clone(),
        };
        if region.trim().is_empty() {
            problems.push("CP_REGION must not be empty".to_owned());
        }
        if args.max_token_minutes < 1 || args.max_token_minutes > 366 * 24 * 60 {
            problems.push("CP_MAX_TOKEN_MINUTES must be between 1 and 527040".to_owned());
        }
        if args.default_token_minutes < 1 || args.default_token_minutes > args.max_token_minutes {
            problems
                .push("CP_DEFAULT_TOKEN_MINUTES must be between 1 and CP_MAX_TOKEN_MINUTES".into());
        }
        if !(0..=REVOCATION_LEEWAY_SECS).contains(&args.leeway_seconds) {
            problems.push(format!(
                "CP_LEEWAY_SECONDS must be between 0 and {REVOCATION_LEEWAY_SECS} (the leeway revocations cover)"
            ));
        }
        let fleet_max_token_minutes = args
            .fleet_max_token_minutes
            .unwrap_or(args.max_token_minutes.max(DEFAULT_FLEET_MAX_TOKEN_MINUTES));
        if fleet_max_token_minutes < args.max_token_minutes
            || fleet_max_token_minutes > 366 * 24 * 60
        {
            problems.push(format!(
                "CP_FLEET_MAX_TOKEN_MINUTES ({fleet_max_token_minutes}) must be between CP_MAX_TOKEN_MINUTES ({}) and 527040: revocations must cover every token a region issues",
                args.max_token_minutes
            ));
        }
        if !(1..=MAX_REFRESH_DAYS).contains(&args.refresh_days) {
            problems.push(format!(
                "CP_REFRESH_DAYS must be between 1 and {}",
                MAX_REFRESH_DAYS
            ));
        }
        let mut settings = Settings::new(args.data_dir.clone());
        if let Some(serve) = serve {
            if serve.max_body_bytes < 1024 {
                problems.push("CP_MAX_BODY_BYTES must be at least 1024".to_owned());
            }
            if serve.feed_max_delta == 0 {
                problems.push("CP_FEED_MAX_DELTA must be at least 1".to_owned());
            }
            if serve.max_connections < 16 {
                problems.push("CP_MAX_CONNECTIONS must be at least 16".to_owned());
            }
            if serve.max_long_polls == 0 || serve.max_long_polls > serve.max_connections / 2 {
                problems.push(
                    "CP_MAX_LONG_POLLS must be between 1 and half of CP_MAX_CONNECTIONS".to_owned(),
                );
            }
            if !(1..=300).contains(&serve.header_timeout_seconds) {
                problems.push("CP_HEADER_TIMEOUT_SECONDS must be between 1 and 300".to_owned());
            }
            if !(1..=300).contains(&serve.body_timeout_seconds) {
                problems.push("CP_BODY_TIMEOUT_SECONDS must be between 1 and 300".to_owned());
            }
            if serve.admin_listen.is_some() && serve.admin_listen == Some(serve.listen) {
                problems.push("CP_ADMIN_LISTEN must differ from CP_LISTEN".to_owned());
            }
            if !(1..=3600).contains(&serve.idle_timeout_seconds) {
                problems.push("CP_IDLE_TIMEOUT_SECONDS must be between 1 and 3600".to_owned());
            }
            settings.max_body_bytes = serve.max_body_bytes;
            settings.feed_max_delta = serve.feed_max_delta;
            settings.max_connections = serve.max_connections;
            settings.max_long_polls = serve.max_long_polls;
            let per_credential = serve
                .max_long_polls_per_credential
                .unwrap_or(serve.max_long_polls.div_ceil(2));
            if per_credential == 0 || per_credential > serve.max_long_polls {
                problems.push(
                    "CP_MAX_LONG_POLLS_PER_CREDENTIAL must be between 1 and CP_MAX_LONG_POLLS"
                        .to_owned(),
                );
            }
            settings.edge_credentials = serve.edge_credentials;
            settings.max_long_polls_per_credential = per_credential;
            settings.header_timeout = std::time::Duration::from_secs(serve.header_timeout_seconds);
            settings.idle_timeout = std::time::Duration::from_secs(serve.idle_timeout_seconds);
            settings.body_timeout = std::time::Duration::from_secs(serve.body_timeout_seconds);
            settings.max_unauthenticated_per_address = serve.max_unauthenticated_per_address;
            settings.holder_revokes_per_minute_per_client = serve.holder_revokes_per_minute;
            settings.holder_revokes_per_minute_per_subject = serve.subject_revokes_per_minute;
            settings.dpop_nonce = serve.dpop_nonce;
        }
        // The URL and CA file themselves are checked when the client is made (at start,
        // `crate::backends::open`), so this module depends on no other of the crate.
        if args.redis_url.is_none() && args.redis_ca_file.is_some() {
            problems.push("CP_REDIS_CA_FILE is set but REDIS_URL is not".to_owned());
        }
        if !(1..=10_000).contains(&args.redis_timeout_ms) {
            problems.push("CP_REDIS_TIMEOUT_MS must be between 1 and 10000".to_owned());
        }
        if args
            .kafka_bootstrap
            .as_deref()
            .is_some_and(|b| b.trim().is_empty())
        {
            problems.push("KAFKA_BOOTSTRAP must not be empty when set".to_owned());
        }
        if !(1..=10_000).contains(&args.kafka_fetch_wait_ms) {
            problems.push("CP_KAFKA_FETCH_WAIT_MS must be between 1 and 10000".to_owned());
        }
        let kafka_client =
            match parse_client_config(args.kafka_client_config.as_deref().unwrap_or("")) {
                Ok(pairs) => pairs,
                Err(found) => {
                    problems.extend(found);
                    Vec::new()
                }
            };
        if args.publish_wait_ms > 10_000 {
            problems.push("CP_PUBLISH_WAIT_MS must be at most 10000".to_owned());
        }
        let peer_jwks = match parse_sources(&args.peer_jwks.join(",")) {
            Ok(sources) => sources,
            Err(found) => {
                problems.extend(found);
                Vec::new()
            }
        };
        if !peer_jwks.is_empty() && args.kafka_bootstrap.is_none() {
            problems.push("PEER_JWKS needs KAFKA_BOOTSTRAP (peers' events come through it)".into());
        }
        if !(0..=86_400).contains(&args.key_activation_seconds) {
            problems.push("CP_KEY_ACTIVATION_SECONDS must be between 0 and 86400".to_owned());
        }
        if !problems.is_empty() {
            return Err(problems.join("\n"));
        }
        settings.issuer = issuer;
        settings.accepted_issuers = accepted_issuers;
        settings.public_url = public_url;
        settings.issuer_from_listen = issuer_from_listen;
        settings.audience = args.audience.clone();
        settings.signing_alg = args.signing_alg;
        settings.region = region.clone();
        settings.default_token_secs = args.default_token_minutes * 60;
        settings.max_token_secs = args.max_token_minutes * 60;
        settings.fleet_max_token_secs = fleet_max_token_minutes * 60;
        settings.leeway_secs = args.leeway_seconds;
        settings.refresh_secs = args.refresh_days * 24 * 3600;
        settings.key_activation_secs = args.key_activation_seconds;
        settings.redis_url = args.redis_url.clone();
        settings.redis_ca_file = args.redis_ca_file.clone();
        settings.redis_timeout = std::time::Duration::from_millis(args.redis_timeout_ms);
        settings.kafka = args
            .kafka_bootstrap
            .as_ref()
            .map(|bootstrap| KafkaSettings {
                bootstrap: bootstrap.clone(),
                revocations_topic: args.kafka_revocations_topic.clone(),
                token_events_topic: args.kafka_token_events_topic.clone(),
                group: args
                    .kafka_group
                    .clone()
                    .unwrap_or_else(|| format!("cp-{region}")),
                fetch_wait_ms: args.kafka_fetch_wait_ms,
                client: kafka_client,
            });
        settings.peer_jwks = peer_jwks;
        settings.publish_wait = std::time::Duration::from_millis(args.publish_wait_ms);
        Ok(settings)
    }

    /// Derives the issuer again from the address `serve` bound, when it came from the
    /// listen address; returns a warning when that address is no concrete host.
    pub fn settle_issuer(&mut self, bound: SocketAddr) -> Option<String> {
        if !self.issuer_from_listen {
            return None;
        }
        let (issuer, warning) = issuer_for_listen(bound);
        self.accepted_issuers.retain(|i| *i != issuer);
        self.issuer = issuer;
        warning
    }

    /// What is wrong with the issuer from RFC 8414's point of view, for the start-up log:
    /// not a URL (standard clients cannot discover it), or `http` off loopback.
    pub fn issuer_warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if !looks_like_url(&self.issuer) {
            warnings.push(format!(
                "the issuer {:?} is not a URL: RFC 8414 clients cannot discover it; set \
                 CP_PUBLIC_URL (or CP_ISSUER) to the https URL clients reach, switching as \
                 docs/operations.md describes",
                self.issuer
            ));
        } else if !self.issuer.starts_with("https://") && !is_loopback_url(&self.issuer) {
            warnings.push(format!(
                "the issuer {} is http off loopback: RFC 8414 requires https; set \
                 CP_PUBLIC_URL to the https URL of the TLS proxy in front",
                self.issuer
            ));
        }
        warnings
    }

    /// Every `iss` accepted when validating: the issuer, then the accepted ones.
    pub fn issuers(&self) -> Vec<String> {
        std::iter::once(self.issuer.clone())
            .chain(self.accepted_issuers.iter().cloned())
            .collect()
    }

    /// The rules a token of this region must satisfy.
    pub fn validation(&self) -> shared::Validation {
        shared::Validation {
            issuers: self.issuers(),
            audience: Some(self.audience.clone()),
            leeway: self.leeway_secs,
        }
    }
}

/// `http://` and the listen address, or `http://localhost:PORT` and a warning when the
/// address is `0.0.0.0` or `::` (no host a client could name).
pub fn issuer_for_listen(listen: SocketAddr) -> (String, Option<String>) {
    if listen.ip().is_unspecified() {
        let issuer = format!("http://localhost:{}", listen.port());
        let warning = format!(
            "listening on {listen} with neither CP_PUBLIC_URL nor CP_ISSUER set: tokens say \
             iss {issuer}, which clients elsewhere cannot match; set CP_PUBLIC_URL to the \
             URL clients reach"
        );
        (issuer, Some(warning))
    } else {
        (format!("http://{listen}"), None)
    }
}

/// True for a value meant as a URL (it names a scheme).
fn looks_like_url(value: &str) -> bool {
    value.contains("://")
}

/// True for an absolute `http`/`https` URL with a host and no query or fragment.
fn is_http_url(value: &str) -> bool {
    reqwest::Url::parse(value).is_ok_and(|u| {
        matches!(u.scheme(), "http" | "https")
            && u.host_str().is_some_and(|h| !h.is_empty())
            && u.query().is_none()
            && u.fragment().is_none()
            && u.username().is_empty()
            && u.password().is_none()
    }) && !value.contains(['?', '#'])
}

/// True when the URL's host is `localhost` or a loopback address.
fn is_loopback_url(value: &str) -> bool {
    reqwest::Url::parse(value).is_ok_and(|u| {
        u.host_str().is_some_and(|host| {
            host.eq_ignore_ascii_case("localhost")
                || host
                    .trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        })
    })
}

/// Longest a refresh session may last, in days (`CP_REFRESH_DAYS` and each session's
/// `expires_days`).
pub const MAX_REFRESH_DAYS: i64 = 365;

/// Settings of the Kafka bus and consumer.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// `bootstrap.servers`.
    pub bootstrap: String,
    /// Topic of revocation events.
    pub revocations_topic: String,
    /// Topic of token lifecycle events.
    pub token_events_topic: String,
    /// Consumer group of this region.
    pub group: String,
    /// `fetch.wait.max.ms` of the consumer (the broker may hold a fetch this long).
    pub fetch_wait_ms: u32,
    /// Extra librdkafka properties for every client (`CP_KAFKA_CLIENT_CONFIG`): SASL,
    /// TLS, client id.
    pub client: Vec<(String, String)>,
}

/// Properties `CP_KAFKA_CLIENT_CONFIG` may not set: the region's delivery guarantees
/// (ordered, idempotent, acknowledged by every replica, committed after applying) rest
/// on them.
const RESERVED_PROPERTIES: [&str; 9] = [
    "bootstrap.servers",
    "metadata.broker.list",
    "group.id",
    "acks",
    "request.required.acks",
    "enable.idempotence",
    "enable.auto.commit",
    "auto.offset.reset",
    "enable.auto.offset.store",
];

/// Parses `CP_KAFKA_CLIENT_CONFIG`: comma-separated `key=value` librdkafka properties.
/// Every problem is reported (a missing `=`, an empty key, a reserved property).
pub(crate) fn parse_client_config(list: &str) -> Result<Vec<(String, String)>, Vec<String>> {
    let mut pairs = Vec::new();
    let mut problems = Vec::new();
    for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let Some((key, value)) = item.split_once('=') else {
            problems.push(format!(
                "CP_KAFKA_CLIENT_CONFIG: {:?} is not key=value",
                item.split('=').next().unwrap_or(item)
            ));
            continue;
        };
        let key = key.trim();
        if key.is_empty() {
            problems.push("CP_KAFKA_CLIENT_CONFIG: an empty property name".to_owned());
        } else if RESERVED_PROPERTIES.contains(&key.to_ascii_lowercase().as_str()) {
            problems.push(format!(
                "CP_KAFKA_CLIENT_CONFIG may not set {key}: the delivery guarantees rest on it"
            ));
        } else {
            pairs.push((key.to_owned(), value.trim().to_owned()));
        }
    }
    if problems.is_empty() {
        Ok(pairs)
    } else {
        Err(problems)
    }
}

/// Splits a `PEER_JWKS` entry into the region it names (`REGION=`), if any, and where
/// its keys are.
pub(crate) fn named(entry: &str) -> (Option<&str>, &str) {
    match entry.split_once('=') {
        Some((region, rest))
            if !region.is_empty()
                && region.len() <= 64
                && region
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) =>
        {
            (Some(region), rest)
        }
        _ => (None, entry),
    }
}

/// Parses `PEER_JWKS`: comma-separated `http(s)://` URLs or file paths, each optionally
/// prefixed `REGION=` to bind its keys to that region. Returns every problem at once.
pub(crate) fn parse_sources(list: &str) -> Result<Vec<String>, Vec<String>> {
    let mut sources = Vec::new();
    let mut problems = Vec::new();
    for entry in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (region, item) = named(entry);
        let keep = |sources: &mut Vec<String>| {
            sources.push(match region {
                Some(r) => format!("{r}={item}"),
                None => item.to_owned(),
            });
        };
        if item.starts_with("http://") || item.starts_with("https://") {
            match reqwest::Url::parse(item) {
                Ok(_) => keep(&mut sources),
                Err(e) => problems.push(format!("PEER_JWKS: {item:?} is not a valid URL: {e}")),
            }
        } else if item.contains("://") {
            problems.push(format!(
                "PEER_JWKS: {item:?}: only http(s) URLs and file paths are supported"
            ));
        } else if std::path::Path::new(item).is_file() {
            keep(&mut sources);
        } else {
            problems.push(format!(
                "PEER_JWKS: {item:?} is neither a URL nor a readable file"
            ));
        }
    }
    if problems.is_empty() {
        Ok(sources)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod client_config_tests {
    use super::parse_client_config;

    #[test]
    fn kafka_client_properties_pass_through_but_never_the_guarantees() {
        let pairs = parse_client_config(
            " security.protocol=SASL_SSL, sasl.mechanism=SCRAM-SHA-512,sasl.password=a=b ",
        )
        .unwrap();
        assert_eq!(pairs.len(), 3);
        assert_eq!(pairs[2], ("sasl.password".to_owned(), "a=b".to_owned()));
        assert!(parse_client_config("").unwrap().is_empty());
        let problems =
            parse_client_config("acks=1,Enable.Idempotence=false,nonsense,=x").unwrap_err();
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems[0].contains("acks"), "{problems:?}");
        // A password never appears in an error.
        let problems = parse_client_config("sasl.password").unwrap_err();
        assert!(problems[0].contains("sasl.password"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(args: &[&str]) -> Result<Settings, String> {
        use clap::Parser as _;
        let cli =
            crate::cli::Cli::try_parse_from(["control-plane"].iter().chain(args).chain(&["serve"]))
                .map_err(|e| e.to_string())?;
        let crate::cli::Command::Serve(serve) = &cli.command else {
            unreachable!("parsed serve");
        };
        Settings::from_args(&cli.settings, Some(serve))
    }

    fn serve_on(listen: &str, args: &[&str]) -> Result<Settings, String> {
        use clap::Parser as _;
        let cli = crate::cli::Cli::try_parse_from(
            ["control-plane"]
                .iter()
                .chain(args)
                .chain(&["serve", "--listen", listen]),
        )
        .map_err(|e| e.to_string())?;
        let crate::cli::Command::Serve(serve) = &cli.command else {
            unreachable!("parsed serve");
        };
        Settings::from_args(&cli.settings, Some(serve))
    }

    #[test]
    fn the_issuer_is_the_public_url_else_the_concrete_listen_address() {
        let s = serve_on("127.0.0.1:9000", &[]).unwrap();
        assert_eq!(s.issuer, "http://127.0.0.1:9000");
        assert!(s.issuer_from_listen && s.issuer_warnings().is_empty());
        let s = serve_on("[::1]:9000", &[]).unwrap();
        assert_eq!(s.issuer, "http://[::1]:9000");
        assert!(s.issuer_warnings().is_empty(), "http on loopback is fine");
        // Port 0: the bound port, once known.
        let mut s = serve_on("127.0.0.1:0", &[]).unwrap();
        assert_eq!(s.settle_issuer("127.0.0.1:41234".parse().unwrap()), None);
        assert_eq!(s.issuer, "http://127.0.0.1:41234");
        let mut s = serve_on("0.0.0.0:8000", &[]).unwrap();
        let warning = s.settle_issuer("0.0.0.0:8000".parse().unwrap()).unwrap();
        assert!(warning.contains("CP_PUBLIC_URL"), "{warning}");
        assert_eq!(s.issuer, "http://localhost:8000");

        let s = serve_on("0.0.0.0:8000", &["--public-url", "https://cp-a.example/"]).unwrap();
        assert_eq!(s.issuer, "https://cp-a.example");
        assert_eq!(s.public_url.as_deref(), Some("https://cp-a.example"));
        let mut settled = s.clone();
        assert_eq!(settled.settle_issuer("0.0.0.0:8000".parse().unwrap()), None);
        assert_eq!(settled.issuer, "https://cp-a.example", "never derived");
        assert!(s.issuer_warnings().is_empty());
        // CP_ISSUER wins over CP_PUBLIC_URL (which still starts the endpoint URLs).
        let s = settings(&[
            "--issuer",
            "https://auth.example",
            "--public-url",
            "https://cp-a.example",
        ])
        .unwrap();
        assert_eq!(s.issuer, "https://auth.example");
    }

    #[test]
    fn a_legacy_issuer_still_works_with_a_warning_and_bad_urls_are_refused() {
        let s = settings(&["--issuer", "pq-control-plane"]).unwrap();
        assert_eq!(s.issuer, "pq-control-plane");
        assert!(s.issuer_warnings()[0].contains("not a URL"));
        let s = settings(&["--issuer", "http://10.0.0.5:8000"]).unwrap();
        assert!(s.issuer_warnings()[0].contains("requires https"));
        for bad in [
            vec!["--issuer", "https://cp.example/?tenant=1"],
            vec!["--issuer", "https://cp.example/#x"],
            vec!["--issuer", "ftp://cp.example"],
            vec!["--issuer", " "],
            vec!["--public-url", "cp.example"],
            vec!["--public-url", "https://u:p@cp.example"],
            vec!["--accepted-issuers", "pq-control-plane,,https://b.example"],
        ] {
            assert!(settings(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn accepted_issuers_are_validated_beside_the_issuer() {
        let s = settings(&[
            "--issuer",
            "https://cp-a.example",
            "--accepted-issuers",
            "pq-control-plane, https://cp-b.example,https://cp-a.example",
        ])
        .unwrap();
        assert_eq!(
            s.validation().issuers,
            [
                "https://cp-a.example",
                "pq-control-plane",
                "https://cp-b.example"
            ]
        );
    }

    #[test]
    fn tokens_are_signed_with_eddsa_or_ml_dsa_never_es256() {
        assert_eq!(parse_alg("EdDSA"), Ok(Alg::EdDsa));
        assert_eq!(parse_alg("Ed25519"), Ok(Alg::EdDsa));
        assert_eq!(parse_alg("ML-DSA-65"), Ok(Alg::MlDsa65));
        assert!(parse_alg("ES256").unwrap_err().contains("device keys"));
        assert!(parse_alg("RS256").is_err());
    }
}
