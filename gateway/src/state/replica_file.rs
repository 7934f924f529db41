//! A fleet member's copy of its replica under `state.dir` ([`crate::paths::FLEET_REPLICA_FILE`]):
//! what a gateway started while etcd cannot be reached serves, so that an outage of etcd never
//! stops a restarted gateway. Written whole (temporary file, fsync, rename) at most once per
//! second while the replica changes; read only when etcd cannot be.

use super::{StateSnapshot, StoreError, file_store::write_atomic};
use crate::model::{
    fleet::FleetHost,
    preview::Preview,
    sandbox::{AccessToken, Sandbox},
};
use serde::{Deserialize, Serialize};
use std::{collections::BTreeMap, path::Path};

const VERSION: u32 = 1;

/// The saved replica.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplicaFile {
    version: u32,
    /// The fleet's key prefix: a copy of another fleet's state is never loaded.
    pub prefix: String,
    /// The revision the replica had reached.
    pub revision: i64,
    /// When etcd last confirmed it (Unix milliseconds).
    pub confirmed_at_ms: i64,
    /// Every key the replica holds, with the revision of its last change.
    pub keys: Vec<(String, i64)>,
    /// The fleet's secrets, hex (the preview id key: preview URLs stay the same).
    pub secrets: BTreeMap<String, String>,
    pub sandboxes: Vec<Sandbox>,
    pub tokens: Vec<AccessToken>,
    pub previews: Vec<Preview>,
    pub hosts: Vec<FleetHost>,
}

impl ReplicaFile {
    /// A replica to save.
    pub fn new(prefix: &str, revision: i64, confirmed_at_ms: i64, keys: Vec<(String, i64)>) -> Self {
        Self {
            version: VERSION,
            prefix: prefix.to_string(),
            revision,
            confirmed_at_ms,
            keys,
            secrets: BTreeMap::new(),
            sandboxes: Vec::new(),
            tokens: Vec::new(),
            previews: Vec::new(),
            hosts: Vec::new(),
        }
    }

    /// With the records of `snapshot`.
    pub fn with(mut self, snapshot: StateSnapshot) -> Self {
        self.sandboxes = snapshot.sandboxes;
        self.tokens = snapshot.tokens;
        self.previews = snapshot.previews;
        self.hosts = snapshot.hosts;
        self
    }

    /// The records.
    pub fn snapshot(&self) -> StateSnapshot {
        StateSnapshot {
            sandboxes: self.sandboxes.clone(),
            tokens: self.tokens.clone(),
            previews: self.previews.clone(),
            hosts: self.hosts.clone(),
        }
    }

    /// Writes it to `path`, atomically and durably.
    pub fn write(&self, path: &Path) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(self).map_err(|e| StoreError::Task(format!("encoding the replica: {e}")))?;
        let (dir, name) = match (path.parent(), path.file_name().and_then(|n| n.to_str())) {
            (Some(dir), Some(name)) => (dir, name),
            _ => return Err(StoreError::Task(format!("{} cannot hold the replica", path.display()))),
        };
        write_atomic(dir, name, &bytes)
    }

    /// Reads the replica saved at `path` for the fleet of `prefix`.
    pub fn read(path: &Path, prefix: &str) -> Result<Self, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt { path: path.to_path_buf(), reason };
        let bytes = std::fs::read(path).map_err(|source| StoreError::Io {
            context: "reading the saved replica",
            path: path.to_path_buf(),
            source,
        })?;
        let file: Self = serde_json::from_slice(&bytes).map_err(|e| corrupt(format!("not a saved replica: {e}")))?;
        if file.version != VERSION {
            return Err(corrupt(format!("replica version {} (this gateway reads {VERSION})", file.version)));
        }
        if file.prefix != prefix {
            return Err(corrupt(format!("the replica of fleet prefix {:?}, not {prefix:?}", file.prefix)));
        }
        Ok(file)
    }
}
