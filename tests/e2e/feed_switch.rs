//! A feed has an identity: an edge whose control plane comes back from a backup (a new
//! feed whose sequence numbers again pass the edge's) takes a snapshot and misses no
//! revocation.

use std::process::Command;
use std::time::Duration;

use tests::tokens::{claims, mint};
use tests::{eventually, http, paths};

use crate::Stack;

/// Longest wait before a revocation counts as lost (a failure bound, not a measurement).
const BOUND: Duration = Duration::from_secs(20);

fn cli(data: &std::path::Path, args: &[&str]) -> String {
    let output = Command::new(paths::control_plane_bin())
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .output()
        .expect("run control-plane");
    assert!(
        output.status.success(),
        "control-plane {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn refused_within_bound(port: u16, token: &str, what: &str) {
    let refused = eventually(BOUND, || {
        http::get_with_token(port, "/orders", token)
            .ok()
            .filter(|r| r.status == 401)
    });
    assert!(refused.is_some(), "{what}: still accepted after {BOUND:?}");
}

#[test]
fn an_edge_whose_control_plane_is_restored_from_a_backup_misses_no_revocation() {
    let mut stack = Stack::with_test_key();
    let port = stack.envoy.port;
    let token = |sub: &str| mint(&claims(sub, &format!("jti-{sub}"), &format!("sid-{sub}")));
    let (ann, lost, x1, x2, x3) = (
        token("ann"),
        token("lost"),
        token("x1"),
        token("x2"),
        token("x3"),
    );
    stack.envoy.wait_until_serving(&x1);
    let data = stack.cp.dir.0.join("data");
    let backup = stack.cp.dir.0.join("backup.db");

    // Feed A: seq 1 is in the backup; seqs 2 and 3 are lost with the restore.
    stack.cp.revoke("sub", "ann");
    refused_within_bound(port, &ann, "ann");
    cli(&data, &["backup", "--to", backup.to_str().unwrap()]);
    stack.cp.revoke("sub", "lost");
    stack.cp.revoke("sub", "lost-too");
    refused_within_bound(port, &lost, "lost");
    // The edge's set is at seq 3 of feed A (and nothing was refused as a gap so far).
    assert_eq!(
        stack.envoy.stat("wasmcustom.edge_filter.sync_refused.gap"),
        0
    );

    // The restore starts feed B at seq 1; three revocations bring it to 4 before any edge
    // polls it. A delta from the edge's seq 3 would carry x3 alone: x1 and x2 would be
    // missed for as long as they live.
    stack.cp.stop();
    let restored = cli(
        &data,
        &["restore", "--from", backup.to_str().unwrap(), "--replace"],
    );
    assert!(restored.contains("\"feed\""), "{restored}");
    for sub in ["x1", "x2", "x3"] {
        cli(&data, &["revoke", "--type", "sub", "--value", sub]);
    }
    stack.cp.resume();
    for (sub, t) in [("x1", &x1), ("x2", &x2), ("x3", &x3), ("ann", &ann)] {
        refused_within_bound(port, t, sub);
    }
    // It got there by refusing feed B's delta (a gap, in the counters) and taking B's
    // snapshot, not by luck.
    assert!(
        stack.envoy.stat("wasmcustom.edge_filter.sync_refused.gap") >= 1,
        "the edge refused feed B's delta: {:?}",
        stack.envoy.stats()
    );
}
