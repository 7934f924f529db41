//! `gateway sandbox …`: admin API clients.

use super::{
    AdminArgs, SandboxCommand, SandboxRef,
    output::{call, columns, text},
};
use anyhow::bail;
use http::Method;
use serde_json::{Value, json};

pub(super) fn run(command: SandboxCommand) -> anyhow::Result<u8> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(run_async(command))
}

fn path(s: &SandboxRef) -> String {
    format!("/v1/workspaces/{}/sandboxes/{}", s.workspace, s.name)
}

async fn run_async(command: SandboxCommand) -> anyhow::Result<u8> {
    let (admin, method, path, body, kind): (AdminArgs, Method, String, Option<Vec<u8>>, Kind) = match command {
        SandboxCommand::Create { sandbox, address, interface, ports, expose, admin } => {
            let mut ports = ports.iter().map(|p| parse_port(p)).collect::<anyhow::Result<Vec<Value>>>()?;
            for spec in &expose {
                let (target, value) = parse_expose(spec)?;
                let Some(port) = ports.iter_mut().find(|p| p["target"] == target) else {
                    bail!("--expose {spec:?}: port {target} is not declared (add --port {target}/tcp)");
                };
                port["expose"] = value;
            }
            let body = json!({"address": address, "interface": interface, "ports": ports});
            (admin, Method::PUT, path(&sandbox), Some(serde_json::to_vec(&body)?), Kind::One)
        }
        SandboxCommand::List { workspace, admin } => {
            let path = match workspace {
                Some(ws) => format!("/v1/workspaces/{ws}/sandboxes"),
                None => "/v1/sandboxes".to_string(),
            };
            (admin, Method::GET, path, None, Kind::List)
        }
        SandboxCommand::Get { sandbox, admin } => (admin, Method::GET, path(&sandbox), None, Kind::One),
        SandboxCommand::Delete { sandbox, admin } => (admin, Method::DELETE, path(&sandbox), None, Kind::Deleted),
        SandboxCommand::Policy { sandbox, admin } => {
            (admin, Method::GET, format!("{}/policy", path(&sandbox)), None, Kind::Policy)
        }
    };
    let done = if matches!(kind, Kind::Deleted) { "deleted" } else { "" };
    call(&admin, method, &path, body, done, |v| kind.table(v)).await
}

/// `3000` or `3000/grpc`.
fn parse_port(spec: &str) -> anyhow::Result<Value> {
    let (port, protocol) = match spec.split_once('/') {
        Some((p, proto)) => (p, Some(proto.to_ascii_uppercase())),
        None => (spec, None),
    };
    let Ok(target) = port.trim().parse::<i64>() else {
        bail!("--port {spec:?}: expected PORT or PORT/PROTOCOL, e.g. 3000 or 50051/grpc");
    };
    Ok(match protocol {
        Some(protocol) => json!({"target": target, "protocol": protocol}),
        None => json!({"target": target}),
    })
}

/// `PORT=CIDR[,CIDR…][/v2]` → (port, the `expose` object).
fn parse_expose(spec: &str) -> anyhow::Result<(i64, Value)> {
    let Some((port, rest)) = spec.split_once('=') else {
        bail!("--expose {spec:?}: expected PORT=CIDR[,CIDR…][/v2], e.g. 5432=198.51.100.0/24");
    };
    let Ok(target) = port.trim().parse::<i64>() else {
        bail!("--expose {spec:?}: {port:?} is not a port");
    };
    let (list, proxy) = match rest.strip_suffix("/v2") {
        Some(list) => (list, "v2"),
        None => (rest, "off"),
    };
    let allow: Vec<&str> = list.split(',').map(str::trim).filter(|c| !c.is_empty()).collect();
    if allow.is_empty() {
        bail!("--expose {spec:?}: list the source networks allowed to connect (0.0.0.0/0 for everyone)");
    }
    Ok((target, json!({"allowFrom": allow, "proxyProtocol": proxy})))
}

/// `TARGET→PUBLIC PORT (ALLOW FROM)` of every exposed port.
fn public_text(v: &Value) -> String {
    let list: Vec<String> = v
        .as_array()
        .map(|ports| {
            ports
                .iter()
                .filter(|p| p.get("public").is_some())
                .map(|p| {
                    let public = &p["public"];
                    let allow = public["allowFrom"]
                        .as_array()
                        .map(|a| a.iter().map(text).collect::<Vec<_>>().join(","))
                        .unwrap_or_default();
                    format!("{} → {} (from {allow})", text(&p["target"]), text(&public["endpoint"]))
                })
                .collect()
        })
        .unwrap_or_default();
    if list.is_empty() { "-".into() } else { list.join("; ") }
}

