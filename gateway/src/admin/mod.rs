//! The admin API: HTTP/1.1 + JSON over TCP (Bearer token) or a unix socket (mode 0600).
//!
//! Routes (see [`router`]):
//! - `PUT|GET|DELETE /v1/workspaces/{ws}/sandboxes/{name}`, `GET /v1/workspaces/{ws}/sandboxes`,
//!   `GET /v1/sandboxes`, `GET /v1/workspaces/{ws}/sandboxes/{name}/policy`;
//! - `POST|GET /v1/workspaces/{ws}/tokens` (create → 201 with the secret shown once; list without
//!   secrets), `GET|DELETE /v1/workspaces/{ws}/tokens/{name}` (show; revoke → 204);
//! - previews, preview tokens and sessions under `…/sandboxes/{name}/` (see [`previews`]);
//! - `GET /live`, `GET /ready`, `GET /metrics` (Prometheus text; no token needed: read-only, and
//!   the admin listener is kept from sandboxes by the data plane).

pub mod previews;
pub mod router;

use crate::{config::AdminListen, service::App};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use std::{
    future::Future,
    io,
    os::{
        fd::{AsRawFd, OwnedFd, RawFd},
        unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt},
    },
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};
use tokio::net::{TcpListener, UnixListener, UnixStream};

/// How long a client may take to send request headers.
/// Largest accepted request body.
pub const BODY_LIMIT: usize = 1024 * 1024;

const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight requests may take to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// At a drain, how long connections get to end by themselves (answers say `Connection: close`)
/// before the rest are closed gracefully.
const SOFT_DRAIN: Duration = Duration::from_secs(1);

/// Errors of the admin listener.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Binding failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Another process answers on the socket path.
    #[error("{} is in use by another running process", .0.display())]
    SocketInUse(PathBuf),
    /// The socket path exists and is not a socket.
    #[error("{} exists and is not a socket; refusing to replace it", .0.display())]
    NotASocket(PathBuf),
    /// A socket handed over by a predecessor does not listen where the configuration says.
    #[error("the admin socket handed over listens on {found}, but listen.admin is {want}: restart instead")]
    Inherited {
        /// `listen.admin`.
        want: String,
        /// What the socket is.
        found: String,
    },
}

/// A bound admin listener.
pub enum Listener {
    /// TCP: the Bearer token is required.
    Tcp(TcpListener),
    /// Unix socket: file permissions (0600) control access. The path is removed on shutdown.
    Unix(UnixListener, PathBuf),
}

impl Listener {
    /// The listening socket, to hand over to a successor (`crate::handoff`).
    pub fn raw_fd(&self) -> RawFd {
        match self {
            Listener::Tcp(l) => l.as_raw_fd(),
            Listener::Unix(l, _) => l.as_raw_fd(),
        }
    }

    /// Adopts a listening socket handed over by a predecessor; it must listen where `listen`
    /// says (a changed `listen.admin` needs a plain restart).
    pub fn inherit(fd: OwnedFd, listen: &AdminListen) -> Result<Self, AdminError> {
        let mismatch = |found: String| AdminError::Inherited { want: listen.to_string(), found };
        match listen {
            AdminListen::Tcp(addr) => {
                let std = std::net::TcpListener::from(fd);
                let local = std.local_addr().map_err(|e| mismatch(e.to_string()))?;
                if local != *addr && !(addr.port() == local.port() && addr.ip().is_unspecified()) {
                    return Err(mismatch(local.to_string()));
                }
                std.set_nonblocking(true).map_err(|e| mismatch(e.to_string()))?;
                Ok(Listener::Tcp(TcpListener::from_std(std).map_err(|e| mismatch(e.to_string()))?))
            }
            AdminListen::Unix(path) => {
                let std = std::os::unix::net::UnixListener::from(fd);
                let local = std.local_addr().map_err(|e| mismatch(e.to_string()))?;
                if local.as_pathname() != Some(path.as_path()) {
                    return Err(mismatch(format!("{local:?}")));
                }
                std.set_nonblocking(true).map_err(|e| mismatch(e.to_string()))?;
                Ok(Listener::Unix(UnixListener::from_std(std).map_err(|e| mismatch(e.to_string()))?, path.clone()))
            }
        }
    }

