//! Zero-downtime restart and upgrade: the listening sockets (and the state lock) pass from the
//! running gateway to its successor over a unix socket (`SCM_RIGHTS`), so no connection is ever
//! refused, while the old process drains what it already accepted.
//!
//! Why a handoff and not `SO_REUSEPORT`: with two processes bound to the same port, the kernel
//! splits new connections between their accept queues, and whatever sits in the old queue when
//! it closes is reset. Passing the one listening socket keeps one queue, owned by both processes
//! during the overlap; nothing is lost and nothing needs a BPF reuseport selector.
//!
//! The conversation (one JSON object per line, on `<state.dir>/handoff.sock`, mode 0600):
//!
//! ```text
//! new → old   {"hello": {"pid": …, "version": …}}
//!             old: stops accepting on the admin listener and lets its requests finish, waits
//!             for the mutation in progress and holds further ones (the state and the kernel
//!             maps must not change under the new process), removes the handoff socket path
//! old → new   {"listeners": ["admin", "https"]}   + SCM_RIGHTS [admin, https, state lock]
//!             new: opens the state with the inherited lock, loads the programs (the pinned
//!             links are swapped atomically: enforcement never lapses), reconciles, serves on
//!             the inherited sockets, binds its own handoff socket
//! new → old   {"ready": true}
//!             old: stops accepting, drains in-flight requests and tunnels up to the deadline,
//!             later mutations fail fast (503, retryable), exits 0
//! ```
//!
//! If the new process fails or goes away before `ready`, the old one resumes as if nothing
//! happened (it never closed anything).

use std::{
    io::{self, IoSlice, IoSliceMut, Read, Write},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::{
            fs::PermissionsExt,
            net::{UnixListener, UnixStream},
        },
    },
    path::{Path, PathBuf},
    time::Duration,
};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use serde::{Deserialize, Serialize};

/// How long either side waits for the other's next message (the new process's start-up, which
/// loads the programs and reconciles the state, happens inside one such wait).
pub const STEP_TIMEOUT: Duration = Duration::from_secs(120);
/// Most descriptors handed over in one message.
const MAX_FDS: usize = 8;