enum Kind {
    One,
    List,
    Deleted,
    Policy,
}

fn ports_text(v: &Value) -> String {
    let list: Vec<String> = v
        .as_array()
        .map(|ports| {
            ports
                .iter()
                .map(|p| match p.get("protocol").and_then(Value::as_str) {
                    Some("HTTP") | None => text(&p["target"]),
                    Some(proto) => format!("{}/{proto}", text(&p["target"])),
                })
                .collect()
        })
        .unwrap_or_default();
    if list.is_empty() { "-".into() } else { list.join(",") }
}

impl Kind {
    fn table(&self, v: &Value) -> String {
        match self {
            Kind::One => {
                let mut rows = vec![
                    vec!["workspace".into(), text(&v["workspace"])],
                    vec!["name".into(), text(&v["name"])],
                    vec!["address".into(), text(&v["address"])],
                    vec!["interface".into(), text(&v["interface"])],
                    vec!["ports".into(), ports_text(&v["ports"])],
                    vec!["public".into(), public_text(&v["ports"])],
                    vec!["url".into(), text(&v["url"])],
                ];
                if let Some(us) = v.get("policyAppliedMicros") {
                    rows.push(vec!["policy applied in".into(), format!("{} µs", text(us))]);
                }
                columns(&[], &rows)
            }
            Kind::List => {
                let rows: Vec<Vec<String>> = v["sandboxes"]
                    .as_array()
                    .map(|list| {
                        list.iter()
                            .map(|s| {
                                vec![
                                    text(&s["workspace"]),
                                    text(&s["name"]),
                                    text(&s["address"]),
                                    text(&s["interface"]),
                                    ports_text(&s["ports"]),
                                    text(&s["url"]),
                                ]
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                columns(&["WORKSPACE", "NAME", "ADDRESS", "INTERFACE", "PORTS", "URL"], &rows)
            }
            Kind::Deleted => String::new(),
            Kind::Policy => policy_table(v),
        }
    }
}

/// A kernel policy view as text (shared with `gateway dataplane dump`).
pub(super) fn policy_table(v: &Value) -> String {
    let mut out = format!(
        "sandbox {}  registered: {}  ifindex: {}  allowed: {}  dropped: {}\n",
        text(&v["address"]),
        text(&v["registered"]),
        text(&v["ifindex"]),
        text(&v["counters"]["allowed"]),
        text(&v["counters"]["dropped"]),
    );
    let rows: Vec<Vec<String>> = v["entries"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|e| {
                    let origin = e["origin"]
                        .as_array()
                        .map(|o| o.iter().map(text).collect::<Vec<_>>().join(","))
                        .unwrap_or_default();
                    vec![text(&e["port"]), text(&e["protocol"]), text(&e["allowFrom"]), origin, text(&e["previewRefs"])]
                })
                .collect()
        })
        .unwrap_or_default();
    out.push_str(&columns(&["PORT", "PROTO", "ALLOW FROM", "ORIGIN", "PREVIEWS"], &rows));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports() {
        assert_eq!(parse_port("3000").expect("ok"), json!({"target": 3000}));
        assert_eq!(parse_port("50051/grpc").expect("ok"), json!({"target": 50051, "protocol": "GRPC"}));
        assert!(parse_port("x").is_err());
    }

    #[test]
    fn expose() {
        let (port, v) = parse_expose("5432=198.51.100.0/24, 203.0.113.7/32/v2").expect("ok");
        assert_eq!(port, 5432);
        assert_eq!(v, json!({"allowFrom": ["198.51.100.0/24", "203.0.113.7/32"], "proxyProtocol": "v2"}));
        assert_eq!(parse_expose("22=0.0.0.0/0").expect("ok").1["proxyProtocol"], "off");
        assert!(parse_expose("5432").is_err());
        assert!(parse_expose("5432=").is_err());
    }

    #[test]
    fn table() {
        let t = columns(&["A", "LONG"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    LONG\nxyz  1\n");
    }
}
