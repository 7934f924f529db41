//! The real Blaxel Python SDK against the gateway: `blaxel` from PyPI at a pinned version, in a
//! virtualenv under the target directory, driven by `tests/sdk/blaxel_sdk_e2e.py`. Its API base
//! URL is overridden after import, `gw.test` resolves to 127.0.0.1 inside that process only,
//! `SSL_CERT_FILE` is the gateway's CA, and every connection to a non-loopback address is
//! refused (and reported, which fails the test).
//!
//! Covered: `SandboxInstance.get(name)` → `fetch(port, path)`; `previews.create` →
//! `tokens.create` → a request with the token; `sessions.create` → `from_session` → `fetch`.

use gateway_tests::{edge::*, env::Env, sdk};
use serde_json::{Value, json};
use std::process::Command;

#[test]
fn the_python_sdk_manages_previews_and_sessions_and_fetches_ports() {
    let e = Env::new().sandbox("web", &[(3000, "HTTP")]).token("python-sdk").start();
    let Env { gw, rt, .. } = &e;
    let sb = e.sb();
    let token = e.token().to_string();
    let _rt = rt.enter();
    let python = sdk::blaxel_python();
    let app = spawn_backend(sb, sb.addr(), 3000, Speaks::Http1);
    let _api = spawn_backend(sb, sb.addr(), 8080, Speaks::Http1);
    let port = gw.https_port();

    // The script runs on a thread while this runtime serves the backends.
    let out = rt.block_on(async {
        let mut cmd = Command::new(&python);
        cmd.arg(sdk::script("blaxel_sdk_e2e.py"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", gw.dir())
            .env("GW_API_URL", format!("https://api.gw.test:{port}/v0"))
            .env("GW_DOMAIN", "gw.test")
            .env("GW_SANDBOX", "web")
            .env("BL_API_KEY", &token)
            .env("BL_WORKSPACE", WS)
            .env("SSL_CERT_FILE", gw.dev_ca_path())
            .env("DO_NOT_TRACK", "1")
            .env("PYTHONUNBUFFERED", "1");
        tokio::task::spawn_blocking(move || cmd.output()).await.expect("join").expect("run python")
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the SDK script failed ({}):\n{stdout}\n{stderr}\ngateway log:\n{}",
        out.status,
        gw.log()
    );
    let v: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("no JSON result ({e}):\n{stdout}\n{stderr}"));
    let ok = |key: &str| -> Value {
        assert_eq!(v[key]["status"], 200, "{key}: {v:#}");
        v[key]["body"].clone()
    };

    assert_eq!(v["sdk_version"], sdk::BLAXEL_VERSION);
    assert_eq!(v["blocked"], json!([]), "the SDK tried to reach something outside this machine");
    assert_eq!(v["metadata_url"], format!("https://sbx-web-{WS}.local.gw.test:{port}"));
    // SandboxInstance.get → fetch: the app on 3000 got /hello?x=1, without any credential.
    let fetched = ok("fetch");
    assert_eq!((fetched["port"].clone(), fetched["uri"].clone()), (json!(3000), json!("/hello?x=1")));
    let headers = fetched["headers"].as_object().expect("headers");
    assert!(headers.keys().all(|k| !k.starts_with("x-blaxel") && k != "authorization"), "{headers:?}");
    // previews.create → tokens.create → a request with the token.
    let url = v["preview_url"].as_str().expect("preview url");
    assert!(url.starts_with("https://") && url.ends_with(&format!(".local.preview.gw.test:{port}")), "{url}");
    assert_eq!(v["preview_resource"], "web");
    assert_eq!(ok("preview_fetch")["uri"], "/via-preview?a=1");
    assert_eq!(v["preview_without_token"]["status"], 401, "{v:#}");
    assert_eq!(v["tokens_listed"], 1);
    assert_eq!(v["token_reused"], true, "create_if_expired reuses the listed token");
    // sessions.create → from_session → fetch(port, path).
    let session = v["session_url"].as_str().expect("session url");
    assert!(session.ends_with(&format!(".local.preview.gw.test:{port}")), "{session}");
    let fetched = ok("session_fetch");
    assert_eq!((fetched["port"].clone(), fetched["uri"].clone()), (json!(3000), json!("/from-session?b=2")));
    assert_eq!(v["sessions_listed"], 1);
    assert_eq!(v["preview_after_delete"]["status"], 404, "{v:#}");
    assert!(app.requests.load(std::sync::atomic::Ordering::SeqCst) >= 3);
}
