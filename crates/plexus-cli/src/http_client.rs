//! The client for talking to `plexus serve` (HTTP or HTTPS): requests go through
//! `reqwest` (connections kept and reused, timeouts, any response a server can send), on
//! the workspace's one rustls/ring configuration; WebSockets get a connection of their own
//! with the same TLS settings ([`Client::connect`]).

use anyhow::{Context, Result, bail};
use serde_json::Value as Json;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// How long reaching the server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the server may stay silent in the middle of an answer.
const READ_TIMEOUT: Duration = Duration::from_secs(300);

/// A connection to the server, plain or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

#[derive(Debug, Clone)]
pub struct Client {
    /// `host:port`
    pub addr: String,
    /// Sent as `Authorization: Bearer ...` (an API key or a session's access token).
    pub credential: Option<crate::login::Credential>,
    /// Set for `https://` servers.
    tls: Option<Tls>,
    http: reqwest::Client,
}

#[derive(Clone)]
struct Tls {
    connector: tokio_rustls::TlsConnector,
    server_name: rustls::pki_types::ServerName<'static>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tls({:?})", self.server_name)
    }
}

/// Trusts the system's certificate authorities, plus the PEM certificates in
/// `PLEXUS_CA_CERT` (for a server with a private or self-signed certificate).
fn tls_config() -> Result<rustls::ClientConfig> {
    config_trusting(trusted_roots()?)
}

/// The workspace's one TLS backend (ring) trusting `roots`.
fn config_trusting(roots: rustls::RootCertStore) -> Result<rustls::ClientConfig> {
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

fn trusted_roots() -> Result<rustls::RootCertStore> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = std::env::var_os("PLEXUS_CA_CERT") {
        let path = std::path::PathBuf::from(path);
        let certs = CertificateDer::pem_file_iter(&path)
            .with_context(|| format!("PLEXUS_CA_CERT={}", path.display()))?;
        for cert in certs {
            let cert = cert.with_context(|| format!("PLEXUS_CA_CERT={}", path.display()))?;
            roots
                .add(cert)
                .with_context(|| format!("PLEXUS_CA_CERT={}", path.display()))?;
        }
    }
    Ok(roots)
}

impl Client {
    /// Accepts `http://host[:port]`, `https://host[:port]` (a trailing `/` is fine) or
    /// `host:port` (plain HTTP).
    pub fn new(url: &str) -> Result<Self> {
        let rest = url.trim().trim_end_matches('/');
        let (secure, addr) = match rest.split_once("://") {
            Some(("https", a)) => (true, a),
            Some(("http", a)) => (false, a),
            Some((scheme, _)) => bail!("{url}: use http:// or https://, not {scheme}://"),
            None => (false, rest),
        };
        if addr.is_empty() || addr.contains('/') {
            bail!("{url} is not a server address; write e.g. http://127.0.0.1:8080");
        }
        let has_port = addr
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok());
        let addr = match (has_port, secure) {
            (true, _) => addr.to_owned(),
            (false, true) => format!("{addr}:443"),
            (false, false) => format!("{addr}:80"),
        };
        let mut http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .tcp_nodelay(true)
            .no_proxy();
        // For a plain http:// server the client still gets the ring backend (it trusts
        // nothing and is never used), so no other TLS provider is ever looked for.
        let tls = if secure {
            let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let server_name = rustls::pki_types::ServerName::try_from(host.to_owned())
                .with_context(|| format!("{url}: `{host}` is not a host name"))?;
            let config = tls_config()?;
            http = http.tls_backend_preconfigured(config.clone());
            Some(Tls {
                connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
                server_name,
            })
        } else {
            http = http.tls_backend_preconfigured(config_trusting(rustls::RootCertStore::empty())?);
            None
        };
        let http = http.build().context("cannot set up the HTTP client")?;
        Ok(Client {
            addr,
            credential: None,
            tls,
            http,
        })
    }

    /// The server as a URL: `http://host:port` or `https://host:port`.
    pub fn base_url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The WebSocket URL of `path_and_query`.
    pub fn ws_url(&self, path_and_query: &str) -> String {
        let scheme = if self.tls.is_some() { "wss" } else { "ws" };
        format!("{scheme}://{}{path_and_query}", self.addr)
    }

    /// A connection to the server (TLS established for https).
    pub async fn connect(&self) -> Result<Box<dyn Io>> {
        let tcp = tokio::net::TcpStream::connect(&self.addr)
            .await
            .with_context(|| {
                format!(
                    "cannot reach the server at {} (is `plexus serve` running?)",
                    self.addr
                )
            })?;
        // The WebSocket's small frames go out at once (see the server's `no_delay`).
        tcp.set_nodelay(true)?;
        match &self.tls {
            None => Ok(Box::new(tcp)),
            Some(t) => {
                let stream = t
                    .connector
                    .connect(t.server_name.clone(), tcp)
                    .await
                    .with_context(|| {
                        format!(
                            "TLS with {} failed (a private certificate? set PLEXUS_CA_CERT to its PEM file)",
                            self.addr
                        )
                    })?;
                Ok(Box::new(stream))
            }
        }
    }

    /// Sends a request; returns the status and the body as JSON (`null` when empty, a
    /// JSON string when the body is not JSON).
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, Json)> {
        let method = reqwest::Method::from_bytes(method.as_bytes())
            .with_context(|| format!("`{method}` is not an HTTP method"))?;
        let url = format!("{}{path}", self.base_url());
        let mut req = self
            .http
            .request(method, &url)
            .header("content-type", "application/json")
            .body(body.unwrap_or("").to_owned());
        if let Some(c) = &self.credential {
            req = req.bearer_auth(c.bearer(self).await?);
        }
        let response = req.send().await.map_err(|e| self.unreachable(e))?;
        let status = response.status().as_u16();
        let bytes = response
            .bytes()
            .await
            .with_context(|| format!("the answer of {} was cut off", self.addr))?;
        let text = String::from_utf8_lossy(&bytes);
        let json = if text.trim().is_empty() {
            Json::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| Json::String(text.into_owned()))
        };
        Ok((status, json))
    }

    /// What went wrong reaching the server, said so a person knows what to do.
    fn unreachable(&self, e: reqwest::Error) -> anyhow::Error {
        let detail = std::iter::successors(Some(&e as &(dyn std::error::Error + 'static)), |e| {
            e.source()
        })
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ");
        if e.is_connect() && self.tls.is_some() && detail.contains("certificate") {
            anyhow::anyhow!(
                "TLS with {} failed (a private certificate? set PLEXUS_CA_CERT to its PEM file): {detail}",
                self.addr
            )
        } else if e.is_connect() {
            anyhow::anyhow!(
                "cannot reach the server at {} (is `plexus serve` running?): {detail}",
                self.addr
            )
        } else if e.is_timeout() {
            anyhow::anyhow!(
                "the server at {} did not answer in time: {detail}",
                self.addr
            )
        } else {
            anyhow::anyhow!("talking to the server at {} failed: {detail}", self.addr)
        }
    }

    /// Like [`Client::request`], but a non-2xx answer becomes an error with the server's message.
    pub async fn call(&self, method: &str, path: &str, body: Option<&str>) -> Result<Json> {
        let (status, json) = self.request(method, path, body).await?;
        if (200..300).contains(&status) {
            return Ok(json);
        }
        let message = json
            .get("message")
            .and_then(Json::as_str)
            .map_or_else(|| json.to_string(), str::to_owned);
        let mut text = format!("the server answered {status}: {message}");
        if let Some(problems) = json.get("details").and_then(Json::as_array) {
            for p in problems {
                match (p.get("line"), p.get("message")) {
                    (Some(line), Some(m)) => {
                        text.push_str(&format!("\n  line {line}: {}", m.as_str().unwrap_or("")))
                    }
                    _ => text.push_str(&format!("\n  {p}")),
                }
            }
        }
        bail!(text)
    }
}

