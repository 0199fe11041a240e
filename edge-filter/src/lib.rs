//! proxy-wasm HTTP filter for Envoy: verifies access tokens at the edge and enforces the
//! revocation set that the control plane pushes, within one long poll of a revocation.
//!
//! The decision logic lives in plain modules ([`authz`], [`reason`], [`request`],
//! [`sync`], [`cache`], [`config`], [`replay`]) that compile and are tested natively;
//! only `filter` (wasm32 only) talks to the proxy-wasm host.

// Natively the proxy-wasm glue (`filter`) is not compiled, so some of what it uses looks
// unused there; the wasm32 build (clippy with warnings denied) checks dead code for real.
#![cfg_attr(
    not(target_arch = "wasm32"),
    expect(
        dead_code,
        reason = "used by the proxy-wasm glue, which compiles for wasm32 only"
    )
)]

pub mod authz;
pub mod cache;
pub mod config;
pub mod reason;
pub mod replay;
pub mod request;
pub mod sync;

#[cfg(target_arch = "wasm32")]
mod filter;
