//! The JSON error shape shared by every API: `{"error": {"code", "message", "status",
//! "retryable", "origin"}}` (BRIEF §2).

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
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

/// The media ranges of a request's `Accept` headers (RFC 9110 §12.5.1), lower-cased, each with
/// its weight: the first `q` parameter that parses (name case-insensitive, spaces allowed), 1
/// when there is none. The one `Accept` parser: content negotiation of error pages and the
/// preview cookie exchange both read it.
pub fn accept_ranges(headers: &HeaderMap) -> impl Iterator<Item = (String, f32)> + '_ {
    headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).map(|range| {
        let mut params = range.split(';');
        let media = params.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = params
            .filter_map(|p| p.split_once('='))
            .filter(|(name, _)| name.trim().eq_ignore_ascii_case("q"))
            .find_map(|(_, value)| value.trim().parse::<f32>().ok().filter(|q| !q.is_nan()))
            .unwrap_or(1.0);
        (media, q)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_ranges_and_weights() {
        let mut h = HeaderMap::new();
        h.append(header::ACCEPT, HeaderValue::from_static("Text/HTML;level=1;Q=0.5, application/json ;q = 0"));
        h.append(header::ACCEPT, HeaderValue::from_static("*/*;q=NaN,image/png;q=x"));
        let got: Vec<(String, f32)> = accept_ranges(&h).collect();
        let want = [("text/html", 0.5), ("application/json", 0.0), ("*/*", 1.0), ("image/png", 1.0)];
        assert_eq!(got, want.map(|(m, q)| (m.to_string(), q)));
        assert_eq!(accept_ranges(&HeaderMap::new()).count(), 0);
    }
}
