//! The gateway's eBPF programs. Entry points only: parse, decide (pure, in `gateway-common`),
//! count, return. Errors map to actions in exactly one place per hook: `decide`.
#![no_std]
#![no_main]

mod maps;
mod packet;

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC, sk_action, xdp_action},
    macros::{classifier, sk_lookup, xdp},
    programs::{SkLookupContext, TcContext, XdpContext},
};
use aya_log_ebpf::debug;
use gateway_common::{
    IPPROTO_TCP,
    counters::{Hook, Reason},
    decide::{self, Verdict},
    parse::parse,
};

use crate::{
    maps::KernelMaps,
    packet::{SkbPacket, XdpPacket},
};

/// `TCX_NEXT`: let the next program in the tcx chain (or the stack) decide.
const TCX_NEXT: i32 = TC_ACT_UNSPEC;

/// tcx egress of a sandbox's host-side interface: traffic INTO the sandbox.
#[classifier]
pub fn sandbox_in(ctx: TcContext) -> i32 {
    // SAFETY: the context pointer is valid for the whole program run.
    let mark = unsafe { (*ctx.skb.skb).mark };
    let maps = KernelMaps::new();
    let v = decide::into_sandbox(SkbPacket::parse(&ctx), mark, &maps);
    account(&ctx, &maps, Hook::SandboxIn, &v);
    if v.reason.is_drop() { TC_ACT_SHOT } else { TCX_NEXT }
}

/// tcx ingress of a sandbox's host-side interface: traffic OUT of the sandbox.
#[classifier]
pub fn sandbox_out(ctx: TcContext) -> i32 {
    // SAFETY: as above.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let maps = KernelMaps::new();
    let v = decide::out_of_sandbox(SkbPacket::parse(&ctx), ifindex, &maps);
    if v.remember_udp {
        maps::remember_udp_flow(&v.udp_flow);
    }
    account(&ctx, &maps, Hook::SandboxOut, &v);
    if v.reason.is_drop() { TC_ACT_SHOT } else { TCX_NEXT }
}

/// XDP on the public interface: new TCP connections only to public host ports and to exposed
/// L4 ports from their allow-lists, at most `syn_rate` per second per IPv4 source.
#[xdp]
pub fn edge_guard(ctx: XdpContext) -> u32 {
    let maps = KernelMaps::new();
    let v = decide::edge_guard(parse(&XdpPacket(&ctx)), &maps);
    account(&ctx, &maps, Hook::Edge, &v);
    if v.l4_port != 0 {
        maps.count_l4(v.l4_port, v.reason);
    }
    if v.reason.is_drop() { xdp_action::XDP_DROP } else { xdp_action::XDP_PASS }
}

/// `AF_INET`, as `bpf_sk_lookup.family` carries it.
const AF_INET: u32 = 2;

/// sk_lookup on the gateway's network namespace: a new IPv4 TCP connection to an exposed L4
/// port (in the configured range, on the configured address) gets the gateway's L4 listening
/// socket. Everything else, and everything while no gateway holds the socket, goes on to the
/// normal socket lookup: the program never drops (nothing else listens in the range, so an
/// unexposed port is reset there).
#[sk_lookup]
pub fn l4_steer(ctx: SkLookupContext) -> u32 {
    // SAFETY: the context pointer is valid for the whole program run; these fields are readable.
    let (family, protocol, local_ip4, local_port) = unsafe {
        let l = &*ctx.lookup;
        (l.family, l.protocol, l.local_ip4, l.local_port)
    };
    // `local_ip4` is in network order (its bytes in memory are the address), `local_port` in
    // host order.
    if family == AF_INET
        && protocol == u32::from(IPPROTO_TCP)
        && local_port <= u32::from(u16::MAX)
        && maps::l4_steered(local_ip4.to_ne_bytes(), local_port as u16)
    {
        let _ = maps::assign_l4_listener(&ctx);
    }
    sk_action::SK_PASS
}

/// A program that does nothing: the baseline `cargo xtask bench` compares the others against.
/// Never attached.
#[classifier]
pub fn bench_noop(_ctx: TcContext) -> i32 {
    TCX_NEXT
}

/// The XDP counterpart of `bench_noop`, the baseline of `edge_guard`. Never attached.
#[xdp]
pub fn bench_noop_xdp(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[inline(always)]
fn account<C: aya_ebpf::EbpfContext>(ctx: &C, maps: &KernelMaps, hook: Hook, v: &Verdict) {
    maps::count_verdict(hook.slot(v.reason));
    if v.for_sandbox {
        maps.count_sandbox(v.sandbox, v.reason.is_drop());
    }
    if v.reason.is_drop() {
        log_drop(ctx, hook, v.reason);
    }
}

#[inline(never)]
fn log_drop<C: aya_ebpf::EbpfContext>(ctx: &C, hook: Hook, reason: Reason) {
    debug!(ctx, "drop hook={} reason={}", hook as u32, reason as u32);
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
