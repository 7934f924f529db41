//! The one bounds-checked packet accessor, for both program types: `Packet::header::<N>` checks
//! `start + offset + N > end` once per header, and `Header` field reads are checked against `N`
//! at compile time (see `gateway_common::parse`).

use aya_ebpf::{
    helpers::generated::bpf_skb_pull_data,
    programs::{TcContext, XdpContext},
};
use gateway_common::parse::{Header, Packet, ParseError, Summary, parse, try_parse};

/// How many bytes of headers the parser may need: Ethernet + 2 VLAN tags + IPv4 with maximal
/// options + TCP (or Ethernet + VLANs + IPv6 + TCP).
const MAX_HEADERS: u32 = 14 + 8 + 60 + 20;

#[inline(always)]
fn header<'a, const N: usize>(start: usize, end: usize, offset: usize) -> Result<Header<'a, N>, ParseError> {
    let at = start + offset;
    if at + N > end {
        return Err(ParseError::Truncated);
    }
    // SAFETY: `[at, at + N)` lies inside the packet, as just checked (and re-checked by the
    // verifier, which rejects the program otherwise).
    Ok(unsafe { Header::new(at as *const u8) })
}

/// A socket buffer (tc/tcx): the bytes in its linear area.
pub struct SkbPacket<'a>(&'a TcContext);

impl<'a> SkbPacket<'a> {
    /// Parses the headers of `ctx`: from its linear area when they all lie there (the common
    /// case: a TCP segment's headers are linear, its payload in page fragments), else after
    /// pulling the first `MAX_HEADERS` bytes into it (GSO/GRO skbs may carry headers in
    /// fragments). Pulling only then matters: the segments a local TCP sends are clones of its
    /// retransmit queue, and pulling a clone copies its whole head.
    #[inline(always)]
    pub fn parse(ctx: &'a TcContext) -> Summary {
        if let Ok(s) = try_parse(&SkbPacket(ctx)) {
            return s;
        }
        let linear = ctx.data_end() - ctx.data();
        let len = ctx.len();
        if (linear as u32) < MAX_HEADERS && len > linear as u32 {
            let want = if len < MAX_HEADERS { len } else { MAX_HEADERS };
            // SAFETY: plain helper call on our own context. On failure the parser simply sees
            // a short packet (and fails closed where that matters).
            unsafe { bpf_skb_pull_data(ctx.skb.skb as *mut _, want) };
        }
        parse(&SkbPacket(ctx))
    }
}

impl Packet for SkbPacket<'_> {
    #[inline(always)]
    fn header<const N: usize>(&self, offset: usize) -> Result<Header<'_, N>, ParseError> {
        header(self.0.data(), self.0.data_end(), offset)
    }
}

/// An XDP buffer (headers are always in the first buffer).
pub struct XdpPacket<'a>(pub &'a XdpContext);

impl Packet for XdpPacket<'_> {
    #[inline(always)]
    fn header<const N: usize>(&self, offset: usize) -> Result<Header<'_, N>, ParseError> {
        header(self.0.data(), self.0.data_end(), offset)
    }
}
