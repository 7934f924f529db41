//! Admin request handling: authentication, routing, bodies, JSON answers.

use super::BODY_LIMIT;
use crate::{
    errors::{ApiError, ErrorCode},
    json_api::{JsonResponse, error_response, json, no_content, parse_json, read_body},
    service::tokens::{TokenRequest, TokenView},
    service::{App, SandboxSpec, SandboxView},
    telemetry::metrics,
};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use serde::Serialize;
use std::time::Instant;
use subtle::ConstantTimeEq;

/// What a path names.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Route<'a> {
    Live,
    Ready,
    Metrics,
    ListAll,
    List(&'a str),
    Sandbox(&'a str, &'a str),
    Policy(&'a str, &'a str),
    Tokens(&'a str),
    Token(&'a str, &'a str),
    /// Previews, their tokens, sessions (`super::previews`).
    Preview(super::previews::Route),
}

impl Route<'_> {
    fn parse(path: &str) -> Option<Route<'_>> {
        let rest = path.strip_prefix('/')?;
        let segments: Vec<&str> = rest.split('/').collect();
        Some(match segments.as_slice() {
            ["live"] => Route::Live,
            ["ready"] => Route::Ready,
            ["metrics"] => Route::Metrics,
            ["v1", "sandboxes"] => Route::ListAll,
            ["v1", "workspaces", ws, "sandboxes"] => Route::List(ws),
            ["v1", "workspaces", ws, "sandboxes", name] => Route::Sandbox(ws, name),
            ["v1", "workspaces", ws, "sandboxes", name, "policy"] => Route::Policy(ws, name),
            ["v1", "workspaces", ws, "tokens"] => Route::Tokens(ws),
            ["v1", "workspaces", ws, "tokens", name] => Route::Token(ws, name),
            _ => return super::previews::Route::parse(&segments).map(Route::Preview),
        })
    }

    fn methods(&self) -> &'static [Method] {
        match self {
            Route::Sandbox(..) => &[Method::GET, Method::PUT, Method::DELETE],
            Route::Tokens(..) => &[Method::GET, Method::POST],
            Route::Token(..) => &[Method::GET, Method::DELETE],
            Route::Preview(r) => r.methods(),
            _ => &[Method::GET],
        }
    }

    fn needs_token(&self) -> bool {
        !matches!(self, Route::Live | Route::Ready | Route::Metrics)
    }
}

/// Handles one request; never fails (errors are answered as JSON) and logs it.
pub async fn handle(app: &App, req: Request<Incoming>, require_token: bool) -> JsonResponse {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let response = match dispatch(app, req, require_token).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    };
    tracing::info!(
        target: "gateway::admin",
        method = %method,
        path = %path,
        status = response.status().as_u16(),
        duration_us = started.elapsed().as_micros() as u64,
        "admin request"
    );
    response
}

