//! The file store: one JSON file per record under `state.dir`.
//!
//! Layout (format 1):
//! ```text
//! state.dir/            0700
//!   FORMAT              "gateway-state 1"
//!   lock                flock(2)-ed by the running gateway
//!   sandboxes/          one file per sandbox: {workspace}.{name}.json (names cannot hold a '.')
//!   tokens/             one file per access token: {workspace}.{name}.json, holding the SHA-256
//!                       of the secret (never the secret); created when missing (format 1 still)
//!   previews/           one file per preview, its tokens inside: {workspace}.{sandbox}.{preview}.json
//!   secrets/            0700: one 0600 file per generated secret (e.g. preview-id.key)
//! ```
//! A write goes to `{file}.tmp`, is fsynced, renamed over the file, and the directory is fsynced,
//! before the future resolves: an acknowledged mutation survives a crash or power loss, and a
//! torn write is never read back (leftover `.tmp` files are removed at start). One file per
//! record keeps a mutation O(1) however many sandboxes exist.

mod previews;

pub(super) use previews::{PREVIEW_RECORD_VERSION, PreviewRecord};

use crate::model::sandbox::{AccessToken, Sandbox, SandboxId, TokenId};

use super::store::{StateSnapshot, Store, StoreError, StoreFuture};
use crate::{
    paths::{STATE_FORMAT_FILE, STATE_LOCK_FILE, STATE_SANDBOXES, STATE_TOKENS, TEMP_SUFFIX},
    telemetry::metrics,
};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

const FORMAT: &str = "gateway-state 1\n";
pub(super) const RECORD_VERSION: u32 = 1;

/// One sandbox file.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StoredSandbox {
    pub(super) version: u32,
    pub(super) sandbox: Sandbox,
}

/// One access token file.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TokenRecord {
    pub(super) version: u32,
    pub(super) token: AccessToken,
}

struct Inner {
    dir: PathBuf,
    sandboxes: PathBuf,
    tokens: PathBuf,
    previews: PathBuf,
    secrets: PathBuf,
    /// Serializes writes (two writes of one record would share a temp file).
    write: Mutex<()>,
    /// The directory lock; `None` once sealed (handed over: see `seal`).
    lock: Mutex<Option<Flock<File>>>,
    /// Set by `seal`: every later operation fails.
    sealed: AtomicBool,
}

/// The file store. Holds an exclusive lock on the directory while alive.
#[derive(Clone)]
pub struct FileStore {
    inner: Arc<Inner>,
}

fn io_err(context: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { context, path, source }
}

impl FileStore {
    /// Opens (creating if missing) the state directory and locks it.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, None)
    }

    /// Opens the state directory with the lock file a predecessor handed over (zero-downtime
    /// restart, `crate::handoff`): the lock is already held, by the open file both share.
    pub fn open_inherited(dir: &Path, lock: File) -> Result<Self, StoreError> {
        Self::open_with(dir, Some(lock))
    }

    /// The lock file's descriptor, to hand over.
    pub fn lock_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.inner.lock.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map_or(-1, |l| l.as_raw_fd())
    }

    fn open_with(dir: &Path, inherited: Option<File>) -> Result<Self, StoreError> {
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_err("creating the state directory", dir))?;
        }
        let lock_path = dir.join(STATE_LOCK_FILE);
        let lock_file = match inherited {
            // flock(2) locks belong to the open file: re-locking the shared one succeeds.
            Some(file) => file,
            None => OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(&lock_path)
                .map_err(io_err("opening", &lock_path))?,
        };
        let lock = match Flock::lock(lock_file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Err(StoreError::Locked { path: lock_path }),
            Err((_, errno)) => return Err(io_err("locking", &lock_path)(io::Error::from(errno))),
        };
        let sandboxes = dir.join(STATE_SANDBOXES);
        let format_path = dir.join(STATE_FORMAT_FILE);
        match fs::read_to_string(&format_path) {
            Ok(text) if text == FORMAT => {}
            Ok(text) => {
                return Err(StoreError::Corrupt {
                    path: format_path,
                    reason: format!(
                        "unsupported state format {:?} (this gateway reads {:?})",
                        text.trim(),
                        FORMAT.trim()
                    ),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if sandboxes.exists() {
                    return Err(StoreError::Corrupt {
                        path: format_path,
                        reason: format!("missing, but {} exists: refusing to guess the format", sandboxes.display()),
                    });
                }
                write_atomic(dir, STATE_FORMAT_FILE, FORMAT.as_bytes())?;
            }
            Err(e) => return Err(io_err("reading", &format_path)(e)),
        }
        let tokens = dir.join(STATE_TOKENS);
        let previews = dir.join(previews::STATE_PREVIEWS);
        let secrets = dir.join(previews::STATE_SECRETS);
        let mut created = false;
        for sub in [&sandboxes, &tokens, &previews, &secrets] {
            if !sub.exists() {
                fs::DirBuilder::new().mode(0o700).create(sub).map_err(io_err("creating", sub))?;
                created = true;
            }
        }
        if created {
            sync_dir(dir)?;
        }
        Ok(Self {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                sandboxes,
                tokens,
                previews,
                secrets,
                write: Mutex::new(()),
                lock: Mutex::new(Some(lock)),
                sealed: AtomicBool::new(false),
            }),
        })
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        if self.inner.sealed.load(Ordering::Acquire) {
            return Err(StoreError::Sealed);
        }
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner)).await.map_err(|e| StoreError::Task(e.to_string()))?
    }
}

