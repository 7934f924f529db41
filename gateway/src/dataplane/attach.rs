//! Loading the programs and attaching them behind pinned links.
//!
//! A pinned link that already exists (a previous gateway process, a crash, an upgrade) is
//! updated in place with `bpf_link_update`: the new program replaces the old one atomically, so
//! an interface is never left without a program. Every attachment is verified by querying the
//! kernel afterwards.

use std::{
    fs::File,
    os::{fd::AsFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    programs::{
        LinkOrder, SchedClassifier, SkLookup, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
        xdp::XdpLink,
    },
};
use gateway_common::names;

use super::{
    DataplaneError, XdpModeSetting,
    bpffs::{LinkKind, PinDir},
    kernel, netns_link,
};

/// The eBPF object, embedded at build time by `build.rs` (empty when built without bpf-linker).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gateway-ebpf"));

/// Loads the object with its maps pinned (or reused) under `pins`, and loads the four programs
/// into the kernel. `log_level` is aya-log's level for the programs' own logs (3 = info, 4 =
/// debug: one line per dropped packet).
pub fn load_object(pins: &PinDir, log_level: u8) -> Result<Ebpf, DataplaneError> {
    if EBPF_OBJECT.is_empty() {
        return Err(DataplaneError::NoProgram);
    }
    raise_memlock_limit();
    pins.create().map_err(kernel(format!("preparing pin directory {}", pins.root().display())))?;
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(pins.maps())
        .override_global(aya_log::LEVEL, &log_level, false)
        .load(EBPF_OBJECT)
        .map_err(kernel("loading the eBPF object (are the pinned maps from an incompatible version? `gateway dataplane teardown` removes them)"))?;
    for name in [names::PROG_SANDBOX_IN, names::PROG_SANDBOX_OUT] {
        classifier(&mut ebpf, name)?.load().map_err(kernel(format!("verifying {name}")))?;
    }
    xdp(&mut ebpf)?.load().map_err(kernel(format!("verifying {}", names::PROG_EDGE_GUARD)))?;
    sk_lookup(&mut ebpf)?.load().map_err(kernel(format!("verifying {}", names::PROG_L4_STEER)))?;
    Ok(ebpf)
}

fn raise_memlock_limit() {
    let rlim = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: plain syscall with a valid pointer. Failure is fine on kernels ≥ 5.11 (memcg
    // accounting), so it is only logged.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK; relying on memcg accounting");
    }
}

/// The loaded program `name` as a `T` (`kind` names it in the error).
fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str, kind: &str) -> Result<&'a mut T, DataplaneError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| DataplaneError::Kernel {
            context: format!("program {name} missing from the object"),
            source: anyhow::anyhow!("not found"),
        })?
        .try_into()
        .map_err(kernel(format!("program {name} is not {kind}")))
}

/// The loaded tc program `name`.
pub fn classifier<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier, DataplaneError> {
    program(ebpf, name, "a classifier")
}

/// The loaded XDP program.
pub fn xdp(ebpf: &mut Ebpf) -> Result<&mut Xdp, DataplaneError> {
    program(ebpf, names::PROG_EDGE_GUARD, "XDP")
}

/// The loaded sk_lookup program.
pub fn sk_lookup(ebpf: &mut Ebpf) -> Result<&mut SkLookup, DataplaneError> {
    program(ebpf, names::PROG_L4_STEER, "sk_lookup")
}

/// The network namespace of the calling thread. `/proc/self/ns/net` would be the process's
/// (its main thread's): a thread that entered another namespace (`setns`, as tests and
/// per-namespace workers do) must steer that namespace, never the host's.
const THIS_NETNS: &str = "/proc/thread-self/ns/net";

/// The calling thread's network namespace and its inode.
fn this_netns() -> Result<(File, u32), DataplaneError> {
    let file = File::open(THIS_NETNS).map_err(kernel(format!("opening {THIS_NETNS}")))?;
    let ino = file.metadata().map_err(kernel(format!("reading {THIS_NETNS}")))?.ino();
    let ino = u32::try_from(ino).map_err(|_| DataplaneError::Kernel {
        context: format!("the inode of {THIS_NETNS}"),
        source: anyhow::anyhow!("{ino} does not fit the 32 bits the kernel reports for a namespace"),
    })?;
    Ok((file, ino))
}

/// The pin of `l4_steer`'s link in the calling thread's network namespace.
pub fn l4_steer_pin(pins: &PinDir) -> Result<PathBuf, DataplaneError> {
    Ok(pins.link(LinkKind::SkLookup, this_netns()?.1))
}

