//! Request bodies: size-limited, with parse errors that say where the problem is.

use crate::error::ApiError;
use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

/// The limit for small bodies (logins, users, keys, settings), whatever `--body-limit` says.
pub const SMALL: usize = 64 * 1024;

/// Reads the whole body, refusing more than `limit` bytes with 413.
pub async fn read(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        // The limit's own error type, found in the error's chain (not by its wording).
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        let mut too_large = false;
        while let Some(c) = cause {
            too_large |= c.is::<http_body_util::LengthLimitError>();
            cause = c.source();
        }
        if too_large {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the request body is larger than {limit} bytes"),
            )
        } else {
            ApiError::bad_request(format!("could not read the request body: {e}"))
        }
    })
}

/// Parses JSON; a syntax error names its line and column.
pub fn json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("the body is not valid JSON: {e}"),
        )
        .with_details(serde_json::json!({"line": e.line(), "column": e.column()}))
    })
}
