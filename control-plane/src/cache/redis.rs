//! The Redis revocation cache of a region (`REDIS_URL`).
//!
//! Keys are the original service's: `revoked:{jti|sub|kid|sid}:{value}`, with a TTL of
//! the time the revocation can still match a valid token, so services that read that
//! Redis keep working. The value is JSON: `event_id`, `not_before`, `expires_at`, the
//! event and the signed event. Several revocations of one key merge by the project's
//! coverage rule (stronger not-before, later expiry), atomically in a Lua script.
//!
//! Redis is an output for other services, never an input: the control plane decides
//! with its in-process set ([`crate::cache::MemoryCache`]) and only writes here. Its
//! reads (the marker key with the revocation keys) serve the rebuild and the tests: when
//! Redis lost the marker (restarted empty or flushed) or missed a write of this process,
//! a background task rewrites every live revocation from SQLite, pipelined, and sets the
//! marker again.
//!
//! The URL may name an ACL user and password (`redis://user:password@host:port/db`) and
//! TLS (`rediss://`, the server's certificate checked against the system's roots or the
//! CA of `CP_REDIS_CA_FILE`); messages show it with the password masked.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use shared::{Kind, RevocationEvent};

use crate::cache::{CacheError, RevocationCache};
use crate::time::now;

/// How long checks skip Redis after it failed one.
const RETRY_AFTER_FAILURE_MS: u64 = 1000;

/// The marker key: present while Redis holds every live revocation of the region.
pub(crate) const EPOCH_KEY: &str = "revoked-cache-epoch";

/// The Redis key of a revocation.
pub(crate) fn key(kind: Kind, value: &str) -> String {
    format!("revoked:{}:{value}", kind.as_str())
}

/// `url` with the password of its user part (or the whole user part when it has no
/// `:`) replaced by `***`, for messages and logs.
pub(crate) fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let Some((user_part, host)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    let user = match user_part.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None => "***".to_owned(),
    };
    format!("{scheme}://{user}@{host}{tail}")
}

/// Why Redis could not be set up; every message shows the URL redacted.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// `REDIS_URL` does not parse.
    #[error("REDIS_URL {url:?} is not a Redis URL: {source}")]
    NotAUrl {
        /// The URL, redacted.
        url: String,
        /// Why.
        source: redis::RedisError,
    },
    /// `rediss://...#insecure` asks for no certificate check.
    #[error(
        "REDIS_URL {0:?}: #insecure (no certificate check) is refused; trust a private CA with CP_REDIS_CA_FILE"
    )]
    Insecure(String),
    /// A CA file is given for a URL without TLS.
    #[error("CP_REDIS_CA_FILE is set but REDIS_URL {0:?} is not rediss:// (TLS)")]
    CaWithoutTls(String),
    /// The CA file cannot be read.
    #[error("CP_REDIS_CA_FILE {path}: {source}")]
    CaFile {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The CA file holds no PEM certificate.
    #[error("CP_REDIS_CA_FILE {0} holds no PEM certificate")]
    NoCertificate(String),
    /// The TLS client cannot be built with the CA.
    #[error("CP_REDIS_CA_FILE {path}: {source}")]
    Tls {
        /// The CA file.
        path: String,
        /// Why.
        source: redis::RedisError,
    },
    /// The thread that runs Redis I/O could not start or died at once.
    #[error("cannot start the Redis I/O thread: {0}")]
    IoThread(String),
    /// Redis did not answer in time.
    #[error("Redis at {url} did not answer {what}")]
    NoAnswer {
        /// The URL, redacted.
        url: String,
        /// To what: "within 5 s" (connecting) or "PING".
        what: &'static str,
    },
    /// Redis refused the connection or the command.
    #[error("cannot connect to Redis at {url}: {source}")]
    Refused {
        /// The URL, redacted.
        url: String,
        /// Why.
        source: redis::RedisError,
    },
}

