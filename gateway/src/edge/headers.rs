//! Header rewriting between clients and apps (pure): hop-by-hop headers, forwarding headers,
//! the Host an app sees, and host-only cookies.

use crate::config::{HostHeaderPolicy, IpNet};
use http::{
    HeaderMap, HeaderName, HeaderValue,
    header::{
        CONNECTION, HOST, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, SET_COOKIE, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
    },
};
use std::net::{IpAddr, SocketAddr};

/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// `Forwarded` (RFC 7239).
pub const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// What an app's response head may carry to the client: hop-by-hop headers removed
/// ([`remove_hop_by_hop`]) and every cookie made host-only ([`host_only_cookies`]).
pub fn from_app(headers: &mut HeaderMap) {
    remove_hop_by_hop(headers);
    host_only_cookies(headers);
}

/// Removes the `Domain` attribute of every `Set-Cookie`, so that each cookie an app sets stays
/// on the host it was set for. Every sandbox and preview host of a region shares a parent
/// domain: without this, an app could set a cookie for `{region}.{domain}` that the browser
/// then sends to every other sandbox (cookie tossing: session fixation, or a cookie bomb that
/// makes them all answer 431). A sandbox host has no subdomains, so a host-only cookie reaches
/// exactly the hosts an honest `Domain` could mean. Everything else is kept byte for byte.
pub fn host_only_cookies(headers: &mut HeaderMap) {
    let has_domain = |v: &HeaderValue| v.as_bytes().split(|b| *b == b';').skip(1).any(is_domain_attribute);
    if !headers.get_all(SET_COOKIE).iter().any(has_domain) {
        return;
    }
    let values: Vec<HeaderValue> = headers.get_all(SET_COOKIE).iter().cloned().collect();
    headers.remove(SET_COOKIE);
    for value in values {
        let mut parts = value.as_bytes().split(|b| *b == b';');
        let mut kept = parts.next().unwrap_or_default().to_vec();
        for attribute in parts.filter(|a| !is_domain_attribute(a)) {
            kept.push(b';');
            kept.extend_from_slice(attribute);
        }
        // Only whole attributes were removed from a valid value: it stays valid.
        if let Ok(v) = HeaderValue::from_bytes(&kept) {
            headers.append(SET_COOKIE, v);
        }
    }
}

/// `Domain` or `Domain=…` (any case, spaces around the name), RFC 6265 §5.2.
fn is_domain_attribute(attribute: &[u8]) -> bool {
    let name = attribute.split(|b| *b == b'=').next().unwrap_or_default();
    name.trim_ascii().eq_ignore_ascii_case(b"domain")
}

/// Whether the `Connection` header lists `token` (case-insensitive).
pub fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The fixed hop-by-hop list (RFC 9110 §7.6.1); `TE` is handled apart.
const HOP_BY_HOP: [HeaderName; 8] = [
    CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
];

/// Removes hop-by-hop headers: the fixed list (RFC 9110 §7.6.1) and every header named in
/// `Connection`. `TE: trailers` is kept (gRPC needs it); any other `TE` is removed.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names (cheap comparisons of standard headers) finds which are
    // present: most requests carry none, most responses only `Connection: keep-alive`, and a
    // hashed removal of each of the nine names would cost more than the pass.
    let mut present = [false; 8];
    let mut te = false;
    for name in headers.keys() {
        if name == TE {
            te = true;
        } else if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present[i] = true;
        }
    }
    if present[0] {
        // Named by `Connection` (index 0), beyond the fixed list and `close`.
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| {
                !t.eq_ignore_ascii_case("close") && !HOP_BY_HOP.iter().any(|h| t.eq_ignore_ascii_case(h.as_str()))
            })
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in named {
            if name != TE {
                headers.remove(name);
            }
        }
    }
    for (name, present) in HOP_BY_HOP.into_iter().zip(present) {
        if present {
            headers.remove(name);
        }
    }
    if te && !headers.get_all(TE).iter().all(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers")) {
        headers.remove(TE);
    }
}