/// The file of a record: `{workspace}.{name}.json` (neither can hold a '.').
fn record_file(workspace: &str, name: &str) -> String {
    format!("{workspace}.{name}.json")
}

fn sandbox_file(id: &SandboxId) -> String {
    record_file(&id.workspace, &id.name)
}

fn token_file(id: &TokenId) -> String {
    record_file(&id.workspace, &id.name)
}

impl Inner {
    fn load(&self) -> Result<StateSnapshot, StoreError> {
        let mut sandboxes = load_records(&self.sandboxes, "sandbox", RECORD_VERSION, |r: StoredSandbox| {
            (r.version, sandbox_file(&r.sandbox.id()), r.sandbox)
        })?;
        sandboxes.sort_by(|a, b| (&a.workspace, &a.name).cmp(&(&b.workspace, &b.name)));
        let mut tokens = load_records(&self.tokens, "token", RECORD_VERSION, |r: TokenRecord| {
            (r.version, token_file(&r.token.id()), r.token)
        })?;
        tokens.sort_by(|a, b| (&a.workspace, &a.name).cmp(&(&b.workspace, &b.name)));
        let previews = self.load_previews()?;
        Ok(StateSnapshot { sandboxes, tokens, previews, hosts: Vec::new() })
    }

    fn put_sandbox(&self, sandbox: Sandbox) -> Result<(), StoreError> {
        let name = sandbox_file(&sandbox.id());
        self.put_record(&self.sandboxes, &name, &StoredSandbox { version: RECORD_VERSION, sandbox })
    }

    fn delete_sandbox(&self, id: SandboxId) -> Result<(), StoreError> {
        self.delete_record(&self.sandboxes, &sandbox_file(&id))
    }

    fn put_token(&self, token: AccessToken) -> Result<(), StoreError> {
        let name = token_file(&token.id());
        self.put_record(&self.tokens, &name, &TokenRecord { version: RECORD_VERSION, token })
    }

    fn delete_token(&self, id: TokenId) -> Result<(), StoreError> {
        self.delete_record(&self.tokens, &token_file(&id))
    }

    fn put_record(&self, dir: &Path, name: &str, record: &impl Serialize) -> Result<(), StoreError> {
        let mut bytes = serde_json::to_vec_pretty(record)
            .map_err(|e| StoreError::Corrupt { path: dir.join(name), reason: e.to_string() })?;
        bytes.push(b'\n');
        let _guard = self.write.lock().unwrap_or_else(|p| p.into_inner());
        write_atomic(dir, name, &bytes)
    }

    fn delete_record(&self, dir: &Path, name: &str) -> Result<(), StoreError> {
        let path = dir.join(name);
        let _guard = self.write.lock().unwrap_or_else(|p| p.into_inner());
        remove_durably(dir, &path)
    }
}

