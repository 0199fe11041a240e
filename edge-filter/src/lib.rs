//! proxy-wasm HTTP filter for Envoy: verifies access tokens at the edge and enforces the
//! revocation set that the control plane pushes, within one long poll of a revocation.
//!
//! The decision logic lives in plain modules ([`authz`], [`request`], [`sync`],
//! [`cache`], [`config`], [`replay`]) that compile and are tested natively; only `filter`
//! (wasm32 only) talks to the proxy-wasm host.

// Natively the proxy-wasm glue (`filter`) is not compiled, so much of what it uses
// looks unused; the wasm32 build (clippy with warnings denied) checks dead code for real.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

pub mod authz;
pub mod cache;
pub mod config;
pub mod replay;
pub mod request;
pub mod sync;

#[cfg(target_arch = "wasm32")]
mod filter;
