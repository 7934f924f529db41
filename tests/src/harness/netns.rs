//! [`Netns`]: a named network namespace that deletes itself on drop.

use std::fmt;
use std::fs::File;
use std::io;
use std::panic;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;

use nix::sched::{CloneFlags, setns};

use super::sys::{self, global_lock, ip, write_sysctl};

/// Prefix of every namespace the harness creates: `gwt-<pid>-<counter>`.
pub const NETNS_PREFIX: &str = "gwt-";

static NEXT_NETNS: AtomicU32 = AtomicU32::new(0);

/// A network namespace created with `ip netns add gwt-<pid>-<counter>` and deleted
/// (`ip netns del`) when dropped, including when the test panics.
///
/// Its loopback interface is up. Code runs inside it with [`Netns::run`] (a closure on a
/// dedicated thread that entered the namespace with `setns`) or [`Netns::command`]
/// (`ip netns exec`). Sockets created inside keep belonging to the namespace and can be used from
/// any thread afterwards.
///
/// Deleting the name does not end the namespace while something still references it (a socket
/// made inside, a thread inside); the kernel frees it with the last reference. Interfaces that
/// must disappear at a precise moment are therefore deleted explicitly (see
/// [`super::SandboxLink`]).
pub struct Netns {
    name: String,
    file: File,
}

/// What lives in a harness namespace (the namespace itself, a sandbox, an outside client): a
/// place to listen in ([`Place`](super::Place)) and to connect from ([`Origin`](super::Origin)).
pub trait InNetns {
    /// Its namespace.
    fn netns(&self) -> &Netns;
}

impl InNetns for Netns {
    fn netns(&self) -> &Netns {
        self
    }
}

impl InNetns for super::Sandbox {
    fn netns(&self) -> &Netns {
        &self.ns
    }
}

impl InNetns for super::OutsideClient {
    fn netns(&self) -> &Netns {
        &self.ns
    }
}

impl Netns {
    /// Creates a fresh namespace; panics with the `ip` error if it cannot.
    pub fn new() -> Netns {
        sys::require_root();
        Netns::try_new().unwrap_or_else(|e| panic!("cannot create a network namespace: {e}"))
    }

    /// Creates a fresh namespace.
    pub fn try_new() -> io::Result<Netns> {
        let n = NEXT_NETNS.fetch_add(1, Ordering::Relaxed);
        let name = format!("{NETNS_PREFIX}{}-{n}", std::process::id());
        {
            // `ip netns add` sets up the /run/netns mount the first time; concurrent first
            // calls can race on that, so creation is serialized (it takes a few ms).
            let _lock = global_lock()?;
            let path = PathBuf::from("/run/netns").join(&name);
            if path.exists() {
                // Left by an earlier process that had our pid: it is stale by construction.
                let _ = ip(&["netns", "del", &name]);
            }
            ip(&["netns", "add", &name])?;
        }
        let file = match File::open(format!("/run/netns/{name}")) {
            Ok(f) => f,
            Err(e) => {
                let _ = ip(&["netns", "del", &name]);
                return Err(io::Error::new(e.kind(), format!("cannot open /run/netns/{name}: {e}")));
            }
        };
        // From here on, Drop cleans up.
        let ns = Netns { name, file };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (as in `ip netns list`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, usable with `setns` or `nsenter --net=`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs `f` on a new thread that first enters this namespace, waits for it and returns its
    /// result. A panic in `f` is propagated to the caller. `f` may borrow from the caller.
    ///
    /// ```no_run
    /// # use gateway_tests::harness::Netns;
    /// let ns = Netns::new();
    /// let listener = ns.run(|| std::net::TcpListener::bind("0.0.0.0:3000")).expect("bind");
    /// ```
    pub fn run<F, R>(&self, f: F) -> R
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        thread::scope(|s| {
            let handle = thread::Builder::new()
                .name(format!("netns {}", self.name))
                .spawn_scoped(s, || {
                    self.enter_current_thread();
                    f()
                })
                .unwrap_or_else(|e| panic!("cannot spawn a thread for netns {}: {e}", self.name));
            match handle.join() {
                Ok(r) => r,
                Err(payload) => panic::resume_unwind(payload),
            }
        })
    }

    /// Like [`Netns::run`] but does not wait: `f` runs on a detached thread inside the namespace.
    pub fn spawn<F, R>(&self, f: F) -> thread::JoinHandle<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let file =
            self.file.try_clone().unwrap_or_else(|e| panic!("cannot duplicate the fd of netns {}: {e}", self.name));
        let name = self.name.clone();
        thread::Builder::new()
            .name(format!("netns {name}"))
            .spawn(move || {
                setns(&file, CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("setns into netns {name} failed: {e}"));
                drop(file);
                f()
            })
            .unwrap_or_else(|e| panic!("cannot spawn a thread for netns {}: {e}", self.name))
    }

    /// Moves the *calling thread* into the namespace. Only for threads the caller owns and
    /// throws away afterwards (the thread stays inside).
    fn enter_current_thread(&self) {
        setns(&self.file, CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("setns into netns {} failed: {e}", self.name));
    }

    /// A [`Command`] that runs `program` inside the namespace (`ip netns exec <name> program`);
    /// add arguments and run it as usual.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `args[0] args[1..]` inside the namespace; returns stdout, or an error with the
    /// command line, exit status and stderr.
    pub fn exec(&self, args: &[&str]) -> io::Result<String> {
        let (program, rest) =
            args.split_first().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
        sys::run(self.command(program).args(rest))
    }

    /// Runs `ip <args>` against this namespace (`ip -n <name> <args>`).
    pub fn ip(&self, args: &[&str]) -> io::Result<String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Sets a sysctl of this namespace, e.g. `ns.sysctl("net/ipv4/ip_forward", "1")`
    /// (path relative to /proc/sys, `/` or `.` separated).
    pub fn sysctl(&self, key: &str, value: &str) -> io::Result<()> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.run(|| write_sysctl(&path, value))
    }
}

impl fmt::Debug for Netns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Netns({})", self.name)
    }
}

impl fmt::Display for Netns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "netns {}", self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            // Never panic in Drop (it may run during unwinding); say it loudly instead.
            eprintln!("harness: cannot delete netns {}: {e}", self.name);
        }
    }
}
