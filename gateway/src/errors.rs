//! The one error model of every face (admin API, `/v0`, HTTPS edge): an [`ErrorCode`] decides the
//! HTTP status and whether a retry may succeed; [`ApiError`] adds the message; [`render`] is the
//! one way an error becomes a response: `{"error": {"code", "message", "status", "retryable",
//! "origin"}}`, or an HTML page for a client that prefers `text/html`, with `WWW-Authenticate` on
//! every 401 and `Retry-After` on every 429 and 503.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use serde::{Serialize, Serializer, ser::SerializeStruct};

/// What `Retry-After` says on a 429 or a 503, in seconds.
pub const RETRY_AFTER_SECS: u64 = 1;

macro_rules! codes {
    ($($(#[$doc:meta])* $name:ident = ($text:literal, $status:literal, $retryable:literal),)*) => {
        /// Why a request was refused: the machine-readable `code` of an error answer.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($(#[$doc])* $name,)*
        }

        impl ErrorCode {
            /// Every code (documentation, tests).
            pub const ALL: &[ErrorCode] = &[$(ErrorCode::$name,)*];

            /// The code as answered, e.g. `ROUTE_NOT_FOUND`.
            pub const fn as_str(self) -> &'static str {
                match self { $(ErrorCode::$name => $text,)* }
            }

            /// The HTTP status it is answered with.
            pub const fn status(self) -> u16 {
                match self { $(ErrorCode::$name => $status,)* }
            }

            /// Whether the same request may succeed later (clients and SDKs retry on it).
            pub const fn retryable(self) -> bool {
                match self { $(ErrorCode::$name => $retryable,)* }
            }
        }
    };
}

codes! {
    /// The request is malformed or a value is out of range.
    BadRequest = ("BAD_REQUEST", 400, false),
    /// A port that can never be declared or previewed (80, 443, 8080).
    ReservedPort = ("RESERVED_PORT", 400, false),
    /// The sandbox's host-side interface does not exist.
    UnknownInterface = ("UNKNOWN_INTERFACE", 400, false),
    /// No credential was presented.
    AuthenticationRequired = ("AUTHENTICATION_REQUIRED", 401, false),
    /// The credential presented is not valid (here).
    AuthenticationFailed = ("AUTHENTICATION_FAILED", 401, false),
    /// The credential is valid but does not reach this.
    Forbidden = ("FORBIDDEN", 403, false),
    /// No route for this host and path.
    RouteNotFound = ("ROUTE_NOT_FOUND", 404, false),
    /// No such sandbox.
    WorkloadNotFound = ("WORKLOAD_NOT_FOUND", 404, false),
    /// No such preview (or it expired).
    PreviewNotFound = ("PREVIEW_NOT_FOUND", 404, false),
    /// No such token.
    TokenNotFound = ("TOKEN_NOT_FOUND", 404, false),
    /// The method is not served on this path.
    MethodNotAllowed = ("METHOD_NOT_ALLOWED", 405, false),
    /// Another sandbox has this address.
    AddressConflict = ("ADDRESS_CONFLICT", 409, false),
    /// Another sandbox makes the same host label.
    LabelConflict = ("LABEL_CONFLICT", 409, false),
    /// The sandbox already has a preview of this name.
    PreviewConflict = ("PREVIEW_CONFLICT", 409, false),
    /// Another preview has this URL.
    PreviewUrlConflict = ("PREVIEW_URL_CONFLICT", 409, false),
    /// A token of this name exists.
    TokenConflict = ("TOKEN_CONFLICT", 409, false),
    /// The sandbox is registered by another host of the fleet.
    OwnedByAnotherHost = ("OWNED_BY_ANOTHER_HOST", 409, false),
    /// Every public TCP port of `l4.port_range` is held or quarantined.
    PortRangeExhausted = ("PORT_RANGE_EXHAUSTED", 409, false),
    /// The record changed on another gateway while this one was changing it: nothing was changed.
    StateChanged = ("STATE_CHANGED", 409, true),
    /// The request body is over the limit.
    RequestEntityTooLarge = ("REQUEST_ENTITY_TOO_LARGE", 413, false),
    /// The TLS name and the Host of the request differ.
    MisdirectedRequest = ("MISDIRECTED_REQUEST", 421, false),
    /// A cap on concurrent requests or connections was reached.
    TooManyRequests = ("TOO_MANY_REQUESTS", 429, true),
    /// A fault of the gateway's own.
    Internal = ("INTERNAL", 500, true),
    /// The state could not be saved: nothing was changed.
    StateWriteFailed = ("STATE_WRITE_FAILED", 500, true),
    /// The kernel refused a policy update: nothing was changed.
    DataplaneError = ("DATAPLANE_ERROR", 500, true),
    /// Not served by this gateway.
    NotImplemented = ("NOT_IMPLEMENTED", 501, false),
    /// The app in the sandbox could not be reached or broke the exchange.
    BadGateway = ("BAD_GATEWAY", 502, true),
    /// This gateway serves no public TCP ports (`l4.port_range` is empty).
    PublicPortsDisabled = ("PUBLIC_PORTS_DISABLED", 503, false),
    /// The gateway runs without a data plane (configuration).
    DataplaneDisabled = ("DATAPLANE_DISABLED", 503, false),
    /// The data plane's programs are not loaded.
    DataplaneUnavailable = ("DATAPLANE_UNAVAILABLE", 503, false),
    /// The fleet's store (etcd) cannot be reached: nothing was changed.
    StoreUnavailable = ("STORE_UNAVAILABLE", 503, true),
    /// The fleet host that runs the sandbox cannot be reached.
    PeerUnavailable = ("PEER_UNAVAILABLE", 503, true),
    /// A successor process owns the state now: retry against it.
    GatewayRestarting = ("GATEWAY_RESTARTING", 503, true),
    /// The app accepted the connection but sent no response in time.
    GatewayTimeout = ("GATEWAY_TIMEOUT", 504, true),
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// An error as answered to a client.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// What went wrong; decides the status and retryability.
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub message: String,
}

