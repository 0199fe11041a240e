//! The live revocation set, and the caches that mirror it.
//!
//! Every check reads [`MemoryCache`]: every live revocation this process committed or
//! verified, loaded from SQLite at start. With `REDIS_URL` set, the same revocations are
//! also written to Redis ([`redis`], behind the same trait) for other services of
//! the region; nothing is ever read back from it for a decision.

pub(crate) mod redis;

use std::collections::HashMap;
use std::sync::RwLock;

use shared::revocation::{TokenIds, covers, strongest};
use shared::{Kind, RevocationEvent};

/// Why the cache could not answer or take a write.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Redis answered with an error.
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    /// Redis did not answer in time.
    #[error("redis did not answer within {} ms", .0.as_millis())]
    Timeout(std::time::Duration),
    /// Redis is being rebuilt from SQLite: what it says is not trusted until then.
    #[error("redis is being rebuilt")]
    Rebuilding,
    /// Redis failed a moment ago; it is left alone for a short while.
    #[error("redis failed a moment ago")]
    BackingOff,
    /// Redis answered nothing at all.
    #[error("redis answered nothing")]
    NoAnswer,
    /// Redis lost the revocation set (restarted empty or flushed).
    #[error("redis lost the revocation set")]
    Lost,
    /// An event could not be encoded for it.
    #[error("cannot encode an event for redis: {0}")]
    Encode(#[from] serde_json::Error),
    /// SQLite could not be read to rebuild it.
    #[error("cannot read the database to rebuild redis: {0}")]
    Storage(#[from] rusqlite::Error),
    /// Another implementation's failure (tests use it for a cache that always fails).
    #[error("revocation cache unavailable")]
    Unavailable,
}

/// A store of live revocations keyed by `(kind, value)`.
pub trait RevocationCache: Send + Sync + 'static {
    /// Adds an event (idempotent by origin and `event_id`).
    fn insert(&self, event: &RevocationEvent) -> Result<(), CacheError>;

    /// The strongest live revocation of `(kind, value)` at `now`
    /// ([`shared::revocation::strongest`]), if it covers a token issued at `iat` (always
    /// when `iat` is `None`).
    fn find(
        &self,
        kind: Kind,
        value: &str,
        iat: Option<i64>,
        now: i64,
    ) -> Result<Option<RevocationEvent>, CacheError>;

    /// [`RevocationCache::find`] for several identifiers at once (one round trip for a
    /// remote cache); answers in the order asked.
    fn find_many(
        &self,
        asked: &[(Kind, &str)],
        iat: Option<i64>,
        now: i64,
    ) -> Result<Vec<Option<RevocationEvent>>, CacheError> {
        asked
            .iter()
            .map(|(kind, value)| self.find(*kind, value, iat, now))
            .collect()
    }

    /// Records `key` for `ttl_secs` unless it is there already: `Some(Ok(true))` when it
    /// is new, `Some(Ok(false))` when it was seen; `None` for a cache no other process
    /// shares. DPoP proof `jti`s are published this way for other services; the answer
    /// decides nothing (SQLite does).
    fn remember_once(&self, _key: &str, _ttl_secs: i64) -> Option<Result<bool, CacheError>> {
        None
    }

    /// Publishes a small state value (JSON) under `key` for `ttl_secs`, for services that
    /// read the shared cache (refresh-session state); a no-op for a private cache.
    fn put_state(&self, _key: &str, _value: &str, _ttl_secs: i64) -> Result<(), CacheError> {
        Ok(())
    }

    /// Drops revocations that can no longer match a valid token.
    fn prune(&self, now: i64);

    /// True when lookups never block on I/O and never fail (the in-memory cache), so
    /// callers may run them on an async thread.
    fn is_local(&self) -> bool {
        false
    }

    /// Number of cached revocations.
    fn len(&self) -> usize;

    /// True when nothing is cached.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The first live revocation that covers a token, checked kind by kind.
pub(crate) fn check(
    cache: &dyn RevocationCache,
    ids: &TokenIds<'_>,
    now: i64,
) -> Result<Option<RevocationEvent>, CacheError> {
    let asked: Vec<(Kind, &str)> = Kind::ALL
        .into_iter()
        .filter_map(|kind| ids.value(kind).map(|v| (kind, v)))
        .collect();
    Ok(cache
        .find_many(&asked, Some(ids.iat), now)?
        .into_iter()
        .flatten()
        .next())
}

/// In-process cache: the embedded default.
#[derive(Debug, Default)]
pub struct MemoryCache {
    entries: RwLock<HashMap<(Kind, String), Vec<RevocationEvent>>>,
}

impl MemoryCache {
    /// An empty cache.
    pub fn new() -> MemoryCache {
        MemoryCache::default()
    }

    /// Calls `f` with every revocation still live at `now` (the edge feed's snapshots are
    /// built from this, once per feed head).
    pub(crate) fn for_each_live(&self, now: i64, mut f: impl FnMut(&RevocationEvent)) {
        let map = self.entries.read().unwrap_or_else(|e| e.into_inner());
        for event in map.values().flatten().filter(|e| e.expires_at > now) {
            f(event);
        }
    }
}

impl RevocationCache for MemoryCache {
    fn insert(&self, event: &RevocationEvent) -> Result<(), CacheError> {
        let mut map = self.entries.write().unwrap_or_else(|e| e.into_inner());
        let list = map.entry((event.kind, event.value.clone())).or_default();
        if !list
            .iter()
            .any(|e| e.event_id == event.event_id && e.origin == event.origin)
        {
            list.push(event.clone());
        }
        Ok(())
    }

    fn find(
        &self,
        kind: Kind,
        value: &str,
        iat: Option<i64>,
        now: i64,
    ) -> Result<Option<RevocationEvent>, CacheError> {
        let map = self.entries.read().unwrap_or_else(|e| e.into_inner());
        let Some(list) = map.get(&(kind, value.to_owned())) else {
            return Ok(None);
        };
        Ok(strongest(list.iter().filter(|e| e.expires_at > now))
            .filter(|e| iat.is_none_or(|iat| covers(e.not_before, iat)))
            .cloned())
    }

    fn is_local(&self) -> bool {
        true
    }

    fn prune(&self, now: i64) {
        let mut map = self.entries.write().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, list| {
            list.retain(|e| e.expires_at > now);
            !list.is_empty()
        });
    }

    fn len(&self) -> usize {
        let map = self.entries.read().unwrap_or_else(|e| e.into_inner());
        map.values().map(Vec::len).sum()
    }
}

