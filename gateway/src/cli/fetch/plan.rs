//! Everything `gateway fetch` decides before opening a socket: the sandbox URL, where to
//! connect, and the request's method, headers and body. Pure, so it is unit-tested.

use super::FetchArgs;
use crate::{
    auth,
    config::Config,
    model::sandbox::{sandbox_label, validate_names},
};
use anyhow::{Context, anyhow, bail};
use http::{HeaderMap, HeaderName, HeaderValue, Method, header, uri::Authority, uri::PathAndQuery};
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
};

/// Where the TCP connection goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(in crate::cli) enum Connect {
    /// An address (no DNS).
    Addr(SocketAddr),
    /// A name resolved by DNS, and a port.
    Name(String, u16),
}

impl std::fmt::Display for Connect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Connect::Addr(a) => write!(f, "{a}"),
            Connect::Name(host, port) => write!(f, "{host}:{port}"),
        }
    }
}

/// A request ready to send.
#[derive(Debug)]
pub(super) struct Plan {
    /// The sandbox host: SNI, and `Host` without the port.
    pub host: String,
    /// `host[:port]`: `Host` / `:authority`.
    pub authority: String,
    /// `/port/{port}{path}`.
    pub path: String,
    /// Where to connect.
    pub connect: Connect,
    /// The CA file to trust.
    pub ca: PathBuf,
    pub method: Method,
    /// Headers besides `Host` (the token included; `Debug` of a `HeaderMap` marks it sensitive).
    pub headers: HeaderMap,
    /// Body (empty for none).
    pub body: Vec<u8>,
    /// `-i`.
    pub include: bool,
}

/// Where the sandbox is reached: its host, the `Host`/`:authority`, and where to connect.
#[derive(Debug)]
pub(in crate::cli) struct Endpoint {
    pub workspace: String,
    pub name: String,
    /// The sandbox host: SNI, and `Host` without the port.
    pub host: String,
    /// `host[:port]`: `Host` / `:authority`.
    pub authority: String,
    /// Where to connect.
    pub connect: Connect,
}

impl Endpoint {
    /// `sandbox` (`{workspace}/{name}`) through `--gateway` (or DNS with `resolve`, else
    /// `listen.https` of `config`).
    pub fn new(sandbox: &str, gateway: Option<&str>, resolve: bool, config: &Config) -> anyhow::Result<Endpoint> {
        let (workspace, name) = parse_target(sandbox)?;
        let listen = config.https_addr().map_err(|e| anyhow!("listen.https: {e}"))?;
        let host = format!("{}.{}.{}", sandbox_label(&name, &workspace), config.region, config.domain);
        let (connect, url_port) = match gateway {
            Some(gateway) => {
                let connect = parse_gateway(gateway)?;
                let port = match &connect {
                    Connect::Addr(a) => a.port(),
                    Connect::Name(_, p) => *p,
                };
                (connect, port)
            }
            None if resolve => (Connect::Name(host.clone(), listen.port()), listen.port()),
            None => (Connect::Addr(reachable(listen)), listen.port()),
        };
        let authority = if url_port == 443 { host.clone() } else { format!("{host}:{url_port}") };
        Ok(Endpoint { workspace, name, host, authority, connect })
    }
}

impl Plan {
    /// The plan of `args` under `config`; `body` is the `--json` body, already read.
    pub fn new(args: &FetchArgs, config: &Config, body: Option<Vec<u8>>, ca: PathBuf) -> anyhow::Result<Plan> {
        let Endpoint { workspace, host, authority, connect, .. } =
            Endpoint::new(&args.sandbox, args.gateway.as_deref(), args.resolve, config)?;
        let path = sandbox_path(args.port, &args.path)?;
        let method = match &args.method {
            Some(m) => Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                .map_err(|_| anyhow!("-X {m:?}: not an HTTP method"))?,
            None if body.is_some() => Method::POST,
            None => Method::GET,
        };
        let headers = request_headers(&args.headers, args.token.as_deref(), &workspace, body.is_some())?;
        Ok(Plan {
            host,
            authority,
            path,
            connect,
            ca,
            method,
            headers,
            body: body.unwrap_or_default(),
            include: args.include,
        })
    }

    /// The URL as the SDK would build it.
    pub fn url(&self) -> String {
        format!("https://{}{}", self.authority, self.path)
    }
}

/// `{workspace}/{name}`, both valid names.
fn parse_target(target: &str) -> anyhow::Result<(String, String)> {
    let Some((workspace, name)) = target.split_once('/') else {
        bail!("{target:?}: expected WORKSPACE/NAME, e.g. acme/my-sandbox");
    };
    validate_names(workspace, name).map_err(|e| anyhow!("{target:?}: {}", e.message))?;
    Ok((workspace.to_string(), name.to_string()))
}

