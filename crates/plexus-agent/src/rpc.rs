//! gRPC with JSON bodies, both ways: [`JsonService`] serves a service whose methods are
//! handled as JSON values, [`Peer`] calls one.
//!
//! Generated protobuf code does not fit this protocol: the bodies are JSON, the two SDKs
//! disagree on the content type and on how bytes are written, and the engine must decide
//! per caller. So the transport stays tonic's and each message is a `serde_json::Value`
//! that [`crate::wire::decode`] turns into its type.

use crate::wire::Style;
use serde_json::Value as Json;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
pub use tonic::{Code, Status};

/// Messages can be large (cache values of several MiB): the protocol asks for 64 MiB.
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// The content type the engine and this SDK send.
pub const CONTENT_TYPE_JSON: &str = "application/grpc+json";

/// Encodes and decodes gRPC messages as JSON text.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonCodec;

impl Codec for JsonCodec {
    type Encode = Json;
    type Decode = Json;
    type Encoder = JsonCodec;
    type Decoder = JsonCodec;

    fn encoder(&mut self) -> Self::Encoder {
        JsonCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        JsonCodec
    }
}

impl Encoder for JsonCodec {
    type Item = Json;
    type Error = Status;

    fn encode(&mut self, item: Json, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        use bytes_writer::Writer;
        serde_json::to_writer(Writer(dst), &item)
            .map_err(|e| Status::internal(format!("cannot encode the message: {e}")))
    }
}

impl Decoder for JsonCodec {
    type Item = Json;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Json>, Status> {
        use bytes::Buf as _;
        let mut bytes = vec![0; src.remaining()];
        src.copy_to_slice(&mut bytes);
        if bytes.iter().all(u8::is_ascii_whitespace) {
            // An empty message: protobuf's encoding of `{}`, which some peers send.
            return Ok(Some(Json::Object(Default::default())));
        }
        serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            Status::invalid_argument(format!(
                "the message is not JSON ({e}); this service speaks JSON over gRPC"
            ))
        })
    }
}

mod bytes_writer {
    use bytes::BufMut as _;
    use tonic::codec::EncodeBuf;

    pub struct Writer<'a, 'b>(pub &'a mut EncodeBuf<'b>);

    impl std::io::Write for Writer<'_, '_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.put_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}

/// A call as a [`Handler`] sees it.
#[derive(Debug)]
pub struct Call {
    /// The method's name (`RegisterPlugin`).
    pub method: String,
    pub body: Json,
    pub metadata: tonic::metadata::MetadataMap,
    /// How the caller writes bytes (from its content type).
    pub style: Style,
    /// Where the call came from, when the transport knows.
    pub remote: Option<SocketAddr>,
}

impl Call {
    /// A metadata value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.metadata.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Messages a server-streaming method answers with.
pub type JsonStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<Json, Status>> + Send>>;

/// The methods of one service.
pub trait Handler: Send + Sync + 'static {
    fn call(&self, call: Call) -> impl Future<Output = Result<Json, Status>> + Send;

    /// Whether `method` answers with a stream of messages ([`Handler::call_stream`]).
    fn streams(&self, _method: &str) -> bool {
        false
    }

    /// A server-streaming method.
    fn call_stream(&self, call: Call) -> impl Future<Output = Result<JsonStream, Status>> + Send {
        async move {
            Err(Status::unimplemented(format!(
                "{} is not implemented",
                call.method
            )))
        }
    }
}

/// Serves the methods of the service `N` with a [`Handler`]; register it on a tonic
/// router with `add_service`.
pub struct JsonService<H, N> {
    handler: Arc<H>,
    name: std::marker::PhantomData<fn() -> N>,
}

impl<H, N> Clone for JsonService<H, N> {
    fn clone(&self) -> Self {
        JsonService {
            handler: self.handler.clone(),
            name: std::marker::PhantomData,
        }
    }
}

impl<H: Handler, N: ServiceName> JsonService<H, N> {
    pub fn new(handler: Arc<H>) -> Self {
        JsonService {
            handler,
            name: std::marker::PhantomData,
        }
    }
}