/// Attaches `l4_steer` to the calling thread's network namespace behind a pinned link, or swaps
/// the program behind the existing pin (`bpf_link_update`, atomic: steering never lapses), then
/// checks with the kernel that the pinned link is this namespace's sk_lookup link running this
/// program. One link per namespace: the pin is named after the namespace's inode.
pub fn ensure_l4_steer(ebpf: &mut Ebpf, pins: &PinDir) -> Result<(), DataplaneError> {
    let (netns, ino) = this_netns()?;
    let pin = pins.link(LinkKind::SkLookup, ino);
    let prog = sk_lookup(ebpf)?;
    let prog_id = prog.info().map_err(kernel("program info"))?.id();
    let current = match netns_link::open_pinned(&pin) {
        Ok(link) => match netns_link::info(link.as_fd()) {
            Ok(i) if i.sk_lookup && i.netns_ino == ino && i.prog_id == prog_id => true,
            Ok(i) if i.sk_lookup && i.netns_ino == ino => {
                let prog_fd = prog.fd().map_err(kernel("program fd"))?;
                match netns_link::update(link.as_fd(), prog_fd.as_fd()) {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(pin = %pin.display(), error = %e, "replacing the program behind the pinned sk_lookup link failed; attaching anew");
                        false
                    }
                }
            }
            Ok(i) => {
                tracing::warn!(pin = %pin.display(), netns = i.netns_ino, "the pinned link is not this namespace's sk_lookup link; attaching anew");
                false
            }
            Err(e) => {
                tracing::warn!(pin = %pin.display(), error = %e, "unreadable pinned sk_lookup link; attaching anew");
                false
            }
        },
        Err(_) => false,
    };
    if !current {
        // Attach before unpinning the old link: for an instant both run (both assign the same
        // socket), rather than neither.
        let id = prog.attach(&netns).map_err(kernel(format!("attaching {} to {THIS_NETNS}", names::PROG_L4_STEER)))?;
        let link = FdLink::from(prog.take_link(id).map_err(kernel("taking the sk_lookup link"))?);
        let _ = std::fs::remove_file(&pin);
        link.pin(&pin).map_err(kernel(format!("pinning {}", pin.display())))?;
    }
    let check = netns_link::open_pinned(&pin).and_then(|link| netns_link::info(link.as_fd()));
    match check {
        Ok(i) if i.sk_lookup && i.netns_ino == ino && i.prog_id == prog_id => Ok(()),
        Ok(i) => Err(DataplaneError::Kernel {
            context: format!("{} is not attached to this network namespace after attaching it", names::PROG_L4_STEER),
            source: anyhow::anyhow!(
                "the pinned link runs program {} in namespace {} (expected {prog_id} in {ino})",
                i.prog_id,
                i.netns_ino
            ),
        }),
        Err(e) => Err(kernel(format!("reading back {}", pin.display()))(e)),
    }
}

/// Swaps the program behind this namespace's pinned `l4_steer` link, if a previous process
/// pinned one (a new process must not leave the old program running against its maps).
pub fn refresh_l4_steer(ebpf: &mut Ebpf, pins: &PinDir) -> Result<(), DataplaneError> {
    if l4_steer_pin(pins)?.exists() { ensure_l4_steer(ebpf, pins) } else { Ok(()) }
}