    /// Removes the unix socket file at a final shutdown (not after a handoff: the successor
    /// serves on it).
    pub fn remove_socket_file(&self) {
        if let Listener::Unix(_, path) = self
            && let Err(e) = std::fs::remove_file(path)
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove the admin socket");
        }
    }

    /// Where it listens.
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => l.local_addr().map(|a| a.to_string()).unwrap_or_else(|_| "tcp".into()),
            Listener::Unix(_, p) => format!("unix:{}", p.display()),
        }
    }
}

/// Binds the admin listener.
pub async fn bind(listen: &AdminListen) -> Result<Listener, AdminError> {
    let bind_err = |source| AdminError::Bind { addr: listen.to_string(), source };
    match listen {
        AdminListen::Tcp(addr) => Ok(Listener::Tcp(TcpListener::bind(addr).await.map_err(bind_err)?)),
        AdminListen::Unix(path) => {
            prepare_socket_path(path).await?;
            let listener = UnixListener::bind(path).map_err(bind_err)?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
            Ok(Listener::Unix(listener, path.clone()))
        }
    }
}

/// Creates the parent directory (0700) and removes a stale socket left by a dead process.
async fn prepare_socket_path(path: &Path) -> Result<(), AdminError> {
    let bind_err = |source| AdminError::Bind { addr: format!("unix:{}", path.display()), source };
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
        && !parent.exists()
    {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(parent).map_err(bind_err)?;
    }
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(bind_err(e)),
        Ok(meta) if !meta.file_type().is_socket() => Err(AdminError::NotASocket(path.to_path_buf())),
        Ok(_) => match UnixStream::connect(path).await {
            Ok(_) => Err(AdminError::SocketInUse(path.to_path_buf())),
            Err(_) => std::fs::remove_file(path).map_err(bind_err),
        },
    }
}

/// Serves the admin API until `shutdown` resolves, then lets in-flight requests finish. The
/// listener stays open (shared): the caller closes it, or hands it over.
pub async fn serve(listener: Arc<Listener>, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    let graceful = GracefulShutdown::new();
    let require_token = matches!(*listener, Listener::Tcp(_));
    let draining = Arc::new(AtomicBool::new(false));
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = accept(&listener) => accepted,
        };
        let io = match accepted {
            Ok(io) => io,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                // Out of descriptors and the like: do not spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        match io {
            Accepted::Tcp(s) => spawn_connection(&graceful, TokioIo::new(s), app.clone(), require_token, &draining),
            Accepted::Unix(s) => spawn_connection(&graceful, TokioIo::new(s), app.clone(), require_token, &draining),
        }
    }
    // Soft drain: answers now carry `Connection: close`, so keep-alive clients (a metrics
    // scraper) reconnect, to a successor after a handoff, instead of racing a close; and a
    // connection accepted just now, which a graceful shutdown would close as idle, gets the
    // time to send its first request.
    draining.store(true, Ordering::Release);
    let soft_until = tokio::time::Instant::now() + SOFT_DRAIN;
    while graceful.count() > 0 && tokio::time::Instant::now() < soft_until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await.is_err() {
        tracing::warn!("admin connections still open after {SHUTDOWN_GRACE:?}; closing them");
    }
}

/// Serves one connection in its own task, watched for graceful shutdown.
fn spawn_connection<I>(
    graceful: &GracefulShutdown,
    io: I,
    app: Arc<App>,
    require_token: bool,
    draining: &Arc<AtomicBool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let draining = draining.clone();
    let service = service_fn(move |req: hyper::Request<Incoming>| {
        let app = app.clone();
        let draining = draining.clone();
        async move {
            let mut response = router::handle(&app, req, require_token).await;
            if draining.load(Ordering::Acquire) {
                response.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
            }
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    let connection = graceful.watch(builder.serve_connection(io, service));
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "admin connection ended with an error");
        }
    });
}

enum Accepted {
    Tcp(tokio::net::TcpStream),
    Unix(UnixStream),
}

async fn accept(listener: &Listener) -> io::Result<Accepted> {
    match listener {
        Listener::Tcp(l) => l.accept().await.map(|(s, _)| Accepted::Tcp(s)),
        Listener::Unix(l, _) => l.accept().await.map(|(s, _)| Accepted::Unix(s)),
    }
}
