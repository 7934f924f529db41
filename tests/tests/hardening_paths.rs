//! Hardening: path, port and host tricks against the real gateway, sent as raw
//! bytes over TLS, each case asserting the exact status and the request line that the app
//! (a raw-socket backend on the sandbox's port 3000, another on 8080 for the sandbox API)
//! received. Complements edge_routing.rs (which covers the parser's basic refusals and the
//! Host spellings) with what reaches the app, and with cross-sandbox and cross-workspace
//! confusion: `:authority` against Host, SNI against Host, absolute-form targets.
//!
//! Run: `GATEWAY_BIN=/path/to/gateway cargo test -p gateway-tests --test hardening_paths -- --test-threads=1`.

use gateway_tests::{edge::*, env::Env, harness::Sandbox, raw::*};

fn host_of(name: &str, ws: &str) -> String {
    format!("sbx-{name}-{ws}.{SUFFIX}")
}

/// The complete request lines a backend received since it was last cleared.
fn take(b: &RawBackend) -> Vec<String> {
    let lines = b.lines();
    b.clear();
    lines
}

#[test]
fn paths_and_ports_reach_exactly_the_port_and_path_they_name() {
    let e = Env::new().sandbox("web", &[(3000, "HTTP"), (5173, "HTTP")]).token("paths").start();
    let Env { client: c, rt, host, bearer, .. } = &e;
    let sb = e.sb();
    let _rt = rt.enter();
    let app = spawn_raw_backend(sb, sb.addr(), 3000);
    let api = spawn_raw_backend(sb, sb.addr(), 8080);
    let get = |target: &str| format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nAuthorization: {bearer}\r\n\r\n");

    rt.block_on(async {
        // (target, status, request line at 3000, request line at the sandbox API 8080)
        let cases: Vec<(String, u16, Option<String>, Option<String>)> = vec![
            ("/port/3000//double".into(), 200, Some("GET //double HTTP/1.1".into()), None),
            ("/port/3000///".into(), 200, Some("GET /// HTTP/1.1".into()), None),
            ("//port/3000/x".into(), 200, None, Some("GET //port/3000/x HTTP/1.1".into())),
            ("/./port/3000/x".into(), 200, None, Some("GET /./port/3000/x HTTP/1.1".into())),
            ("/x/../port/3000/y".into(), 200, None, Some("GET /x/../port/3000/y HTTP/1.1".into())),
            ("/%70ort/3000/x".into(), 200, None, Some("GET /%70ort/3000/x HTTP/1.1".into())),
            ("/Port/3000".into(), 200, None, Some("GET /Port/3000 HTTP/1.1".into())),
            ("/port/3000/../8080".into(), 200, Some("GET /../8080 HTTP/1.1".into()), None),
            ("/port/3000/..%2F..%2Fport%2F8080".into(), 200, Some("GET /..%2F..%2Fport%2F8080 HTTP/1.1".into()), None),
            ("/port/3000/%2e%2e/8080".into(), 200, Some("GET /%2e%2e/8080 HTTP/1.1".into()), None),
            ("/port/3000/%00".into(), 200, Some("GET /%00 HTTP/1.1".into()), None),
            ("/port/3000/a?x=/port/8080&y".into(), 200, Some("GET /a?x=/port/8080&y HTTP/1.1".into()), None),
            ("/port/3000?/port/8080".into(), 200, Some("GET /?/port/8080 HTTP/1.1".into()), None),
            ("/port/3000;x=1".into(), 400, None, None),
            ("/port/3000%00".into(), 400, None, None),
            ("/port/%00".into(), 400, None, None),
            ("/port//3000".into(), 400, None, None),
            ("/port/3000%2f..".into(), 400, None, None),
            ("/port/3000%2F".into(), 400, None, None),
            ("/port/%2B3000".into(), 400, None, None),
            ("/port/3000.".into(), 400, None, None),
            ("/port/3e3".into(), 400, None, None),
            ("/port/0x0BB8".into(), 400, None, None),
            ("/port/%EF%BC%93000".into(), 400, None, None),
            ("/port/00000000003000".into(), 400, None, None),
            ("/port/4294970296".into(), 400, None, None),
            ("/port/18446744073709554616".into(), 400, None, None),
            ("/port/65536".into(), 400, None, None),
            ("/port/0".into(), 400, None, None),
            ("/port/8080".into(), 403, None, None),
            ("/port/80/x".into(), 403, None, None),
            ("/port/443?x".into(), 403, None, None),
            ("/port/65535".into(), 404, None, None),
            ("/port/1".into(), 404, None, None),
            ("*".into(), 400, None, None),
            ("port/3000/x".into(), 400, None, None),
        ];
        for (target, status, at_app, at_api) in cases {
            let got = h1_exchange(c, host, get(&target).as_bytes(), 1).await;
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            assert_eq!(got.statuses(), [status], "{target}: {}", got.text());
            assert_eq!(take(&app), at_app.into_iter().collect::<Vec<_>>(), "{target}: at port 3000");
            assert_eq!(take(&api), at_api.into_iter().collect::<Vec<_>>(), "{target}: at the sandbox API");
        }
        // A fragment never goes on the wire in HTTP; sent anyway it is refused or dropped,
        // never a way to another port.
        let got = h1_exchange(c, host, get("/port/3000/a#/../../port/8080").as_bytes(), 1).await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let (app_lines, api_lines) = (take(&app), take(&api));
        assert!(api_lines.is_empty(), "{api_lines:?}");
        match got.statuses()[..] {
            [400] => assert!(app_lines.is_empty(), "{app_lines:?}"),
            [200] => assert!(app_lines.len() == 1 && app_lines[0].starts_with("GET /a"), "{app_lines:?}"),
            _ => panic!("fragment: {}", got.text()),
        }

        // Raw non-ASCII in the target: refused by the parser.
        let got = h1_exchange(c, host, get("/port/３０００/x").as_bytes(), 1).await;
        assert!(got.statuses() == [400] || got.statuses().is_empty() && got.closed, "{}", got.text());
        assert!(take(&app).is_empty() && take(&api).is_empty());

        // Overlong targets: 8 KiB is forwarded intact; 64 KiB is refused (the parser's limit or
        // the header-bytes cap), never forwarded, and the connection closed.
        let long = format!("/port/3000/{}", "a".repeat(8 * 1024));
        let got = h1_exchange(c, host, get(&long).as_bytes(), 1).await;
        assert_eq!(got.statuses(), [200], "8 KiB path");
        assert_eq!(take(&app), [format!("GET /{} HTTP/1.1", "a".repeat(8 * 1024))]);
        let overlong = format!("/port/3000/{}", "a".repeat(64 * 1024));
        let got = h1_exchange(c, host, get(&overlong).as_bytes(), 1).await;
        let statuses = got.statuses();
        assert!(
            statuses.len() == 1 && [400, 414, 431].contains(&statuses[0]) || statuses.is_empty() && got.closed,
            "64 KiB path: {statuses:?}"
        );
        assert!(got.closed, "64 KiB path: connection closed");
        assert!(take(&app).is_empty() && take(&api).is_empty(), "64 KiB path forwarded");

        // CONNECT on HTTP/1.1 (authority form): refused, nothing opened.
        let connect =
            format!("CONNECT {}:3000 HTTP/1.1\r\nHost: {}:3000\r\nAuthorization: {bearer}\r\n\r\n", sb.addr(), host);
        let got = h1_exchange(c, host, connect.as_bytes(), 1).await;
        let statuses = got.statuses();
        assert!(statuses.len() == 1 && (400..500).contains(&statuses[0]), "CONNECT: {}", got.text());
        assert!(take(&app).is_empty() && take(&api).is_empty(), "CONNECT forwarded");
    });
}

