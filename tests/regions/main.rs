//! Several regions as one system, against real services: a Kafka-protocol broker, Redis,
//! two control planes and, where the edge matters, an Envoy with the filter per region.
//!
//! Each test starts its own broker and Redis on free ports (so topics, groups and keys
//! never mix) and prints the figures it measures.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer as _, ThreadedProducer};
use serde_json::{Value, json};
use shared::keys::{Alg, SigningKey};
use shared::{Kind, RevocationEvent};
use tests::control_plane::ControlPlane;
use tests::envoy::{Envoy, Poller, filter_config, shipped_hcm_options};
use tests::services::{Broker, Redis};
use tests::upstream::Upstream;
use tests::{eventually, free_port, http};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn turn() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// Two regions `a` and `b` on one broker, each with its own Redis database.
struct Regions {
    a: ControlPlane,
    b: ControlPlane,
    broker: Broker,
    redis: Redis,
}

fn region_env(
    name: &str,
    broker: &Broker,
    redis: &Redis,
    db: u8,
    peers: &[u16],
) -> Vec<(String, String)> {
    let peer_jwks: Vec<String> = peers
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}/v1/region/jwks"))
        .collect();
    let mut env = vec![
        ("REGION".to_owned(), name.to_owned()),
        ("KAFKA_BOOTSTRAP".to_owned(), broker.bootstrap()),
        ("REDIS_URL".to_owned(), redis.url(db)),
        ("CP_KAFKA_FETCH_WAIT_MS".to_owned(), "10".to_owned()),
        ("CP_KEY_ACTIVATION_SECONDS".to_owned(), "1".to_owned()),
        ("CP_HOLDER_REVOKES_PER_MINUTE".to_owned(), "0".to_owned()),
    ];
    if !peer_jwks.is_empty() {
        env.push(("PEER_JWKS".to_owned(), peer_jwks.join(",")));
    }
    env
}

impl Regions {
    fn start() -> Regions {
        Regions::with(Broker::start())
    }

    fn with(broker: Broker) -> Regions {
        let redis = Redis::start();
        let (pa, pb) = (free_port(), free_port());
        let a = ControlPlane::start_with(pa, region_env("a", &broker, &redis, 0, &[pb]));
        let b = ControlPlane::start_with(pb, region_env("b", &broker, &redis, 1, &[pa]));
        // A started before B was listening: its first fetch of B's keys failed. Until
        // each holds the other's keys, an event of the other would be refused.
        hold_each_others_keys(&a, &b);
        Regions {
            a,
            b,
            broker,
            redis,
        }
    }
}

/// Waits (30 s at most) until each of `a` and `b` publishes the other's keys; panics
/// otherwise.
fn hold_each_others_keys(a: &ControlPlane, b: &ControlPlane) {
    for (holder, peer) in [(a, b), (b, a)] {
        let theirs = kids(
            &http::get(peer.port, "/v1/region/jwks", &[])
                .expect("region jwks")
                .json(),
        );
        let known = eventually(Duration::from_secs(30), || {
            let held = kids(&holder.jwks());
            theirs.iter().all(|k| held.contains(k)).then_some(())
        });
        assert!(
            known.is_some(),
            "port {} never fetched its peer's keys",
            holder.port
        );
    }
}

/// The `kid`s of a JWK Set.
fn kids(jwks: &Value) -> Vec<String> {
    jwks["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|k| k["kid"].as_str().map(str::to_owned))
        .collect()
}

fn admin(cp: &ControlPlane) -> String {
    format!("Bearer {}", cp.admin_secret())
}

/// Revokes through the API; the event id when it was acknowledged.
fn revoke(cp: &ControlPlane, kind: &str, value: &str) -> Option<String> {
    let reply = http::post_json(
        cp.port,
        "/revoke",
        &[("authorization", &admin(cp))],
        &json!({ "type": format!("revoke_{kind}"), "value": value }),
    )
    .ok()?;
    (reply.status == 200).then(|| reply.json()["event_id"].as_str().map(str::to_owned))?
}

fn is_revoked(cp: &ControlPlane, kind: &str, value: &str) -> bool {
    http::post_json(
        cp.port,
        "/v1/revocations/check",
        &[],
        &json!({ kind: value }),
    )
    .map(|r| r.json()["revoked"] == true)
    .unwrap_or(false)
}

/// Waits (30 s at most) until `cp` reports `kind` `value` revoked; panics otherwise.
fn wait_revoked(cp: &ControlPlane, kind: &str, value: &str) {
    let seen = eventually(Duration::from_secs(30), || {
        is_revoked(cp, kind, value).then_some(())
    });
    assert!(
        seen.is_some(),
        "{kind} {value} never revoked at port {}; its log ends with:\n{}",
        cp.port,
        cp.log_tail(30)
    );
}

fn metrics(cp: &ControlPlane) -> String {
    http::get(cp.port, "/metrics", &[])
        .map(|r| r.text())
        .unwrap_or_default()
}

fn metric(cp: &ControlPlane, series: &str) -> u64 {
    metrics(cp)
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

/// The audit log of a stopped or running region, via the CLI on its data dir.
fn audit_rows(cp: &ControlPlane) -> Vec<Value> {
    let out = std::process::Command::new(tests::paths::control_plane_bin())
        .args(["audit", "tail", "--limit", "1000000", "--data-dir"])
        .arg(cp.dir.0.join("data"))
        .output()
        .expect("run audit tail");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Vec<Value>>(&out.stdout).expect("audit tail prints JSON rows")
}

/// How many times each event id was applied at a region (from its audit log).
fn applied_counts(cp: &ControlPlane) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for row in audit_rows(cp) {
        if row["action"] == "revocation.applied"
            && let Some(id) = row["data"]["event"]["event_id"].as_str()
        {
            *counts.entry(id.to_owned()).or_default() += 1;
        }
    }
    counts
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[test]
fn a_token_revoked_at_a_is_refused_at_both_edges_within_milliseconds() {
    let _turn = turn();
    let regions = Regions::start();
    let upstream = Upstream::start();
    let mut filter = filter_config();
    filter["control_plane"]["jwks_refresh_seconds"] = json!(1);
    let edge_a = Envoy::start(regions.a.port, upstream.port, &filter);
    let edge_b = Envoy::start(regions.b.port, upstream.port, &filter);

    let first = regions.a.issue("alice");
    edge_a.wait_until_serving(&first);
    edge_b.wait_until_serving(&first);

    let status = |edge: &Envoy, token: &str| {
        http::get_with_token(edge.port, "/api", token).map_or(0, |r| r.status)
    };
    let (mut at_a, mut at_b) = (Vec::new(), Vec::new());
    for i in 0..200 {
        let token = regions.a.issue(&format!("user-{i}"));
        assert_eq!(status(&edge_a, &token), 200);
        assert_eq!(status(&edge_b, &token), 200, "B accepts A's tokens");
        let jti = tests::tokens::payload(&token)["jti"]
            .as_str()
            .expect("jti")
            .to_owned();
        // The call runs beside the polling: the clock starts when the call is sent.
        let start = Instant::now();
        let (port, auth) = (regions.a.port, admin(&regions.a));
        let call = std::thread::spawn(move || {
            http::post_json(
                port,
                "/revoke",
                &[("authorization", &auth)],
                &json!({ "type": "revoke_jti", "value": jti }),
            )
            .map(|r| r.status)
        });
        let (mut done_a, mut done_b) = (None, None);
        while done_a.is_none() || done_b.is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "revocation {i} never arrived"
            );
            if done_a.is_none() && status(&edge_a, &token) == 401 {
                done_a = Some(start.elapsed());
            }
            if done_b.is_none() && status(&edge_b, &token) == 401 {
                done_b = Some(start.elapsed());
            }
        }
        assert_eq!(call.join().expect("revoke thread").ok(), Some(200));
        at_a.push(done_a.expect("a").as_secs_f64() * 1000.0);
        at_b.push(done_b.expect("b").as_secs_f64() * 1000.0);
    }
    at_a.sort_by(f64::total_cmp);
    at_b.sort_by(f64::total_cmp);
    println!(
        "revoke call at A -> first 401, over {} revocations: same region (A's Envoy) p50 {:.1} ms p99 {:.1} ms; \
         cross region (B's Envoy) p50 {:.1} ms p99 {:.1} ms",
        at_a.len(),
        percentile(&at_a, 0.5),
        percentile(&at_a, 0.99),
        percentile(&at_b, 0.5),
        percentile(&at_b, 0.99),
    );
}

