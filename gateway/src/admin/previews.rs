//! `/v1` routes of previews, preview tokens and sessions:
//!
//! | route | methods |
//! | --- | --- |
//! | `/v1/workspaces/{ws}/sandboxes/{name}/previews` | GET → `{"previews": [...]}` |
//! | `/v1/workspaces/{ws}/sandboxes/{name}/previews/{preview}` | PUT (200, idempotent), GET, DELETE (204) |
//! | `…/previews/{preview}/tokens` | POST (201, the secret shown), GET → `{"tokens": [...]}` (no secrets) |
//! | `…/previews/{preview}/tokens/{token}` | GET, DELETE (204) |
//! | `/v1/workspaces/{ws}/sandboxes/{name}/sessions` | POST (201) |

use super::BODY_LIMIT;
use crate::{
    errors::{ApiError, ErrorCode},
    json_api::{JsonResponse, json, no_content, parse_json, parse_json_or_default, read_body},
    model::time,
    service::App,
    service::previews::{
        spec::{PreviewSpec, SessionSpec, TokenSpec},
        views::{PreviewTokenView, PreviewView},
    },
};
use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use serde::Serialize;

/// A preview route: (workspace, sandbox, …), owned (the request body is read after parsing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PreviewRoute {
    /// `…/previews`.
    List(String, String),
    /// `…/previews/{preview}`.
    One(String, String, String),
    /// `…/previews/{preview}/tokens`.
    Tokens(String, String, String),
    /// `…/previews/{preview}/tokens/{token}`.
    Token(String, String, String, String),
    /// `…/sessions`.
    Sessions(String, String),
}

impl PreviewRoute {
    /// Parses the path segments after `/`.
    pub fn parse(segments: &[&str]) -> Option<Self> {
        let s = |x: &str| x.to_string();
        Some(match *segments {
            ["v1", "workspaces", ws, "sandboxes", name, "previews"] => PreviewRoute::List(s(ws), s(name)),
            ["v1", "workspaces", ws, "sandboxes", name, "previews", p] => PreviewRoute::One(s(ws), s(name), s(p)),
            ["v1", "workspaces", ws, "sandboxes", name, "previews", p, "tokens"] => {
                PreviewRoute::Tokens(s(ws), s(name), s(p))
            }
            ["v1", "workspaces", ws, "sandboxes", name, "previews", p, "tokens", t] => {
                PreviewRoute::Token(s(ws), s(name), s(p), s(t))
            }
            ["v1", "workspaces", ws, "sandboxes", name, "sessions"] => PreviewRoute::Sessions(s(ws), s(name)),
            _ => return None,
        })
    }

    /// The methods it answers.
    pub fn methods(&self) -> &'static [Method] {
        match self {
            PreviewRoute::List(..) => &[Method::GET],
            PreviewRoute::One(..) => &[Method::GET, Method::PUT, Method::DELETE],
            PreviewRoute::Tokens(..) => &[Method::GET, Method::POST],
            PreviewRoute::Token(..) => &[Method::GET, Method::DELETE],
            PreviewRoute::Sessions(..) => &[Method::POST],
        }
    }
}

/// Handles a preview route (method already checked).
pub async fn handle(app: &App, route: PreviewRoute, req: Request<Incoming>) -> Result<JsonResponse, ApiError> {
    let method = req.method().clone();
    match (route, method) {
        (PreviewRoute::List(ws, name), _) => {
            #[derive(Serialize)]
            struct List {
                previews: Vec<PreviewView>,
            }
            let previews = app.list_previews(&ws, &name)?.iter().map(|p| app.preview_view(p)).collect();
            json(StatusCode::OK, &List { previews })
        }
        (PreviewRoute::One(ws, name, p), Method::GET) => {
            json(StatusCode::OK, &app.preview_view(&*app.get_preview(&ws, &name, &p)?))
        }
        (PreviewRoute::One(ws, name, p), Method::PUT) => {
            let spec: PreviewSpec = read_json(req).await?;
            let (preview, applied, _) = app.put_preview(&ws, &name, &p, &spec).await?;
            let mut view = app.preview_view(&preview);
            view.policy_applied_micros = Some(u64::try_from(applied.as_micros()).unwrap_or(u64::MAX));
            json(StatusCode::OK, &view)
        }
        (PreviewRoute::One(ws, name, p), _) => {
            app.delete_preview(&ws, &name, &p).await?;
            Ok(no_content())
        }
        (PreviewRoute::Tokens(ws, name, p), Method::POST) => {
            let spec: TokenSpec = read_json_or_empty(req).await?;
            let (_, token) = app.create_preview_token(&ws, &name, &p, &spec).await?;
            json(StatusCode::CREATED, &PreviewTokenView::created(&token, time::now()))
        }
        (PreviewRoute::Tokens(ws, name, p), _) => {
            #[derive(Serialize)]
            struct List {
                tokens: Vec<PreviewTokenView>,
            }
            let tokens = app.token_views(&app.list_preview_tokens(&ws, &name, &p)?);
            json(StatusCode::OK, &List { tokens })
        }
        (PreviewRoute::Token(ws, name, p, t), Method::GET) => {
            let tokens = app.list_preview_tokens(&ws, &name, &p)?;
            let token = tokens.iter().find(|x| x.name == t).ok_or_else(|| {
                ApiError::new(ErrorCode::TokenNotFound, format!("preview {p:?} has no token named {t:?}"))
            })?;
            json(StatusCode::OK, &PreviewTokenView::listed(token, time::now()))
        }
        (PreviewRoute::Token(ws, name, p, t), _) => {
            app.revoke_preview_token(&ws, &name, &p, &t).await?;
            Ok(no_content())
        }
        (PreviewRoute::Sessions(ws, name), _) => {
            let spec: SessionSpec = read_json_or_empty(req).await?;
            let session = app.create_session(&ws, &name, &spec).await?;
            json(StatusCode::CREATED, &app.session_view(&session))
        }
    }
}

/// Reads a JSON body; an empty body means the type's default.
async fn read_json_or_empty<T: serde::de::DeserializeOwned + Default>(req: Request<Incoming>) -> Result<T, ApiError> {
    parse_json_or_default(&read_body(req, BODY_LIMIT).await?)
}

/// Reads a JSON body.
async fn read_json<T: serde::de::DeserializeOwned>(req: Request<Incoming>) -> Result<T, ApiError> {
    parse_json(&read_body(req, BODY_LIMIT).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let p = |path: &'static str| PreviewRoute::parse(&path.split('/').skip(1).collect::<Vec<_>>());
        let s = |x: &str| x.to_string();
        assert_eq!(p("/v1/workspaces/w/sandboxes/s/previews"), Some(PreviewRoute::List(s("w"), s("s"))));
        assert_eq!(p("/v1/workspaces/w/sandboxes/s/previews/p"), Some(PreviewRoute::One(s("w"), s("s"), s("p"))));
        assert_eq!(
            p("/v1/workspaces/w/sandboxes/s/previews/p/tokens"),
            Some(PreviewRoute::Tokens(s("w"), s("s"), s("p")))
        );
        assert_eq!(
            p("/v1/workspaces/w/sandboxes/s/previews/p/tokens/t"),
            Some(PreviewRoute::Token(s("w"), s("s"), s("p"), s("t")))
        );
        assert_eq!(p("/v1/workspaces/w/sandboxes/s/sessions"), Some(PreviewRoute::Sessions(s("w"), s("s"))));
        assert_eq!(p("/v1/workspaces/w/sandboxes/s/previews/p/x"), None);
    }
}
