//! Preview records and generated secrets in the file store.

use super::{Inner, io_err, load_records, remove_durably, write_atomic};
use crate::{
    model::preview::{Preview, PreviewKey},
    state::StoreError,
};
use serde::{Deserialize, Serialize};
use std::{fs, io, os::unix::fs::PermissionsExt};

/// Inside `state.dir`: one JSON file per preview, `{workspace}.{sandbox}.{preview}.json`.
pub(super) const STATE_PREVIEWS: &str = "previews";
/// Inside `state.dir`: generated secrets, one file each (`{name}.key`, hex).
pub(super) const STATE_SECRETS: &str = "secrets";

pub(in crate::state) const PREVIEW_RECORD_VERSION: u32 = 1;

/// One preview file.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::state) struct PreviewRecord {
    pub(in crate::state) version: u32,
    pub(in crate::state) preview: Preview,
}

fn file_name(key: &PreviewKey) -> String {
    format!("{}.{}.{}.json", key.workspace, key.sandbox, key.name)
}

fn unhex32(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut out).ok()?;
    Some(out)
}

impl Inner {
    pub(super) fn load_previews(&self) -> Result<Vec<Preview>, StoreError> {
        let mut previews = load_records(&self.previews, "preview", PREVIEW_RECORD_VERSION, |r: PreviewRecord| {
            (r.version, file_name(&r.preview.key()), r.preview)
        })?;
        previews.sort_by_key(Preview::key);
        Ok(previews)
    }

    pub(super) fn put_preview(&self, preview: Preview) -> Result<(), StoreError> {
        let name = file_name(&preview.key());
        let record = PreviewRecord { version: PREVIEW_RECORD_VERSION, preview };
        let mut bytes = serde_json::to_vec_pretty(&record)
            .map_err(|e| StoreError::Corrupt { path: self.previews.join(&name), reason: e.to_string() })?;
        bytes.push(b'\n');
        let _guard = self.write.lock().unwrap_or_else(|p| p.into_inner());
        write_atomic(&self.previews, &name, &bytes)
    }

    pub(super) fn delete_preview(&self, key: &PreviewKey) -> Result<(), StoreError> {
        let path = self.previews.join(file_name(key));
        let _guard = self.write.lock().unwrap_or_else(|p| p.into_inner());
        remove_durably(&self.previews, &path)
    }

    /// Reads `secrets/{name}.key`, creating it (durably, 0600) the first time.
    pub(super) fn secret(&self, name: &'static str) -> Result<[u8; 32], StoreError> {
        let file = format!("{name}.key");
        let path = self.secrets.join(&file);
        let _guard = self.write.lock().unwrap_or_else(|p| p.into_inner());
        match fs::read_to_string(&path) {
            Ok(text) => {
                let meta = fs::metadata(&path).map_err(io_err("reading", &path))?;
                if meta.permissions().mode() & 0o077 != 0 {
                    return Err(StoreError::Corrupt {
                        path,
                        reason:
                            "a secret readable by group or others: chmod 600 it (or remove it to generate a new one)"
                                .into(),
                    });
                }
                unhex32(&text)
                    .ok_or_else(|| StoreError::Corrupt { path, reason: "not 64 hexadecimal characters".into() })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let secret = crate::state::store::new_secret()?;
                write_atomic(&self.secrets, &file, format!("{}\n", hex::encode(secret)).as_bytes())?;
                tracing::info!(path = %path.display(), "generated a new secret");
                Ok(secret)
            }
            Err(e) => Err(io_err("reading", &path)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::preview::PreviewToken,
        model::time,
        state::{FileStore, Store},
    };

    #[test]
    fn secret_files_are_lower_case_hex() {
        let secret: [u8; 32] = std::array::from_fn(|i| (i * 37) as u8);
        let text = format!("{}\n", hex::encode(secret));
        assert_eq!(&text[..8], "00254a6f");
        assert_eq!(unhex32(&text), Some(secret));
        assert_eq!(unhex32(&text.to_uppercase()), Some(secret));
        assert_eq!(unhex32(&text[2..]), None);
        assert_eq!(unhex32(&format!("{text}00")), None);
        assert_eq!(unhex32(&text.replace('a', "g")), None);
    }

    #[tokio::test]
    async fn previews_and_secrets_roundtrip() {
        let dir = std::env::temp_dir().join(format!("gateway-preview-store-{}", std::process::id()));
        let now = time::truncate_millis(time::now());
        let preview = Preview {
            workspace: "ws".into(),
            sandbox: "app".into(),
            name: "web".into(),
            id: "abcdefghijklmnop".into(),
            port: 3000,
            public: false,
            prefix_url: None,
            request_headers: [("authorization".to_string(), "Bearer app".to_string())].into(),
            response_headers: Default::default(),
            ttl: Some("1h".into()),
            expires_at: Some(time::add(now, std::time::Duration::from_secs(3600))),
            created_at: now,
            tokens: vec![PreviewToken { name: "t1".into(), token: "gwpt_x".into(), expires_at: now, created_at: now }],
        };
        let secret = {
            let store = FileStore::open(&dir).expect("open");
            store.put_preview(preview.clone()).await.expect("put");
            store.put_preview(Preview { name: "gone".into(), ..preview.clone() }).await.expect("put");
            store.delete_preview(PreviewKey::new("ws", "app", "gone")).await.expect("delete");
            store.secret("preview-id").await.expect("secret")
        };
        let store = FileStore::open(&dir).expect("reopen");
        assert_eq!(store.load().await.expect("load").previews, vec![preview]);
        assert_eq!(store.secret("preview-id").await.expect("same secret"), secret);
        let mode = fs::metadata(dir.join(STATE_SECRETS).join("preview-id.key")).expect("key").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        drop(store);
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
