//! Request bodies of the preview, token and session calls, and their validation into the
//! normalized values the service layer stores. Every refusal is a 400 naming the field.

use crate::model::preview::API_PREVIEW_PORT;
use crate::model::time::{self, Timestamp};
use crate::{
    errors::{ApiError, ErrorCode},
    model::is_dns_label,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Most headers in `requestHeaders` or `responseHeaders`.
pub const MAX_HEADERS: usize = 50;
/// Most bytes of names and values in one header map.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Headers a preview may not set: hop-by-hop, framing, and what the edge owns.
const FORBIDDEN_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
    "host",
];

/// Body of `PUT /v1/workspaces/{ws}/sandboxes/{name}/previews/{preview}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PreviewSpec {
    /// Target port; 443 = the sandbox API.
    pub port: Option<i64>,
    /// No token needed (default false).
    #[serde(default)]
    pub public: Option<bool>,
    /// Readable id prefix: the id becomes `{prefixUrl}-{workspace}`.
    #[serde(default)]
    pub prefix_url: Option<String>,
    /// Added to upstream requests.
    #[serde(default)]
    pub request_headers: Option<BTreeMap<String, String>>,
    /// Added to responses.
    #[serde(default)]
    pub response_headers: Option<BTreeMap<String, String>>,
    /// Lifetime, e.g. `"24h"`.
    #[serde(default)]
    pub ttl: Option<String>,
    /// Expiry timestamp (exclusive with `ttl`).
    #[serde(default)]
    pub expires_at: Option<String>,
}

/// A validated preview spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidPreview {
    /// Target port (443 = sandbox API).
    pub port: u16,
    pub public: bool,
    /// Prefix, if any.
    pub prefix_url: Option<String>,
    /// Request headers, names lower-cased.
    pub request_headers: BTreeMap<String, String>,
    /// Response headers, names lower-cased.
    pub response_headers: BTreeMap<String, String>,
    /// The lifetime as given.
    pub ttl: Option<String>,
    /// Expiry, `None` = never.
    pub expires_at: Option<Timestamp>,
}

/// Body of `POST …/previews/{preview}/tokens`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenSpec {
    /// Name; assigned when absent or empty.
    #[serde(default)]
    pub name: Option<String>,
    /// Expiry timestamp.
    #[serde(default)]
    pub expires_at: Option<String>,
    /// Lifetime (exclusive with `expiresAt`).
    #[serde(default)]
    pub ttl: Option<String>,
}

/// Body of `POST /v1/workspaces/{ws}/sandboxes/{name}/sessions`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionSpec {
    /// Preview name; default `session-{unix millis}`.
    #[serde(default)]
    pub name: Option<String>,
    /// Expiry timestamp (default: 24 h from now).
    #[serde(default)]
    pub expires_at: Option<String>,
    /// Lifetime (exclusive with `expiresAt`).
    #[serde(default)]
    pub ttl: Option<String>,
    /// Added to upstream requests.
    #[serde(default)]
    pub request_headers: Option<BTreeMap<String, String>>,
    /// Added to responses.
    #[serde(default)]
    pub response_headers: Option<BTreeMap<String, String>>,
}

/// Default lifetime of a session, and of a token of a preview that never expires.
pub const DEFAULT_SESSION_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::BadRequest, message)
}

/// Checks a preview or token name: one DNS label.
pub fn validate_name(what: &str, name: &str) -> Result<(), ApiError> {
    if is_dns_label(name) {
        Ok(())
    } else {
        Err(bad(format!(
            "invalid {what} {name:?}: use 1 to 63 characters among lower-case a-z, 0-9 and '-', not starting or ending with '-'"
        )))
    }
}

