//! A small HTTP/1.1 client for talking to `plexus serve` (HTTP or HTTPS, one connection
//! per request): enough for the CLI and the HTTP benchmark without a heavy client stack.

use anyhow::{Context, Result, bail};
use serde_json::Value as Json;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

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
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth())
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
        let tls = if secure {
            let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let server_name = rustls::pki_types::ServerName::try_from(host.to_owned())
                .with_context(|| format!("{url}: `{host}` is not a host name"))?;
            Some(Tls {
                connector: tokio_rustls::TlsConnector::from(Arc::new(tls_config()?)),
                server_name,
            })
        } else {
            None
        };
        Ok(Client {
            addr,
            credential: None,
            tls,
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

    /// Sends a request; returns the status and the body as JSON (`null` when empty).
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, Json)> {
        let mut stream = self.connect().await?;
        let body = body.unwrap_or("");
        let authorization = match &self.credential {
            Some(c) => format!("Authorization: Bearer {}\r\n", c.bearer(self).await?),
            None => String::new(),
        };
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{authorization}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        match stream.read_to_end(&mut raw).await {
            Ok(_) => {}
            // A TLS peer that closes without close_notify, after a whole response.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
            Err(e) => return Err(e.into()),
        }
        let text = String::from_utf8_lossy(&raw);
        let (head, rest) = text
            .split_once("\r\n\r\n")
            .context("the server sent an incomplete HTTP response")?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("no HTTP status")?;
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(rest)
        } else {
            rest.to_owned()
        };
        let json = if body.trim().is_empty() {
            Json::Null
        } else {
            serde_json::from_str(&body).unwrap_or(Json::String(body))
        };
        Ok((status, json))
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

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
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
