//! The event bus that carries signed events to other regions.
//!
//! The embedded default has no broker: the region's own edge feed is the only consumer
//! and it is fed straight from the SQLite commit. With `KAFKA_BOOTSTRAP` set, events go
//! to Kafka. Nothing calls the bus inside a request: the outbox relay (`outbox`) hands it
//! committed rows in order and retries until the broker takes them.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};

/// Publishing failed; the event stays in the outbox.
#[derive(Debug, Clone, thiserror::Error)]
#[error("event bus unavailable: {0}")]
pub struct BusError(pub String);

/// The future a publish returns.
pub(crate) type Publish<'a> = Pin<Box<dyn Future<Output = Result<(), BusError>> + Send + 'a>>;

/// Which stream an event belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    /// Signed revocation events.
    Revocations,
    /// Signed token lifecycle events (issued, rotated, reused, revoked).
    TokenEvents,
}

/// Broadcasts signed events.
pub trait EventBus: Send + Sync + 'static {
    /// Hands a signed event (compact JWS) to the bus under `key`; resolves once the
    /// broker acknowledged it (all in-sync replicas).
    fn publish<'a>(&'a self, topic: Topic, key: &'a str, signed_event: &'a str) -> Publish<'a>;

    /// A short name for logs and `/ready`.
    fn name(&self) -> &'static str;

    /// After a failed publish: repairs what it can before the retry (e.g. recreates
    /// topics a restarted broker lost). Blocking.
    fn recover(&self) {}
}

/// No broker: events only reach this region's edge feed.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalBus;

impl EventBus for LocalBus {
    fn publish<'a>(&'a self, _: Topic, _: &'a str, _: &'a str) -> Publish<'a> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn name(&self) -> &'static str {
        "local"
    }
}

use crate::config::KafkaSettings;

impl KafkaSettings {
    /// A client configuration with the bootstrap servers and the extra properties.
    pub(crate) fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap);
        for (key, value) in &self.client {
            config.set(key, value);
        }
        config
    }
}

impl KafkaSettings {
    /// The topic name of `topic`.
    pub fn topic(&self, topic: Topic) -> &str {
        match topic {
            Topic::Revocations => &self.revocations_topic,
            Topic::TokenEvents => &self.token_events_topic,
        }
    }
}

/// Kafka through librdkafka: an idempotent producer with `acks=all`, keyed by the revoked
/// value so one value's events stay in order.
pub(crate) struct KafkaBus {
    producer: std::sync::RwLock<FutureProducer>,
    settings: KafkaSettings,
    /// The broker's last answer for [`KafkaBus::recent_health`], and when it was asked.
    checked: std::sync::Mutex<(std::time::Instant, bool)>,
    /// Held by the one caller of [`KafkaBus::refresh_health`] asking the broker.
    asking: std::sync::Mutex<()>,
}

impl std::fmt::Debug for KafkaBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBus")
            .field("bootstrap", &self.settings.bootstrap)
            .finish()
    }
}

impl KafkaBus {
    /// Connects and checks the broker answers within `wait` (a start-up check: an
    /// unreachable broker at start is a configuration error).
    pub(crate) fn connect(settings: KafkaSettings, wait: Duration) -> Result<KafkaBus, BusError> {
        let producer = producer(&settings)?;
        producer.client().fetch_metadata(None, wait).map_err(|e| {
            BusError(format!(
                "Kafka at {} does not answer: {e}",
                settings.bootstrap
            ))
        })?;
        let bus = KafkaBus {
            producer: std::sync::RwLock::new(producer),
            settings,
            // It just answered.
            checked: std::sync::Mutex::new((std::time::Instant::now(), true)),
            asking: std::sync::Mutex::new(()),
        };
        bus.ensure_topics(wait)?;
        Ok(bus)
    }

