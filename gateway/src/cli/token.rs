//! `gateway token create|list|revoke`: clients of the admin API's workspace access tokens.

use super::{
    AdminArgs, Output,
    output::{call, columns, text},
};
use clap::Subcommand;
use http::Method;
use serde_json::{Value, json};

/// `gateway token …`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a workspace access token; its secret is printed once and never again.
    Create {
        /// Workspace whose sandboxes the token opens.
        ///
        /// Example: acme
        #[arg(value_name = "WORKSPACE")]
        workspace: String,
        /// Token name (lower-case letters, digits and '-'); shown in lists and logs.
        ///
        /// Example: ci
        #[arg(value_name = "NAME")]
        name: String,
        /// Expiry, RFC 3339 (`Z`, an offset, or none for UTC); default: valid until revoked.
        ///
        /// Example: --expires-at 2030-01-02T03:04:05Z
        #[arg(long, value_name = "TIME", conflicts_with = "ttl")]
        expires_at: Option<String>,
        /// Lifetime instead of --expires-at.
        ///
        /// Example: --ttl 24h
        #[arg(long, value_name = "DURATION")]
        ttl: Option<String>,
        /// Admin API access.
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List a workspace's tokens (never their secrets), with whether each has expired.
    List {
        /// Workspace.
        ///
        /// Example: acme
        #[arg(value_name = "WORKSPACE")]
        workspace: String,
        /// Admin API access.
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Revoke a token: the next request that presents it is refused.
    Revoke {
        /// Workspace.
        ///
        /// Example: acme
        #[arg(value_name = "WORKSPACE")]
        workspace: String,
        /// Token name.
        ///
        /// Example: ci
        #[arg(value_name = "NAME")]
        name: String,
        /// Admin API access.
        #[command(flatten)]
        admin: AdminArgs,
    },
}

pub(super) fn run(command: TokenCommand) -> anyhow::Result<u8> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(run_async(command))
}

async fn run_async(command: TokenCommand) -> anyhow::Result<u8> {
    match command {
        TokenCommand::Create { workspace, name, expires_at, ttl, admin } => {
            let mut body = json!({"name": name});
            if let Some(at) = expires_at {
                body["expiresAt"] = json!(at);
            }
            if let Some(ttl) = ttl {
                body["ttl"] = json!(ttl);
            }
            let path = format!("/v1/workspaces/{workspace}/tokens");
            let code = call(&admin, Method::POST, &path, Some(serde_json::to_vec(&body)?), "", created_table).await?;
            if code == 0 && admin.output == Output::Table {
                eprintln!("Keep the token now: it is not shown again. Use it with `GATEWAY_TOKEN=… gateway fetch`.");
            }
            Ok(code)
        }
        TokenCommand::List { workspace, admin } => {
            call(&admin, Method::GET, &format!("/v1/workspaces/{workspace}/tokens"), None, "", list_table).await
        }
        TokenCommand::Revoke { workspace, name, admin } => {
            let path = format!("/v1/workspaces/{workspace}/tokens/{name}");
            call(&admin, Method::DELETE, &path, None, "revoked", |_| String::new()).await
        }
    }
}

fn expiry(v: &Value) -> String {
    if v.is_null() { "never".into() } else { text(v) }
}

fn created_table(v: &Value) -> String {
    let rows = vec![
        vec!["token".into(), text(&v["token"])],
        vec!["workspace".into(), text(&v["workspace"])],
        vec!["name".into(), text(&v["name"])],
        vec!["created".into(), text(&v["createdAt"])],
        vec!["expires".into(), expiry(&v["expiresAt"])],
    ];
    columns(&[], &rows)
}

fn list_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v["tokens"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|t| {
                    let status = if t["expired"].as_bool() == Some(true) { "expired" } else { "active" };
                    vec![text(&t["name"]), text(&t["createdAt"]), expiry(&t["expiresAt"]), status.into()]
                })
                .collect()
        })
        .unwrap_or_default();
    columns(&["NAME", "CREATED", "EXPIRES", "STATUS"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables() {
        let v = json!({"tokens": [
            {"name": "ci", "workspace": "acme", "createdAt": "2030-01-01T00:00:00Z", "expiresAt": null, "expired": false},
            {"name": "old", "workspace": "acme", "createdAt": "2030-01-01T00:00:00Z", "expiresAt": "2030-01-02T00:00:00Z", "expired": true},
        ]});
        assert_eq!(
            list_table(&v),
            "NAME  CREATED               EXPIRES               STATUS\n\
             ci    2030-01-01T00:00:00Z  never                 active\n\
             old   2030-01-01T00:00:00Z  2030-01-02T00:00:00Z  expired\n"
        );
        let created = created_table(
            &json!({"token": "gw_x", "workspace": "acme", "name": "ci", "createdAt": "t", "expiresAt": null}),
        );
        assert!(created.starts_with("token      gw_x\n"), "{created}");
        assert!(created.contains("expires    never"), "{created}");
    }
}