#[test]
fn hosts_route_by_their_name_only() {
    let e = Env::new().sandbox("web", &[(3000, "HTTP")]).token("hosts").start();
    let Env { gw, client: c, rt, host, bearer, .. } = &e;
    let sb = e.sb();
    let _rt = rt.enter();
    let app = spawn_raw_backend(sb, sb.addr(), 3000);
    let api = spawn_raw_backend(sb, sb.addr(), 8080);
    let port = gw.https_port();

    rt.block_on(async {
        // (Host header line(s), status, line at 3000)
        let cases: Vec<(String, u16, Option<&str>)> = vec![
            (format!("Host: {}\r\n", host.to_ascii_uppercase()), 200, Some("GET /h HTTP/1.1")),
            (format!("Host: {host}.\r\n"), 200, Some("GET /h HTTP/1.1")),
            (format!("Host: {host}:{port}\r\n"), 200, Some("GET /h HTTP/1.1")),
            // The port in Host never selects the sandbox port.
            (format!("Host: {host}:8080\r\n"), 200, Some("GET /h HTTP/1.1")),
            (format!("Host: {host}:65536\r\n"), 200, Some("GET /h HTTP/1.1")),
            (format!("Host: {host}:99999\r\n"), 200, Some("GET /h HTTP/1.1")),
            (format!("Host: {host}:x\r\n"), 400, None),
            (format!("Host: {host}:\r\n"), 400, None),
            (format!("Host: {host}:3000:3000\r\n"), 400, None),
            (format!("Host: {host}..\r\n"), 400, None),
            (format!("Host: user@{host}\r\n"), 400, None),
            (format!("Host: {host}/x\r\n"), 400, None),
            (format!("Host: {}\r\n", host.replace("sbx-web", "sbx%2Dweb")), 400, None),
            (format!("Host: {host}\r\nHost: {host}\r\n"), 400, None),
            (format!("Host: {host}\r\nHost: {}\r\n", host_of("db", WS)), 400, None),
            ("Host: \r\n".to_string(), 400, None),
            (String::new(), 400, None),
            (format!("Host: {}\r\n", sb.addr()), 421, None),
            (format!("Host: {}:3000\r\n", sb.addr()), 421, None),
            ("Host: 127.0.0.1\r\n".to_string(), 421, None),
            ("Host: [::1]\r\n".to_string(), 421, None),
            ("Host: localhost\r\n".to_string(), 421, None),
            (format!("Host: {}\r\n", host.replace(".local.", ".LOCAL.")), 200, Some("GET /h HTTP/1.1")),
            (format!("Host: x{host}\r\n"), 404, None),
            (format!("Host: {}\r\n", host_of("web", "acme-x")), 404, None),
            (format!("Host: {}\r\n", host.replace("sbx-", "xn--sbx-")), 404, None),
        ];
        for (host_lines, status, at_app) in cases {
            let bytes = format!("GET /port/3000/h HTTP/1.1\r\n{host_lines}Authorization: {bearer}\r\n\r\n");
            let got = h1_exchange(c, host, bytes.as_bytes(), 1).await;
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            assert_eq!(got.statuses(), [status], "{host_lines:?}: {}", got.text());
            assert_eq!(take(&app), at_app.into_iter().collect::<Vec<_>>(), "{host_lines:?}");
            assert!(take(&api).is_empty(), "{host_lines:?}");
        }
        // HTTP/1.0 without Host: refused as well.
        let got =
            h1_exchange(c, host, format!("GET /port/3000/h HTTP/1.0\r\nAuthorization: {bearer}\r\n\r\n").as_bytes(), 1)
                .await;
        assert_eq!(got.statuses(), [400], "{}", got.text());
        assert!(take(&app).is_empty());
    });
}