/// Checks a preview port: 1..=65535, not 80 or 8080 (443 = the sandbox API).
pub fn validate_port(port: i64) -> Result<u16, ApiError> {
    let port = match u16::try_from(port) {
        Ok(p) if p != 0 => p,
        _ => return Err(bad(format!("port {port} is out of range: a port is 1 to 65535"))),
    };
    if port != API_PREVIEW_PORT && gateway_common::is_reserved_port(port) {
        return Err(ApiError::new(
            ErrorCode::ReservedPort,
            format!(
                "port {port} is reserved and cannot be previewed (80 is the system port, 8080 the sandbox API inside the sandbox; preview port 443 to reach the sandbox API)"
            ),
        ));
    }
    Ok(port)
}

/// The expiry of `ttl` xor `expires_at`, from `now`; must be in the future.
pub fn expiry(ttl: Option<&str>, expires_at: Option<&str>, now: Timestamp) -> Result<Option<Timestamp>, ApiError> {
    let at = match (ttl, expires_at) {
        (Some(_), Some(_)) => return Err(bad("give either ttl or expiresAt, not both")),
        (Some(ttl), None) => Some(time::add(now, time::parse_ttl(ttl).map_err(|e| bad(format!("ttl: {e}")))?)),
        (None, Some(at)) => Some(time::parse_timestamp(at).map_err(|e| bad(format!("expiresAt: {e}")))?),
        (None, None) => None,
    };
    // Truncated before the check: a sub-millisecond ttl ("1µs") must not store an expiry equal
    // to now (found by `cargo xtask fuzz admin_body`).
    match at.map(time::truncate_millis) {
        Some(at) if at <= now => Err(bad(format!("expiresAt {} is in the past", time::format_timestamp(at)))),
        other => Ok(other),
    }
}

/// Validates a header map: valid names and values, none hop-by-hop or owned by the edge,
/// bounded size. Names are lower-cased; two names differing only by case are refused.
pub fn validate_headers(
    field: &str,
    headers: Option<&BTreeMap<String, String>>,
) -> Result<BTreeMap<String, String>, ApiError> {
    let mut out = BTreeMap::new();
    let Some(headers) = headers else { return Ok(out) };
    if headers.len() > MAX_HEADERS {
        return Err(bad(format!("{field}: at most {MAX_HEADERS} headers")));
    }
    let mut total = 0;
    for (name, value) in headers {
        let lower = name.to_ascii_lowercase();
        if http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
            return Err(bad(format!("{field}: {name:?} is not a valid header name")));
        }
        if http::HeaderValue::from_str(value).is_err() {
            return Err(bad(format!("{field}: the value of {name:?} is not a valid header value")));
        }
        if FORBIDDEN_HEADERS.contains(&lower.as_str()) {
            return Err(bad(format!("{field}: {name:?} cannot be set by a preview (hop-by-hop, framing or Host)")));
        }
        total += lower.len() + value.len();
        if out.insert(lower, value.clone()).is_some() {
            return Err(bad(format!("{field}: {name:?} is given twice (names are case-insensitive)")));
        }
    }
    if total > MAX_HEADER_BYTES {
        return Err(bad(format!("{field}: more than {MAX_HEADER_BYTES} bytes of headers")));
    }
    Ok(out)
}

