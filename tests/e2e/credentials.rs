//! Edge credentials with real Envoy: a filter with its credential stays fresh against a
//! control plane that requires one, goes stale once the credential is revoked, and an
//! old filter config (no credential) keeps working while the control plane only warns.

use std::sync::PoisonError;
use std::time::Duration;

use serde_json::json;
use tests::control_plane::ControlPlane;
use tests::envoy::{Envoy, filter_config};
use tests::upstream::Upstream;
use tests::{eventually, free_port, http, tokens};

use crate::{ONE_STACK_AT_A_TIME, Stack};

fn status(port: u16, token: &str) -> u16 {
    http::get_with_token(port, "/orders", token)
        .map(|r| r.status)
        .unwrap_or(0)
}

/// Revokes `token`'s jti and waits until the edge refuses it.
fn revocation_arrives(stack: &Stack, token: &str) {
    let jti = tokens::payload(token)["jti"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    stack.cp.revoke("jti", &jti);
    let port = stack.envoy.port;
    assert!(
        eventually(Duration::from_secs(15), || (status(port, token) == 401)
            .then_some(()))
        .is_some(),
        "revocation never arrived; logs in {}",
        stack.envoy.dir.0.display()
    );
}

fn short_bound(filter: &mut serde_json::Value) {
    filter["control_plane"]["poll_wait_seconds"] = json!(1);
    filter["staleness_bound_seconds"] = json!(5);
}

#[test]
fn a_filter_with_its_credential_stays_fresh_then_goes_stale_once_it_is_revoked() {
    let stack = Stack::start(|filter, _| short_bound(filter));
    let kept = stack.cp.issue("kate");
    let revoked = stack.cp.issue("liam");
    stack.envoy.wait_until_serving(&kept);
    revocation_arrives(&stack, &revoked);
    // Well past the staleness bound: the credentialed poller keeps the set fresh.
    std::thread::sleep(Duration::from_secs(7));
    let port = stack.envoy.port;
    assert_eq!(status(port, &kept), 200);
    assert_eq!(status(port, &revoked), 401);
    assert_eq!(
        stack
            .envoy
            .stat("wasmcustom.edge_filter.sync_refused.unauthorized"),
        0
    );

    // A revoked credential is a refusal like any other: the set goes stale, fail closed.
    stack.cp.edge_credential_command(&["revoke", "e2e"]);
    let failed_closed = eventually(Duration::from_secs(30), || {
        (status(port, &kept) == 503).then_some(())
    });
    assert!(failed_closed.is_some(), "never went stale");
    assert!(
        stack
            .envoy
            .stat("wasmcustom.edge_filter.sync_refused.unauthorized")
            > 0
    );
    // Envoy writes its log file on its own flush interval: the line may come later.
    let logged = eventually(Duration::from_secs(20), || {
        stack
            .envoy
            .filter_log()
            .iter()
            .any(|l| l.contains("refused control_plane.edge_credential"))
            .then_some(())
    });
    assert!(logged.is_some(), "{:?}", stack.envoy.filter_log());
}

#[test]
fn a_filter_with_a_wrong_credential_never_serves() {
    let stack = Stack::start(|filter, _| {
        short_bound(filter);
        filter["control_plane"]["edge_credential"] = json!("ec_wrong-credential");
    });
    let token = stack.cp.issue("mia");
    let port = stack.envoy.port;
    let refused = eventually(Duration::from_secs(30), || {
        (stack
            .envoy
            .stat("wasmcustom.edge_filter.sync_refused.unauthorized")
            > 0)
        .then_some(())
    });
    assert!(refused.is_some(), "the 401 was never counted");
    assert_eq!(status(port, &token), 503, "no verified set: fail closed");
    assert_eq!(
        stack.envoy.stat("wasmcustom.edge_filter.sync_updates"),
        0,
        "nothing applied"
    );
}

#[test]
fn an_old_filter_config_without_a_credential_keeps_working_while_the_control_plane_warns() {
    let turn = ONE_STACK_AT_A_TIME
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    // The upgrade path: new control planes (warn, the default) before the filters have
    // credentials in their config.
    let cp = ControlPlane::start_with(
        free_port(),
        vec![("CP_KEY_ACTIVATION_SECONDS".into(), "0".into())],
    );
    let upstream = Upstream::start();
    let mut filter = filter_config();
    short_bound(&mut filter);
    let envoy = Envoy::start(cp.port, upstream.port, &filter);
    let stack = Stack {
        envoy,
        cp,
        upstream,
        _turn: turn,
    };
    let kept = stack.cp.issue("noah");
    let revoked = stack.cp.issue("olga");
    stack.envoy.wait_until_serving(&kept);
    revocation_arrives(&stack, &revoked);
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(status(stack.envoy.port, &kept), 200, "still fresh");
    let metrics = http::get(stack.cp.port, "/metrics", &[])
        .expect("GET /metrics")
        .text();
    let unauthenticated: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("cp_edge_polls_unauthenticated_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(unauthenticated > 0, "counted:\n{metrics}");
}