/// Two sandboxes in two workspaces (`acme/web`, `beta/db`) on one connection whose
/// certificate covers both: the request's authority decides the sandbox, and authentication is
/// that sandbox's workspace's, whatever the SNI, the Host header or an absolute-form target say.
#[test]
fn authority_sni_and_host_never_mix_sandboxes_or_workspaces() {
    let e = Env::new().sandbox("web", &[(3000, "HTTP")]).start();
    let Env { gw, client: c, rt, .. } = &e;
    let web_sb = e.sb();
    let _rt = rt.enter();
    let db_sb = Sandbox::new();
    register(gw, "beta", "db", &db_sb, &[(3000, "HTTP")]);
    // Labels are unique across workspaces: `sbx-a-b-c` cannot be two sandboxes.
    let third = Sandbox::new();
    register(gw, "c", "a-b", &third, &[(3000, "HTTP")]);
    let collision =
        gw.client().put_json("/v1/workspaces/b-c/sandboxes/a", &sandbox_body(&Sandbox::new(), &[(3000, "HTTP")]));
    assert_eq!(collision.status, 409, "label collision refused");
    let web = spawn_raw_backend(web_sb, web_sb.addr(), 3000);
    let db = spawn_raw_backend(&db_sb, db_sb.addr(), 3000);
    let web_host = sandbox_host("web");
    let db_host = host_of("db", "beta");
    let acme = format!("Bearer {}", create_token(gw, WS, "acme-token"));
    let beta = format!("Bearer {}", create_token(gw, "beta", "beta-token"));

    rt.block_on(async {
        // HTTP/1.1, SNI of web, Host of db: allowed (one certificate covers both), routed to
        // db, and authenticated for db's workspace.
        for (token, status, to_db) in [(&acme, 403, false), (&beta, 200, true)] {
            let bytes = format!("GET /port/3000/sni HTTP/1.1\r\nHost: {db_host}\r\nAuthorization: {token}\r\n\r\n");
            let got = h1_exchange(c, &web_host, bytes.as_bytes(), 1).await;
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            assert_eq!(got.statuses(), [status], "SNI web, Host db: {}", got.text());
            assert_eq!(take(&db), if to_db { vec!["GET /sni HTTP/1.1".to_string()] } else { vec![] });
            assert!(take(&web).is_empty(), "nothing to the SNI's sandbox");
        }
        // Absolute-form target: its authority wins over Host (RFC 9112 §3.2.2), for routing and
        // for authentication alike.
        for (authority, header, token, status, to) in [
            (&db_host, &web_host, &acme, 403, None),
            (&db_host, &web_host, &beta, 200, Some("db")),
            (&web_host, &db_host, &beta, 403, None),
            (&web_host, &db_host, &acme, 200, Some("web")),
        ] {
            let bytes = format!(
                "GET https://{authority}/port/3000/abs HTTP/1.1\r\nHost: {header}\r\nAuthorization: {token}\r\n\r\n"
            );
            let got = h1_exchange(c, "any.local.gw.test", bytes.as_bytes(), 1).await;
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            assert_eq!(got.statuses(), [status], "absolute {authority} / Host {header}: {}", got.text());
            let (wreq, dreq) = (web.requests(), db.requests());
            let (w, d) = (take(&web), take(&db));
            match to {
                Some("db") => assert!(w.is_empty() && d == ["GET /abs HTTP/1.1"], "{w:?} {d:?}"),
                Some(_) => assert!(d.is_empty() && w == ["GET /abs HTTP/1.1"], "{w:?} {d:?}"),
                None => assert!(w.is_empty() && d.is_empty(), "{w:?} {d:?}"),
            }
            // The app sees its own host (the authority), never the other one.
            if let Some(r) = wreq.first().or(dreq.first()) {
                assert_eq!(r.header("host"), [authority.to_string()], "{r:?}");
            }
        }

        // HTTP/2: a `host` field naming another host than `:authority` makes the request
        // malformed (RFC 9113 §8.3.1): 400, nothing forwarded, whichever token. The same host
        // spelled otherwise is fine, and the app sees `:authority` as Host.
        let mut h2 = RawH2::connect(c, &web_host).await;
        let mut stream = 1;
        let upper_web = format!("{}:{}", web_host.to_ascii_uppercase(), gw.https_port());
        for (authority, header, token, status, to) in [
            (&db_host, &web_host, &acme, 400, None),
            (&db_host, &web_host, &beta, 400, None),
            (&web_host, &db_host, &beta, 400, None),
            (&web_host, &db_host, &acme, 400, None),
            (&web_host, &upper_web, &acme, 200, Some("web")),
            (&db_host, &db_host, &acme, 403, None),
            (&db_host, &db_host, &beta, 200, Some("db")),
        ] {
            let fields = [
                (":method", "GET"),
                (":scheme", "https"),
                (":authority", authority.as_str()),
                (":path", "/port/3000/h2"),
                ("host", header.as_str()),
                ("authorization", token.as_str()),
            ];
            let outcome = h2.request(stream, &fields, None).await;
            stream += 2;
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let (wreq, dreq) = (web.requests(), db.requests());
            let (w, d) = (take(&web), take(&db));
            let what = format!(":authority {authority} / host {header} / {}", &token[..12]);
            assert_eq!(outcome.status(), Some(status), "{what}: {outcome:?}");
            match to {
                Some("db") => assert!(w.is_empty() && d == ["GET /h2 HTTP/1.1"], "{what}: {w:?} {d:?}"),
                Some(_) => assert!(d.is_empty() && w == ["GET /h2 HTTP/1.1"], "{what}: {w:?} {d:?}"),
                None => assert!(w.is_empty() && d.is_empty(), "{what}: {w:?} {d:?}"),
            }
            if let Some(r) = wreq.first().or(dreq.first()) {
                assert_eq!(r.header("host"), [authority.to_string()], "{what}: the app sees :authority");
            }
        }
        // HTTP/2 without `:authority`, Host only: routed by Host, authenticated for it.
        let fields = [
            (":method", "GET"),
            (":scheme", "https"),
            (":path", "/port/3000/host-only"),
            ("host", db_host.as_str()),
            ("authorization", acme.as_str()),
        ];
        let outcome = h2.request(stream, &fields, None).await;
        stream += 2;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            matches!(outcome, H2Outcome::Reset(_)) || outcome.status() == Some(403) || outcome.status() == Some(400),
            "{outcome:?}"
        );
        assert!(take(&web).is_empty() && take(&db).is_empty());
        let _ = stream;
    });
}

