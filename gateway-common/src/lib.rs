//! Types, names and decision logic shared by the gateway (userspace) and its eBPF programs.
//!
//! Everything that crosses the user/kernel boundary is `#[repr(C)]`, made of fixed-width integers
//! and byte arrays, with explicit zeroed padding and a compile-time size assertion. Addresses and
//! ports are stored in network byte order as byte arrays, with typed accessors.
//!
//! The per-packet decision logic (`decide`) and the header parser (`parse`) are pure and generic
//! over a bounds-checked [`parse::Packet`] accessor, so the very code the kernel runs is also
//! unit-tested on the host with hand-made packets.
#![no_std]

#[cfg(any(test, feature = "test-packets"))]
extern crate std;

pub mod counters;
pub mod decide;
pub mod names;
pub mod parse;
pub mod policy;
#[cfg(any(test, feature = "test-packets"))]
pub mod testpkt;
#[cfg(any(test, feature = "test-packets"))]
pub mod verdict_cases;

/// TCP, as carried in the IPv4 protocol / IPv6 next-header field.
pub const IPPROTO_TCP: u8 = 6;
/// UDP.
pub const IPPROTO_UDP: u8 = 17;
/// ICMP (IPv4).
pub const IPPROTO_ICMP: u8 = 1;
/// ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;

/// Ports that can never be exposed, declared or previewed.
pub const RESERVED_PORTS: [u16; 3] = [80, 443, 8080];
/// The sandbox API inside the VM: always allowed from the gateway for every registered sandbox.
pub const SANDBOX_API_PORT: u16 = 8080;
/// System port inside the VM: always allowed from the gateway for every registered sandbox.
pub const SANDBOX_SYSTEM_PORT: u16 = 80;
/// The sandbox API over HTTPS: never reachable inside a sandbox.
pub const SANDBOX_NEVER_PORT: u16 = 443;

/// Whether `port` is one of [`RESERVED_PORTS`].
pub const fn is_reserved_port(port: u16) -> bool {
    port == 80 || port == 443 || port == 8080
}

/// Default `SO_MARK` the gateway sets on every socket it opens towards a sandbox.
pub const DEFAULT_MARK: u32 = 0x6777;
