//! What crosses the region's boundary: the event signer, the outbox relay and event bus
//! (Kafka or local), the consumer of peers' events, the peers' keys, and the signed
//! token-lifecycle events.

pub(crate) mod bus;
pub(crate) mod consumer;
pub(crate) mod outbox;
pub(crate) mod peers;
pub(crate) mod signer;
pub(crate) mod token_events;
