//! Test harness for privileged network tests: namespaces, veth links, listeners, clients and
//! bpffs pin directories that clean up after themselves.
//!
//! Tests of the eBPF data plane need real network namespaces and real TCP. This module gives each
//! test its own, uniquely named resources so tests can run in parallel (threads of one test
//! binary, or several binaries), and removes them in `Drop`, so they disappear even when the test
//! panics.
//!
//! # Requirements
//! Root (checked by [`require_root`], which panics with a clear message: privileged tests are
//! never skipped silently), iproute2 (`ip`), a kernel with veth and network namespaces.
//!
//! # Building blocks
//! - [`Netns`]: `ip netns add gwt-<pid>-<n>`, loopback up; [`Netns::run`] runs a closure on a
//!   thread inside it (`setns`), [`Netns::command`] / [`Netns::exec`] run programs inside it
//!   (`ip netns exec`).
//! - [`SandboxLink`]: a veth pair `gh<i>` (host) / `gs<i>` (in the namespace) with a /30 from
//!   198.18.0.0/15, routes both ways, default route of the namespace via the host.
//!   [`Sandbox`] = namespace + link; [`OutsideClient`] = the same shape used as a client on
//!   "another host", for edge (XDP) tests on [`OutsideClient::host_ifname`].
//! - [`spawn_tcp_echo`] / [`spawn_http_ok`]: listeners that say which port they are
//!   (`port <N>\n` greeting; `X-Harness-Port` header) and count accepted connections.
//! - [`try_connect`] (host, optional `SO_MARK`), [`try_connect_from`] (inside a namespace),
//!   [`connect_from`] / [`probe`] with an [`Origin`], and the assertions [`assert_reachable`],
//!   [`assert_unreachable`] (the SYN is silently dropped: timeout after [`DROP_TIMEOUT`]) and
//!   [`assert_refused`] (RST: nothing listens).
//! - [`BpffsDir`]: `/sys/fs/bpf/gwt-<pid>-<n>`, mounting bpffs first if needed.
//! - [`sweep_stale`]: deletes leftovers of *dead* earlier runs (not called by default).
//!
//! # Global effects on the host (documented on purpose)
//! - `net.ipv4.ip_forward` is set to 1 in the host namespace the first time a link is created,
//!   and left on (other tests may run concurrently). The host then routes between its
//!   interfaces, which is what a sandbox host does. See [`ensure_ip_forward`].
//! - bpffs is mounted at /sys/fs/bpf if it was not, and left mounted ([`ensure_bpffs`]).
//! - `/run/gwt-harness/` holds a lock file and one claim file per address block in use.
//! - Only addresses in 198.18.0.0/15 are used, only on interfaces the harness creates; blocks in
//!   198.18.0.0/24 are never allocated (left for hand-written examples).
//!
//! # Drop order
//! Declare things in the order they are needed; Rust drops locals in reverse, so listeners and
//! links go before their namespace. [`Sandbox`] and [`OutsideClient`] drop their link before
//! their namespace. A [`Listener`] does not borrow its namespace: its socket keeps the
//! namespace alive (unnamed) until the listener is dropped, but the veth pair is deleted
//! explicitly by [`SandboxLink`], so `ip link` is clean as soon as the link is dropped.
//!
//! # Example
//! ```no_run
//! use gateway_tests::harness::*;
//!
//! require_root();
//! let sb = Sandbox::new();
//! let declared = spawn_tcp_echo(&sb, sb.sock(3000));
//! let mut s = assert_reachable(Origin::gateway(), sb.sock(3000), "declared port");
//! assert_eq!(read_greeting(&mut s).expect("greeting"), "port 3000");
//!
//! let other = Sandbox::new();
//! assert_reachable(&other, sb.sock(3000), "sandbox to sandbox without BPF");
//! // With the isolation program attached to `sb.link.host_ifname()` this becomes:
//! // assert_unreachable(&other, sb.sock(3000), "sandbox to sandbox");
//! assert_eq!(declared.wait_accepted(2, REACH_TIMEOUT), 2);
//! ```
#![allow(clippy::new_without_default)]

mod bpffs;
mod client;
mod link;
mod listener;
mod netns;
mod sweep;
mod sys;

pub use bpffs::{BPFFS_PREFIX, BPFFS_ROOT, BpffsDir, bpffs_mounted_at, ensure_bpffs};
pub use client::{
    DROP_TIMEOUT, GATEWAY_MARK, Origin, REACH_TIMEOUT, Reach, assert_reachable, assert_refused, assert_unreachable,
    connect_from, probe, read_greeting, try_connect, try_connect_from, wait_connected,
};
pub use link::{
    HARNESS_NET, HARNESS_PREFIX, HOST_IF_PREFIX, LINK_PREFIX, OutsideClient, SANDBOX_IF_PREFIX, Sandbox, SandboxLink,
};
pub use listener::{Listener, Place, spawn_http_ok, spawn_http_ok_at, spawn_tcp_echo};
pub use netns::{InNetns, NETNS_PREFIX, Netns};
pub use sweep::{SweepReport, sweep_stale};
pub use sys::{STATE_DIR, ensure_ip_forward, require_root};
