//! The public TCP ports released recently (`l4.quarantine`), saved under `state.dir` so that a
//! restart does not hand a port to a new owner while the old one's clients may still connect.
//! Public ports belong to the host that serves them, so the file is local even in a fleet.

use super::{StoreError, file_store::write_atomic};
use crate::model::sandbox::ReleasedPort;
use std::path::Path;

/// The released ports saved at `path` (none when the file does not exist).
pub fn load(path: &Path) -> Result<Vec<ReleasedPort>, StoreError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(StoreError::Io { context: "reading the released ports", path: path.into(), source }),
    };
    serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
        path: path.to_path_buf(),
        reason: format!("not a list of released ports: {e}"),
    })
}

/// Saves `released` at `path`, atomically and durably.
pub fn save(path: &Path, released: &[ReleasedPort]) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(released).map_err(|e| StoreError::Task(format!("encoding released ports: {e}")))?;
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Err(StoreError::Task(format!("{} cannot hold the released ports", path.display())));
    };
    write_atomic(dir, name, &bytes)
}
