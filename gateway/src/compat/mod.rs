//! The Blaxel-compatible user API (`/v0`), served by the HTTPS edge for host `api.{domain}`.
//! It is the API the real SDKs call to read sandboxes and to manage previews, preview tokens
//! and sessions (a session is a preview plus a token, made by the SDK from these calls).
//!
//! Authentication: a workspace access token (`X-Blaxel-Authorization: Bearer …` or
//! `Authorization: Bearer …`) through [`crate::auth::authenticate_caller`]; the workspace is
//! the one named by `X-Blaxel-Workspace` (which the SDKs always send), else the token's own.
//! Every call is scoped to it.
//!
//! | call | answer |
//! | --- | --- |
//! | `GET /v0/sandboxes` | bare array of sandboxes |
//! | `GET /v0/sandboxes/{name}` | `{"metadata": {"name", "workspace", "url"}, "spec": {"region", "runtime": {"ports"}}, "status"}` |
//! | `GET /v0/sandboxes/{name}/previews` | bare array of previews |
//! | `POST /v0/sandboxes/{name}/previews[?force=true]` | 200 preview; 409 if the name is taken (unless `force`) |
//! | `GET`, `PUT` (create or replace), `DELETE` (200, the record) `…/previews/{preview}` | preview |
//! | `GET`, `POST` (200) `…/previews/{preview}/tokens` | bare array / token (with its secret) |
//! | `DELETE …/previews/{preview}/tokens/{token}` | 200 `{"message"}` |
//!
//! Creates answer 200 (the SDK treats 201 as an error); errors are the JSON of `crate::errors`.

pub mod wire;

use crate::{
    auth,
    errors::{ApiError, ErrorCode},
    json_api::{JsonResponse, error_response, json, parse_json_or_default, read_body},
    model::time,
    service::App,
    service::previews::spec::TokenSpec,
};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Body;
use serde::Serialize;
use std::time::Instant;
use wire::{PreviewIn, PreviewOut, SandboxOut, TokenIn, TokenOut};

/// Largest accepted request body.
pub const BODY_LIMIT: usize = 256 * 1024;

/// What a `/v0` path names.
#[derive(Clone, Debug, PartialEq, Eq)]
enum ApiRoute {
    Sandboxes,
    Sandbox(String),
    Previews(String),
    Preview(String, String),
    Tokens(String, String, String),
    Token(String, String, String),
}

impl ApiRoute {
    fn parse(path: &str) -> Option<ApiRoute> {
        let segments: Vec<&str> = path.strip_prefix("/v0/")?.trim_end_matches('/').split('/').collect();
        let s = |x: &str| x.to_string();
        Some(match segments.as_slice() {
            ["sandboxes"] => ApiRoute::Sandboxes,
            ["sandboxes", name] => ApiRoute::Sandbox(s(name)),
            ["sandboxes", name, "previews"] => ApiRoute::Previews(s(name)),
            ["sandboxes", name, "previews", p] => ApiRoute::Preview(s(name), s(p)),
            ["sandboxes", name, "previews", p, "tokens"] => ApiRoute::Tokens(s(name), s(p), String::new()),
            ["sandboxes", name, "previews", p, "tokens", t] => ApiRoute::Token(s(name), s(p), s(t)),
            _ => return None,
        })
    }

    fn methods(&self) -> &'static [Method] {
        match self {
            ApiRoute::Sandboxes | ApiRoute::Sandbox(_) => &[Method::GET],
            ApiRoute::Previews(_) | ApiRoute::Tokens(..) => &[Method::GET, Method::POST],
            ApiRoute::Preview(..) => &[Method::GET, Method::PUT, Method::DELETE],
            ApiRoute::Token(..) => &[Method::DELETE],
        }
    }
}

/// Answers one `/v0` request (never fails: errors are JSON) and logs it without secrets.
pub async fn handle<B>(app: &App, req: Request<B>) -> Response<Full<Bytes>>
where
    B: Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let response = match dispatch(app, req).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    };
    tracing::info!(
        target: "gateway::compat",
        %method,
        %path,
        status = response.status().as_u16(),
        duration_us = started.elapsed().as_micros() as u64,
        "api request"
    );
    response
}