impl PreviewSpec {
    /// Validates it for a preview of `workspace`, at `now`.
    pub fn validate(&self, workspace: &str, now: Timestamp) -> Result<ValidPreview, ApiError> {
        let port = validate_port(self.port.ok_or_else(|| bad("port is required"))?)?;
        let prefix_url = match self.prefix_url.as_deref() {
            None | Some("") => None,
            Some(p) => {
                validate_name("prefixUrl", p)?;
                let id = super::ids::prefixed_id(p, workspace);
                if id.len() > 63 {
                    return Err(bad(format!(
                        "prefixUrl: the host label {id:?} ({{prefixUrl}}-{{workspace}}) is {} characters long; it must fit in 63",
                        id.len()
                    )));
                }
                Some(p.to_string())
            }
        };
        Ok(ValidPreview {
            port,
            public: self.public.unwrap_or(false),
            prefix_url,
            request_headers: validate_headers("requestHeaders", self.request_headers.as_ref())?,
            response_headers: validate_headers("responseHeaders", self.response_headers.as_ref())?,
            ttl: self.ttl.clone().filter(|t| !t.is_empty()),
            expires_at: expiry(
                self.ttl.as_deref().filter(|t| !t.is_empty()),
                self.expires_at.as_deref().filter(|t| !t.is_empty()),
                now,
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(port: i64) -> PreviewSpec {
        PreviewSpec { port: Some(port), ..PreviewSpec::default() }
    }

    #[test]
    fn ports() {
        let now = time::now();
        assert_eq!(spec(3000).validate("ws", now).expect("3000").port, 3000);
        assert_eq!(spec(443).validate("ws", now).expect("443").port, 443);
        assert_eq!(spec(80).validate("ws", now).expect_err("80").code, ErrorCode::ReservedPort);
        assert_eq!(spec(8080).validate("ws", now).expect_err("8080").code, ErrorCode::ReservedPort);
        assert_eq!(spec(0).validate("ws", now).expect_err("0").code, ErrorCode::BadRequest);
        assert_eq!(spec(65536).validate("ws", now).expect_err("big").code, ErrorCode::BadRequest);
        assert_eq!(PreviewSpec::default().validate("ws", now).expect_err("none").code, ErrorCode::BadRequest);
    }

    #[test]
    fn lifetimes() {
        let now = time::parse_timestamp("2030-01-01T00:00:00Z").expect("now");
        let s = PreviewSpec { ttl: Some("1h".into()), ..spec(3000) };
        assert_eq!(s.validate("ws", now).expect("ttl").expires_at, time::parse_timestamp("2030-01-01T01:00:00Z").ok());
        let s = PreviewSpec { expires_at: Some("2030-01-02T00:00:00".into()), ..spec(3000) };
        assert_eq!(s.validate("ws", now).expect("at").expires_at, time::parse_timestamp("2030-01-02T00:00:00Z").ok());
        let s = PreviewSpec { expires_at: Some("2029-01-02T00:00:00Z".into()), ..spec(3000) };
        assert!(s.validate("ws", now).expect_err("past").message.contains("past"));
        let s = PreviewSpec { ttl: Some("1h".into()), expires_at: Some("2030-01-02T00:00:00Z".into()), ..spec(3000) };
        assert!(s.validate("ws", now).is_err());
        // A ttl shorter than the stored precision would expire at creation.
        assert!(expiry(Some("1us"), None, now).is_err());
        assert!(expiry(Some("1ms"), None, now).is_ok_and(|at| at.is_some_and(|at| at > now)));
    }

    #[test]
    fn headers_and_prefix() {
        let now = time::now();
        let h = |pairs: &[(&str, &str)]| Some(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        let s = PreviewSpec { request_headers: h(&[("Authorization", "Bearer x")]), ..spec(3000) };
        assert_eq!(
            s.validate("ws", now).expect("ok").request_headers.get("authorization").map(String::as_str),
            Some("Bearer x")
        );
        for bad in [
            h(&[("Host", "x")]),
            h(&[("Transfer-Encoding", "chunked")]),
            h(&[("bad name", "x")]),
            h(&[("x", "a\nb")]),
            h(&[("X-A", "1"), ("x-a", "2")]),
        ] {
            let s = PreviewSpec { response_headers: bad.clone(), ..spec(3000) };
            assert!(s.validate("ws", now).is_err(), "{bad:?}");
        }
        let s = PreviewSpec { prefix_url: Some("my-app".into()), ..spec(3000) };
        assert_eq!(s.validate("ws", now).expect("prefix").prefix_url.as_deref(), Some("my-app"));
        let s = PreviewSpec { prefix_url: Some("My_App".into()), ..spec(3000) };
        assert!(s.validate("ws", now).is_err());
        let s = PreviewSpec { prefix_url: Some("p".repeat(61)), ..spec(3000) };
        assert!(s.validate("ws", now).is_err());
    }
}
