//! Targets `admin_body` and `v0_body`: the JSON request bodies of the admin API (`/v1`:
//! sandbox, token, preview, preview token and session bodies) and of the Blaxel-compatible API
//! (`/v0`: preview and preview token bodies), deserialized and validated as the handlers do.
//!
//! The first input byte picks the body type, the rest is the body. Properties: what is
//! accepted satisfies the validation rules, checked independently (ports 1..=65535 and never
//! reserved, unique and sorted; names are DNS labels; headers valid, not hop-by-hop, bounded;
//! an expiry is in the future, whole milliseconds, printable and read back identically, never
//! shorter than a `ttl` asked for); a refusal is a 400; accepted bodies serialize back to the
//! same value.

use super::util::fixed_now;
use crate::{
    compat::wire::{PreviewIn, TokenIn},
    errors::ErrorCode,
    model::time::{MAX_TTL, Timestamp, format_timestamp, parse_timestamp, parse_ttl},
    model::{is_dns_label, is_interface_name},
    service::previews::spec::{
        MAX_HEADER_BYTES, MAX_HEADERS, PreviewSpec, SessionSpec, TokenSpec, expiry, validate_headers, validate_name,
    },
    service::sandboxes::{PortRequest, SandboxSpec, validate_address, validate_ports},
    service::tokens::{
        TokenRequest,
        registry::{requested_expiry, validate_token_names},
    },
};
use gateway_common::is_reserved_port;
use serde::{Serialize, de::DeserializeOwned};
use std::collections::BTreeMap;

const WORKSPACE: &str = "acme";
/// Headers a preview may never set (the documented list).
const FORBIDDEN: &str =
    "connection keep-alive proxy-connection transfer-encoding te trailer upgrade content-length host";

/// `/v1` bodies.
pub fn admin(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else { return };
    let now = fixed_now();
    match which % 5 {
        0 => {
            if let Some(spec) = parse::<SandboxSpec>(body) {
                check_sandbox(&spec);
            }
        }
        1 => {
            if let Some(req) = parse::<TokenRequest>(body) {
                let names = validate_token_names(WORKSPACE, Some(&req.name));
                assert_eq!(names.is_ok(), reference_label(&req.name), "token name {:?}", req.name);
                let got = requested_expiry(&req, now);
                check_expiry(got, req.ttl.as_deref(), req.expires_at.as_deref(), now, Rounding::UpToSecond);
            }
        }
        2 => {
            if let Some(spec) = parse::<PreviewSpec>(body) {
                check_preview(&spec, now);
            }
        }
        3 => {
            if let Some(spec) = parse::<TokenSpec>(body) {
                check_token_spec(&spec, now);
            }
        }
        _ => {
            if let Some(spec) = parse::<SessionSpec>(body) {
                let got = expiry(spec.ttl.as_deref(), spec.expires_at.as_deref(), now);
                check_expiry(got, spec.ttl.as_deref(), spec.expires_at.as_deref(), now, Rounding::Millis);
                check_headers(spec.request_headers.as_ref());
                check_headers(spec.response_headers.as_ref());
            }
        }
    }
}

/// `/v0` bodies (an empty or blank body is the default value, as the handler reads it).
pub fn v0(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else { return };
    let now = fixed_now();
    if which % 2 == 0 {
        if let Some(preview) = parse_lenient::<PreviewIn>(body) {
            let spec = preview.spec.to_spec();
            if let Some(name) = &preview.metadata.name {
                assert_eq!(validate_name("preview name", name).is_ok(), reference_label(name));
            }
            check_preview(&spec, now);
        }
    } else if let Some(token) = parse_lenient::<TokenIn>(body) {
        let spec = TokenSpec { name: token.metadata.name, expires_at: token.spec.expires_at, ttl: None };
        check_token_spec(&spec, now);
    }
}

/// Strict bodies (`deny_unknown_fields`): they serialize back to what was read.
fn parse<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(body: &[u8]) -> Option<T> {
    let value: T = serde_json::from_slice(body).ok()?;
    let again = serde_json::to_vec(&value).expect("an accepted body serializes");
    let back: T = serde_json::from_slice(&again).expect("a serialized body reads back");
    assert_eq!(back, value, "JSON round trip");
    Some(value)
}

fn parse_lenient<T: DeserializeOwned + Default>(body: &[u8]) -> Option<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Some(T::default());
    }
    serde_json::from_slice(body).ok()
}

/// One DNS label, lower-case (the documented name rule), independently.
fn reference_label(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=63).contains(&b.len())
        && b.iter().all(|c| matches!(c, b'a'..=b'z' | b'0'..=b'9' | b'-'))
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

