//! Call errors: what went wrong, whose fault it is, and what the caller is told.
//!
//! Every refusal carries a stable machine code (`reason` in events, `error.code` in the JSON body)
//! and a message that names the problem and the fix. Internal detail (socket errors, TLS alerts)
//! goes to the log, never to the HTTP client.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};

/// Who caused a failure: decides the status class and whether an operator should look at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The caller sent something we refuse (4xx).
    Downstream,
    /// The vendor or the path to it failed (502/504).
    Upstream,
    /// Postern itself cannot serve the call right now (503).
    Internal,
}

/// A refused or failed call.
#[derive(Debug, Clone)]
pub struct CallError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub fault: Fault,
    pub retry_after_seconds: Option<u64>,
}

impl CallError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        let fault = if status.is_client_error() {
            Fault::Downstream
        } else if status == StatusCode::SERVICE_UNAVAILABLE {
            Fault::Internal
        } else {
            Fault::Upstream
        };
        CallError {
            status,
            code,
            message: message.into(),
            fault,
            retry_after_seconds: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "caller_unauthenticated", message)
    }

    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, message)
    }

    pub fn bad_gateway(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, code, message)
    }

    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }

    /// The JSON body sent to the caller: `{"error":{"code","message","request_id"}}`.
    pub fn to_response(&self, request_id: &str) -> Response<Bytes> {
        let body = serde_json::json!({
            "error": {
                "code": self.code,
                "message": self.message,
                "request_id": request_id,
            }
        });
        let mut response = Response::new(Bytes::from(body.to_string()));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Ok(value) = HeaderValue::from_str(request_id) {
            headers.insert(crate::REQUEST_ID, value);
        }
        if let Some(seconds) = self.retry_after_seconds {
            headers.insert(http::header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::PROXY_AUTHENTICATION_REQUIRED {
            headers.insert(
                http::header::PROXY_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"postern\""),
            );
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"postern\""),
            );
        }
        response
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for CallError {}