/// The same path and authority rules on HTTP/2 (`:path`, `:authority` written by hand).
#[test]
fn h2_paths_and_authorities_follow_the_same_rules() {
    let e = Env::new().sandbox("web", &[(3000, "HTTP")]).token("h2-paths").start();
    let Env { client: c, rt, host, bearer, .. } = &e;
    let sb = e.sb();
    let _rt = rt.enter();
    let app = spawn_raw_backend(sb, sb.addr(), 3000);
    let api = spawn_raw_backend(sb, sb.addr(), 8080);

    rt.block_on(async {
        let mut h2 = RawH2::connect(c, host).await;
        let mut stream = 1;
        // (:authority, :path, status or None for a stream reset, line at 3000, line at 8080)
        let userinfo = format!("user@{host}");
        type Case<'a> = (&'a str, &'a str, Option<u16>, Option<&'a str>, Option<&'a str>);
        let cases: Vec<Case> = vec![
            (host, "/port/3000//x", Some(200), Some("GET //x HTTP/1.1"), None),
            (host, "/port/3000/../8080", Some(200), Some("GET /../8080 HTTP/1.1"), None),
            (host, "//port/3000/x", Some(200), None, Some("GET //port/3000/x HTTP/1.1")),
            (host, "/port/08080", Some(400), None, None),
            (host, "/port/3000%2F..", Some(400), None, None),
            (host, "/port/65536", Some(400), None, None),
            (host, "/port/8080", Some(403), None, None),
            (host, "/port/4000", Some(404), None, None),
            (&userinfo, "/port/3000/x", None, None, None),
            ("127.0.0.1", "/port/3000/x", Some(421), None, None),
            ("evil.test", "/port/3000/x", Some(421), None, None),
        ];
        for (authority, path, status, at_app, at_api) in cases {
            let fields = [
                (":method", "GET"),
                (":scheme", "https"),
                (":authority", authority),
                (":path", path),
                ("authorization", bearer.as_str()),
            ];
            let outcome = h2.request(stream, &fields, None).await;
            stream += 2;
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            match status {
                Some(s) => assert_eq!(outcome.status(), Some(s), "{authority} {path}: {outcome:?}"),
                None => assert!(
                    matches!(outcome, H2Outcome::Reset(_)) || outcome.status() == Some(400),
                    "{authority} {path}: {outcome:?}"
                ),
            }
            assert_eq!(take(&app), at_app.into_iter().map(String::from).collect::<Vec<_>>(), "{authority} {path}");
            assert_eq!(take(&api), at_api.into_iter().map(String::from).collect::<Vec<_>>(), "{authority} {path}");
        }
        // Malformed pseudo-headers: the stream is reset (or refused), nothing forwarded.
        for (name, fields) in [
            (
                "no leading slash",
                vec![(":method", "GET"), (":scheme", "https"), (":authority", host.as_str()), (":path", "port/3000/x")],
            ),
            (
                "empty :path",
                vec![(":method", "GET"), (":scheme", "https"), (":authority", host.as_str()), (":path", "")],
            ),
            ("no :path", vec![(":method", "GET"), (":scheme", "https"), (":authority", host.as_str())]),
            (
                "two :path",
                vec![
                    (":method", "GET"),
                    (":scheme", "https"),
                    (":authority", host.as_str()),
                    (":path", "/port/3000/a"),
                    (":path", "/port/3000/b"),
                ],
            ),
            (
                "pseudo after a field",
                vec![
                    (":method", "GET"),
                    (":scheme", "https"),
                    ("x-a", "1"),
                    (":authority", host.as_str()),
                    (":path", "/port/3000/x"),
                ],
            ),
            (
                "unknown pseudo",
                vec![
                    (":method", "GET"),
                    (":scheme", "https"),
                    (":authority", host.as_str()),
                    (":path", "/port/3000/x"),
                    (":port", "8080"),
                ],
            ),
        ] {
            let mut fields = fields;
            fields.push(("authorization", bearer.as_str()));
            let outcome = h2.request(stream, &fields, None).await;
            stream += 2;
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            assert!(
                matches!(outcome, H2Outcome::Reset(_) | H2Outcome::GoAway(_))
                    || outcome.status().is_some_and(|s| s >= 400),
                "{name}: {outcome:?}"
            );
            assert!(take(&app).is_empty() && take(&api).is_empty(), "{name}: forwarded");
            if matches!(outcome, H2Outcome::GoAway(_)) {
                h2 = RawH2::connect(c, host).await;
                stream = 1;
            }
        }
    });
}
