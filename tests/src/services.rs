//! Real Redis (`redis-server`) and a real Kafka-protocol broker (`tansu`), each started
//! on a free loopback port by the test itself and stopped when dropped. Redis may run
//! with ACL users (the default user off) and a TLS port whose certificate a CA made for
//! the test signed.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{TempDir, eventually, free_port, paths};

fn log(dir: &TempDir, name: &str) -> Stdio {
    File::options()
        .create(true)
        .append(true)
        .open(dir.0.join(name))
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null())
}

/// A program on `PATH` or in `~/.cargo/bin`.
fn program(name: &str, env: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env) {
        return PathBuf::from(path);
    }
    let in_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .find(|c| c.is_file())
        })
        .unwrap_or_default();
    let cargo_bin =
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin").join(name));
    in_path
        .or(cargo_bin.filter(|c| c.is_file()))
        .unwrap_or_else(|| {
            panic!("{name} is not installed (scripts/test.sh installs it; or set {env})")
        })
}

fn answers(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// The ACL rules `scripts/run.sh` gives each region's Redis user (its `REDIS_RULES`
/// line), so tests run the control plane under exactly the launcher's rights.
pub fn launcher_redis_rules() -> String {
    let script = std::fs::read_to_string(paths::workspace().join("scripts/run.sh"))
        .expect("read scripts/run.sh");
    script
        .lines()
        .find_map(|l| l.trim().strip_prefix("REDIS_RULES='"))
        .and_then(|rest| rest.strip_suffix('\''))
        .map(str::to_owned)
        .expect("a REDIS_RULES='...' line in scripts/run.sh")
}

/// A Redis server with no persistence: a restart starts it empty.
#[derive(Debug)]
pub struct Redis {
    /// Its plain (TCP) port on 127.0.0.1.
    pub port: u16,
    /// Its TLS port, when started with TLS.
    pub tls_port: Option<u16>,
    dir: TempDir,
    child: Option<Child>,
    /// The test's own all-rights user that [`Redis::command`] logs in as, when the
    /// server has ACL users.
    admin: Option<(String, String)>,
}

/// One ACL user: name, password, rules (e.g. `~revoked:* -@all +get`).
pub type RedisUser<'a> = (&'a str, &'a str, &'a str);

impl Redis {
    /// Starts redis-server on a free port.
    pub fn start() -> Redis {
        let mut redis = Redis {
            port: free_port(),
            tls_port: None,
            dir: TempDir::new("redis"),
            child: None,
            admin: None,
        };
        redis.resume();
        redis
    }

