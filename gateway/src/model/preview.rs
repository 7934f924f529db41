//! The durable preview model: a preview and its tokens, stored together in one record so a
//! token can never outlive its preview (deleting the record deletes them all at once).

use super::time::{Timestamp, serde_ts};
use crate::model::sandbox::SandboxId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The port meaning "the sandbox API" (8080 inside the sandbox).
pub const API_PREVIEW_PORT: u16 = 443;

/// Identity of a preview: (workspace, sandbox, preview name).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PreviewKey {
    pub workspace: String,
    /// Sandbox name.
    pub sandbox: String,
    /// Preview name.
    pub name: String,
}

impl PreviewKey {
    /// A new key.
    pub fn new(workspace: impl Into<String>, sandbox: impl Into<String>, name: impl Into<String>) -> Self {
        Self { workspace: workspace.into(), sandbox: sandbox.into(), name: name.into() }
    }
    /// The sandbox it belongs to.
    pub fn sandbox_id(&self) -> SandboxId {
        SandboxId::new(self.workspace.clone(), self.sandbox.clone())
    }
}

impl std::fmt::Display for PreviewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.workspace, self.sandbox, self.name)
    }
}

/// A preview: one (sandbox, port) reachable at `https://{id}.{region}.preview.{domain}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Preview {
    pub workspace: String,
    /// Sandbox name.
    pub sandbox: String,
    /// Preview name (unique per sandbox).
    pub name: String,
    /// Host label: derived (16 base32 characters) or `{prefixUrl}-{workspace}`.
    pub id: String,
    /// Target port inside the sandbox; 443 means the sandbox API (8080).
    pub port: u16,
    /// No token needed.
    pub public: bool,
    /// The readable id prefix, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_url: Option<String>,
    /// Added to every upstream request (lower-case names; they win over the client's).
    #[serde(default)]
    pub request_headers: BTreeMap<String, String>,
    /// Added to every response unless the app set the same header.
    #[serde(default)]
    pub response_headers: BTreeMap<String, String>,
    /// The lifetime as given (`"24h"`), informational.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// When it stops answering and is reaped; `None` = never.
    #[serde(default, with = "serde_ts::option")]
    pub expires_at: Option<Timestamp>,
    /// When it was first created (kept across replacement).
    #[serde(with = "serde_ts")]
    pub created_at: Timestamp,
    /// Its tokens (private previews), sorted by name.
    #[serde(default)]
    pub tokens: Vec<PreviewToken>,
}

impl Preview {
    pub fn key(&self) -> PreviewKey {
        PreviewKey::new(self.workspace.clone(), self.sandbox.clone(), self.name.clone())
    }
    /// Its sandbox.
    pub fn sandbox_id(&self) -> SandboxId {
        SandboxId::new(self.workspace.clone(), self.sandbox.clone())
    }
    /// Whether it has expired at `now`.
    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }
    /// Whether it targets the sandbox API (port 443 → 8080 inside).
    pub fn is_sandbox_api(&self) -> bool {
        self.port == API_PREVIEW_PORT
    }
    /// The kernel port it holds open, if any (none for the sandbox API, which is built in).
    pub fn kernel_port(&self) -> Option<u16> {
        (!self.is_sandbox_api()).then_some(self.port)
    }
}

/// A preview token. The secret is stored because the Blaxel API lists it (its SDK's
/// `sessions.list` and `tokens.create_if_expired` read it back); the state directory is 0700
/// and its files 0600. It is compared by SHA-256 digest in constant time, and never logged.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PreviewToken {
    /// Name, unique within the preview.
    pub name: String,
    /// The secret.
    pub token: String,
    /// When it stops working (never after its preview).
    #[serde(with = "serde_ts")]
    pub expires_at: Timestamp,
    /// When it was created.
    #[serde(with = "serde_ts")]
    pub created_at: Timestamp,
}

impl PreviewToken {
    /// Whether it has expired at `now`.
    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.expires_at <= now
    }
}

impl std::fmt::Debug for PreviewToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreviewToken")
            .field("name", &self.name)
            .field("token", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}