/// Errors of a handoff, on either side.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    /// No running gateway listens on the handoff socket.
    #[error("no running gateway to take over at {}: {source} (is one running with this state.dir?)", path.display())]
    NoPredecessor {
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The socket broke or timed out.
    #[error("handoff: {context}: {source}")]
    Io {
        /// What we were doing.
        context: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The other side said something unexpected, or refused.
    #[error("handoff: {0}")]
    Protocol(String),
}

fn io_err(context: &'static str) -> impl FnOnce(io::Error) -> HandoffError {
    move |source| HandoffError::Io { context, source }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
enum Message {
    Hello { pid: u32, version: String },
    Listeners(Vec<String>),
    Ready(bool),
    Error(String),
}

/// The path of the handoff socket in a state directory.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(crate::paths::HANDOFF_SOCKET)
}

/// The running gateway's end: accepts one successor at a time.
pub struct HandoffServer {
    listener: tokio::net::UnixListener,
    path: PathBuf,
}

impl HandoffServer {
    /// Binds `<state_dir>/handoff.sock` (replacing a stale file: the state directory is locked
    /// by this process, so no other gateway is listening there).
    pub fn bind(state_dir: &Path) -> io::Result<Self> {
        let path = socket_path(state_dir);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        Ok(Self { listener: tokio::net::UnixListener::from_std(listener)?, path })
    }

    /// Waits for a successor to connect and say hello.
    pub async fn accept(&self) -> Result<Successor, HandoffError> {
        let (stream, _) = self.listener.accept().await.map_err(io_err("accepting a successor"))?;
        let stream = stream.into_std().map_err(io_err("accepting a successor"))?;
        blocking(move || {
            stream.set_nonblocking(false).map_err(io_err("configuring the handoff connection"))?;
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .map_err(io_err("configuring the handoff connection"))?;
            let (message, _) = receive(&stream)?;
            match message {
                Message::Hello { pid, version } => Ok(Successor { stream, pid, version }),
                other => Err(HandoffError::Protocol(format!("expected hello, got {other:?}"))),
            }
        })
        .await
    }

    /// Removes the socket path (the successor binds its own).
    pub fn unlink(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A successor that said hello.
pub struct Successor {
    stream: UnixStream,
    /// Its process id.
    pub pid: u32,
    pub version: String,
}

impl Successor {
    /// Hands over `listeners` (name, socket) and the state lock; then waits for the successor
    /// to be ready (`Ok`), or to fail (`Err`: resume serving).
    pub async fn hand_over(self, listeners: Vec<(String, RawFd)>, lock: RawFd) -> Result<(), HandoffError> {
        blocking(move || {
            let names: Vec<String> = listeners.iter().map(|(n, _)| n.clone()).collect();
            let mut fds: Vec<RawFd> = listeners.iter().map(|(_, fd)| *fd).collect();
            fds.push(lock);
            send(&self.stream, &Message::Listeners(names), &fds)?;
            self.stream.set_read_timeout(Some(STEP_TIMEOUT)).map_err(io_err("configuring the handoff connection"))?;
            match receive(&self.stream)?.0 {
                Message::Ready(true) => Ok(()),
                Message::Error(e) => Err(HandoffError::Protocol(format!("the new process failed: {e}"))),
                other => Err(HandoffError::Protocol(format!("expected ready, got {other:?}"))),
            }
        })
        .await
    }

    /// Tells the successor why it cannot take over.
    pub async fn refuse(self, why: String) {
        let _ = blocking(move || send(&self.stream, &Message::Error(why), &[])).await;
    }
}

/// What a successor received from its predecessor.
pub struct Inherited {
    stream: UnixStream,
    listeners: Vec<(String, OwnedFd)>,
    lock: OwnedFd,
}

impl Inherited {
    /// Takes the listener named `name` (`admin`, `https`).
    pub fn take(&mut self, name: &str) -> Option<OwnedFd> {
        let i = self.listeners.iter().position(|(n, _)| n == name)?;
        Some(self.listeners.remove(i).1)
    }

    /// The state directory's lock file (already locked).
    pub fn take_lock(&self) -> io::Result<std::fs::File> {
        let fd = self.lock.try_clone()?;
        Ok(std::fs::File::from(fd))
    }

    /// Tells the predecessor to drain and exit.
    pub async fn ready(self) -> Result<(), HandoffError> {
        blocking(move || send(&self.stream, &Message::Ready(true), &[])).await
    }

    /// Tells the predecessor that this process failed: it resumes.
    pub async fn failed(self, why: String) {
        let _ = blocking(move || send(&self.stream, &Message::Error(why), &[])).await;
    }
}

/// Connects to the running gateway of `state_dir` and receives its listeners and state lock.
pub async fn take_over(state_dir: &Path) -> Result<Inherited, HandoffError> {
    let path = socket_path(state_dir);
    blocking(move || {
        let stream =
            UnixStream::connect(&path).map_err(|source| HandoffError::NoPredecessor { path: path.clone(), source })?;
        stream.set_read_timeout(Some(STEP_TIMEOUT)).map_err(io_err("configuring the handoff connection"))?;
        let hello = Message::Hello { pid: std::process::id(), version: env!("CARGO_PKG_VERSION").to_string() };
        send(&stream, &hello, &[])?;
        let (message, mut fds) = receive(&stream)?;
        let names = match message {
            Message::Listeners(names) => names,
            Message::Error(e) => return Err(HandoffError::Protocol(format!("the running gateway refused: {e}"))),
            other => return Err(HandoffError::Protocol(format!("expected listeners, got {other:?}"))),
        };
        if fds.len() != names.len() + 1 {
            return Err(HandoffError::Protocol(format!(
                "{} descriptors for {} listeners and a lock",
                fds.len(),
                names.len()
            )));
        }
        let lock = fds.pop().ok_or_else(|| HandoffError::Protocol("no state lock".into()))?;
        Ok(Inherited { stream, listeners: names.into_iter().zip(fds).collect(), lock })
    })
    .await
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, HandoffError> + Send + 'static,
) -> Result<T, HandoffError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| HandoffError::Protocol(format!("handoff task failed: {e}")))?
}

fn send(stream: &UnixStream, message: &Message, fds: &[RawFd]) -> Result<(), HandoffError> {
    let mut line = serde_json::to_vec(message).map_err(|e| HandoffError::Protocol(e.to_string()))?;
    line.push(b'\n');
    let iov = [IoSlice::new(&line)];
    let cmsgs = if fds.is_empty() { vec![] } else { vec![ControlMessage::ScmRights(fds)] };
    let sent = sendmsg::<()>(stream.as_raw_fd(), &iov, &cmsgs, MsgFlags::empty(), None)
        .map_err(|e| io_err("sending")(io::Error::from(e)))?;
    if sent < line.len() {
        // The descriptors went with the first part; the rest is plain bytes.
        (&*stream).write_all(&line[sent..]).map_err(io_err("sending"))?;
    }
    Ok(())
}

fn receive(stream: &UnixStream) -> Result<(Message, Vec<OwnedFd>), HandoffError> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut fds = Vec::new();
    let n = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(stream.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)
            .map_err(|e| io_err("receiving")(io::Error::from(e)))?;
        for c in msg.cmsgs().map_err(|e| io_err("receiving")(io::Error::from(e)))? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: the kernel just installed these descriptors in this process for us;
                // nothing else owns them.
                fds.extend(raw.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
        msg.bytes
    };
    if n == 0 {
        return Err(HandoffError::Protocol("the other process closed the connection".into()));
    }
    let mut line = buf[..n].to_vec();
    while !line.ends_with(b"\n") {
        let mut more = [0u8; 4096];
        let k = (&*stream).read(&mut more).map_err(io_err("receiving"))?;
        if k == 0 {
            return Err(HandoffError::Protocol("the other process closed the connection mid-message".into()));
        }
        line.extend_from_slice(&more[..k]);
    }
    let message = serde_json::from_slice(&line).map_err(|e| HandoffError::Protocol(format!("bad message: {e}")))?;
    Ok((message, fds))
}