fn force<B>(req: &Request<B>) -> bool {
    req.uri()
        .query()
        .is_some_and(|q| q.split('&').any(|kv| matches!(kv.split_once('='), Some(("force", "true"))) || kv == "force"))
}

async fn dispatch<B>(app: &App, req: Request<B>) -> Result<Response<Full<Bytes>>, ApiError>
where
    B: Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let route = ApiRoute::parse(req.uri().path());
    // Authenticate before saying anything about paths; every call is scoped to this workspace.
    let ws = auth::authenticate_caller(app, req.headers())?.workspace;
    let Some(route) = route else {
        return Err(ApiError::new(ErrorCode::RouteNotFound, format!("no API route for {}", req.uri().path())));
    };
    if !route.methods().contains(req.method()) {
        let allowed = route.methods().iter().map(Method::as_str).collect::<Vec<_>>().join(", ");
        let mut r = error_response(&ApiError::new(
            ErrorCode::MethodNotAllowed,
            format!("{} is not allowed on {} (allowed: {allowed})", req.method(), req.uri().path()),
        ));
        if let Ok(v) = HeaderValue::from_str(&allowed) {
            r.headers_mut().insert(header::ALLOW, v);
        }
        return Ok(r);
    }
    let method = req.method().clone();
    let now = time::now();
    match (route, method) {
        (ApiRoute::Sandboxes, _) => {
            let list: Vec<SandboxOut> = app.list(Some(&ws))?.iter().map(|s| SandboxOut::new(app, s)).collect();
            ok(&list)
        }
        (ApiRoute::Sandbox(name), _) => ok(&SandboxOut::new(app, &*app.get(&ws, &name)?)),
        (ApiRoute::Previews(name), Method::GET) => {
            let list: Vec<PreviewOut> =
                app.list_previews(&ws, &name)?.iter().map(|p| PreviewOut::new(app, p)).collect();
            ok(&list)
        }
        (ApiRoute::Previews(name), _) => {
            let force = force(&req);
            let body: PreviewIn = read_json(req).await?;
            let Some(preview) = body.metadata.name.filter(|n| !n.is_empty()) else {
                return Err(ApiError::new(ErrorCode::BadRequest, "metadata.name is required"));
            };
            if !force && app.get_preview(&ws, &name, &preview).is_ok() {
                return Err(ApiError::new(
                    ErrorCode::PreviewConflict,
                    format!(
                        "sandbox {name:?} already has a preview named {preview:?} (POST with ?force=true to replace it)"
                    ),
                ));
            }
            let (p, _, _) = app.put_preview(&ws, &name, &preview, &body.spec.to_spec()).await?;
            ok(&PreviewOut::new(app, &p))
        }
        (ApiRoute::Preview(name, preview), Method::GET) => {
            ok(&PreviewOut::new(app, &*app.get_preview(&ws, &name, &preview)?))
        }
        (ApiRoute::Preview(name, preview), Method::PUT) => {
            let body: PreviewIn = read_json(req).await?;
            if let Some(n) = body.metadata.name.as_deref().filter(|n| !n.is_empty())
                && n != preview
            {
                return Err(ApiError::new(
                    ErrorCode::BadRequest,
                    format!("metadata.name {n:?} differs from the preview named in the path ({preview:?})"),
                ));
            }
            let (p, _, _) = app.put_preview(&ws, &name, &preview, &body.spec.to_spec()).await?;
            ok(&PreviewOut::new(app, &p))
        }
        (ApiRoute::Preview(name, preview), _) => {
            ok(&PreviewOut::new(app, &*app.delete_preview(&ws, &name, &preview).await?))
        }
        (ApiRoute::Tokens(name, preview, _), Method::GET) => {
            let p = app.get_preview(&ws, &name, &preview)?;
            let list: Vec<TokenOut> = p.tokens.iter().map(|t| TokenOut::new(&p, t, now)).collect();
            ok(&list)
        }
        (ApiRoute::Tokens(name, preview, _), _) => {
            let body: TokenIn = read_json(req).await?;
            let spec = TokenSpec { name: body.metadata.name, expires_at: body.spec.expires_at, ttl: None };
            let (p, t) = app.create_preview_token(&ws, &name, &preview, &spec).await?;
            ok(&TokenOut::new(&p, &t, now))
        }
        (ApiRoute::Token(name, preview, token), _) => {
            let t = app.revoke_preview_token(&ws, &name, &preview, &token).await?;
            ok(&serde_json::json!({"message": format!("preview token {:?} deleted", t.name)}))
        }
    }
}

