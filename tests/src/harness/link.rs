//! Veth links between the host namespace and a [`Netns`], with addresses from 198.18.0.0/15.
//!
//! Address plan: 198.18.0.0/15 (RFC 2544 benchmarking space, never routed on the internet) is
//! cut into 32,768 blocks of /30. Block `i` is `198.18.0.0 + 4*i`: `.1` is the host side, `.2`
//! the sandbox side. Blocks 0..64 (198.18.0.0/24) are never handed out, so hand-written examples
//! such as `198.18.0.2` cannot collide with harness links. A block is claimed by a file
//! `/run/gwt-harness/addr/<i>` holding the owner's pid, created under the global lock, so
//! parallel threads and parallel test processes never share a block; a claim whose pid is dead
//! is taken over (and its leftover interfaces deleted). The interface names derive from the block:
//! `gh<i>` (host side) and `gs<i>` (sandbox side), at most 7 characters.

use std::fmt;
use std::fs;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use super::netns::Netns;
use super::sys::{
    self, STATE_DIR, ensure_ip_forward, global_lock, ifindex, ip, pid_alive, write_sysctl, write_sysctl_if_present,
};

/// The range every harness address comes from.
pub const HARNESS_NET: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);
/// Prefix length of [`HARNESS_NET`].
pub const HARNESS_PREFIX: u8 = 15;
/// Prefix length of each link's block.
pub const LINK_PREFIX: u8 = 30;
/// Host-side interface name prefix (`gh<block>`).
pub const HOST_IF_PREFIX: &str = "gh";
/// Sandbox-side interface name prefix (`gs<block>`).
pub const SANDBOX_IF_PREFIX: &str = "gs";

const BLOCKS: u32 = 1 << (32 - HARNESS_PREFIX as u32 - 2);
const RESERVED_BLOCKS: u32 = 64;

static NEXT_LINK: AtomicU32 = AtomicU32::new(0);

pub(crate) fn claims_dir() -> PathBuf {
    PathBuf::from(STATE_DIR).join("addr")
}

/// Parses `gh<n>` / `gs<n>` into `n` (only names the harness could have made).
pub(crate) fn harness_ifname_block(name: &str) -> Option<u32> {
    let digits = name.strip_prefix(HOST_IF_PREFIX).or_else(|| name.strip_prefix(SANDBOX_IF_PREFIX))?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.len() > 5 {
        return None;
    }
    digits.parse().ok().filter(|&n| n < BLOCKS)
}

/// The pid recorded in the claim of block `n`, if any.
pub(crate) fn claim_owner(n: u32) -> Option<i32> {
    fs::read_to_string(claims_dir().join(n.to_string())).ok().and_then(|s| s.trim().parse().ok())
}

/// A claimed /30 block; the claim file is removed on drop.
struct Claim {
    block: u32,
}

impl Claim {
    /// Claims a free block, starting from one derived from pid and a counter.
    fn acquire() -> io::Result<Claim> {
        let _lock = global_lock()?;
        let dir = claims_dir();
        fs::create_dir_all(&dir)?;
        let pid = std::process::id();
        let n = NEXT_LINK.fetch_add(1, Ordering::Relaxed);
        let usable = BLOCKS - RESERVED_BLOCKS;
        let start = (pid.wrapping_mul(2_654_435_761).wrapping_add(n.wrapping_mul(40_503))) % usable;
        for step in 0..usable {
            let block = RESERVED_BLOCKS + (start + step) % usable;
            let path = dir.join(block.to_string());
            match claim_owner(block) {
                Some(owner) if pid_alive(owner) => continue,
                _ => {}
            }
            // Free, or left by a dead process: take it, and remove what that process left.
            fs::write(&path, pid.to_string())?;
            for name in [format!("{HOST_IF_PREFIX}{block}"), format!("{SANDBOX_IF_PREFIX}{block}")] {
                if ifindex(&name).is_some() {
                    let _ = ip(&["link", "del", &name]);
                }
            }
            return Ok(Claim { block });
        }
        Err(io::Error::other("all 32768 harness address blocks (198.18.0.0/15) are claimed"))
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let path = claims_dir().join(self.block.to_string());
        if claim_owner(self.block) == Some(std::process::id() as i32) {
            let _ = fs::remove_file(path);
        }
    }
}

