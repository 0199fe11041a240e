//! Real Envoy with the edge filter, configured per test on free ports.

use std::fs::File;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::{TempDir, eventually, free_port, http, paths, tokens};

/// The filter configuration the tests start from: the control plane's issuer and
/// audience, claim headers, a health-check bypass, and short poll and staleness times.
pub fn filter_config() -> Value {
    json!({
        "issuer": tokens::ISSUER,
        "audience": tokens::AUDIENCE,
        "control_plane": {"cluster": "control_plane", "poll_wait_seconds": 2, "retry_millis": 200},
        "staleness_bound_seconds": 10,
        "claim_headers": {"sub": "x-auth-sub", "jti": "x-auth-jti", "scope": "x-auth-scope", "sid": "x-auth-sid"},
        "strip_authorization": true,
        "bypass_paths": ["/health"]
    })
}

/// Envoy's router filter, the last of every listener's HTTP filters.
fn router_filter() -> Value {
    json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
    })
}

/// A bootstrap with its admin on `admin_port` and one listener `name` on `port` serving
/// the HTTP connection manager `hcm`, with `clusters`.
fn bootstrap(name: &str, port: u16, admin_port: u16, hcm: Value, clusters: Value) -> Value {
    json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "listeners": [{
                "name": name,
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": hcm
                }]}]
            }],
            "clusters": clusters
        }
    })
}

/// A `--base-id` of its own for each Envoy this process starts (several run at once).
fn next_base_id() -> u32 {
    static STARTED: AtomicU32 = AtomicU32::new(0);
    let n = STARTED.fetch_add(1, Ordering::Relaxed);
    (std::process::id() % 100_000) * 16 + n % 16
}

/// A running Envoy.
#[derive(Debug)]
pub struct Envoy {
    /// Listener port.
    pub port: u16,
    /// Admin port.
    pub admin_port: u16,
    /// Config and logs.
    pub dir: TempDir,
    child: Child,
}

fn cluster(name: &str, ports: &[u16]) -> Value {
    let endpoints: Vec<Value> = ports
        .iter()
        .map(|port| json!({"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}))
        .collect();
    json!({
        "name": name, "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": endpoints}]}
    })
}

/// The control-plane cluster of an edge in front of several replicas of its region, as
/// `scripts/run.sh --replicas` writes it: the replicas in priority order (`ports[0]` is
/// this edge's home; a fleet spreads its homes evenly), active health checks of
/// `/v1/edge/ready` every second and outlier detection, so polls move to the next replica within about two
/// seconds of a failure and back once the home answers again.
pub fn replica_cluster(ports: &[u16]) -> Value {
    let priorities: Vec<Value> = ports
        .iter()
        .enumerate()
        .map(|(priority, port)| json!({
            "priority": priority,
            "lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]
        }))
        .collect();
    json!({
        "name": "control_plane", "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": "control_plane", "endpoints": priorities},
        "health_checks": [{
            "timeout": "1s", "interval": "1s", "no_traffic_interval": "1s",
            "unhealthy_threshold": 2, "healthy_threshold": 2,
            "http_health_check": {"path": "/v1/edge/ready"}
        }],
        "outlier_detection": {
            "consecutive_5xx": 2, "consecutive_gateway_failure": 2, "interval": "1s",
            "base_ejection_time": "5s", "max_ejection_percent": 100
        }
    })
}

/// The HTTP connection manager options the shipped configs (`envoy/*.yaml`) set for the
/// filter: normalised paths, merged slashes, header names with `_` refused.
pub fn shipped_hcm_options() -> Value {
    json!({
        "normalize_path": true,
        "merge_slashes": true,
        "common_http_protocol_options": {"headers_with_underscores_action": "REJECT_REQUEST"}
    })
}

/// Who polls the control plane for the filter's VMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Poller {
    /// The singleton `envoy.bootstrap.wasm` service on the main thread, as the shipped
    /// configs run it (the filter's configuration plus `"role": "poller"`).
    Service,
    /// No service: one of the filter's VMs takes the lease.
    FilterVm,
}

impl Envoy {
    /// Starts Envoy in front of `upstream_port`, its filter polling `control_plane_port`
    /// through the poller service, with the [shipped](shipped_hcm_options) connection
    /// manager options.
    pub fn start(control_plane_port: u16, upstream_port: u16, filter: &Value) -> Envoy {
        Envoy::start_with(
            control_plane_port,
            upstream_port,
            filter,
            &shipped_hcm_options(),
            Poller::Service,
        )
    }

