//! The upstream behind Envoy: answers 200 to everything and records request headers.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// Headers of one request, names lowercased.
pub type Headers = Vec<(String, String)>;

/// A recording echo server on a free loopback port; runs until the test process ends.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Its port.
    pub port: u16,
    seen: Arc<Mutex<Vec<Headers>>>,
}

impl Upstream {
    /// Starts the server.
    pub fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let record = Arc::clone(&record);
                std::thread::spawn(move || serve(stream, &record));
            }
        });
        Upstream { port, seen }
    }

    /// Headers of the requests received so far.
    pub fn requests(&self) -> Vec<Headers> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Headers of the newest request whose `x-test-id` is `id`.
    pub fn request_with_id(&self, id: &str) -> Option<Headers> {
        self.requests()
            .into_iter()
            .rev()
            .find(|h| h.iter().any(|(n, v)| n == "x-test-id" && v == id))
    }
}

/// Serves keep-alive requests on one connection until it closes.
fn serve(stream: TcpStream, record: &Mutex<Vec<Headers>>) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((n, v)) = h.split_once(':') {
                headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
        }
        let len: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if let Ok(mut seen) = record.lock() {
            seen.push(headers);
        }
        let reply =
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 9\r\n\r\nupstream\n";
        if writer.write_all(reply).is_err() {
            return;
        }
    }
}
