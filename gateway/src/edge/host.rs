//! The host a request is for: `:authority` (HTTP/2, or an absolute-form HTTP/1.1 target) or the
//! `Host` header, normalised (lower-case, trailing dot and explicit port removed), then
//! classified against `{region}.{domain}`.

use crate::errors::{ApiError, ErrorCode};
use http::{HeaderMap, Uri, header::HOST};

/// The host of a request: as sent (forwarded to apps under `host_header = "preserve"`) and
/// normalised (used for routing and the certificate check).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHost {
    /// What the client sent, e.g. `SBX-Web-Acme.local.gw.test.:8443`.
    pub raw: String,
    /// Lower-case, no trailing dot, no port: `sbx-web-acme.local.gw.test`.
    pub name: String,
}

/// What a host names (borrowing the label from the host).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostKind<'a> {
    /// `{label}.{region}.{domain}`: a sandbox label (exact lookup) or a name like `any`.
    Sandbox(&'a str),
    /// `api.{domain}`: the public API (not served yet).
    Api,
    /// `{id}.{region}.preview.{domain}` or `{id}.preview.{domain}`.
    Preview(&'a str),
    /// Anything else.
    Other,
}

/// The zones [`classify`] tells hosts apart by, spelled once from `region` and `domain` (both
/// fixed for the life of the process) rather than formatted per request.
#[derive(Clone, Debug)]
pub struct Zones {
    domain: String,
    region_preview: String,
    preview: String,
    region: String,
}

impl Zones {
    /// The zones under `region` and `domain`.
    pub fn new(region: &str, domain: &str) -> Self {
        Self {
            domain: domain.to_string(),
            region_preview: format!("{region}.preview.{domain}"),
            preview: format!("preview.{domain}"),
            region: format!("{region}.{domain}"),
        }
    }
}

fn bad_host(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::BadRequest, message)
}

/// The host of a request from its URI authority or its single `Host` header.
pub fn request_host(uri: &Uri, headers: &HeaderMap) -> Result<RequestHost, ApiError> {
    let raw = match uri.authority() {
        Some(a) => a.as_str().to_string(),
        None => {
            let mut hosts = headers.get_all(HOST).iter();
            let first = hosts.next().ok_or_else(|| bad_host("the request has no Host header"))?;
            if hosts.next().is_some() {
                return Err(bad_host("the request has more than one Host header"));
            }
            first.to_str().map_err(|_| bad_host("the Host header is not ASCII"))?.to_string()
        }
    };
    let name = normalize(&raw).map_err(|reason| bad_host(format!("invalid host {raw:?}: {reason}")))?;
    Ok(RequestHost { raw, name })
}

/// On HTTP/2, a `Host` field next to `:authority` must name the same host (RFC 9113 §8.3.1: a
/// request whose `Host` identifies another entity is malformed), so no component can route or
/// authenticate by one while another acts on the other. Spelling may differ (case, trailing dot,
/// port), as for [`normalize`].
pub fn check_h2_host(host: &RequestHost, headers: &HeaderMap) -> Result<(), ApiError> {
    for value in headers.get_all(HOST) {
        let same = value.to_str().ok().and_then(|v| normalize(v).ok()).is_some_and(|n| n == host.name);
        if !same {
            return Err(bad_host(format!(
                "the Host header {:?} differs from :authority {:?}",
                String::from_utf8_lossy(value.as_bytes()),
                host.raw
            )));
        }
    }
    Ok(())
}

/// `Host` → lower-case DNS name without trailing dot or port. IP literals are kept as text.
pub fn normalize(raw: &str) -> Result<String, &'static str> {
    if raw.contains('@') {
        return Err("user information is not allowed");
    }
    let host = if raw.starts_with('[') {
        // IPv6 literal, optional port.
        let end = raw.find(']').ok_or("unterminated IPv6 literal")?;
        let (literal, rest) = raw.split_at(end + 1);
        check_port(rest.strip_prefix(':'), rest.is_empty())?;
        literal
    } else {
        match raw.rsplit_once(':') {
            Some((h, port)) => {
                check_port(Some(port), false)?;
                h
            }
            None => raw,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return Err("empty host");
    }
    if let Some(literal) = host.strip_prefix('[') {
        if literal.strip_suffix(']').is_none_or(|a| a.parse::<std::net::Ipv6Addr>().is_err()) {
            return Err("not an IPv6 address");
        }
        return Ok(host.to_ascii_lowercase());
    }
    if host.len() > 253 || !is_dns_name(host.as_bytes()) {
        return Err("not a DNS name");
    }
    Ok(host.to_ascii_lowercase())
}

/// Labels of 1 to 63 letters, digits, `-` or `_`, separated by single dots: one pass over the
/// bytes (every request's Host goes through it).
fn is_dns_name(name: &[u8]) -> bool {
    let mut label = 0usize;
    for &b in name {
        if b == b'.' {
            if label == 0 {
                return false;
            }
            label = 0;
        } else if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            label += 1;
            if label > 63 {
                return false;
            }
        } else {
            return false;
        }
    }
    label > 0
}