    /// Like [`start`](Envoy::start) with other connection manager options (`{}`: Envoy's
    /// defaults, to show what the filter does on its own) and a choice of poller.
    pub fn start_with(
        control_plane_port: u16,
        upstream_port: u16,
        filter: &Value,
        hcm_options: &Value,
        poller: Poller,
    ) -> Envoy {
        Envoy::start_balanced(
            &[control_plane_port],
            upstream_port,
            filter,
            hcm_options,
            poller,
        )
    }

    /// Like [`start_with`](Envoy::start_with) with every one of `control_plane_ports` in
    /// the filter's cluster (Envoy's default round robin: successive polls go to each in
    /// turn).
    pub fn start_balanced(
        control_plane_ports: &[u16],
        upstream_port: u16,
        filter: &Value,
        hcm_options: &Value,
        poller: Poller,
    ) -> Envoy {
        Envoy::start_with_cluster(
            cluster("control_plane", control_plane_ports),
            upstream_port,
            filter,
            hcm_options,
            poller,
        )
    }

    /// Like [`start_with`](Envoy::start_with) with the control-plane cluster `cluster`
    /// (named `control_plane`), e.g. [`replica_cluster`].
    pub fn start_with_cluster(
        control_plane: Value,
        upstream_port: u16,
        filter: &Value,
        hcm_options: &Value,
        poller: Poller,
    ) -> Envoy {
        Envoy::launch(
            &paths::filter_wasm(),
            control_plane,
            upstream_port,
            filter,
            hcm_options,
            poller,
        )
    }

    /// Like [`start`](Envoy::start) with another build of the filter (`wasm`), e.g. an
    /// older one ([`paths::old_filter_wasm`]).
    pub fn start_with_filter(
        wasm: &std::path::Path,
        control_plane_port: u16,
        upstream_port: u16,
        filter: &Value,
    ) -> Envoy {
        Envoy::launch(
            wasm,
            cluster("control_plane", &[control_plane_port]),
            upstream_port,
            filter,
            &shipped_hcm_options(),
            Poller::Service,
        )
    }

