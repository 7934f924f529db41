//! [`BpffsDir`]: a private pin directory under /sys/fs/bpf, removed on drop.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use nix::mount::{MsFlags, mount};

use super::sys::{self, global_lock};

/// Where bpffs is expected.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";
/// Prefix of every pin directory the harness creates: `/sys/fs/bpf/gwt-<pid>-<counter>`.
pub const BPFFS_PREFIX: &str = "gwt-";

static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

/// Whether /proc/mounts lists a `bpf` filesystem at `path`.
pub fn bpffs_mounted_at(path: &str) -> io::Result<bool> {
    let mounts = fs::read_to_string("/proc/mounts")?;
    Ok(mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        let (_src, target, fstype) = (f.next(), f.next(), f.next());
        target == Some(path) && fstype == Some("bpf")
    }))
}

/// Mounts bpffs at /sys/fs/bpf unless /proc/mounts shows it there already (idempotent, and
/// serialized across threads and processes so it is never mounted twice). The mount is left in
/// place: it is the standard location, which the gateway uses too.
pub fn ensure_bpffs() -> io::Result<()> {
    if bpffs_mounted_at(BPFFS_ROOT)? {
        return Ok(());
    }
    let _lock = global_lock()?;
    if bpffs_mounted_at(BPFFS_ROOT)? {
        return Ok(());
    }
    mount(Some("bpf"), BPFFS_ROOT, Some("bpf"), MsFlags::empty(), None::<&str>)
        .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("mount -t bpf bpf {BPFFS_ROOT}: {e}")))
}

/// A unique directory `/sys/fs/bpf/gwt-<pid>-<counter>` for a test's pins (e.g. the gateway's
/// `dataplane.bpffs`), removed recursively on drop (which unpins everything in it).
#[derive(Debug)]
pub struct BpffsDir {
    path: PathBuf,
}

impl BpffsDir {
    /// Creates the directory (mounting bpffs first if needed); panics on failure.
    pub fn new() -> BpffsDir {
        sys::require_root();
        BpffsDir::try_new().unwrap_or_else(|e| panic!("cannot create a bpffs pin directory: {e}"))
    }

    /// Fallible [`BpffsDir::new`].
    pub fn try_new() -> io::Result<BpffsDir> {
        ensure_bpffs()?;
        let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
        let path = Path::new(BPFFS_ROOT).join(format!("{BPFFS_PREFIX}{}-{n}", std::process::id()));
        if path.exists() {
            // Left by an earlier process that had our pid.
            fs::remove_dir_all(&path)?;
        }
        fs::create_dir(&path).map_err(|e| io::Error::new(e.kind(), format!("mkdir {}: {e}", path.display())))?;
        Ok(BpffsDir { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `path()` as a `&str` (for configuration files).
    pub fn as_str(&self) -> &str {
        self.path.to_str().unwrap_or_default()
    }
}

impl Drop for BpffsDir {
    fn drop(&mut self) {
        match fs::remove_dir_all(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => eprintln!("harness: cannot remove {}: {e}", self.path.display()),
        }
    }
}
