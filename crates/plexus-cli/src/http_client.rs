//! A small HTTP/1.1 client for talking to `plexus serve` (plain HTTP, one connection per
//! request): enough for the CLI and the HTTP benchmark without a heavy client stack.

use anyhow::{Context, Result, bail};
use serde_json::Value as Json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Clone)]
pub struct Client {
    /// `host:port`
    pub addr: String,
    /// Sent as `Authorization: Bearer ...` (an API key or a session's access token).
    pub credential: Option<crate::login::Credential>,
}

impl Client {
    /// Accepts `http://host:port` (a trailing `/` is fine) or `host:port`.
    pub fn new(url: &str) -> Result<Self> {
        let rest = url.trim().trim_end_matches('/');
        if rest.starts_with("https://") {
            bail!(
                "{url}: https is not supported by this client yet; use http:// behind your TLS proxy"
            );
        }
        let addr = rest.strip_prefix("http://").unwrap_or(rest);
        if addr.is_empty() || addr.contains('/') {
            bail!("{url} is not a server address; write e.g. http://127.0.0.1:8080");
        }
        Ok(Client {
            addr: addr.to_owned(),
            credential: None,
        })
    }

    /// Sends a request; returns the status and the body as JSON (`null` when empty).
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, Json)> {
        let mut stream = tokio::net::TcpStream::connect(&self.addr)
            .await
            .with_context(|| {
                format!(
                    "cannot reach the server at {} (is `plexus serve` running?)",
                    self.addr
                )
            })?;
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
        stream.read_to_end(&mut raw).await?;
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