    fn launch(
        module: &std::path::Path,
        control_plane: Value,
        upstream_port: u16,
        filter: &Value,
        hcm_options: &Value,
        poller: Poller,
    ) -> Envoy {
        let base_id = next_base_id();
        let dir = TempDir::new("envoy");
        let (port, admin_port) = (free_port(), free_port());
        let wasm = json!({
            "name": "envoy.filters.http.wasm",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {
                    "name": "edge_filter", "root_id": "edge_filter",
                    "failure_policy": "FAIL_RELOAD",
                    "vm_config": {
                        "vm_id": "edge_filter", "runtime": "envoy.wasm.runtime.v8",
                        "code": {"local": {"filename": module}}
                    },
                    "configuration": {
                        "@type": "type.googleapis.com/google.protobuf.StringValue",
                        "value": filter.to_string()
                    }
                }
            }
        });
        let mut hcm = json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "edge",
            "route_config": {"virtual_hosts": [{
                "name": "all", "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}]
            }]},
            "http_filters": [wasm, router_filter()]
        });
        for (k, v) in hcm_options.as_object().into_iter().flatten() {
            hcm[k] = v.clone();
        }
        let mut config = bootstrap(
            "edge",
            port,
            admin_port,
            hcm,
            json!([cluster("upstream", &[upstream_port]), control_plane]),
        );
        if poller == Poller::Service {
            let mut service_config = filter.clone();
            service_config["role"] = json!("poller");
            config["bootstrap_extensions"] = json!([{
                "name": "envoy.bootstrap.wasm",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.wasm.v3.WasmService",
                    "singleton": true,
                    "config": {
                        "name": "edge_filter_poller", "root_id": "edge_filter_poller",
                        "vm_config": {
                            "vm_id": "edge_filter", "runtime": "envoy.wasm.runtime.v8",
                            "code": {"local": {"filename": module}}
                        },
                        "configuration": {
                            "@type": "type.googleapis.com/google.protobuf.StringValue",
                            "value": service_config.to_string()
                        }
                    }
                }
            }]);
        }
        Envoy::run(dir, &config, port, admin_port, base_id)
    }

    /// A plain Envoy router (no filter) in front of the replicas of a region at `ports`,
    /// for clients: one address, round robin over the replicas that answer `/ready`, and a
    /// request that could not reach a replica (refused connection or stream) or got 503
    /// (not served: starting, or the session's replica unreachable) tried on another, as
    /// docs/operations.md ("Clients on any replica") configures it. Never retried after a
    /// reset: the request may have been served.
    pub fn front(ports: &[u16]) -> Envoy {
        let base_id = next_base_id();
        let dir = TempDir::new("envoy-front");
        let (port, admin_port) = (free_port(), free_port());
        let mut replicas = cluster("replicas", ports);
        replicas["health_checks"] = json!([{
            "timeout": "1s", "interval": "1s", "no_traffic_interval": "1s",
            "unhealthy_threshold": 2, "healthy_threshold": 1,
            "http_health_check": {"path": "/ready"}
        }]);
        let hcm = json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "front",
            "route_config": {"virtual_hosts": [{
                "name": "all", "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {
                    "cluster": "replicas",
                    "timeout": "30s",
                    "retry_policy": {
                        "retry_on": "connect-failure,refused-stream,retriable-status-codes",
                        "retriable_status_codes": [503],
                        "num_retries": 3,
                        "retry_host_predicate": [{
                            "name": "envoy.retry_host_predicates.previous_hosts",
                            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}
                        }],
                        "host_selection_retry_max_attempts": 3
                    }
                }}]
            }]},
            "http_filters": [router_filter()]
        });
        let config = bootstrap("front", port, admin_port, hcm, json!([replicas]));
        Envoy::run(dir, &config, port, admin_port, base_id)
    }

    fn run(dir: TempDir, config: &Value, port: u16, admin_port: u16, base_id: u32) -> Envoy {
        let config_path = dir.0.join("envoy.json");
        std::fs::write(&config_path, config.to_string()).expect("write envoy config");
        let log = File::create(dir.0.join("stderr.log"))
            .map(Stdio::from)
            .unwrap_or_else(|_| Stdio::null());
        let child = Command::new(paths::envoy_bin())
            .arg("-c")
            .arg(&config_path)
            .args(["--base-id", &base_id.to_string(), "--concurrency", "2"])
            .args(["-l", "info", "--log-path"])
            .arg(dir.0.join("envoy.log"))
            // Tests read the log (`filter_log`): flushed every 10 s by default, a line could
            // be logged and still missing from the file when a test looks.
            .args(["--file-flush-interval-msec", "100"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot start envoy");
        let envoy = Envoy {
            port,
            admin_port,
            dir,
            child,
        };
        let ready = eventually(Duration::from_secs(60), || {
            http::get(admin_port, "/ready", &[])
                .ok()
                .filter(|r| r.status == 200)
        });
        assert!(
            ready.is_some(),
            "envoy did not become ready; logs in {}",
            envoy.dir.0.display()
        );
        envoy
    }

    /// Stops the Envoy process (SIGSTOP) without closing its connections: a hung edge.
    pub fn pause(&self) {
        signal(self.child.id(), "-STOP");
    }

    /// Continues a [paused](Envoy::pause) Envoy (SIGCONT).
    pub fn resume(&self) {
        signal(self.child.id(), "-CONT");
    }

    /// The admin `/stats` as `(name, value)` pairs (counters and gauges).
    pub fn stats(&self) -> Vec<(String, u64)> {
        http::get(self.admin_port, "/stats", &[])
            .map(|r| r.text())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (name, value) = l.split_once(": ")?;
                Some((name.to_owned(), value.trim().parse().ok()?))
            })
            .collect()
    }

    /// A stat's value (0 when absent).
    pub fn stat(&self, name: &str) -> u64 {
        self.stats()
            .into_iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, v)| v)
    }

    /// Wasm stats that reveal a VM failure (reloads, failures), with non-zero values.
    pub fn wasm_failures(&self) -> Vec<(String, u64)> {
        self.stats()
            .into_iter()
            .filter(|(n, v)| {
                *v > 0
                    && n.starts_with("wasm.")
                    && (n.contains("reload") || n.contains("fail") || n.contains("crash"))
            })
            .collect()
    }

    /// The filter's log lines (`edge-filter: ...`) in Envoy's log so far.
    pub fn filter_log(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.0.join("envoy.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once("edge-filter: ").map(|(_, m)| m.to_owned()))
            .collect()
    }

    /// Waits until `token` is let through, i.e. the filter has keys and a fresh set.
    pub fn wait_until_serving(&self, token: &str) {
        let port = self.port;
        let ok = eventually(Duration::from_secs(60), || {
            http::get_with_token(port, "/ready-probe", token)
                .ok()
                .filter(|r| r.status == 200)
        });
        assert!(
            ok.is_some(),
            "the filter never let a valid token through; logs in {}",
            self.dir.0.display()
        );
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(pid: u32, which: &str) {
    let status = Command::new("kill")
        .args([which, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {which} {pid} failed");
}
