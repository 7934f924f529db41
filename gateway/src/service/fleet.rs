//! The replica of a fleet member: every gateway holds the whole fleet's state in its indexes
//! and follows etcd's changes, so that any gateway serves any sandbox and a revocation made on
//! one is refused on all.
//!
//! [`follow`] watches every key under the fleet's prefix from the revision after the one the
//! replica holds. Each batch of changes is applied under the mutation lock, so it never
//! interleaves with a local mutation: the indexes first, then the kernel policy of every
//! sandbox of this host the batch touched (a preview made on another gateway opens its port
//! here, on the sandbox's host). A watch that breaks (a member down, a partition) resumes from
//! the revision reached; one whose history was compacted away resyncs from a full read.

use super::App;
use crate::{
    model::sandbox::{Sandbox, SandboxId},
    state::{Change, EtcdStore, FeedItem, StoreError},
};
use std::{collections::BTreeMap, future::Future, sync::Arc, time::Duration};

/// Pause before watching again after an error, doubled up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const MAX_PAUSE: Duration = Duration::from_secs(2);

/// Follows etcd until `stop` resolves.
pub async fn follow(app: Arc<App>, store: Arc<EtcdStore>, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    let mut pause = FIRST_PAUSE;
    loop {
        tokio::select! {
            () = &mut stop => return,
            result = watch(&app, &store) => {
                if let Err(e) = result {
                    tracing::warn!(error = %e, applied = store.applied(), "the fleet's watch stopped; resuming");
                }
            }
        }
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// One watch, until it fails.
async fn watch(app: &App, store: &EtcdStore) -> Result<(), StoreError> {
    let mut feed = store.feed(store.applied() + 1).await?;
    loop {
        match feed.next().await? {
            FeedItem::Events(events, revision) => {
                let m = app.mutating.lock().await;
                let changes = store.accept(events);
                app.apply_changes(&m, changes);
                store.set_applied(revision);
            }
            FeedItem::Progress(revision) => store.set_applied(revision),
            FeedItem::Compacted(compacted) => {
                tracing::warn!(
                    compacted,
                    applied = store.applied(),
                    "etcd compacted the history the replica needs; reading everything again"
                );
                let m = app.mutating.lock().await;
                let (changes, revision) = store.resync().await?;
                let count = changes.len();
                app.apply_changes(&m, changes);
                drop(m);
                tracing::info!(revision, changes = count, "the replica resynced");
                return Ok(());
            }
        }
    }
}

impl App {
    /// Applies the replica's changes: the indexes, then the kernel policy of every sandbox of
    /// this host they touched (a sandbox gone, or moved to another address, leaves the kernel
    /// first: fail closed).
    fn apply_changes(&self, m: &super::mutation::Mutating, changes: Vec<Change>) {
        let mut touched: BTreeMap<SandboxId, ()> = BTreeMap::new();
        for change in changes {
            match change {
                Change::Token(token) => self.tokens.follow(token),
                Change::TokenGone(id) => self.tokens.follow_gone(&id),
                Change::Sandbox(sandbox) => {
                    let sandbox = Arc::new(sandbox);
                    if let Some(prev) = self.sandboxes.follow(sandbox.clone())
                        && (prev.address != sandbox.address || prev.owner != sandbox.owner)
                    {
                        remove(m, &prev);
                    }
                    touched.insert(sandbox.id(), ());
                }
                Change::SandboxGone(label) => {
                    if let Some(prev) = self.sandboxes.follow_gone(&label) {
                        remove(m, &prev);
                    }
                }
                Change::Preview(preview) => {
                    touched.insert(preview.sandbox_id(), ());
                    self.previews.follow(preview);
                }
                Change::PreviewGone(key) => {
                    touched.insert(key.sandbox_id(), ());
                    self.previews.follow_gone(&key);
                }
            }
        }
        for id in touched.into_keys() {
            let Ok(sandbox) = self.sandboxes.get(&id.workspace, &id.name) else { continue };
            if let Err(e) = m.apply(&sandbox, &self.previews.policy_for(&sandbox)) {
                tracing::error!(sandbox = %id, error = %e, "the data plane refused a policy from the fleet");
            }
        }
    }
}

fn remove(m: &super::mutation::Mutating, sandbox: &Sandbox) {
    if let Err(e) = m.remove(sandbox) {
        tracing::error!(sandbox = %sandbox.id(), error = %e, "removing a sandbox's kernel policy failed");
    }
}
