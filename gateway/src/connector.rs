//! The one way the gateway opens a connection towards a sandbox: a TCP socket carrying the
//! data plane's `SO_MARK`, which `sandbox_in` requires for every new connection.

use std::{io, net::SocketAddr, os::fd::AsFd, time::Duration};
use tokio::net::{TcpSocket, TcpStream};

/// Sets `SO_MARK` on a socket (needs CAP_NET_ADMIN).
pub fn set_mark(fd: &impl AsFd, mark: u32) -> io::Result<()> {
    nix::sys::socket::setsockopt(fd, nix::sys::socket::sockopt::Mark, &mark).map_err(io::Error::from)
}

/// Opens a marked TCP connection to `addr`, failing with `TimedOut` after `timeout`.
pub async fn connect_marked(addr: SocketAddr, mark: u32, timeout: Duration) -> io::Result<TcpStream> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if mark != 0 {
        set_mark(&socket, mark)?;
    }
    let stream = tokio::time::timeout(timeout, socket.connect(addr)).await.map_err(|_| {
        io::Error::new(io::ErrorKind::TimedOut, format!("connect to {addr} timed out after {timeout:?}"))
    })??;
    stream.set_nodelay(true)?;
    Ok(stream)
}
