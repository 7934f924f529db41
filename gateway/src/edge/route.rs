//! Where a request to a sandbox goes, as pure functions:
//!
//! - `/port/{N}/{rest}?{q}` → port N, path `/{rest}?{q}` (`/port/N` alone → `/`). N must be a
//!   canonical decimal 1..=65535: no sign, no leading zero, no `%`-encoding (else 400). A
//!   reserved N (80, 443, 8080) → 403 `FORBIDDEN`; N not declared → 404 `ROUTE_NOT_FOUND`
//!   listing the declared ports.
//! - every other path → the sandbox API on 8080, path unchanged.
//!
//! [`parse_target`] only looks at the path (its errors reveal nothing about the sandbox, so they
//! may be answered before authentication); [`resolve`] checks the sandbox's declared ports (only
//! after authentication, since its error lists them).

use crate::{
    errors::{ApiError, ErrorCode},
    model::sandbox::{PortProtocol, Sandbox},
};
use gateway_common::{RESERVED_PORTS, is_reserved_port};

pub use gateway_common::SANDBOX_API_PORT;

/// What the path asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// The sandbox API (port 8080), path unchanged.
    SandboxApi,
    /// `/port/{port}/…`, with the rewritten path and query.
    Port {
        port: u16,
        /// `/{rest}?{q}`.
        path_and_query: String,
    },
}

/// A resolved route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The port inside the sandbox.
    pub port: u16,
    /// How to speak to it.
    pub protocol: PortProtocol,
    /// The request target sent to the app.
    pub path_and_query: String,
}

/// Parses the request target (`path?query`) of a request to a sandbox host.
pub fn parse_target(path_and_query: &str) -> Result<Target, ApiError> {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let Some(after) = path.strip_prefix("/port/") else {
        return Ok(Target::SandboxApi);
    };
    let (n, rest) = match after.find('/') {
        Some(i) => after.split_at(i),
        None => (after, "/"),
    };
    let port = parse_port(n)?;
    if is_reserved_port(port) {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "port {port} is reserved and cannot be reached through /port/{port} (reserved ports: {}); the sandbox API is served on every path that does not start with /port/",
                RESERVED_PORTS.map(|p| p.to_string()).join(", ")
            ),
        ));
    }
    let mut path_and_query = rest.to_string();
    if let Some(q) = query {
        path_and_query.push('?');
        path_and_query.push_str(q);
    }
    Ok(Target::Port { port, path_and_query })
}

/// A canonical decimal port 1..=65535.
fn parse_port(n: &str) -> Result<u16, ApiError> {
    let bad = |why: &str| {
        ApiError::new(
            ErrorCode::BadRequest,
            format!(
                "invalid port {n:?} in /port/{{N}}: {why}; N is a decimal number from 1 to 65535 without sign, leading zero or encoding"
            ),
        )
    };
    if n.is_empty() {
        return Err(bad("empty"));
    }
    if !n.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("not a decimal number"));
    }
    if n.starts_with('0') {
        return Err(bad("leading zero"));
    }
    match n.parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(bad("out of range")),
    }
}

/// Checks a target against the sandbox's declared ports.
pub fn resolve(target: Target, sandbox: &Sandbox, original_path_and_query: &str) -> Result<Route, ApiError> {
    match target {
        Target::SandboxApi => Ok(Route {
            port: SANDBOX_API_PORT,
            protocol: PortProtocol::Http,
            path_and_query: original_path_and_query.to_string(),
        }),
        Target::Port { port, path_and_query } => match sandbox.ports.iter().find(|p| p.target == port) {
            Some(spec) => Ok(Route { port, protocol: spec.protocol, path_and_query }),
            None => {
                let declared = if sandbox.ports.is_empty() {
                    "none".to_string()
                } else {
                    sandbox.ports.iter().map(|p| p.target.to_string()).collect::<Vec<_>>().join(", ")
                };
                Err(ApiError::new(
                    ErrorCode::RouteNotFound,
                    format!(
                        "port {port} is not declared for sandbox {:?} of workspace {:?}; declared ports: {declared}",
                        sandbox.name, sandbox.workspace
                    ),
                ))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::sandbox::PortSpec;

    fn sandbox() -> Sandbox {
        Sandbox {
            workspace: "acme".into(),
            name: "web".into(),
            address: "198.18.0.2".parse().expect("ip"),
            interface: "lo".into(),
            owner: None,
            exposed: Vec::new(),
            ports: vec![
                PortSpec { target: 3000, protocol: PortProtocol::Http },
                PortSpec { target: 50051, protocol: PortProtocol::Grpc },
            ],
        }
    }

    fn route(pq: &str) -> Result<Route, (u16, &'static str)> {
        parse_target(pq).and_then(|t| resolve(t, &sandbox(), pq)).map_err(|e| (e.status(), e.code.as_str()))
    }

    fn to(port: u16, pq: &str) -> Result<Route, (u16, &'static str)> {
        let protocol = if port == 50051 { PortProtocol::Grpc } else { PortProtocol::Http };
        Ok(Route { port, protocol, path_and_query: pq.into() })
    }

    #[test]
    fn ports() {
        assert_eq!(route("/port/3000/api/x?y=1&z"), to(3000, "/api/x?y=1&z"));
        assert_eq!(route("/port/3000"), to(3000, "/"));
        assert_eq!(route("/port/3000/"), to(3000, "/"));
        assert_eq!(route("/port/3000?q=1"), to(3000, "/?q=1"));
        assert_eq!(route("/port/3000//double"), to(3000, "//double"));
        assert_eq!(route("/port/3000/../8080"), to(3000, "/../8080"));
        assert_eq!(route("/port/50051/pkg.Svc/Call"), to(50051, "/pkg.Svc/Call"));
    }

    #[test]
    fn sandbox_api() {
        for pq in ["/", "/filesystem/tmp?x=1", "/port", "/portal/3000", "/PORT/3000", "/port%2F3000/x", "/x/port/3000"]
        {
            assert_eq!(route(pq), to(8080, pq), "{pq}");
        }
    }

    #[test]
    fn bad_ports() {
        for pq in [
            "/port/08080",
            "/port/03000",
            "/port/+3000",
            "/port/-1",
            "/port/65536",
            "/port/99999999999",
            "/port/0",
            "/port/",
            "/port//x",
            "/port/3000%2F..",
            "/port/%33000",
            "/port/3000%2Fx",
            "/port/ 3000",
            "/port/3000.0",
            "/port/0x50",
        ] {
            assert_eq!(route(pq), Err((400, "BAD_REQUEST")), "{pq}");
        }
    }

    #[test]
    fn reserved_and_undeclared() {
        for pq in ["/port/80", "/port/443", "/port/8080/x"] {
            assert_eq!(route(pq), Err((403, "FORBIDDEN")), "{pq}");
        }
        assert_eq!(route("/port/3001"), Err((404, "ROUTE_NOT_FOUND")));
        let e = parse_target("/port/4000").and_then(|t| resolve(t, &sandbox(), "/port/4000")).expect_err("404");
        assert!(e.message.contains("3000, 50051"), "{}", e.message);
        let e = parse_target("/port/8080").expect_err("403");
        assert!(e.message.contains("reserved"), "{}", e.message);
    }
}
