//! A minimal HTTP/1.1 client on std sockets: one request per connection, any header
//! bytes (the malformed corpus needs bytes no client library would send).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// Body (chunked encoding undone).
    pub body: Vec<u8>,
}

impl Response {
    /// The first header with this (lowercase) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (`Null` if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Sends raw bytes to `127.0.0.1:port` and returns the response: read until it is
/// complete by its own framing, or until the peer closes.
///
/// Framing matters for timing: Envoy delays closing after a local reply (its
/// `delayed_close_timeout`, 1 s), so waiting for the close would add a second to
/// every refusal.
pub fn raw(port: u16, request: &[u8]) -> io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.write_all(request)?;
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(n) => n,
            Err(e) if !out.is_empty() && e.kind() == io::ErrorKind::ConnectionReset => 0,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n]);
        if is_complete(&out) {
            return Ok(out);
        }
    }
}

/// True when `bytes` hold a whole response per its content-length or chunked framing.
fn is_complete(bytes: &[u8]) -> bool {
    let Some(split) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&bytes[..split]).to_ascii_lowercase();
    let body = &bytes[split + 4..];
    for line in head.split("\r\n") {
        if let Some(len) = line.strip_prefix("content-length:") {
            return len
                .trim()
                .parse::<usize>()
                .is_ok_and(|len| body.len() >= len);
        }
        if line.starts_with("transfer-encoding:") && line.contains("chunked") {
            return body.ends_with(b"0\r\n\r\n");
        }
    }
    false
}

/// Sends one request with arbitrary header bytes.
pub fn send(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &[u8])],
    body: &[u8],
) -> io::Result<Response> {
    send_as(
        port,
        &format!("127.0.0.1:{port}"),
        method,
        path,
        headers,
        body,
    )
}

/// Sends one request to `port` naming `host` (as a client of a balancer in front of
/// several servers would).
pub fn send_as(
    port: u16,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &[u8])],
    body: &[u8],
) -> io::Result<Response> {
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n").into_bytes();
    for (name, value) in headers {
        req.extend_from_slice(name.as_bytes());
        req.extend_from_slice(b": ");
        req.extend_from_slice(value);
        req.extend_from_slice(b"\r\n");
    }
    if !body.is_empty() || method == "POST" {
        req.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    req.extend_from_slice(body);
    parse(&raw(port, &req)?)
}

/// `GET` with text headers.
pub fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> io::Result<Response> {
    let headers: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
    send(port, "GET", path, &headers, b"")
}

/// `GET` with `Authorization: Bearer <token>`.
pub fn get_with_token(port: u16, path: &str, token: &str) -> io::Result<Response> {
    get(port, path, &[("authorization", &format!("Bearer {token}"))])
}

/// `POST` of a JSON body.
pub fn post_json(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    body: &serde_json::Value,
) -> io::Result<Response> {
    let mut all: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
    all.push(("content-type", b"application/json"));
    send(port, "POST", path, &all, body.to_string().as_bytes())
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// Parses a complete response.
pub fn parse(bytes: &[u8]) -> io::Result<Response> {
    let split = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = String::from_utf8_lossy(&bytes[..split]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = bytes[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body).ok_or_else(|| bad("bad chunked body"))?;
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut input: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = input.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&input[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        input = &input[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(input.get(..size)?);
        input = input.get(size + 2..)?;
    }
}