fn check_port(port: Option<&str>, absent_ok: bool) -> Result<(), &'static str> {
    match port {
        None if absent_ok => Ok(()),
        None => Err("unexpected characters after the IPv6 literal"),
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => Ok(()),
        Some(_) => Err("the port is not a number"),
    }
}

/// Classifies a normalised host under the zones of `region` and `domain`.
pub fn classify<'a>(name: &'a str, zones: &Zones) -> HostKind<'a> {
    let under = |suffix: &str| name.strip_suffix(suffix).and_then(|r| r.strip_suffix('.'));
    if under(&zones.domain) == Some("api") {
        return HostKind::Api;
    }
    let one_label = |suffix: &str| under(suffix).filter(|p| !p.is_empty() && !p.contains('.'));
    if let Some(id) = one_label(&zones.region_preview).or_else(|| one_label(&zones.preview)) {
        return HostKind::Preview(id);
    }
    if let Some(label) = one_label(&zones.region) {
        return HostKind::Sandbox(label);
    }
    HostKind::Other
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn normalisation() {
        assert_eq!(normalize("SBX-A-B.Local.GW.test"), Ok("sbx-a-b.local.gw.test".into()));
        assert_eq!(normalize("sbx-a-b.local.gw.test."), Ok("sbx-a-b.local.gw.test".into()));
        assert_eq!(normalize("sbx-a-b.local.gw.test.:8443"), Ok("sbx-a-b.local.gw.test".into()));
        assert_eq!(normalize("sbx-a-b.local.gw.test:443"), Ok("sbx-a-b.local.gw.test".into()));
        assert_eq!(normalize("[::1]:443"), Ok("[::1]".into()));
        assert_eq!(normalize("127.0.0.1"), Ok("127.0.0.1".into()));
        assert_eq!(normalize("[FE80::1]"), Ok("[fe80::1]".into()));
        // Found by `cargo xtask fuzz host`: any text in brackets was accepted as an IPv6 literal.
        for bad in [
            "", ":443", "a..b", "a.b:x", "a.b:", "user@a.b", "a b", "a/b", "[::1", "a.b.:1:2", ".", "[zz]", "[]",
            "[<x>]:1",
        ] {
            assert!(normalize(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn authority_wins_then_single_host_header() {
        let mut h = HeaderMap::new();
        h.insert(HOST, HeaderValue::from_static("Other.local.gw.test"));
        let uri: Uri = "https://sbx-a-b.local.gw.test/x".parse().expect("uri");
        assert_eq!(request_host(&uri, &h).expect("host").name, "sbx-a-b.local.gw.test");
        let origin: Uri = "/x".parse().expect("uri");
        let host = request_host(&origin, &h).expect("host");
        assert_eq!((host.raw.as_str(), host.name.as_str()), ("Other.local.gw.test", "other.local.gw.test"));
        h.append(HOST, HeaderValue::from_static("second.local.gw.test"));
        assert_eq!(request_host(&origin, &h).map_err(|e| e.status()), Err(400));
        assert_eq!(request_host(&origin, &HeaderMap::new()).map_err(|e| e.status()), Err(400));
    }

    #[test]
    fn h2_host_must_match_the_authority() {
        let uri: Uri = "https://sbx-a-b.local.gw.test/x".parse().expect("uri");
        let host = request_host(&uri, &HeaderMap::new()).expect("host");
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(HOST, HeaderValue::from_static(v));
            check_h2_host(&host, &h).map_err(|e| e.status())
        };
        assert_eq!(check_h2_host(&host, &HeaderMap::new()), Ok(()));
        assert_eq!(with("SBX-A-B.local.gw.test.:443"), Ok(()));
        assert_eq!(with("sbx-other-b.local.gw.test"), Err(400));
        assert_eq!(with("a b"), Err(400));
    }

    #[test]
    fn classification() {
        let zones = Zones::new("local", "gw.test");
        let c = |n| classify(n, &zones);
        assert_eq!(c("sbx-web-acme.local.gw.test"), HostKind::Sandbox("sbx-web-acme"));
        assert_eq!(c("any.local.gw.test"), HostKind::Sandbox("any"));
        assert_eq!(c("api.gw.test"), HostKind::Api);
        assert_eq!(c("abc-acme.local.preview.gw.test"), HostKind::Preview("abc-acme"));
        assert_eq!(c("abc.preview.gw.test"), HostKind::Preview("abc"));
        assert_eq!(c("a.b.local.gw.test"), HostKind::Other);
        assert_eq!(c("local.gw.test"), HostKind::Other);
        assert_eq!(c("gw.test"), HostKind::Other);
        assert_eq!(c("xgw.test"), HostKind::Other);
        assert_eq!(c("sbx-a.local.gw.test.evil"), HostKind::Other);
    }
}