/// Two control planes behind one Envoy cluster (here the two regions, which hold the same
/// revocations through the broker): successive polls go to each in turn, and each counts
/// its feed in its own numbering. The edge takes no delta across feeds (it resnapshots
/// on a switch), so it never misses a revocation and never goes stale; the churn of
/// those snapshots is the replicas issue's to remove.
#[test]
fn an_edge_polling_two_control_planes_in_turn_misses_no_revocation() {
    let _turn = turn();
    let regions = Regions::start();
    let upstream = Upstream::start();
    let mut filter = filter_config();
    filter["control_plane"]["jwks_refresh_seconds"] = json!(1);
    let edge = Envoy::start_balanced(
        &[regions.a.port, regions.b.port],
        upstream.port,
        &filter,
        &shipped_hcm_options(),
        Poller::Service,
    );
    let status =
        |token: &str| http::get_with_token(edge.port, "/api", token).map_or(0, |r| r.status);
    let first = regions.a.issue("alice");
    edge.wait_until_serving(&first);

    let mut revoked: Vec<String> = Vec::new();
    for i in 0..12 {
        // Issued and revoked at either region, so each feed sees its own and the other's.
        let (issuer, revoker) = if i % 2 == 0 {
            (&regions.a, &regions.b)
        } else {
            (&regions.b, &regions.a)
        };
        let token = issuer.issue(&format!("two-feeds-{i}"));
        assert_eq!(
            status(&token),
            200,
            "token {i} accepted before its revocation"
        );
        let jti = tests::tokens::payload(&token)["jti"]
            .as_str()
            .expect("jti")
            .to_owned();
        revoke(revoker, "jti", &jti).expect("revocation acknowledged");
        // Both feeds hold it: from here, whichever the edge polls, it must refuse it.
        wait_revoked(&regions.a, "jti", &jti);
        wait_revoked(&regions.b, "jti", &jti);
        let refused = eventually(Duration::from_secs(20), || {
            (status(&token) == 401).then_some(())
        });
        assert!(refused.is_some(), "revocation {i} never reached the edge");
        revoked.push(token);
        // Every earlier revocation still holds while the polls keep switching feeds.
        for (k, t) in revoked.iter().enumerate() {
            assert_eq!(
                status(t),
                401,
                "revocation {k} lost after a feed switch (round {i})"
            );
        }
    }
    // A few more switches with nothing new: nothing comes back, nothing goes stale.
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        for (k, t) in revoked.iter().enumerate() {
            assert_eq!(status(t), 401, "revocation {k} lost while idle");
        }
        let fresh = regions.a.issue("still-served");
        assert_eq!(status(&fresh), 200, "a valid token refused (stale set?)");
        std::thread::sleep(Duration::from_millis(200));
    }
    let switches = edge.stat("wasmcustom.edge_filter.sync_refused.gap");
    println!("deltas of the other feed refused (each followed by a snapshot): {switches}");
    assert!(
        switches >= 1,
        "the polls never met the other feed: the test proves nothing"
    );
}

/// Two replicas of region a on `broker` and `redis`: each its own SQLite and consumer
/// group, each trusting the other's keys as region a's (`PEER_JWKS` `a=URL`) and naming
/// the other in `CP_REPLICA_URLS`; both with the same `admin.secret` and
/// `dpop-nonce.secret` and one edge credential (`edge-credential import`), required.
fn start_replicas(broker: &Broker, redis: &Redis) -> (ControlPlane, ControlPlane) {
    let (p1, p2) = (free_port(), free_port());
    let env = |sibling: u16| {
        let mut env = region_env("a", broker, redis, 0, &[]);
        env.push((
            "PEER_JWKS".to_owned(),
            format!("a=http://127.0.0.1:{sibling}/v1/region/jwks"),
        ));
        env.push((
            "CP_REPLICA_URLS".to_owned(),
            format!("http://127.0.0.1:{sibling}"),
        ));
        env.push(("CP_EDGE_CREDENTIALS".to_owned(), "required".to_owned()));
        // Each replica reads the whole topic: its own consumer group.
        env.push(("CP_KAFKA_GROUP".to_owned(), format!("cp-a-{sibling}")));
        env
    };
    let home = ControlPlane::start_with(p1, env(p2));
    // Replicas share the admin credential and the DPoP nonce secret (the launcher copies
    // replica 1's before the other's first start). Not by a restart: a consumer killed
    // while it joins its group can leave the broker waiting for it (tansu held the group
    // for over 30 s once).
    let other = ControlPlane::start_seeded(p2, env(p1), |data| {
        for file in ["admin.secret", "dpop-nonce.secret"] {
            std::fs::copy(home.dir.0.join("data").join(file), data.join(file))
                .unwrap_or_else(|e| panic!("copy {file}: {e}"));
        }
    });
    let secret_file = home.dir.0.join("fleet.secret");
    std::fs::write(&secret_file, home.edge_credential()).expect("write secret");
    other.edge_credential_command(&[
        "import",
        "--name",
        "fleet",
        "--secret-file",
        secret_file.to_str().expect("utf-8 path"),
    ]);
    hold_each_others_keys(&home, &other);
    (home, other)
}

/// Four edges, two at home on each replica (each lists its home first); the first
/// replica is killed: its two edges move to the other; it comes back: they return home,
/// so the fleet is even again (2 and 2). The times are printed.
#[test]
fn edges_spread_back_evenly_when_a_killed_replica_returns() {
    let _turn = turn();
    let broker = Broker::start();
    let redis = Redis::start();
    let (mut one, two) = start_replicas(&broker, &redis);
    let upstream = Upstream::start();
    let edges: Vec<Envoy> = (0..4)
        .map(|i| {
            let mut filter = filter_config();
            filter["control_plane"]["edge_credential"] = json!(one.edge_credential());
            filter["control_plane"]["edge_instance"] = json!(format!("edge-{i}"));
            let order = if i % 2 == 0 {
                [one.port, two.port]
            } else {
                [two.port, one.port]
            };
            Envoy::start_with_cluster(
                tests::envoy::replica_cluster(&order),
                upstream.port,
                &filter,
                &shipped_hcm_options(),
                Poller::Service,
            )
        })
        .collect();
    let token = one.issue("spread");
    for edge in &edges {
        edge.wait_until_serving(&token);
    }
    let (p1, p2) = (one.port, two.port);
    // The replica at `port`: edges with a poll in progress or answered in the last 5 s.
    let connected = |port: u16| {
        http::get(port, "/metrics", &[])
            .map(|r| r.text())
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("cp_edges_connected ")?.trim().parse().ok())
            .unwrap_or(0u64)
    };
    let split = |a: u64, b: u64, within: Duration| {
        eventually(within, || {
            (connected(p1) == a && connected(p2) == b).then_some(())
        })
    };
    assert!(
        split(2, 2, Duration::from_secs(60)).is_some(),
        "the edges never settled at their homes (connected: {} and {})",
        connected(p1),
        connected(p2)
    );
    one.stop();
    let killed = Instant::now();
    let moved = eventually(Duration::from_secs(60), || {
        (connected(p2) == 4).then_some(())
    });
    assert!(moved.is_some(), "the killed replica's edges never moved");
    let moved_after = killed.elapsed();
    one.resume();
    let returned = Instant::now();
    assert!(
        split(2, 2, Duration::from_secs(120)).is_some(),
        "the fleet is not even 2 minutes after the replica returned (connected: {} and {})",
        connected(p1),
        connected(p2)
    );
    println!(
        "4 edges, 2 at home on each replica: all 4 on the survivor {moved_after:?} after the \
         kill; 2 and 2 again {:?} after the killed replica was back",
        returned.elapsed()
    );
    for edge in &edges {
        assert_eq!(
            http::get_with_token(edge.port, "/api", &token).map_or(0, |r| r.status),
            200,
            "a valid token was refused at an edge"
        );
    }
}

