//! The JSON error shape shared by every API: `{"error": {"code", "message", "status",
//! "retryable", "origin"}}` (BRIEF §2).

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