async fn dispatch(app: &App, req: Request<Incoming>, require_token: bool) -> Result<JsonResponse, ApiError> {
    let route = Route::parse(req.uri().path());
    // Authenticate before saying anything about paths.
    if require_token && route.as_ref().is_none_or(Route::needs_token) {
        authenticate(app, &req)?;
    }
    let Some(route) = route else {
        return Err(ApiError::new(ErrorCode::RouteNotFound, format!("no admin route for {}", req.uri().path())));
    };
    if !route.methods().contains(req.method()) {
        let allowed = allow(&route);
        let e = ApiError::new(
            ErrorCode::MethodNotAllowed,
            format!("{} is not allowed on {} (allowed: {allowed})", req.method(), req.uri().path()),
        );
        let mut r = error_response(&e);
        if let Ok(v) = HeaderValue::from_str(&allowed) {
            r.headers_mut().insert(header::ALLOW, v);
        }
        return Ok(r);
    }
    match (route, req.method().clone()) {
        (Route::Live, _) => json(
            StatusCode::OK,
            &serde_json::json!({"status": "live", "pid": std::process::id(), "version": env!("CARGO_PKG_VERSION")}),
        ),
        (Route::Ready, _) if app.is_ready() => json(StatusCode::OK, &serde_json::json!({"status": "ready"})),
        (Route::Ready, _) => json(StatusCode::SERVICE_UNAVAILABLE, &serde_json::json!({"status": "starting"})),
        (Route::Metrics, _) => Ok(metrics_response()),
        (Route::ListAll, _) => list(app, None),
        (Route::List(ws), _) => list(app, Some(ws)),
        (Route::Sandbox(ws, name), Method::GET) => {
            let sandbox = app.get(ws, name)?;
            json(StatusCode::OK, &app.view(&sandbox, None))
        }
        (Route::Sandbox(ws, name), Method::PUT) => {
            let (ws, name) = (ws.to_string(), name.to_string());
            let body = read_body(req, BODY_LIMIT).await?;
            let spec: SandboxSpec = parse_json(&body)?;
            let (sandbox, applied) = app.put_sandbox(&ws, &name, spec).await?;
            json(StatusCode::OK, &app.view(&sandbox, Some(applied)))
        }
        (Route::Sandbox(ws, name), Method::DELETE) => {
            app.delete_sandbox(ws, name).await?;
            Ok(no_content())
        }
        (Route::Policy(ws, name), _) => json(StatusCode::OK, &app.policy(ws, name).await?),
        (Route::Tokens(ws), Method::GET) => {
            #[derive(Serialize)]
            struct List {
                tokens: Vec<TokenView>,
            }
            json(StatusCode::OK, &List { tokens: app.list_tokens(ws)? })
        }
        (Route::Tokens(ws), Method::POST) => {
            let ws = ws.to_string();
            let body = read_body(req, BODY_LIMIT).await?;
            let request: TokenRequest = parse_json(&body)?;
            let created = app.create_token(&ws, request).await?;
            let mut r = json(StatusCode::CREATED, &created)?;
            // The secret is in this answer, and only in this one.
            r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            if let Ok(v) = HeaderValue::from_str(&format!("/v1/workspaces/{ws}/tokens/{}", created.name)) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            Ok(r)
        }
        (Route::Token(ws, name), Method::GET) => json(StatusCode::OK, &app.get_token(ws, name)?),
        (Route::Token(ws, name), Method::DELETE) => {
            app.revoke_token(ws, name).await?;
            Ok(no_content())
        }
        (Route::Preview(r), _) => super::previews::handle(app, r, req).await,
        (Route::Sandbox(..) | Route::Tokens(..) | Route::Token(..), _) => {
            Err(ApiError::new(ErrorCode::MethodNotAllowed, "method not allowed"))
        }
    }
}

/// `GET /metrics`: the Prometheus text exposition; the eBPF counters are read at this moment.
fn metrics_response() -> JsonResponse {
    let mut r = Response::new(Full::new(Bytes::from(metrics::global().encode())));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(metrics::CONTENT_TYPE));
    r
}

fn allow(route: &Route<'_>) -> String {
    route.methods().iter().map(Method::as_str).collect::<Vec<_>>().join(", ")
}

fn list(app: &App, workspace: Option<&str>) -> Result<JsonResponse, ApiError> {
    #[derive(Serialize)]
    struct List {
        sandboxes: Vec<SandboxView>,
    }
    let sandboxes = app.list(workspace)?.iter().map(|s| app.view(s, None)).collect();
    json(StatusCode::OK, &List { sandboxes })
}

/// Checks `Authorization: Bearer <admin.token>` in constant time.
fn authenticate(app: &App, req: &Request<Incoming>) -> Result<(), ApiError> {
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return Err(ApiError::new(
            ErrorCode::AuthenticationRequired,
            "the admin API needs `Authorization: Bearer <admin.token>`",
        ));
    };
    let failed = || ApiError::new(ErrorCode::AuthenticationFailed, "invalid admin token");
    let value = value.as_bytes();
    let token = match value.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => value[7..].trim_ascii(),
        _ => return Err(failed()),
    };
    let config = app.config();
    let expected = config.admin.token.as_bytes();
    if !expected.is_empty() && bool::from(token.ct_eq(expected)) { Ok(()) } else { Err(failed()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(Route::parse("/live"), Some(Route::Live));
        assert_eq!(Route::parse("/metrics"), Some(Route::Metrics));
        assert_eq!(Route::parse("/v1/workspaces/w/sandboxes"), Some(Route::List("w")));
        assert_eq!(Route::parse("/v1/workspaces/w/sandboxes/n"), Some(Route::Sandbox("w", "n")));
        assert_eq!(Route::parse("/v1/workspaces/w/sandboxes/n/policy"), Some(Route::Policy("w", "n")));
        assert_eq!(Route::parse("/v1/workspaces/w/sandboxes/"), Some(Route::Sandbox("w", "")));
        assert_eq!(Route::parse("/v1/workspaces/w/tokens"), Some(Route::Tokens("w")));
        assert_eq!(Route::parse("/v1/workspaces/w/tokens/ci"), Some(Route::Token("w", "ci")));
        assert_eq!(Route::parse("/v1/workspaces/w/tokens/ci/x"), None);
        assert_eq!(Route::parse("/v2"), None);
        assert_eq!(Route::parse("/v1/workspaces/w/sandboxes/n/x"), None);
    }
}
