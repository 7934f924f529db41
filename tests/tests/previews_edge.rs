//! Preview URLs end to end through real TLS: the real gateway enforcing in the kernel, apps in a
//! sandbox's network namespace, previews and tokens made through the admin API. Public and
//! private previews; tokens by header, query and cookie (all removed before the app sees the
//! request); the browser cookie exchange; revocation and expiry taking effect at once;
//! `requestHeaders`/`responseHeaders` (CORS without duplicates, preflight); a WebSocket through
//! a private preview with the cookie; a session (preview on 443) used for `/port/N/…` and the
//! sandbox API.

use futures_util::{SinkExt, StreamExt};
use gateway::model::time;
use gateway_tests::{
    edge::*,
    env::Env,
    gateway_process::{GatewayProcess, Response},
};
use http::Method;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::time::Duration;
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{Message, handshake::derive_accept_key, protocol::Role},
};

const SBX: &str = "/v1/workspaces/acme/sandboxes/web";

fn put_preview(gw: &GatewayProcess, name: &str, body: Value) -> Value {
    let r = gw.client().put_json(&format!("{SBX}/previews/{name}"), &body);
    assert_eq!(r.status, 200, "PUT preview {name}: {}", r.text());
    r.json()
}

fn post(gw: &GatewayProcess, path: &str, body: Value) -> Response {
    let body = serde_json::to_vec(&body).expect("json");
    gw.client().request("POST", path, &[("content-type", "application/json")], Some(&body)).expect("POST")
}

fn new_token(gw: &GatewayProcess, preview: &str, body: Value) -> (String, String) {
    let r = post(gw, &format!("{SBX}/previews/{preview}/tokens"), body);
    assert_eq!(r.status, 201, "token: {}", r.text());
    let v = r.json();
    (v["name"].as_str().expect("name").to_string(), v["token"].as_str().expect("token").to_string())
}

/// The preview's host (`{id}.local.preview.gw.test`) from its URL.
fn host_of(preview: &Value) -> String {
    let url = preview["url"].as_str().expect("url");
    url.trim_start_matches("https://").split(':').next().expect("host").to_string()
}

/// Header values the echo backend saw.
fn seen<'a>(echo: &'a Value, name: &str) -> Vec<&'a str> {
    echo["headers"][name].as_array().map(|v| v.iter().filter_map(Value::as_str).collect()).unwrap_or_default()
}

