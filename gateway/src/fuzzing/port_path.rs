//! Target `port_path`: the `/port/{N}` parser and router (`edge/route.rs`). The input is a
//! request target (`path?query`).
//!
//! Properties: a port is routed only when the segment after `/port/` is the canonical decimal
//! of a port 1..=65535 (no sign, leading zero, encoding; checked against an independent
//! reference), never for a reserved port (403) and never for an undeclared one (404); the
//! rewritten target is the rest of the path and the query byte for byte; every other path goes
//! to the sandbox API unchanged.

use crate::{
    edge::route::{SANDBOX_API_PORT, Target, parse_target, resolve},
    errors::ErrorCode,
    model::sandbox::{PortProtocol, PortSpec, Sandbox},
};
use gateway_common::is_reserved_port;
use std::net::Ipv4Addr;

/// Runs the checks on one input.
pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    check_target(text);
    // What hyper hands the edge for such a request line, when it accepts it.
    if let Ok(pq) = http::uri::PathAndQuery::try_from(text)
        && pq.as_str() != text
    {
        check_target(pq.as_str());
    }
}

/// The port a `/port/{N}` segment names, per the documented grammar (`[1-9][0-9]{0,4}`, at most
/// 65535), written independently of the parser.
fn reference_port(n: &str) -> Option<u16> {
    let b = n.as_bytes();
    if b.is_empty() || b.len() > 5 || b[0] == b'0' || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let value = b.iter().fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'));
    u16::try_from(value).ok()
}

fn sandbox(declared: &[u16]) -> Sandbox {
    Sandbox {
        workspace: "acme".into(),
        name: "web".into(),
        address: Ipv4Addr::new(198, 18, 0, 2),
        interface: "lo".into(),
        owner: None,
        exposed: Vec::new(),
        ports: declared.iter().map(|&target| PortSpec { target, protocol: PortProtocol::Http2 }).collect(),
    }
}

fn check_target(pq: &str) {
    let (path, query) = match pq.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (pq, None),
    };
    let after = path.strip_prefix("/port/");
    let parsed = parse_target(pq);
    let Some(after) = after else {
        assert_eq!(parsed, Ok(Target::SandboxApi), "{pq:?} is not a /port/ path");
        let route = resolve(Target::SandboxApi, &sandbox(&[]), pq).expect("the sandbox API always resolves");
        assert_eq!((route.port, route.path_and_query.as_str()), (SANDBOX_API_PORT, pq));
        return;
    };
    let (n, rest) = after.split_at(after.find('/').unwrap_or(after.len()));
    match parsed {
        Ok(Target::SandboxApi) => panic!("{pq:?} starts with /port/ but goes to the sandbox API"),
        Ok(Target::Port { port, path_and_query }) => {
            assert_eq!(reference_port(n), Some(port), "{pq:?} routed to port {port}");
            assert_eq!(n, port.to_string(), "{pq:?}: not the canonical decimal");
            assert!(port != 0 && !is_reserved_port(port), "{pq:?} routed to reserved port {port}");
            let expected_path = if rest.is_empty() { "/" } else { rest };
            let expected = match query {
                Some(q) => format!("{expected_path}?{q}"),
                None => expected_path.to_string(),
            };
            assert_eq!(path_and_query, expected, "{pq:?}: the rewritten target");
            // Declared: routed there, target unchanged. Undeclared: 404, whatever else is declared.
            let target = Target::Port { port, path_and_query: path_and_query.clone() };
            let route = resolve(target.clone(), &sandbox(&[port]), pq).expect("a declared port resolves");
            assert_eq!((route.port, route.protocol, route.path_and_query), (port, PortProtocol::Http2, path_and_query));
            let others: Vec<u16> =
                [3000, 50051, port.wrapping_add(1).max(1)].into_iter().filter(|&p| p != port).collect();
            let e = resolve(target, &sandbox(&others), pq).expect_err("an undeclared port is refused");
            assert_eq!((e.status(), e.code), (404, ErrorCode::RouteNotFound));
        }
        Err(e) => match reference_port(n) {
            Some(p) => {
                assert!(is_reserved_port(p), "{pq:?}: port {p} refused with {e:?}");
                assert_eq!((e.status(), e.code), (403, ErrorCode::Forbidden), "{pq:?}");
            }
            None => assert_eq!((e.status(), e.code), (400, ErrorCode::BadRequest), "{pq:?}"),
        },
    }
}
