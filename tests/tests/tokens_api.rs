//! Workspace access tokens end to end: the admin API (`/v1/workspaces/{ws}/tokens`) and the
//! `gateway token …` / `gateway fetch` CLI against the real `gateway` binary with
//! `dataplane.enabled = false`.
//!
//! Run: `GATEWAY_BIN=/path/to/gateway cargo test -p gateway-tests --test tokens_api`.

use gateway::model::time::parse_timestamp;
use gateway_tests::gateway_process::{AdminClient, GatewayProcess, Response, run_gateway, temp_dir};
use serde_json::{Value, json};
use std::{
    fs,
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

const WS: &str = "acme";

fn tokens_path(ws: &str) -> String {
    format!("/v1/workspaces/{ws}/tokens")
}

fn token_path(ws: &str, name: &str) -> String {
    format!("/v1/workspaces/{ws}/tokens/{name}")
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).expect("clock")
}

fn unix(text: &Value) -> i64 {
    let text = text.as_str().unwrap_or_else(|| panic!("not a timestamp: {text}"));
    parse_timestamp(text).unwrap_or_else(|e| panic!("{e}")).unix_timestamp()
}

/// Creates a token; returns the 201 answer.
fn create(c: &AdminClient, ws: &str, body: Value) -> Value {
    let r = c.post_json(&tokens_path(ws), &body);
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()
}