/// The client of `url`. With `rediss://` the server's certificate is checked against the
/// PEM certificates of `ca_file` when given (a private CA), else the system's roots;
/// `#insecure` (no check at all) is refused. Errors show the URL redacted.
pub(crate) fn client(url: &str, ca_file: Option<&Path>) -> Result<redis::Client, SetupError> {
    let shown = redacted(url);
    let client = redis::Client::open(url).map_err(|source| SetupError::NotAUrl {
        url: shown.clone(),
        source,
    })?;
    let tls = match client.get_connection_info().addr() {
        redis::ConnectionAddr::TcpTls { insecure: true, .. } => {
            return Err(SetupError::Insecure(shown));
        }
        redis::ConnectionAddr::TcpTls { .. } => true,
        _ => false,
    };
    install_tls_provider();
    let Some(path) = ca_file else {
        return Ok(client);
    };
    if !tls {
        return Err(SetupError::CaWithoutTls(shown));
    }
    let shown_path = path.display().to_string();
    let pem = std::fs::read(path).map_err(|source| SetupError::CaFile {
        path: shown_path.clone(),
        source,
    })?;
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(SetupError::NoCertificate(shown_path));
    }
    redis::Client::build_with_tls(
        url,
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pem),
        },
    )
    .map_err(|source| SetupError::Tls {
        path: shown_path,
        source,
    })
}

/// Makes ring the process's rustls crypto provider (an error means one is installed
/// already). Named, not left to rustls's crate-feature guess, so a dependency that turns
/// on another provider cannot make TLS panic at connect.
#[expect(
    deprecated,
    reason = "ring has no post-quantum key exchange (rustls 0.23.48 deprecates it for that); \
              aws-lc-rs would add X25519MLKEM768, which the Redis servers we run (OpenSSL 3.0) \
              do not offer anyway"
)]
fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The value stored under a revocation key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Stored {
    /// The strongest event's id.
    pub event_id: String,
    /// Its not-before (`sub`), if any.
    #[serde(default)]
    pub not_before: Option<i64>,
    /// When the merged entry stops mattering.
    pub expires_at: i64,
    /// The strongest event.
    pub event: RevocationEvent,
    /// That event, signed (compact JWS), when known.
    #[serde(default)]
    pub signed: Option<String>,
}

/// Sets the key unless the stored revocation is stronger; keeps the later expiry.
const MERGE: &str = r"
local cur = redis.call('GET', KEYS[1])
local ttl = tonumber(ARGV[3])
if cur then
  local ok, c = pcall(cjson.decode, cur)
  if ok and type(c) == 'table' then
    local nb = c['not_before']
    local keep = (nb == nil or nb == cjson.null) or (ARGV[2] ~= '' and tonumber(ARGV[2]) <= nb)
    local left = redis.call('TTL', KEYS[1])
    if left > ttl then ttl = left end
    if keep then
      redis.call('EXPIRE', KEYS[1], ttl)
      return 0
    end
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ttl)
return 1
";

/// The cache, with its own I/O thread so it can be called from any thread.
pub struct RedisCache {
    io: tokio::runtime::Handle,
    conn: ConnectionManager,
    timeout: Duration,
    /// False when this process may have missed a write: checks fall back until rebuilt.
    trusted: Arc<AtomicBool>,
    /// After a failed read, checks go straight to SQLite until this instant (ms since
    /// `epoch`), so a Redis outage costs one timeout a second, not one per check.
    down_until_ms: AtomicU64,
    epoch: Instant,
    merge: Arc<redis::Script>,
    _stop: std::sync::mpsc::SyncSender<()>,
}

