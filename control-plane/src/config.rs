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
    /// The other replicas of this region: comma-separated base URLs of their public API
    /// (`http://cp-a-2:8000`). A refresh or session revocation whose session this replica
    /// does not hold is passed to them, so a client may send it to any replica. They
    /// must share this replica's `admin.secret` and `dpop-nonce.secret`.
    #[arg(long, env = "CP_REPLICA_URLS", global = true, value_delimiter = ',')]
    pub replica_urls: Vec<String>,
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
fn parse_alg(s: &str) -> Result<Alg, ConfigError> {
    match Alg::parse(s) {
        Ok(Alg::Es256) => Err(ConfigError::Es256SignsNoTokens),
        Ok(alg) => Ok(alg),
        Err(e) => Err(ConfigError::UnknownAlg(e)),
    }
}

/// Longest token lifetime any setting may name, in minutes (366 days).
const MAX_TOKEN_MINUTES: i64 = 366 * 24 * 60;

/// One thing wrong with the settings, said the way the operator sets it (the variable).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `CP_SIGNING_ALG` is ES256, which only device keys use.
    #[error("ES256 is accepted for device keys, not for signing tokens (use EdDSA or ML-DSA-65)")]
    Es256SignsNoTokens,
    /// `CP_SIGNING_ALG` names no algorithm this project implements.
    #[error("{0} (use EdDSA or ML-DSA-65)")]
    UnknownAlg(shared::JoseError),
    /// `CP_PUBLIC_URL` is not an `http(s)` URL with a host and nothing after the path.
    #[error("CP_PUBLIC_URL must be an http(s) URL without query or fragment, not {0:?}")]
    PublicUrl(String),
    /// An item of `CP_REPLICA_URLS` is not an `http(s)` base URL.
    #[error("CP_REPLICA_URLS: {0:?} must be an http(s) URL without query or fragment")]
    ReplicaUrl(String),
    /// `CP_ISSUER` is blank.
    #[error("CP_ISSUER must not be empty")]
    EmptyIssuer,
    /// `CP_ISSUER` names a scheme but is no URL RFC 8414 allows as an issuer.
    #[error("CP_ISSUER {0:?} must be an http(s) URL without query or fragment (RFC 8414)")]
    IssuerUrl(String),
    /// `CP_ACCEPTED_ISSUERS` holds a blank item.
    #[error("CP_ACCEPTED_ISSUERS must not hold an empty value")]
    EmptyAcceptedIssuer,
    /// A variable that needs a value is blank (`CP_AUDIENCE`, `CP_REGION`).
    #[error("{0} must not be empty")]
    Empty(&'static str),
    /// `KAFKA_BOOTSTRAP` is set but blank.
    #[error("KAFKA_BOOTSTRAP must not be empty when set")]
    EmptyKafkaBootstrap,
    /// A number outside its fixed range.
    #[error("{var} must be between {min} and {max}")]
    Between {
        /// The variable.
        var: &'static str,
        /// Least value allowed.
        min: i64,
        /// Largest value allowed.
        max: i64,
    },
    /// A number under its least value.
    #[error("{var} must be at least {min}")]
    AtLeast {
        /// The variable.
        var: &'static str,
        /// Least value allowed.
        min: i64,
    },
    /// A number over its largest value.
    #[error("{var} must be at most {max}")]
    AtMost {
        /// The variable.
        var: &'static str,
        /// Largest value allowed.
        max: i64,
    },
    /// `CP_DEFAULT_TOKEN_MINUTES` is below 1 or above `CP_MAX_TOKEN_MINUTES`.
    #[error("CP_DEFAULT_TOKEN_MINUTES must be between 1 and CP_MAX_TOKEN_MINUTES")]
    DefaultTokenAboveMax,
    /// `CP_LEEWAY_SECONDS` is negative or longer than every revocation lives past its
    /// tokens.
    #[error(
        "CP_LEEWAY_SECONDS must be between 0 and {max} (the leeway revocations cover)",
        max = REVOCATION_LEEWAY_SECS
    )]
    LeewayBeyondRevocations,
    /// `CP_FLEET_MAX_TOKEN_MINUTES` is below this region's maximum (its revocations would
    /// not cover the tokens it issues) or above the longest lifetime.
    #[error(
        "CP_FLEET_MAX_TOKEN_MINUTES ({fleet}) must be between CP_MAX_TOKEN_MINUTES ({region}) and {max}: revocations must cover every token a region issues",
        max = MAX_TOKEN_MINUTES
    )]
    FleetMaxBelowRegionMax {
        /// `CP_FLEET_MAX_TOKEN_MINUTES`, or its default.
        fleet: i64,
        /// `CP_MAX_TOKEN_MINUTES`.
        region: i64,
    },
    /// `CP_MAX_LONG_POLLS` is 0 or would leave less than half the connections to requests.
    #[error("CP_MAX_LONG_POLLS must be between 1 and half of CP_MAX_CONNECTIONS")]
    LongPollsOverHalfTheConnections,
    /// `CP_MAX_LONG_POLLS_PER_CREDENTIAL` is 0 or above `CP_MAX_LONG_POLLS`.
    #[error("CP_MAX_LONG_POLLS_PER_CREDENTIAL must be between 1 and CP_MAX_LONG_POLLS")]
    LongPollsPerCredentialOverLongPolls,
    /// `CP_ADMIN_LISTEN` is the same address as `CP_LISTEN`.
    #[error("CP_ADMIN_LISTEN must differ from CP_LISTEN")]
    AdminListenIsListen,
    /// `CP_REDIS_CA_FILE` is set with no Redis to check.
    #[error("CP_REDIS_CA_FILE is set but REDIS_URL is not")]
    RedisCaWithoutUrl,
    /// An item of `CP_KAFKA_CLIENT_CONFIG` has no `=` (the item is shown: it holds no
    /// value, so never a password).
    #[error("CP_KAFKA_CLIENT_CONFIG: {0:?} is not key=value")]
    KafkaClientNotKeyValue(String),
    /// An item of `CP_KAFKA_CLIENT_CONFIG` starts with `=`.
    #[error("CP_KAFKA_CLIENT_CONFIG: an empty property name")]
    KafkaClientEmptyName,
    /// `CP_KAFKA_CLIENT_CONFIG` sets a property the delivery guarantees rest on.
    #[error("CP_KAFKA_CLIENT_CONFIG may not set {0}: the delivery guarantees rest on it")]
    KafkaClientReserved(String),
    /// An `http(s)` item of `PEER_JWKS` does not parse as a URL.
    #[error("PEER_JWKS: {item:?} is not a valid URL: {reason}")]
    PeerJwksUrl {
        /// The item, without its region.
        item: String,
        /// The URL parser's explanation.
        reason: String,
    },
    /// An item of `PEER_JWKS` names a scheme other than `http(s)`.
    #[error("PEER_JWKS: {0:?}: only http(s) URLs and file paths are supported")]
    PeerJwksScheme(String),
    /// An item of `PEER_JWKS` is no URL and no file that exists.
    #[error("PEER_JWKS: {0:?} is neither a URL nor a readable file")]
    PeerJwksMissing(String),
    /// `PEER_JWKS` is set on a region with no broker to receive the peers' events.
    #[error("PEER_JWKS needs KAFKA_BOOTSTRAP (peers' events come through it)")]
    PeerJwksWithoutKafka,
    /// A `PEER_JWKS` source is bound to this region's own name (a replica), and the
    /// consumer group is the region's default: replicas sharing a group would split the
    /// topic's partitions between them, and each would miss the other's share.
    #[error(
        "PEER_JWKS binds {0:?} to this region's name (a replica): each replica needs its own \
         consumer group, set CP_KAFKA_GROUP (e.g. cp-{1}-1, cp-{1}-2)"
    )]
    ReplicaWithoutOwnGroup(String, String),
}