impl ApiError {
    /// A new error from the gateway.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        self.code.status()
    }

    /// Whether retrying the same request may succeed.
    pub fn retryable(&self) -> bool {
        self.code.retryable()
    }

    /// The JSON body.
    pub fn to_json(&self) -> String {
        struct Wrapper<'a>(&'a ApiError);
        impl Serialize for Wrapper<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut outer = s.serialize_struct("Error", 1)?;
                outer.serialize_field("error", &Inner(self.0))?;
                outer.end()
            }
        }
        struct Inner<'a>(&'a ApiError);
        impl Serialize for Inner<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let e = self.0;
                let mut st = s.serialize_struct("ApiError", 5)?;
                st.serialize_field("code", &e.code)?;
                st.serialize_field("message", &e.message)?;
                st.serialize_field("status", &e.status())?;
                st.serialize_field("retryable", &e.retryable())?;
                st.serialize_field("origin", "gateway")?;
                st.end()
            }
        }
        serde_json::to_string(&Wrapper(self)).unwrap_or_else(|_| {
            String::from(
                r#"{"error":{"code":"INTERNAL","message":"serialization failed","status":500,"retryable":true,"origin":"gateway"}}"#,
            )
        })
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// An error as a response: JSON, or an HTML page when `html` (the client prefers `text/html`).
pub fn render(e: &ApiError, html: bool) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let (content_type, body) = if html {
        let reason = status.canonical_reason().unwrap_or("Error");
        (
            "text/html; charset=utf-8",
            format!(
                "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{status} {reason}</title></head>\n<body><h1>{status} {reason}</h1>\n<p>{message}</p>\n<p><small>{code} · gateway</small></p></body></html>\n",
                status = status.as_u16(),
                reason = escape(reason),
                message = escape(&e.message),
                code = e.code,
            ),
        )
    } else {
        ("application/json", e.to_json())
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    match status.as_u16() {
        401 => {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        429 | 503 => {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        _ => {}
    }
    response
}

/// The media ranges of a request's `Accept` headers, lower-cased, each with its weight: the
/// first `q` parameter that parses (name case-insensitive, spaces allowed), 1 when there is
/// none. The one `Accept` parser: content negotiation of error pages and the preview cookie
/// exchange both read it.
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
    fn codes_are_unique_screaming_snake_and_statuses_are_errors() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.as_str()), "{code} twice");
            assert!(code.as_str().chars().all(|c| c.is_ascii_uppercase() || c == '_'), "{code}");
            assert!((400..600).contains(&code.status()), "{code}");
            assert!(StatusCode::from_u16(code.status()).is_ok());
        }
    }

    #[test]
    fn json_shape_and_headers() {
        let e = ApiError::new(ErrorCode::AuthenticationRequired, "no token");
        assert_eq!(
            e.to_json(),
            r#"{"error":{"code":"AUTHENTICATION_REQUIRED","message":"no token","status":401,"retryable":false,"origin":"gateway"}}"#
        );
        let r = render(&e, false);
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()[header::WWW_AUTHENTICATE], "Bearer");
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
        let r = render(&ApiError::new(ErrorCode::GatewayRestarting, "later"), false);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        assert!(ApiError::new(ErrorCode::GatewayRestarting, "later").retryable());
    }

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

    #[test]
    fn html_page_escapes() {
        let r = render(&ApiError::new(ErrorCode::RouteNotFound, "<script>"), true);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "text/html; charset=utf-8");
        assert!(!r.headers().contains_key(header::WWW_AUTHENTICATE));
    }
}