impl std::fmt::Debug for RedisCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCache")
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl RedisCache {
    /// Connects to `url` (checked at start: an unreachable Redis, or one that refuses
    /// the URL's user, is a configuration error) with `timeout` for every operation;
    /// `ca_file` is the CA a `rediss://` server's certificate is checked against.
    pub fn connect(
        url: &str,
        ca_file: Option<&Path>,
        timeout: Duration,
    ) -> Result<RedisCache, SetupError> {
        let client = client(url, ca_file)?;
        let url = redacted(url);
        let (handle_tx, handle_rx) = std::sync::mpsc::sync_channel(1);
        let (stop_tx, stop_rx) = std::sync::mpsc::sync_channel::<()>(1);
        std::thread::Builder::new()
            .name("redis-io".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = handle_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = handle_tx.send(Ok(runtime.handle().clone()));
                // Runs the spawned Redis work until the cache is dropped.
                runtime.block_on(async move {
                    let _ = tokio::task::spawn_blocking(move || stop_rx.recv()).await;
                });
            })
            .map_err(|e| SetupError::IoThread(e.to_string()))?;
        let io = handle_rx
            .recv()
            .map_err(|_| SetupError::IoThread("it died".to_owned()))?
            .map_err(SetupError::IoThread)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(timeout.max(Duration::from_millis(20))))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let (conn_tx, conn_rx) = std::sync::mpsc::sync_channel(1);
        io.spawn(async move {
            let conn = ConnectionManager::new_with_config(client, config).await;
            let _ = conn_tx.send(conn);
        });
        let conn = conn_rx
            .recv_timeout(Duration::from_secs(5))
            .map_err(|_| SetupError::NoAnswer {
                url: url.clone(),
                what: "within 5 s",
            })?
            .map_err(|source| SetupError::Refused {
                url: url.clone(),
                source,
            })?;
        let (ping_tx, ping_rx) = std::sync::mpsc::sync_channel(1);
        let mut pinger = conn.clone();
        io.spawn(async move {
            let pong: redis::RedisResult<String> =
                redis::cmd("PING").query_async(&mut pinger).await;
            let _ = ping_tx.send(pong);
        });
        ping_rx
            .recv_timeout(Duration::from_secs(5))
            .map_err(|_| SetupError::NoAnswer {
                url: url.clone(),
                what: "PING",
            })?
            .map_err(|source| SetupError::Refused {
                url: url.clone(),
                source,
            })?;
        Ok(RedisCache {
            io,
            conn,
            timeout,
            trusted: Arc::new(AtomicBool::new(false)),
            down_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            merge: Arc::new(redis::Script::new(MERGE)),
            _stop: stop_tx,
        })
    }

    /// Runs `work` on the I/O thread, waiting at most the timeout.
    fn run<T, F, Fut>(&self, limit: Duration, work: F) -> Result<T, CacheError>
    where
        T: Send + 'static,
        F: FnOnce(ConnectionManager) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = redis::RedisResult<T>> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let conn = self.conn.clone();
        self.io.spawn(async move {
            let result = tokio::time::timeout(limit, work(conn)).await;
            let _ = tx.send(result);
        });
        match rx.recv_timeout(limit + Duration::from_millis(50)) {
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err(e))) => Err(CacheError::Redis(e)),
            Ok(Err(_)) | Err(_) => Err(CacheError::Timeout(limit)),
        }
    }

    /// True while checks may trust Redis.
    pub fn is_trusted(&self) -> bool {
        self.trusted.load(Ordering::SeqCst)
    }

    /// True when the marker is present (Redis holds the region's set), answered within
    /// the timeout.
    pub fn marker_present(&self) -> Result<bool, CacheError> {
        self.run(
            self.timeout.max(Duration::from_millis(200)),
            |mut conn| async move {
                redis::cmd("EXISTS")
                    .arg(EPOCH_KEY)
                    .query_async::<bool>(&mut conn)
                    .await
            },
        )
    }

    /// Rewrites every live revocation (`events`, from SQLite) pipelined, then sets the
    /// marker; checks trust Redis again afterwards. Returns how many keys were written.
    pub fn rebuild(
        &self,
        events: &[(RevocationEvent, Option<String>)],
    ) -> Result<usize, CacheError> {
        let t = now();
        let mut merged: std::collections::HashMap<String, Stored> =
            std::collections::HashMap::new();
        for (event, signed) in events {
            if event.expires_at <= t {
                continue;
            }
            let entry = merged.entry(key(event.kind, &event.value));
            match entry {
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(stored(event, signed.clone()));
                }
                std::collections::hash_map::Entry::Occupied(mut o) => {
                    let cur = o.get_mut();
                    let expires_at = cur.expires_at.max(event.expires_at);
                    if shared::revocation::strongest([&cur.event, event])
                        .is_some_and(|s| s.event_id == event.event_id)
                    {
                        *cur = stored(event, signed.clone());
                    }
                    cur.expires_at = expires_at;
                }
            }
        }
        let count = merged.len();
        let mut pipe = redis::pipe();
        for (k, v) in &merged {
            let ttl = (v.expires_at - t).max(1);
            let json = serde_json::to_string(v).unwrap_or_default();
            pipe.cmd("SET").arg(k).arg(json).arg("EX").arg(ttl).ignore();
        }
        pipe.cmd("SET")
            .arg(EPOCH_KEY)
            .arg(shared::random::id())
            .ignore();
        self.run(Duration::from_secs(30), move |mut conn| async move {
            pipe.query_async::<()>(&mut conn).await
        })?;
        self.trusted.store(true, Ordering::SeqCst);
        Ok(count)
    }
}