/// Percent-encodes a path segment (run ids and names are plain, but be safe).
pub fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    /// A server that answers every request on a connection with `body` (chunked, as a
    /// streaming server would) and counts the connections it accepted.
    async fn server(body: &'static [u8]) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut lines = BufReader::new(read);
                    loop {
                        // Read one request head (the client sends empty bodies here).
                        let mut line = String::new();
                        let mut length = 0usize;
                        loop {
                            line.clear();
                            if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if let Some(v) =
                                line.to_ascii_lowercase().strip_prefix("content-length:")
                            {
                                length = v.trim().parse().unwrap_or(0);
                            }
                            if line == "\r\n" {
                                break;
                            }
                        }
                        let mut skip = vec![0u8; length];
                        tokio::io::AsyncReadExt::read_exact(&mut lines, &mut skip)
                            .await
                            .ok();
                        let mut answer = format!(
                            "HTTP/1.1 418 I'm a teapot\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n",
                            body.len()
                        )
                        .into_bytes();
                        answer.extend_from_slice(body);
                        answer.extend_from_slice(b"\r\n0\r\n\r\n");
                        if write.write_all(&answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    #[tokio::test]
    async fn any_answer_is_read_and_connections_are_reused() {
        let (addr, accepted) = server(b"{\"code\": \"teapot\"}").await;
        let client = Client::new(&format!("http://{addr}")).unwrap();
        for _ in 0..3 {
            let (status, body) = client.request("GET", "/x", None).await.unwrap();
            assert_eq!(status, 418);
            assert_eq!(body["code"], "teapot");
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);

        // Bytes that are not UTF-8 or JSON come back as text, never a panic.
        let (addr, _) = server(b"\xff\xfe not json \x00").await;
        let client = Client::new(&addr).unwrap();
        let (status, body) = client.request("POST", "/y", Some("{}")).await.unwrap();
        assert_eq!(status, 418);
        assert!(body.as_str().unwrap().contains("not json"), "{body}");
    }

    #[tokio::test]
    async fn an_unreachable_server_is_named() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let client = Client::new(&addr).unwrap();
        let err = client
            .request("GET", "/", None)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot reach the server"), "{err}");
    }
}