impl ConfigError {
    fn between(var: &'static str, min: i64, max: i64) -> ConfigError {
        ConfigError::Between { var, min, max }
    }

    fn at_least(var: &'static str, min: i64) -> ConfigError {
        ConfigError::AtLeast { var, min }
    }
}

/// Every problem [`Settings::from_args`] found, one line each: an operator fixes them in
/// one go rather than one start at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

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
    /// Base URLs of the region's other replicas (no trailing slash).
    pub replica_urls: Vec<String>,
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
            replica_urls: Vec::new(),
            publish_wait: std::time::Duration::from_millis(200),
            dpop_nonce: true,
        }
    }

    /// Builds and checks settings from flags, reporting every problem at once.
    pub fn from_args(
        args: &SettingsArgs,
        serve: Option<&ServeArgs>,
    ) -> Result<Settings, ConfigErrors> {
        let mut problems = Vec::new();
        let public_url = args
            .public_url
            .as_deref()
            .map(|u| u.trim().trim_end_matches('/').to_owned());
        if let Some(url) = &public_url
            && !is_http_url(url)
        {
            problems.push(ConfigError::PublicUrl(url.clone()));
        }
        let mut replica_urls = Vec::new();
        for url in args
            .replica_urls
            .iter()
            .map(|u| u.trim().trim_end_matches('/'))
        {
            if url.is_empty() {
                continue;
            }
            if is_http_url(url) {
                replica_urls.push(url.to_owned());
            } else {
                problems.push(ConfigError::ReplicaUrl(url.to_owned()));
            }
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
            problems.push(ConfigError::EmptyIssuer);
        } else if looks_like_url(&issuer) && !is_http_url(&issuer) {
            problems.push(ConfigError::IssuerUrl(issuer.clone()));
        }
        let accepted_issuers: Vec<String> = args
            .accepted_issuers
            .iter()
            .map(|i| i.trim().to_owned())
            .filter(|i| *i != issuer)
            .collect();
        if accepted_issuers.iter().any(String::is_empty) {
            problems.push(ConfigError::EmptyAcceptedIssuer);
        }
        if args.audience.trim().is_empty() {
            problems.push(ConfigError::Empty("CP_AUDIENCE"));
        }
        // `REGION` (the name the deployment files use) when `CP_REGION` and the flag are unset.
        let region = match std::env::var("REGION") {
            Ok(r) if std::env::var_os("CP_REGION").is_none() && args.region == "local" => r,
            _ => args.region.clone(),
        };
        if region.trim().is_empty() {
            problems.push(ConfigError::Empty("CP_REGION"));
        }
        if args.max_token_minutes < 1 || args.max_token_minutes > MAX_TOKEN_MINUTES {
            problems.push(ConfigError::between(
                "CP_MAX_TOKEN_MINUTES",
                1,
                MAX_TOKEN_MINUTES,
            ));
        }
        if args.default_token_minutes < 1 || args.default_token_minutes > args.max_token_minutes {
            problems.push(ConfigError::DefaultTokenAboveMax);
        }
        if !(0..=REVOCATION_LEEWAY_SECS).contains(&args.leeway_seconds) {
            problems.push(ConfigError::LeewayBeyondRevocations);
        }
        let fleet_max_token_minutes = args
            .fleet_max_token_minutes
            .unwrap_or(args.max_token_minutes.max(DEFAULT_FLEET_MAX_TOKEN_MINUTES));
        if fleet_max_token_minutes < args.max_token_minutes
            || fleet_max_token_minutes > MAX_TOKEN_MINUTES
        {
            problems.push(ConfigError::FleetMaxBelowRegionMax {
                fleet: fleet_max_token_minutes,
                region: args.max_token_minutes,
            });
        }
        if !(1..=MAX_REFRESH_DAYS).contains(&args.refresh_days) {
            problems.push(ConfigError::between("CP_REFRESH_DAYS", 1, MAX_REFRESH_DAYS));
        }
        let mut settings = Settings::new(args.data_dir.clone());
        if let Some(serve) = serve {
            if serve.max_body_bytes < 1024 {
                problems.push(ConfigError::at_least("CP_MAX_BODY_BYTES", 1024));
            }
            if serve.feed_max_delta == 0 {
                problems.push(ConfigError::at_least("CP_FEED_MAX_DELTA", 1));
            }
            if serve.max_connections < 16 {
                problems.push(ConfigError::at_least("CP_MAX_CONNECTIONS", 16));
            }
            if serve.max_long_polls == 0 || serve.max_long_polls > serve.max_connections / 2 {
                problems.push(ConfigError::LongPollsOverHalfTheConnections);
            }
            if !(1..=300).contains(&serve.header_timeout_seconds) {
                problems.push(ConfigError::between("CP_HEADER_TIMEOUT_SECONDS", 1, 300));
            }
            if !(1..=300).contains(&serve.body_timeout_seconds) {
                problems.push(ConfigError::between("CP_BODY_TIMEOUT_SECONDS", 1, 300));
            }
            if serve.admin_listen.is_some() && serve.admin_listen == Some(serve.listen) {
                problems.push(ConfigError::AdminListenIsListen);
            }
            if !(1..=3600).contains(&serve.idle_timeout_seconds) {
                problems.push(ConfigError::between("CP_IDLE_TIMEOUT_SECONDS", 1, 3600));
            }
            settings.max_body_bytes = serve.max_body_bytes;
            settings.feed_max_delta = serve.feed_max_delta;
            settings.max_connections = serve.max_connections;
            settings.max_long_polls = serve.max_long_polls;
            let per_credential = serve
                .max_long_polls_per_credential
                .unwrap_or(serve.max_long_polls.div_ceil(2));
            if per_credential == 0 || per_credential > serve.max_long_polls {
                problems.push(ConfigError::LongPollsPerCredentialOverLongPolls);
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
            problems.push(ConfigError::RedisCaWithoutUrl);
        }
        if !(1..=10_000).contains(&args.redis_timeout_ms) {
            problems.push(ConfigError::between("CP_REDIS_TIMEOUT_MS", 1, 10_000));
        }
        if args
            .kafka_bootstrap
            .as_deref()
            .is_some_and(|b| b.trim().is_empty())
        {
            problems.push(ConfigError::EmptyKafkaBootstrap);
        }
        if !(1..=10_000).contains(&args.kafka_fetch_wait_ms) {
            problems.push(ConfigError::between("CP_KAFKA_FETCH_WAIT_MS", 1, 10_000));
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
            problems.push(ConfigError::AtMost {
                var: "CP_PUBLISH_WAIT_MS",
                max: 10_000,
            });
        }
        let peer_jwks = match parse_sources(&args.peer_jwks.join(",")) {
            Ok(sources) => sources,
            Err(found) => {
                problems.extend(found);
                Vec::new()
            }
        };
        if !peer_jwks.is_empty() && args.kafka_bootstrap.is_none() {
            problems.push(ConfigError::PeerJwksWithoutKafka);
        }
        if args.kafka_group.is_none()
            && let Some(replica) = peer_jwks
                .iter()
                .find(|s| named(s).0 == Some(region.as_str()))
        {
            problems.push(ConfigError::ReplicaWithoutOwnGroup(
                named(replica).1.to_owned(),
                region.clone(),
            ));
        }
        if !(0..=86_400).contains(&args.key_activation_seconds) {
            problems.push(ConfigError::between("CP_KEY_ACTIVATION_SECONDS", 0, 86_400));
        }
        if !problems.is_empty() {
            return Err(ConfigErrors(problems));
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
        settings.replica_urls = replica_urls;
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
pub(crate) fn parse_client_config(list: &str) -> Result<Vec<(String, String)>, Vec<ConfigError>> {
    let mut pairs = Vec::new();
    let mut problems = Vec::new();
    for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let Some((key, value)) = item.split_once('=') else {
            // No `=`: the whole item is a name (a password never appears here).
            problems.push(ConfigError::KafkaClientNotKeyValue(item.to_owned()));
            continue;
        };
        let key = key.trim();
        if key.is_empty() {
            problems.push(ConfigError::KafkaClientEmptyName);
        } else if RESERVED_PROPERTIES.contains(&key.to_ascii_lowercase().as_str()) {
            problems.push(ConfigError::KafkaClientReserved(key.to_owned()));
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
pub(crate) fn parse_sources(list: &str) -> Result<Vec<String>, Vec<ConfigError>> {
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
                Err(e) => problems.push(ConfigError::PeerJwksUrl {
                    item: item.to_owned(),
                    reason: e.to_string(),
                }),
            }
        } else if item.contains("://") {
            problems.push(ConfigError::PeerJwksScheme(item.to_owned()));
        } else if std::path::Path::new(item).is_file() {
            keep(&mut sources);
        } else {
            problems.push(ConfigError::PeerJwksMissing(item.to_owned()));
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
    use super::{ConfigError, parse_client_config};

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
        assert_eq!(
            problems,
            [
                ConfigError::KafkaClientReserved("acks".into()),
                ConfigError::KafkaClientReserved("Enable.Idempotence".into()),
                ConfigError::KafkaClientNotKeyValue("nonsense".into()),
                ConfigError::KafkaClientEmptyName,
            ]
        );
        // A password never appears in an error.
        let problems = parse_client_config("sasl.password=hunter2,sasl.password").unwrap_err();
        assert_eq!(
            problems,
            [ConfigError::KafkaClientNotKeyValue("sasl.password".into())]
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `serve` with these flags before it: the flags must parse, the settings may not.
    fn settings(args: &[&str]) -> Result<Settings, ConfigErrors> {
        serve_on("127.0.0.1:8000", args)
    }

    fn serve_on(listen: &str, args: &[&str]) -> Result<Settings, ConfigErrors> {
        use clap::Parser as _;
        let cli = crate::cli::Cli::try_parse_from(
            ["control-plane"]
                .iter()
                .chain(args)
                .chain(&["serve", "--listen", listen]),
        )
        .unwrap_or_else(|e| panic!("{args:?} are flags clap takes: {e}"));
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
        let issuer = |url: &str| ConfigError::IssuerUrl(url.into());
        let public = |url: &str| ConfigError::PublicUrl(url.into());
        for (bad, why) in [
            (
                ["--issuer", "https://cp.example/?tenant=1"],
                vec![issuer("https://cp.example/?tenant=1")],
            ),
            (
                ["--issuer", "https://cp.example/#x"],
                vec![issuer("https://cp.example/#x")],
            ),
            (
                ["--issuer", "ftp://cp.example"],
                vec![issuer("ftp://cp.example")],
            ),
            (["--issuer", " "], vec![ConfigError::EmptyIssuer]),
            (["--public-url", "cp.example"], vec![public("cp.example")]),
            (
                ["--public-url", "https://u:p@cp.example"],
                // The public URL is the issuer too.
                vec![
                    public("https://u:p@cp.example"),
                    issuer("https://u:p@cp.example"),
                ],
            ),
            (
                ["--accepted-issuers", "pq-control-plane,,https://b.example"],
                vec![ConfigError::EmptyAcceptedIssuer],
            ),
        ] {
            assert_eq!(settings(&bad).unwrap_err().0, why, "{bad:?}");
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
    fn replica_urls_are_base_urls_without_a_trailing_slash() {
        let s = settings(&[
            "--replica-urls",
            "http://10.0.0.12:8000/, http://a-3.internal:8000",
        ])
        .unwrap();
        assert_eq!(
            s.replica_urls,
            ["http://10.0.0.12:8000", "http://a-3.internal:8000"]
        );
        assert_eq!(
            settings(&["--replica-urls", "a-2:8000,http://ok:1?x=1"])
                .unwrap_err()
                .0,
            [
                ConfigError::ReplicaUrl("a-2:8000".into()),
                ConfigError::ReplicaUrl("http://ok:1?x=1".into()),
            ]
        );
    }

    #[test]
    fn a_replica_needs_its_own_consumer_group() {
        let replica = [
            "--region",
            "a",
            "--kafka-bootstrap",
            "127.0.0.1:9092",
            "--peer-jwks",
            "a=http://127.0.0.1:8001/v1/region/jwks",
        ];
        let problems = settings(&replica).unwrap_err().to_string();
        assert!(
            problems.contains("CP_KAFKA_GROUP") && problems.contains("cp-a-1"),
            "{problems}"
        );
        let own_group = [&replica[..], &["--kafka-group", "cp-a-1"]].concat();
        assert_eq!(settings(&own_group).unwrap().kafka.unwrap().group, "cp-a-1");
        // A peer region needs nothing of the kind.
        let peer = [&["--region", "b"][..], &replica[2..]].concat();
        assert_eq!(settings(&peer).unwrap().kafka.unwrap().group, "cp-b");
    }

    #[test]
    fn tokens_are_signed_with_eddsa_or_ml_dsa_never_es256() {
        assert_eq!(parse_alg("EdDSA"), Ok(Alg::EdDsa));
        assert_eq!(parse_alg("Ed25519"), Ok(Alg::EdDsa));
        assert_eq!(parse_alg("ML-DSA-65"), Ok(Alg::MlDsa65));
        assert_eq!(parse_alg("ES256"), Err(ConfigError::Es256SignsNoTokens));
        assert!(
            parse_alg("ES256")
                .unwrap_err()
                .to_string()
                .contains("device keys")
        );
        assert_eq!(
            parse_alg("RS256").unwrap_err().to_string(),
            "unsupported algorithm \"RS256\" (use EdDSA or ML-DSA-65)"
        );
    }

    #[test]
    fn every_problem_is_reported_at_once_one_line_each_in_the_words_operators_know() {
        let problems = settings(&[
            "--audience",
            " ",
            "--max-token-minutes",
            "0",
            "--leeway-seconds",
            "301",
            "--fleet-max-token-minutes",
            "600000",
            "--redis-timeout-ms",
            "0",
            "--publish-wait-ms",
            "10001",
            "--peer-jwks",
            "ftp://b.example/jwks",
        ])
        .unwrap_err();
        assert_eq!(
            problems.to_string(),
            "CP_AUDIENCE must not be empty\n\
             CP_MAX_TOKEN_MINUTES must be between 1 and 527040\n\
             CP_DEFAULT_TOKEN_MINUTES must be between 1 and CP_MAX_TOKEN_MINUTES\n\
             CP_LEEWAY_SECONDS must be between 0 and 300 (the leeway revocations cover)\n\
             CP_FLEET_MAX_TOKEN_MINUTES (600000) must be between CP_MAX_TOKEN_MINUTES (0) and 527040: \
             revocations must cover every token a region issues\n\
             CP_REDIS_TIMEOUT_MS must be between 1 and 10000\n\
             CP_PUBLISH_WAIT_MS must be at most 10000\n\
             PEER_JWKS: \"ftp://b.example/jwks\": only http(s) URLs and file paths are supported"
        );
    }
}
