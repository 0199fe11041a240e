//! Real Redis (`redis-server`) and a real Kafka-protocol broker (`tansu`), each started
//! on a free loopback port by the test itself and stopped when dropped.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{TempDir, eventually, free_port};

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

/// A Redis server with no persistence: a restart starts it empty.
#[derive(Debug)]
pub struct Redis {
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl Redis {
    /// Starts redis-server on a free port.
    pub fn start() -> Redis {
        let mut redis = Redis {
            port: free_port(),
            dir: TempDir::new("redis"),
            child: None,
        };
        redis.resume();
        redis
    }

    /// Starts it again on the same port (empty).
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "redis already running");
        let child = Command::new(program("redis-server", "REDIS_SERVER_BIN"))
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
            .arg(&self.dir.0)
            .stdout(log(&self.dir, "redis.log"))
            .stderr(log(&self.dir, "redis.log"))
            .spawn()
            .expect("cannot start redis-server");
        self.child = Some(child);
        let port = self.port;
        assert!(
            eventually(Duration::from_secs(10), || self.ping().then_some(())).is_some(),
            "redis-server on {port} did not answer"
        );
    }

    /// Kills it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The URL of database `db`.
    pub fn url(&self, db: u8) -> String {
        format!("redis://127.0.0.1:{}/{db}", self.port)
    }

    /// Sends one command (RESP) and returns the raw reply.
    pub fn command(&self, db: u8, args: &[&str]) -> String {
        let mut request = format!(
            "*2\r\n$6\r\nSELECT\r\n${}\r\n{db}\r\n",
            db.to_string().len()
        );
        request.push_str(&format!("*{}\r\n", args.len()));
        for a in args {
            request.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return String::new();
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = stream.write_all(request.as_bytes());
        let mut reply = Vec::new();
        let mut buf = [0u8; 65536];
        // "+OK\r\n" for SELECT, then the reply to the command.
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 {
                break;
            }
            reply.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&reply);
            if let Some(rest) = text.strip_prefix("+OK\r\n")
                && complete(rest)
            {
                return rest.to_owned();
            }
        }
        String::from_utf8_lossy(&reply).into_owned()
    }

    fn ping(&self) -> bool {
        self.command(0, &["PING"]).starts_with("+PONG")
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
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl Broker {
    /// Starts a broker on a free port.
    pub fn start() -> Broker {
        let mut broker = Broker {
            port: free_port(),
            dir: TempDir::new("broker"),
            child: None,
        };
        broker.resume();
        broker
    }

    /// Starts it again on the same port.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "broker already running");
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(program("tansu", "TANSU_BIN"))
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(log(&self.dir, "broker.log"))
            .stderr(log(&self.dir, "broker.log"))
            .spawn()
            .expect("cannot start the broker");
        self.child = Some(child);
        let port = self.port;
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
