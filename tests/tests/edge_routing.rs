//! The HTTPS edge end to end, routing and hosts: the real `gateway` binary with the data plane
//! enabled (its own bpffs pins), HTTPS on a free 127.0.0.1 port through real TLS (the
//! generated development CA, or a CA made here with rcgen), sandboxes in network namespaces.
//!
//! Run: `GATEWAY_BIN=/path/to/gateway cargo test -p gateway-tests --test edge_routing -- --test-threads=1`.

use gateway_tests::{edge::*, env::Env, harness::Sandbox};
use http::Method;
use std::fs;

#[test]
fn routing_answers_every_case_with_its_status_and_code() {
    let e = Env::new().sandbox("web", &[(3000, "HTTP"), (5173, "HTTP")]).start();
    let Env { gw, client: c, rt, host, .. } = &e;
    let sb = e.sb();
    let _rt = rt.enter();
    let app = spawn_backend(sb, sb.addr(), 3000, Speaks::Http1);
    let api = spawn_backend(sb, sb.addr(), 8080, Speaks::Http1);

    rt.block_on(async {
        // Answered before authentication: they reveal nothing about the sandbox.
        for (path, status, code) in [
            ("/port/08080", 400, "BAD_REQUEST"),
            ("/port/03000/", 400, "BAD_REQUEST"),
            ("/port/+3000", 400, "BAD_REQUEST"),
            ("/port/-3000", 400, "BAD_REQUEST"),
            ("/port/65536", 400, "BAD_REQUEST"),
            ("/port/0", 400, "BAD_REQUEST"),
            ("/port/", 400, "BAD_REQUEST"),
            ("/port/3000%2F..", 400, "BAD_REQUEST"),
            ("/port/%33000/x", 400, "BAD_REQUEST"),
            ("/port/80", 403, "FORBIDDEN"),
            ("/port/443/x", 403, "FORBIDDEN"),
            ("/port/8080/x?y", 403, "FORBIDDEN"),
        ] {
            let r = c.get(host, path, &[]).await;
            let message = r.assert_error(status, code);
            if status == 403 {
                assert!(message.contains("reserved"), "{path}: {message}");
            }
        }
        c.get(&sandbox_host("nope"), "/", &[]).await.assert_error(404, "WORKLOAD_NOT_FOUND");
        c.get(&sandbox_host("web-other"), "/port/3000", &[]).await.assert_error(404, "WORKLOAD_NOT_FOUND");
        c.get("api.gw.test", "/v0/sandboxes", &[]).await.assert_error(401, "AUTHENTICATION_REQUIRED");
        c.get("abc.local.preview.gw.test", "/", &[]).await.assert_error(404, "ROUTE_NOT_FOUND");
        // A valid route without a token: 401, and the app never sees it.
        c.get(host, "/port/3000/", &[]).await.assert_error(401, "AUTHENTICATION_REQUIRED");
        c.get(host, "/", &[]).await.assert_error(401, "AUTHENTICATION_REQUIRED");
        c.get(host, "/port/3000/", &[("authorization", "Bearer gw_not-a-token")])
            .await
            .assert_error(401, "AUTHENTICATION_FAILED");
    });
    assert_eq!(app.requests.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(api.requests.load(std::sync::atomic::Ordering::SeqCst), 0);

    let bearer = format!("Bearer {}", create_token(gw, WS, "routing"));
    let auth = [("authorization", bearer.as_str())];
    rt.block_on(async {
        for (path, port, seen) in [
            ("/port/3000/a/b?x=1&y", 3000, "/a/b?x=1&y"),
            ("/port/3000", 3000, "/"),
            ("/port/3000?q=1", 3000, "/?q=1"),
            ("/port/5173//double", 5173, "//double"),
            ("/port/3000/../8080", 3000, "/../8080"),
            ("/", 8080, "/"),
            ("/filesystem/tmp?x=1", 8080, "/filesystem/tmp?x=1"),
            ("/port%2F3000/x", 8080, "/port%2F3000/x"),
            ("/PORT/3000", 8080, "/PORT/3000"),
        ] {
            if port == 5173 {
                continue; // declared, nothing listening: see edge_proxy's 502 cases
            }
            let r = c.get(host, path, &auth).await;
            assert_eq!(r.status, 200, "{path}: {}", r.text());
            let v = r.json();
            assert_eq!(v["port"], port, "{path}: {v}");
            assert_eq!(v["uri"], seen, "{path}: {v}");
        }
        let message = c.get(host, "/port/3001/x", &auth).await.assert_error(404, "ROUTE_NOT_FOUND");
        assert!(message.contains("3000, 5173"), "{message}");
    });
    // A valid token of another workspace is forbidden here.
    let other = format!("Bearer {}", create_token(gw, "other", "routing"));
    rt.block_on(async {
        c.get(host, "/port/3000/", &[("authorization", &other)]).await.assert_error(403, "FORBIDDEN");
    });
}

#[test]
fn hosts_are_normalised_and_checked_against_the_certificate() {
    let e = Env::new().sandbox("web", &[(3000, "HTTP")]).start();
    let Env { gw, client: c, rt, host, .. } = &e;
    let sb = e.sb();
    let _rt = rt.enter();
    let _app = spawn_backend(sb, sb.addr(), 3000, Speaks::Http1);
    let variants = [
        host.to_ascii_uppercase(),
        format!("{host}."),
        format!("{host}:{}", gw.https_port()),
        format!("Sbx-Web-Acme.Local.Gw.Test.:{}", gw.https_port()),
    ];

    rt.block_on(async {
        // Found (401 = routed to the sandbox, token missing), whatever the spelling.
        for h in &variants {
            c.get(h, "/port/3000/", &[]).await.assert_error(401, "AUTHENTICATION_REQUIRED");
        }
        // SNI any.local.gw.test: Hosts covered by the certificate are served, others are 421.
        let mut conn = c.h1("any.local.gw.test").await;
        for (h, status, code) in [
            (host.as_str(), 401, "AUTHENTICATION_REQUIRED"),
            ("evil.test", 421, "MISDIRECTED_REQUEST"),
            ("sbx-web-acme.other.test", 421, "MISDIRECTED_REQUEST"),
            ("a.sbx-web-acme.local.gw.test", 421, "MISDIRECTED_REQUEST"),
            ("local.gw.test", 421, "MISDIRECTED_REQUEST"),
            ("127.0.0.1", 421, "MISDIRECTED_REQUEST"),
            ("api.gw.test", 401, "AUTHENTICATION_REQUIRED"),
        ] {
            send1(&mut conn, build(Method::GET, h, "/port/3000/", &[], empty())).await.assert_error(status, code);
        }
        // Bad Host syntax.
        send1(&mut conn, build(Method::GET, "a b", "/", &[], empty())).await.assert_error(400, "BAD_REQUEST");
    });

    let bearer = format!("Bearer {}", create_token(gw, WS, "hosts"));
    rt.block_on(async {
        for h in &variants {
            let r = c.get(h, "/port/3000/", &[("authorization", &bearer)]).await;
            assert_eq!(r.status, 200, "{h}: {}", r.text());
            // Forwarded as the client sent it (host_header = "preserve").
            assert_eq!(r.json()["headers"]["host"][0], h.as_str(), "{h}");
        }
    });
}

#[test]
fn one_h2_connection_with_sni_any_serves_many_sandboxes() {
    let e = Env::new().sandbox("web", &[(3000, "HTTP")]).token("sdk").start();
    let Env { gw, client: c, rt, bearer, .. } = &e;
    let web = e.sb();
    let _rt = rt.enter();
    let db = Sandbox::new();
    register(gw, WS, "db", &db, &[(3000, "HTTP")]);
    let web_app = spawn_backend(web, web.addr(), 3000, Speaks::Http1);
    let db_app = spawn_backend(&db, db.addr(), 3000, Speaks::Http1);

    rt.block_on(async {
        let mut h2 = c.h2("any.local.gw.test").await;
        for round in 0..3 {
            for name in ["web", "db"] {
                let headers = [("x-blaxel-authorization", bearer.as_str()), ("x-blaxel-workspace", WS)];
                let req = build_h2(
                    Method::GET,
                    &sandbox_host(name),
                    &format!("/port/3000/{name}/{round}"),
                    &headers,
                    empty(),
                );
                let r = read_reply(h2.send_request(req).await.expect("send")).await;
                assert_eq!(r.status, 200, "{name}: {}", r.text());
                let v = r.json();
                assert_eq!(v["uri"], format!("/{name}/{round}"));
                assert_eq!(v["headers"]["host"][0], sandbox_host(name), "{v}");
                assert_eq!(v["headers"]["x-forwarded-host"][0], sandbox_host(name), "{v}");
                assert!(v["headers"].get("x-blaxel-authorization").is_none(), "{v}");
                assert!(v["headers"].get("x-blaxel-workspace").is_none(), "{v}");
            }
        }
        // Concurrent streams on the same connection.
        let mut tasks = Vec::new();
        for i in 0..20 {
            let mut sender = h2.clone();
            let name = if i % 2 == 0 { "web" } else { "db" };
            let req = build_h2(Method::GET, &sandbox_host(name), "/port/3000/", &[("authorization", bearer)], empty());
            tasks.push(tokio::spawn(
                async move { read_reply(sender.send_request(req).await.expect("send")).await.status },
            ));
        }
        for t in tasks {
            assert_eq!(t.await.expect("task"), 200);
        }
        // A host outside the certificate on the same connection: 421.
        let req = build_h2(Method::GET, "evil.test", "/", &[("authorization", bearer)], empty());
        read_reply(h2.send_request(req).await.expect("send")).await.assert_error(421, "MISDIRECTED_REQUEST");
    });
    assert_eq!(web_app.requests.load(std::sync::atomic::Ordering::SeqCst), 13);
    assert_eq!(db_app.requests.load(std::sync::atomic::Ordering::SeqCst), 13);
}

#[test]
fn the_app_sees_forwarding_headers_and_no_credentials() {
    let e = Env::new().sandbox("web", &[(3000, "HTTP")]).token("headers").start();
    let Env { client: c, rt, host, bearer, .. } = &e;
    let sb = e.sb();
    let token = e.token().to_string();
    let _rt = rt.enter();
    let _app = spawn_backend(sb, sb.addr(), 3000, Speaks::Http1);
    let _api = spawn_backend(sb, sb.addr(), 8080, Speaks::Http1);

    rt.block_on(async {
        for (path, credential) in [
            ("/port/3000/h", ("authorization", bearer.as_str())),
            ("/port/3000/h", ("x-blaxel-authorization", bearer.as_str())),
            ("/sandbox-api", ("authorization", bearer.as_str())),
        ] {
            let r = c
                .get(
                    host,
                    path,
                    &[
                        credential,
                        ("x-blaxel-workspace", WS),
                        ("x-blaxel-anything", "secret-ish"),
                        ("x-forwarded-for", "6.6.6.6"),
                        ("x-forwarded-proto", "http"),
                        ("x-forwarded-host", "evil.test"),
                        ("forwarded", "for=6.6.6.6;host=evil.test"),
                        ("connection", "keep-alive, x-hop"),
                        ("x-hop", "1"),
                        ("keep-alive", "timeout=5"),
                        ("proxy-authorization", "Basic Zm9vOmJhcg=="),
                        ("cookie", "a=1"),
                        ("x-custom", "kept"),
                    ],
                )
                .await;
            assert_eq!(r.status, 200, "{}", r.text());
            let v = r.json();
            let h = &v["headers"];
            for gone in [
                "authorization",
                "x-blaxel-authorization",
                "x-blaxel-workspace",
                "x-blaxel-anything",
                "x-hop",
                "keep-alive",
                "proxy-authorization",
            ] {
                assert!(h.get(gone).is_none(), "{gone} reached the app: {v}");
            }
            let text = v.to_string();
            assert!(!text.contains(&token), "the token reached the app: {v}");
            assert_eq!(h["x-forwarded-for"], serde_json::json!(["127.0.0.1"]), "{v}");
            assert_eq!(h["x-forwarded-proto"], serde_json::json!(["https"]), "{v}");
            assert_eq!(h["x-forwarded-host"], serde_json::json!([host.clone()]), "{v}");
            assert_eq!(
                h["forwarded"],
                serde_json::json!([format!("for=127.0.0.1;proto=https;host=\"{host}\"")]),
                "{v}"
            );
            assert_eq!(h["host"], serde_json::json!([host.clone()]), "{v}");
            assert_eq!(h["cookie"], serde_json::json!(["a=1"]), "{v}");
            assert_eq!(h["x-custom"], serde_json::json!(["kept"]), "{v}");
        }
    });
}

#[test]
fn trusted_proxies_and_the_localhost_host_policy() {
    let e = Env::new()
        .config("[proxy]\nhost_header = \"localhost\"\ntrusted_proxies = [\"127.0.0.0/8\"]\n")
        .sandbox("web", &[(3000, "HTTP")])
        .token("proxies")
        .start();
    let Env { client: c, rt, host, bearer, .. } = &e;
    let sb = e.sb();
    let _rt = rt.enter();
    let _app = spawn_backend(sb, sb.addr(), 3000, Speaks::Http1);

    rt.block_on(async {
        let r = c
            .get(
                host,
                "/port/3000/",
                &[
                    ("authorization", bearer),
                    ("x-forwarded-for", "203.0.113.7"),
                    ("x-forwarded-proto", "https"),
                    ("x-forwarded-host", "public.example"),
                ],
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        let h = &v["headers"];
        assert_eq!(h["host"], serde_json::json!(["localhost:3000"]), "{v}");
        assert_eq!(h["x-forwarded-for"], serde_json::json!(["203.0.113.7, 127.0.0.1"]), "{v}");
        assert_eq!(h["x-forwarded-host"], serde_json::json!(["public.example"]), "{v}");
        // The same Host policy for WebSocket upgrades.
        let mut conn = c.h1(host).await;
        let response = conn.send_request(websocket_upgrade(host, "/port/3000/ws", bearer)).await.expect("send");
        assert_eq!(response.status(), 101);
        assert_eq!(response.headers()["x-seen-host"], "localhost:3000");
    });
}

#[test]
fn the_development_ca_is_generated_once_and_reused() {
    let mut e = Env::new().start();
    let Env { gw, client: c, rt, .. } = &mut e;
    let _rt = rt.enter();
    let ca = fs::read(gw.dev_ca_path()).expect("ca.pem generated");
    let cert = fs::read(gw.state_dir().join("tls/cert.pem")).expect("cert.pem generated");
    let key_mode = std::os::unix::fs::PermissionsExt::mode(
        &fs::metadata(gw.state_dir().join("tls/key.pem")).expect("key.pem").permissions(),
    );
    assert_eq!(key_mode & 0o077, 0, "key.pem is private");
    gw.restart();
    assert_eq!(fs::read(gw.dev_ca_path()).expect("ca.pem"), ca, "CA reused");
    assert_eq!(fs::read(gw.state_dir().join("tls/cert.pem")).expect("cert.pem"), cert, "certificate reused");
    rt.block_on(async {
        for sni in ["any.local.gw.test", "abc.local.preview.gw.test", "abc.preview.gw.test", "api.gw.test"] {
            let tls = c.tls(sni, Alpn::H2).await.unwrap_or_else(|e| panic!("{sni}: {e}"));
            assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        }
        let tls = c.tls("any.local.gw.test", Alpn::H1).await.expect("h1");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        assert!(
            c.tls("evil.test", Alpn::H1).await.is_err(),
            "a name the certificate does not cover fails verification"
        );
    });
}

/// A CA and two certificates it signed, written as PEM files under `dir`.
fn make_certificates(dir: &std::path::Path) -> std::path::PathBuf {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "edge test CA");
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = Issuer::new(ca_params, ca_key);
    fs::write(dir.join("ca.pem"), ca_cert.pem()).expect("write");
    for (file, names) in [("main", vec!["*.local.gw.test", "api.gw.test"]), ("other", vec!["*.other.test"])] {
        let key = KeyPair::generate().expect("key");
        let params = CertificateParams::new(names.into_iter().map(String::from).collect::<Vec<_>>()).expect("params");
        let cert = params.signed_by(&key, &issuer).expect("sign");
        fs::write(dir.join(format!("{file}.pem")), cert.pem() + &ca_cert.pem()).expect("write");
        fs::write(dir.join(format!("{file}.key")), key.serialize_pem()).expect("write");
    }
    dir.join("ca.pem")
}

#[test]
fn configured_certificates_are_chosen_by_sni() {
    let dir = gateway_tests::gateway_process::temp_dir("edge-certs");
    let ca = make_certificates(dir.path());
    let d = dir.path().display();
    let extra = format!(
        "[tls]\ncert = \"{d}/main.pem\"\nkey = \"{d}/main.key\"\n[[tls.certificates]]\ncert = \"{d}/other.pem\"\nkey = \"{d}/other.key\"\n"
    );
    let e = Env::new().config(&extra).sandbox("web", &[(3000, "HTTP")]).start();
    let Env { gw, rt, host, .. } = &e;
    let _rt = rt.enter();
    assert!(!gw.dev_ca_path().exists(), "no development CA when certificates are configured");
    let c = EdgeClient::with_ca(gw.https_addr(), &ca);
    rt.block_on(async {
        // The handshake verifies the served certificate against the SNI: success proves the choice.
        c.tls("x.other.test", Alpn::H1).await.expect("other certificate for *.other.test");
        c.tls("any.local.gw.test", Alpn::H1).await.expect("main certificate");
        // The connection's certificate decides which Hosts it may carry.
        let mut other = c.h1("x.other.test").await;
        let r = read_reply(other.send_request(build(Method::GET, host, "/", &[], empty())).await.expect("send")).await;
        r.assert_error(421, "MISDIRECTED_REQUEST");
        let mut main = c.h1("any.local.gw.test").await;
        let r = read_reply(main.send_request(build(Method::GET, host, "/", &[], empty())).await.expect("send")).await;
        r.assert_error(401, "AUTHENTICATION_REQUIRED");
        // An unknown SNI gets the default certificate (which then fails the client's check).
        assert!(c.tls("unknown.example", Alpn::H1).await.is_err());
    });
}

#[test]
fn gateway_fetch_reaches_an_app_through_the_edge() {
    let e = Env::new().sandbox("web", &[(3000, "HTTP")]).token("fetch").start();
    let Env { gw, .. } = &e;
    let sb = e.sb();
    let token = e.token().to_string();
    let _rt = e.rt.enter();
    let _app = spawn_backend(sb, sb.addr(), 3000, Speaks::Http1);
    let config = gw.config_path().to_str().expect("utf-8").to_string();
    // `gateway fetch` is a blocking process: run it off the runtime so the backend keeps serving.
    let out = std::thread::spawn(move || {
        gateway_tests::gateway_process::run_gateway(&[
            "fetch",
            &format!("{WS}/web"),
            "3000",
            "/from/fetch?x=1",
            "--config",
            &config,
            "--token",
            &token,
            "-X",
            "POST",
            "--json",
            "{\"a\":1}",
            "-H",
            "x-extra:1",
        ])
    })
    .join()
    .expect("fetch thread");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(v["port"], 3000, "{v}");
    assert_eq!(v["method"], "POST", "{v}");
    assert_eq!(v["uri"], "/from/fetch?x=1", "{v}");
    assert_eq!(v["headers"]["x-extra"][0], "1", "{v}");
    assert!(v["headers"].get("authorization").is_none() && v["headers"].get("x-blaxel-authorization").is_none(), "{v}");
}

#[test]
fn revoked_and_expired_tokens_stop_working_at_once() {
    let e = Env::new().sandbox("web", &[(3000, "HTTP")]).start();
    let Env { gw, client: c, rt, host, .. } = &e;
    let sb = e.sb();
    let _rt = rt.enter();
    let _app = spawn_backend(sb, sb.addr(), 3000, Speaks::Http1);
    let revoked = format!("Bearer {}", create_token(gw, WS, "soon-revoked"));
    let body = serde_json::to_vec(&serde_json::json!({"name": "short", "ttl": "2s"})).expect("json");
    let r = gw
        .client()
        .request("POST", &format!("/v1/workspaces/{WS}/tokens"), &[("content-type", "application/json")], Some(&body))
        .expect("POST");
    assert_eq!(r.status, 201, "{}", r.text());
    let expiring = format!("Bearer {}", r.json()["token"].as_str().expect("token"));

    let h2 = rt.block_on(c.h2("any.local.gw.test"));
    let get = |bearer: String| {
        let mut h2 = h2.clone();
        let host = host.clone();
        async move {
            let req = build_h2(Method::GET, &host, "/port/3000/", &[("authorization", &bearer)], empty());
            read_reply(h2.send_request(req).await.expect("send")).await
        }
    };
    rt.block_on(async {
        assert_eq!(get(revoked.clone()).await.status, 200);
        assert_eq!(get(expiring.clone()).await.status, 200);
    });
    assert_eq!(gw.client().delete(&format!("/v1/workspaces/{WS}/tokens/soon-revoked")).status, 204);
    rt.block_on(async {
        // Same connection, next request: refused.
        let r = get(revoked.clone()).await;
        assert_eq!(r.status, 401, "revoked token still works: {}", r.text());
        r.assert_error(401, "AUTHENTICATION_FAILED");
        // A ttl is rounded up to the next whole second: 2 s expires within 3 s.
        tokio::time::sleep(std::time::Duration::from_millis(3200)).await;
        let r = get(expiring.clone()).await;
        assert_eq!(r.status, 401, "expired token still works: {}", r.text());
        r.assert_error(401, "AUTHENTICATION_FAILED");
        let mut h2 = h2.clone();
        let req = build_h2(Method::GET, host, "/", &[], empty());
        read_reply(h2.send_request(req).await.expect("send")).await.assert_error(401, "AUTHENTICATION_REQUIRED");
    });
}

#[test]
fn a_reload_serves_new_certificates_to_new_handshakes() {
    let dir = gateway_tests::gateway_process::temp_dir("edge-certs-reload");
    let ca = make_certificates(dir.path());
    let d = dir.path().display();
    let e = Env::new().config(&format!("[tls]\ncert = \"{d}/main.pem\"\nkey = \"{d}/main.key\"\n")).start();
    let Env { gw, rt, .. } = &e;
    let _rt = rt.enter();
    let c = EdgeClient::with_ca(gw.https_addr(), &ca);
    rt.block_on(async {
        c.tls("any.local.gw.test", Alpn::H1).await.expect("main certificate");
        assert!(c.tls("x.other.test", Alpn::H1).await.is_err(), "not served before the reload");
    });
    // Point the default certificate at the other files and reload.
    let config = fs::read_to_string(gw.config_path()).expect("config");
    fs::write(gw.config_path(), config.replace("main.pem", "other.pem").replace("main.key", "other.key"))
        .expect("rewrite the config");
    // SAFETY: kill(2) on the test's own child.
    unsafe {
        libc::kill(gw.pid().expect("running") as libc::pid_t, libc::SIGHUP);
    }
    rt.block_on(async {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while c.tls("x.other.test", Alpn::H1).await.is_err() {
            assert!(std::time::Instant::now() < deadline, "new certificate not served; log:\n{}", gw.log());
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(c.tls("any.local.gw.test", Alpn::H1).await.is_err(), "old certificate replaced");
    });
    // A [proxy] change is refused (restart needed) and changes nothing.
    let config = fs::read_to_string(gw.config_path()).expect("config");
    fs::write(gw.config_path(), config + "[proxy]\nmax_connections = 5\n").expect("rewrite");
    unsafe {
        libc::kill(gw.pid().expect("running") as libc::pid_t, libc::SIGHUP);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !gw.log().contains("[proxy] changed") {
        assert!(std::time::Instant::now() < deadline, "[proxy] change not refused; log:\n{}", gw.log());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    rt.block_on(async {
        c.tls("x.other.test", Alpn::H1).await.expect("still served");
    });
}
