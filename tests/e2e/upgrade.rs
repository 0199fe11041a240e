//! Edges and control planes are upgraded at different times: an Envoy still running the
//! filter of a build from before the fleet feed (no feed id, no edge credential, no JWKS
//! announced in updates) keeps working against this control plane, as long as edge
//! credentials are only warned about (`docs/operations.md`, "Upgrade order").

use std::time::Duration;

use tests::control_plane::ControlPlane;
use tests::envoy::{Envoy, filter_config};
use tests::upstream::Upstream;
use tests::{eventually, free_port, http, paths, tokens};

/// The last commit before the fleet feed (issue 20) changed what an update carries.
const BEFORE_THE_FLEET_FEED: &str = "3b3d3e4^";

#[test]
fn a_filter_from_before_the_fleet_feed_keeps_working_while_credentials_are_warned_about() {
    // Built before taking the turn: the first run builds it (a minute or two), later runs
    // reuse it.
    let Some(wasm) = paths::old_filter_wasm(BEFORE_THE_FLEET_FEED) else {
        eprintln!(
            "NOT CHECKED: this checkout lacks {BEFORE_THE_FLEET_FEED} (a shallow clone?): \
             the upgrade test needs the repository's history"
        );
        return;
    };
    let _turn = crate::ONE_STACK_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let cp = ControlPlane::start_with(
        free_port(),
        vec![
            ("CP_EDGE_CREDENTIALS".into(), "warn".into()),
            ("CP_KEY_ACTIVATION_SECONDS".into(), "0".into()),
        ],
    );
    let upstream = Upstream::start();
    // The old filter refuses keys it does not know: its configuration is the one it was
    // shipped with, without an edge credential.
    let envoy = Envoy::start_with_filter(&wasm, cp.port, upstream.port, &filter_config());
    let status =
        |token: &str| http::get_with_token(envoy.port, "/api", token).map_or(0, |r| r.status);
    let token = cp.issue("old-edge");
    envoy.wait_until_serving(&token);
    let jti = tokens::payload(&token)["jti"]
        .as_str()
        .expect("jti")
        .to_owned();
    cp.revoke("jti", &jti);
    let refused = eventually(Duration::from_secs(20), || {
        (status(&token) == 401).then_some(())
    });
    assert!(
        refused.is_some(),
        "the old filter never refused the revoked token"
    );
    // A key rotation: tokens of the new key pass once the old filter refetches the JWKS
    // (it does not read the announcement new filters follow; it refetches on an unknown
    // kid).
    cp.rotate_keys();
    let fresh = cp.issue("after-rotation");
    let served = eventually(Duration::from_secs(20), || {
        (status(&fresh) == 200).then_some(())
    });
    assert!(
        served.is_some(),
        "the old filter refused a token of the new key"
    );
    let metrics = http::get(cp.port, "/metrics", &[]).expect("metrics").text();
    let unauthenticated: u64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("cp_edge_polls_unauthenticated_total ")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0);
    assert!(
        unauthenticated >= 1,
        "the polls without a credential are counted for the operator"
    );
}
