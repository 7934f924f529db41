//! The one way the gateway opens a connection towards a sandbox: a TCP socket carrying the
//! data plane's `SO_MARK`, which `sandbox_in` requires for every new connection.

use std::{io, net::SocketAddr, os::fd::AsRawFd, time::Duration};
use tokio::net::{TcpSocket, TcpStream};

/// Sets `SO_MARK` on a socket (needs CAP_NET_ADMIN).
pub fn set_mark(fd: &impl AsRawFd, mark: u32) -> io::Result<()> {
    // SAFETY: `fd` is an open socket; the option value is a live u32 of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MARK,
            (&mark as *const u32).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
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
