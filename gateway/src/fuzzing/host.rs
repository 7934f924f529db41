//! Target `host`: the host-label router (`edge/host.rs`) and certificate name matching
//! (`edge/tls.rs`). The input is a `Host` header value / `:authority`.
//!
//! Properties: an accepted host normalises to a lower-case DNS name (or a valid IPv6 literal)
//! without trailing dot or port that is the sent text up to case, one trailing dot and a
//! numeric port; normalising is idempotent and ignores case, a trailing dot and a port; the
//! `Host` header and the `:authority` forms agree (and an HTTP/2 `Host` next to `:authority` is
//! accepted exactly when it names the same host); the host kind is exactly what the name's
//! shape says (a sandbox host is one label under `{region}.{domain}`, which is also exactly what
//! the wildcard certificate `*.{region}.{domain}` covers).

use crate::edge::{
    host::{HostKind, Zones, check_h2_host, classify, normalize, request_host},
    tls::name_matches,
};
use http::{HeaderMap, HeaderValue, Uri, header::HOST};

const REGION: &str = "local";
const DOMAIN: &str = "gw.test";

/// Runs the checks on one input.
pub fn check(data: &[u8]) {
    // As an HTTP/1.1 `Host` header.
    if let Ok(value) = HeaderValue::from_bytes(data) {
        let mut headers = HeaderMap::new();
        headers.insert(HOST, value);
        match request_host(&Uri::from_static("/"), &headers) {
            Ok(h) => {
                assert_eq!(h.raw.as_bytes(), data, "the raw host is the header as sent");
                assert_eq!(normalize(&h.raw).as_deref(), Ok(h.name.as_str()));
                check_name(&h.raw, &h.name);
            }
            Err(e) => assert_eq!(e.status(), 400, "{e:?}"),
        }
    }
    let Ok(text) = std::str::from_utf8(data) else { return };
    let normalized = normalize(text);
    if let Ok(name) = &normalized {
        check_name(text, name);
    }
    // As the authority of an HTTP/2 request or an absolute-form target: the same answer.
    if let Ok(uri) = Uri::try_from(format!("https://{text}/"))
        && uri.authority().is_some_and(|a| a.as_str() == text)
    {
        let from_uri = request_host(&uri, &HeaderMap::new());
        assert_eq!(
            from_uri.as_ref().map(|h| h.name.as_str()).map_err(|e| e.status()),
            normalized.as_deref().map_err(|_| 400),
            "authority {text:?}"
        );
        // HTTP/2 with a `Host` field as well: accepted exactly when both name the same host.
        if let Ok(from_uri) = &from_uri {
            for other in [text.to_ascii_uppercase(), format!("{text}x"), "other.local.gw.test".to_string()] {
                let Ok(value) = HeaderValue::from_str(&other) else { continue };
                let mut headers = HeaderMap::new();
                headers.insert(HOST, value);
                let same = normalize(&other).is_ok_and(|n| n == from_uri.name);
                assert_eq!(check_h2_host(from_uri, &headers).is_ok(), same, "{text:?} with Host {other:?}");
            }
        }
    }
}

/// Properties of a host `raw` accepted as `name`.
fn check_name(raw: &str, name: &str) {
    assert!(!name.is_empty(), "{raw:?}");
    assert!(!name.bytes().any(|b| b.is_ascii_uppercase()), "{name:?} is not lower-case");
    assert!(!name.ends_with('.'), "{name:?} keeps a trailing dot");
    let lower = raw.to_ascii_lowercase();
    let rest = lower.strip_prefix(name).unwrap_or_else(|| panic!("{name:?} is not the start of {raw:?}"));
    let port = rest.strip_prefix('.').unwrap_or(rest);
    if !port.is_empty() {
        let digits = port.strip_prefix(':').unwrap_or_else(|| panic!("{raw:?} → {name:?} drops {rest:?}"));
        assert!(
            (1..=5).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()),
            "port {digits:?} of {raw:?}"
        );
    }
    if let Some(literal) = name.strip_prefix('[') {
        let inner = literal.strip_suffix(']').unwrap_or_else(|| panic!("unterminated literal {name:?}"));
        assert!(inner.parse::<std::net::Ipv6Addr>().is_ok(), "{name:?} (from {raw:?}) is not an IPv6 literal");
        assert!(rest.is_empty() || rest.starts_with(':'), "{raw:?}");
        for variant in [name.to_string(), name.to_ascii_uppercase(), format!("{name}:443")] {
            assert_eq!(normalize(&variant).as_deref(), Ok(name), "{variant:?}");
        }
        assert_eq!(classify(name, &Zones::new(REGION, DOMAIN)), HostKind::Other);
        return;
    }
    assert!(name.len() <= 253, "{name:?} is longer than a DNS name");
    for label in name.split('.') {
        assert!(
            (1..=63).contains(&label.len())
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "label {label:?} of {name:?}"
        );
    }
    for variant in [
        name.to_string(),
        name.to_ascii_uppercase(),
        format!("{name}."),
        format!("{name}:443"),
        format!("{name}.:8443"),
    ] {
        assert_eq!(normalize(&variant).as_deref(), Ok(name), "{variant:?}");
    }
    check_kind(name);
}

/// The host kind follows from the name's shape, and matches the wildcard certificates.
fn check_kind(name: &str) {
    let one_label_under = |suffix: &str| {
        name.strip_suffix(suffix).and_then(|l| l.strip_suffix('.')).filter(|l| !l.is_empty() && !l.contains('.'))
    };
    let sandbox_wildcard = name_matches(&format!("*.{REGION}.{DOMAIN}"), name);
    let preview_wildcard = name_matches(&format!("*.{REGION}.preview.{DOMAIN}"), name)
        || name_matches(&format!("*.preview.{DOMAIN}"), name);
    match classify(name, &Zones::new(REGION, DOMAIN)) {
        HostKind::Api => assert_eq!(name, format!("api.{DOMAIN}")),
        HostKind::Sandbox(label) => {
            assert_eq!(Some(label), one_label_under(&format!("{REGION}.{DOMAIN}")), "{name:?}");
            assert!(sandbox_wildcard, "{name:?} is a sandbox host its wildcard certificate does not cover");
        }
        HostKind::Preview(id) => {
            let expected = one_label_under(&format!("{REGION}.preview.{DOMAIN}"))
                .or_else(|| one_label_under(&format!("preview.{DOMAIN}")));
            assert_eq!(Some(id), expected, "{name:?}");
            assert!(preview_wildcard, "{name:?}");
        }
        HostKind::Other => {
            assert_ne!(name, format!("api.{DOMAIN}"));
            assert!(!sandbox_wildcard && !preview_wildcard, "{name:?} is covered but not routed");
        }
    }
}
