//! What the gateway answers when a request cannot be served: the API error of an upstream
//! failure (502 refused or timed out with a message saying the app must listen on `0.0.0.0:N`,
//! 504 when no response head came in time), and the rendering of any error as JSON (default) or
//! as an HTML page for clients that prefer `text/html` (browsers).

use super::{
    EdgeBody,
    connect::{ConnectError, ConnectFailure},
};
use crate::errors::{ApiError, ErrorCode, accept_ranges};
use http::{HeaderMap, Response};
use http_body_util::BodyExt;
use std::{error::Error as StdError, time::Duration};

/// Where the failing request was going, for messages.
#[derive(Clone, Copy, Debug)]
pub struct Destination<'a> {
    /// Sandbox name.
    pub sandbox: &'a str,
    /// Port inside the sandbox.
    pub port: u16,
}

/// The 502 of a failed connection.
pub fn connect_failed(e: &ConnectError, to: Destination<'_>) -> ApiError {
    let (port, name) = (to.port, to.sandbox);
    let waited = if e.waited >= Duration::from_millis(100) {
        format!(" (retried for {} ms)", e.waited.as_millis())
    } else {
        String::new()
    };
    let message = match e.kind {
        ConnectFailure::Refused => format!(
            "port {port} of sandbox {name:?} refused the connection{waited}: nothing is listening there. The app must listen on 0.0.0.0:{port} inside the sandbox; an app bound to 127.0.0.1:{port} or localhost:{port} cannot be reached from outside"
        ),
        ConnectFailure::TimedOut => format!(
            "connecting to port {port} of sandbox {name:?} timed out after {} ms: the sandbox did not answer. The app must listen on 0.0.0.0:{port} (not 127.0.0.1) and the sandbox must be running",
            e.waited.as_millis()
        ),
        ConnectFailure::Other => {
            format!("cannot connect to port {port} of sandbox {name:?}: {}", e.source)
        }
    };
    ApiError::new(ErrorCode::BadGateway, message)
}

/// The error of a failed upstream exchange: a [`ConnectError`] anywhere in the source chain is a
/// connection failure; anything else is an app that closed or broke the connection.
pub fn exchange_failed(err: &(dyn StdError + 'static), to: Destination<'_>) -> ApiError {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(c) = e.downcast_ref::<ConnectError>() {
            return connect_failed(c, to);
        }
        // `io::Error::source` skips the error it wraps: look inside.
        if let Some(c) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|i| i.downcast_ref::<ConnectError>())
        {
            return connect_failed(c, to);
        }
        cur = e.source();
    }
    let mut detail = err.to_string();
    let mut src = err.source();
    while let Some(s) = src {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        src = s.source();
    }
    ApiError::new(
        ErrorCode::BadGateway,
        format!(
            "the app on port {} of sandbox {:?} closed the connection or sent an invalid response ({detail})",
            to.port, to.sandbox
        ),
    )
}

/// The 504 of an app that sent no response head in time.
pub fn response_timed_out(timeout: Duration, to: Destination<'_>) -> ApiError {
    ApiError::new(
        ErrorCode::GatewayTimeout,
        format!(
            "the app on port {} of sandbox {:?} accepted the connection but sent no response within {} s",
            to.port,
            to.sandbox,
            timeout.as_secs_f64()
        ),
    )
}

/// The 429 of a cap.
pub fn too_many(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::TooManyRequests, message)
}

/// Whether the client prefers `text/html` to JSON (`Accept` q-values; ties go to JSON).
pub fn prefers_html(headers: &HeaderMap) -> bool {
    let mut html = 0.0f32;
    let mut json = 0.0f32;
    for (media, q) in accept_ranges(headers) {
        match media.as_str() {
            "text/html" => html = html.max(q),
            "application/json" | "application/*" | "*/*" => json = json.max(q),
            _ => {}
        }
    }
    html > json
}

/// An error as a response of the edge: JSON, or HTML when `html` (see [`crate::errors::render`]).
pub fn render(e: &ApiError, html: bool) -> Response<EdgeBody> {
    crate::errors::render(e, html).map(|body| body.map_err(|never| match never {}).boxed())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderValue, header};
    use std::io;

    fn accept(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_str(v).expect("value"));
        h
    }

    #[test]
    fn content_negotiation() {
        assert!(prefers_html(&accept("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8")));
        assert!(!prefers_html(&accept("*/*")));
        assert!(!prefers_html(&accept("application/json")));
        assert!(!prefers_html(&accept("text/html;q=0.5, application/json")));
        assert!(!prefers_html(&accept("text/html, */*")));
        assert!(!prefers_html(&HeaderMap::new()));
    }

    #[test]
    fn refused_says_how_to_listen() {
        let e = ConnectError {
            addr: "198.18.0.2:3000".parse().expect("addr"),
            kind: ConnectFailure::Refused,
            waited: Duration::ZERO,
            source: io::Error::from(io::ErrorKind::ConnectionRefused),
        };
        let wrapped = io::Error::other(e);
        let api = exchange_failed(&wrapped, Destination { sandbox: "web", port: 3000 });
        assert_eq!((api.status(), api.code), (502, ErrorCode::BadGateway));
        assert!(api.message.contains("0.0.0.0:3000") && api.message.contains("127.0.0.1"), "{}", api.message);
        assert!(api.message.contains("refused"), "{}", api.message);
    }

    #[test]
    fn html_page_escapes() {
        let r = render(&ApiError::new(ErrorCode::RouteNotFound, "<script>"), true);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "text/html; charset=utf-8");
        let r = render(&too_many("busy"), false);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
    }
}
