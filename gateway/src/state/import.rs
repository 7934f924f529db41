//! `gateway fleet import`: a single host's state directory copied into a fleet's etcd, so that
//! a host joins a fleet with what it already serves. Idempotent: a record the fleet already has
//! is left as the fleet has it (a second run imports nothing; a record changed since in the
//! fleet is not overwritten by the older copy).

use super::{EtcdStore, FileStore, Store, StoreError};
use crate::model::sandbox::Sandbox;

/// What an import did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Records written to etcd.
    pub imported: usize,
    /// Records the fleet already had, equal.
    pub unchanged: usize,
    /// Records the fleet has in another version: kept as the fleet has them.
    pub kept: Vec<String>,
    /// Records that cannot join: another sandbox has the label, or another host owns it.
    pub conflicts: Vec<String>,
    /// Notes (a secret the fleet already had).
    pub notes: Vec<String>,
}

/// Copies every record of `file` into `etcd`, this host (`host`) owning the sandboxes; the
/// secrets named in `secrets` are offered to the fleet (kept if it has its own).
pub async fn import(
    file: &FileStore,
    etcd: &EtcdStore,
    host: &str,
    secrets: &[&'static str],
) -> Result<ImportReport, StoreError> {
    let local = file.load().await?;
    let fleet = etcd.load().await?;
    let mut report = ImportReport::default();
    for name in secrets {
        let mine = file.secret(name).await?;
        if etcd.offer_secret(name, mine).await? != mine {
            report.notes.push(format!(
                "the fleet already has its own secret {name:?}: existing previews keep their URLs (stored with them), a preview created again gets the fleet's"
            ));
        }
    }
    for mut sandbox in local.sandboxes {
        sandbox.owner.get_or_insert_with(|| host.to_string());
        let label = sandbox.label();
        match fleet.sandboxes.iter().find(|s| s.label() == label) {
            None => {
                etcd.put_sandbox(sandbox).await?;
                report.imported += 1;
            }
            Some(f) if *f == sandbox => report.unchanged += 1,
            Some(f) if f.id() != sandbox.id() => report.conflicts.push(format!(
                "sandbox {}: its host label {label} is already sandbox {}'s in the fleet",
                sandbox.id(),
                f.id()
            )),
            Some(f) if f.owner != sandbox.owner => report.conflicts.push(format!(
                "sandbox {}: fleet host {:?} already runs it",
                sandbox.id(),
                f.owner.as_deref().unwrap_or("?")
            )),
            Some(_) => report.kept.push(format!("sandbox {}", Sandbox::id(&sandbox))),
        }
    }
    for token in local.tokens {
        match fleet.tokens.iter().find(|t| t.id() == token.id()) {
            None => {
                etcd.put_token(token).await?;
                report.imported += 1;
            }
            Some(f) if *f == token => report.unchanged += 1,
            Some(_) => report.kept.push(format!("token {}", token.id())),
        }
    }
    for preview in local.previews {
        match fleet.previews.iter().find(|p| p.key() == preview.key()) {
            None => {
                etcd.put_preview(preview).await?;
                report.imported += 1;
            }
            Some(f) if *f == preview => report.unchanged += 1,
            Some(_) => report.kept.push(format!("preview {}", preview.key())),
        }
    }
    Ok(report)
}