/// Tokens whose signature verified, by SHA-256 of the compact form, so a token presented
/// again skips the signature check (claims times and revocation are still checked on
/// every request). Sharded read-mostly maps: lookups take an uncontended read lock.
/// Cleared whenever the trusted keys change.
pub(crate) struct VerifiedTokens {
    shards: Vec<RwLock<VerifiedShard>>,
}

/// Claims and `kid` by token digest.
type VerifiedShard = HashMap<[u8; 32], (shared::AccessClaims, String)>;

/// Shards of [`VerifiedTokens`].
const SHARDS: usize = 16;
/// Entries per shard before it is emptied (about 16k tokens in all).
const PER_SHARD: usize = 1024;

impl Default for VerifiedTokens {
    fn default() -> Self {
        VerifiedTokens {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
        }
    }
}

impl std::fmt::Debug for VerifiedTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VerifiedTokens")
    }
}

impl VerifiedTokens {
    fn shard(
        &self,
        digest: &[u8; 32],
    ) -> &RwLock<HashMap<[u8; 32], (shared::AccessClaims, String)>> {
        &self.shards[usize::from(digest[0]) % SHARDS]
    }

    /// The claims and `kid` of a token that verified before.
    pub(crate) fn get(&self, digest: &[u8; 32]) -> Option<(shared::AccessClaims, String)> {
        self.shard(digest)
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(digest)
            .cloned()
    }

    /// Remembers a token that verified.
    pub(crate) fn insert(&self, digest: [u8; 32], verified: (shared::AccessClaims, String)) {
        let mut shard = self
            .shard(&digest)
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if shard.len() >= PER_SHARD {
            shard.clear();
        }
        shard.insert(digest, verified);
    }

    /// Forgets everything (the keys changed).
    pub(crate) fn clear(&self) {
        for shard in &self.shards {
            shard.write().unwrap_or_else(|e| e.into_inner()).clear();
        }
    }
}
