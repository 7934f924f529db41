//! The Blaxel-compatible `/v0` API end to end: `api.gw.test` on the HTTPS listener, workspace
//! tokens, the wire shapes the SDKs parse, and a preview made through it serving an app.

use gateway_tests::{edge::*, env::Env};
use http::Method;
use serde_json::{Value, json};

const API: &str = "api.gw.test";

#[test]
fn the_v0_api_serves_sandboxes_previews_and_tokens() {
    let e = Env::new().sandbox("web", &[(3000, "HTTP")]).token("sdk").start();
    let Env { gw, client: c, rt, bearer, .. } = &e;
    let sb = e.sb();
    let _token = e.token().to_string();
    let _rt = rt.enter();
    let _app = spawn_backend(sb, sb.addr(), 4000, Speaks::Http1);
    let auth =
        [("x-blaxel-authorization", bearer.as_str()), ("x-blaxel-workspace", WS), ("content-type", "application/json")];
    let port = gw.https_port();

    rt.block_on(async {
        let call = |method: Method, path: &'static str, body: Option<Value>| {
            let c = c.clone();
            async move {
                let body = body.map_or_else(empty, |b| full(b.to_string()));
                c.request(method, API, path, &auth, body).await
            }
        };
        c.get(API, "/v0/sandboxes", &[]).await.assert_error(401, "AUTHENTICATION_REQUIRED");
        c.get(API, "/v0/sandboxes", &[("authorization", "Bearer gw_nope")])
            .await
            .assert_error(401, "AUTHENTICATION_FAILED");

        let r = call(Method::GET, "/v0/sandboxes/web", None).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        assert_eq!(
            v["metadata"]["url"],
            format!("https://sbx-web-{WS}.local.gw.test:{port}"),
            "the public port when not 443"
        );
        assert_eq!(v["spec"]["runtime"]["ports"], json!([{"target": 3000, "protocol": "HTTP"}]));
        let r = call(Method::GET, "/v0/sandboxes", None).await;
        assert!(r.json().is_array(), "{}", r.text());

        let body = json!({"metadata": {"name": "preview-4000"}, "spec": {"port": 4000, "public": false}});
        let r = call(Method::POST, "/v0/sandboxes/web/previews", Some(body)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let p = r.json();
        assert_eq!(p["metadata"]["resourceName"], "web");
        let url = p["spec"]["url"].as_str().expect("url").to_string();
        assert!(url.ends_with(&format!(".local.preview.gw.test:{port}")), "{url}");
        let host = url.trim_start_matches("https://").split(':').next().expect("host").to_string();

        let body = json!({"metadata": {"name": ""}, "spec": {"expiresAt": "2099-01-01T00:00:00Z"}});
        let r = call(Method::POST, "/v0/sandboxes/web/previews/preview-4000/tokens", Some(body)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let secret = r.json()["spec"]["token"].as_str().expect("token").to_string();
        let r = c.get(&host, "/hello", &[("x-blaxel-preview-token", &secret)]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["port"], 4000);

        let r = call(Method::DELETE, "/v0/sandboxes/web/previews/preview-4000", None).await;
        assert_eq!(r.status, 200, "{}", r.text());
        c.get(&host, "/hello", &[("x-blaxel-preview-token", &secret)]).await.assert_error(404, "ROUTE_NOT_FOUND");
    });
}
