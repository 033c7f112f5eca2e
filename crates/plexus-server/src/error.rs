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

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::RunNotFound(_) => Self::not_found(e.to_string()),
            StoreError::Ambiguous(_) => Self::bad_request(e.to_string()),
            StoreError::Conflict(_) => Self::conflict(e.to_string()),
            StoreError::Full(_) => Self::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "storage_full",
                e.to_string(),
            ),
            StoreError::Closed | StoreError::Unavailable(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            ),
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
