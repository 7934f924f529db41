//! Low-level helpers: root check, running `ip`, sysctls, the cross-process lock.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;

/// Directory holding the harness's cross-process state: the lock file and the address claims.
///
/// Everything in it is bookkeeping only; deleting it while no test runs is harmless.
pub const STATE_DIR: &str = "/run/gwt-harness";

/// Panics with a clear message unless the process runs as root.
///
/// Privileged tests must call this first: they must fail loudly, never skip silently, when the
/// environment cannot run them.
pub fn require_root() {
    if !nix::unistd::geteuid().is_root() {
        panic!(
            "this test needs root: it creates network namespaces, veth pairs, routes and bpffs pins \
             (CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_BPF). Run the privileged tests as root, e.g. \
             `sudo -E cargo xtask test`. It is deliberately not skipped."
        );
    }
}

/// Runs `ip <args>` and returns its stdout; the error names the command and carries its stderr.
pub(crate) fn ip(args: &[&str]) -> io::Result<String> {
    run(Command::new("ip").args(args))
}

/// Runs a prepared command; a non-zero exit becomes an error naming the command and its stderr.
pub(crate) fn run(cmd: &mut Command) -> io::Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| io::Error::new(e.kind(), format!("cannot run {shown}: {e}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(io::Error::other(format!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Writes `value` to a sysctl file under /proc/sys unless it already holds it (idempotent).
///
/// /proc/sys/net is resolved against the network namespace of the calling *thread*, so calling
/// this inside [`super::Netns::run`] sets the namespace's own value.
pub(crate) fn write_sysctl(path: &str, value: &str) -> io::Result<()> {
    let current = fs::read_to_string(path).map_err(|e| io::Error::new(e.kind(), format!("cannot read {path}: {e}")))?;
    if current.trim() == value {
        return Ok(());
    }
    fs::write(path, value).map_err(|e| io::Error::new(e.kind(), format!("cannot write {value} to {path}: {e}")))
}

/// Like [`write_sysctl`], but a missing file (e.g. IPv6 compiled out) is not an error.
pub(crate) fn write_sysctl_if_present(path: &str, value: &str) -> io::Result<()> {
    if !Path::new(path).exists() {
        return Ok(());
    }
    write_sysctl(path, value)
}

/// Turns on IPv4 forwarding in the host (initial) network namespace, once, idempotently.
///
/// **This is a global setting of the host**: it is left on when the tests end (other tests may
/// be running in parallel, so it is never turned back off). It is what lets a sandbox reach
/// another sandbox, or an outside client reach a sandbox, *through* the host, like on a real
/// sandbox host where the gateway machine routes between its sandbox interfaces.
pub fn ensure_ip_forward() -> io::Result<()> {
    write_sysctl("/proc/sys/net/ipv4/ip_forward", "1")
}

/// An exclusive `flock` on `STATE_DIR/lock`, released on drop.
///
/// `flock` locks belong to the open file description, so this excludes other threads of this
/// process (each opens the file anew) as well as other processes (parallel test binaries).
pub(crate) struct GlobalLock {
    _file: File,
}

pub(crate) fn global_lock() -> io::Result<GlobalLock> {
    fs::create_dir_all(STATE_DIR)?;
    let path = PathBuf::from(STATE_DIR).join("lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display())))?;
    loop {
        // SAFETY: flock on a valid, owned descriptor; no memory is passed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc == 0 {
            return Ok(GlobalLock { _file: file });
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Whether a process with this pid exists (a reused pid counts as alive: the safe side).
pub(crate) fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    !matches!(kill(Pid::from_raw(pid), None), Err(Errno::ESRCH))
}

/// The interface index of `name` in the calling thread's namespace, if the interface exists.
pub(crate) fn ifindex(name: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(name).ok().filter(|&i| i != 0)
}
