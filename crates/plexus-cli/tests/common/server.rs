//! `plexus serve` as a black box: started on loopback with its own data dir, the admin
//! key it printed on first start, and a minimal HTTP client.

use super::Plexus;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::Duration;

/// The admin key of each server address (from its data dir's bootstrap).
pub static KEYS: std::sync::Mutex<std::collections::BTreeMap<String, String>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// The gRPC address of each server (by its HTTP address).
pub static GRPC: std::sync::Mutex<std::collections::BTreeMap<String, String>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

pub fn admin_key(addr: &str) -> String {
    KEYS.lock().unwrap().get(addr).cloned().unwrap_or_default()
}

pub fn start_server(p: &Plexus) -> (Child, String) {
    start_server_with(p, &[])
}

/// `plexus serve` on loopback, on ports the system picks.
pub fn serve_command(p: &Plexus) -> std::process::Command {
    let mut cmd = p.cmd();
    cmd.args([
        "serve",
        "--listen-addr",
        "127.0.0.1:0",
        "--grpc-addr",
        "127.0.0.1:0",
    ]);
    cmd
}

pub fn start_server_with(p: &Plexus, extra: &[&str]) -> (Child, String) {
    let mut cmd = serve_command(p);
    cmd.args(extra);
    start_server_command(p, cmd)
}

/// `plexus serve` on loopback with its gRPC API on `grpc` (a fixed address, so that
/// plugins find it again after a restart).
pub fn start_server_on(p: &Plexus, grpc: &str) -> (Child, String) {
    let mut cmd = p.cmd();
    cmd.args(["serve", "--listen-addr", "127.0.0.1:0", "--grpc-addr", grpc]);
    start_server_command(p, cmd)
}

/// A free loopback address (bound and released: good enough for a test).
pub fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

pub fn grpc_addr(http: &str) -> String {
    GRPC.lock()
        .unwrap()
        .get(http)
        .cloned()
        .expect("the server's gRPC address")
}

fn start_server_command(p: &Plexus, mut cmd: std::process::Command) -> (Child, String) {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("plexus serve starts");
    let mut reader = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let key_file = p.dir.path().join("admin.key");
    let restart = key_file.exists();
    let addr = loop {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "serve exited before listening"
        );
        // The first start of a data dir prints the bootstrap admin key, once.
        if let Some(rest) = line.split("api_secret=").nth(1) {
            assert!(!restart, "a restart printed a bootstrap key again: {line}");
            let key: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
                .collect();
            std::fs::write(&key_file, key).unwrap();
        }
        if let Some(rest) = line
            .split("listening on http://")
            .nth(1)
            .or_else(|| line.split("listening on https://").nth(1))
        {
            let http = rest.split_whitespace().next().unwrap().to_owned();
            if let Some(grpc) = rest.split("gRPC on ").nth(1) {
                let grpc = grpc.split([',', ' ']).next().unwrap().to_owned();
                GRPC.lock().unwrap().insert(http.clone(), grpc);
            }
            break http;
        }
    };
    let key = std::fs::read_to_string(&key_file).expect("the bootstrap key of this data dir");
    KEYS.lock().unwrap().insert(addr.clone(), key);
    // The server's JSON log lines go to serve.log in the test's directory.
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p.dir.path().join("serve.log"))
        .unwrap();
    std::thread::spawn(move || {
        let mut line = String::new();
        while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
            let _ = log.write_all(line.as_bytes());
            line.clear();
        }
    });
    (child, addr)
}

pub fn http(addr: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    http_text(
        addr,
        method,
        path,
        &body.map(|b| b.to_string()).unwrap_or_default(),
    )
}

/// A minimal HTTP/1.1 client: one request per connection.
pub fn http_text(addr: &str, method: &str, path: &str, body: &str) -> (u16, Value) {
    try_http_text(addr, method, path, body, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"))
}

/// [`http`] that says why instead of panicking (a server killed or paused mid-request),
/// within `timeout`.
pub fn try_http(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> Result<(u16, Value), String> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    try_http_text(addr, method, path, &body, timeout)
}

fn try_http_text(
    addr: &str,
    method: &str,
    path: &str,
    body: &str,
    timeout: Duration,
) -> Result<(u16, Value), String> {
    let socket: std::net::SocketAddr = addr.parse().map_err(|e| format!("{e}"))?;
    let mut stream = TcpStream::connect_timeout(&socket, timeout).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        admin_key(addr),
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("not a full response: {text}"))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {head}"))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(&tail[..n]);
            rest = &tail[n + 2..];
        }
        out
    } else {
        body.to_owned()
    };
    Ok((status, serde_json::from_str(&body).unwrap_or(Value::Null)))
}

/// Stops a server with SIGTERM, as an operator would, and checks it exits cleanly.
pub fn stop(server: &mut Child) {
    // SAFETY: signalling the child we started.
    unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    assert_eq!(super::wait_exit(server, Duration::from_secs(20)), 0);
}