/// Two replicas of region a behind one address (`a.example`, as a balancer in front of
/// them would be; each request here picks its replica): a refresh session lives on the
/// replica that created it, and a request about it that reaches the other is passed to
/// it. Refreshes work on either replica; 32 races of one refresh token on both give one
/// winner each; a rotated token presented to the other replica is reuse and revokes the
/// family everywhere; a DPoP nonce of one is accepted through the other, and a proof
/// used through one replica is refused through the other (at a refresh, and at a
/// holder's revocation of a bound access token); a holder's RFC 7009 revocation on the
/// replica that does not hold the session revokes it.
#[test]
fn refresh_sessions_are_one_across_replicas() {
    let _turn = turn();
    let broker = Broker::start();
    let redis = Redis::start();
    let (home, other) = start_replicas(&broker, &redis);
    let auth = admin(&home);
    let host = "a.example";
    let post = |cp: &ControlPlane, path: &str, headers: &[(&str, &str)], body: &Value| {
        let mut all: Vec<(&str, &[u8])> = vec![("content-type", b"application/json")];
        all.extend(headers.iter().map(|(n, v)| (*n, v.as_bytes())));
        http::send_as(
            cp.port,
            host,
            "POST",
            path,
            &all,
            body.to_string().as_bytes(),
        )
        .expect(path)
    };
    let create = |cp: &ControlPlane, body: Value| {
        let created = post(
            cp,
            "/token/refresh/create",
            &[("authorization", &auth)],
            &body,
        );
        assert_eq!(created.status, 200, "{}", created.text());
        created.json()
    };
    let refresh = |cp: &ControlPlane, token: &str| {
        post(
            cp,
            "/token/refresh",
            &[],
            &json!({ "refresh_token": token }),
        )
    };

    // Created on one, refreshed on the other (and back).
    let session = create(&home, json!({ "subject": "rita" }));
    let first = refresh(&other, session["refresh_token"].as_str().unwrap());
    assert_eq!(first.status, 200, "{}", first.text());
    let second = refresh(&home, first.json()["refresh_token"].as_str().unwrap());
    assert_eq!(second.status, 200, "{}", second.text());
    assert!(
        metrics(&other).contains("cp_replica_session_requests_total{outcome=\"answered\"} 1"),
        "the other replica did not pass the refresh on"
    );

    // 32 races of one token, one request on each replica at once.
    let mut two_winners = 0;
    for i in 0..32 {
        let creator = if i % 2 == 0 { &home } else { &other };
        let token = create(creator, json!({ "subject": format!("racer-{i}") }))["refresh_token"]
            .as_str()
            .unwrap()
            .to_owned();
        let statuses = std::thread::scope(|scope| {
            let racers = [&home, &other].map(|cp| {
                let token = token.clone();
                scope.spawn(move || refresh(cp, &token))
            });
            racers.map(|r| r.join().expect("racer"))
        });
        let won = statuses.iter().filter(|r| r.status == 200).count();
        let lost: Vec<&tests::http::Response> =
            statuses.iter().filter(|r| r.status != 200).collect();
        assert!(won >= 1, "race {i}: nobody won: {}", lost[0].text());
        // The loser met the winner's rotation at the session's replica: reuse.
        for r in &lost {
            assert_eq!(r.status, 400, "race {i}: {}", r.text());
            assert!(r.text().contains("reuse"), "race {i}: {}", r.text());
        }
        if won > 1 {
            two_winners += 1;
        }
    }
    println!("refresh races across replicas: 32, with two winners: {two_winners}");
    assert_eq!(two_winners, 0);

    // Reuse through the other replica revokes the family, and its tokens everywhere.
    let session = create(&home, json!({ "subject": "uwe" }));
    let rotated_from = session["refresh_token"].as_str().unwrap().to_owned();
    let rotated = refresh(&home, &rotated_from);
    assert_eq!(rotated.status, 200, "{}", rotated.text());
    let access = rotated.json()["access_token"].as_str().unwrap().to_owned();
    let reused = refresh(&other, &rotated_from);
    assert_eq!(reused.status, 400, "{}", reused.text());
    assert!(reused.text().contains("reuse"), "{}", reused.text());
    let next = refresh(&other, rotated.json()["refresh_token"].as_str().unwrap());
    assert_eq!(next.status, 400, "the family lives on: {}", next.text());
    for cp in [&home, &other] {
        let refused = eventually(Duration::from_secs(10), || {
            let v = post(cp, "/token/validate", &[], &json!({ "token": access }));
            (v.json()["valid"] == false).then_some(())
        });
        assert!(refused.is_some(), "a reused family's token still validates");
    }

    // A device-bound session through the standard token endpoint: the nonce one replica
    // hands out works through the other; a proof used once is refused through either.
    let device = SigningKey::generate(Alg::EdDsa);
    let session = create(
        &home,
        json!({ "subject": "dora", "device_jwk": device.verifying_key().to_jwk() }),
    );
    let token_request = |cp: &ControlPlane, token: &str, proof: &str| {
        let form = format!("grant_type=refresh_token&refresh_token={token}");
        http::send_as(
            cp.port,
            host,
            "POST",
            "/oauth2/token",
            &[
                ("content-type", b"application/x-www-form-urlencoded"),
                ("dpop", proof.as_bytes()),
            ],
            form.as_bytes(),
        )
        .expect("token endpoint")
    };
    let proof = |nonce: Option<String>| {
        shared::dpop::sign_proof(
            &device,
            &shared::dpop::DpopClaims {
                jti: shared::random::id(),
                htm: "POST".into(),
                htu: format!("http://{host}/oauth2/token"),
                iat: tests::tokens::now(),
                ath: None,
                nonce,
            },
        )
        .expect("proof")
    };
    let token = session["refresh_token"].as_str().unwrap();
    let asked = token_request(&other, token, &proof(None));
    assert_eq!(asked.status, 400, "{}", asked.text());
    assert!(asked.text().contains("use_dpop_nonce"), "{}", asked.text());
    let nonce = other_nonce(&other, host);
    let used = proof(Some(nonce));
    let done = token_request(&other, token, &used);
    assert_eq!(done.status, 200, "{}", done.text());
    let next = done.json()["refresh_token"].as_str().unwrap().to_owned();
    for cp in [&home, &other] {
        let replay = token_request(cp, &next, &used);
        assert_eq!(replay.status, 400, "{}", replay.text());
        assert!(
            replay.text().contains("invalid_dpop_proof"),
            "{}",
            replay.text()
        );
    }

    // A holder's revocation of a bound access token is checked where it arrives, and
    // the proof recorded on every replica: replayed on the other, it is refused there.
    let bound = bound_token(home.port, &auth, "dora", &device);
    let revoke_proof = shared::dpop::sign_proof(
        &device,
        &shared::dpop::DpopClaims {
            jti: shared::random::id(),
            htm: "POST".into(),
            htu: format!("http://{host}/revoke/token"),
            iat: tests::tokens::now(),
            ath: Some(shared::dpop::ath(&bound)),
            nonce: None,
        },
    )
    .expect("proof");
    let holder_revoke = |cp: &ControlPlane| {
        post(
            cp,
            "/revoke/token",
            &[("dpop", &revoke_proof)],
            &json!({ "token": bound }),
        )
    };
    let first = holder_revoke(&other);
    assert_eq!(first.status, 200, "{}", first.text());
    let replay = holder_revoke(&home);
    assert_eq!(replay.status, 401, "{}", replay.text());
    assert!(replay.text().contains("replay"), "{}", replay.text());

    // A holder's RFC 7009 revocation of a refresh token, on the replica without it.
    let session = create(&home, json!({ "subject": "ines" }));
    let token = session["refresh_token"].as_str().unwrap();
    let revoked = http::send_as(
        other.port,
        host,
        "POST",
        "/oauth2/revoke",
        &[("content-type", b"application/x-www-form-urlencoded")],
        format!("token={token}").as_bytes(),
    )
    .expect("oauth2/revoke");
    assert_eq!(revoked.status, 200, "{}", revoked.text());
    let after = refresh(&home, token);
    assert_eq!(
        after.status,
        400,
        "the session was not revoked: {}",
        after.text()
    );
    assert!(after.text().contains("revoked"), "{}", after.text());

    // Unknown everywhere is still the plain answer.
    let unknown = refresh(&other, "rt_nobody-has-this-one");
    assert_eq!(unknown.status, 400, "{}", unknown.text());
    assert!(unknown.text().contains("not known"), "{}", unknown.text());

    // A key rotation on one replica reaches the other: a token signed by the new key
    // (active after CP_KEY_ACTIVATION_SECONDS, 1 s here) validates there.
    home.rotate_keys();
    std::thread::sleep(Duration::from_millis(1500));
    let rotated = home.issue("after-rotation");
    let validated = eventually(Duration::from_secs(10), || {
        let v = post(&other, "/token/validate", &[], &json!({ "token": rotated }));
        (v.json()["valid"] == true).then_some(())
    });
    assert!(
        validated.is_some(),
        "the other replica refuses the rotated key's token"
    );

    // One audit chain per replica, each verifiable on its own.
    for cp in [&home, &other] {
        let out = std::process::Command::new(tests::paths::control_plane_bin())
            .args(["audit", "verify", "--data-dir"])
            .arg(cp.dir.0.join("data"))
            .output()
            .expect("run audit verify");
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A rolling restart of two replicas (SIGTERM, start again, one after the other) while
/// clients refresh their sessions and an operator revokes, every request through a real
/// Envoy in front of both ([`Envoy::front`]: round robin, another replica on a refused
/// connection or a 503), the clients sending a request again after `Retry-After` on a
/// 503: no request fails in a way a retry does not fix, and every refresh session
/// survives.
#[test]
fn a_rolling_restart_of_the_replicas_under_refresh_and_revocation_load_fails_no_client() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let _turn = turn();
    let broker = Broker::start();
    let redis = Redis::start();
    let (mut home, mut other) = start_replicas(&broker, &redis);
    let front = Envoy::front(&[home.port, other.port]);
    let port = front.port;
    let auth = admin(&home);
    let stop = Arc::new(AtomicBool::new(false));
    let retried = Arc::new(AtomicU64::new(0));
    // One request through the front, sent again after a 503's Retry-After (1 s), 60 s
    // at most.
    let through = {
        let retried = retried.clone();
        move |path: &str, headers: &[(&str, &str)], body: &Value| {
            let started = Instant::now();
            loop {
                match http::post_json(port, path, headers, body) {
                    Ok(r) if r.status != 503 => return Ok(r),
                    Ok(r) if started.elapsed() > Duration::from_secs(60) => return Ok(r),
                    Err(e) => return Err(e.to_string()),
                    Ok(_) => std::thread::sleep(Duration::from_secs(1)),
                }
                retried.fetch_add(1, Ordering::Relaxed);
            }
        }
    };
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (stop, through, auth) = (stop.clone(), through.clone(), auth.clone());
            std::thread::spawn(move || {
                let created = through(
                    "/token/refresh/create",
                    &[("authorization", &auth)],
                    &json!({ "subject": format!("roller-{c}") }),
                )
                .expect("create");
                assert_eq!(created.status, 200, "{}", created.text());
                let mut token = created.json()["refresh_token"].as_str().unwrap().to_owned();
                let (mut done, mut failed) = (0u64, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    match through("/token/refresh", &[], &json!({ "refresh_token": token })) {
                        Ok(r) if r.status == 200 => {
                            token = r.json()["refresh_token"].as_str().unwrap().to_owned();
                            done += 1;
                        }
                        Ok(r) => failed.push(format!("refresh: {} {}", r.status, r.text())),
                        Err(e) => failed.push(format!("refresh: {e}")),
                    }
                    if !failed.is_empty() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                (done, failed)
            })
        })
        .collect();
    let revoker = {
        let (stop, through, auth) = (stop.clone(), through.clone(), auth.clone());
        std::thread::spawn(move || {
            let (mut done, mut failed) = (0u64, Vec::new());
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let body = json!({ "type": "revoke_jti", "value": format!("rolling-{i}") });
                match through("/revoke", &[("authorization", &auth)], &body) {
                    Ok(r) if r.status == 200 => done += 1,
                    Ok(r) => failed.push(format!("revoke: {} {}", r.status, r.text())),
                    Err(e) => failed.push(format!("revoke: {e}")),
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (done, failed)
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    home.terminate();
    std::thread::sleep(Duration::from_secs(1));
    home.resume();
    std::thread::sleep(Duration::from_secs(2));
    other.terminate();
    std::thread::sleep(Duration::from_secs(1));
    other.resume();
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let (mut refreshes, mut failures) = (0, Vec::new());
    for client in clients {
        let (done, failed) = client.join().expect("client");
        refreshes += done;
        failures.extend(failed);
    }
    let (revocations, failed) = revoker.join().expect("revoker");
    failures.extend(failed);
    println!(
        "rolling restart of 2 replicas: {refreshes} refreshes, {revocations} revocations, \
         {} requests sent again after a 503, {} failed; the front retried {} times",
        retried.load(Ordering::Relaxed),
        failures.len(),
        front.stat("cluster.replicas.upstream_rq_retry")
    );
    assert!(failures.is_empty(), "{failures:?}");
    assert!(refreshes > 0 && revocations > 0, "no load ran");
}

/// The DPoP nonce a replica hands out at its token endpoint.
fn other_nonce(cp: &ControlPlane, host: &str) -> String {
    let answer = http::send_as(
        cp.port,
        host,
        "POST",
        "/oauth2/token",
        &[("content-type", b"application/x-www-form-urlencoded")],
        b"grant_type=refresh_token",
    )
    .expect("token endpoint");
    answer
        .header("dpop-nonce")
        .expect("a DPoP-Nonce header")
        .to_owned()
}

/// Two replicas of region a: each its own SQLite, one broker and Redis, each trusting
/// the other's keys as region a's (`PEER_JWKS` `a=URL`), one edge credential on both
/// (`edge-credential import`). One Envoy lists both in its control-plane cluster, the
/// first as its home, with health checks and outlier detection (as `scripts/run.sh
/// --replicas 2` writes it). While a client checks tokens at the edge without pause and
/// revocations flow, the home replica is killed (-9) right after acknowledging a
/// revocation, and later comes back; then the other one restarts (a rolling restart): no
/// valid token is refused (no 503, no stale set), no revoked token is accepted, and the
/// edge moves to the survivor and back on its own.
#[test]
fn an_edge_fails_over_between_replicas_with_no_refused_request_and_no_missed_revocation() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let _turn = turn();
    let broker = Broker::start();
    let redis = Redis::start();
    let (mut home, mut other) = start_replicas(&broker, &redis);
    let (p1, p2) = (home.port, other.port);
    let upstream = Upstream::start();
    let mut filter = filter_config();
    filter["control_plane"]["edge_credential"] = json!(home.edge_credential());
    filter["control_plane"]["jwks_refresh_seconds"] = json!(1);
    let edge = Envoy::start_with_cluster(
        tests::envoy::replica_cluster(&[p1, p2]),
        upstream.port,
        &filter,
        &shipped_hcm_options(),
        Poller::Service,
    );
    let valid: Vec<String> = (0..4)
        .map(|i| [&home, &other][i % 2].issue(&format!("valid-{i}")))
        .collect();
    edge.wait_until_serving(&valid[0]);
    let connected = |cp: &ControlPlane| metric(cp, "cp_edges_connected ");
    // The edge polls its home (its first polls may have gone to the other replica while
    // the home's first health checks were pending; the other then counts it connected for
    // a few seconds more, which does not matter here).
    let settled = eventually(Duration::from_secs(60), || {
        (connected(&home) == 1).then_some(())
    });
    let ready = |cp: &ControlPlane| {
        http::get(cp.port, "/v1/edge/ready", &[]).map_or_else(|e| e.to_string(), |r| r.text())
    };
    assert!(
        settled.is_some(),
        "the edge does not poll its home replica (connected: home {}, other {}; \
         /v1/edge/ready: home {}, other {})",
        connected(&home),
        connected(&other),
        ready(&home),
        ready(&other)
    );

    let status =
        |port: u16, token: &str| http::get_with_token(port, "/api", token).map_or(0, |r| r.status);
    let revoked: Arc<Mutex<Vec<String>>> = Arc::default();
    let revoke_at = |cp: &ControlPlane, name: &str| {
        let token = cp.issue(name);
        assert_eq!(status(edge.port, &token), 200, "{name} accepted before");
        let jti = tests::tokens::payload(&token)["jti"]
            .as_str()
            .expect("jti")
            .to_owned();
        revoke(cp, "jti", &jti).expect("revocation acknowledged");
        let refused = eventually(Duration::from_secs(20), || {
            (status(edge.port, &token) == 401).then_some(())
        });
        assert!(refused.is_some(), "{name} never refused at the edge");
        revoked.lock().expect("lock").push(token);
    };
    revoke_at(&home, "before-1");
    revoke_at(&other, "before-2");
    // Each replica applies the other's events before anything fails.
    let jti_of = |token: &str| {
        tests::tokens::payload(token)["jti"]
            .as_str()
            .expect("jti")
            .to_owned()
    };
    let (before_1, before_2) = {
        let list = revoked.lock().expect("lock");
        (jti_of(&list[0]), jti_of(&list[1]))
    };
    wait_revoked(&other, "jti", &before_1);
    wait_revoked(&home, "jti", &before_2);

    // A client at the edge, without pause: every valid token must pass, every revoked
    // one must be refused, whatever the replicas do.
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (stop, revoked, valid, port) =
            (stop.clone(), revoked.clone(), valid.clone(), edge.port);
        std::thread::spawn(move || {
            let (mut checks, mut bad) = (0u64, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                for token in &valid {
                    let got = status(port, token);
                    checks += 1;
                    if got != 200 {
                        bad.push(format!("valid token answered {got}"));
                    }
                }
                let revoked = revoked.lock().expect("lock").clone();
                for token in &revoked {
                    let got = status(port, token);
                    checks += 1;
                    if got != 401 {
                        bad.push(format!("revoked token answered {got}"));
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (checks, bad)
        })
    };

    // Acknowledged by the home replica, which dies right after.
    let last = home.issue("last-words");
    let jti = tests::tokens::payload(&last)["jti"]
        .as_str()
        .expect("jti")
        .to_owned();
    let acknowledged = http::post_json(
        home.port,
        "/revoke",
        &[("authorization", &admin(&home))],
        &json!({ "type": "revoke_jti", "value": jti }),
    )
    .expect("revoke");
    // The answer says the broker has it: then the replica's death cannot lose it.
    assert_eq!(acknowledged.status, 200, "{}", acknowledged.text());
    assert_eq!(
        acknowledged.json()["published"],
        true,
        "{}",
        acknowledged.text()
    );
    let killed_at = Instant::now();
    home.stop();
    wait_revoked(&other, "jti", &jti);
    let refused = eventually(Duration::from_secs(20), || {
        (status(edge.port, &last) == 401).then_some(())
    });
    assert!(
        refused.is_some(),
        "the last revocation of the killed replica never reached the edge"
    );
    revoked.lock().expect("lock").push(last);
    // Revocations keep flowing at the survivor, past the edge's staleness bound (10 s).
    while killed_at.elapsed() < Duration::from_secs(14) {
        revoke_at(
            &other,
            &format!("during-{}", killed_at.elapsed().as_millis()),
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let moved = connected(&other);
    let failed_over = edge.stat("cluster.control_plane.upstream_rq_200");

    // The home replica comes back: the edge returns to it.
    home.resume();
    let back = eventually(Duration::from_secs(120), || {
        (connected(&home) == 1).then_some(())
    });
    let back_after = killed_at.elapsed();
    revoke_at(&home, "after-return");
    revoke_at(&other, "after-return-2");
    // One call over both replicas: every connected edge holds the last revocation.
    let last_event = revoke(&other, "jti", "fleet-check").expect("revocation acknowledged");
    wait_revoked(&home, "jti", "fleet-check");
    let servers = format!("http://127.0.0.1:{p1},http://127.0.0.1:{p2}");
    let held = eventually(Duration::from_secs(20), || {
        let out = std::process::Command::new(tests::paths::control_plane_bin())
            .args(["fleet", "--server", &servers, "--event-id", &last_event])
            .args(["--admin-secret", home.admin_secret()])
            .output()
            .expect("control-plane fleet");
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    });
    let held = held.expect("the fleet never held the last revocation (across replicas)");
    assert!(held.contains("\"replicas\""), "{held}");
    // The rest of a rolling restart: the other replica too, while the edge polls its home.
    other.stop();
    revoke_at(&home, "during-rolling");
    other.resume();
    revoke_at(&other, "after-rolling");
    stop.store(true, Ordering::Relaxed);
    let (checks, bad) = client.join().expect("client thread");
    println!(
        "replica failover: {checks} checks at the edge, {} wrong; polls answered {failed_over}; \
         {} revocations enforced; home again after {back_after:?}",
        bad.len(),
        revoked.lock().expect("lock").len()
    );
    assert!(
        bad.is_empty(),
        "wrong answers at the edge: {:?}",
        &bad[..bad.len().min(10)]
    );
    assert_eq!(moved, 1, "the edge never polled the surviving replica");
    assert!(
        back.is_some(),
        "the edge never went back to its home replica"
    );
    assert!(checks > 100, "the client barely ran: {checks}");
}

/// The health check edges fail over by: `/v1/edge/ready` answers 503 while the control
/// plane cannot reach its broker (it would miss the region's other revocations), and 200
/// again once it can; `/ready` keeps answering 200 (the control plane still serves).
#[test]
fn the_edge_health_check_fails_while_the_broker_is_cut_and_recovers() {
    let _turn = turn();
    let broker = Broker::start_cuttable();
    let redis = Redis::start();
    let cp = ControlPlane::start_with(free_port(), region_env("a", &broker, &redis, 0, &[]));
    let edge_ready = || {
        http::get(cp.port, "/v1/edge/ready", &[])
            .map(|r| r.status)
            .unwrap_or(0)
    };
    assert_eq!(edge_ready(), 200);
    broker.cut();
    let cut_at = Instant::now();
    let failing = eventually(Duration::from_secs(10), || {
        (edge_ready() == 503).then_some(())
    });
    assert!(
        failing.is_some(),
        "/v1/edge/ready still 200 with the broker cut"
    );
    println!(
        "/v1/edge/ready answered 503 {:?} after the cut",
        cut_at.elapsed()
    );
    let reply = http::get(cp.port, "/v1/edge/ready", &[]).expect("GET");
    assert!(reply.text().contains("broker"), "{}", reply.text());
    assert_eq!(http::get(cp.port, "/ready", &[]).expect("GET").status, 200);
    broker.restore();
    let back = eventually(Duration::from_secs(30), || {
        (edge_ready() == 200).then_some(())
    });
    assert!(back.is_some(), "/v1/edge/ready never recovered");
}

/// A region that starts before its peer cannot fetch the peer's keys at first (it
/// retries every 2 s); an event the peer signs meanwhile waits for the keys and is
/// applied, never dropped as signed by an unknown key.
#[test]
fn an_event_of_a_peer_that_started_later_waits_for_its_keys_and_is_applied() {
    let _turn = turn();
    let broker = Broker::start();
    let redis = Redis::start();
    let (pa, pb) = (free_port(), free_port());
    let a = ControlPlane::start_with(pa, region_env("a", &broker, &redis, 0, &[pb]));
    std::thread::sleep(Duration::from_millis(300));
    let b = ControlPlane::start_with(pb, region_env("b", &broker, &redis, 1, &[pa]));
    for i in 0..3 {
        revoke(&b, "jti", &format!("before-a-knows-b-{i}")).expect("revoke at b");
    }
    for i in 0..3 {
        wait_revoked(&a, "jti", &format!("before-a-knows-b-{i}"));
    }
    assert!(
        !a.log_tail(200).contains("reason=\"unknown_key\""),
        "an event was refused for its key: {}",
        a.log_tail(40)
    );
}

#[test]
fn revocations_acknowledged_while_the_broker_is_down_all_reach_b_once() {
    let _turn = turn();
    // An outage that cuts every connection to the broker while it keeps its log (a
    // restart of the test's in-memory broker would also empty the log, which no real
    // broker does, and leave B's consumer past the new log's end).
    let regions = Regions::with(Broker::start_cuttable());
    // B is subscribed and working before the outage.
    revoke(&regions.a, "jti", "before-the-outage").expect("revoke");
    wait_revoked(&regions.b, "jti", "before-the-outage");
    regions.broker.cut();
    let mut acked = Vec::new();
    for i in 0..1000 {
        let value = format!("outage-{i}");
        let id = revoke(&regions.a, "jti", &value).expect("A acknowledges with the broker down");
        acked.push((id, value));
    }
    let depth = metric(&regions.a, "cp_outbox_depth ");
    println!("outbox depth at A with the broker down: {depth}");
    assert!(depth >= 1000, "{depth}");
    let stopped_at = Instant::now();
    regions.broker.restore();
    // The 1,000 land at once: B's tail reader applies some ahead of its consumer, and
    // the two counts together are every event applied.
    let applied = |cp: &ControlPlane| {
        metric(cp, "cp_consumer_events_total{result=\"applied\"} ")
            + metric(cp, "cp_consumer_events_total{result=\"applied_ahead\"} ")
    };
    let all = eventually(Duration::from_secs(240), || {
        (applied(&regions.b) >= 1001).then_some(())
    });
    assert!(
        all.is_some(),
        "B applied {} of 1001 (outbox depth at A {});\nA's log:\n{}\nB's log:\n{}",
        applied(&regions.b),
        metric(&regions.a, "cp_outbox_depth "),
        regions.a.log_tail(40),
        regions.b.log_tail(40)
    );
    println!(
        "1000 revocations made during the outage applied at B {:.1} s after the broker came back",
        stopped_at.elapsed().as_secs_f64()
    );
    for (_, value) in acked.iter().step_by(97) {
        assert!(
            is_revoked(&regions.b, "jti", value),
            "{value} not revoked at B"
        );
    }
    let counts = applied_counts(&regions.b);
    for (id, value) in &acked {
        assert_eq!(
            counts.get(id),
            Some(&1),
            "{value} ({id}) applied {:?} times at B",
            counts.get(id)
        );
    }
    assert_eq!(metric(&regions.a, "cp_outbox_depth "), 0);
}

#[test]
fn every_revocation_a_acknowledged_before_kill_9_reaches_b() {
    let _turn = turn();
    let mut regions = Regions::start();
    let port = regions.a.port;
    let secret = regions.a.admin_secret().to_owned();
    let acked = Arc::new(Mutex::new(Vec::new()));
    let load = {
        let acked = acked.clone();
        std::thread::spawn(move || {
            for i in 0..100_000 {
                let value = format!("crash-{i}");
                let reply = http::post_json(
                    port,
                    "/revoke",
                    &[("authorization", &format!("Bearer {secret}"))],
                    &json!({ "type": "revoke_jti", "value": value }),
                );
                match reply {
                    Ok(r) if r.status == 200 => acked.lock().unwrap().push(value),
                    _ => break,
                }
            }
        })
    };
    assert!(
        eventually(Duration::from_secs(30), || (acked.lock().unwrap().len()
            >= 150)
            .then_some(()))
        .is_some()
    );
    regions.a.stop(); // SIGKILL
    load.join().expect("load thread");
    let acked = acked.lock().unwrap().clone();
    println!("A acknowledged {} revocations before kill -9", acked.len());
    regions.a.resume();
    let last = acked.last().expect("some acknowledged").clone();
    let all = eventually(Duration::from_secs(60), || {
        acked
            .iter()
            .all(|v| is_revoked(&regions.b, "jti", v))
            .then_some(())
    });
    assert!(
        all.is_some(),
        "not every acknowledged revocation reached B (last: {last})"
    );
}

#[test]
fn validation_survives_redis_going_away_and_redis_is_rebuilt_when_it_returns_empty() {
    let _turn = turn();
    let mut regions = Regions::start();
    let token = regions.a.issue("rosa");
    let jti = tests::tokens::payload(&token)["jti"]
        .as_str()
        .unwrap()
        .to_owned();
    revoke(&regions.a, "jti", &jti).expect("revoke");
    let key = format!("revoked:jti:{jti}");
    assert!(
        eventually(Duration::from_secs(10), || regions
            .redis
            .command(0, &["EXISTS", &key])
            .starts_with(":1")
            .then_some(()))
        .is_some(),
        "the revocation never reached Redis"
    );
    let validate = |token: &str| {
        let start = Instant::now();
        let r = http::post_json(
            regions.a.port,
            "/token/validate",
            &[],
            &json!({ "token": token }),
        )
        .expect("validate");
        (r.json(), start.elapsed())
    };
    let fresh = regions.a.issue("rosa-2");
    let mut normal = Vec::new();
    for _ in 0..50 {
        normal.push(validate(&fresh).1.as_secs_f64() * 1000.0);
    }
    regions.redis.stop();
    let mut degraded = Vec::new();
    for _ in 0..50 {
        let (revoked, took) = validate(&token);
        assert_eq!(revoked["valid"], false, "{revoked}");
        assert_eq!(revoked["revoked"], true, "{revoked}");
        let (valid, _) = validate(&fresh);
        assert_eq!(valid["valid"], true, "{valid}");
        degraded.push(took.as_secs_f64() * 1000.0);
    }
    normal.sort_by(f64::total_cmp);
    degraded.sort_by(f64::total_cmp);
    println!(
        "POST /token/validate at A: Redis up p50 {:.1} ms p99 {:.1} ms; Redis down (SQLite) p50 {:.1} ms p99 {:.1} ms",
        percentile(&normal, 0.5),
        percentile(&normal, 0.99),
        percentile(&degraded, 0.5),
        percentile(&degraded, 0.99)
    );
    assert!(
        percentile(&degraded, 0.99) < 250.0,
        "validation stalled without Redis"
    );

    // Back, but empty: the region rewrites every live revocation, with its TTL.
    regions.redis.resume();
    let rebuilt = eventually(Duration::from_secs(20), || {
        regions
            .redis
            .command(0, &["EXISTS", &key])
            .starts_with(":1")
            .then_some(())
    });
    assert!(rebuilt.is_some(), "Redis was not rebuilt");
    let ttl = ttl_of(&regions.redis, 0, &key);
    assert!(ttl > 0, "rebuilt key has no TTL ({ttl})");
    let (still, _) = validate(&token);
    assert_eq!(still["revoked"], true);
}

fn producer(broker: &Broker) -> ThreadedProducer<DefaultProducerContext> {
    ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .create()
        .expect("producer")
}

fn publish(producer: &ThreadedProducer<DefaultProducerContext>, payload: &[u8]) {
    producer
        .send(BaseRecord::to("revocations").key("test").payload(payload))
        .map_err(|(e, _)| e)
        .expect("queue");
    producer.flush(Duration::from_secs(10)).expect("flush");
}

/// One signed event of region A, read from the topic.
fn an_event_from_a(broker: &Broker) -> String {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", format!("test-reader-{}", std::process::id()))
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer.subscribe(&["revocations"]).expect("subscribe");
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200))
            && let Some(p) = m.payload()
        {
            return String::from_utf8(p.to_vec()).expect("utf-8");
        }
    }
    panic!("no event on the topic");
}

#[test]
fn forged_malformed_replayed_and_foreign_events_are_counted_and_never_applied() {
    let _turn = turn();
    let regions = Regions::start();
    revoke(&regions.a, "jti", "genuine-1").expect("revoke");
    wait_revoked(&regions.b, "jti", "genuine-1");
    let genuine = an_event_from_a(&regions.broker);
    let producer = producer(&regions.broker);

    // Garbage bytes.
    publish(&producer, b"\x00\xffnot a jws at all");
    // A's event (a member of a signed batch) with one signature byte flipped. B applied
    // that event already: the copy is refused as a duplicate before its signature costs a
    // verification.
    let member: Value = serde_json::from_str(&genuine).expect("a batch member");
    let mut flipped = member.clone();
    let mut sig = shared::b64::decode(member["signature"].as_str().unwrap(), "sig").unwrap();
    sig[10] ^= 0x01;
    flipped["signature"] = shared::b64::encode(&sig).into();
    publish(&producer, flipped.to_string().as_bytes());
    // A's genuine signature and proof, with another event put in: the proof fails.
    let mut swapped = member.clone();
    let mut other: RevocationEvent = serde_json::from_slice(
        &shared::b64::decode(member["header"]["event"].as_str().unwrap(), "event").unwrap(),
    )
    .unwrap();
    other.value = "someone-else".into();
    other.event_id = "swapped-1".into();
    swapped["header"]["event"] = shared::b64::encode(&other.canonical_bytes()).into();
    publish(&producer, swapped.to_string().as_bytes());
    // The genuine event again (a replay).
    publish(&producer, genuine.as_bytes());
    // An event signed by a key no region trusts.
    let stranger = SigningKey::generate(Alg::MlDsa65);
    let forged = RevocationEvent {
        event_id: "forged-1".into(),
        kind: Kind::Sub,
        value: "everyone".into(),
        not_before: Some(tests::tokens::now()),
        expires_at: tests::tokens::now() + 3600,
        issued_at: tests::tokens::now(),
        origin: "a".into(),
        nonce: "00".into(),
        kid: stranger.kid(),
    };
    publish(&producer, forged.sign(&stranger).unwrap().as_bytes());
    // A real region C that B does not list in PEER_JWKS.
    let c = ControlPlane::start_with(
        free_port(),
        region_env("c", &regions.broker, &regions.redis, 2, &[]),
    );
    revoke(&c, "jti", "from-c").expect("revoke at C");

    // The next good event is applied.
    revoke(&regions.a, "jti", "genuine-2").expect("revoke");
    wait_revoked(&regions.b, "jti", "genuine-2");
    let reasons = eventually(Duration::from_secs(15), || {
        let m = metrics(&regions.b);
        let count = |reason: &str| {
            m.lines()
                .find_map(|l| {
                    l.strip_prefix(&format!(
                        "cp_consumer_rejected_total{{reason=\"{reason}\"}} "
                    ))
                    .and_then(|v| v.parse::<u64>().ok())
                })
                .unwrap_or(0)
        };
        let got = (
            count("malformed"),
            count("bad_signature"),
            count("unknown_key"),
            count("duplicate"),
        );
        (got.0 >= 1 && got.1 >= 1 && got.2 >= 2 && got.3 >= 2).then_some(got)
    });
    let (malformed, bad_signature, unknown_key, duplicate) =
        reasons.unwrap_or_else(|| panic!("rejections not counted:\n{}", metrics(&regions.b)));
    println!(
        "rejected at B: malformed {malformed}, bad_signature {bad_signature}, unknown_key {unknown_key}, duplicate {duplicate}"
    );
    assert!(!is_revoked(&regions.b, "sub", "everyone"));
    assert!(!is_revoked(&regions.b, "jti", "from-c"));
    assert!(!is_revoked(&regions.b, "jti", "someone-else"));
    assert_eq!(applied_counts(&regions.b).get("forged-1"), None);
    assert_eq!(applied_counts(&regions.b).get("swapped-1"), None);
}

#[test]
fn b_keeps_applying_a_s_events_after_a_rotates_its_keys() {
    let _turn = turn();
    let regions = Regions::start();
    revoke(&regions.a, "jti", "before-rotation").expect("revoke");
    wait_revoked(&regions.b, "jti", "before-rotation");
    let rotated = http::post_json(
        regions.a.port,
        "/admin/keys/rotate",
        &[("authorization", &admin(&regions.a))],
        &json!({}),
    )
    .expect("rotate");
    assert_eq!(rotated.status, 200, "{}", rotated.text());
    // CP_KEY_ACTIVATION_SECONDS=1 here: the new keys sign after a second.
    std::thread::sleep(Duration::from_millis(2500));
    revoke(&regions.a, "jti", "after-rotation").expect("revoke");
    wait_revoked(&regions.b, "jti", "after-rotation");
    let region_keys = http::get(regions.a.port, "/v1/region/jwks", &[])
        .unwrap()
        .json();
    assert_eq!(
        region_keys["keys"].as_array().map(Vec::len),
        Some(4),
        "old and new keys"
    );
}

/// Kills a child process when dropped.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn control_plane_consume_keeps_a_redis_current_for_services_that_only_read_redis() {
    let _turn = turn();
    let regions = Regions::start();
    let data = tests::TempDir::new("consume");
    // A third region that only consumes, into Redis database 3.
    let consumer = Reaped(
        std::process::Command::new(tests::paths::control_plane_bin())
            .arg("consume")
            .arg("--data-dir")
            .arg(data.0.join("data"))
            .envs(region_env(
                "reader",
                &regions.broker,
                &regions.redis,
                3,
                &[regions.a.port],
            ))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(data.0.join("consume.log")).expect("log"))
            .spawn()
            .expect("start control-plane consume"),
    );
    let token = regions.a.issue("uma");
    let jti = tests::tokens::payload(&token)["jti"]
        .as_str()
        .unwrap()
        .to_owned();
    revoke(&regions.a, "jti", &jti).expect("revoke");
    let key = format!("revoked:jti:{jti}");
    let seen = eventually(Duration::from_secs(30), || {
        regions
            .redis
            .command(3, &["EXISTS", &key])
            .starts_with(":1")
            .then_some(())
    });
    assert!(
        seen.is_some(),
        "consume never wrote {key} (log in {})",
        data.0.display()
    );
    let ttl = ttl_of(&regions.redis, 3, &key);
    assert!(ttl > 0, "{ttl}");
    drop(consumer);
}

#[test]
fn lifecycle_events_are_signed_on_the_token_events_topic() {
    let _turn = turn();
    let regions = Regions::start();
    let token = regions.a.issue("tess");
    let jti = tests::tokens::payload(&token)["jti"]
        .as_str()
        .unwrap()
        .to_owned();
    revoke(&regions.a, "jti", &jti).expect("revoke");
    let keys = http::get(regions.a.port, "/v1/region/jwks", &[])
        .unwrap()
        .json();
    let keys = shared::Keyring::from_jwks(
        &shared::JwkSet::parse(keys.to_string().as_bytes()).expect("jwks"),
    )
    .expect("keyring");
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", regions.broker.bootstrap())
        .set(
            "group.id",
            format!("token-events-reader-{}", std::process::id()),
        )
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer.subscribe(&["token-events"]).expect("subscribe");
    let mut seen = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30)
        && !(seen.contains(&"issued".to_owned()) && seen.contains(&"revoked".to_owned()))
    {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200))
            && let Some(p) = m.payload()
        {
            let jws = std::str::from_utf8(p).expect("utf-8");
            let (_, payload) = shared::envelope::open(jws, &["token-event+jwt"], &keys, 16 * 1024)
                .expect("each token event verifies with the region's keys");
            let event: Value = serde_json::from_slice(&payload).expect("json");
            assert_eq!(event["region"], "a");
            let signature = token.rsplit('.').next().unwrap_or_default();
            assert!(
                !String::from_utf8_lossy(&payload).contains(signature),
                "no token in events"
            );
            if event["type"] == "issued" {
                assert_eq!(event["data"]["jti"], jti.as_str());
            }
            seen.push(event["type"].as_str().unwrap_or_default().to_owned());
        }
    }
    println!("token events seen: {seen:?}");
    assert!(
        seen.contains(&"issued".to_owned()) && seen.contains(&"revoked".to_owned()),
        "{seen:?}"
    );
}