/// Attaches `sandbox_in` (tcx egress) and `sandbox_out` (tcx ingress) to `ifname`, or swaps the
/// programs behind existing pinned links.
pub fn ensure_sandbox_hooks(ebpf: &mut Ebpf, pins: &PinDir, ifname: &str, ifindex: u32) -> Result<(), DataplaneError> {
    for (kind, name, attach_type) in [
        (LinkKind::TcxIn, names::PROG_SANDBOX_IN, TcAttachType::Egress),
        (LinkKind::TcxOut, names::PROG_SANDBOX_OUT, TcAttachType::Ingress),
    ] {
        let prog = classifier(ebpf, name)?;
        let prog_id = prog.info().map_err(kernel("program info"))?.id();
        let pin = pins.link(kind, ifindex);
        if let Ok(pinned) = PinnedLink::from_pin(&pin) {
            let link = SchedClassifierLink::try_from(FdLink::from(pinned)).map_err(kernel("pinned link is not tcx"))?;
            match prog.attach_to_link(link) {
                // Close our fd on the link at once; the pin keeps it alive.
                Ok(id) => drop(prog.take_link(id)),
                Err(e) => {
                    tracing::warn!(interface = ifname, error = %e, "replacing the pinned tcx link failed; attaching anew")
                }
            }
        }
        if !tcx_has(ifindex, attach_type, prog_id) {
            let _ = std::fs::remove_file(&pin);
            let id = prog
                .attach_with_options(ifname, attach_type, TcAttachOptions::TcxOrder(LinkOrder::first()))
                .map_err(kernel(format!("attaching {name} to {ifname}")))?;
            let link = prog.take_link(id).map_err(kernel("taking the link"))?;
            let fd = FdLink::try_from(link).map_err(kernel("tcx link without fd"))?;
            fd.pin(&pin).map_err(kernel(format!("pinning {}", pin.display())))?;
        }
        if !tcx_has(ifindex, attach_type, prog_id) {
            return Err(DataplaneError::Kernel {
                context: format!("{name} is not attached to {ifname} after attaching it"),
                source: anyhow::anyhow!("tcx query does not list program {prog_id}"),
            });
        }
    }
    Ok(())
}

fn tcx_has(ifindex: u32, attach_type: TcAttachType, prog_id: u32) -> bool {
    super::query::tcx_prog_ids(ifindex, attach_type).is_ok_and(|ids| ids.contains(&prog_id))
}

/// Attaches the edge guard to `ifname` in `mode`, or swaps the program behind its pinned link.
pub fn ensure_edge_guard(
    ebpf: &mut Ebpf,
    pins: &PinDir,
    ifname: &str,
    ifindex: u32,
    mode: XdpModeSetting,
) -> Result<(), DataplaneError> {
    let prog = xdp(ebpf)?;
    let pin = pins.link(LinkKind::Xdp, ifindex);
    if let Ok(pinned) = PinnedLink::from_pin(&pin) {
        let link = XdpLink::try_from(FdLink::from(pinned)).map_err(kernel("pinned link is not XDP"))?;
        match prog.attach_to_link(link) {
            Ok(id) => {
                drop(prog.take_link(id));
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(interface = ifname, error = %e, "replacing the pinned XDP link failed; attaching anew");
                let _ = std::fs::remove_file(&pin);
            }
        }
    }
    let mode = match mode {
        XdpModeSetting::Skb => XdpMode::Skb,
        XdpModeSetting::Native => XdpMode::Driver,
    };
    let id =
        prog.attach(ifname, mode).map_err(kernel(format!("attaching the edge guard to {ifname} ({mode:?} mode)")))?;
    let link = prog.take_link(id).map_err(kernel("taking the XDP link"))?;
    let fd =
        FdLink::try_from(link).map_err(kernel("the kernel gave a netlink XDP attachment; bpf links are required"))?;
    fd.pin(&pin).map_err(kernel(format!("pinning {}", pin.display())))?;
    Ok(())
}

/// Removes link pins whose interface no longer exists, or (for XDP) that are not `keep_xdp`,
/// and sk_lookup pins whose network namespace is gone. Unpinning the last reference detaches
/// the program.
pub fn prune_links(pins: &PinDir, keep_xdp: Option<u32>) -> Vec<String> {
    let mut removed = Vec::new();
    let Ok(dir) = std::fs::read_dir(pins.links()) else { return removed };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((kind, ifindex)) = LinkKind::parse_pin(&name) else { continue };
        if kind == LinkKind::SkLookup {
            // The kernel detaches the link of a namespace that ends and reports it without one.
            let defunct = netns_link::open_pinned(&entry.path())
                .and_then(|l| netns_link::info(l.as_fd()))
                .is_ok_and(|i| i.netns_ino == 0);
            if defunct && std::fs::remove_file(entry.path()).is_ok() {
                removed.push(name);
            }
            continue;
        }
        let gone = nix::net::if_::if_indextoname(ifindex).is_err();
        let stale_xdp = kind == LinkKind::Xdp && keep_xdp != Some(ifindex);
        if (gone || stale_xdp) && std::fs::remove_file(entry.path()).is_ok() {
            removed.push(name);
        }
    }
    removed
}

/// Detaches everything and removes the pin directory.
pub fn teardown(root: &Path) -> Result<(), DataplaneError> {
    if !root.exists() {
        return Ok(());
    }
    std::fs::remove_dir_all(root).map_err(kernel(format!("removing {}", root.display())))
}
