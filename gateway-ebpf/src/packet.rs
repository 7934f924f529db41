//! The one bounds-checked packet accessor, for both program types. Every read goes through
//! `Packet::load`, which checks `offset + N` against the end of the packet before reading.

use aya_ebpf::{
    helpers::generated::bpf_skb_load_bytes,
    programs::{TcContext, XdpContext},
};
use gateway_common::parse::{Packet, ParseError};

/// Copies the `N` bytes at `offset` of the linear packet data `[start, end)` into `out`, if they
/// fit.
#[inline(always)]
fn direct<const N: usize>(start: usize, end: usize, offset: usize, out: &mut [u8; N]) -> bool {
    let at = start + offset;
    if at + N > end {
        return false;
    }
    // SAFETY: `[at, at + N)` lies inside the packet, as just checked (and re-checked by the
    // verifier, which rejects the program otherwise).
    *out = unsafe { core::ptr::read_unaligned(at as *const [u8; N]) };
    true
}

/// A socket buffer (tc/tcx): direct packet access over the linear part, falling back to
/// `bpf_skb_load_bytes` for headers that lie in non-linear fragments.
pub struct SkbPacket<'a>(pub &'a TcContext);

impl Packet for SkbPacket<'_> {
    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize, out: &mut [u8; N]) -> Result<(), ParseError> {
        if direct(self.0.data(), self.0.data_end(), offset, out) {
            return Ok(());
        }
        // SAFETY: `out` is N writable bytes; the helper checks `offset + N` against the skb and
        // fails (zeroing `out`) past its end.
        let ret = unsafe {
            bpf_skb_load_bytes(self.0.skb.skb as *const _, offset as u32, out.as_mut_ptr().cast(), N as u32)
        };
        if ret == 0 { Ok(()) } else { Err(ParseError::Truncated) }
    }
}

/// An XDP buffer: direct packet access (headers are always in the first buffer).
pub struct XdpPacket<'a>(pub &'a XdpContext);

impl Packet for XdpPacket<'_> {
    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize, out: &mut [u8; N]) -> Result<(), ParseError> {
        if direct(self.0.data(), self.0.data_end(), offset, out) { Ok(()) } else { Err(ParseError::Truncated) }
    }
}