#[test]
fn with_redis_dpop_proofs_and_refresh_sessions_are_shared_through_it() {
    let _turn = turn();
    let regions = Regions::start();
    let auth = admin(&regions.a);
    // A refresh session's state is published under refresh:<sid>.
    let created = http::post_json(
        regions.a.port,
        "/token/refresh/create",
        &[("authorization", &auth)],
        &json!({ "subject": "vera" }),
    )
    .expect("create");
    assert_eq!(created.status, 200, "{}", created.text());
    let sid = created.json()["session_id"].as_str().unwrap().to_owned();
    let refresh_token = created.json()["refresh_token"].as_str().unwrap().to_owned();
    let state = regions
        .redis
        .command(0, &["GET", &format!("refresh:{sid}")]);
    assert!(state.contains(r#""state":"active""#), "{state}");
    let revoked = http::post_json(
        regions.a.port,
        "/token/refresh/revoke",
        &[],
        &json!({ "refresh_token": refresh_token }),
    )
    .expect("revoke");
    assert_eq!(revoked.status, 200, "{}", revoked.text());
    let state = regions
        .redis
        .command(0, &["GET", &format!("refresh:{sid}")]);
    assert!(state.contains(r#""state":"revoked""#), "{state}");

    // A DPoP proof used with a bound token is recorded in Redis, and a replay is refused.
    let device = SigningKey::generate(Alg::EdDsa);
    let jkt = device.verifying_key().to_jwk().thumbprint();
    let token = bound_token(regions.a.port, &auth, "vera", &device);
    let jti = shared::random::id();
    let proof = revoke_proof(&device, regions.a.port, &token, &jti);
    let send = || {
        http::post_json(
            regions.a.port,
            "/revoke/token",
            &[("dpop", &proof)],
            &json!({ "token": token }),
        )
        .expect("revoke/token")
    };
    assert_eq!(send().status, 200);
    let key = format!("dpop:a:{jkt}:{jti}");
    assert!(
        regions
            .redis
            .command(0, &["EXISTS", &key])
            .starts_with(":1"),
        "{key}"
    );
    let replay = send();
    assert_eq!(replay.status, 401, "{}", replay.text());
    assert!(replay.text().contains("replay"), "{}", replay.text());
}

#[test]
fn what_anyone_writes_to_redis_changes_no_decision_of_the_control_plane() {
    let _turn = turn();
    let redis = Redis::start();
    let cp = ControlPlane::start_with(
        free_port(),
        vec![
            ("REDIS_URL".to_owned(), redis.url(0)),
            ("CP_HOLDER_REVOKES_PER_MINUTE".to_owned(), "0".to_owned()),
        ],
    );
    let auth = admin(&cp);
    let post = |path: &str, headers: &[(&str, &str)], body: Value| {
        http::post_json(cp.port, path, headers, &body).expect(path)
    };

    // A revoked subject whose Redis key is deleted, under a marker that says Redis is
    // current, is still revoked on every route that answers for it.
    let token = cp.issue("lena");
    cp.revoke("sub", "lena");
    let key = "revoked:sub:lena";
    assert!(
        eventually(Duration::from_secs(10), || redis
            .command(0, &["EXISTS", key])
            .starts_with(":1")
            .then_some(()))
        .is_some(),
        "the revocation never reached Redis"
    );
    assert!(redis.command(0, &["DEL", key]).starts_with(":1"));
    let validated = post("/token/validate", &[], json!({ "token": token })).json();
    assert_eq!(validated["valid"], false, "{validated}");
    assert_eq!(validated["revoked"], true, "{validated}");
    let introspected = http::send(
        cp.port,
        "POST",
        "/oauth2/introspect",
        &[
            ("authorization", auth.as_bytes()),
            ("content-type", b"application/x-www-form-urlencoded"),
        ],
        format!("token={token}").as_bytes(),
    )
    .expect("introspect")
    .json();
    assert_eq!(introspected["active"], false, "{introspected}");
    let checked = post("/v1/revocations/check", &[], json!({ "sub": "lena" })).json();
    assert_eq!(checked["revoked"], true, "{checked}");

    // DPoP: a deleted proof key lets no replay through; a planted one refuses no proof.
    let device = SigningKey::generate(Alg::EdDsa);
    let jkt = device.verifying_key().to_jwk().thumbprint();
    let bound = |subject: &str| bound_token(cp.port, &auth, subject, &device);
    let proof_for = |token: &str, jti: &str| revoke_proof(&device, cp.port, token, jti);
    let first = bound("nils");
    let jti = shared::random::id();
    let proof = proof_for(&first, &jti);
    let send = |token: &str, proof: &str| {
        post(
            "/revoke/token",
            &[("dpop", proof)],
            json!({ "token": token }),
        )
    };
    assert_eq!(send(&first, &proof).status, 200);
    redis.command(0, &["DEL", &format!("dpop:local:{jkt}:{jti}")]);
    let replay = send(&first, &proof);
    assert_eq!(replay.status, 401, "a replay passed once Redis forgot it");
    let second = bound("nils-2");
    let planted = shared::random::id();
    redis.command(0, &["SET", &format!("dpop:local:{jkt}:{planted}"), "1"]);
    let fresh = send(&second, &proof_for(&second, &planted));
    assert_eq!(
        fresh.status,
        200,
        "a fresh proof was refused: {}",
        fresh.text()
    );

    // A revoked refresh session stays revoked whatever Redis says about it.
    let created = post(
        "/token/refresh/create",
        &[("authorization", &auth)],
        json!({ "subject": "olga" }),
    );
    assert_eq!(created.status, 200, "{}", created.text());
    let sid = created.json()["session_id"].as_str().unwrap().to_owned();
    let refresh_token = created.json()["refresh_token"].as_str().unwrap().to_owned();
    let revoked = post(
        "/token/refresh/revoke",
        &[],
        json!({ "refresh_token": refresh_token }),
    );
    assert_eq!(revoked.status, 200, "{}", revoked.text());
    let state_key = format!("refresh:{sid}");
    let lie = redis
        .command(0, &["GET", &state_key])
        .replace(r#""state":"revoked""#, r#""state":"active""#);
    let lie = lie.lines().nth(1).unwrap_or_default().to_owned();
    redis.command(0, &["SET", &state_key, &lie]);
    let refreshed = post(
        "/token/refresh",
        &[],
        json!({ "refresh_token": refresh_token }),
    );
    assert_eq!(refreshed.status, 400, "{}", refreshed.text());
    redis.command(0, &["DEL", &state_key]);
    let refreshed = post(
        "/token/refresh",
        &[],
        json!({ "refresh_token": refresh_token }),
    );
    assert_eq!(refreshed.status, 400, "{}", refreshed.text());
}

/// An access token for `subject` bound to `device` (`cnf.jkt`), issued by the admin.
fn bound_token(port: u16, auth: &str, subject: &str, device: &SigningKey) -> String {
    let jkt = device.verifying_key().to_jwk().thumbprint();
    let issued = http::post_json(
        port,
        "/token",
        &[("authorization", auth)],
        &json!({ "subject": subject, "additional_claims": { "cnf": { "jkt": jkt } } }),
    )
    .expect("issue");
    assert_eq!(issued.status, 200, "{}", issued.text());
    issued.json()["access_token"].as_str().unwrap().to_owned()
}

/// A DPoP proof by `device` for `POST /revoke/token` on `port` with `token`.
fn revoke_proof(device: &SigningKey, port: u16, token: &str, jti: &str) -> String {
    shared::dpop::sign_proof(
        device,
        &shared::dpop::DpopClaims {
            jti: jti.to_owned(),
            htm: "POST".into(),
            htu: format!("http://127.0.0.1:{port}/revoke/token"),
            iat: tests::tokens::now(),
            ath: Some(shared::dpop::ath(token)),
            nonce: None,
        },
    )
    .expect("proof")
}

/// The TTL Redis reports for `key` in database `db` (-2: no key, -1: no TTL).
fn ttl_of(redis: &Redis, db: u8, key: &str) -> i64 {
    redis
        .command(db, &["TTL", key])
        .trim()
        .trim_start_matches(':')
        .parse()
        .expect("TTL answers an integer")
}

/// Runs `control-plane serve` on a fresh data dir with `env`, expecting it to refuse to
/// start; returns what it printed.
fn refused_start(env: &[(&str, &str)]) -> String {
    let dir = tests::TempDir::new("refused");
    let mut child = std::process::Command::new(tests::paths::control_plane_bin())
        .args(["serve", "--listen"])
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--data-dir")
        .arg(dir.0.join("data"))
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run control-plane serve");
    let exited = eventually(Duration::from_secs(30), || child.try_wait().ok().flatten());
    if exited.is_none() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("its output");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        exited.is_some_and(|status| !status.success()),
        "the control plane started with {env:?}:\n{printed}"
    );
    printed
}

/// Waits (10 s at most) until `key` exists in database 0 of `redis`.
fn wait_key(redis: &Redis, key: &str) {
    let seen = eventually(Duration::from_secs(10), || {
        redis
            .command(0, &["EXISTS", key])
            .starts_with(":1")
            .then_some(())
    });
    assert!(seen.is_some(), "{key} never reached Redis");
}

#[test]
fn as_its_launcher_acl_user_a_region_writes_every_redis_key_and_strangers_are_refused() {
    let _turn = turn();
    let rules = tests::services::launcher_redis_rules();
    let password = shared::random::id();
    let redis = Redis::start_with_users(&[("cp-a", &password, &rules)]);
    let cp = ControlPlane::start_with(
        free_port(),
        vec![
            ("REGION".to_owned(), "a".to_owned()),
            (
                "REDIS_URL".to_owned(),
                redis.url_as("cp-a", &password, 0, false),
            ),
        ],
    );
    let auth = admin(&cp);

    // The rebuild's pipelined SETs, the merge script (EVALSHA, SCRIPT LOAD), the refresh
    // state and the DPoP record all pass the launcher's rules.
    wait_key(&redis, "revoked-cache-epoch");
    cp.revoke("sub", "mia");
    wait_key(&redis, "revoked:sub:mia");
    let created = http::post_json(
        cp.port,
        "/token/refresh/create",
        &[("authorization", &auth)],
        &json!({ "subject": "mia" }),
    )
    .expect("create");
    assert_eq!(created.status, 200, "{}", created.text());
    let sid = created.json()["session_id"].as_str().unwrap().to_owned();
    wait_key(&redis, &format!("refresh:{sid}"));
    let device = SigningKey::generate(Alg::EdDsa);
    let jkt = device.verifying_key().to_jwk().thumbprint();
    let token = bound_token(cp.port, &auth, "nico", &device);
    let jti = shared::random::id();
    let proof = revoke_proof(&device, cp.port, &token, &jti);
    let revoked = http::post_json(
        cp.port,
        "/revoke/token",
        &[("dpop", &proof)],
        &json!({ "token": token }),
    )
    .expect("revoke/token");
    assert_eq!(revoked.status, 200, "{}", revoked.text());
    wait_key(&redis, &format!("dpop:a:{jkt}:{jti}"));
    let logs = ["stdout.log", "stderr.log"]
        .map(|f| std::fs::read_to_string(cp.dir.0.join(f)).unwrap_or_default())
        .concat();
    assert!(!logs.contains("NOPERM"), "a write was refused:\n{logs}");

    // Nobody else gets in: no login, a wrong password, and the region's own user outside
    // its commands and keys.
    let key = "revoked:sub:mia";
    let anonymous = redis.command_as(None, 0, &["GET", key]);
    assert!(anonymous.starts_with("-NOAUTH"), "{anonymous}");
    let guessed = redis.command_as(Some(("cp-a", "guess")), 0, &["GET", key]);
    assert!(guessed.starts_with("-WRONGPASS"), "{guessed}");
    let user = Some(("cp-a", password.as_str()));
    for command in [
        &["FLUSHDB"][..],
        &["KEYS", "*"],
        &["DEL", key],
        &["CONFIG", "SET", "requirepass", ""],
        &["SET", "elsewhere", "1"],
    ] {
        let reply = redis.command_as(user, 0, command);
        assert!(reply.starts_with("-NOPERM"), "{command:?}: {reply}");
    }

    // A wrong password stops the start, and the password never reaches the output.
    let wrong = "not-the-password";
    let printed = refused_start(&[("REDIS_URL", &redis.url_as("cp-a", wrong, 0, false))]);
    assert!(printed.contains("cp-a:***@"), "{printed}");
    assert!(
        !printed.contains(wrong),
        "the password was printed:\n{printed}"
    );
}

#[test]
fn rediss_works_with_the_ca_of_cp_redis_ca_file_and_an_unknown_ca_is_refused() {
    let _turn = turn();
    let password = shared::random::id();
    let redis = Redis::start_with_tls(&[("cp-a", &password, "~* +@all")]);
    let url = redis.url_as("cp-a", &password, 0, true);
    let ca_file = redis.ca_file().display().to_string();

    // The system's roots do not know the test's CA; "#insecure" and a CA file without
    // TLS are configuration errors.
    let printed = refused_start(&[("REDIS_URL", &url)]);
    assert!(printed.contains("UnknownIssuer"), "{printed}");
    let printed = refused_start(&[("REDIS_URL", &format!("{url}#insecure"))]);
    assert!(printed.contains("#insecure"), "{printed}");
    let printed = refused_start(&[
        ("REDIS_URL", &redis.url_as("cp-a", &password, 0, false)),
        ("CP_REDIS_CA_FILE", &ca_file),
    ]);
    assert!(printed.contains("not rediss://"), "{printed}");
    assert!(!printed.contains(&password), "{printed}");

    // With the CA it serves, and its revocations reach Redis over TLS.
    let cp = ControlPlane::start_with(
        free_port(),
        vec![
            ("REDIS_URL".to_owned(), url),
            ("CP_REDIS_CA_FILE".to_owned(), ca_file),
        ],
    );
    cp.revoke("sub", "olga");
    wait_key(&redis, "revoked:sub:olga");
    let clients = redis.command(0, &["CLIENT", "LIST"]);
    let tls_port = redis.tls_port.expect("a TLS port");
    assert!(
        clients.contains(&format!("laddr=127.0.0.1:{tls_port}")),
        "the control plane is connected on the TLS port: {clients}"
    );
}

/// Forged events under A's trusted event key, queued on the topic in the partition of a
/// real revocation just ahead of it: how long B takes to apply the real one. Each forgery
/// is well formed and carries a real ML-DSA-65 signature (a stranger's, over another
/// payload), so only a full verification refuses it: the cheapest flood an attacker who
/// can write to the topic can send. `FLOOD_MESSAGES` (default 2,000) sets its size; the
/// BENCHMARKS figure is `CONTROL_PLANE_BIN=target/release/control-plane
/// FLOOD_MESSAGES=30000 cargo test -p tests --test regions flood -- --nocapture`.
#[test]
fn a_flood_of_forged_events_under_a_trusted_key_is_refused_and_the_real_one_follows() {
    let _turn = turn();
    let n: usize = std::env::var("FLOOD_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let regions = Regions::start();
    revoke(&regions.a, "jti", "before-flood").expect("revoke");
    wait_revoked(&regions.b, "jti", "before-flood");
    let jwks = http::get(regions.a.port, "/v1/region/jwks", &[])
        .expect("region jwks")
        .json();
    let kid = jwks["keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["kty"] == "AKP"))
        .and_then(|k| k["kid"].as_str())
        .expect("A's ML-DSA-65 event key")
        .to_owned();
    // One stranger's signature, reused over every forged payload: well formed, wrong.
    let stranger = SigningKey::generate(Alg::MlDsa65);
    let signed = shared::jws::sign_with_header(
        &stranger,
        shared::jws::Header {
            typ: Some("revocation-event+jwt".into()),
            kid: Some(kid.clone()),
            ..Default::default()
        },
        b"{}",
    )
    .expect("sign");
    let mut parts = signed.split('.');
    let (header, signature) = (
        parts.next().unwrap().to_owned(),
        parts.nth(1).unwrap().to_owned(),
    );
    let target = "after-flood";
    let now = tests::tokens::now();
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", regions.broker.bootstrap())
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .create()
        .expect("producer");
    let started = Instant::now();
    for i in 0..n {
        let event = RevocationEvent {
            event_id: format!("forged-{i}"),
            kind: Kind::Sub,
            value: "everyone".into(),
            not_before: Some(now),
            expires_at: now + 3600,
            issued_at: now,
            origin: "a".into(),
            nonce: format!("{i:08x}"),
            kid: kid.clone(),
        };
        let message = format!(
            "{header}.{}.{signature}",
            shared::b64::encode(&event.canonical_bytes())
        );
        // The real revocation's key: the same partition, so it queues behind them.
        let mut record = BaseRecord::to("revocations")
            .key(target)
            .payload(message.as_bytes());
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(120)).expect("flush");
    let queued = started.elapsed();
    let revoked_at = Instant::now();
    revoke(&regions.a, "jti", target).expect("revoke");
    let applied = eventually(Duration::from_secs(600), || {
        is_revoked(&regions.b, "jti", target).then_some(())
    });
    let delay = revoked_at.elapsed();
    assert!(
        applied.is_some(),
        "the real revocation never reached B behind {n} forgeries; B's log ends with:\n{}",
        regions.b.log_tail(20)
    );
    let refused = eventually(Duration::from_secs(600), || {
        let m = metric(
            &regions.b,
            "cp_consumer_rejected_total{reason=\"bad_signature\"}",
        );
        (m >= n as u64).then_some(m)
    });
    println!(
        "flood of {n} forged events queued in {:.2} s; the real revocation reached B {:.3} s \
         after A answered ({:.2} s after the flood began); all {n} refused as bad_signature: {}",
        queued.as_secs_f64(),
        delay.as_secs_f64(),
        (queued + delay).as_secs_f64(),
        refused.is_some()
    );
    let (jumps, ahead) = (
        metric(&regions.b, "cp_consumer_tail_jumps_total"),
        metric(
            &regions.b,
            "cp_consumer_events_total{result=\"applied_ahead\"}",
        ),
    );
    println!("B: tail reader jumps {jumps}, events applied ahead of the backlog {ahead}");
    // The flood leaves B's consumer far behind (the default 2,000 forgeries are seconds of
    // verification for the debug build the tests run; with a release binary use 30,000 as
    // BENCHMARKS.md does): the real event was applied by the tail reader, not after them.
    assert!(
        ahead >= 1,
        "the real revocation waited behind {n} forgeries: the tail reader applied nothing \
         (jumps: {jumps})"
    );
    assert!(refused.is_some(), "every forgery is refused and counted");
    assert!(!is_revoked(&regions.b, "sub", "everyone"));
}
