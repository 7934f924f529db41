//! The one bounds-checked packet accessor, for both program types. Every read goes through
//! `Packet::load`, which fails instead of reading past the packet.

use aya_ebpf::{
    helpers::generated::bpf_xdp_load_bytes,
    programs::{TcContext, XdpContext},
};
use gateway_common::parse::{Packet, ParseError};

/// A socket buffer (tc/tcx): reads through `bpf_skb_load_bytes`, which also handles non-linear
/// data.
pub struct SkbPacket<'a>(pub &'a TcContext);

impl Packet for SkbPacket<'_> {
    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Result<[u8; N], ParseError> {
        self.0.load::<[u8; N]>(offset).map_err(|_| ParseError::Truncated)
    }
}

/// An XDP buffer: reads through `bpf_xdp_load_bytes` (kernel ≥ 5.18), bounds-checked by the
/// kernel, so variable offsets (IP options, VLAN tags) need no verifier gymnastics.
pub struct XdpPacket<'a>(pub &'a XdpContext);

impl Packet for XdpPacket<'_> {
    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Result<[u8; N], ParseError> {
        let mut out = [0u8; N];
        // SAFETY: `out` is N writable bytes; the helper checks `offset + N` against the packet.
        let ret = unsafe {
            bpf_xdp_load_bytes(self.0.ctx, offset as u32, out.as_mut_ptr().cast(), N as u32)
        };
        if ret == 0 { Ok(out) } else { Err(ParseError::Truncated) }
    }
}
