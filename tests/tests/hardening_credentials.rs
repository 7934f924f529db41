//! Hardening: credentials.
//!
//! - Workspace tokens, preview tokens and the preview cookie never appear in the gateway's log
//!   (captured at `trace`, every target), in `/metrics`, in any error body, or in what the app
//!   receives (a raw backend records every byte: headers and query).
//! - Token verification takes the same time whatever prefix of a valid secret is presented
//!   (statistical test on the gateway's own lookup, see below).
//! - A revoked token (workspace or preview) is refused on the very next request, on the same
//!   keep-alive connection.
//! - The admin API cannot be reached from a sandbox's network namespace.
//!
//! Run: `GATEWAY_BIN=/path/to/gateway cargo test -p gateway-tests --test hardening_credentials -- --test-threads=1`.

use gateway::{
    model::sandbox::AccessToken,
    model::time,
    service::tokens::{TokenRegistry, Verdict, secret},
};
use gateway_tests::{
    edge::*,
    env::Env,
    gateway_process::{GatewayProcess, Response},
    harness::{Origin, Reach, probe},
    raw::*,
};
use http::Method;
use serde_json::{Value, json};
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

const SBX: &str = "/v1/workspaces/acme/sandboxes/web";

fn post(gw: &GatewayProcess, path: &str, body: Value) -> Response {
    let body = serde_json::to_vec(&body).expect("json");
    gw.client().request("POST", path, &[("content-type", "application/json")], Some(&body)).expect("POST")
}

/// A private preview of port 3000 and one of its tokens: (preview host, token name, secret).
fn preview_with_token(gw: &GatewayProcess, name: &str) -> (String, String, String) {
    let r = gw.client().put_json(&format!("{SBX}/previews/{name}"), &json!({"port": 3000}));
    assert_eq!(r.status, 200, "{}", r.text());
    let url = r.json()["url"].as_str().expect("url").to_string();
    let host = url.trim_start_matches("https://").split(':').next().expect("host").to_string();
    let r = post(gw, &format!("{SBX}/previews/{name}/tokens"), json!({"name": "t1"}));
    assert_eq!(r.status, 201, "{}", r.text());
    let v = r.json();
    (host, v["name"].as_str().expect("name").into(), v["token"].as_str().expect("token").into())
}

/// `s` with its last character changed (same length, same prefix).
fn near_miss(s: &str) -> String {
    let mut v: Vec<char> = s.chars().collect();
    let last = v.last_mut().expect("non-empty");
    *last = if *last == 'A' { 'B' } else { 'A' };
    v.into_iter().collect()
}