    /// Creates the topics if they are missing (brokers may not create topics on first
    /// produce, and a consumer waits for its topic to exist).
    pub(crate) fn ensure_topics(&self, wait: Duration) -> Result<(), BusError> {
        let admin: AdminClient<DefaultClientContext> = self
            .settings
            .client_config()
            .create()
            .map_err(|e| BusError(format!("cannot create a Kafka admin client: {e}")))?;
        let topics = [
            NewTopic::new(
                &self.settings.revocations_topic,
                1,
                TopicReplication::Fixed(1),
            ),
            NewTopic::new(
                &self.settings.token_events_topic,
                1,
                TopicReplication::Fixed(1),
            ),
        ];
        let options = AdminOptions::new().operation_timeout(Some(wait));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| BusError(e.to_string()))?;
        let results = runtime
            .block_on(admin.create_topics(&topics, &options))
            .map_err(|e| BusError(format!("cannot create topics: {e}")))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(BusError(format!("cannot create topic {topic}: {code}")));
                }
            }
        }
        Ok(())
    }

    fn producer(&self) -> FutureProducer {
        self.producer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// True when the broker answers a metadata request within `wait`.
    pub(crate) fn healthy(&self, wait: Duration) -> bool {
        self.producer().client().fetch_metadata(None, wait).is_ok()
    }

    /// The broker's last answer to [`refresh_health`](Self::refresh_health) if it is
    /// younger than `max_age`. Never blocks: a fleet's health checks read it.
    pub(crate) fn recent_health(&self, max_age: Duration) -> Option<bool> {
        let (at, up) = *self.checked.lock().unwrap_or_else(|e| e.into_inner());
        (at.elapsed() < max_age).then_some(up)
    }

    /// Asks the broker ([`healthy`](Self::healthy)) and records the answer; while another
    /// caller is asking, answers the last one instead of asking again, so however many
    /// edges check, the broker gets one request at a time. Blocking.
    pub(crate) fn refresh_health(&self, wait: Duration) -> bool {
        let Ok(_asking) = self.asking.try_lock() else {
            return self.checked.lock().unwrap_or_else(|e| e.into_inner()).1;
        };
        let up = self.healthy(wait);
        *self.checked.lock().unwrap_or_else(|e| e.into_inner()) = (std::time::Instant::now(), up);
        up
    }
}

fn producer(settings: &KafkaSettings) -> Result<FutureProducer, BusError> {
    settings
        .client_config()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "0")
        // A send fails after this long, and the relay retries: keep it short so a broker
        // that comes back is used again within seconds.
        .set("message.timeout.ms", "5000")
        .create()
        .map_err(|e| BusError(format!("cannot create a Kafka producer: {e}")))
}

impl EventBus for KafkaBus {
    fn publish<'a>(&'a self, topic: Topic, key: &'a str, signed_event: &'a str) -> Publish<'a> {
        // Queued now, not when first polled, so a caller can queue a batch and then
        // await the acknowledgements in order.
        let record = FutureRecord::to(self.settings.topic(topic))
            .key(key)
            .payload(signed_event);
        let queued = self.producer().send_result(record);
        Box::pin(async move {
            let delivery = queued.map_err(|(e, _)| BusError(e.to_string()))?;
            match delivery.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((e, _))) => Err(BusError(e.to_string())),
                Err(_) => Err(BusError("the producer dropped the message".into())),
            }
        })
    }

    fn name(&self) -> &'static str {
        "kafka"
    }

    fn recover(&self) {
        if let Err(e) = self.ensure_topics(Duration::from_secs(2)) {
            tracing::debug!(error = %e, "topics not ensured yet");
        }
        // A restarted broker may have forgotten this producer's id: the idempotent
        // producer then fails for good. A fresh one starts a new sequence (the relay
        // awaited every earlier send, so nothing is in flight).
        match producer(&self.settings) {
            Ok(fresh) => *self.producer.write().unwrap_or_else(|e| e.into_inner()) = fresh,
            Err(e) => tracing::warn!(error = %e, "cannot recreate the Kafka producer"),
        }
    }
}