/// `/port/{port}{path}`; the path gains a leading '/' if it has none, and must be a valid
/// path-and-query.
fn sandbox_path(port: u16, path: &str) -> anyhow::Result<String> {
    let path = if path.starts_with('/') { path.to_string() } else { format!("/{path}") };
    let full = format!("/port/{port}{path}");
    full.parse::<PathAndQuery>().with_context(|| format!("path {path:?} is not a valid URL path and query"))?;
    Ok(full)
}

/// `--gateway`: `https://HOST[:PORT]`, `HOST:PORT` or `HOST` (port 443).
fn parse_gateway(text: &str) -> anyhow::Result<Connect> {
    let rest = match text.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => rest,
        Some((scheme, _)) => bail!("--gateway {text:?}: the public listener speaks https, not {scheme}"),
        None => text,
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let authority: Authority = rest
        .parse()
        .map_err(|_| anyhow!("--gateway {text:?}: expected https://HOST[:PORT], e.g. https://127.0.0.1:8443"))?;
    if rest.contains('@') {
        bail!("--gateway {text:?}: user information is not allowed");
    }
    let port = authority.port_u16().unwrap_or(443);
    let host = authority.host();
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    Ok(match bare.parse::<IpAddr>() {
        Ok(ip) => Connect::Addr(reachable(SocketAddr::new(ip, port))),
        Err(_) => Connect::Name(host.to_string(), port),
    })
}

/// A listening address as a destination: 0.0.0.0 / :: mean this host.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port()),
        _ => addr,
    }
}