/// A veth pair: `gh<i>` in the host namespace, `gs<i>` inside a [`Netns`].
///
/// Set up by [`SandboxLink::new`]:
/// - host side `gh<i>`: address `host_addr()/30`, up, `rp_filter=0`, IPv6 disabled. The /30 makes
///   the kernel install the host route to `sandbox_addr()` via `gh<i>`
///   (`198.18.x.y/30 dev gh<i> proto kernel scope link src host_addr`).
/// - sandbox side `gs<i>` (inside the namespace): address `sandbox_addr()/30`, up, IPv6 disabled,
///   `default via host_addr() dev gs<i>`, so everything else (other sandboxes, outside clients)
///   is reached through the host.
/// - the host's `net.ipv4.ip_forward` is set to 1 (global, see [`sys::ensure_ip_forward`]).
///
/// IPv6 is disabled on both ends so that no neighbour discovery / router solicitation traffic
/// shows up in data-plane counters; a test that wants IPv6 can write 0 to
/// `/proc/sys/net/ipv6/conf/<if>/disable_ipv6` (for the sandbox end, with `ns.sysctl`).
///
/// `rp_filter`: the harness sets it to 0 on both ends. The effective value is the maximum of
/// `conf/all` and the interface's, so a host with `all.rp_filter=1` still filters; that is fine
/// because routing is symmetric (each sandbox is reached through the interface its packets
/// come from), which strict reverse-path filtering accepts.
///
/// On drop the pair is deleted (`ip link del gh<i>` removes both ends) and the block released.
pub struct SandboxLink {
    block: u32,
    host_ifname: String,
    sandbox_ifname: String,
    host_ifindex: u32,
    netns: String,
    _claim: Claim,
}

impl SandboxLink {
    /// Creates the pair and moves the sandbox end into `ns`; panics with the failing step.
    pub fn new(ns: &Netns) -> SandboxLink {
        sys::require_root();
        SandboxLink::try_new(ns).unwrap_or_else(|e| panic!("cannot create a veth link into {ns}: {e}"))
    }

    /// Fallible [`SandboxLink::new`]. On error, whatever was created is removed.
    pub fn try_new(ns: &Netns) -> io::Result<SandboxLink> {
        Self::try_new_in(None, ns)
    }

    /// A link whose host side is in namespace `outer` (a host of a fleet, itself a namespace)
    /// rather than the test's own; it goes away with either namespace.
    pub fn new_in(outer: &Netns, ns: &Netns) -> SandboxLink {
        sys::require_root();
        SandboxLink::try_new_in(Some(outer), ns)
            .unwrap_or_else(|e| panic!("cannot create a veth link {outer} -> {ns}: {e}"))
    }

    fn try_new_in(outer: Option<&Netns>, ns: &Netns) -> io::Result<SandboxLink> {
        ensure_ip_forward()?;
        let claim = Claim::acquire()?;
        let block = claim.block;
        let link = SandboxLink {
            block,
            host_ifname: format!("{HOST_IF_PREFIX}{block}"),
            sandbox_ifname: format!("{SANDBOX_IF_PREFIX}{block}"),
            host_ifindex: 0,
            netns: ns.name().to_owned(),
            _claim: claim,
        };
        // From here on, an early return drops `link`, which deletes the pair.
        link.setup(outer, ns)
    }

    fn setup(mut self, outer: Option<&Netns>, ns: &Netns) -> io::Result<SandboxLink> {
        let (h, s) = (self.host_ifname.clone(), self.sandbox_ifname.clone());
        let host_cidr = format!("{}/{LINK_PREFIX}", self.host_addr());
        let sandbox_cidr = format!("{}/{LINK_PREFIX}", self.sandbox_addr());
        let host_addr = self.host_addr().to_string();
        let host_ip = |args: &[&str]| match outer {
            Some(o) => o.ip(args).map(drop),
            None => ip(args).map(drop),
        };

        host_ip(&["link", "add", &h, "type", "veth", "peer", "name", &s, "netns", ns.name()])?;
        let index = match outer {
            Some(o) => o.run(|| ifindex(&h)),
            None => ifindex(&h),
        };
        self.host_ifindex = index.ok_or_else(|| io::Error::other(format!("{h} vanished right after creation")))?;

        let sysctls = || -> io::Result<()> {
            write_sysctl_if_present(&format!("/proc/sys/net/ipv6/conf/{h}/disable_ipv6"), "1")?;
            write_sysctl(&format!("/proc/sys/net/ipv4/conf/{h}/rp_filter"), "0")
        };
        match outer {
            Some(o) => o.run(sysctls)?,
            None => sysctls()?,
        }
        host_ip(&["addr", "add", &host_cidr, "dev", &h])?;
        host_ip(&["link", "set", &h, "up"])?;

        let s2 = s.clone();
        ns.run(move || -> io::Result<()> {
            write_sysctl_if_present(&format!("/proc/sys/net/ipv6/conf/{s2}/disable_ipv6"), "1")?;
            write_sysctl(&format!("/proc/sys/net/ipv4/conf/{s2}/rp_filter"), "0")
        })?;
        ns.ip(&["addr", "add", &sandbox_cidr, "dev", &s])?;
        ns.ip(&["link", "set", &s, "up"])?;
        ns.ip(&["route", "add", "default", "via", &host_addr, "dev", &s])?;
        Ok(self)
    }

    /// The /30 block number; also the numeric part of both interface names.
    pub fn block(&self) -> u32 {
        self.block
    }

