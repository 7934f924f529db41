//! [`sweep_stale`]: removes what crashed or killed test runs left behind.

use std::fs;
use std::path::{Path, PathBuf};

use super::bpffs::{BPFFS_PREFIX, BPFFS_ROOT};
use super::link::{claim_owner, claims_dir, harness_ifname_block};
use super::netns::NETNS_PREFIX;
use super::sys::{global_lock, ip, pid_alive};

/// What [`sweep_stale`] removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    /// Deleted namespaces (`gwt-<pid>-<n>` whose pid is dead).
    pub netns: Vec<String>,
    /// Deleted host-namespace interfaces (`gh<n>`/`gs<n>` whose block is unclaimed or whose
    /// claimer is dead).
    pub links: Vec<String>,
    /// Removed pin directories (`/sys/fs/bpf/gwt-<pid>-<n>` whose pid is dead).
    pub bpffs_dirs: Vec<PathBuf>,
    /// Released address claims of dead processes.
    pub claims: Vec<u32>,
}

impl SweepReport {
    /// Whether nothing was found.
    pub fn is_empty(&self) -> bool {
        self.netns.is_empty() && self.links.is_empty() && self.bpffs_dirs.is_empty() && self.claims.is_empty()
    }
}

/// The pid in a `gwt-<pid>-<n>` name.
fn owner_pid(name: &str, prefix: &str) -> Option<i32> {
    let rest = name.strip_prefix(prefix)?;
    let (pid, n) = rest.split_once('-')?;
    n.parse::<u32>().ok()?;
    pid.parse().ok()
}

fn names_in(dir: &Path) -> Vec<String> {
    fs::read_dir(dir).map(|rd| rd.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect()).unwrap_or_default()
}

/// Deletes leftovers of earlier, dead test processes: `gwt-*` namespaces, `gh*`/`gs*` veth
/// interfaces in the host namespace, `/sys/fs/bpf/gwt-*` pin directories and address claims.
///
/// Only things whose owner process is gone are touched, so it is safe while other tests run
/// (in this process or in parallel ones). Nothing calls it by default: normal runs clean up
/// after themselves through `Drop`, even on panic; only a killed process (SIGKILL, abort, a
/// `panic = "abort"` build, a power cut) leaves things behind. Call it from a one-off test or a
/// setup step (e.g. `cargo xtask test` before the privileged tests) when needed.
pub fn sweep_stale() -> SweepReport {
    let mut report = SweepReport::default();
    let Ok(_lock) = global_lock() else {
        return report;
    };

    for name in names_in(Path::new("/run/netns")) {
        if let Some(pid) = owner_pid(&name, NETNS_PREFIX)
            && !pid_alive(pid)
            && ip(&["netns", "del", &name]).is_ok()
        {
            report.netns.push(name);
        }
    }

    for name in names_in(Path::new("/sys/class/net")) {
        let Some(block) = harness_ifname_block(&name) else {
            continue;
        };
        if claim_owner(block).is_some_and(pid_alive) {
            continue;
        }
        // Deleting one end of a veth pair deletes the other one as well.
        if Path::new("/sys/class/net").join(&name).exists() && ip(&["link", "del", &name]).is_ok() {
            report.links.push(name);
        }
    }

    for name in names_in(&claims_dir()) {
        let Ok(block) = name.parse::<u32>() else {
            continue;
        };
        if !claim_owner(block).is_some_and(pid_alive) && fs::remove_file(claims_dir().join(&name)).is_ok() {
            report.claims.push(block);
        }
    }

    for name in names_in(Path::new(BPFFS_ROOT)) {
        if let Some(pid) = owner_pid(&name, BPFFS_PREFIX) {
            let path = Path::new(BPFFS_ROOT).join(&name);
            if !pid_alive(pid) && fs::remove_dir_all(&path).is_ok() {
                report.bpffs_dirs.push(path);
            }
        }
    }
    report
}
