//! A real outage of the control plane: the last set holds, then the edge fails closed,
//! then it recovers on its own.

use std::time::Duration;

use serde_json::json;
use tests::{eventually, http, tokens};

use crate::Stack;

#[test]
fn with_the_control_plane_down_the_last_set_holds_then_requests_fail_closed_until_it_returns() {
    let stack = Stack::start(|filter, _| {
        filter["control_plane"]["poll_wait_seconds"] = json!(1);
        filter["staleness_bound_seconds"] = json!(5);
    });
    let mut stack = stack;
    let kept = stack.cp.issue("heidi");
    let revoked = stack.cp.issue("ivan");
    stack.envoy.wait_until_serving(&kept);
    let port = stack.envoy.port;
    let status = |token: &str| {
        http::get_with_token(port, "/orders", token)
            .map(|r| r.status)
            .unwrap_or(0)
    };
    let jti = tokens::payload(&revoked)["jti"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    stack.cp.revoke("jti", &jti);
    assert!(
        eventually(Duration::from_secs(15), || (status(&revoked) == 401)
            .then_some(()))
        .is_some(),
        "revocation never arrived"
    );

    stack.cp.stop();
    assert_eq!(status(&revoked), 401, "the last set is still enforced");
    assert_eq!(status(&kept), 200, "within the bound, valid tokens pass");

    let failed_closed = eventually(Duration::from_secs(60), || {
        (status(&kept) == 503).then_some(())
    });
    assert!(failed_closed.is_some(), "never failed closed");
    assert!(stack.envoy.stat("wasmcustom.edge_filter.sync_errors") > 0);
    assert!(stack.envoy.stat("wasmcustom.edge_filter.denied.stale_set") > 0);

    stack.cp.resume();
    let recovered = eventually(Duration::from_secs(60), || {
        (status(&kept) == 200).then_some(())
    });
    assert!(recovered.is_some(), "never recovered");
    assert_eq!(status(&revoked), 401, "the revocation survives the outage");
}
