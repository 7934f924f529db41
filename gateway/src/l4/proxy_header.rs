//! The PROXY protocol version 2 header a public TCP port sends the app first when its exposure
//! asks for it (`proxyProtocol: "v2"`): the client's address and port, and the public address
//! and port it connected to.
//!
//! Written by hand rather than with a crate: for TCP over IPv4 it is one fixed layout of 28
//! bytes, the only one the gateway sends.

use std::net::SocketAddrV4;

/// The twelve bytes every v2 header starts with.
pub const SIGNATURE: [u8; 12] = [0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a];

/// Length of a v2 header for TCP over IPv4.
pub const V2_TCP4_LEN: usize = 28;

/// The v2 header of a TCP connection from `client` to `public` (command PROXY, family
/// `AF_INET`, protocol `STREAM`, no TLVs).
pub fn v2_tcp4(client: SocketAddrV4, public: SocketAddrV4) -> [u8; V2_TCP4_LEN] {
    let mut h = [0u8; V2_TCP4_LEN];
    h[..12].copy_from_slice(&SIGNATURE);
    h[12] = 0x21; // version 2, command PROXY
    h[13] = 0x11; // AF_INET, SOCK_STREAM
    h[14..16].copy_from_slice(&12u16.to_be_bytes());
    h[16..20].copy_from_slice(&client.ip().octets());
    h[20..24].copy_from_slice(&public.ip().octets());
    h[24..26].copy_from_slice(&client.port().to_be_bytes());
    h[26..28].copy_from_slice(&public.port().to_be_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let h = v2_tcp4("203.0.113.7:51234".parse().expect("client"), "198.51.100.1:20017".parse().expect("public"));
        assert_eq!(&h[..12], b"\r\n\r\n\0\r\nQUIT\n");
        assert_eq!(h[12..16], [0x21, 0x11, 0x00, 0x0c]);
        assert_eq!(h[16..20], [203, 0, 113, 7]);
        assert_eq!(h[20..24], [198, 51, 100, 1]);
        assert_eq!(u16::from_be_bytes([h[24], h[25]]), 51234);
        assert_eq!(u16::from_be_bytes([h[26], h[27]]), 20017);
    }
}
