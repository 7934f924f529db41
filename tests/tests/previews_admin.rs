//! The `/v1` preview, preview-token and session API end to end, and its CLI: the real gateway
//! binary with `dataplane.enabled = false`, sandboxes on `lo` (the kernel side is
//! `previews_kernel.rs`).

use gateway::model::time;
use gateway_tests::gateway_process::{GatewayProcess, Response, run_gateway};
use serde_json::{Value, json};
use std::time::Duration;

const SBX: &str = "/v1/workspaces/acme/sandboxes/app";

/// An unprivileged gateway (data plane off) with sandbox `acme/app` on `lo` declaring 3000.
fn gateway_with_app() -> GatewayProcess {
    let gw = GatewayProcess::start();
    let r =
        gw.client().put_json(SBX, &json!({"address": "198.18.0.2", "interface": "lo", "ports": [{"target": 3000}]}));
    assert_eq!(r.status, 200, "{}", r.text());
    gw
}

fn post(gw: &GatewayProcess, path: &str, body: &Value) -> Response {
    let body = serde_json::to_vec(body).expect("json");
    gw.client().request("POST", path, &[("content-type", "application/json")], Some(&body)).expect("POST")
}

#[test]
fn previews_tokens_and_sessions_over_v1() {
    let gw = gateway_with_app();
    let c = gw.client();
    let port = gw.https_port();

    // Create: URL with the public port, random-looking stable id, defaults.
    let r = c.put_json(
        &format!("{SBX}/previews/web"),
        &json!({"port": 5173, "ttl": "24h",
        "requestHeaders": {"Authorization": "Bearer app"}, "responseHeaders": {"Access-Control-Allow-Origin": "*"}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let web = r.json();
    let id = web["id"].as_str().expect("id").to_string();
    assert_eq!(id.len(), 16, "{web}");
    assert!(id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()), "{id}");
    assert_eq!(web["url"], format!("https://{id}.local.preview.gw.test:{port}"));
    assert_eq!(web["public"], false);
    assert_eq!(web["port"], 5173);
    assert_eq!(web["requestHeaders"], json!({"authorization": "Bearer app"}));
    assert_eq!(web["ttl"], "24h");
    let left =
        time::until(time::parse_timestamp(web["expiresAt"].as_str().expect("expiresAt")).expect("ts"), time::now());
    assert!(left > Duration::from_secs(23 * 3600) && left <= Duration::from_secs(24 * 3600), "{left:?}");

    // GET, list, idempotent PUT, prefixUrl.
    assert_eq!(c.get(&format!("{SBX}/previews/web")).json()["id"], id.as_str());
    let pre = c.put_json(&format!("{SBX}/previews/shop"), &json!({"port": 3000, "public": true, "prefixUrl": "shop"}));
    assert_eq!(pre.status, 200, "{}", pre.text());
    assert_eq!(pre.json()["url"], format!("https://shop-acme.local.preview.gw.test:{port}"));
    let names: Vec<Value> = c.get(&format!("{SBX}/previews")).json()["previews"]
        .as_array()
        .expect("list")
        .iter()
        .map(|p| p["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("shop"), json!("web")]);
    c.put_json(&format!("{SBX}/previews/shop2"), &json!({"port": 3000, "prefixUrl": "shop"}))
        .assert_error(409, "PREVIEW_URL_CONFLICT");

    // Timestamps in every accepted form.
    for (at, want) in [
        ("2099-01-31T12:00:00Z", "2099-01-31T12:00:00Z"),
        ("2099-01-31T12:00:00+00:00", "2099-01-31T12:00:00Z"),
        ("2099-01-31T12:00:00", "2099-01-31T12:00:00Z"),
        ("2099-01-31T12:00:00.250", "2099-01-31T12:00:00.250Z"),
        ("2099-01-31T12:00:00.123456Z", "2099-01-31T12:00:00.123Z"),
    ] {
        let r = c.put_json(&format!("{SBX}/previews/when"), &json!({"port": 3000, "expiresAt": at}));
        assert_eq!(r.status, 200, "{at}: {}", r.text());
        assert_eq!(r.json()["expiresAt"], want, "{at}");
    }
    c.put_json(&format!("{SBX}/previews/when"), &json!({"port": 3000, "expiresAt": "next week"}))
        .assert_error(400, "BAD_REQUEST");
    c.put_json(&format!("{SBX}/previews/when"), &json!({"port": 80})).assert_error(400, "RESERVED_PORT");
    c.put_json(&format!("{SBX}/previews/when"), &json!({"port": 8080})).assert_error(400, "RESERVED_PORT");

    // Tokens: created with the secret, listed without, revoked by name.
    let r =
        post(&gw, &format!("{SBX}/previews/web/tokens"), &json!({"name": "ci", "expiresAt": "2099-01-01T00:00:00Z"}));
    assert_eq!(r.status, 201, "{}", r.text());
    let ci = r.json();
    assert!(ci["token"].as_str().is_some_and(|t| t.starts_with("gwpt_")), "{ci}");
    assert_eq!(ci["expiresAt"], web["expiresAt"], "clamped to the preview's expiry");
    let r = gw.client().request("POST", &format!("{SBX}/previews/web/tokens"), &[], None).expect("POST");
    assert_eq!(r.status, 201, "an empty body is fine: {}", r.text());
    let list = c.get(&format!("{SBX}/previews/web/tokens"));
    assert_eq!(list.status, 200);
    assert!(!list.text().contains("gwpt_"), "no secrets in lists: {}", list.text());
    assert_eq!(list.json()["tokens"].as_array().map(Vec::len), Some(2));
    assert_eq!(c.get(&format!("{SBX}/previews/web/tokens/ci")).json()["expired"], false);
    post(&gw, &format!("{SBX}/previews/web/tokens"), &json!({"name": "ci"})).assert_error(409, "TOKEN_CONFLICT");
    assert_eq!(c.delete(&format!("{SBX}/previews/web/tokens/ci")).status, 204);
    c.delete(&format!("{SBX}/previews/web/tokens/ci")).assert_error(404, "TOKEN_NOT_FOUND");
    post(&gw, &format!("{SBX}/previews/nope/tokens"), &json!({})).assert_error(404, "PREVIEW_NOT_FOUND");
    assert!(!gw.log().contains(ci["token"].as_str().unwrap_or("-")), "secrets are never logged");

    // Sessions: private preview on 443 + one token, 24 h by default.
    let r = post(&gw, &format!("{SBX}/sessions"), &json!({}));
    assert_eq!(r.status, 201, "{}", r.text());
    let s = r.json();
    assert!(s["name"].as_str().is_some_and(|n| n.starts_with("session-")), "{s}");
    assert_eq!(s["preview"]["port"], 443);
    assert_eq!(s["preview"]["public"], false);
    assert_eq!(s["url"], s["preview"]["url"]);
    let left =
        time::until(time::parse_timestamp(s["expiresAt"].as_str().expect("expiresAt")).expect("ts"), time::now());
    assert!(left > Duration::from_secs(23 * 3600) && left <= Duration::from_secs(24 * 3600), "{left:?}");
    assert_eq!(s["preview"]["expiresAt"], s["expiresAt"]);

    // Stable URL across delete and re-create.
    assert_eq!(c.delete(&format!("{SBX}/previews/web")).status, 204);
    c.get(&format!("{SBX}/previews/web")).assert_error(404, "PREVIEW_NOT_FOUND");
    let again = c.put_json(&format!("{SBX}/previews/web"), &json!({"port": 4000}));
    assert_eq!(again.json()["url"], web["url"]);
    assert_eq!(again.json()["tokens"], 0, "tokens died with the preview");

    // Methods.
    let r = gw.client().request("PATCH", &format!("{SBX}/previews/web"), &[], None).expect("PATCH");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, PUT, DELETE"));
}

#[test]
fn the_cli_manages_previews_tokens_and_sessions() {
    let gw = gateway_with_app();
    let admin = gw.admin().config_value();
    let run = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--admin", &admin, "--token", gw.token()]);
        let out = run_gateway(&all);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&[
        "preview",
        "create",
        "web",
        "-w",
        "acme",
        "-s",
        "app",
        "--port",
        "5173",
        "--public",
        "--response-header",
        "Access-Control-Allow-Origin:*",
        "--ttl",
        "1h",
        "-o",
        "json",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["public"], true);
    assert_eq!(v["responseHeaders"], json!({"access-control-allow-origin": "*"}));
    let (code, out, _) = run(&["preview", "list", "-w", "acme", "-s", "app"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("web") && out.contains("5173") && out.contains(v["url"].as_str().unwrap_or("-")), "{out}");
    let (code, out, err) =
        run(&["preview-token", "create", "web", "-w", "acme", "-s", "app", "--name", "ci", "--ttl", "10m"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("gwpt_"), "{out}");
    let (code, out, _) = run(&["preview-token", "list", "web", "-w", "acme", "-s", "app"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("ci") && !out.contains("gwpt_"), "{out}");
    let (code, _, _) = run(&["preview-token", "revoke", "web", "-w", "acme", "-s", "app", "--name", "ci"]);
    assert_eq!(code, Some(0));
    let (code, _, err) = run(&["preview-token", "revoke", "web", "-w", "acme", "-s", "app", "--name", "ci"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("TOKEN_NOT_FOUND"), "{err}");
    let (code, out, err) = run(&["session", "create", "-w", "acme", "-s", "app", "-o", "json"]);
    assert_eq!(code, Some(0), "{err}");
    let s: Value = serde_json::from_str(&out).expect("json");
    assert!(s["token"].as_str().is_some_and(|t| t.starts_with("gwpt_")), "{s}");
    let (code, _, err) = run(&["preview", "create", "bad", "-w", "acme", "-s", "app", "--port", "80"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("RESERVED_PORT"), "{err}");
    let (code, out, _) = run(&["preview", "delete", "web", "-w", "acme", "-s", "app"]);
    assert_eq!((code, out.trim()), (Some(0), "deleted"));
}
