//! Sandboxes, their declared ports, and the workspace access tokens: what the platform
//! registered.

use super::is_dns_label;
use crate::errors::{ApiError, ErrorCode};
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// How the gateway speaks to a declared port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "UPPERCASE")]
pub enum PortProtocol {
    /// HTTP/1.1 (the default).
    #[default]
    Http,
    /// HTTP/2 cleartext (h2c) upstream.
    Http2,
    /// gRPC: h2c upstream.
    Grpc,
    /// Raw TCP: reached through a `connect-tcp` tunnel (`gateway tunnel`); a plain HTTP
    /// request to it is still proxied as HTTP/1.1.
    Tcp,
    /// TLS the app terminates itself: opaque bytes, reached through a `connect-tcp` tunnel only.
    Tls,
}

/// A port declared when the sandbox was registered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSpec {
    /// The port inside the sandbox.
    pub target: u16,
    /// How to speak to it.
    #[serde(default)]
    pub protocol: PortProtocol,
}

/// What a public TCP port sends the app before the client's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    /// Nothing: the app sees the gateway's address as the peer.
    #[default]
    Off,
    /// A PROXY protocol v2 header with the client's address and port.
    V2,
}

/// A declared port's public TCP endpoint: `public_port` of the host, open to `allow_from`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Exposure {
    /// The port inside the sandbox (a declared `TCP` or `TLS` port).
    pub target: u16,
    /// The host port assigned from `l4.port_range`.
    pub public_port: u16,
    /// Source networks allowed to connect (never empty; `0.0.0.0/0` for everyone).
    pub allow_from: Vec<ipnet::Ipv4Net>,
    /// Whether the app is sent a PROXY protocol header first.
    #[serde(default)]
    pub proxy_protocol: ProxyProtocol,
}

impl Exposure {
    /// Whether `source` may connect.
    pub fn allows(&self, source: Ipv4Addr) -> bool {
        self.allow_from.iter().any(|net| net.contains(&source))
    }
}

/// A public port given back (its port removed, unexposed, or its sandbox deleted): held back
/// from every other (workspace, sandbox, port) until `until_ms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReleasedPort {
    pub public_port: u16,
    pub workspace: String,
    pub name: String,
    /// The port inside the sandbox it led to.
    pub target: u16,
    /// Unix milliseconds.
    pub until_ms: i64,
}

/// A registered sandbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sandbox {
    /// Workspace it belongs to.
    pub workspace: String,
    /// Its name within the workspace.
    pub name: String,
    /// Its private address behind `interface`.
    pub address: Ipv4Addr,
    /// The host-side interface (tap/veth) leading to it.
    pub interface: String,
    /// Declared ports, sorted by `target`, unique.
    pub ports: Vec<PortSpec>,
    /// The fleet host that runs it (`fleet.host` of the gateway it was registered on); `None`
    /// on a single host. Only its owner programs its kernel policy and connects to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Its public TCP ports, sorted by `target`, one per exposed declared port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exposed: Vec<Exposure>,
}

impl Sandbox {
    /// The host label `sbx-{name}-{workspace}`, lower-case: the key of exact route lookup.
    pub fn label(&self) -> String {
        sandbox_label(&self.name, &self.workspace)
    }

    /// The exposure of declared port `target`, if it has one.
    pub fn exposure(&self, target: u16) -> Option<&Exposure> {
        self.exposed.iter().find(|e| e.target == target)
    }
}

/// `sbx-{name}-{workspace}`, lower-case.
pub fn sandbox_label(name: &str, workspace: &str) -> String {
    format!("sbx-{name}-{workspace}").to_ascii_lowercase()
}

/// Checks a workspace and a sandbox name, and the host label they make.
pub fn validate_names(workspace: &str, name: &str) -> Result<(), ApiError> {
    for (what, value) in [("workspace", workspace), ("sandbox name", name)] {
        if !is_dns_label(value) {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                format!(
                    "invalid {what} {value:?}: use 1 to 63 characters among lower-case a-z, 0-9 and '-', not starting or ending with '-'"
                ),
            ));
        }
    }
    let label = sandbox_label(name, workspace);
    if label.len() > 63 {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!(
                "the host label {label:?} is {} characters long; sbx-{{name}}-{{workspace}} must fit in 63",
                label.len()
            ),
        ));
    }
    Ok(())
}

/// The identity of a sandbox: (workspace, name).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SandboxId {
    pub workspace: String,
    /// Name within the workspace.
    pub name: String,
}

impl SandboxId {
    /// A new id.
    pub fn new(workspace: impl Into<String>, name: impl Into<String>) -> Self {
        Self { workspace: workspace.into(), name: name.into() }
    }
}

impl std::fmt::Display for SandboxId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.workspace, self.name)
    }
}

impl Sandbox {
    /// Its (workspace, name).
    pub fn id(&self) -> SandboxId {
        SandboxId::new(self.workspace.clone(), self.name.clone())
    }
}

/// A workspace access token as stored: its SHA-256, never the secret itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessToken {
    /// Workspace whose sandboxes it opens.
    pub workspace: String,
    /// Its name within the workspace (safe to log and show).
    pub name: String,
    /// SHA-256 of the secret, hex in the file.
    #[serde(with = "hex")]
    pub secret_sha256: [u8; 32],
    /// When it was created (UTC).
    #[serde(with = "crate::model::time::serde_ts")]
    pub created_at: time::OffsetDateTime,
    /// When it stops working (UTC, whole milliseconds); `None`: until revoked.
    #[serde(with = "crate::model::time::serde_ts::option", default)]
    pub expires_at: Option<time::OffsetDateTime>,
}

impl AccessToken {
    /// Its (workspace, name).
    pub fn id(&self) -> TokenId {
        TokenId { workspace: self.workspace.clone(), name: self.name.clone() }
    }

    /// Whether it has expired at `now` (an expiry instant is already too late).
    pub fn is_expired(&self, now: time::OffsetDateTime) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

/// The identity of an access token: (workspace, name).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenId {
    pub workspace: String,
    /// Name within the workspace.
    pub name: String,
}

impl TokenId {
    /// A new id.
    pub fn new(workspace: impl Into<String>, name: impl Into<String>) -> Self {
        Self { workspace: workspace.into(), name: name.into() }
    }
}

impl std::fmt::Display for TokenId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.workspace, self.name)
    }
}