fn check_sandbox(spec: &SandboxSpec) {
    let valid = |p: &PortRequest| (1..=65535).contains(&p.target) && !is_reserved_port(p.target as u16);
    let unique = spec.ports.iter().enumerate().all(|(i, p)| spec.ports[..i].iter().all(|q| q.target != p.target));
    match validate_ports(&spec.ports) {
        Ok(ports) => {
            assert!(spec.ports.iter().all(valid) && unique, "{:?} accepted", spec.ports);
            assert_eq!(ports.len(), spec.ports.len());
            assert!(ports.windows(2).all(|w| w[0].target < w[1].target), "sorted and unique: {ports:?}");
            for p in &ports {
                assert!(p.target != 0 && !is_reserved_port(p.target));
                assert!(spec.ports.iter().any(|q| q.target == i64::from(p.target) && q.protocol == p.protocol));
            }
        }
        Err(e) => {
            assert!(!(spec.ports.iter().all(valid) && unique), "{:?} refused: {e:?}", spec.ports);
            assert_eq!(e.status(), 400);
        }
    }
    let a = spec.address;
    let refused = a.is_unspecified() || a.is_broadcast() || a.is_multicast() || a.is_loopback();
    assert_eq!(validate_address(a).is_err(), refused, "address {a}");
    let i = spec.interface.as_bytes();
    let reference = (1..=15).contains(&i.len())
        && i != b"."
        && i != b".."
        && i.iter().all(|c| c.is_ascii_graphic() && *c != b'/' && *c != b':');
    assert_eq!(is_interface_name(&spec.interface), reference, "interface {:?}", spec.interface);
    assert_eq!(is_dns_label(&spec.interface), reference_label(&spec.interface));
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Rounding {
    /// Previews: whole milliseconds.
    Millis,
    /// Workspace tokens: a `ttl` expiry is rounded up to the second, `expiresAt` to the ms.
    UpToSecond,
}

fn check_expiry(
    got: Result<Option<Timestamp>, crate::errors::ApiError>,
    ttl: Option<&str>,
    at: Option<&str>,
    now: Timestamp,
    rounding: Rounding,
) {
    match got {
        Ok(None) => assert!(ttl.is_none() && at.is_none(), "{ttl:?} {at:?} gave no expiry"),
        Ok(Some(t)) => {
            assert!(!(ttl.is_some() && at.is_some()), "both ttl and expiresAt accepted");
            assert!(t > now, "expiry {t} is not in the future");
            assert_eq!(t.offset(), time::UtcOffset::UTC);
            assert_eq!(t.nanosecond() % 1_000_000, 0, "{t} is not whole milliseconds");
            let text = format_timestamp(t);
            assert_eq!(parse_timestamp(&text), Ok(t), "{t} is answered as {text:?}, which reads back differently");
            if let Some(ttl) = ttl {
                let d = parse_ttl(ttl).expect("an accepted ttl parses");
                let lifetime = t - now;
                let slack =
                    if rounding == Rounding::UpToSecond { time::Duration::SECOND } else { time::Duration::ZERO };
                assert!(lifetime >= d - time::Duration::MILLISECOND, "ttl {ttl:?} shortened to {lifetime}");
                assert!(
                    lifetime <= time::Duration::try_from(MAX_TTL).unwrap_or(time::Duration::MAX) + slack,
                    "ttl {ttl:?}"
                );
            }
            if let Some(at) = at {
                let parsed = parse_timestamp(at).expect("an accepted expiresAt parses");
                assert!(parsed - t < time::Duration::MILLISECOND && parsed >= t, "{at:?} stored as {t}");
            }
        }
        Err(e) => assert_eq!(e.status(), 400, "{e:?}"),
    }
}

fn check_headers(headers: Option<&BTreeMap<String, String>>) {
    let Ok(valid) = validate_headers("h", headers) else { return };
    let given = headers.map_or(0, BTreeMap::len);
    assert_eq!(valid.len(), given, "headers lost or merged");
    assert!(valid.len() <= MAX_HEADERS);
    assert!(valid.iter().map(|(n, v)| n.len() + v.len()).sum::<usize>() <= MAX_HEADER_BYTES);
    for (name, value) in &valid {
        assert!(!name.bytes().any(|b| b.is_ascii_uppercase()), "{name:?}");
        assert!(http::HeaderName::from_bytes(name.as_bytes()).is_ok_and(|n| n.as_str() == name), "{name:?}");
        assert!(http::HeaderValue::from_str(value).is_ok(), "{value:?}");
        assert!(!FORBIDDEN.split(' ').any(|f| f == name), "{name:?} may not be set");
    }
}

fn check_preview(spec: &PreviewSpec, now: Timestamp) {
    check_headers(spec.request_headers.as_ref());
    check_headers(spec.response_headers.as_ref());
    let ttl = spec.ttl.as_deref().filter(|t| !t.is_empty());
    let at = spec.expires_at.as_deref().filter(|t| !t.is_empty());
    match spec.validate(WORKSPACE, now) {
        Ok(v) => {
            let asked = spec.port.expect("an accepted preview has a port");
            assert_eq!(i64::from(v.port), asked);
            assert!(v.port != 0 && v.port != 80 && v.port != 8080, "preview of reserved port {}", v.port);
            assert!(v.port == 443 || !is_reserved_port(v.port));
            if let Some(p) = &v.prefix_url {
                assert!(reference_label(p) && p.len() + 1 + WORKSPACE.len() <= 63, "prefixUrl {p:?}");
            }
            for headers in [&v.request_headers, &v.response_headers] {
                check_headers(Some(headers));
            }
            check_expiry(Ok(v.expires_at), ttl, at, now, Rounding::Millis);
        }
        Err(e) => {
            assert_eq!(e.status(), 400, "{e:?}");
            let port_ok = spec.port.is_some_and(|p| (1..=65535).contains(&p) && p != 80 && p != 8080);
            if e.code == ErrorCode::ReservedPort {
                assert!(matches!(spec.port, Some(80 | 8080)), "{e:?}");
            } else if !port_ok {
                // Refused for the port: fine whatever else is wrong.
            } else {
                check_expiry(Err(e), ttl, at, now, Rounding::Millis);
            }
        }
    }
}

fn check_token_spec(spec: &TokenSpec, now: Timestamp) {
    if let Some(name) = spec.name.as_deref().filter(|n| !n.is_empty()) {
        assert_eq!(validate_name("token name", name).is_ok(), reference_label(name), "{name:?}");
    }
    let got = expiry(spec.ttl.as_deref(), spec.expires_at.as_deref(), now);
    check_expiry(got, spec.ttl.as_deref(), spec.expires_at.as_deref(), now, Rounding::Millis);
}
