//! Admin API end to end: the real `gateway` binary with `dataplane.enabled = false`, sandboxes on
//! the `lo` interface, on 127.0.0.1 ports of their own (tests run in parallel).
//!
//! Run: `GATEWAY_BIN=/path/to/gateway cargo test -p gateway-tests --test admin_api`.

use gateway_tests::gateway_process::{AdminAddr, AdminClient, GatewayProcess, Response, run_gateway, temp_dir};
use serde_json::{Value, json};
use std::{fs, os::unix::fs::PermissionsExt};

const WS: &str = "acme";

fn sandbox_path(ws: &str, name: &str) -> String {
    format!("/v1/workspaces/{ws}/sandboxes/{name}")
}

fn body(address: &str, ports: &[u16]) -> Value {
    json!({
        "address": address,
        "interface": "lo",
        "ports": ports.iter().map(|p| json!({"target": p, "protocol": "HTTP"})).collect::<Vec<_>>(),
    })
}

/// Every sandbox the gateway knows, as JSON.
fn everything(c: &AdminClient) -> Value {
    let r = c.get("/v1/sandboxes");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn message(e: &Value) -> String {
    e["message"].as_str().unwrap_or_default().to_string()
}

#[test]
fn put_get_list_delete_and_idempotence() {
    let gw = GatewayProcess::start();
    let c = gw.client();
    assert_eq!(everything(&c), json!({"sandboxes": []}));

    let r = c.put_json(&sandbox_path(WS, "web"), &body("198.18.0.2", &[5173, 3000]));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["workspace"], WS);
    assert_eq!(v["name"], "web");
    assert_eq!(v["address"], "198.18.0.2");
    assert_eq!(v["interface"], "lo");
    assert_eq!(v["ports"], json!([{"target": 3000, "protocol": "HTTP"}, {"target": 5173, "protocol": "HTTP"}]));
    assert_eq!(v["url"], format!("https://sbx-web-{WS}.local.gw.test:{}", gw.https_port()));
    assert!(v["policyAppliedMicros"].is_u64(), "{v}");

    // GET answers the record without the timing.
    let got = c.get(&sandbox_path(WS, "web"));
    assert_eq!(got.status, 200);
    let mut expected = v.clone();
    expected.as_object_mut().map(|o| o.remove("policyAppliedMicros"));
    assert_eq!(got.json(), expected);

    // Idempotent PUT.
    let again = c.put_json(&sandbox_path(WS, "web"), &body("198.18.0.2", &[3000, 5173]));
    assert_eq!(again.status, 200);
    let mut again = again.json();
    again.as_object_mut().map(|o| o.remove("policyAppliedMicros"));
    assert_eq!(again, expected);
    assert_eq!(everything(&c)["sandboxes"].as_array().map(Vec::len), Some(1));

    // A second PUT replaces the port list; protocols and default protocol.
    let r = c.put_json(
        &sandbox_path(WS, "web"),
        &json!({"address": "198.18.0.2", "interface": "lo", "ports": [{"target": 50051, "protocol": "GRPC"}, {"target": 4000}]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["ports"], json!([{"target": 4000, "protocol": "HTTP"}, {"target": 50051, "protocol": "GRPC"}]));

    // Lists: per workspace and all.
    assert_eq!(c.put_json(&sandbox_path("other", "db"), &body("198.18.0.3", &[])).status, 200);
    let list = c.get(&format!("/v1/workspaces/{WS}/sandboxes")).json();
    let names: Vec<&str> =
        list["sandboxes"].as_array().into_iter().flatten().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(names, vec!["web"]);
    assert_eq!(everything(&c)["sandboxes"].as_array().map(Vec::len), Some(2));
    assert_eq!(c.get("/v1/workspaces/nobody/sandboxes").json(), json!({"sandboxes": []}));

    // DELETE, then 404.
    let r = c.delete(&sandbox_path(WS, "web"));
    assert_eq!(r.status, 204, "{}", r.text());
    assert!(r.body.is_empty());
    c.get(&sandbox_path(WS, "web")).assert_error(404, "WORKLOAD_NOT_FOUND");
    c.delete(&sandbox_path(WS, "web")).assert_error(404, "WORKLOAD_NOT_FOUND");
    c.get(&format!("{}/policy", sandbox_path(WS, "web"))).assert_error(404, "WORKLOAD_NOT_FOUND");
    // The address is free again.
    assert_eq!(c.put_json(&sandbox_path(WS, "web2"), &body("198.18.0.2", &[3000])).status, 200);
}

#[test]
fn refused_requests_change_nothing() {
    let gw = GatewayProcess::start();
    let c = gw.client();
    // Existing state: `a-b` in workspace `c` (label sbx-a-b-c) and `web`.
    assert_eq!(c.put_json(&sandbox_path("c", "a-b"), &body("198.18.0.10", &[3000])).status, 200);
    assert_eq!(c.put_json(&sandbox_path(WS, "web"), &body("198.18.0.11", &[3000, 5173])).status, 200);
    let before = everything(&c);

    let put = |ws: &str, name: &str, b: &Value| c.put_json(&sandbox_path(ws, name), b);
    let check = |what: &str, r: Response, status: u16, code: &str, needle: &str| {
        let e = r.assert_error(status, code);
        assert!(message(&e).contains(needle), "{what}: message {:?} should mention {needle:?}", message(&e));
        assert_eq!(everything(&c), before, "{what} changed the state");
    };

    // Reserved ports, on a new sandbox and on the existing one.
    for port in [80u16, 443, 8080] {
        check("reserved", put(WS, "new", &body("198.18.0.20", &[3000, port])), 400, "RESERVED_PORT", &port.to_string());
        check("reserved", put(WS, "web", &body("198.18.0.11", &[port])), 400, "RESERVED_PORT", &port.to_string());
    }
    // Out of range and duplicates.
    for port in [0i64, 65536, -1, 70000] {
        let b = json!({"address": "198.18.0.20", "interface": "lo", "ports": [{"target": port}]});
        check("range", put(WS, "new", &b), 400, "BAD_REQUEST", &port.to_string());
        check("range", put(WS, "web", &b), 400, "BAD_REQUEST", &port.to_string());
    }
    check("duplicate", put(WS, "web", &body("198.18.0.11", &[3000, 4000, 3000])), 400, "BAD_REQUEST", "3000");
    // Names.
    for (ws, name) in [
        (WS, "Upper"),
        (WS, "-lead"),
        (WS, "trail-"),
        (WS, "under_score"),
        ("Ws", "x"),
        (WS, &"n".repeat(64)),
        (&"w".repeat(30), &"n".repeat(30)),
    ] {
        check("name", put(ws, name, &body("198.18.0.20", &[3000])), 400, "BAD_REQUEST", "");
    }
    // Interface.
    let b = json!({"address": "198.18.0.20", "interface": "gwnope0", "ports": []});
    check("interface", put(WS, "new", &b), 400, "UNKNOWN_INTERFACE", "gwnope0");
    let b = json!({"address": "198.18.0.11", "interface": "gwnope0", "ports": [{"target": 3000}]});
    check("interface", put(WS, "web", &b), 400, "UNKNOWN_INTERFACE", "gwnope0");
    // Address clash.
    check("address", put(WS, "new", &body("198.18.0.10", &[3000])), 409, "ADDRESS_CONFLICT", "198.18.0.10");
    check("address", put(WS, "web", &body("198.18.0.10", &[3000])), 409, "ADDRESS_CONFLICT", "198.18.0.10");
    // Label clash: name `a`, workspace `b-c` is sbx-a-b-c too.
    check("label", put("b-c", "a", &body("198.18.0.21", &[3000])), 409, "LABEL_CONFLICT", "sbx-a-b-c");
    // Bad addresses.
    for addr in ["0.0.0.0", "255.255.255.255", "127.0.0.1", "224.0.0.1"] {
        check("address", put(WS, "new", &body(addr, &[3000])), 400, "BAD_REQUEST", addr);
    }
    // Malformed JSON, unknown fields, missing and mistyped fields.
    let raw = |b: &[u8]| c.put_raw(&sandbox_path(WS, "web"), b);
    check("malformed", raw(b"{\"address\": "), 400, "BAD_REQUEST", "EOF");
    check("malformed", raw(b"not json"), 400, "BAD_REQUEST", "line 1");
    check("empty", raw(b""), 400, "BAD_REQUEST", "EOF");
    check(
        "unknown field",
        raw(br#"{"address":"198.18.0.11","interface":"lo","ports":[],"color":"red"}"#),
        400,
        "BAD_REQUEST",
        "color",
    );
    check(
        "unknown port field",
        raw(br#"{"address":"198.18.0.11","interface":"lo","ports":[{"target":3000,"public":true}]}"#),
        400,
        "BAD_REQUEST",
        "public",
    );
    check("missing", raw(br#"{"interface":"lo"}"#), 400, "BAD_REQUEST", "address");
    check("bad address", raw(br#"{"address":"198.18.0","interface":"lo"}"#), 400, "BAD_REQUEST", "");
    check(
        "bad protocol",
        raw(br#"{"address":"198.18.0.11","interface":"lo","ports":[{"target":3000,"protocol":"SMTP"}]}"#),
        400,
        "BAD_REQUEST",
        "SMTP",
    );
    check(
        "float port",
        raw(br#"{"address":"198.18.0.11","interface":"lo","ports":[{"target":3000.5}]}"#),
        400,
        "BAD_REQUEST",
        "",
    );

    // Body too large: declared, and actually sent.
    let big = vec![b' '; 1024 * 1024 + 1];
    check("too large", raw(&big), 413, "REQUEST_ENTITY_TOO_LARGE", "");
    let r = c
        .exchange(
            format!(
                "PUT {} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 5000000\r\nConnection: close\r\n\r\n",
                sandbox_path(WS, "web"),
                gw.token()
            )
            .as_bytes(),
        )
        .expect("exchange");
    check("too large (declared)", r, 413, "REQUEST_ENTITY_TOO_LARGE", "");
    let mut chunked = format!(
        "PUT {} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        sandbox_path(WS, "web"),
        gw.token()
    )
    .into_bytes();
    chunked.extend_from_slice(format!("{:x}\r\n", big.len()).as_bytes());
    chunked.extend_from_slice(&big);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    check("too large (chunked)", c.exchange(&chunked).expect("exchange"), 413, "REQUEST_ENTITY_TOO_LARGE", "");

    // Authentication.
    let anon = gw.anonymous_client();
    let e = anon
        .put_json(&sandbox_path(WS, "new"), &body("198.18.0.20", &[3000]))
        .assert_error(401, "AUTHENTICATION_REQUIRED");
    assert!(!message(&e).contains(gw.token()));
    anon.get("/v1/sandboxes").assert_error(401, "AUTHENTICATION_REQUIRED");
    anon.get("/no/such/route").assert_error(401, "AUTHENTICATION_REQUIRED");
    let wrong = AdminClient::new(gw.admin().clone(), Some("wrong-token".into()));
    wrong.put_json(&sandbox_path(WS, "new"), &body("198.18.0.20", &[3000])).assert_error(401, "AUTHENTICATION_FAILED");
    wrong.delete(&sandbox_path(WS, "web")).assert_error(401, "AUTHENTICATION_FAILED");
    let prefix = AdminClient::new(gw.admin().clone(), Some(format!("{}x", gw.token())));
    prefix.get("/v1/sandboxes").assert_error(401, "AUTHENTICATION_FAILED");
    let r = anon
        .request("GET", "/v1/sandboxes", &[("authorization", &format!("Basic {}", gw.token()))], None)
        .expect("basic");
    r.assert_error(401, "AUTHENTICATION_FAILED");
    let r = anon
        .request("GET", "/v1/sandboxes", &[("authorization", &format!("bearer {}", gw.token()))], None)
        .expect("lower");
    assert_eq!(r.status, 200, "the scheme is case-insensitive");
    assert_eq!(everything(&c), before);

    // Routes and methods.
    check("route", c.get("/v2/sandboxes"), 404, "ROUTE_NOT_FOUND", "/v2/sandboxes");
    check("route", c.get(&format!("{}/nope", sandbox_path(WS, "web"))), 404, "ROUTE_NOT_FOUND", "");
    let r = c.request("POST", &sandbox_path(WS, "web"), &[], Some(b"{}")).expect("post");
    assert_eq!(r.header("allow"), Some("GET, PUT, DELETE"));
    check("method", r, 405, "METHOD_NOT_ALLOWED", "POST");
    check("method", c.delete("/v1/sandboxes"), 405, "METHOD_NOT_ALLOWED", "DELETE");
    check(
        "method",
        c.request("PUT", "/v1/workspaces/acme/sandboxes/web/policy", &[], Some(b"{}")).expect("put"),
        405,
        "METHOD_NOT_ALLOWED",
        "",
    );
    // Unknown sandboxes.
    check("unknown", c.get(&sandbox_path(WS, "ghost")), 404, "WORKLOAD_NOT_FOUND", "ghost");
    check("unknown", c.delete(&sandbox_path(WS, "ghost")), 404, "WORKLOAD_NOT_FOUND", "ghost");
    // The data plane is disabled: the kernel view is unavailable, and says why.
    let e = c.get(&format!("{}/policy", sandbox_path(WS, "web"))).assert_error(503, "DATAPLANE_DISABLED");
    assert!(message(&e).contains("disabled"));

    assert_eq!(everything(&c), before);
}

#[test]
fn probes_need_no_token() {
    let gw = GatewayProcess::start();
    let anon = gw.anonymous_client();
    let r = anon.get("/live");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "live");
    let r = anon.get("/ready");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "ready");
}

#[test]
fn state_survives_kill_and_restart() {
    let mut gw = GatewayProcess::start();
    let c = gw.client();
    for (i, name) in ["one", "two", "three"].iter().enumerate() {
        let r = c.put_json(&sandbox_path(WS, name), &body(&format!("198.18.1.{}", i + 1), &[3000 + i as u16]));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(c.delete(&sandbox_path(WS, "two")).status, 204);
    let r = c.put_json(&sandbox_path(WS, "three"), &body("198.18.1.30", &[4000, 4001]));
    assert_eq!(r.status, 200);
    let before = everything(&c);

    // SIGKILL right after the answers: acknowledged means durable.
    gw.restart();
    assert_eq!(everything(&gw.client()), before);
    gw.client().get(&sandbox_path(WS, "two")).assert_error(404, "WORKLOAD_NOT_FOUND");
    // The reloaded index still refuses clashes.
    let e = gw
        .client()
        .put_json(&sandbox_path(WS, "four"), &body("198.18.1.30", &[]))
        .assert_error(409, "ADDRESS_CONFLICT");
    assert!(message(&e).contains("three"));

    // A clean stop (SIGTERM) exits 0 and keeps the state too.
    let status = gw.stop().expect("was running");
    assert!(status.success(), "SIGTERM exit: {status}; log:\n{}", gw.log());
    gw.spawn();
    assert_eq!(everything(&gw.client()), before);
}

#[test]
fn unreadable_state_stops_the_start() {
    let mut gw = GatewayProcess::start();
    assert_eq!(gw.client().put_json(&sandbox_path(WS, "one"), &body("198.18.2.1", &[3000])).status, 200);
    gw.kill();
    let bad = gw.state_dir().join("sandboxes").join("acme.broken.json");
    fs::write(&bad, b"{ not json").expect("write");
    let (status, log) = gw.spawn_expect_exit();
    assert!(!status.success(), "must not start on unreadable state; log:\n{log}");
    assert!(log.contains("acme.broken.json"), "the error names the file:\n{log}");
    // Fixed: it starts again, with its state.
    fs::remove_file(&bad).expect("remove");
    gw.spawn();
    assert_eq!(everything(&gw.client())["sandboxes"][0]["name"], "one");
}

#[test]
fn second_gateway_on_the_same_state_is_refused() {
    let gw = GatewayProcess::start();
    let dir = temp_dir("gateway-admin-test-second");
    let config = dir.path().join("gateway.toml");
    let port = gateway_tests::gateway_process::free_port();
    let text = gateway_tests::gateway_process::test_config(
        &AdminAddr::Tcp(([127, 0, 0, 1], port).into()),
        gateway_tests::gateway_process::free_port(),
        &gw.state_dir(),
        gateway_tests::gateway_process::TEST_TOKEN,
    );
    fs::write(&config, text).expect("write");
    let out = gateway_tests::gateway_process::gateway_command()
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("locked"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn unix_socket_admin() {
    let gw = GatewayProcess::start_unix();
    let AdminAddr::Unix(path) = gw.admin().clone() else { panic!("unix") };
    let mode = fs::metadata(&path).expect("socket").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");
    // No token on a unix socket: file permissions control access.
    let anon = gw.anonymous_client();
    let r = anon.put_json(&sandbox_path(WS, "web"), &body("198.18.3.1", &[3000]));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(anon.get(&sandbox_path(WS, "web")).json()["address"], "198.18.3.1");
    // The CLI reaches it too.
    let admin = format!("unix:{}", path.display());
    let out = run_gateway(&["sandbox", "list", "--admin", &admin, "--output", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["sandboxes"][0]["name"], "web");
}

#[test]
fn cli_clients() {
    let gw = GatewayProcess::start();
    let AdminAddr::Tcp(addr) = gw.admin().clone() else { panic!("tcp") };
    let admin = addr.to_string();
    let run = |args: &[&str]| gw.cli("sandbox", args);
    let out = run(&[
        "create",
        "web",
        "-w",
        WS,
        "--address",
        "198.18.4.1",
        "--interface",
        "lo",
        "--port",
        "3000",
        "--port",
        "50051/grpc",
        "-o",
        "json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["ports"], json!([{"target": 3000, "protocol": "HTTP"}, {"target": 50051, "protocol": "GRPC"}]));

    let out = run(&["list"]);
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("WORKSPACE"), "{table}");
    assert!(table.contains("198.18.4.1") && table.contains("3000,50051/GRPC"), "{table}");

    let out = run(&["get", "web", "-w", WS]);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains(&format!("https://sbx-web-{WS}.local.gw.test:{}", gw.https_port()))
    );

    // Errors: exit 1 and the API's code on stderr.
    let out = run(&["create", "bad", "-w", WS, "--address", "198.18.4.2", "--interface", "lo", "--port", "8080"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("RESERVED_PORT"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run(&["policy", "web", "-w", WS]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("DATAPLANE_DISABLED"));

    // Token from --config.
    let out = run_gateway(&[
        "sandbox",
        "get",
        "web",
        "-w",
        WS,
        "--config",
        gw.config_path().to_str().expect("utf-8"),
        "-o",
        "json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Wrong token.
    let out = run_gateway(&["sandbox", "list", "--admin", &admin, "--token", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("AUTHENTICATION_FAILED"));

    let out = run(&["delete", "web", "-w", WS]);
    assert!(out.status.success());
    let out = run(&["get", "web", "-w", WS]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("WORKLOAD_NOT_FOUND"));
}

#[test]
fn check_config_lists_every_problem() {
    let dir = temp_dir("gateway-check-config");
    let file = dir.path().join("bad.toml");
    fs::write(
        &file,
        r#"domain = "Not A Domain"
region = "eu.west"
colour = "blue"
[listen]
admin = "localhost"
https = "0.0.0.0:0"
[admin]
token = ""
[state]
dir = ""
[dataplane]
mark = 0
xdp_mode = "turbo"
bpffs = "relative/dir"
"#,
    )
    .expect("write");
    let f = file.to_str().expect("utf-8");
    let out = run_gateway(&["check-config", "--config", f]);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for key in [
        "domain",
        "region",
        "colour",
        "listen.admin",
        "listen.https",
        "state.dir",
        "dataplane.mark",
        "dataplane.xdp_mode",
        "dataplane.bpffs",
    ] {
        assert!(
            stderr.lines().any(|l| l.starts_with(&format!("{f}: {key}: "))),
            "no `{f}: {key}: …` line in:\n{stderr}"
        );
    }
    assert!(stderr.lines().count() >= 9);

    // An empty token on a TCP admin listener.
    fs::write(&file, "[listen]\nadmin = \"127.0.0.1:9901\"\n[admin]\ntoken = \"\"\n").expect("write");
    let out = run_gateway(&["check-config", "--config", f]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("{f}: admin.token: ")));

    // `serve` refuses it with 64 too, before binding anything.
    let port = gateway_tests::gateway_process::free_port();
    fs::write(&file, format!("[listen]\nadmin = \"127.0.0.1:{port}\"\n[dataplane]\nmark = 0\n")).expect("write");
    let out = run_gateway(&["serve", "--config", f]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("dataplane.mark"));

    // A missing file and a syntax error.
    let out = run_gateway(&["check-config", "--config", "/nonexistent/gateway.toml"]);
    assert_eq!(out.status.code(), Some(64));
    fs::write(&file, "[listen\nadmin = 1\n").expect("write");
    let out = run_gateway(&["check-config", "--config", f]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 1"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `[fleet]`: `check-config` checks the section (and names each bad key); `serve` cannot start
/// a fleet member whose etcd it cannot reach (and has no replica to serve from yet): it exits
/// 1 naming etcd's endpoints.
#[test]
fn the_fleet_section_is_checked_and_serve_needs_its_etcd() {
    let dir = temp_dir("gateway-check-config");
    let file = dir.path().join("fleet.toml");
    let f = file.to_str().expect("utf-8");
    let (port, etcd_port) = (gateway_tests::gateway_process::free_port(), gateway_tests::gateway_process::free_port());
    let fleet = format!(
        "[listen]\nadmin = \"unix:{}\"\n[state]\ndir = \"{}\"\n[dataplane]\nenabled = false\n[fleet]\netcd = [\"http://127.0.0.1:{etcd_port}\"]\nhost = \"host-a\"\nlisten = \"127.0.0.1:{port}\"\nca = \"/f/ca.pem\"\ncert = \"/f/host.pem\"\nkey = \"/f/host.key\"\n",
        dir.path().join("admin.sock").display(),
        dir.path().join("state").display()
    );
    fs::write(&file, &fleet).expect("write");
    let out = run_gateway(&["check-config", "--config", f]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = run_gateway(&["serve", "--config", f]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("etcd (http://127.0.0.1:{etcd_port})")), "{stderr}");

    fs::write(&file, "[fleet]\netcd = [\"10.0.0.1:2379\"]\nhost = \"-a\"\n").expect("write");
    let out = run_gateway(&["check-config", "--config", f]);
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for key in ["fleet.etcd[0]", "fleet.host", "fleet.listen", "fleet.ca", "fleet.cert", "fleet.key"] {
        assert!(stderr.lines().any(|l| l.starts_with(&format!("{f}: {key}: "))), "no `{key}` line in:\n{stderr}");
    }
}

#[test]
fn unknown_keys_are_rejected() {
    let dir = temp_dir("gateway-check-config");
    let file = dir.path().join("unknown.toml");
    let f = file.to_str().expect("utf-8");
    for (text, key) in [
        ("domian = \"gw.test\"\n", "domian"),
        ("[listen]\nadmn = \"127.0.0.1:1\"\n", "listen.admn"),
        ("[dataplane]\nenabled = true\nturbo = 1\n", "dataplane.turbo"),
        ("[metrics]\nlisten = \"x\"\n", "metrics"),
    ] {
        fs::write(&file, text).expect("write");
        let out = run_gateway(&["check-config", "--config", f]);
        assert_eq!(out.status.code(), Some(64), "{text}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&format!("{f}: {key}: unknown key")), "{text}: {stderr}");
    }
}

#[test]
fn default_config_passes_check_config() {
    let out = run_gateway(&["print-default-config"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("utf-8");
    // The contract keys are all there, commented.
    for key in [
        "domain = ",
        "region = ",
        "admin = ",
        "https = ",
        "token = ",
        "dir = ",
        "enabled = ",
        "mark = 0x6777",
        "bpffs = ",
        "public_interface = ",
        "xdp_mode = ",
        "extra_public_ports = ",
    ] {
        assert!(text.contains(key), "{key} missing");
    }
    assert!(text.lines().filter(|l| l.starts_with('#')).count() >= 12);
    let dir = temp_dir("gateway-default-config");
    let file = dir.path().join("default.toml");
    fs::write(&file, &text).expect("write");
    let out = run_gateway(&["check-config", "--config", file.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