fn list(c: &AdminClient, ws: &str) -> Value {
    let r = c.get(&tokens_path(ws));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// The log without terminal colour sequences.
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The names of the files in the token directory.
fn token_files(state: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(state.join("tokens"))
        .expect("tokens dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn create_list_get_revoke() {
    let gw = GatewayProcess::start();
    let c = gw.client();
    assert_eq!(list(&c, WS), json!({"tokens": []}));

    let before = unix_now();
    let r = c.post_json(&tokens_path(WS), &json!({"name": "ci"}));
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("location"), Some("/v1/workspaces/acme/tokens/ci"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let v = r.json();
    let keys: Vec<&str> = v.as_object().expect("object").keys().map(String::as_str).collect();
    assert_eq!(keys.len(), 5, "{v}");
    assert_eq!((v["name"].as_str(), v["workspace"].as_str()), (Some("ci"), Some(WS)));
    assert_eq!(v["expiresAt"], Value::Null);
    let created = unix(&v["createdAt"]);
    assert!((before - 1..=unix_now()).contains(&created), "{v}");
    let secret = v["token"].as_str().expect("token").to_string();
    assert!(secret.starts_with("gw_") && secret.len() == 46, "{secret}");

    // Every accepted timestamp form, normalized to UTC with Z; ttl.
    for (name, expires, expected) in [
        ("z", "2099-01-02T03:04:05Z", "2099-01-02T03:04:05Z"),
        ("offset", "2099-01-02T03:04:05+00:00", "2099-01-02T03:04:05Z"),
        ("plus-two", "2099-01-02T05:04:05+02:00", "2099-01-02T03:04:05Z"),
        ("naive", "2099-01-02T03:04:05", "2099-01-02T03:04:05Z"),
        ("fraction", "2099-01-02T03:04:05.250Z", "2099-01-02T03:04:05.250Z"),
        ("naive-fraction", "2099-01-02T03:04:05.5", "2099-01-02T03:04:05.500Z"),
        ("micros", "2099-01-02T03:04:05.123456+00:00", "2099-01-02T03:04:05.123Z"),
    ] {
        let v = create(&c, WS, json!({"name": name, "expiresAt": expires}));
        assert_eq!(v["expiresAt"], expected, "{name}");
    }
    let v = create(&c, WS, json!({"name": "day", "ttl": "24h"}));
    let lifetime = unix(&v["expiresAt"]) - unix(&v["createdAt"]);
    assert!((86_400..=86_402).contains(&lifetime), "{v}");
    // `expiresAt: null` is no expiry.
    assert_eq!(create(&c, WS, json!({"name": "null-expiry", "expiresAt": null}))["expiresAt"], Value::Null);
    // The same name in another workspace is another token.
    create(&c, "other", json!({"name": "ci"}));

    // Lists: sorted by name, no secret, `expired`.
    let r = c.get(&tokens_path(WS));
    assert!(!r.text().contains(&secret) && !r.text().contains("gw_"), "{}", r.text());
    let v = r.json();
    let names: Vec<&str> = v["tokens"].as_array().expect("list").iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(
        names,
        ["ci", "day", "fraction", "micros", "naive", "naive-fraction", "null-expiry", "offset", "plus-two", "z"]
    );
    for t in v["tokens"].as_array().expect("list") {
        let mut keys: Vec<&str> = t.as_object().expect("object").keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["createdAt", "expired", "expiresAt", "name", "workspace"], "{t}");
        assert_eq!(t["expired"], false);
        assert_eq!(t["workspace"], WS);
    }
    assert_eq!(list(&c, "other")["tokens"].as_array().map(Vec::len), Some(1));
    assert_eq!(list(&c, "nobody"), json!({"tokens": []}));
    // One token.
    let one = c.get(&token_path(WS, "ci"));
    assert_eq!(one.status, 200, "{}", one.text());
    assert_eq!(one.json(), v["tokens"][0]);

    // Revoke: 204, gone, 404 after.
    let r = c.delete(&token_path(WS, "ci"));
    assert_eq!(r.status, 204, "{}", r.text());
    assert!(r.body.is_empty());
    c.get(&token_path(WS, "ci")).assert_error(404, "TOKEN_NOT_FOUND");
    let e = c.delete(&token_path(WS, "ci")).assert_error(404, "TOKEN_NOT_FOUND");
    assert!(e["message"].as_str().is_some_and(|m| m.contains("ci")), "{e}");
    assert!(!token_files(&gw.state_dir()).contains(&"acme.ci.json".to_string()));
    assert_eq!(list(&c, "other")["tokens"][0]["name"], "ci", "the other workspace's token stays");
    // The name is free again, with a new secret.
    let again = create(&c, WS, json!({"name": "ci"}));
    assert_ne!(again["token"].as_str(), Some(secret.as_str()));
}

#[test]
fn expired_tokens_are_listed_as_expired() {
    let gw = GatewayProcess::start();
    let c = gw.client();
    let v = create(&c, WS, json!({"name": "short", "ttl": "1s"}));
    let expires = unix(&v["expiresAt"]);
    assert!(expires > unix(&v["createdAt"]), "{v}");
    let first = list(&c, WS);
    let short = first["tokens"].as_array().and_then(|l| l.iter().find(|t| t["name"] == "short")).expect("listed");
    if unix_now() < expires {
        assert_eq!(short["expired"], false, "{first}");
    }
    while unix_now() <= expires {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(list(&c, WS)["tokens"][0]["expired"], true);
    // An expired token keeps its name until revoked.
    c.post_json(&tokens_path(WS), &json!({"name": "short"})).assert_error(409, "TOKEN_CONFLICT");
    assert_eq!(c.delete(&token_path(WS, "short")).status, 204);
    create(&c, WS, json!({"name": "short"}));
}

#[test]
fn refused_requests_change_nothing() {
    let gw = GatewayProcess::start();
    let c = gw.client();
    create(&c, WS, json!({"name": "ci"}));
    create(&c, WS, json!({"name": "deploy", "ttl": "7d"}));
    create(&c, "other", json!({"name": "ci"}));
    let state = gw.state_dir();
    let before = (list(&c, WS), list(&c, "other"), token_files(&state));
    let snapshot = || (list(&c, WS), list(&c, "other"), token_files(&state));

    let check = |what: &str, r: Response, status: u16, code: &str, needle: &str| {
        let e = r.assert_error(status, code);
        let message = e["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{what}: message {message:?} should mention {needle:?}");
        assert_eq!(snapshot(), before, "{what} changed the state");
    };
    let post = |ws: &str, body: Value| c.post_json(&tokens_path(ws), &body);
    let raw = |body: &[u8]| c.post_raw(&tokens_path(WS), body);

    // Names and workspaces (DNS label rules, like sandbox names).
    for name in ["Upper", "-lead", "trail-", "under_score", "a.b", "", &"n".repeat(64), "spa ce", "é"] {
        check("name", post(WS, json!({"name": name})), 400, "BAD_REQUEST", "token name");
    }
    for ws in ["Acme", "-x", "a_b"] {
        check("workspace", post(ws, json!({"name": "new"})), 400, "BAD_REQUEST", "workspace");
        check("workspace", c.get(&tokens_path(ws)), 400, "BAD_REQUEST", "workspace");
    }
    check("name", c.delete(&token_path(WS, "Upper")), 400, "BAD_REQUEST", "token name");
    // Duplicate.
    check("duplicate", post(WS, json!({"name": "ci"})), 409, "TOKEN_CONFLICT", "ci");
    check("duplicate", post(WS, json!({"name": "deploy", "ttl": "1h"})), 409, "TOKEN_CONFLICT", "deploy");
    // Expiry in the past, or unreadable; ttl.
    for past in ["2001-01-01T00:00:00Z", "2001-01-01T00:00:00", "2001-01-01T00:00:00.5+00:00"] {
        check("past", post(WS, json!({"name": "new", "expiresAt": past})), 400, "BAD_REQUEST", "in the past");
    }
    for bad in ["tomorrow", "2099-01-02", "2099-13-01T00:00:00Z", "2099-01-02T03:04Z", "2099-01-02T03:04:05+0200", ""] {
        let r = post(WS, json!({"name": "new", "expiresAt": bad}));
        check(
            "unparseable",
            r,
            400,
            "BAD_REQUEST",
            &format!("invalid expiresAt: {bad:?} is not a timestamp: use RFC 3339"),
        );
    }
    check("type", post(WS, json!({"name": "new", "expiresAt": 1_900_000_000})), 400, "BAD_REQUEST", "");
    check(
        "both",
        post(WS, json!({"name": "new", "expiresAt": "2099-01-01T00:00:00Z", "ttl": "1h"})),
        400,
        "BAD_REQUEST",
        "not both",
    );
    for ttl in ["0s", "soon", "-1h", "1000000000000d"] {
        check("ttl", post(WS, json!({"name": "new", "ttl": ttl})), 400, "BAD_REQUEST", "ttl");
    }
    // Bodies.
    check("unknown field", raw(br#"{"name":"new","scope":"all"}"#), 400, "BAD_REQUEST", "scope");
    check("secret given", raw(br#"{"name":"new","token":"gw_mine"}"#), 400, "BAD_REQUEST", "token");
    check("missing name", raw(br#"{"ttl":"1h"}"#), 400, "BAD_REQUEST", "name");
    check("malformed", raw(b"{\"name\": "), 400, "BAD_REQUEST", "EOF");
    check("not json", raw(b"name=ci"), 400, "BAD_REQUEST", "line 1");
    check("empty", raw(b""), 400, "BAD_REQUEST", "EOF");
    check("array", raw(b"[]"), 400, "BAD_REQUEST", "");
    check("too large", raw(&vec![b' '; 1024 * 1024 + 1]), 413, "REQUEST_ENTITY_TOO_LARGE", "");
    // Unknown token, routes and methods.
    check("unknown", c.delete(&token_path(WS, "ghost")), 404, "TOKEN_NOT_FOUND", "ghost");
    check("unknown", c.get(&token_path(WS, "ghost")), 404, "TOKEN_NOT_FOUND", "ghost");
    check("other ws", c.delete(&token_path("nobody", "ci")), 404, "TOKEN_NOT_FOUND", "nobody");
    let r = c.request("PUT", &token_path(WS, "ci"), &[], Some(b"{}")).expect("put");
    assert_eq!(r.header("allow"), Some("GET, DELETE"));
    check("method", r, 405, "METHOD_NOT_ALLOWED", "PUT");
    let r = c.request("DELETE", &tokens_path(WS), &[], None).expect("delete");
    assert_eq!(r.header("allow"), Some("GET, POST"));
    check("method", r, 405, "METHOD_NOT_ALLOWED", "DELETE");
    check("route", c.get(&format!("{}/x", token_path(WS, "ci"))), 404, "ROUTE_NOT_FOUND", "");
    // The admin token is required.
    let anon = gw.anonymous_client();
    check("anonymous", anon.post_json(&tokens_path(WS), &json!({"name": "new"})), 401, "AUTHENTICATION_REQUIRED", "");
    check("anonymous", anon.get(&tokens_path(WS)), 401, "AUTHENTICATION_REQUIRED", "");
    check("anonymous", anon.delete(&token_path(WS, "ci")), 401, "AUTHENTICATION_REQUIRED", "");
    let wrong = AdminClient::new(gw.admin().clone(), Some("wrong".into()));
    check("wrong", wrong.post_json(&tokens_path(WS), &json!({"name": "new"})), 401, "AUTHENTICATION_FAILED", "");
    check("wrong", wrong.delete(&token_path(WS, "ci")), 401, "AUTHENTICATION_FAILED", "");
    // A workspace access token is not an admin token.
    let workspace_token = create(&c, "spare", json!({"name": "t"}))["token"].as_str().expect("token").to_string();
    let as_admin = AdminClient::new(gw.admin().clone(), Some(workspace_token));
    as_admin.get(&tokens_path(WS)).assert_error(401, "AUTHENTICATION_FAILED");
    assert_eq!(c.delete(&token_path("spare", "t")).status, 204);

    assert_eq!(snapshot(), before);
}

#[test]
fn tokens_survive_restart_and_secrets_never_leak() {
    let mut gw = GatewayProcess::start();
    let c = gw.client();
    let mut secrets = Vec::new();
    for (ws, body) in [
        (WS, json!({"name": "ci"})),
        (WS, json!({"name": "deploy", "ttl": "7d"})),
        (WS, json!({"name": "gone"})),
        ("other", json!({"name": "ci", "expiresAt": "2099-01-01T00:00:00Z"})),
    ] {
        secrets.push(create(&c, ws, body)["token"].as_str().expect("token").to_string());
    }
    assert_eq!(c.delete(&token_path(WS, "gone")).status, 204);
    let before = (list(&c, WS), list(&c, "other"));

    // SIGKILL right after the answers: acknowledged means durable.
    gw.restart();
    let c = gw.client();
    assert_eq!((list(&c, WS), list(&c, "other")), before);
    c.get(&token_path(WS, "gone")).assert_error(404, "TOKEN_NOT_FOUND");
    assert!(plain(&gw.log()).contains("tokens=3"), "the start counts the tokens:\n{}", gw.log());
    // The reloaded index refuses duplicates.
    c.post_json(&tokens_path(WS), &json!({"name": "deploy"})).assert_error(409, "TOKEN_CONFLICT");

    // With every log enabled, more token traffic.
    gw.set_log_filter("trace");
    gw.restart();
    let c = gw.client();
    secrets.push(create(&c, WS, json!({"name": "traced"}))["token"].as_str().expect("token").to_string());
    let _ = list(&c, WS);
    assert_eq!(c.delete(&token_path(WS, "traced")).status, 204);
    let log = plain(&gw.log());
    assert!(log.contains("access token created") && log.contains("token=traced"), "names are logged:\n{log}");

    // No secret anywhere but in the creation answers: not in the log, the state, or any list.
    let mut state_text = String::new();
    for name in token_files(&gw.state_dir()) {
        let text = fs::read_to_string(gw.state_dir().join("tokens").join(&name)).expect("read");
        assert!(text.contains("secretSha256"), "{text}");
        state_text.push_str(&text);
    }
    let lists = format!("{}{}", list(&c, WS), list(&c, "other"));
    for secret in &secrets {
        let body = &secret["gw_".len()..];
        assert!(!log.contains(body), "a secret is in the gateway log");
        assert!(!state_text.contains(body), "a secret is in the state");
        assert!(!lists.contains(body), "a secret is in a list");
    }
    assert!(!log.contains("gw_"), "something secret-shaped is in the log:\n{log}");
}

#[test]
fn cli_token_commands() {
    let gw = GatewayProcess::start();
    let run = |args: &[&str]| gw.cli("token", args);
    let stdout = |o: &std::process::Output| String::from_utf8_lossy(&o.stdout).into_owned();
    let stderr = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();

    let out = run(&["create", WS, "ci", "--ttl", "24h", "-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(v["token"].as_str().is_some_and(|t| t.starts_with("gw_")), "{v}");
    assert!(!v["expiresAt"].is_null());

    let out = run(&["create", WS, "deploy", "--expires-at", "2099-01-02T03:04:05"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    let secret = table.lines().find_map(|l| l.strip_prefix("token")).map(str::trim).expect("token row");
    assert!(secret.starts_with("gw_"), "{table}");
    assert!(table.contains("2099-01-02T03:04:05Z"), "{table}");
    assert!(stderr(&out).contains("not shown again"), "{}", stderr(&out));

    let out = run(&["list", WS]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.contains("STATUS") && table.contains("active"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("ci ")) && table.lines().any(|l| l.starts_with("deploy ")), "{table}");
    assert!(!table.contains(secret), "{table}");
    let out = run(&["list", WS, "-o", "json"]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["tokens"].as_array().map(Vec::len), Some(2));

    let out = run(&["revoke", WS, "ci"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "revoked");
    // Errors: exit 1, the API's code on stderr.
    let out = run(&["revoke", WS, "ci"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("TOKEN_NOT_FOUND"), "{}", stderr(&out));
    let out = run(&["create", WS, "deploy"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("TOKEN_CONFLICT"), "{}", stderr(&out));
    let out = run(&["create", WS, "old", "--expires-at", "2001-01-01T00:00:00Z"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("BAD_REQUEST") && stderr(&out).contains("in the past"), "{}", stderr(&out));
    // Usage errors: exit 2.
    let out = run(&["create", WS, "x", "--ttl", "1h", "--expires-at", "2099-01-01T00:00:00Z"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = run(&["list"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn fetch_cli_reports_the_edge_errors_and_bad_cas() {
    // `fetch` resolves its target from the configuration, trusts the edge's development CA and
    // reports the edge's error (a successful fetch through a sandbox is in edge_routing.rs).
    let gw = GatewayProcess::start();
    let config = gw.config_path().to_str().expect("utf-8").to_string();
    let out = run_gateway(&["fetch", "acme/web", "3000", "/x", "--config", &config, "--token", "gw_x"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("404 WORKLOAD_NOT_FOUND"), "{stderr}");

    let dir = temp_dir("gateway-fetch-cli");
    let ca = dir.path().join("ca.pem");
    fs::write(&ca, "not a certificate\n").expect("write");
    let out = run_gateway(&["fetch", "acme/web", "3000", "--config", &config, "--cacert", ca.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("holds no certificate"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = run_gateway(&["fetch", "acme", "3000"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("WORKSPACE/NAME"));
    let out = run_gateway(&["fetch", "acme/web", "70000"]);
    assert_eq!(out.status.code(), Some(2));
}