/// Framing and hop-by-hop header names: spelled with `_` for `-`, some app stacks (CGI and
/// WSGI `HTTP_*` variables, PHP) read them as the real header, so an app could frame a request
/// differently from the gateway.
const LOOKALIKE_TARGETS: [&str; 9] = [
    "content-length",
    "transfer-encoding",
    "host",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
    "proxy-connection",
];

/// Why a request's framing is ambiguous, if it is; such a request is refused (400, connection
/// closed) and never forwarded. hyper has already refused the rest (differing or malformed
/// `Content-Length`, `Transfer-Encoding` not ending in `chunked`, `Transfer-Encoding` on
/// HTTP/1.0, bad header syntax) and processes `Content-Length` + `Transfer-Encoding` by the
/// latter, closing the connection after the answer (RFC 9112 §6.1).
///
/// - `Transfer-Encoding` (HTTP/1.1) must be exactly one `chunked` (any case, optional
///   whitespace): `gzip, chunked`, `identity, chunked` or `chunked` twice would leave an encoded
///   body that the gateway does not decode and the app never learns about (RFC 9112 §6.1: 501
///   or 400 for codings it does not understand).
/// - no framing or hop-by-hop header spelled with underscores (`Transfer_Encoding`,
///   `Content_Length`…), which some app stacks read as the real one.
pub fn framing_violation(headers: &HeaderMap) -> Option<String> {
    let mut codings = headers
        .get_all(TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii);
    if let Some(first) = codings.next()
        && (!first.eq_ignore_ascii_case(b"chunked") || codings.next().is_some())
    {
        return Some("Transfer-Encoding must be exactly `chunked`".to_string());
    }
    headers.keys().find_map(|name| {
        let name = name.as_str();
        if !name.contains('_') {
            return None;
        }
        let dashed = name.replace('_', "-");
        LOOKALIKE_TARGETS
            .contains(&dashed.as_str())
            .then(|| format!("the header {name:?} is refused: it reads as {dashed:?} to some applications"))
    })
}

/// The client's address as the forwarding headers spell it, made once per connection.
#[derive(Clone, Debug)]
pub struct PeerText {
    /// `X-Forwarded-For`'s element: the address (an IPv4-mapped IPv6 address as IPv4).
    ip: HeaderValue,
    /// `Forwarded`'s `for=` value: the address, an IPv6 one quoted in brackets (RFC 7239 §6).
    for_value: String,
}

impl PeerText {
    /// The text of `peer`'s address.
    pub fn new(peer: SocketAddr) -> Self {
        let ip = match peer.ip() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        let text = ip.to_string();
        let for_value = if ip.is_ipv6() { format!("\"[{text}]\"") } else { text.clone() };
        // An address's text is always a valid header value.
        let ip = HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("unknown"));
        Self { ip, for_value }
    }
}

/// What the forwarding headers say about a request.
#[derive(Clone, Debug)]
pub struct Forwarding<'a> {
    /// The TCP peer of the client connection.
    pub peer: &'a PeerText,
    /// The host the client asked for, as sent.
    pub host: &'a str,
    /// Whether the peer is a trusted proxy (its forwarding headers are kept and appended to).
    pub trusted: bool,
}

/// Whether `ip` is in one of the trusted networks.
pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|n| n.contains(ip))
}