impl<H, N: ServiceName> tonic::server::NamedService for JsonService<H, N> {
    const NAME: &'static str = N::NAME;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, Infallible>> + Send>>;

impl<H, N, B> tower::Service<http::Request<B>> for JsonService<H, N>
where
    H: Handler,
    N: ServiceName,
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = req
            .uri()
            .path()
            .strip_prefix('/')
            .and_then(|p| p.strip_prefix(N::NAME))
            .and_then(|p| p.strip_prefix('/'))
            .unwrap_or("")
            .to_owned();
        let style = Style::of_content_type(
            req.headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
        );
        let streams = self.handler.streams(&method);
        let unary = Unary {
            handler: self.handler.clone(),
            method,
            style,
        };
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(JsonCodec)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE);
            if streams {
                return Ok(grpc.server_streaming(unary, req).await);
            }
            Ok(grpc.unary(unary, req).await)
        })
    }
}

struct Unary<H> {
    handler: Arc<H>,
    method: String,
    style: Style,
}

impl<H> Unary<H> {
    /// The call a request makes of this method.
    fn call_of(&mut self, request: tonic::Request<Json>) -> Call {
        let remote = request.remote_addr();
        let (metadata, _, body) = request.into_parts();
        Call {
            method: std::mem::take(&mut self.method),
            body,
            metadata,
            style: self.style,
            remote,
        }
    }
}

impl<H: Handler> tonic::server::UnaryService<Json> for Unary<H> {
    type Response = Json;
    type Future = Pin<Box<dyn Future<Output = Result<tonic::Response<Json>, Status>> + Send>>;

    fn call(&mut self, request: tonic::Request<Json>) -> Self::Future {
        let handler = self.handler.clone();
        let call = self.call_of(request);
        Box::pin(async move { handler.call(call).await.map(tonic::Response::new) })
    }
}

impl<H: Handler> tonic::server::ServerStreamingService<Json> for Unary<H> {
    type Response = Json;
    type ResponseStream = JsonStream;
    type Future = Pin<Box<dyn Future<Output = Result<tonic::Response<JsonStream>, Status>> + Send>>;

    fn call(&mut self, request: tonic::Request<Json>) -> Self::Future {
        let handler = self.handler.clone();
        let call = self.call_of(request);
        Box::pin(async move { handler.call_stream(call).await.map(tonic::Response::new) })
    }
}

/// The name of a service, for tonic's router.
pub trait ServiceName: Send + Sync + 'static {
    const NAME: &'static str;
}

/// `mirastack.plugin.v1.EngineService`.
pub struct EngineServiceName;
impl ServiceName for EngineServiceName {
    const NAME: &'static str = "mirastack.plugin.v1.EngineService";
}

/// `mirastack.plugin.v1.PluginService`.
pub struct PluginServiceName;
impl ServiceName for PluginServiceName {
    const NAME: &'static str = "mirastack.plugin.v1.PluginService";
}

type Transport = tower::util::MapRequest<
    tonic::transport::Channel,
    fn(http::Request<tonic::body::Body>) -> http::Request<tonic::body::Body>,
>;

/// Says `application/grpc+json` (tonic always writes plain `application/grpc`; the Go
/// SDK picks its JSON codec from the content type).
fn json_content_type(
    mut req: http::Request<tonic::body::Body>,
) -> http::Request<tonic::body::Body> {
    req.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(CONTENT_TYPE_JSON),
    );
    req
}

/// A connection to a service spoken as JSON over gRPC; cheap to clone.
#[derive(Clone)]
pub struct Peer {
    service: &'static str,
    grpc: tonic::client::Grpc<Transport>,
    /// Metadata sent with every call (`x-plugin-name`, `authorization`).
    headers: Arc<Vec<(&'static str, String)>>,
}

/// Why a call to a peer failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    #[error("{0}")]
    Address(String),
    #[error("{}", describe(.0))]
    Status(Status),
}

fn describe(s: &Status) -> String {
    match s.code() {
        Code::DeadlineExceeded => "no answer in time".to_owned(),
        Code::Unavailable => format!("unreachable: {}", s.message()),
        code => format!("{}: {}", code_name(code), s.message()),
    }
}

