//! Errors in OpenAI's shape (`{"error": {"message", "type", "param", "code"}}`), so OpenAI clients show
//! them as they would OpenAI's own.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;

/// A refusal the gateway answers itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// OpenAI's error type (`invalid_request_error`, `insufficient_quota`, …).
    pub kind: &'static str,
    /// A machine-readable code.
    pub code: &'static str,
    /// What the client should know (never a key or a credential).
    pub message: String,
    /// The request field at fault, if one is.
    pub param: Option<&'static str>,
    /// Seconds after which a retry may succeed.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with no retry hint.
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        code: &'static str,
        message: String,
    ) -> Self {
        Self {
            status,
            kind,
            code,
            message,
            param: None,
            retry_after: None,
        }
    }

    /// The same error, naming the request field at fault.
    pub fn param(mut self, field: &'static str) -> Self {
        self.param = Some(field);
        self
    }

    /// 401: no key, or an unknown one.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "invalid_api_key",
            "Incorrect API key provided.".into(),
        )
    }

    /// 400: the request cannot be read.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_request",
            message.into(),
        )
    }

    /// The same error, with `Retry-After`.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs.max(1));
        self
    }

    /// The response body: `{"error": {...}}`.
    pub fn body(&self) -> String {
        serde_json::json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
        .to_string()
    }

    /// The HTTP response.
    pub fn into_response(self) -> Response {
        let mut r = Response::builder()
            .status(self.status)
            .header("content-type", "application/json")
            .body(Body::from(self.body()))
            .unwrap_or_else(|_| Response::new(Body::empty()));
        if let Some(s) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            r.headers_mut().insert("retry-after", v);
        }
        r
    }
}
