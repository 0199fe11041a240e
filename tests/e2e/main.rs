//! End-to-end tests: the edge filter inside real Envoy, fed by the real control plane.
//!
//! Needs the filter and the control plane built first and Envoy installed (see the
//! README of `tests/`). Stacks run one at a time: the machine is small and the printed
//! propagation times mean more without neighbours.

mod auth;
mod credentials;
mod feed_switch;
mod fleet;
mod hardening;
mod revocation;
mod robustness;
mod staleness;
mod upgrade;

use std::sync::{Mutex, MutexGuard};

use serde_json::{Value, json};
use tests::control_plane::ControlPlane;
use tests::envoy::{Envoy, Poller, filter_config, shipped_hcm_options};
use tests::tokens;
use tests::upstream::Upstream;

static ONE_STACK_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A control plane, a recording upstream and Envoy with the filter between them.
struct Stack {
    // Dropped in declaration order: Envoy first, then the control plane, then the lock.
    envoy: Envoy,
    cp: ControlPlane,
    upstream: Upstream,
    _turn: MutexGuard<'static, ()>,
}

impl Stack {
    /// Starts everything; `configure` adjusts the filter configuration, given the control
    /// plane's JWKS for tests that want it inline.
    fn start(configure: impl FnOnce(&mut Value, &Value)) -> Stack {
        Stack::start_with(configure, &shipped_hcm_options())
    }

    /// Like [`start`](Stack::start) with other connection manager options for Envoy.
    fn start_with(configure: impl FnOnce(&mut Value, &Value), hcm_options: &Value) -> Stack {
        Stack::start_polled_by(configure, hcm_options, Poller::Service)
    }

    /// Like [`start_with`](Stack::start_with), polled by `poller`.
    fn start_polled_by(
        configure: impl FnOnce(&mut Value, &Value),
        hcm_options: &Value,
        poller: Poller,
    ) -> Stack {
        let turn = ONE_STACK_AT_A_TIME
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Stack::around(turn, ControlPlane::start(), configure, hcm_options, poller)
    }

    /// Like [`start`](Stack::start), its control plane started with `env` (on top of the
    /// edge credential being required).
    fn start_with_env(env: &[(&str, &str)], configure: impl FnOnce(&mut Value, &Value)) -> Stack {
        let turn = ONE_STACK_AT_A_TIME
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut all = vec![("CP_EDGE_CREDENTIALS".to_owned(), "required".to_owned())];
        all.extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        let cp = ControlPlane::start_with(tests::free_port(), all);
        Stack::around(turn, cp, configure, &shipped_hcm_options(), Poller::Service)
    }

    fn around(
        turn: MutexGuard<'static, ()>,
        cp: ControlPlane,
        configure: impl FnOnce(&mut Value, &Value),
        hcm_options: &Value,
        poller: Poller,
    ) -> Stack {
        let upstream = Upstream::start();
        let mut filter = filter_config();
        filter["control_plane"]["edge_credential"] = json!(cp.edge_credential());
        configure(&mut filter, &cp.jwks());
        let envoy = Envoy::start_with(cp.port, upstream.port, &filter, hcm_options, poller);
        Stack {
            envoy,
            cp,
            upstream,
            _turn: turn,
        }
    }

    /// The filter fetches the control plane's JWKS itself.
    fn fetched_keys() -> Stack {
        Stack::start(|_, _| {})
    }

    /// Inline JWKS: the control plane's keys plus the tests' own key, so tests can mint
    /// tokens the control plane would never issue.
    fn with_test_key() -> Stack {
        Stack::start(|filter, jwks| {
            let mut keys = jwks["keys"].as_array().cloned().unwrap_or_default();
            keys.push(tokens::test_jwk());
            filter["jwks"] = json!({ "keys": keys });
        })
    }
}