    /// Host-side interface name (`gh<i>`), where the data-plane programs attach.
    pub fn host_ifname(&self) -> &str {
        &self.host_ifname
    }

    /// Host-side interface index (in the host namespace).
    pub fn host_ifindex(&self) -> u32 {
        self.host_ifindex
    }

    /// Sandbox-side interface name (`gs<i>`), inside the namespace.
    pub fn sandbox_ifname(&self) -> &str {
        &self.sandbox_ifname
    }

    /// Name of the namespace holding the sandbox end.
    pub fn netns_name(&self) -> &str {
        &self.netns
    }

    /// The address of the namespace end (`198.18.0.0 + 4*block + 2`).
    pub fn sandbox_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(HARNESS_NET) + 4 * self.block + 2)
    }

    /// The address of the host end (`198.18.0.0 + 4*block + 1`), the namespace's gateway.
    pub fn host_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(HARNESS_NET) + 4 * self.block + 1)
    }

    /// `sandbox_addr():port`.
    pub fn sandbox_sock(&self, port: u16) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.sandbox_addr(), port))
    }

    /// `host_addr():port`.
    pub fn host_sock(&self, port: u16) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.host_addr(), port))
    }
}

impl fmt::Debug for SandboxLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SandboxLink({}={} <-> {}={} in {})",
            self.host_ifname,
            self.host_addr(),
            self.sandbox_ifname,
            self.sandbox_addr(),
            self.netns
        )
    }
}

impl Drop for SandboxLink {
    fn drop(&mut self) {
        if ifindex(&self.host_ifname).is_none() {
            return; // never created, or already gone with its namespace
        }
        if let Err(e) = ip(&["link", "del", &self.host_ifname])
            && ifindex(&self.host_ifname).is_some()
        {
            eprintln!("harness: cannot delete {}: {e}", self.host_ifname);
        }
    }
}

/// A sandbox: a [`Netns`] plus its [`SandboxLink`] to the host. Fields drop link first.
///
/// ```no_run
/// # use gateway_tests::harness::*;
/// let sb = Sandbox::new();
/// let _app = spawn_tcp_echo(&sb.ns, sb.sock(3000));
/// assert_reachable(Origin::host(), sb.sock(3000), "app port from the host");
/// ```
#[derive(Debug)]
pub struct Sandbox {
    /// The veth pair (dropped first).
    pub link: SandboxLink,
    /// The namespace (dropped second).
    pub ns: Netns,
}

impl Sandbox {
    /// A new namespace with a link; panics on failure.
    pub fn new() -> Sandbox {
        let ns = Netns::new();
        let link = SandboxLink::new(&ns);
        Sandbox { link, ns }
    }

    /// A sandbox behind an interface in namespace `host` (a host of a fleet).
    pub fn new_in(host: &Netns) -> Sandbox {
        let ns = Netns::new();
        let link = SandboxLink::new_in(host, &ns);
        Sandbox { link, ns }
    }

    /// The sandbox's address.
    pub fn addr(&self) -> Ipv4Addr {
        self.link.sandbox_addr()
    }

    /// `addr():port`.
    pub fn sock(&self, port: u16) -> SocketAddr {
        self.link.sandbox_sock(port)
    }
}

/// A client "on another host": its own namespace, linked to the host by its own veth pair
/// (same naming and addressing as [`SandboxLink`]; the client's end is the "sandbox" end).
///
/// The client reaches the host at [`OutsideClient::host_addr`] (directly connected) and anything
/// else through the host (default route). Use it for edge tests: attach the XDP guard to
/// [`OutsideClient::host_ifname`], listen in the host namespace on `host_addr()`, connect from
/// `Origin::from(&client)`.
#[derive(Debug)]
pub struct OutsideClient {
    /// The veth pair (dropped first).
    pub link: SandboxLink,
    /// The client's namespace (dropped second).
    pub ns: Netns,
}

impl OutsideClient {
    /// A new client namespace with its link; panics on failure.
    pub fn new() -> OutsideClient {
        let ns = Netns::new();
        let link = SandboxLink::new(&ns);
        OutsideClient { link, ns }
    }

    /// The client's own address (source of its connections).
    pub fn client_addr(&self) -> Ipv4Addr {
        self.link.sandbox_addr()
    }

    /// The host's address on this link: where the client connects to reach host ports.
    pub fn host_addr(&self) -> Ipv4Addr {
        self.link.host_addr()
    }

    /// `host_addr():port`.
    pub fn host_sock(&self, port: u16) -> SocketAddr {
        self.link.host_sock(port)
    }

    /// The host-side interface: the "public interface" the edge guard attaches to.
    pub fn host_ifname(&self) -> &str {
        self.link.host_ifname()
    }

    /// Index of [`OutsideClient::host_ifname`].
    pub fn host_ifindex(&self) -> u32 {
        self.link.host_ifindex()
    }
}