async fn read_json<T, B>(req: Request<B>) -> Result<T, ApiError>
where
    T: serde::de::DeserializeOwned + Default,
    B: Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    parse_json_or_default(&read_body(req, BODY_LIMIT).await?)
}

fn ok(value: &impl Serialize) -> Result<JsonResponse, ApiError> {
    json(StatusCode::OK, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let s = |x: &str| x.to_string();
        assert_eq!(ApiRoute::parse("/v0/sandboxes"), Some(ApiRoute::Sandboxes));
        assert_eq!(ApiRoute::parse("/v0/sandboxes/"), Some(ApiRoute::Sandboxes));
        assert_eq!(ApiRoute::parse("/v0/sandboxes/a"), Some(ApiRoute::Sandbox(s("a"))));
        assert_eq!(ApiRoute::parse("/v0/sandboxes/a/previews"), Some(ApiRoute::Previews(s("a"))));
        assert_eq!(ApiRoute::parse("/v0/sandboxes/a/previews/p"), Some(ApiRoute::Preview(s("a"), s("p"))));
        assert_eq!(ApiRoute::parse("/v0/sandboxes/a/previews/p/tokens"), Some(ApiRoute::Tokens(s("a"), s("p"), s(""))));
        assert_eq!(
            ApiRoute::parse("/v0/sandboxes/a/previews/p/tokens/t"),
            Some(ApiRoute::Token(s("a"), s("p"), s("t")))
        );
        assert_eq!(ApiRoute::parse("/v0/agents"), None);
        assert_eq!(ApiRoute::parse("/v1/sandboxes"), None);
    }
}

#[cfg(test)]
mod wire_tests {
    use super::*;
    use crate::{
        config::Config,
        dataplane::Dataplane,
        model::sandbox::PortProtocol,
        service::tokens::TokenRequest,
        service::{PortRequest, SandboxSpec},
        state::MemoryStore,
    };
    use http_body_util::BodyExt;
    use serde_json::{Value, json};
    use std::sync::Arc;

    struct Api {
        app: App,
        token: String,
        other: String,
    }

    async fn api() -> Api {
        let app =
            App::start(Config::default(), Arc::new(MemoryStore::new()), Dataplane::disabled()).await.expect("start");
        let spec = SandboxSpec {
            address: "198.18.0.2".parse().expect("addr"),
            interface: "lo".into(),
            ports: vec![PortRequest::new(3000, PortProtocol::Http), PortRequest::new(50051, PortProtocol::Grpc)],
        };
        app.put_sandbox("acme", "app", spec.clone()).await.expect("sandbox");
        app.put_sandbox("other", "app", SandboxSpec { address: "198.18.0.3".parse().expect("addr"), ..spec })
            .await
            .expect("sandbox");
        let req = |name: &str| TokenRequest { name: name.into(), expires_at: None, ttl: None };
        let token = app.create_token("acme", req("sdk")).await.expect("token").token.expose().to_string();
        let other = app.create_token("other", req("sdk")).await.expect("token").token.expose().to_string();
        Api { app, token, other }
    }