    /// Starts redis-server with these ACL users and the `default` user off: a client
    /// that does not log in can run nothing. [`Redis::command`] logs in as a user of
    /// the test's own with every right.
    pub fn start_with_users(users: &[RedisUser<'_>]) -> Redis {
        Redis::start_secured(users, false)
    }

    /// As [`Redis::start_with_users`], plus a TLS port whose certificate (for
    /// `127.0.0.1` and `localhost`) is signed by a CA made for this server
    /// ([`Redis::ca_file`]), with the `openssl` CLI.
    pub fn start_with_tls(users: &[RedisUser<'_>]) -> Redis {
        Redis::start_secured(users, true)
    }

    fn start_secured(users: &[RedisUser<'_>], tls: bool) -> Redis {
        let dir = TempDir::new("redis");
        let admin = ("e2e-admin".to_owned(), shared::random::id());
        let mut acl = format!(
            "user default off\nuser {} on >{} ~* &* +@all\n",
            admin.0, admin.1
        );
        for (name, password, rules) in users {
            acl.push_str(&format!("user {name} on >{password} {rules}\n"));
        }
        std::fs::write(dir.0.join("users.acl"), acl).expect("write the ACL file");
        if tls {
            make_certificates(&dir.0);
        }
        let mut redis = Redis {
            port: free_port(),
            tls_port: tls.then(free_port),
            dir,
            child: None,
            admin: Some(admin),
        };
        redis.resume();
        redis
    }

    /// The PEM file of the CA that signed the TLS port's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.0.join("ca.crt")
    }

    /// Starts it again on the same port (empty).
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "redis already running");
        let mut command = Command::new(program("redis-server", "REDIS_SERVER_BIN"));
        command
            .args([
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--port",
            ])
            .arg(self.port.to_string())
            .arg("--dir")
            .arg(&self.dir.0);
        if self.admin.is_some() {
            command.arg("--aclfile").arg(self.dir.0.join("users.acl"));
        }
        if let Some(tls_port) = self.tls_port {
            command
                .arg("--tls-port")
                .arg(tls_port.to_string())
                .arg("--tls-cert-file")
                .arg(self.dir.0.join("server.crt"))
                .arg("--tls-key-file")
                .arg(self.dir.0.join("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(self.ca_file())
                .args(["--tls-auth-clients", "no"]);
        }
        let child = command
            .stdout(log(&self.dir, "redis.log"))
            .stderr(log(&self.dir, "redis.log"))
            .spawn()
            .expect("cannot start redis-server");
        self.child = Some(child);
        let port = self.port;
        assert!(
            eventually(Duration::from_secs(10), || self.ping().then_some(())).is_some(),
            "redis-server on {port} did not answer; log in {}",
            self.dir.0.display()
        );
    }

    /// Kills it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The URL of database `db` (no user).
    pub fn url(&self, db: u8) -> String {
        format!("redis://127.0.0.1:{}/{db}", self.port)
    }

    /// The URL of database `db` for `user` with `password`, over TLS when `tls`.
    pub fn url_as(&self, user: &str, password: &str, db: u8, tls: bool) -> String {
        match (tls, self.tls_port) {
            (true, Some(port)) => format!("rediss://{user}:{password}@127.0.0.1:{port}/{db}"),
            (true, None) => panic!("this Redis has no TLS port"),
            (false, _) => format!("redis://{user}:{password}@127.0.0.1:{}/{db}", self.port),
        }
    }

    /// Sends one command (RESP) and returns the raw reply; logs in first as the test's
    /// own user when the server has ACL users.
    pub fn command(&self, db: u8, args: &[&str]) -> String {
        let login = self.admin.as_ref().map(|(u, p)| (u.as_str(), p.as_str()));
        self.command_as(login, db, args)
    }

    /// Sends one command as `login` (user, password), or without logging in: see
    /// [`redis_command`].
    pub fn command_as(&self, login: Option<(&str, &str)>, db: u8, args: &[&str]) -> String {
        redis_command(self.port, login, db, args)
    }

    fn ping(&self) -> bool {
        self.command(0, &["PING"]).starts_with("+PONG")
    }
}

/// Sends one command (RESP) to the Redis on 127.0.0.1:`port`, database `db`, logged in
/// as `login` (user, password) or not at all; returns the raw reply, or the error line
/// of the login or the `SELECT` when one failed (e.g. `-NOAUTH ...`).
pub fn redis_command(port: u16, login: Option<(&str, &str)>, db: u8, args: &[&str]) -> String {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let db = db.to_string();
    let mut preamble: Vec<Vec<&str>> = Vec::new();
    if let Some((user, password)) = login {
        preamble.push(vec!["AUTH", user, password]);
    }
    preamble.push(vec!["SELECT", &db]);
    for step in &preamble {
        let _ = stream.write_all(&resp(step));
        // "+OK\r\n", or an error line.
        let line = read_reply(&mut stream, |r| r.ends_with("\r\n"));
        if !line.starts_with("+OK") {
            return line;
        }
    }
    let _ = stream.write_all(&resp(args));
    read_reply(&mut stream, complete)
}

/// A command as a RESP array of bulk strings.
fn resp(args: &[&str]) -> Vec<u8> {
    let mut request = format!("*{}\r\n", args.len());
    for a in args {
        request.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    request.into_bytes()
}

/// Reads until `done` says the reply is whole, the peer closes, or 2 s pass.
fn read_reply(stream: &mut TcpStream, done: impl Fn(&str) -> bool) -> String {
    let mut reply = Vec::new();
    let mut buf = [0u8; 65536];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
        if done(&String::from_utf8_lossy(&reply)) {
            break;
        }
    }
    String::from_utf8_lossy(&reply).into_owned()
}

/// Writes `ca.crt` and a server certificate for 127.0.0.1 and localhost signed by it
/// (`server.crt`, `server.key`) into `dir`, with the `openssl` CLI.
fn make_certificates(dir: &Path) {
    let openssl = program("openssl", "OPENSSL_BIN");
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .expect("write server.ext");
    let ec_key = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
    for step in [
        format!(
            "req -x509 {ec_key} -keyout ca.key -out ca.crt -days 2 -subj /CN=redis-test-CA \
             -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign"
        ),
        format!("req {ec_key} -keyout server.key -out server.csr -subj /CN=127.0.0.1"),
        "x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt \
         -days 2 -extfile server.ext"
            .to_owned(),
    ] {
        let out = Command::new(&openssl)
            .args(step.split_whitespace())
            .current_dir(dir)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {step}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// True when `reply` holds one whole RESP value (enough for the replies tests read).
fn complete(reply: &str) -> bool {
    let Some(first) = reply.as_bytes().first() else {
        return false;
    };
    match first {
        b'+' | b'-' | b':' => reply.ends_with("\r\n"),
        b'$' => {
            let Some((len, rest)) = reply[1..].split_once("\r\n") else {
                return false;
            };
            match len.parse::<i64>() {
                Ok(n) if n < 0 => true,
                Ok(n) => rest.len() >= usize::try_from(n).unwrap_or(0) + 2,
                Err(_) => true,
            }
        }
        b'*' => {
            // Arrays of bulk strings: count the "$" headers answered.
            let Some((count, _)) = reply[1..].split_once("\r\n") else {
                return false;
            };
            let n: usize = count.parse().unwrap_or(0);
            reply.ends_with("\r\n")
                && reply.matches("\r\n$").count() + reply.matches("\r\n:").count() >= n
        }
        _ => true,
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Kafka-protocol broker (tansu, in-memory storage): a restart empties it.
#[derive(Debug)]
pub struct Broker {
    /// Its port on 127.0.0.1 (the cuttable proxy's, when it has one).
    pub port: u16,
    /// Where the broker itself listens (the same as `port` without a proxy).
    listen_port: u16,
    dir: TempDir,
    child: Option<Child>,
    cut: Option<Cut>,
}

/// A TCP proxy in front of the broker that can cut every connection and refuse new ones,
/// while the broker keeps its log (a restart of this in-memory broker would empty it,
/// which no real broker does).
#[derive(Debug)]
struct Cut {
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    connections: std::sync::Arc<std::sync::Mutex<Vec<TcpStream>>>,
}

impl Cut {
    fn start(listen: u16, target: u16) -> Cut {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = std::net::TcpListener::bind(("127.0.0.1", listen)).expect("proxy port");
        let open = Arc::new(AtomicBool::new(true));
        let connections: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let (o, c) = (open.clone(), connections.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                if !o.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let pipes = [
                    (client.try_clone(), server.try_clone()),
                    (server.try_clone(), client.try_clone()),
                ];
                if let (Ok(a), Ok(b)) = (client.try_clone(), server.try_clone()) {
                    let mut held = c.lock().unwrap_or_else(|p| p.into_inner());
                    held.push(a);
                    held.push(b);
                }
                for pipe in pipes {
                    if let (Ok(mut from), Ok(mut to)) = pipe {
                        std::thread::spawn(move || {
                            let _ = std::io::copy(&mut from, &mut to);
                            let _ = to.shutdown(std::net::Shutdown::Both);
                        });
                    }
                }
            }
        });
        Cut { open, connections }
    }

    fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        for c in self
            .connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Broker {
    /// Starts a broker on a free port.
    pub fn start() -> Broker {
        let port = free_port();
        let mut broker = Broker {
            port,
            listen_port: port,
            dir: TempDir::new("broker"),
            child: None,
            cut: None,
        };
        broker.resume();
        broker
    }

    /// Starts a broker behind a proxy that [`cut`](Broker::cut) disconnects: an outage
    /// in which the broker keeps its log.
    pub fn start_cuttable() -> Broker {
        let (port, listen_port) = (free_port(), free_port());
        let cut = Cut::start(port, listen_port);
        let mut broker = Broker {
            port,
            listen_port,
            dir: TempDir::new("broker"),
            child: None,
            cut: Some(cut),
        };
        broker.resume();
        broker
    }

    /// Cuts every connection to a [cuttable](Broker::start_cuttable) broker and refuses
    /// new ones until [`restore`](Broker::restore).
    pub fn cut(&self) {
        self.cut.as_ref().expect("a cuttable broker").cut();
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.cut.as_ref().expect("a cuttable broker").restore();
    }

    /// Starts it again on the same port.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "broker already running");
        let listen = format!("tcp://127.0.0.1:{}", self.listen_port);
        let advertised = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(program("tansu", "TANSU_BIN"))
            .args([
                "broker",
                "--listener-url",
                &listen,
                "--advertised-listener-url",
                &advertised,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(log(&self.dir, "broker.log"))
            .stderr(log(&self.dir, "broker.log"))
            .spawn()
            .expect("cannot start the broker");
        self.child = Some(child);
        let port = self.listen_port;
        assert!(
            eventually(Duration::from_secs(20), || answers(port).then_some(())).is_some(),
            "the broker on {port} did not listen"
        );
    }

    /// Kills it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `host:port` for `KAFKA_BOOTSTRAP`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}
