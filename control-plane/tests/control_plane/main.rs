//! Tests of the control plane: every route in-process and over TCP, revocation of each
//! kind, durability across `kill -9`, audit tampering, the edge feed, the CLI, refresh
//! sessions and the data directory's permissions.
#![expect(
    clippy::disallowed_methods,
    reason = "tests inspect and arrange the database directly, beside the region's writer"
)]

mod api;
mod audit_log;
mod cli;
mod data_dir;
mod durability;
mod edge_credentials;
mod edge_feed;
mod events;
mod lifetimes;
mod oauth_token;
mod refresh;
mod revocation_kinds;
mod security;
mod support;
