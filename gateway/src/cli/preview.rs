//! `gateway preview …`, `gateway preview-token …`, `gateway session create`: admin API clients
//! for previews, their tokens and sessions.

use super::{
    AdminArgs, Output,
    client::AdminClient,
    output::{columns, report_error, text},
};
use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use http::{Method, StatusCode};
use serde_json::{Map, Value, json};

/// A sandbox's preview by workspace, sandbox and name.
#[derive(Debug, Args, Clone)]
pub struct PreviewRef {
    /// Workspace.
    ///
    /// Example: --workspace acme
    #[arg(long, short = 'w', value_name = "WS")]
    pub workspace: String,
    /// Sandbox name.
    ///
    /// Example: --sandbox my-sandbox
    #[arg(long, short = 's', value_name = "SANDBOX")]
    pub sandbox: String,
    /// Preview name.
    ///
    /// Example: web
    #[arg(value_name = "PREVIEW")]
    pub name: String,
}

/// A sandbox by workspace and name, as flags.
#[derive(Debug, Args, Clone)]
pub struct SandboxFlags {
    /// Workspace.
    ///
    /// Example: --workspace acme
    #[arg(long, short = 'w', value_name = "WS")]
    pub workspace: String,
    /// Sandbox name.
    ///
    /// Example: --sandbox my-sandbox
    #[arg(long, short = 's', value_name = "SANDBOX")]
    pub sandbox: String,
}

/// Lifetime flags: `--ttl` or `--expires-at`.
#[derive(Debug, Args, Clone, Default)]
pub struct Lifetime {
    /// Lifetime from now (humantime).
    ///
    /// Example: --ttl 24h
    #[arg(long, value_name = "DURATION", conflicts_with = "expires_at")]
    pub ttl: Option<String>,
    /// Expiry, RFC 3339 (no offset = UTC).
    ///
    /// Example: --expires-at 2030-01-31T12:00:00Z
    #[arg(long, value_name = "TIMESTAMP")]
    pub expires_at: Option<String>,
}