/// Removes `dir/…` durably (the directory is fsynced); an absent file is not an error.
/// Counted in the `state_writes` metric as a `delete`.
fn remove_durably(dir: &Path, path: &Path) -> Result<(), StoreError> {
    let started = Instant::now();
    let result = match fs::remove_file(path) {
        Ok(()) => sync_dir(dir),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("removing", path)(e)),
    };
    metrics::global().state_write("delete", result.is_ok(), started.elapsed());
    result
}

/// Reads every record file of `dir`: removes leftover temp files, skips files that are not
/// `.json`, and checks each record's version and that it is stored under its own file name.
/// `unpack` gives a record's (version, expected file name, item); `version` is the one this
/// gateway reads.
fn load_records<R: DeserializeOwned, T>(
    dir: &Path,
    what: &str,
    version: u32,
    unpack: impl Fn(R) -> (u32, String, T),
) -> Result<Vec<T>, StoreError> {
    let mut items = Vec::new();
    let entries = fs::read_dir(dir).map_err(io_err("reading", dir))?;
    for entry in entries {
        let entry = entry.map_err(io_err("reading", dir))?;
        let path = entry.path();
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            return Err(StoreError::Corrupt { path, reason: "file name is not UTF-8".into() });
        };
        if name.ends_with(TEMP_SUFFIX) {
            // A write that never completed: it was never acknowledged.
            tracing::warn!(path = %path.display(), "removing an incomplete write");
            fs::remove_file(&path).map_err(io_err("removing", &path))?;
            continue;
        }
        if !name.ends_with(".json") {
            tracing::warn!(path = %path.display(), kind = what, "ignoring a file that is not a record");
            continue;
        }
        let bytes = fs::read(&path).map_err(io_err("reading", &path))?;
        let record: R = serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::Corrupt { path: path.clone(), reason: format!("not a {what} record: {e}") })?;
        let (found, expected, item) = unpack(record);
        if found != version {
            return Err(StoreError::Corrupt {
                path,
                reason: format!("record version {found} (this gateway reads {version})"),
            });
        }
        if expected != name {
            return Err(StoreError::Corrupt {
                path,
                reason: format!("holds the {what} of {expected} but is named {name}"),
            });
        }
        items.push(item);
    }
    Ok(items)
}

/// Writes `dir/name` atomically and durably: temp file, fsync, rename, fsync the directory.
/// Counted in the `state_writes` metric as a `write`.
pub(super) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
    let started = Instant::now();
    let tmp = dir.join(format!("{name}{TEMP_SUFFIX}"));
    let path = dir.join(name);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err("creating", &tmp))?;
        file.write_all(bytes).map_err(io_err("writing", &tmp))?;
        file.sync_all().map_err(io_err("syncing", &tmp))?;
        drop(file);
        fs::rename(&tmp, &path).map_err(io_err("renaming into place", &path))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    metrics::global().state_write("write", result.is_ok(), started.elapsed());
    result
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("syncing directory", dir))
}

