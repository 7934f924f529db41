//! `gateway fetch` end to end: the CLI sends requests through the real HTTPS edge (development
//! CA, SNI and Host = the sandbox host, no DNS) to an app in a sandbox's network namespace, with
//! workspace access tokens from the admin API, and reports what the edge refused. The data plane
//! is disabled here (kernel enforcement has its own tests). Also see
//! `edge_routing::gateway_fetch_reaches_an_app_through_the_edge`, and
//! `edge_routing::revoked_and_expired_tokens_stop_working_at_once` for revocation and expiry.
//!
//! Run (root): `GATEWAY_BIN=/path/to/gateway cargo test -p gateway-tests --test fetch_cli -- --test-threads=1`.

use gateway_tests::{
    edge::{Speaks, WS, create_token, spawn_backend},
    env::Env,
    gateway_process::{GatewayProcess, free_port, gateway_command},
};
use serde_json::{Value, json};
use std::process::{Output, Stdio};

/// Runs `gateway fetch ARGS` with this `GATEWAY_TOKEN` (or none).
fn fetch(args: &[&str], env_token: Option<&str>) -> Output {
    let mut cmd = gateway_command();
    cmd.env_remove("GATEWAY_TOKEN").arg("fetch").args(args).stdin(Stdio::null());
    if let Some(token) = env_token {
        cmd.env("GATEWAY_TOKEN", token);
    }
    cmd.output().expect("run gateway fetch")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts exit 0 and returns stdout as JSON (the echo backend's view of the request).
fn echoed(o: &Output) -> Value {
    assert!(o.status.success(), "exit {:?}\nstdout: {}\nstderr: {}", o.status.code(), stdout(o), stderr(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(o)))
}

/// Asserts exit 1 with the gateway's error code on stderr, and its JSON error on stdout.
fn refused(o: &Output, status: u16, code: &str) {
    assert_eq!(o.status.code(), Some(1), "stdout: {}\nstderr: {}", stdout(o), stderr(o));
    assert!(stderr(o).contains(&format!("HTTP {status} {code}")), "stderr: {}", stderr(o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(o)));
    assert_eq!(v["error"]["code"], code, "{v}");
}

/// The header names the app received.
fn header_names(echo: &Value) -> Vec<String> {
    echo["headers"].as_object().map(|h| h.keys().cloned().collect()).unwrap_or_default()
}

#[test]
fn fetch_through_the_edge_like_the_sdk() {
    let e = Env::new().sandbox("web", &[(3000, "HTTP")]).token("fetch").start();
    let Env { gw, rt, .. } = &e;
    let sb = e.sb();
    let _rt = rt.enter();
    let _app = spawn_backend(sb, sb.addr(), 3000, Speaks::Http1);
    let config = gw.config_path().to_str().expect("utf-8").to_string();
    let token = e.token().to_string();
    let target = format!("{WS}/web");

    // GET with --token: the path and query reach the app, credentials do not.
    let echo = echoed(&fetch(&[&target, "3000", "/items?x=1", "--config", &config, "--token", &token], None));
    assert_eq!(echo["port"], 3000);
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["uri"], "/items?x=1");
    let names = header_names(&echo);
    assert!(!names.iter().any(|n| n == "authorization" || n.starts_with("x-blaxel-")), "{names:?}");
    assert!(echo["headers"]["user-agent"][0].as_str().is_some_and(|ua| ua.starts_with("gateway-fetch/")), "{echo}");
    assert!(!stdout(&fetch(&[&target, "3000", "--config", &config, "--token", &token], None)).contains(&token));

    // GATEWAY_TOKEN, --json (POST), --header, -i: over HTTP/2, like the SDK's connection.
    let out = fetch(
        &[&target, "3000", "api", "--config", &config, "--json", r#"{"a": 1}"#, "-H", "X-Trace: 7", "-i"],
        Some(&token),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no head: {text}"));
    assert!(head.starts_with("HTTP/2 200 OK\r\n"), "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");
    let echo: Value = serde_json::from_str(body).expect("json body");
    assert_eq!((echo["method"].as_str(), echo["uri"].as_str()), (Some("POST"), Some("/api")));
    assert_eq!(echo["headers"]["content-type"], json!(["application/json"]));
    assert_eq!(echo["headers"]["x-trace"], json!(["7"]));

    // --gateway and --cacert instead of the configuration's listener and CA.
    let gateway = format!("https://127.0.0.1:{}", gw.https_port());
    let ca = gw.state_dir().join("tls/ca.pem");
    let ca = ca.to_str().expect("utf-8");
    let args = [&target, "3000", "/x", "--config", &config, "--gateway", &gateway, "--cacert", ca];
    assert_eq!(echoed(&fetch(&args, Some(&token)))["uri"], "/x");

    // Refusals: exit 1, the code on stderr, the JSON error on stdout.
    refused(&fetch(&[&target, "3000", "--config", &config], None), 401, "AUTHENTICATION_REQUIRED");
    refused(&fetch(&[&target, "3000", "--config", &config], Some("gw_not-a-token")), 401, "AUTHENTICATION_FAILED");
    refused(&fetch(&[&target, "4000", "--config", &config], Some(&token)), 404, "ROUTE_NOT_FOUND");
    refused(&fetch(&[&target, "8080", "--config", &config], Some(&token)), 403, "FORBIDDEN");
    refused(&fetch(&[&format!("{WS}/ghost"), "3000", "--config", &config], Some(&token)), 404, "WORKLOAD_NOT_FOUND");
    let other = create_token(gw, "other", "fetch");
    refused(&fetch(&[&target, "3000", "--config", &config], Some(&other)), 403, "FORBIDDEN");

    // The secrets never reach the gateway's log.
    let log = gw.log();
    for secret in [&token, &other] {
        assert!(!log.contains(&secret["gw_".len()..]), "a secret is in the gateway log");
    }
}

#[test]
fn fetch_explains_what_failed() {
    let gw = GatewayProcess::start();
    let config = gw.config_path().to_str().expect("utf-8").to_string();
    let target = format!("{WS}/web");
    let failed = |args: &[&str], needles: &[&str]| {
        let mut full = vec![target.as_str(), "3000", "--config", &config];
        full.extend_from_slice(args);
        let out = fetch(&full, Some("gw_x"));
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        for needle in needles {
            assert!(stderr(&out).contains(needle), "{args:?}: {needle:?} not in {}", stderr(&out));
        }
    };
    failed(&["--cacert", "/nonexistent/ca.pem"], &["/nonexistent/ca.pem", "--cacert"]);
    // A CA that does not vouch for the edge's certificate: another gateway's development CA.
    let other = GatewayProcess::start();
    let other_ca = other.state_dir().join("tls/ca.pem");
    failed(&["--cacert", other_ca.to_str().expect("utf-8")], &["TLS handshake", "certificate"]);
    let closed = format!("127.0.0.1:{}", free_port());
    failed(&["--gateway", &closed], &["cannot connect to the gateway at", &closed]);
    failed(&["--gateway", "http://127.0.0.1:1"], &["https"]);
    assert_eq!(fetch(&[&target, "0"], None).status.code(), Some(2));
}