fn stored(event: &RevocationEvent, signed: Option<String>) -> Stored {
    Stored {
        event_id: event.event_id.clone(),
        not_before: event.not_before,
        expires_at: event.expires_at,
        event: event.clone(),
        signed,
    }
}

impl RevocationCache for RedisCache {
    fn insert(&self, event: &RevocationEvent) -> Result<(), CacheError> {
        let ttl = event.expires_at - now();
        if ttl <= 0 {
            return Ok(());
        }
        let value = serde_json::to_string(&stored(event, None))?;
        let k = key(event.kind, &event.value);
        let not_before = event.not_before.map_or_else(String::new, |t| t.to_string());
        let merge = self.merge.clone();
        let result = self.run(self.timeout, move |mut conn| async move {
            merge
                .key(k)
                .arg(value)
                .arg(not_before)
                .arg(ttl)
                .invoke_async::<i64>(&mut conn)
                .await
        });
        if result.is_err() {
            // Redis may now lack a committed revocation: never trust it until rebuilt.
            self.trusted.store(false, Ordering::SeqCst);
        }
        result.map(|_| ())
    }

    fn find(
        &self,
        kind: Kind,
        value: &str,
        iat: Option<i64>,
        now: i64,
    ) -> Result<Option<RevocationEvent>, CacheError> {
        Ok(self
            .find_many(&[(kind, value)], iat, now)?
            .into_iter()
            .next()
            .flatten())
    }

    fn find_many(
        &self,
        asked: &[(Kind, &str)],
        iat: Option<i64>,
        now: i64,
    ) -> Result<Vec<Option<RevocationEvent>>, CacheError> {
        if !self.is_trusted() {
            return Err(CacheError::Rebuilding);
        }
        let now_ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        if now_ms < self.down_until_ms.load(Ordering::Relaxed) {
            return Err(CacheError::BackingOff);
        }
        let mut keys = vec![EPOCH_KEY.to_owned()];
        keys.extend(asked.iter().map(|(kind, value)| key(*kind, value)));
        let values: Vec<Option<String>> = self
            .run(self.timeout, move |mut conn| async move {
                redis::cmd("MGET").arg(keys).query_async(&mut conn).await
            })
            .inspect_err(|_| {
                self.down_until_ms
                    .store(now_ms + RETRY_AFTER_FAILURE_MS, Ordering::Relaxed);
            })?;
        let Some((marker, found)) = values.split_first() else {
            return Err(CacheError::NoAnswer);
        };
        if marker.is_none() {
            // Restarted empty or flushed: its silence means nothing until rebuilt.
            self.trusted.store(false, Ordering::SeqCst);
            return Err(CacheError::Lost);
        }
        Ok(found
            .iter()
            .map(|v| {
                let stored: Stored = serde_json::from_str(v.as_deref()?).ok()?;
                // The merged entry covers what its strongest event covers, until the
                // latest expiry of the events merged into it.
                let live = stored.expires_at > now;
                let covers =
                    iat.is_none_or(|iat| shared::revocation::covers(stored.not_before, iat));
                (live && covers).then_some(stored.event)
            })
            .collect())
    }