    impl Api {
        async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
            self.call_as(&self.token, Some("acme"), method, path, body).await
        }
        async fn call_as(
            &self,
            token: &str,
            ws: Option<&str>,
            method: &str,
            path: &str,
            body: Option<Value>,
        ) -> (u16, Value) {
            let mut b =
                Request::builder().method(method).uri(path).header("x-blaxel-authorization", format!("Bearer {token}"));
            if let Some(ws) = ws {
                b = b.header("x-blaxel-workspace", ws);
            }
            let body = body.map(|v| Bytes::from(v.to_string())).unwrap_or_default();
            let r = handle(&self.app, b.body(Full::new(body)).expect("request")).await;
            let status = r.status().as_u16();
            let bytes = r.into_body().collect().await.expect("body").to_bytes();
            (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
        }
    }

    #[tokio::test]
    async fn sandboxes_have_a_url_and_lists_are_bare_arrays() {
        let api = api().await;
        let (status, v) = api.call("GET", "/v0/sandboxes/app", None).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["metadata"]["name"], "app");
        assert_eq!(v["metadata"]["workspace"], "acme");
        assert_eq!(v["metadata"]["url"], "https://sbx-app-acme.local.gw.test", "443: no port");
        assert_eq!(v["spec"]["region"], "local");
        assert_eq!(
            v["spec"]["runtime"]["ports"],
            json!([{"target": 3000, "protocol": "HTTP"}, {"target": 50051, "protocol": "HTTP"}])
        );
        assert_eq!(v["status"], "DEPLOYED");
        let (status, v) = api.call("GET", "/v0/sandboxes", None).await;
        assert_eq!(status, 200);
        assert_eq!(v.as_array().map(Vec::len), Some(1), "only the caller's workspace: {v}");
        let (status, v) = api.call("GET", "/v0/sandboxes/nope", None).await;
        assert_eq!((status, v["error"]["code"].clone()), (404, json!(ErrorCode::WorkloadNotFound)));
    }

    #[tokio::test]
    async fn authentication() {
        let api = api().await;
        let (status, v) = api.call_as("gw_nope", Some("acme"), "GET", "/v0/sandboxes", None).await;
        assert_eq!((status, v["error"]["code"].clone()), (401, json!(ErrorCode::AuthenticationFailed)));
        let (status, _) = api.call_as(&api.other, Some("acme"), "GET", "/v0/sandboxes", None).await;
        assert_eq!(status, 403, "a token of another workspace");
        // Without X-Blaxel-Workspace, the token's own workspace.
        let (status, v) = api.call_as(&api.other, None, "GET", "/v0/sandboxes", None).await;
        assert_eq!(status, 200);
        assert_eq!(v[0]["metadata"]["workspace"], "other");
        let r = handle(&api.app, Request::get("/v0/sandboxes").body(Full::new(Bytes::new())).expect("req")).await;
        assert_eq!(r.status(), 401);
        // Unknown paths are not revealed before authentication.
        let (status, _) = api.call_as("gw_nope", Some("acme"), "GET", "/v0/agents", None).await;
        assert_eq!(status, 401);
        let (status, v) = api.call("GET", "/v0/agents", None).await;
        assert_eq!((status, v["error"]["code"].clone()), (404, json!(ErrorCode::RouteNotFound)));
    }

    #[tokio::test]
    async fn previews_tokens_and_sessions_as_the_sdk_sends_them() {
        let api = api().await;
        // previews.create({"port": 3000}) → POST with metadata/spec; 200, not 201.
        let body = json!({"metadata": {"name": "preview-3000"}, "spec": {"port": 3000, "public": false}});
        let (status, p) = api.call("POST", "/v0/sandboxes/app/previews", Some(body.clone())).await;
        assert_eq!(status, 200, "{p}");
        assert_eq!(p["metadata"]["name"], "preview-3000");
        assert_eq!(p["metadata"]["resourceName"], "app");
        assert_eq!(p["metadata"]["resourceType"], "Sandbox");
        assert_eq!(p["metadata"]["workspace"], "acme");
        let url = p["spec"]["url"].as_str().expect("url").to_string();
        assert!(url.starts_with("https://") && url.ends_with(".local.preview.gw.test"), "{url}");
        // A second POST conflicts; ?force=true replaces.
        let (status, v) = api.call("POST", "/v0/sandboxes/app/previews", Some(body.clone())).await;
        assert_eq!((status, v["error"]["code"].clone()), (409, json!(ErrorCode::PreviewConflict)));
        let forced = json!({"metadata": {"name": "preview-3000"}, "spec": {"port": 3000, "public": true}});
        let (status, v) = api.call("POST", "/v0/sandboxes/app/previews?force=true", Some(forced)).await;
        assert_eq!((status, v["spec"]["public"].clone(), v["spec"]["url"].clone()), (200, json!(true), json!(url)));
        // tokens.create(expires_at) → `to_utc_z(datetime)`: microseconds and Z.
        let tok = json!({"metadata": {"name": ""}, "spec": {"expiresAt": "2099-05-01T10:00:00.123456Z"}});
        let (status, t) = api.call("POST", "/v0/sandboxes/app/previews/preview-3000/tokens", Some(tok)).await;
        assert_eq!(status, 200, "{t}");
        assert!(t["metadata"]["name"].as_str().is_some_and(|n| n.starts_with("token-")), "{t}");
        assert_eq!(t["spec"]["expiresAt"], "2099-05-01T10:00:00.123Z");
        assert_eq!(t["spec"]["expired"], false);
        let secret = t["spec"]["token"].as_str().expect("token").to_string();
        let (status, list) = api.call("GET", "/v0/sandboxes/app/previews/preview-3000/tokens", None).await;
        assert_eq!(status, 200);
        assert_eq!(list[0]["spec"]["token"], secret.as_str(), "the SDK reads secrets from lists");
        // sessions.create(): a preview on 443 with a naive ISO expiry, then a token.
        let s = json!({"metadata": {"name": "session-1718000000000"}, "spec": {"port": 443, "public": false, "expires": "2099-01-02T03:04:05.678901"}});
        let (status, sp) = api.call("POST", "/v0/sandboxes/app/previews", Some(s)).await;
        assert_eq!(status, 200, "{sp}");
        assert_eq!(sp["spec"]["port"], 443);
        assert_eq!(sp["spec"]["expires"], "2099-01-02T03:04:05.678Z");
        let (status, list) = api.call("GET", "/v0/sandboxes/app/previews", None).await;
        assert_eq!(status, 200);
        assert_eq!(list.as_array().map(Vec::len), Some(2));
        // Errors: reserved port, bad timestamp, unknown preview.
        let bad = json!({"metadata": {"name": "p80"}, "spec": {"port": 80}});
        let (status, v) = api.call("POST", "/v0/sandboxes/app/previews", Some(bad)).await;
        assert_eq!((status, v["error"]["code"].clone()), (400, json!(ErrorCode::ReservedPort)));
        let bad = json!({"metadata": {"name": "p"}, "spec": {"port": 3000, "expires": "2099-01-02T03:04:05+02:00Z"}});
        assert_eq!(api.call("POST", "/v0/sandboxes/app/previews", Some(bad)).await.0, 400);
        assert_eq!(api.call("GET", "/v0/sandboxes/app/previews/nope", None).await.0, 404);
        // Revoke, delete (200 with the record), then 404.
        let name = t["metadata"]["name"].as_str().expect("name").to_string();
        let (status, v) =
            api.call("DELETE", &format!("/v0/sandboxes/app/previews/preview-3000/tokens/{name}"), None).await;
        assert_eq!(status, 200, "{v}");
        assert!(v["message"].is_string());
        let (status, v) = api.call("DELETE", "/v0/sandboxes/app/previews/preview-3000", None).await;
        assert_eq!((status, v["metadata"]["name"].clone()), (200, json!("preview-3000")));
        assert_eq!(api.call("GET", "/v0/sandboxes/app/previews/preview-3000", None).await.0, 404);
        // Another workspace's sandbox of the same name is out of reach.
        let (status, v) = api.call_as(&api.other, None, "GET", "/v0/sandboxes/app/previews", None).await;
        assert_eq!((status, v), (200, json!([])));
    }
}