/// Sets `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Forwarded-Host` and `Forwarded`.
/// From an untrusted peer, whatever the client sent is replaced; from a trusted proxy, `For`
/// lists are appended to and `Proto`/`Host` kept when present. Values are assembled as bytes
/// (no `format!`): this runs for every forwarded request.
pub fn set_forwarding(headers: &mut HeaderMap, f: &Forwarding<'_>) {
    // The values a trusted proxy sent, joined with ", " (`None` when it sent none).
    let joined = |headers: &HeaderMap, name: &HeaderName| -> Option<Vec<u8>> {
        let mut out: Option<Vec<u8>> = None;
        for v in headers.get_all(name) {
            let out = out.get_or_insert_with(Vec::new);
            if !out.is_empty() {
                out.extend_from_slice(b", ");
            }
            out.extend_from_slice(v.as_bytes());
        }
        out
    };
    let (xff, xfp, xfh, fwd) = if f.trusted {
        (
            joined(headers, &X_FORWARDED_FOR),
            joined(headers, &X_FORWARDED_PROTO),
            joined(headers, &X_FORWARDED_HOST),
            joined(headers, &FORWARDED),
        )
    } else {
        (None, None, None, None)
    };
    let value = |bytes: Vec<u8>| HeaderValue::from_maybe_shared(bytes::Bytes::from(bytes));
    let set = |headers: &mut HeaderMap, name: HeaderName, value: Result<HeaderValue, _>| match value {
        Ok(v) => {
            headers.insert(name, v);
        }
        Err(http::header::InvalidHeaderValue { .. }) => {
            headers.remove(name);
        }
    };
    let xff = match xff {
        Some(mut prev) => {
            prev.extend_from_slice(b", ");
            prev.extend_from_slice(f.peer.ip.as_bytes());
            value(prev)
        }
        None => Ok(f.peer.ip.clone()),
    };
    set(headers, X_FORWARDED_FOR, xff);
    set(headers, X_FORWARDED_PROTO, xfp.map_or(Ok(HeaderValue::from_static("https")), value));
    set(headers, X_FORWARDED_HOST, xfh.map_or_else(|| HeaderValue::from_str(f.host), value));
    let mut forwarded = fwd.map_or_else(
        || Vec::with_capacity(32 + f.host.len()),
        |mut prev| {
            prev.extend_from_slice(b", ");
            prev
        },
    );
    forwarded.extend_from_slice(b"for=");
    forwarded.extend_from_slice(f.peer.for_value.as_bytes());
    forwarded.extend_from_slice(b";proto=https;host=\"");
    forwarded.extend(f.host.bytes().filter(|b| !matches!(b, b'"' | b'\\')));
    forwarded.push(b'"');
    set(headers, FORWARDED, value(forwarded));
}

/// The Host an app sees under `policy`.
pub fn upstream_host(policy: HostHeaderPolicy, client_host: &str, port: u16) -> String {
    match policy {
        HostHeaderPolicy::Preserve => client_host.to_string(),
        HostHeaderPolicy::Localhost => format!("localhost:{port}"),
    }
}

