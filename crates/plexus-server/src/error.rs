//! One error type for the API: every failure is JSON `{code, message, details}` with the
//! HTTP status that says what kind of failure it is.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use plexus_engine::EngineError;
use plexus_store::StoreError;
use serde_json::{Value as Json, json};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Json,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            details: Json::Null,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = code;
        self
    }

    pub fn with_details(mut self, details: Json) -> Self {
        self.details = details;
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = self.code, message = %self.message, "request failed");
        }
        let body = json!({"code": self.code, "message": self.message, "details": self.details});
        (self.status, axum::Json(body)).into_response()
    }
}

/// The code of a start of a stored workflow's newest version that lost a race with a
/// new version or a delete (see [`plexus_store::NewRun::newest_version`]).
pub const WORKFLOW_CHANGED: &str = "workflow_changed";

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::RunNotFound(_) => Self::not_found(e.to_string()),
            StoreError::Ambiguous(_) => Self::bad_request(e.to_string()),
            StoreError::Conflict(_) => Self::conflict(e.to_string()),
            StoreError::WorkflowChanged(_) => {
                Self::conflict(e.to_string()).with_code(WORKFLOW_CHANGED)
            }
            StoreError::Full(_) => Self::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "storage_full",
                e.to_string(),
            ),
            StoreError::Closed | StoreError::Unavailable(_) | StoreError::Unreachable(_) => {
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    e.to_string(),
                )
            }
            StoreError::Db(_) => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            }
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Store(s) => s.into(),
            EngineError::Rejected(_)
            | EngineError::Finished { .. }
            | EngineError::Owned { .. }
            | EngineError::NotActive(_) => Self::conflict(e.to_string()),
            EngineError::Manifest { .. } => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_manifest",
                e.to_string(),
            ),
            EngineError::Stopped(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            ),
            // The stored history is damaged: an operator has to look, a retry will not help.
            EngineError::Restore(_) => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "corrupt_history",
                e.to_string(),
            ),
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// The code of an error answer made by the framework rather than a handler.
fn code_of(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad_request",
        401 => "unauthenticated",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "timeout",
        413 => "payload_too_large",
        415 => "unsupported_media_type",
        422 => "invalid",
        429 => "too_many_requests",
        503 => "unavailable",
        s if s >= 500 => "internal",
        _ => "error",
    }
}

/// Every error answer has the documented shape `{code, message, details}`: the ones the
/// framework makes (a query string that does not parse, a method a path does not have,
/// a body of the wrong type) are rewritten from their text.
pub async fn json_errors(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let res = next.run(req).await;
    let status = res.status();
    let is_json = res
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return res;
    }
    let (parts, body) = res.into_parts();
    // Framework errors are a line of text; more than this is not one of them.
    let text = match axum::body::to_bytes(body, 64 * 1024).await {
        Ok(b) if !b.is_empty() => String::from_utf8_lossy(&b).into_owned(),
        _ => status.canonical_reason().unwrap_or("error").to_owned(),
    };
    let mut fixed = ApiError::new(status, code_of(status), text).into_response();
    for (name, value) in parts.headers.iter() {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            fixed.headers_mut().insert(name.clone(), value.clone());
        }
    }
    fixed
}

/// A handler that panics answers 500 in the documented shape (and the panic is logged),
/// instead of dropping the connection.
pub fn panic_answer(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let what = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("a panic");
    tracing::error!(panic = what, "a request handler panicked");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "the server failed on this request; it is logged",
    )
    .into_response()
}