#[test]
fn secrets_never_reach_logs_metrics_error_bodies_or_apps() {
    let e = Env::new().log_filter("trace").sandbox("web", &[(3000, "HTTP")]).token("leak-check").start();
    let Env { gw, client: c, rt, host, bearer, .. } = &e;
    let sb = e.sb();
    let token = e.token().to_string();
    let _rt = rt.enter();
    let app = spawn_raw_backend(sb, sb.addr(), 3000);
    let api = spawn_raw_backend(sb, sb.addr(), 8080);
    let other_ws = create_token(gw, "other", "leak-check");
    let (preview_host, _, preview) = preview_with_token(gw, "priv");
    // Secrets that must never show up anywhere but in the client's own requests (and, for the
    // preview token, in the one Set-Cookie of the cookie exchange).
    // The admin token too: the admin requests above and below carry it.
    let secrets = [
        token.clone(),
        other_ws.clone(),
        preview.clone(),
        near_miss(&token),
        near_miss(&preview),
        gw.token().to_string(),
    ];
    let mut answers: Vec<(String, String)> = Vec::new();

    rt.block_on(async {
        let record = |answers: &mut Vec<(String, String)>, what: &str, r: Reply| {
            let headers: Vec<String> =
                r.headers.iter().map(|(k, v)| format!("{k}: {}", String::from_utf8_lossy(v.as_bytes()))).collect();
            answers.push((what.to_string(), format!("{} {}\n{}", r.status, headers.join("\n"), r.text())));
            r
        };
        // Accepted, by every carrier, over HTTP/1.1 and HTTP/2, to a port and the sandbox API.
        for (path, header) in [
            ("/port/3000/ok?x=1", "authorization"),
            ("/port/3000/ok?x=1", "x-blaxel-authorization"),
            ("/sandbox-api?x=1", "authorization"),
        ] {
            let r =
                record(&mut answers, path, c.get(host, path, &[(header, bearer), ("x-blaxel-workspace", WS)]).await);
            assert_eq!(r.status, 200, "{}", r.text());
            let mut h2 = c.h2(host).await;
            let req = build_h2(Method::GET, host, path, &[(header, bearer)], empty());
            let r = record(&mut answers, path, read_reply(h2.send_request(req).await.expect("send")).await);
            assert_eq!(r.status, 200, "{}", r.text());
        }
        // Refused: each answer is an error body that must not echo what was presented.
        let refusals: Vec<(&str, Vec<(&str, String)>)> = vec![
            ("near miss", vec![("authorization", format!("Bearer {}", near_miss(&token)))]),
            ("other workspace", vec![("authorization", format!("Bearer {other_ws}"))]),
            ("no scheme", vec![("authorization", token.clone())]),
            ("basic", vec![("authorization", format!("Basic {token}"))]),
            (
                "two tokens",
                vec![("authorization", bearer.clone()), ("x-blaxel-authorization", format!("Bearer {other_ws}"))],
            ),
            ("wrong workspace header", vec![("authorization", bearer.clone()), ("x-blaxel-workspace", "other".into())]),
        ];
        for (what, headers) in &refusals {
            let h: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let r = record(&mut answers, what, c.get(host, "/port/3000/refused", &h).await);
            assert!(r.status == 401 || r.status == 403, "{what}: {}", r.text());
        }
        // A token in the query of a sandbox host is not a credential: forwarded as query text
        // is the app's business, but it must not authenticate.
        let r = record(&mut answers, "query token", c.get(host, &format!("/port/3000/q?token={token}"), &[]).await);
        assert_eq!(r.status, 401);
        // The `/v0` API host.
        let r = record(
            &mut answers,
            "v0 near miss",
            c.get("api.gw.test", "/v0/sandboxes", &[("authorization", &format!("Bearer {}", near_miss(&token)))]).await,
        );
        assert_eq!(r.status, 401, "{}", r.text());
        let r =
            record(&mut answers, "v0 ok", c.get("api.gw.test", "/v0/sandboxes", &[("authorization", bearer)]).await);
        assert_eq!(r.status, 200, "{}", r.text());

        // Preview: header, query, cookie; refusals; the cookie exchange.
        for (path, headers) in [
            ("/p/header".to_string(), vec![("x-blaxel-preview-token", preview.clone())]),
            (format!("/p/query?a=1&bl_preview_token={preview}&b=2"), vec![]),
            ("/p/cookie".to_string(), vec![("cookie", format!("a=1; bl_preview_token={preview}; b=2"))]),
        ] {
            let h: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let r = record(&mut answers, &path, c.get(&preview_host, &path, &h).await);
            assert_eq!(r.status, 200, "{path}: {}", r.text());
        }
        for (path, headers) in [
            ("/p/bad".to_string(), vec![("x-blaxel-preview-token", near_miss(&preview))]),
            (format!("/p/bad?bl_preview_token={}", near_miss(&preview)), vec![]),
            ("/p/bad".to_string(), vec![("cookie", format!("bl_preview_token={}", near_miss(&preview)))]),
            ("/p/ws-token".to_string(), vec![("authorization", bearer.clone())]),
        ] {
            let h: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let r = record(&mut answers, &path, c.get(&preview_host, &path, &h).await);
            assert_eq!(r.status, 401, "{path}: {}", r.text());
        }
        let html = "text/html,*/*;q=0.8";
        let r = c.get(&preview_host, &format!("/p/page?bl_preview_token={preview}"), &[("accept", html)]).await;
        assert_eq!(r.status, 302, "{}", r.text());
        let cookie = r.headers["set-cookie"].to_str().expect("ascii").to_string();
        assert!(cookie.starts_with(&format!("bl_preview_token={preview};")), "{cookie}");
        assert!(!r.headers["location"].to_str().expect("ascii").contains(&preview), "no token in the redirect");
        assert!(!r.text().contains(&preview));
        // Raw HTTP/1.1 that the parser refuses, carrying a token: the 400 does not echo it.
        let bytes = format!("GET /port/3000/x HTTP/1.1\r\nHost: {host}\r\nAuthorization: {bearer}\r\nX Bad: 1\r\n\r\n");
        let got = h1_exchange(c, host, bytes.as_bytes(), 1).await;
        answers.push(("raw 400".into(), got.text()));
        let bytes = format!(
            "GET /port/3000/x HTTP/1.1\r\nHost: {host}\r\nAuthorization: {bearer}\r\nTransfer_Encoding: chunked\r\n\r\n"
        );
        let got = h1_exchange(c, host, bytes.as_bytes(), 1).await;
        assert_eq!(got.statuses(), [400]);
        answers.push(("gateway 400".into(), got.text()));
    });

    // What the apps received: every request arrived, none with a credential the gateway
    // consumed, in a header or in the query.
    let app_bytes = String::from_utf8_lossy(&app.all_bytes()).into_owned();
    let api_bytes = String::from_utf8_lossy(&api.all_bytes()).into_owned();
    assert!(app.lines().len() >= 7 && api.lines().len() >= 2, "{:?} {:?}", app.lines(), api.lines());
    for s in &secrets {
        assert!(!app_bytes.contains(s.as_str()), "a secret reached the app:\n{app_bytes}");
        assert!(!api_bytes.contains(s.as_str()), "a secret reached the sandbox API:\n{api_bytes}");
    }
    assert!(!app_bytes.contains("/q?token="), "a refused request was forwarded");
    for lowered in [app_bytes.to_ascii_lowercase(), api_bytes.to_ascii_lowercase()] {
        for header in ["authorization:", "x-blaxel-authorization:", "x-blaxel-preview-token:", "bl_preview_token"] {
            assert!(!lowered.contains(header), "{header} reached an app:\n{lowered}");
        }
    }
    // Error bodies and answers.
    for (what, answer) in &answers {
        for s in &secrets {
            assert!(!answer.contains(s.as_str()), "{what}: the answer holds a secret:\n{answer}");
        }
    }
    // Metrics.
    let metrics = gw.client().get("/metrics").text();
    assert!(metrics.contains("gateway_"), "metrics answered: {metrics}");
    for s in &secrets {
        assert!(!metrics.contains(s.as_str()), "a secret in /metrics");
    }
    // The log, at trace level for every target.
    std::thread::sleep(Duration::from_millis(300));
    let log = gw.log();
    assert!(log.lines().count() > 100 && log.contains("TRACE"), "trace logging on: {} lines", log.lines().count());
    for s in &secrets {
        if let Some(line) = log.lines().find(|l| l.contains(s.as_str())) {
            panic!("a secret is in the log:\n{line}");
        }
    }
    // The admin API never shows a secret once created; the state on disk holds digests only.
    let listed = gw.client().get(&format!("/v1/workspaces/{WS}/tokens")).text();
    assert!(listed.contains("leak-check") && !listed.contains(&token), "{listed}");
    let mut on_disk = String::new();
    for entry in walk(&gw.state_dir()) {
        on_disk.push_str(&String::from_utf8_lossy(&std::fs::read(&entry).unwrap_or_default()));
    }
    assert!(on_disk.contains("leak-check"), "the token record is on disk");
    assert!(!on_disk.contains(&token) && !on_disk.contains(&other_ws), "a workspace token secret is on disk");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn revoked_tokens_are_refused_on_the_very_next_request() {
    let e = Env::new().sandbox("web", &[(3000, "HTTP")]).start();
    let Env { gw, client: c, rt, host, .. } = &e;
    let sb = e.sb();
    let _rt = rt.enter();
    let app = spawn_raw_backend(sb, sb.addr(), 3000);
    let (preview_host, preview_token_name, preview) = preview_with_token(gw, "priv");

    rt.block_on(async {
        // One keep-alive HTTP/1.1 connection each; revoke between two requests, no pause.
        let mut sandbox_conn = RawH1::connect(c, host).await;
        let mut preview_conn = RawH1::connect(c, &preview_host).await;
        for round in 0..5 {
            let name = format!("r{round}");
            let token = create_token(gw, WS, &name);
            let req =
                format!("GET /port/3000/{round} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\r\n");
            sandbox_conn.received.clear();
            sandbox_conn.send(req.as_bytes()).await;
            sandbox_conn.read(1, Duration::from_millis(1), Duration::from_secs(10)).await;
            assert_eq!(sandbox_conn.exchange().statuses(), [200], "round {round} before");
            assert_eq!(gw.client().delete(&format!("/v1/workspaces/{WS}/tokens/{name}")).status, 204);
            sandbox_conn.received.clear();
            sandbox_conn.send(req.as_bytes()).await;
            sandbox_conn.read(1, Duration::from_millis(1), Duration::from_secs(10)).await;
            assert_eq!(sandbox_conn.exchange().statuses(), [401], "round {round}: revoked token still works");
        }
        let req = format!("GET /p HTTP/1.1\r\nHost: {preview_host}\r\nX-Blaxel-Preview-Token: {preview}\r\n\r\n");
        preview_conn.send(req.as_bytes()).await;
        preview_conn.read(1, Duration::from_millis(1), Duration::from_secs(10)).await;
        assert_eq!(preview_conn.exchange().statuses(), [200]);
        assert_eq!(gw.client().delete(&format!("{SBX}/previews/priv/tokens/{preview_token_name}")).status, 204);
        preview_conn.received.clear();
        preview_conn.send(req.as_bytes()).await;
        preview_conn.read(1, Duration::from_millis(1), Duration::from_secs(10)).await;
        assert_eq!(preview_conn.exchange().statuses(), [401], "revoked preview token still works");
        // Deleting the preview: its host is gone on the next request.
        assert_eq!(gw.client().delete(&format!("{SBX}/previews/priv")).status, 204);
        preview_conn.received.clear();
        preview_conn.send(req.as_bytes()).await;
        preview_conn.read(1, Duration::from_millis(1), Duration::from_secs(10)).await;
        assert_eq!(preview_conn.exchange().statuses(), [404], "deleted preview still served");
    });
    let lines = app.lines();
    assert_eq!(lines.len(), 6, "exactly the accepted requests reached the app: {lines:?}");
}

/// From inside a sandbox's namespace, the admin listener is unreachable: on its loopback
/// address (the sandbox's own loopback), on the host's address of the sandbox link (nothing
/// listens there, or the data plane drops it: `GW_PROTECTED`), and even with the admin bound to
/// 0.0.0.0 (dropped by `sandbox_out` before the host stack sees it).
#[test]
fn the_admin_api_is_unreachable_from_a_sandbox() {
    let mut e = Env::new().sandbox("web", &[(3000, "HTTP")]).start();
    let Env { gw, sandbox, .. } = &mut e;
    let sb = sandbox.as_ref().expect("sandbox");
    let admin: SocketAddr = match gw.admin() {
        gateway_tests::gateway_process::AdminAddr::Tcp(a) => *a,
        other => panic!("TCP admin expected: {other:?}"),
    };
    let unreachable = |to: SocketAddr, what: &str| match probe(Origin::ns(&sb.ns), to, Duration::from_secs(1)) {
        Reach::Connected(_) => panic!("{what}: the admin API at {to} is reachable from the sandbox"),
        Reach::Refused | Reach::TimedOut | Reach::Failed(_) => {}
    };
    unreachable(admin, "admin on 127.0.0.1, sandbox loopback");
    unreachable(SocketAddr::new(sb.link.host_addr().into(), admin.port()), "admin on 127.0.0.1, host link address");

    // An admin listener on every address: reachable from the host, dropped from the sandbox.
    gw.kill();
    let config = std::fs::read_to_string(gw.config_path()).expect("config");
    let wildcard = config
        .replace(&format!("admin = \"{admin}\""), &format!("admin = \"0.0.0.0:{}\"", admin.port()))
        .replace("[admin]\n", "[admin]\nallow_plaintext_remote = true\n");
    assert_ne!(config, wildcard, "admin address rewritten");
    std::fs::write(gw.config_path(), wildcard).expect("write config");
    gw.spawn();
    assert_eq!(gw.client().get("/v1/sandboxes").status, 200, "admin reachable from the host");
    for to in [SocketAddr::new(sb.link.host_addr().into(), admin.port())] {
        match probe(Origin::ns(&sb.ns), to, Duration::from_secs(1)) {
            Reach::TimedOut => {}
            Reach::Connected(_) => panic!("the admin API at {to} (bound to 0.0.0.0) is reachable from the sandbox"),
            other => panic!("expected the SYN to {to} to be dropped by the data plane, got {other:?}"),
        }
    }
    // A sandbox that routes 127.0.0.0/8 towards the host (it controls its own namespace) only
    // sends martians, which the host drops.
    sb.ns.ip(&["addr", "flush", "dev", "lo"]).expect("flush lo");
    sb.ns.ip(&["route", "add", "127.0.0.0/8", "via", &sb.link.host_addr().to_string()]).expect("route");
    unreachable(admin, "admin on 0.0.0.0, 127.0.0.1 routed to the host");
    assert_eq!(gw.client().get("/v1/sandboxes").status, 200);
}

// ---------------------------------------------------------------------------------------------
// Timing

/// Token verification time does not depend on how much of a valid secret the presented one
/// shares. Measured in process on the gateway's own [`TokenRegistry::verify`] (the HTTP path
/// adds TLS, parsing and scheduling noise of tens of microseconds on a shared machine, which
/// would hide any difference; the lookup is the only code that sees the secret). Presented
/// secrets of the same length in two classes, interleaved batch by batch so that drift in
/// machine load hits both alike: sharing 0 characters after `gw_` with a valid secret, and
/// sharing 40 of its 43 (a comparison that stopped at the first differing byte would take
/// longer for these). The registry holds 10,000 tokens.
///
/// Verdict: batches are compared in pairs (one of each class, back to back, so both see the same
/// machine load); the median of the paired relative differences is under 5 %, or a sign test on
/// the pairs does not find one class slower (|z| < 4). A leak must be both material and
/// significant to fail, so load on a 2-core machine, even load that changes during the run,
/// does not; the design (SHA-256 of the presented bytes, bucket by 8 digest bytes, `ct_eq` of
/// the 32-byte digests) is what makes it constant, this test guards against a regression to
/// comparing secrets.
#[test]
fn token_verification_time_does_not_depend_on_the_prefix_matched() {
    let now = time::now();
    let mut tokens = Vec::new();
    let mut valid = String::new();
    for i in 0..10_000 {
        let s = secret::Secret::generate().expect("rng");
        if i == 0 {
            valid = s.expose().to_string();
        }
        tokens.push(AccessToken {
            workspace: "acme".into(),
            name: format!("t{i}"),
            secret_sha256: s.digest(),
            created_at: now,
            expires_at: None,
        });
    }
    let registry = TokenRegistry::load(tokens).expect("registry");
    assert!(matches!(registry.verify(valid.as_bytes(), now), Verdict::Valid(_)));
    let body = &valid[3..];
    // Class A: no shared character after the prefix; class B: 40 shared, the last 3 differ.
    let flip = |c: char| if c == 'x' { 'y' } else { 'x' };
    let a: String = format!("gw_{}", body.chars().map(flip).collect::<String>());
    let b: String = format!("gw_{}{}", &body[..40], body[40..].chars().map(flip).collect::<String>());
    assert_eq!((a.len(), b.len()), (valid.len(), valid.len()));
    for x in [&a, &b] {
        assert!(matches!(registry.verify(x.as_bytes(), now), Verdict::Unknown));
    }

    const BATCHES: usize = 300;
    const PER_BATCH: usize = 200;
    let batch = |s: &str| {
        let start = Instant::now();
        for _ in 0..PER_BATCH {
            std::hint::black_box(registry.verify(std::hint::black_box(s.as_bytes()), now));
        }
        start.elapsed().as_nanos() as f64 / PER_BATCH as f64
    };
    // Warm up.
    for _ in 0..20 {
        batch(&a);
        batch(&b);
    }
    let (mut ta, mut tb) = (Vec::with_capacity(BATCHES), Vec::with_capacity(BATCHES));
    for i in 0..BATCHES {
        // Alternate which class goes first.
        if i % 2 == 0 {
            ta.push(batch(&a));
            tb.push(batch(&b));
        } else {
            tb.push(batch(&b));
            ta.push(batch(&a));
        }
    }
    let (ma, mb) = (median(&ta), median(&tb));
    let paired: Vec<f64> = ta.iter().zip(&tb).map(|(a, b)| (a - b) / a.min(*b)).collect();
    let relative = median(&paired).abs();
    let z = sign_test_z(&paired);
    println!(
        "verify: median {ma:.0} ns (0 shared) vs {mb:.0} ns (40 shared): paired median {:.2} % apart, \
         sign test z = {z:.2}",
        relative * 100.0
    );
    assert!(
        relative < 0.05 || z.abs() < 4.0,
        "verification time depends on the shared prefix: {ma:.0} ns vs {mb:.0} ns ({:.1} %), z = {z:.2}",
        relative * 100.0
    );
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

/// The normal approximation of the sign test on paired differences: how far the count of
/// positive differences is from half of the non-zero ones, in standard deviations.
fn sign_test_z(d: &[f64]) -> f64 {
    let positive = d.iter().filter(|&&x| x > 0.0).count() as f64;
    let n = d.iter().filter(|&&x| x != 0.0).count() as f64;
    if n == 0.0 {
        return 0.0;
    }
    (positive - n / 2.0) / (n / 4.0).sqrt()
}