/// Sets the Host header (left as it is when it already says `host`, the usual case under
/// `host_header = "preserve"` on HTTP/1.1: no value to copy and check per request).
pub fn set_host(headers: &mut HeaderMap, host: &str) -> Result<(), http::header::InvalidHeaderValue> {
    let mut current = headers.get_all(HOST).iter();
    if current.next().is_some_and(|v| v.as_bytes() == host.as_bytes()) && current.next().is_none() {
        return Ok(());
    }
    headers.insert(HOST, HeaderValue::from_str(host)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).expect("name"), HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    #[test]
    fn cookies_become_host_only() {
        let mut h = HeaderMap::new();
        for v in [
            "sid=1; Domain=eu.example.com; Path=/; HttpOnly",
            "a=b;domain=.example.com;Secure",
            "c=d; DOMAIN = x ; SameSite=Lax",
            "plain=1; Path=/",
            "e=domain=f; Max-Age=60",
            "g=h; Domain",
        ] {
            h.append(SET_COOKIE, HeaderValue::from_static(v));
        }
        h.insert("x-other", HeaderValue::from_static("Domain=stays"));
        from_app(&mut h);
        let got: Vec<&str> = h.get_all(SET_COOKIE).iter().map(|v| v.to_str().expect("ascii")).collect();
        assert_eq!(
            got,
            [
                "sid=1; Path=/; HttpOnly",
                "a=b;Secure",
                "c=d; SameSite=Lax",
                "plain=1; Path=/",
                "e=domain=f; Max-Age=60",
                "g=h"
            ]
        );
        assert_eq!(h["x-other"], "Domain=stays");
        // Opaque bytes survive as they are.
        let mut h = HeaderMap::new();
        h.append(SET_COOKIE, HeaderValue::from_bytes(b"k=\xff\xfe; Domain=a.b; Path=/\x80").expect("value"));
        host_only_cookies(&mut h);
        assert_eq!(h[SET_COOKIE].as_bytes(), b"k=\xff\xfe; Path=/\x80");
    }

    #[test]
    fn hop_by_hop() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("te", "trailers"),
            ("accept", "*/*"),
        ]);
        remove_hop_by_hop(&mut h);
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, vec!["accept", "te"]);
        let mut h = map(&[("te", "gzip, trailers")]);
        remove_hop_by_hop(&mut h);
        assert!(h.is_empty());
        // An app's usual answer: only `Connection` goes.
        let mut h = map(&[("connection", "keep-alive"), ("content-length", "3"), ("server", "app")]);
        remove_hop_by_hop(&mut h);
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, vec!["content-length", "server"]);
        // `Connection` naming hop-by-hop and custom headers in any case, `close` included.
        let mut h = map(&[("connection", "Close, UPGRADE, x-a"), ("upgrade", "h2c"), ("x-a", "1"), ("x-b", "2")]);
        remove_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), vec!["x-b"]);
    }

    #[test]
    fn framing() {
        for ok in [
            vec![],
            vec![("transfer-encoding", "chunked")],
            vec![("transfer-encoding", " Chunked ")],
            vec![("x_custom", "1")],
        ] {
            assert_eq!(framing_violation(&map(&ok)), None, "{ok:?}");
        }
        for bad in [
            vec![("transfer-encoding", "gzip, chunked")],
            vec![("transfer-encoding", "identity, chunked")],
            vec![("transfer-encoding", "chunked, chunked")],
            vec![("transfer-encoding", "chunked"), ("transfer-encoding", "chunked")],
            vec![("transfer-encoding", "chunked,")],
            vec![("transfer-encoding", "")],
            vec![("transfer_encoding", "chunked")],
            vec![("content_length", "4")],
            vec![("keep_alive", "1")],
            vec![("proxy_connection", "1")],
        ] {
            assert!(framing_violation(&map(&bad)).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn forwarding_replaces_untrusted_values() {
        let mut h = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", "evil"),
            ("forwarded", "for=6.6.6.6"),
        ]);
        let peer = PeerText::new("10.0.0.9:5555".parse().expect("addr"));
        let f = Forwarding { peer: &peer, host: "sbx-a-b.local.gw.test", trusted: false };
        set_forwarding(&mut h, &f);
        assert_eq!(h["x-forwarded-for"], "10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "sbx-a-b.local.gw.test");
        assert_eq!(h["forwarded"], "for=10.0.0.9;proto=https;host=\"sbx-a-b.local.gw.test\"");
    }

    #[test]
    fn forwarding_appends_for_trusted_proxies() {
        let mut h =
            map(&[("x-forwarded-for", "1.1.1.1"), ("x-forwarded-for", "2.2.2.2"), ("x-forwarded-host", "orig")]);
        let peer = PeerText::new("[::ffff:10.0.0.9]:1".parse().expect("addr"));
        let f = Forwarding { peer: &peer, host: "h", trusted: true };
        set_forwarding(&mut h, &f);
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 10.0.0.9");
        assert_eq!(h["x-forwarded-host"], "orig");
        assert_eq!(h["x-forwarded-proto"], "https");
        let peer = PeerText::new("[::1]:1".parse().expect("addr"));
        let f = Forwarding { peer: &peer, host: "h\"x", trusted: false };
        set_forwarding(&mut h, &f);
        assert_eq!(h["forwarded"], "for=\"[::1]\";proto=https;host=\"hx\"");
        assert_eq!(h["x-forwarded-for"], "::1");
        // A trusted proxy's Forwarded list is appended to.
        let mut h = map(&[("forwarded", "for=1.1.1.1"), ("forwarded", "for=2.2.2.2")]);
        let peer = PeerText::new("10.0.0.9:1".parse().expect("addr"));
        set_forwarding(&mut h, &Forwarding { peer: &peer, host: "h", trusted: true });
        assert_eq!(h["forwarded"], "for=1.1.1.1, for=2.2.2.2, for=10.0.0.9;proto=https;host=\"h\"");
    }

    #[test]
    fn trust() {
        let nets = vec![IpNet::parse("10.0.0.0/8").expect("net")];
        assert!(is_trusted("10.2.3.4".parse().expect("ip"), &nets));
        assert!(!is_trusted("127.0.0.1".parse().expect("ip"), &nets));
    }
}
