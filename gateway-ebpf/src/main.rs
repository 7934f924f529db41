//! The gateway's eBPF programs. Entry points only: parse, decide (pure, in `gateway-common`),
//! count, return. Errors map to actions in exactly one place per hook: `decide`.
#![no_std]
#![no_main]

mod maps;
mod packet;

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::debug;
use gateway_common::{
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

/// XDP on the public interface: new TCP connections only to public host ports.
#[xdp]
pub fn edge_guard(ctx: XdpContext) -> u32 {
    let maps = KernelMaps::new();
    let v = decide::edge_guard(parse(&XdpPacket(&ctx)), &maps);
    account(&ctx, &maps, Hook::Edge, &v);
    if v.reason.is_drop() { xdp_action::XDP_DROP } else { xdp_action::XDP_PASS }
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