/// `--header`s, the SDK's credential headers, and the JSON headers unless given.
fn request_headers(extra: &[String], token: Option<&str>, workspace: &str, json: bool) -> anyhow::Result<HeaderMap> {
    let mut headers = HeaderMap::new();
    for h in extra {
        let Some((name, value)) = h.split_once(':') else {
            bail!("--header {h:?}: expected NAME:VALUE, e.g. 'Accept: text/event-stream'");
        };
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| anyhow!("--header {h:?}: {:?} is not a header name", name.trim()))?;
        let value = HeaderValue::from_str(value.trim())
            .map_err(|_| anyhow!("--header {h:?}: the value holds characters a header cannot carry"))?;
        headers.append(name, value);
    }
    if let Some(token) = token {
        let mut value = HeaderValue::from_str(&format!("Bearer {}", token.trim()))
            .map_err(|_| anyhow!("the token holds characters a header cannot carry"))?;
        value.set_sensitive(true);
        headers.insert(auth::X_BLAXEL_AUTHORIZATION, value);
        headers.insert(
            auth::X_BLAXEL_WORKSPACE,
            HeaderValue::from_str(workspace).map_err(|_| anyhow!("workspace {workspace:?} in a header"))?,
        );
    }
    if json {
        let application_json = HeaderValue::from_static("application/json");
        headers.entry(header::CONTENT_TYPE).or_insert(application_json.clone());
        headers.entry(header::ACCEPT).or_insert(application_json);
    }
    headers
        .entry(header::USER_AGENT)
        .or_insert(HeaderValue::from_static(concat!("gateway-fetch/", env!("CARGO_PKG_VERSION"))));
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn args(line: &[&str]) -> FetchArgs {
        let mut full = vec!["gateway", "fetch"];
        full.extend_from_slice(line);
        match Cli::try_parse_from(full).expect("parse").command {
            Command::Fetch(a) => a,
            other => panic!("{other:?}"),
        }
    }

    fn plan(line: &[&str], config: &Config) -> anyhow::Result<Plan> {
        let a = args(line);
        let body = a.json.as_ref().map(|j| j.as_bytes().to_vec());
        Plan::new(&a, config, body, PathBuf::from("/ca.pem"))
    }

    fn dev() -> Config {
        Config::dev(PathBuf::from("/tmp/state"))
    }

    #[test]
    fn url_and_connect() {
        let p = plan(&["acme/web", "3000"], &dev()).expect("plan");
        assert_eq!(p.url(), "https://sbx-web-acme.local.gw.test:8443/port/3000/");
        assert_eq!(p.host, "sbx-web-acme.local.gw.test");
        assert_eq!(p.connect, Connect::Addr("127.0.0.1:8443".parse().expect("addr")));
        assert_eq!(p.method, Method::GET);
        assert!(p.body.is_empty());
        assert!(p.headers.get("x-blaxel-authorization").is_none());

        let p = plan(&["acme/my-app", "5173", "api/items?limit=10&x=a%2Fb"], &dev()).expect("plan");
        assert_eq!(p.path, "/port/5173/api/items?limit=10&x=a%2Fb");

        // The default configuration: 0.0.0.0:443 means this host, and no port in the URL.
        let p = plan(&["acme/web", "3000", "/x"], &Config::default()).expect("plan");
        assert_eq!(p.url(), "https://sbx-web-acme.local.gw.test/port/3000/x");
        assert_eq!(p.connect, Connect::Addr("127.0.0.1:443".parse().expect("addr")));

        // --gateway: its port is the URL's.
        for (g, connect, url) in [
            ("https://127.0.0.1:9443", Connect::Addr("127.0.0.1:9443".parse().expect("a")), ":9443/"),
            ("127.0.0.2:9443/", Connect::Addr("127.0.0.2:9443".parse().expect("a")), ":9443/"),
            ("https://[::1]:9443", Connect::Addr("[::1]:9443".parse().expect("a")), ":9443/"),
            ("https://0.0.0.0:9443", Connect::Addr("127.0.0.1:9443".parse().expect("a")), ":9443/"),
            ("edge.example.com", Connect::Name("edge.example.com".into(), 443), "/"),
            ("HTTPS://edge.example.com:8443", Connect::Name("edge.example.com".into(), 8443), ":8443/"),
        ] {
            let p = plan(&["acme/web", "3000", "--gateway", g], &dev()).expect(g);
            assert_eq!(p.connect, connect, "{g}");
            assert_eq!(p.url(), format!("https://sbx-web-acme.local.gw.test{url}port/3000/"), "{g}");
        }
        // --resolve: DNS of the sandbox host, on the listener's port.
        let p = plan(&["acme/web", "3000", "--resolve"], &dev()).expect("plan");
        assert_eq!(p.connect, Connect::Name("sbx-web-acme.local.gw.test".into(), 8443));
    }

    #[test]
    fn request_parts() {
        let p = plan(
            &[
                "acme/web",
                "3000",
                "/items",
                "--json",
                r#"{"a": 1}"#,
                "--token",
                "gw_secret",
                "-H",
                "X-Trace: 1",
                "--header",
                "accept:text/plain",
            ],
            &dev(),
        )
        .expect("plan");
        assert_eq!(p.method, Method::POST);
        assert_eq!(p.body, br#"{"a": 1}"#);
        assert_eq!(p.headers["x-blaxel-authorization"], "Bearer gw_secret");
        assert!(p.headers["x-blaxel-authorization"].is_sensitive());
        assert_eq!(p.headers["x-blaxel-workspace"], "acme");
        assert_eq!(p.headers["content-type"], "application/json");
        assert_eq!(p.headers["accept"], "text/plain", "a given header wins");
        assert_eq!(p.headers["x-trace"], "1");
        assert!(p.headers["user-agent"].to_str().expect("ua").starts_with("gateway-fetch/"));
        let p = plan(&["acme/web", "3000", "-X", "delete"], &dev()).expect("plan");
        assert_eq!(p.method, Method::DELETE);
    }

    #[test]
    fn refusals() {
        for (line, needle) in [
            (vec!["acme", "3000"], "WORKSPACE/NAME"),
            (vec!["acme/Web", "3000"], "invalid sandbox name"),
            (vec!["ac_me/web", "3000"], "invalid workspace"),
            (vec!["acme/web/x", "3000"], "invalid sandbox name"),
            (vec!["acme/web", "3000", "/a b"], "not a valid URL path"),
            (vec!["acme/web", "3000", "--gateway", "http://127.0.0.1:8443"], "not http"),
            (vec!["acme/web", "3000", "--gateway", "https://h:1/x"], "expected https://HOST"),
            (vec!["acme/web", "3000", "--gateway", "https://u@h:1"], "user information"),
            (vec!["acme/web", "3000", "-H", "NoColon"], "NAME:VALUE"),
            (vec!["acme/web", "3000", "-H", "Bad Name: x"], "not a header name"),
            (vec!["acme/web", "3000", "-X", "GE T"], "not an HTTP method"),
            (vec!["acme/web", "3000", "--token", "a\nb"], "cannot carry"),
        ] {
            let e = plan(&line, &dev()).expect_err(needle);
            assert!(format!("{e:#}").contains(needle), "{line:?}: {e:#}");
        }
        // clap: port range, --gateway with --resolve, --dev with --config.
        for line in [
            vec!["gateway", "fetch", "acme/web", "0"],
            vec!["gateway", "fetch", "acme/web", "65536"],
            vec!["gateway", "fetch", "acme/web", "x"],
            vec!["gateway", "fetch", "acme/web", "3000", "--gateway", "h:1", "--resolve"],
            vec!["gateway", "fetch", "acme/web", "3000", "--dev", "--config", "x.toml"],
        ] {
            assert!(Cli::try_parse_from(&line).is_err(), "{line:?}");
        }
    }
}
