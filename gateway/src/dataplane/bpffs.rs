//! The bpffs pin directory: mounted when needed, with a fixed layout.
//!
//! ```text
//! <dataplane.bpffs>/maps/GW_*            the maps (policy, sandboxes, counters, config…)
//! <dataplane.bpffs>/links/tcx-in-<if>    sandbox_in on tcx egress of ifindex <if>
//! <dataplane.bpffs>/links/tcx-out-<if>   sandbox_out on tcx ingress of ifindex <if>
//! <dataplane.bpffs>/links/xdp-<if>       edge_guard on ifindex <if>
//! <dataplane.bpffs>/links/sk_lookup-<ns>  l4_steer on the network namespace of inode <ns>
//! ```

use std::{
    io,
    path::{Path, PathBuf},
};

const BPF_FS_MAGIC: nix::sys::statfs::FsType = nix::sys::statfs::FsType(0xcafe_4a11);

/// The pin layout under one root.
#[derive(Clone, Debug)]
pub struct PinDir {
    root: PathBuf,
}

impl PinDir {
    /// The layout under `root` (nothing is created).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// Where maps are pinned.
    pub fn maps(&self) -> PathBuf {
        self.root.join("maps")
    }
    /// Where links are pinned.
    pub fn links(&self) -> PathBuf {
        self.root.join("links")
    }
    /// The pin of a link: per interface (`ifindex`), or per network namespace (its inode) for
    /// [`LinkKind::SkLookup`].
    pub fn link(&self, kind: LinkKind, ifindex: u32) -> PathBuf {
        self.links().join(format!("{}-{ifindex}", kind.prefix()))
    }
    /// Whether anything was ever pinned here.
    pub fn exists(&self) -> bool {
        self.maps().is_dir()
    }
    /// Mounts bpffs if needed and creates the directories.
    pub fn create(&self) -> io::Result<()> {
        ensure_bpffs_for(&self.root)?;
        std::fs::create_dir_all(self.maps())?;
        std::fs::create_dir_all(self.links())
    }
}

/// The attachment kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LinkKind {
    /// `sandbox_in`, tcx egress.
    TcxIn,
    /// `sandbox_out`, tcx ingress.
    TcxOut,
    /// `edge_guard`, XDP.
    Xdp,
    /// `l4_steer`, sk_lookup of a network namespace (the pin's number is the namespace's
    /// inode, not an ifindex).
    SkLookup,
}

impl LinkKind {
    /// Every kind.
    pub const ALL: [LinkKind; 4] = [LinkKind::TcxIn, LinkKind::TcxOut, LinkKind::Xdp, LinkKind::SkLookup];
    /// File name prefix of its pins.
    pub const fn prefix(self) -> &'static str {
        match self {
            LinkKind::TcxIn => "tcx-in",
            LinkKind::TcxOut => "tcx-out",
            LinkKind::Xdp => "xdp",
            LinkKind::SkLookup => "sk_lookup",
        }
    }
    /// Parses a pin file name back into (kind, ifindex).
    pub fn parse_pin(name: &str) -> Option<(LinkKind, u32)> {
        LinkKind::ALL.into_iter().find_map(|k| {
            let rest = name.strip_prefix(k.prefix())?.strip_prefix('-')?;
            Some((k, rest.parse().ok()?))
        })
    }
}

fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type() == BPF_FS_MAGIC)
}

/// Makes sure `dir` can hold pins: mounts bpffs on /sys/fs/bpf when `dir` lies under it and it
/// is not mounted yet, or on `dir` itself when it lies elsewhere and is not on a bpffs.
pub fn ensure_bpffs_for(dir: &Path) -> io::Result<()> {
    let sys = Path::new("/sys/fs/bpf");
    if dir.starts_with(sys) {
        if !is_bpffs(sys) {
            mount_bpffs(sys)?;
        }
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    if !is_bpffs(dir) {
        mount_bpffs(dir)?;
    }
    Ok(())
}

fn mount_bpffs(at: &Path) -> io::Result<()> {
    nix::mount::mount(Some("bpf"), at, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
        .map_err(|e| io::Error::other(format!("mounting bpffs on {}: {e}", at.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_names_round_trip() {
        let p = PinDir::new("/x");
        for k in LinkKind::ALL {
            let path = p.link(k, 42);
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            assert_eq!(LinkKind::parse_pin(name), Some((k, 42)));
        }
        assert_eq!(LinkKind::parse_pin("tcx-in-x"), None);
        assert_eq!(LinkKind::parse_pin("other-1"), None);
        assert_eq!(LinkKind::parse_pin("sk_lookup-4026531840"), Some((LinkKind::SkLookup, 4_026_531_840)));
    }
}
