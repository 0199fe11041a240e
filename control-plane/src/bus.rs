//! The event bus that carries signed revocation events to other regions.
//!
//! The embedded default has no broker: the region's own edge feed is the only consumer
//! and it is fed straight from the SQLite commit. A Kafka bus plugs in behind the same
//! trait; the outbox table keeps events it could not publish yet.

/// Publishing failed; the event stays in the outbox.
#[derive(Debug, Clone, thiserror::Error)]
#[error("event bus unavailable: {0}")]
pub struct BusError(pub String);

/// Broadcasts signed events.
pub trait EventBus: Send + Sync + 'static {
    /// Hands a signed revocation event (compact JWS) to the bus, keyed by its value.
    fn publish(&self, key: &str, signed_event: &str) -> Result<(), BusError>;

    /// A short name for logs and `/ready`.
    fn name(&self) -> &'static str;
}

/// No broker: events only reach this region's edge feed.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalBus;

impl EventBus for LocalBus {
    fn publish(&self, _key: &str, _signed_event: &str) -> Result<(), BusError> {
        Ok(())
    }

    fn name(&self) -> &'static str {
        "local"
    }
}
