//! Logs of a real gateway: the eBPF programs' aya-log records reach the gateway's log through
//! the `log` → `tracing` bridge (target `gateway_ebpf`), and `--log-format json` writes one JSON
//! object per line, without terminal colours.

use gateway_tests::{env::Env, gateway_process::*, harness::*};
use std::time::{Duration, Instant};

#[test]
fn ebpf_log_records_are_bridged_into_the_gateway_log() {
    let e = Env::new().log_filter("info,gateway_ebpf=debug").sandbox("app", &[(3000, "HTTP")]).start();
    let Env { gw, .. } = &e;
    let sb = e.sb();
    let _app = spawn_tcp_echo(sb, sb.sock(3000));

    // An unmarked SYN is dropped by sandbox_in (hook 0) as not from the gateway (reason 19).
    assert_unreachable(Origin::host(), sb.sock(3000), "unmarked");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = gw.log();
        if log.lines().any(|l| l.contains("gateway_ebpf") && l.contains("drop hook=0 reason=19")) {
            break;
        }
        assert!(Instant::now() < deadline, "no bridged eBPF record in the log:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn json_logs_are_one_object_per_line_without_colours() {
    let mut gw = GatewayProcess::start();
    gw.kill();
    let log_path = gw.dir().join("json.log");
    let log = std::fs::File::create(&log_path).expect("log");
    let mut child = gateway_command()
        .args(["--log-format", "json", "serve", "--config"])
        .arg(gw.config_path())
        .env("GATEWAY_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(20);
    while gw.client().request("GET", "/live", &[], None).is_err() {
        assert!(Instant::now() < deadline, "no answer:\n{}", std::fs::read_to_string(&log_path).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(gw.client().get("/v1/sandboxes").status, 200);
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(&log_path).expect("log");
    let lines: Vec<serde_json::Value> =
        log.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    assert!(lines.iter().any(|v| v["message"] == "ready"), "{log}");
    assert!(lines.iter().any(|v| v["message"] == "admin request" && v["path"] == "/v1/sandboxes"), "{log}");
    assert!(
        lines.iter().all(|v| v["level"].is_string() && v["target"].is_string() && v["timestamp"].is_string()),
        "{log}"
    );
    assert!(!log.contains('\u{1b}'), "no ANSI escapes in a file:\n{log}");
}

/// One access-log line per request through the HTTPS edge, with its id (also sent to the
/// client), workspace, sandbox, port, status, bytes, durations and the token's NAME, never its
/// secret.
#[test]
fn the_edge_writes_an_access_line_per_request_without_secrets() {
    use gateway_tests::edge::*;
    let e = Env::new().sandbox("web", &[(3000, "HTTP")]).token("access-log").start();
    let Env { gw, client, rt, host, bearer, .. } = &e;
    let sb = e.sb();
    let secret = e.token().to_string();
    let _rt = rt.enter();
    let _app = spawn_backend(sb, sb.addr(), 3000, Speaks::Http1);
    let (ok, refused) = rt.block_on(async {
        let ok = client.get(host, "/port/3000/items?bl_preview_token=not-logged", &[("authorization", bearer)]).await;
        let refused = client.get(host, "/port/3000/items", &[]).await;
        (ok, refused)
    });
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(refused.status, 401);
    let id = ok.headers.get("x-request-id").and_then(|v| v.to_str().ok()).expect("x-request-id").to_string();
    let refused_id =
        refused.headers.get("x-request-id").and_then(|v| v.to_str().ok()).expect("x-request-id").to_string();
    assert_ne!(id, refused_id);

    let deadline = Instant::now() + Duration::from_secs(10);
    let (line, refused_line) = loop {
        let log = gw.log();
        let find = |id: &str| {
            log.lines().find(|l| l.contains("gateway::access") && l.contains(&format!("id={id} "))).map(str::to_owned)
        };
        if let (Some(a), Some(b)) = (find(&id), find(&refused_id)) {
            break (a, b);
        }
        assert!(Instant::now() < deadline, "no access line for {id} / {refused_id}:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    };
    for want in [
        "method=GET",
        "route=port",
        "workspace=acme",
        "sandbox=web",
        "port=3000",
        "status=200",
        "token=access-log",
        "complete=true",
    ] {
        assert!(line.contains(want), "{want} missing from {line}");
    }
    assert!(line.contains(&format!("bytes={}", ok.body.len())), "bytes of the body in {line}");
    assert!(line.contains("duration_ms=") && line.contains("ttfb_ms="), "{line}");
    for want in ["status=401", "token=-", "workspace=acme"] {
        assert!(refused_line.contains(want), "{want} missing from {refused_line}");
    }
    let log = gw.log();
    assert!(!log.contains(&secret), "the token's secret is in the log");
    assert!(!log.contains("not-logged"), "the query (which may hold a preview token) is in the log");
}
