//! What crosses the region's boundary: the event signer, the outbox relay and event bus
//! (Kafka or local), the consumer of peers' events, the peers' keys, the signed
//! token-lifecycle events, the edge feed's prepared updates, and the fleet of edges
//! that poll it.

pub(crate) mod bus;
pub(crate) mod consumer;
pub(crate) mod feed;
pub(crate) mod fleet;
pub(crate) mod outbox;
pub(crate) mod peers;
pub(crate) mod signer;
pub(crate) mod token_events;
