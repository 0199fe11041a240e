//! The fleet view: the control plane knows which edges poll it, where each is in the feed,
//! and which of them lack a revocation (`GET /v1/edge/fleet`, the CLI, `/metrics`).

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use tests::envoy::{Envoy, filter_config};
use tests::{eventually, http, paths};

use crate::Stack;

fn fleet(stack: &Stack, query: &str) -> Value {
    let auth = format!("Bearer {}", stack.cp.admin_secret());
    let r = http::get(
        stack.cp.port,
        &format!("/v1/edge/fleet{query}"),
        &[("authorization", &auth)],
    )
    .expect("GET /v1/edge/fleet");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn edge<'a>(view: &'a Value, instance: &str) -> &'a Value {
    view["edges"]
        .as_array()
        .and_then(|edges| edges.iter().find(|e| e["instance"] == instance))
        .unwrap_or_else(|| panic!("{instance} not in the fleet view: {view}"))
}

/// `control-plane fleet --server URL --event-id ID`: its exit code.
fn cli_holds(stack: &Stack, event_id: &str) -> Option<i32> {
    Command::new(paths::control_plane_bin())
        .args(["fleet", "--server"])
        .arg(format!("http://127.0.0.1:{}", stack.cp.port))
        .args([
            "--admin-secret",
            stack.cp.admin_secret(),
            "--event-id",
            event_id,
        ])
        .output()
        .expect("run control-plane fleet")
        .status
        .code()
}

fn metric(stack: &Stack, name: &str) -> Option<u64> {
    let text = http::get(stack.cp.port, "/metrics", &[]).ok()?.text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn the_fleet_view_shows_a_paused_edge_behind_and_a_stopped_one_disconnected() {
    let stack = Stack::start(|filter, _| {
        filter["control_plane"]["edge_instance"] = json!("edge-1");
    });
    let mut filter = filter_config();
    filter["control_plane"]["edge_credential"] = json!(stack.cp.edge_credential());
    filter["control_plane"]["edge_instance"] = json!("edge-2");
    let second = Envoy::start(stack.cp.port, stack.upstream.port, &filter);
    let token = stack.cp.issue("fleet");
    stack.envoy.wait_until_serving(&token);
    second.wait_until_serving(&token);

    let both = eventually(Duration::from_secs(10), || {
        let view = fleet(&stack, "");
        (view["summary"]["connected"] == 2 && view["summary"]["at_head"] == 2).then_some(view)
    })
    .expect("both edges connected at the head");
    for name in ["edge-1", "edge-2"] {
        let e = edge(&both, name);
        assert_eq!(e["credential"], "e2e", "{e}");
        assert_eq!(e["address"], "127.0.0.1", "{e}");
        assert_eq!(e["behind"], 0, "{e}");
    }

    // A hung edge: its connections stay open, it polls no more.
    second.pause();
    let auth = format!("Bearer {}", stack.cp.admin_secret());
    let revoked = http::post_json(
        stack.cp.port,
        "/revoke",
        &[("authorization", &auth)],
        &json!({"type": "revoke_jti", "value": "fleet-view-1"}),
    )
    .expect("revoke");
    assert_eq!(revoked.status, 200);
    let event_id = revoked.json()["event_id"]
        .as_str()
        .expect("event_id")
        .to_owned();
    let lagging = eventually(Duration::from_secs(10), || {
        let view = fleet(&stack, &format!("?event_id={event_id}"));
        (edge(&view, "edge-1")["behind"] == 0 && view["holds"]["holding"] == 1).then_some(view)
    })
    .expect("edge-1 holds the revocation");
    let missing = &lagging["holds"]["missing"];
    assert_eq!(missing.as_array().map(Vec::len), Some(1), "{lagging}");
    assert_eq!(missing[0]["edge"], "e2e/edge-2", "{lagging}");
    assert_eq!(lagging["holds"]["every_edge"], false);
    assert_eq!(edge(&lagging, "edge-2")["behind"], 1, "{lagging}");
    assert_eq!(
        cli_holds(&stack, &event_id),
        Some(1),
        "the CLI says an edge lacks it"
    );
    // Without a poll past the grace time, the hung edge shows as disconnected, still
    // behind; the series say so too.
    let gone = eventually(Duration::from_secs(15), || {
        let view = fleet(&stack, "");
        (edge(&view, "edge-2")["connected"] == false).then_some(view)
    })
    .expect("the paused edge shows as disconnected");
    assert_eq!(edge(&gone, "edge-2")["behind"], 1, "{gone}");
    assert!(
        edge(&gone, "edge-2")["lag_seconds"].as_i64() >= Some(5),
        "{gone}"
    );
    assert_eq!(metric(&stack, "cp_edges_connected"), Some(1));
    assert_eq!(metric(&stack, "cp_edges_known"), Some(2));

    // It comes back and catches up: every edge holds the revocation.
    second.resume();
    let caught_up = eventually(Duration::from_secs(15), || {
        let view = fleet(&stack, &format!("?event_id={event_id}"));
        (view["holds"]["every_edge"] == true && view["summary"]["connected"] == 2).then_some(view)
    });
    assert!(caught_up.is_some(), "edge-2 never caught up");
    assert_eq!(cli_holds(&stack, &event_id), Some(0));

    // Stopped for good: disconnected, and the others are unaffected.
    drop(second);
    let after = eventually(Duration::from_secs(15), || {
        let view = fleet(&stack, "");
        (edge(&view, "edge-2")["connected"] == false && view["summary"]["connected"] == 1)
            .then_some(view)
    });
    assert!(after.is_some(), "a stopped edge still shows as connected");
    let unknown = http::get(
        stack.cp.port,
        "/v1/edge/fleet?event_id=no-such-event",
        &[("authorization", &auth)],
    )
    .expect("GET");
    assert_eq!(unknown.status, 404);
    let anonymous = http::get(stack.cp.port, "/v1/edge/fleet", &[]).expect("GET");
    assert_eq!(
        anonymous.status, 401,
        "the fleet view needs the admin credential"
    );
}