fn code_name(code: Code) -> String {
    format!("{code:?}")
        .chars()
        .enumerate()
        .flat_map(|(i, c)| {
            let sep = (i > 0 && c.is_ascii_uppercase()).then_some('_');
            sep.into_iter()
                .chain(std::iter::once(c.to_ascii_uppercase()))
        })
        .collect()
}

impl CallError {
    pub fn code(&self) -> Option<Code> {
        match self {
            CallError::Status(s) => Some(s.code()),
            CallError::Address(_) => None,
        }
    }
}

impl Peer {
    /// A peer at `addr` (`host:port` or `http://host:port`); connects on first use.
    pub fn lazy(service: &'static str, addr: &str) -> Result<Peer, CallError> {
        let uri = if addr.contains("://") {
            addr.to_owned()
        } else {
            format!("http://{addr}")
        };
        let endpoint = tonic::transport::Endpoint::from_shared(uri)
            .map_err(|e| CallError::Address(format!("bad address `{addr}`: {e}")))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true);
        let channel = endpoint.connect_lazy();
        let transport = tower::ServiceExt::map_request(
            channel,
            json_content_type as fn(http::Request<tonic::body::Body>) -> _,
        );
        let grpc = tonic::client::Grpc::new(transport)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        Ok(Peer {
            service,
            grpc,
            headers: Arc::new(Vec::new()),
        })
    }

    /// The same peer, sending `name: value` with every call.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Peer {
        let mut headers = (*self.headers).clone();
        headers.push((name, value.into()));
        self.headers = Arc::new(headers);
        self
    }

    /// The path of `method` and a request of `body` with this peer's headers.
    fn request(
        &self,
        method: &str,
        body: Json,
    ) -> Result<(http::uri::PathAndQuery, tonic::Request<Json>), CallError> {
        let path = format!("/{}/{method}", self.service)
            .parse::<http::uri::PathAndQuery>()
            .map_err(|e| CallError::Address(format!("bad method `{method}`: {e}")))?;
        let mut request = tonic::Request::new(body);
        for (name, value) in self.headers.iter() {
            if let Ok(v) = value.parse() {
                request.metadata_mut().insert(*name, v);
            }
        }
        Ok((path, request))
    }

    /// Calls the server-streaming `method` with `body`; the stream of its answers (each
    /// answer within `deadline` of the one before is the caller's to enforce).
    pub async fn call_stream(
        &self,
        method: &str,
        body: Json,
        deadline: Duration,
    ) -> Result<tonic::Streaming<Json>, CallError> {
        let (path, request) = self.request(method, body)?;
        let mut grpc = self.grpc.clone();
        let call = async {
            grpc.ready()
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            grpc.server_streaming(request, path, JsonCodec).await
        };
        match tokio::time::timeout(deadline, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(CallError::Status(status)),
            Err(_) => Err(CallError::Status(Status::deadline_exceeded(
                "no answer in time",
            ))),
        }
    }

    /// Calls `method` with `body`, giving up after `deadline`.
    pub async fn call(
        &self,
        method: &str,
        body: Json,
        deadline: Duration,
    ) -> Result<Json, CallError> {
        let (path, mut request) = self.request(method, body)?;
        request.set_timeout(deadline);
        let mut grpc = self.grpc.clone();
        let call = async {
            grpc.ready()
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            grpc.unary(request, path, JsonCodec).await
        };
        match tokio::time::timeout(deadline, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            // tonic reports its own deadline as CANCELLED "Timeout expired".
            Ok(Err(status))
                if status.code() == Code::Cancelled
                    && status.message().contains("Timeout expired") =>
            {
                Err(CallError::Status(Status::deadline_exceeded(
                    "no answer in time",
                )))
            }
            Ok(Err(status)) => Err(CallError::Status(status)),
            Err(_) => Err(CallError::Status(Status::deadline_exceeded(
                "no answer in time",
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_read_as_their_grpc_names() {
        assert_eq!(code_name(Code::PermissionDenied), "PERMISSION_DENIED");
        assert_eq!(code_name(Code::Unknown), "UNKNOWN");
    }
}