impl Store for FileStore {
    fn load(&self) -> StoreFuture<'_, StateSnapshot> {
        Box::pin(self.blocking(|inner| inner.load()))
    }
    fn put_sandbox(&self, sandbox: Sandbox) -> StoreFuture<'_, ()> {
        Box::pin(self.blocking(move |inner| inner.put_sandbox(sandbox)))
    }
    fn delete_sandbox(&self, id: SandboxId) -> StoreFuture<'_, ()> {
        Box::pin(self.blocking(move |inner| inner.delete_sandbox(id)))
    }
    fn put_token(&self, token: AccessToken) -> StoreFuture<'_, ()> {
        Box::pin(self.blocking(move |inner| inner.put_token(token)))
    }
    fn delete_token(&self, id: TokenId) -> StoreFuture<'_, ()> {
        Box::pin(self.blocking(move |inner| inner.delete_token(id)))
    }
    fn put_preview(&self, preview: crate::model::preview::Preview) -> StoreFuture<'_, ()> {
        Box::pin(self.blocking(move |inner| inner.put_preview(preview)))
    }
    fn delete_preview(&self, key: crate::model::preview::PreviewKey) -> StoreFuture<'_, ()> {
        Box::pin(self.blocking(move |inner| inner.delete_preview(&key)))
    }
    fn secret(&self, name: &'static str) -> StoreFuture<'_, [u8; 32]> {
        Box::pin(self.blocking(move |inner| inner.secret(name)))
    }
    fn describe(&self) -> String {
        format!("file:{}", self.inner.dir.display())
    }
    fn seal(&self) {
        // Called with the service layer's mutations frozen (`App::freeze`): no write is in
        // progress, and none starts after this.
        self.inner.sealed.store(true, Ordering::Release);
        // The lock's open file is shared with the successor: dropping the `Flock` would
        // unlock it (LOCK_UN) for both. Closing the descriptor at exit does not.
        if let Some(lock) = self.inner.lock.lock().unwrap_or_else(|p| p.into_inner()).take() {
            std::mem::forget(lock);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::sandbox::{PortProtocol, PortSpec};

    fn tempdir() -> PathBuf {
        std::env::temp_dir().join(format!(
            "gateway-file-store-{}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
        ))
    }

    fn sandbox(name: &str) -> Sandbox {
        Sandbox {
            workspace: "ws".into(),
            name: name.into(),
            address: "198.18.0.2".parse().expect("addr"),
            interface: "lo".into(),
            owner: None,
            exposed: Vec::new(),
            ports: vec![PortSpec { target: 3000, protocol: PortProtocol::Http }],
        }
    }

    #[tokio::test]
    async fn roundtrip_lock_and_corruption() {
        let dir = tempdir();
        {
            let store = FileStore::open(&dir).expect("open");
            assert!(matches!(FileStore::open(&dir), Err(StoreError::Locked { .. })));
            store.put_sandbox(sandbox("a")).await.expect("put");
            store.put_sandbox(sandbox("b")).await.expect("put");
            store.delete_sandbox(SandboxId::new("ws", "b")).await.expect("delete");
            store.delete_sandbox(SandboxId::new("ws", "zz")).await.expect("delete absent");
        }
        fs::write(dir.join(STATE_SANDBOXES).join("ws.c.json.tmp"), b"{").expect("tmp");
        {
            let store = FileStore::open(&dir).expect("reopen");
            let snap = store.load().await.expect("load");
            assert_eq!(snap.sandboxes, vec![sandbox("a")]);
            assert!(!dir.join(STATE_SANDBOXES).join("ws.c.json.tmp").exists());
        }
        fs::write(dir.join(STATE_SANDBOXES).join("ws.d.json"), b"{garbage").expect("garbage");
        {
            let store = FileStore::open(&dir).expect("reopen");
            assert!(matches!(store.load().await, Err(StoreError::Corrupt { .. })));
        }
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[tokio::test]
    async fn tokens_roundtrip() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempdir();
        let token = |name: &str| AccessToken {
            workspace: "ws".into(),
            name: name.into(),
            secret_sha256: [0xab; 32],
            created_at: time::OffsetDateTime::from_unix_timestamp(1_900_000_000).expect("time"),
            expires_at: Some(time::OffsetDateTime::from_unix_timestamp(1_900_003_600).expect("time")),
        };
        {
            let store = FileStore::open(&dir).expect("open");
            store.put_token(token("ci")).await.expect("put");
            store.put_token(AccessToken { expires_at: None, ..token("b") }).await.expect("put");
            store.delete_token(TokenId::new("ws", "b")).await.expect("delete");
            store.delete_token(TokenId::new("ws", "zz")).await.expect("delete absent");
        }
        let file = dir.join(STATE_TOKENS).join("ws.ci.json");
        let mode = fs::metadata(&file).expect("file").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = fs::read_to_string(&file).expect("read");
        assert!(text.contains(&"ab".repeat(32)) && text.contains("2030-03-17T17:46:40Z"), "{text}");
        let store = FileStore::open(&dir).expect("reopen");
        assert_eq!(store.load().await.expect("load").tokens, vec![token("ci")]);
        // A record under another record's name is refused.
        fs::copy(&file, dir.join(STATE_TOKENS).join("ws.other.json")).expect("copy");
        let e = store.load().await.expect_err("misnamed");
        assert!(e.to_string().contains("ws.other.json"), "{e}");
        drop(store);
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