    fn remember_once(&self, key: &str, ttl_secs: i64) -> Option<Result<bool, CacheError>> {
        let key = key.to_owned();
        Some(self.run(self.timeout, move |mut conn| async move {
            let set: Option<String> = redis::cmd("SET")
                .arg(key)
                .arg(1)
                .arg("NX")
                .arg("EX")
                .arg(ttl_secs.max(1))
                .query_async(&mut conn)
                .await?;
            Ok(set.is_some())
        }))
    }

    fn put_state(&self, key: &str, value: &str, ttl_secs: i64) -> Result<(), CacheError> {
        let (key, value) = (key.to_owned(), value.to_owned());
        self.run(self.timeout, move |mut conn| async move {
            redis::cmd("SET")
                .arg(key)
                .arg(value)
                .arg("EX")
                .arg(ttl_secs.max(1))
                .query_async::<()>(&mut conn)
                .await
        })
    }

    fn prune(&self, _now: i64) {
        // Redis expires keys by their TTL.
    }

    fn len(&self) -> usize {
        self.run(self.timeout, |mut conn| async move {
            redis::cmd("DBSIZE").query_async::<usize>(&mut conn).await
        })
        .unwrap_or(0)
    }
}

/// Keeps Redis current: rebuilds it from SQLite when it lost the set or this process
/// missed a write; checks every `every` until the task is dropped.
pub(crate) async fn keep_current(
    region: Arc<crate::Region>,
    cache: Arc<RedisCache>,
    every: Duration,
) {
    loop {
        let needed = !cache.is_trusted() || matches!(cache.marker_present(), Ok(false));
        if needed {
            let (region, cache) = (region.clone(), cache.clone());
            let done = tokio::task::spawn_blocking(move || {
                let events = region
                    .db()
                    .read()
                    .and_then(|conn| crate::store::db::live_signed(&conn, now()))?;
                cache.rebuild(&events)
            })
            .await;
            match done {
                Ok(Ok(n)) => tracing::info!(keys = n, "redis rebuilt from SQLite"),
                Ok(Err(e)) => tracing::debug!(error = %e, "redis rebuild failed; retrying"),
                Err(e) => tracing::error!(error = %e, "redis rebuild task failed"),
            }
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::{SetupError, client, redacted};

    #[test]
    fn a_redis_url_is_shown_without_its_password() {
        for (url, shown) in [
            (
                "redis://cp-a:s3cret@127.0.0.1:6379/0",
                "redis://cp-a:***@127.0.0.1:6379/0",
            ),
            ("rediss://s3cret@redis:6380", "rediss://***@redis:6380"),
            ("redis://cp-a:p@ss@redis/1#x", "redis://cp-a:***@redis/1#x"),
            ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(redacted(url), shown);
        }
    }

    #[test]
    fn rediss_parses_insecure_is_refused_and_a_ca_needs_tls() {
        assert!(client("rediss://cp-a:s3cret@127.0.0.1:6380/0", None).is_ok());
        let insecure =
            client("rediss://cp-a:s3cret@127.0.0.1:6380/0#insecure", None).expect_err("#insecure");
        assert!(matches!(insecure, SetupError::Insecure(_)));
        let insecure = insecure.to_string();
        assert!(insecure.contains("#insecure") && !insecure.contains("s3cret"));
        let ca = std::env::temp_dir().join("no-such-ca.pem");
        let plain = client("redis://cp-a:s3cret@127.0.0.1:6379/0", Some(&ca)).expect_err("CA");
        assert!(matches!(plain, SetupError::CaWithoutTls(_)));
        let plain = plain.to_string();
        assert!(plain.contains("not rediss://") && !plain.contains("s3cret"));
        let missing = client("rediss://127.0.0.1:6380/0", Some(&ca)).expect_err("no file");
        assert!(matches!(missing, SetupError::CaFile { .. }), "{missing}");
        assert!(
            missing.to_string().contains("CP_REDIS_CA_FILE"),
            "{missing}"
        );
    }
}