/// `gateway preview …`.
#[derive(Debug, Subcommand)]
pub enum PreviewCommand {
    /// Create a preview, or replace it (idempotent PUT): a URL for one sandbox port.
    Create {
        /// Which preview.
        #[command(flatten)]
        preview: PreviewRef,
        /// Target port inside the sandbox (443 = the sandbox API; 80 and 8080 are refused).
        ///
        /// Example: --port 3000
        #[arg(long, value_name = "PORT")]
        port: i64,
        /// No token needed to use it.
        ///
        /// Example: --public
        #[arg(long)]
        public: bool,
        /// Readable URL: the host label becomes PREFIX-WORKSPACE.
        ///
        /// Example: --prefix-url shop
        #[arg(long, value_name = "PREFIX")]
        prefix_url: Option<String>,
        /// A header added to every request to the app, `NAME:VALUE`; repeatable.
        ///
        /// Example: --request-header 'Authorization:Bearer app-secret'
        #[arg(long = "request-header", value_name = "NAME:VALUE")]
        request_headers: Vec<String>,
        /// A header added to every response unless the app sets it, `NAME:VALUE`; repeatable.
        ///
        /// Example: --response-header 'Access-Control-Allow-Origin:*'
        #[arg(long = "response-header", value_name = "NAME:VALUE")]
        response_headers: Vec<String>,
        /// When it expires.
        #[command(flatten)]
        lifetime: Lifetime,
        /// Admin API access.
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List a sandbox's previews.
    List {
        /// Which sandbox.
        #[command(flatten)]
        sandbox: SandboxFlags,
        /// Admin API access.
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Show one preview.
    Get {
        /// Which preview.
        #[command(flatten)]
        preview: PreviewRef,
        /// Admin API access.
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Delete a preview and its tokens; its port closes unless declared or used by another.
    Delete {
        /// Which preview.
        #[command(flatten)]
        preview: PreviewRef,
        /// Admin API access.
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// `gateway preview-token …`.
#[derive(Debug, Subcommand)]
pub enum PreviewTokenCommand {
    /// Create a token for a private preview; the secret is shown once here.
    Create {
        /// Which preview.
        #[command(flatten)]
        preview: PreviewRef,
        /// Token name (default: generated).
        ///
        /// Example: --name ci
        #[arg(long = "name", value_name = "NAME")]
        token_name: Option<String>,
        /// When it expires (default 24 h, never after the preview).
        #[command(flatten)]
        lifetime: Lifetime,
        /// Admin API access.
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List a preview's tokens (names and expiry, no secrets).
    List {
        /// Which preview.
        #[command(flatten)]
        preview: PreviewRef,
        /// Admin API access.
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Revoke a token by name: it stops working at once.
    Revoke {
        /// Which preview.
        #[command(flatten)]
        preview: PreviewRef,
        /// Token name.
        ///
        /// Example: --name ci
        #[arg(long = "name", value_name = "NAME")]
        token_name: String,
        /// Admin API access.
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// `gateway session …`.
#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// Create a session: a private preview of the sandbox API plus one token (default 24 h).
    Create {
        /// Which sandbox.
        #[command(flatten)]
        sandbox: SandboxFlags,
        /// When it expires.
        #[command(flatten)]
        lifetime: Lifetime,
        /// Admin API access.
        #[command(flatten)]
        admin: AdminArgs,
    },
}

fn base(workspace: &str, sandbox: &str) -> String {
    format!("/v1/workspaces/{workspace}/sandboxes/{sandbox}")
}

fn preview_path(p: &PreviewRef) -> String {
    format!("{}/previews/{}", base(&p.workspace, &p.sandbox), p.name)
}

/// `NAME:VALUE` pairs as a JSON object.
fn headers(pairs: &[String], flag: &str) -> anyhow::Result<Option<Value>> {
    if pairs.is_empty() {
        return Ok(None);
    }
    let mut map = Map::new();
    for pair in pairs {
        let Some((name, value)) = pair.split_once(':') else {
            bail!("{flag} {pair:?}: expected NAME:VALUE, e.g. 'Access-Control-Allow-Origin:*'");
        };
        map.insert(name.trim().to_string(), Value::String(value.trim().to_string()));
    }
    Ok(Some(Value::Object(map)))
}

fn lifetime(body: &mut Map<String, Value>, l: &Lifetime) {
    if let Some(ttl) = &l.ttl {
        body.insert("ttl".into(), json!(ttl));
    }
    if let Some(at) = &l.expires_at {
        body.insert("expiresAt".into(), json!(at));
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Preview,
    Previews,
    Token,
    Tokens,
    Session,
    Deleted,
}

struct Call {
    admin: AdminArgs,
    method: Method,
    path: String,
    body: Option<Value>,
    kind: Kind,
}

/// Runs `gateway preview …`.
pub(super) fn run_preview(command: PreviewCommand) -> anyhow::Result<u8> {
    let call = match command {
        PreviewCommand::Create {
            preview,
            port,
            public,
            prefix_url,
            request_headers,
            response_headers,
            lifetime: l,
            admin,
        } => {
            let mut body = Map::new();
            body.insert("port".into(), json!(port));
            body.insert("public".into(), json!(public));
            if let Some(p) = prefix_url {
                body.insert("prefixUrl".into(), json!(p));
            }
            if let Some(h) = headers(&request_headers, "--request-header")? {
                body.insert("requestHeaders".into(), h);
            }
            if let Some(h) = headers(&response_headers, "--response-header")? {
                body.insert("responseHeaders".into(), h);
            }
            lifetime(&mut body, &l);
            Call {
                admin,
                method: Method::PUT,
                path: preview_path(&preview),
                body: Some(Value::Object(body)),
                kind: Kind::Preview,
            }
        }
        PreviewCommand::List { sandbox, admin } => Call {
            admin,
            method: Method::GET,
            path: format!("{}/previews", base(&sandbox.workspace, &sandbox.sandbox)),
            body: None,
            kind: Kind::Previews,
        },
        PreviewCommand::Get { preview, admin } => {
            Call { admin, method: Method::GET, path: preview_path(&preview), body: None, kind: Kind::Preview }
        }
        PreviewCommand::Delete { preview, admin } => {
            Call { admin, method: Method::DELETE, path: preview_path(&preview), body: None, kind: Kind::Deleted }
        }
    };
    execute(call)
}

/// Runs `gateway preview-token …`.
pub(super) fn run_token(command: PreviewTokenCommand) -> anyhow::Result<u8> {
    let call = match command {
        PreviewTokenCommand::Create { preview, token_name, lifetime: l, admin } => {
            let mut body = Map::new();
            if let Some(n) = token_name {
                body.insert("name".into(), json!(n));
            }
            lifetime(&mut body, &l);
            Call {
                admin,
                method: Method::POST,
                path: format!("{}/tokens", preview_path(&preview)),
                body: Some(Value::Object(body)),
                kind: Kind::Token,
            }
        }
        PreviewTokenCommand::List { preview, admin } => Call {
            admin,
            method: Method::GET,
            path: format!("{}/tokens", preview_path(&preview)),
            body: None,
            kind: Kind::Tokens,
        },
        PreviewTokenCommand::Revoke { preview, token_name, admin } => Call {
            admin,
            method: Method::DELETE,
            path: format!("{}/tokens/{token_name}", preview_path(&preview)),
            body: None,
            kind: Kind::Deleted,
        },
    };
    execute(call)
}

/// Runs `gateway session …`.
pub(super) fn run_session(command: SessionCommand) -> anyhow::Result<u8> {
    let SessionCommand::Create { sandbox, lifetime: l, admin } = command;
    let mut body = Map::new();
    lifetime(&mut body, &l);
    execute(Call {
        admin,
        method: Method::POST,
        path: format!("{}/sessions", base(&sandbox.workspace, &sandbox.sandbox)),
        body: Some(Value::Object(body)),
        kind: Kind::Session,
    })
}

fn execute(call: Call) -> anyhow::Result<u8> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let client = AdminClient::from_args(&call.admin)?;
        let body = call.body.map(|b| serde_json::to_vec(&b)).transpose()?;
        let (status, answer) = client.request(call.method, &call.path, body).await?;
        if !status.is_success() {
            report_error(status, &answer);
            return Ok(1);
        }
        if status == StatusCode::NO_CONTENT {
            if call.admin.output == Output::Table {
                println!("deleted");
            }
            return Ok(0);
        }
        let value: Value =
            serde_json::from_slice(&answer).context("the admin API answered something that is not JSON")?;
        match call.admin.output {
            Output::Json => println!("{}", serde_json::to_string_pretty(&value)?),
            Output::Table => print!("{}", table(call.kind, &value)),
        }
        Ok(0)
    })
}

fn expiry(v: &Value) -> String {
    match v.get("expiresAt") {
        Some(Value::String(s)) => s.clone(),
        _ => "never".into(),
    }
}

fn table(kind: Kind, v: &Value) -> String {
    let rows_of = |list: &Value, f: &dyn Fn(&Value) -> Vec<String>| -> Vec<Vec<String>> {
        list.as_array().map(|l| l.iter().map(f).collect()).unwrap_or_default()
    };
    match kind {
        Kind::Preview => {
            let mut rows = vec![
                vec![
                    "preview".into(),
                    format!("{}/{}/{}", text(&v["workspace"]), text(&v["sandbox"]), text(&v["name"])),
                ],
                vec!["url".into(), text(&v["url"])],
                vec!["port".into(), text(&v["port"])],
                vec!["public".into(), text(&v["public"])],
                vec!["expires".into(), expiry(v)],
                vec!["tokens".into(), text(&v["tokens"])],
            ];
            if let Some(us) = v.get("policyAppliedMicros") {
                rows.push(vec!["policy applied in".into(), format!("{} µs", text(us))]);
            }
            columns(&[], &rows)
        }
        Kind::Previews => columns(
            &["NAME", "PORT", "PUBLIC", "EXPIRES", "TOKENS", "URL"],
            &rows_of(&v["previews"], &|p| {
                vec![
                    text(&p["name"]),
                    text(&p["port"]),
                    text(&p["public"]),
                    expiry(p),
                    text(&p["tokens"]),
                    text(&p["url"]),
                ]
            }),
        ),
        Kind::Token => columns(
            &[],
            &[
                vec!["name".into(), text(&v["name"])],
                vec!["token".into(), text(&v["token"])],
                vec!["expires".into(), expiry(v)],
            ],
        ),
        Kind::Tokens => columns(
            &["NAME", "EXPIRES", "EXPIRED"],
            &rows_of(&v["tokens"], &|t| vec![text(&t["name"]), expiry(t), text(&t["expired"])]),
        ),
        Kind::Session => columns(
            &[],
            &[
                vec!["session".into(), text(&v["name"])],
                vec!["url".into(), text(&v["url"])],
                vec!["token".into(), text(&v["token"])],
                vec!["expires".into(), expiry(v)],
            ],
        ),
        Kind::Deleted => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_pairs() {
        let h = headers(&["A: 1".into(), "Access-Control-Allow-Origin:*".into()], "--x").expect("ok");
        assert_eq!(h, Some(json!({"A": "1", "Access-Control-Allow-Origin": "*"})));
        assert!(headers(&["nocolon".into()], "--x").is_err());
        assert_eq!(headers(&[], "--x").expect("ok"), None);
    }
}
