//! HTTPS for `plexus serve --tls-cert FILE --tls-key FILE`: a listener that completes TLS
//! handshakes off the accept path (a slow or broken client never holds up others) and
//! hands axum finished streams, so graceful shutdown works as with plain TCP.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// The HTTP API's TLS settings (HTTP/1.1, which the WebSocket upgrade needs).
pub fn server_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, String> {
    with_alpn(cert, key, b"http/1.1")
}

/// The gRPC port's TLS settings (HTTP/2).
pub fn grpc_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, String> {
    with_alpn(cert, key, b"h2")
}

/// Reads a PEM certificate chain and private key; errors name the file and the problem.
fn with_alpn(cert: &Path, key: &Path, alpn: &[u8]) -> Result<rustls::ServerConfig, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("{}: no PEM private key in it ({e})", key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| format!("the certificate and key do not go together: {e}"))?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

pub struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

impl TlsListener {
    pub fn new(listener: TcpListener, config: rustls::ServerConfig) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        Ok(TlsListener {
            local,
            ready: handshakes(listener, config),
        })
    }
}

/// Small answers (a WebSocket frame, a gRPC reply) go out at once instead of waiting for
/// the client's delayed ACK (Nagle's algorithm: ~40 ms per exchange).
pub fn no_delay(tcp: &TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "TCP_NODELAY could not be set");
    }
}

/// Accepts connections and completes their handshakes in tasks of their own; finished
/// streams come out of the channel.
fn handshakes(
    listener: TcpListener,
    config: rustls::ServerConfig,
) -> mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)> {
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let (tx, ready) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => {
                    no_delay(&c.0);
                    c
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            if tx.is_closed() {
                return;
            }
            let (acceptor, ready) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let handshake =
                    tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp));
                match handshake.await {
                    Ok(Ok(tls)) => {
                        let _ = ready.send((tls, peer)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ready
}

/// A TLS connection for tonic, which wants to know the peer of each connection.
pub struct GrpcTls(TlsStream<TcpStream>, SocketAddr);

/// The gRPC port's connections, TLS established.
pub fn grpc_incoming(
    listener: TcpListener,
    config: rustls::ServerConfig,
) -> impl tokio_stream::Stream<Item = std::io::Result<GrpcTls>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::ReceiverStream::new(handshakes(listener, config))
        .map(|(tls, peer)| Ok(GrpcTls(tls, peer)))
}

impl tonic::transport::server::Connected for GrpcTls {
    type ConnectInfo = SocketAddr;

    fn connect_info(&self) -> SocketAddr {
        self.1
    }
}

impl tokio::io::AsyncRead for GrpcTls {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for GrpcTls {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accept task only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}
