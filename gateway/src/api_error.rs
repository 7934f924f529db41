//! The JSON error shape shared by every API: `{"error": {"code", "message", "status",
//! "retryable", "origin"}}` (BRIEF §2).

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use serde::Serialize;

/// An error as answered to a client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ApiError {
    /// Machine-readable code, e.g. `ROUTE_NOT_FOUND`.
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
    /// HTTP status.
    pub status: u16,
    /// Whether retrying the same request may succeed.
    pub retryable: bool,
    /// Who produced it: always `gateway` here.
    pub origin: &'static str,
}

impl ApiError {
    /// A new error from the gateway.
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), status, retryable: false, origin: "gateway" }
    }
    /// Marks it retryable.
    pub fn retryable(mut self) -> Self {
        self.retryable = true;
        self
    }
    /// The JSON body.
    pub fn to_json(&self) -> String {
        #[derive(Serialize)]
        struct Wrapper<'a> {
            error: &'a ApiError,
        }
        serde_json::to_string(&Wrapper { error: self }).unwrap_or_else(|_| {
            String::from(r#"{"error":{"code":"INTERNAL","message":"serialization failed","status":500,"retryable":true,"origin":"gateway"}}"#)
        })
    }
}

/// The JSON answer of an error (admin and `/v0` APIs), with `WWW-Authenticate` on a 401.
pub fn json_response(e: &ApiError) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(e.to_json())));
    *r.status_mut() = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if e.status == 401 {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}
