//! The in-memory index of previews: by key (workspace, sandbox, name) and by host label (id).

use crate::model::FastMap;
use crate::model::preview::{Preview, PreviewKey};
use crate::model::sandbox::SandboxId;
use crate::model::time::Timestamp;
use std::{collections::BTreeMap, sync::Arc};

/// Previews by key and by id. Expired previews stay here until the reaper deletes them; every
/// lookup that serves traffic filters them out.
#[derive(Default)]
pub struct PreviewIndex {
    by_key: BTreeMap<PreviewKey, Arc<Preview>>,
    by_id: FastMap<String, Arc<Preview>>,
}

impl PreviewIndex {
    /// Inserts or replaces (by key); the old id, if different, is released.
    pub fn insert(&mut self, preview: Arc<Preview>) {
        if let Some(old) = self.by_key.insert(preview.key(), preview.clone())
            && old.id != preview.id
        {
            self.by_id.remove(&old.id);
        }
        self.by_id.insert(preview.id.clone(), preview);
    }

    /// Removes by key.
    pub fn remove(&mut self, key: &PreviewKey) -> Option<Arc<Preview>> {
        let old = self.by_key.remove(key)?;
        if self.by_id.get(&old.id).is_some_and(|p| p.key() == *key) {
            self.by_id.remove(&old.id);
        }
        Some(old)
    }

    /// By key, expired or not.
    pub fn get(&self, key: &PreviewKey) -> Option<&Arc<Preview>> {
        self.by_key.get(key)
    }

    /// By host label, expired or not.
    pub fn by_id(&self, id: &str) -> Option<&Arc<Preview>> {
        self.by_id.get(id)
    }

    /// Every preview of a sandbox, expired or not, sorted by name.
    pub fn of<'a>(&'a self, sandbox: &'a SandboxId) -> impl Iterator<Item = &'a Arc<Preview>> + 'a {
        let start = PreviewKey::new(sandbox.workspace.clone(), sandbox.name.clone(), String::new());
        self.by_key
            .range(start..)
            .take_while(move |(k, _)| k.workspace == sandbox.workspace && k.sandbox == sandbox.name)
            .map(|(_, p)| p)
    }

    /// The live (unexpired at `now`) previews of a sandbox.
    pub fn live_of<'a>(&'a self, sandbox: &'a SandboxId, now: Timestamp) -> impl Iterator<Item = &'a Preview> + 'a {
        self.of(sandbox).filter(move |p| !p.is_expired(now)).map(|p| p.as_ref())
    }

    /// Every preview.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Preview>> {
        self.by_key.values()
    }

    /// The earliest expiry of any preview.
    pub fn next_expiry(&self) -> Option<Timestamp> {
        self.by_key.values().filter_map(|p| p.expires_at).min()
    }

    /// Keys of previews expired at `now`.
    pub fn expired(&self, now: Timestamp) -> Vec<PreviewKey> {
        self.by_key.values().filter(|p| p.is_expired(now)).map(|p| p.key()).collect()
    }
}