#[test]
fn public_and_private_previews_with_header_query_and_cookie_tokens() {
    let e = Env::new().sandbox("web", &[(3000, "HTTP")]).start();
    let Env { gw, rt, .. } = &e;
    let sb = e.sb();
    let _rt = rt.enter();
    let app = spawn_backend(sb, sb.addr(), 4000, Speaks::Http1);
    let c = EdgeClient::new(gw);
    let public = put_preview(gw, "pub", json!({"port": 4000, "public": true}));
    let private = put_preview(gw, "priv", json!({"port": 4000}));
    let (token_name, token) = new_token(gw, "priv", json!({"name": "t1"}));
    let (pub_host, host) = (host_of(&public), host_of(&private));
    let short_host = host.replace(".local.preview.", ".preview.");

    rt.block_on(async {
        // Public: no token; the path and query reach the undeclared port 4000 unchanged.
        let r = c.get(&pub_host, "/a/b?x=1&y=%20z", &[("x-blaxel-workspace", "acme")]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let echo = r.json();
        assert_eq!(echo["port"], 4000);
        assert_eq!(echo["uri"], "/a/b?x=1&y=%20z");
        assert!(seen(&echo, "x-blaxel-workspace").is_empty(), "client X-Blaxel-* removed: {echo}");

        // Private: missing and invalid tokens.
        c.get(&host, "/", &[]).await.assert_error(401, "AUTHENTICATION_REQUIRED");
        c.get(&host, "/", &[("x-blaxel-preview-token", "gwpt_nope")]).await.assert_error(401, "AUTHENTICATION_FAILED");
        c.get(&host, "/?bl_preview_token=gwpt_nope", &[]).await.assert_error(401, "AUTHENTICATION_FAILED");
        let (_, other) = new_token(gw, "pub", json!({}));
        c.get(&host, "/", &[("x-blaxel-preview-token", &other)]).await.assert_error(401, "AUTHENTICATION_FAILED");
        let before = app.requests.load(std::sync::atomic::Ordering::SeqCst);

        // Header token: accepted, removed.
        let r = c.get(&host, "/h", &[("x-blaxel-preview-token", &token)]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let echo = r.json();
        assert!(seen(&echo, "x-blaxel-preview-token").is_empty(), "{echo}");
        assert!(!r.text().contains(&token), "the app never sees the token");
        // Both host forms.
        assert_eq!(c.get(&short_host, "/h", &[("x-blaxel-preview-token", &token)]).await.status, 200);

        // Query token: accepted, removed, the rest of the query intact (order and encoding).
        let r = c.get(&host, &format!("/q?a=1&bl_preview_token={token}&b=%2F&c"), &[("accept", "*/*")]).await;
        assert_eq!(r.status, 200, "*/* is not a browser: forwarded, {}", r.text());
        assert_eq!(r.json()["uri"], "/q?a=1&b=%2F&c");

        // Browser: query token + Accept listing text/html → cookie + redirect without the token.
        let html = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
        let r = c.get(&host, &format!("/page?a=1&bl_preview_token={token}"), &[("accept", html)]).await;
        assert_eq!(r.status, 302, "{}", r.text());
        assert_eq!(r.headers["location"], "/page?a=1");
        let cookie = r.headers["set-cookie"].to_str().expect("ascii").to_string();
        for attr in ["HttpOnly", "Secure", "SameSite=None", "Partitioned", "Path=/"] {
            assert!(cookie.contains(attr), "{attr} in {cookie}");
        }
        assert!(!cookie.to_ascii_lowercase().contains("domain="), "host-only cookie: {cookie}");
        let pair = cookie.split(';').next().expect("pair").to_string();
        let r =
            c.get(&host, "/page?a=1", &[("accept", html), ("cookie", &format!("theme=dark; {pair}; lang=fr"))]).await;
        assert_eq!(r.status, 200, "the cookie authenticates: {}", r.text());
        let echo = r.json();
        assert_eq!(seen(&echo, "cookie"), vec!["theme=dark; lang=fr"], "our cookie removed, the app's kept");

        // Revocation: at once, for the header and the cookie alike.
        assert_eq!(gw.client().delete(&format!("{SBX}/previews/priv/tokens/{token_name}")).status, 204);
        c.get(&host, "/h", &[("x-blaxel-preview-token", &token)]).await.assert_error(401, "AUTHENTICATION_FAILED");
        c.get(&host, "/", &[("cookie", &pair)]).await.assert_error(401, "AUTHENTICATION_FAILED");

        // Expiry of a token: at once.
        let soon = time::format_timestamp(time::add(time::now(), Duration::from_millis(1500)));
        let (_, brief) = new_token(gw, "priv", json!({"expiresAt": soon}));
        assert_eq!(c.get(&host, "/", &[("x-blaxel-preview-token", &brief)]).await.status, 200);
        tokio::time::sleep(Duration::from_millis(1700)).await;
        c.get(&host, "/", &[("x-blaxel-preview-token", &brief)]).await.assert_error(401, "AUTHENTICATION_FAILED");

        // Every refused request stayed at the edge.
        let after = app.requests.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(after - before, 5, "only the accepted requests reached the app");

        // HTTP/2 too.
        let (_, t2) = new_token(gw, "priv", json!({}));
        let mut h2 = c.h2(&host).await;
        h2.ready().await.expect("ready");
        let resp = h2
            .send_request(build_h2(Method::GET, &host, "/h2", &[("x-blaxel-preview-token", &t2)], empty()))
            .await
            .expect("h2");
        let r = read_reply(resp).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["uri"], "/h2");
    });
}

#[test]
fn request_and_response_headers_cors_and_preflight() {
    let e = Env::new().sandbox("web", &[(3000, "HTTP")]).start();
    let Env { gw, rt, .. } = &e;
    let sb = e.sb();
    let _rt = rt.enter();
    let app = spawn_backend(sb, sb.addr(), 3000, Speaks::Http1);
    let c = EdgeClient::new(gw);
    let cors = put_preview(
        gw,
        "cors",
        json!({
            "port": 3000, "public": true,
            "requestHeaders": {"Authorization": "Bearer app-secret", "X-App": "preview"},
            "responseHeaders": {"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Methods": "GET, POST", "X-Frame-Options": "DENY"}
        }),
    );
    let plain = put_preview(gw, "plain", json!({"port": 3000, "public": true}));
    let (host, plain_host) = (host_of(&cors), host_of(&plain));

    rt.block_on(async {
        // requestHeaders win over the client's, one value each.
        let r = c.get(&host, "/", &[("authorization", "Bearer client"), ("x-app", "client")]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let echo = r.json();
        assert_eq!(seen(&echo, "authorization"), vec!["Bearer app-secret"]);
        assert_eq!(seen(&echo, "x-app"), vec!["preview"]);
        // responseHeaders added once.
        assert_eq!(r.headers.get_all("access-control-allow-origin").iter().count(), 1);
        assert_eq!(r.headers["access-control-allow-origin"], "*");
        assert_eq!(r.headers["x-frame-options"], "DENY");
        // The app sets its own: not duplicated, the app's wins.
        let r = c.get(&host, "/cors", &[]).await;
        assert_eq!(r.headers.get_all("access-control-allow-origin").iter().count(), 1, "{:?}", r.headers);
        assert_eq!(r.headers["access-control-allow-origin"], "https://app.example");

        // Preflight answered at the edge from responseHeaders; the app is not asked.
        let n = app.requests.load(std::sync::atomic::Ordering::SeqCst);
        let r = c
            .request(
                Method::OPTIONS,
                &host,
                "/api",
                &[("origin", "https://x.example"), ("access-control-request-method", "POST")],
                empty(),
            )
            .await;
        assert_eq!(r.status, 204, "{}", r.text());
        assert_eq!(r.headers["access-control-allow-methods"], "GET, POST");
        assert_eq!(app.requests.load(std::sync::atomic::Ordering::SeqCst), n);
        // Without CORS in responseHeaders, OPTIONS goes to the app.
        let r = c
            .request(
                Method::OPTIONS,
                &plain_host,
                "/api",
                &[("origin", "https://x.example"), ("access-control-request-method", "POST")],
                empty(),
            )
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["method"], "OPTIONS");
    });
}

#[test]
fn a_websocket_through_a_private_preview_with_the_cookie() {
    let e = Env::new().sandbox("web", &[(3000, "HTTP")]).start();
    let Env { gw, rt, .. } = &e;
    let sb = e.sb();
    let _rt = rt.enter();
    let _app = spawn_backend(sb, sb.addr(), 5173, Speaks::Http1);
    let c = EdgeClient::new(gw);
    let p = put_preview(gw, "hmr", json!({"port": 5173}));
    let (_, token) = new_token(gw, "hmr", json!({}));
    let host = host_of(&p);
    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    rt.block_on(async {
        let html = "text/html";
        let r = c.get(&host, &format!("/?bl_preview_token={token}"), &[("accept", html)]).await;
        assert_eq!(r.status, 302);
        let pair = r.headers["set-cookie"].to_str().expect("ascii").split(';').next().expect("pair").to_string();
        let ws_headers = |cookie: Option<&str>| {
            let mut h = vec![
                ("connection", "upgrade"),
                ("upgrade", "websocket"),
                ("sec-websocket-version", "13"),
                ("sec-websocket-key", KEY),
            ];
            if let Some(c) = cookie {
                h.push(("cookie", c));
            }
            h.into_iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>()
        };
        // Without the cookie: 401, no upgrade.
        let mut conn = c.h1(&host).await;
        let hs = ws_headers(None);
        let refs: Vec<(&str, &str)> = hs.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let r = send1(&mut conn, build(Method::GET, &host, "/ws", &refs, empty())).await;
        r.assert_error(401, "AUTHENTICATION_REQUIRED");
        // With it: 101 and an echo.
        let mut conn = c.h1(&host).await;
        let hs = ws_headers(Some(&pair));
        let refs: Vec<(&str, &str)> = hs.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        conn.ready().await.expect("ready");
        let response = conn.send_request(build(Method::GET, &host, "/ws", &refs, empty())).await.expect("send");
        assert_eq!(response.status(), 101);
        assert_eq!(response.headers()["sec-websocket-accept"], derive_accept_key(KEY.as_bytes()).as_str());
        let upgraded = hyper::upgrade::on(response).await.expect("upgrade");
        let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;
        ws.send(Message::text("hot reload")).await.expect("send");
        let back = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("in time");
        assert_eq!(back.expect("message").expect("ok"), Message::text("hot reload"));
        ws.close(None).await.expect("close");
    });
}

#[test]
fn a_session_reaches_ports_and_the_sandbox_api_and_expired_previews_vanish() {
    let e = Env::new().sandbox("web", &[(3000, "HTTP")]).start();
    let Env { gw, rt, .. } = &e;
    let sb = e.sb();
    let _rt = rt.enter();
    let _app = spawn_backend(sb, sb.addr(), 3000, Speaks::Http1);
    let _api = spawn_backend(sb, sb.addr(), 8080, Speaks::Http1);
    let c = EdgeClient::new(gw);
    let r = post(gw, &format!("{SBX}/sessions"), json!({}));
    assert_eq!(r.status, 201, "{}", r.text());
    let session = r.json();
    let host = host_of(&session);
    let token = session["token"].as_str().expect("token").to_string();
    let soon = time::format_timestamp(time::add(time::now(), Duration::from_millis(1500)));
    let brief = put_preview(gw, "brief", json!({"port": 3000, "public": true, "expiresAt": soon}));

    rt.block_on(async {
        let auth = [("x-blaxel-preview-token", token.as_str())];
        let r = c.get(&host, "/port/3000/x/y?z=1", &auth).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!((r.json()["port"].clone(), r.json()["uri"].clone()), (json!(3000), json!("/x/y?z=1")));
        let r = c.get(&host, "/filesystem/tmp?x=1", &auth).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!((r.json()["port"].clone(), r.json()["uri"].clone()), (json!(8080), json!("/filesystem/tmp?x=1")));
        c.get(&host, "/port/4000/", &auth).await.assert_error(404, "ROUTE_NOT_FOUND");
        c.get(&host, "/port/8080/", &auth).await.assert_error(403, "FORBIDDEN");
        c.get(&host, "/port/3000/", &[]).await.assert_error(401, "AUTHENTICATION_REQUIRED");

        // An expired preview stops answering at once: 404 ROUTE_NOT_FOUND.
        let bhost = host_of(&brief);
        assert_eq!(c.get(&bhost, "/", &[]).await.status, 200);
        tokio::time::sleep(Duration::from_millis(1600)).await;
        c.get(&bhost, "/", &[]).await.assert_error(404, "ROUTE_NOT_FOUND");
        // A deleted one too; unknown ids as well.
        assert_eq!(
            gw.client().delete(&format!("{SBX}/previews/{}", session["name"].as_str().expect("name"))).status,
            204
        );
        c.get(&host, "/port/3000/", &auth).await.assert_error(404, "ROUTE_NOT_FOUND");
        c.get("nope.local.preview.gw.test", "/", &[]).await.assert_error(404, "ROUTE_NOT_FOUND");
    });
}
