//! Wires a region to its optional services from the settings: Redis as the cache, Kafka
//! as the bus (with the outbox relay and the consumer), the peers' keys. With none set,
//! the region runs alone on SQLite with an in-memory cache.

use std::sync::Arc;
use std::time::Duration;

use crate::Region;
use crate::cache::redis::{self as redis_cache, RedisCache};
use crate::cache::{MemoryCache, RevocationCache};
use crate::config::Settings;
use crate::replication::bus::{EventBus, KafkaBus, LocalBus};
use crate::replication::consumer::{self, ConsumerStats};
use crate::replication::peers::Peers;
use crate::replication::{outbox, token_events};

/// How long start-up waits for Redis and the broker to answer.
const START_WAIT: Duration = Duration::from_secs(5);

/// The services a region was opened with.
#[derive(Debug, Default, Clone)]
pub struct Backends {
    /// Redis, when `REDIS_URL` is set.
    pub redis: Option<Arc<RedisCache>>,
    /// Kafka, when `KAFKA_BOOTSTRAP` is set.
    pub(crate) kafka: Option<Arc<KafkaBus>>,
    /// The peers' keys (`PEER_JWKS`).
    pub(crate) peers: Option<Arc<Peers>>,
    /// What the consumer did.
    pub(crate) consumer: Arc<ConsumerStats>,
}

/// Opens the region with the services its settings name. Blocking; every unreachable
/// service is reported at once.
pub fn open(settings: Settings) -> anyhow::Result<(Region, Backends)> {
    let mut problems = Vec::new();
    let redis = match &settings.redis_url {
        None => None,
        Some(url) => match RedisCache::connect(
            url,
            settings.redis_ca_file.as_deref(),
            settings.redis_timeout,
        ) {
            Ok(cache) => Some(Arc::new(cache)),
            Err(e) => {
                problems.push(e.to_string());
                None
            }
        },
    };
    let kafka = match &settings.kafka {
        None => None,
        Some(kafka) => match KafkaBus::connect(kafka.clone(), START_WAIT) {
            Ok(bus) => Some(Arc::new(bus)),
            Err(e) => {
                problems.push(format!("KAFKA_BOOTSTRAP: {e}"));
                None
            }
        },
    };
    anyhow::ensure!(problems.is_empty(), "{}", problems.join("\n"));
    let cache: Arc<dyn RevocationCache> = match &redis {
        Some(redis) => redis.clone(),
        None => Arc::new(MemoryCache::new()),
    };
    let bus: Arc<dyn EventBus> = match &kafka {
        Some(kafka) => kafka.clone(),
        None => Arc::new(LocalBus),
    };
    let peers = kafka
        .as_ref()
        .map(|_| Arc::new(Peers::new(settings.peer_jwks.clone())));
    let region = Region::open_with(settings, cache, bus)?;
    Ok((
        region,
        Backends {
            redis,
            kafka,
            peers,
            consumer: Arc::new(ConsumerStats::default()),
        },
    ))
}

/// Aborts its tasks when dropped.
#[derive(Debug, Default)]
pub(crate) struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Starts what keeps the services current: the outbox relay, the consumer, the Redis
/// rebuilder. With `consume` false, no consumer (a server whose peers' events another
/// process applies).
pub(crate) fn spawn(
    region: &Arc<Region>,
    backends: &Backends,
    consume: bool,
) -> anyhow::Result<Tasks> {
    let mut tasks = Vec::new();
    if let Some(redis) = &backends.redis {
        tasks.push(tokio::spawn(redis_cache::keep_current(
            region.clone(),
            redis.clone(),
            Duration::from_secs(1),
        )));
    }
    if backends.kafka.is_some() {
        tasks.push(tokio::spawn(outbox::run(region.clone())));
        tasks.push(tokio::spawn(token_events::run(region.clone())));
    }
    if consume && let (Some(kafka), Some(peers)) = (&region.settings().kafka, &backends.peers) {
        let consumer = consumer::subscribe(kafka)?;
        tasks.push(tokio::spawn(consumer::run(
            region.clone(),
            peers.clone(),
            consumer,
            kafka.clone(),
            backends.consumer.clone(),
        )));
    }
    Ok(Tasks(tasks))
}
