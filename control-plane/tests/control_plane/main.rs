//! Tests of the control plane: every route in-process and over TCP, revocation of each
//! kind, durability across `kill -9`, audit tampering, the edge feed, the CLI and
//! refresh sessions.

mod api;
mod audit_log;
mod cli;
mod durability;
mod edge_feed;
mod events;
mod oauth_token;
mod refresh;
mod revocation_kinds;
mod security;
mod support;
