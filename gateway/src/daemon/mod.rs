//! The daemon (`gateway serve`) wires every layer: configuration → state → data plane →
//! service (reconcile) → listeners (admin API, HTTPS edge) → READY, then signals (reload,
//! shutdown, upgrade) and successors (handoff) until the drain ends. See [`crate::lifecycle`]
//! and [`crate::handoff`].

mod banner;

use crate::{
    admin,
    config::Config,
    dataplane::Dataplane,
    edge::{self, EdgeListener},
    handoff::{self, HandoffServer, Inherited, Successor},
    l4::{self, L4Listener},
    lifecycle::{self, ConfigSource, Event, Notifier, Reloadable, Signals},
    model::fleet::FleetHost,
    paths,
    service::App,
    state::{EtcdSettings, EtcdStore, EtcdTls, FileStore, Store},
    telemetry::metrics,
};
use anyhow::Context;
use std::{
    ffi::OsString,
    future::Future,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Flag added to the command line of a successor.
const TAKEOVER_FLAG: &str = "--takeover";

/// How `gateway serve` was asked to run.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// The configuration file (`None`: the default path, unless `dev`).
    pub config: Option<PathBuf>,
    /// The built-in development configuration.
    pub dev: bool,
    /// Take the listeners over from the running gateway with the same state directory.
    pub takeover: bool,
    /// How long in-flight requests may run after a stop or a handover.
    pub drain_timeout: Duration,
}

/// Runs the gateway until it stops. A configuration with problems is an error holding
/// [`crate::config::ConfigErrors`] (exit 64), returned before anything is bound.
pub fn run(args: ServeOptions) -> anyhow::Result<u8> {
    let source = if args.dev {
        ConfigSource::Dev(paths::dev_state_dir())
    } else {
        ConfigSource::File(args.config.clone().unwrap_or_else(|| paths::DEFAULT_CONFIG.into()))
    };
    let config = source.load()?;
    // Resolved now: after an upgrade replaced the file, /proc/self/exe names the old inode,
    // while this path names the new binary, which a successor must run.
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let options = Options {
        takeover: args.takeover,
        drain: args.drain_timeout,
        exe,
        args: std::env::args_os().skip(1).collect(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("gateway")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(source, config, options))?;
    Ok(0)
}

struct Options {
    takeover: bool,
    drain: Duration,
    exe: PathBuf,
    args: Vec<OsString>,
}

/// What a started gateway holds.
struct Started {
    app: Arc<App>,
    admin: Arc<admin::Listener>,
    https: Arc<EdgeListener>,
    /// The public TCP ports' listener (`None` when `l4.port_range` is empty).
    l4: Option<Arc<L4Listener>>,
    lock_fd: std::os::fd::RawFd,
    /// The fleet's store, which the replica follows (`None` on a single host).
    fleet: Option<Arc<EtcdStore>>,
    /// A fleet member keeps `state.dir` locked (one gateway per directory) without storing
    /// its state there.
    _state_lock: Option<FileStore>,
}

/// Connects to the fleet's etcd; `saved`: a gateway's replica is saved under `state.dir`, and
/// read when etcd cannot be (not for a one-off command).
pub(crate) async fn connect_fleet(config: &Config, saved: bool) -> anyhow::Result<EtcdStore> {
    let f = &config.fleet;
    let user = if f.etcd_user.is_empty() {
        None
    } else {
        let password = std::fs::read_to_string(&f.etcd_password_file)
            .with_context(|| format!("fleet.etcd_password_file {}", f.etcd_password_file.display()))?;
        Some((f.etcd_user.clone(), password.trim_end_matches(['\n', '\r']).to_string()))
    };
    let replica = saved.then(|| config.state.dir.join(paths::FLEET_REPLICA_FILE));
    let tls = match f.etcd.iter().any(|e| e.starts_with("https://")) {
        false => None,
        true => {
            let read =
                |key: &str, path: &Path| std::fs::read(path).with_context(|| format!("fleet.{key} {}", path.display()));
            // No CA named: the system's roots (Debian's bundle).
            let ca = match f.etcd_ca.as_os_str().is_empty() {
                true => read("etcd_ca (empty: the system's roots)", Path::new(paths::SYSTEM_CA_BUNDLE))?,
                false => read("etcd_ca", &f.etcd_ca)?,
            };
            let identity = match f.etcd_cert.as_os_str().is_empty() {
                true => None,
                false => Some((read("etcd_cert", &f.etcd_cert)?, read("etcd_key", &f.etcd_key)?)),
            };
            Some(EtcdTls { ca, identity })
        }
    };
    let settings = EtcdSettings { endpoints: f.etcd.clone(), prefix: f.prefix.clone(), user, replica, tls };
    EtcdStore::connect(&settings)
        .await
        .with_context(|| format!("cannot connect to the fleet's etcd ({})", f.etcd.join(", ")))
}

/// Loads the state (with the predecessor's lock when taking over), opens the data plane,
/// reconciles, and binds (or adopts) the listeners.
async fn start(config: Config, mut inherited: Option<&mut Inherited>) -> anyhow::Result<Started> {
    let admin_listen = config.admin_listen().map_err(|e| anyhow::anyhow!("listen.admin: {e}"))?;
    let state_dir = config.state.dir.clone();
    let lock = match &inherited {
        Some(h) => Some(h.take_lock().context("the inherited state lock")?),
        None => None,
    };
    let store = tokio::task::spawn_blocking(move || match lock {
        Some(lock) => FileStore::open_inherited(&state_dir, lock),
        None => FileStore::open(&state_dir),
    })
    .await
    .context("state task")?
    .with_context(|| format!("cannot open the state directory {}", config.state.dir.display()))?;
    let lock_fd = store.lock_fd();
    let fleet = match config.fleet.enabled() {
        true => Some(Arc::new(connect_fleet(&config, true).await?)),
        false => None,
    };
    let (app_store, state_lock): (Arc<dyn Store>, _) = match &fleet {
        Some(etcd) => (etcd.clone(), Some(store)),
        None => (Arc::new(store), None),
    };
    let l4_fd = inherited.as_mut().and_then(|h| h.take("l4"));
    let l4 = l4::bind(&config, l4_fd)?;
    let dataplane = if config.dataplane.enabled {
        let dataplane = Dataplane::open(&config.dataplane_settings())
            .with_context(|| format!("cannot open the data plane at {}", config.dataplane.bpffs.display()))?
            .with_observer(metrics::global());
        dataplane
            .set_edge_limits(config.dataplane.syn_rate, config.dataplane.syn_burst)
            .context("cannot set the edge guard's per-source connection rate")?;
        if let Some(l4) = &l4 {
            // SAFETY: the descriptor is the listener's, open for as long as `l4` lives.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(l4.raw_fd()) };
            dataplane
                .steer_l4(fd, config.l4.ipv4(), l4.range())
                .context("cannot steer the public TCP ports to their listener (sk_lookup)")?;
        }
        if let Some(maps) = dataplane.maps_dir()
            && let Err(e) = metrics::global().attach_dataplane(&maps)
        {
            tracing::warn!(error = %e, "the verdict counters will be missing from /metrics");
        }
        dataplane
    } else {
        tracing::warn!("dataplane.enabled = false: sandbox ports are NOT enforced in the kernel");
        Dataplane::disabled()
    };
    let app = Arc::new(App::start(config, app_store, dataplane).await?);
    let (https_fd, admin_fd, fleet_fd) = match inherited {
        Some(h) => (h.take("https"), h.take("admin"), h.take("fleet")),
        None => (None, None, None),
    };
    // Every listener is bound before READY: once the admin API answers, HTTPS does too.
    let https = edge::bind(&app.config(), https_fd, fleet_fd).await?;
    let admin = match admin_fd {
        Some(fd) => admin::Listener::inherit(fd, &admin_listen)?,
        None => admin::bind(&admin_listen).await?,
    };
    Ok(Started {
        app,
        admin: Arc::new(admin),
        https: Arc::new(https),
        l4: l4.map(Arc::new),
        lock_fd,
        fleet,
        _state_lock: state_lock,
    })
}

/// A background task and what stops it.
struct Task {
    stop: CancellationToken,
    handle: Option<JoinHandle<()>>,
    name: &'static str,
}

impl Task {
    fn spawn<F: Future<Output = ()> + Send + 'static>(
        name: &'static str,
        f: impl FnOnce(CancellationToken) -> F,
    ) -> Self {
        let stop = CancellationToken::new();
        let handle = tokio::spawn(f(stop.clone()));
        Self { stop, handle: Some(handle), name }
    }

    /// Stops it and waits for it to finish.
    async fn stop(&mut self) {
        self.stop.cancel();
        if let Some(handle) = self.handle.take()
            && let Err(e) = handle.await
        {
            tracing::error!(task = self.name, error = %e, "task failed");
        }
    }
}

/// What runs while the gateway serves: the accept loops of the listeners and the tasks that
/// mutate the state (the preview reaper, a fleet member's replica), each stoppable on its own.
struct Serving {
    app: Arc<App>,
    admin: Arc<admin::Listener>,
    https: Arc<EdgeListener>,
    l4: Option<Arc<L4Listener>>,
    fleet: Option<Arc<EtcdStore>>,
    admin_task: Task,
    edge_task: Task,
    /// The public TCP ports' accept loop (and the connections it serves).
    l4_task: Option<Task>,
    reaper: Task,
    /// A fleet member's replica, the task keeping its host key alive, the one saving the
    /// replica.
    replica: Option<(Task, Task, Task)>,
}

impl Serving {
    fn start(
        app: Arc<App>,
        admin: Arc<admin::Listener>,
        https: Arc<EdgeListener>,
        l4: Option<Arc<L4Listener>>,
        fleet: Option<Arc<EtcdStore>>,
    ) -> Self {
        let admin_task = Self::admin_task(&app, &admin);
        let edge_task = {
            let (app, https) = (app.clone(), https.clone());
            Task::spawn("HTTPS listener", move |stop| edge::serve(https, app, stop.cancelled_owned()))
        };
        let l4_task = l4.clone().map(|listener| {
            let (app, workers) = (app.clone(), https.workers());
            Task::spawn("public TCP listener", move |stop| l4::serve(listener, app, workers, stop.cancelled_owned()))
        });
        let reaper = Self::reaper(&app);
        let replica = Self::replica(&app, &https, fleet.as_ref());
        Self { app, admin, https, l4, fleet, admin_task, edge_task, l4_task, reaper, replica }
    }

    fn replica(app: &Arc<App>, https: &EdgeListener, fleet: Option<&Arc<EtcdStore>>) -> Option<(Task, Task, Task)> {
        let store = fleet?.clone();
        let config = app.config();
        let address = match config.fleet.advertise.parse() {
            Ok(a) => a,
            Err(_) => https.fleet_addr()?,
        };
        let me = FleetHost { host: config.fleet.host.clone(), address };
        let follower = {
            let (app, store) = (app.clone(), store.clone());
            Task::spawn("fleet replica", move |stop| crate::service::fleet::follow(app, store, stop.cancelled_owned()))
        };
        let saver = {
            let (app, store) = (app.clone(), store.clone());
            Task::spawn("fleet replica saver", move |stop| {
                crate::service::fleet::persist(app, store, stop.cancelled_owned())
            })
        };
        let announcer = Task::spawn("fleet host key", move |stop| {
            crate::service::fleet::announce(store, me, stop.cancelled_owned())
        });
        Some((follower, announcer, saver))
    }

    fn admin_task(app: &Arc<App>, admin: &Arc<admin::Listener>) -> Task {
        let (app, admin) = (app.clone(), admin.clone());
        Task::spawn("admin listener", move |stop| admin::serve(admin, app, stop.cancelled_owned()))
    }

    fn reaper(app: &Arc<App>) -> Task {
        let app = app.clone();
        Task::spawn("preview reaper", move |stop| crate::service::reaper::run(app, stop.cancelled_owned()))
    }

    /// Stops accepting admin connections and lets the requests in flight finish; stops the
    /// tasks that mutate the state.
    async fn stop_mutators(&mut self) {
        self.admin_task.stop().await;
        self.reaper.stop().await;
        if let Some((follower, announcer, saver)) = &mut self.replica {
            follower.stop().await;
            announcer.stop().await;
            saver.stop().await;
        }
    }

    /// Accepts admin connections and reaps previews again (after a failed handoff).
    fn resume_mutators(&mut self) {
        self.admin_task = Self::admin_task(&self.app, &self.admin);
        self.reaper = Self::reaper(&self.app);
        self.replica = Self::replica(&self.app, &self.https, self.fleet.as_ref());
    }

    /// Stops accepting everywhere and drains, up to `deadline`.
    async fn drain(mut self, deadline: Duration) {
        let drained = async {
            self.stop_mutators().await;
            let l4 = async {
                if let Some(task) = &mut self.l4_task {
                    task.stop().await;
                }
            };
            tokio::join!(self.edge_task.stop(), l4);
        };
        if tokio::time::timeout(deadline, drained).await.is_err() {
            tracing::warn!(deadline_ms = deadline.as_millis() as u64, "drain deadline reached; closing what is left");
        }
    }
}

enum Exit {
    Shutdown,
    HandedOver,
}

async fn serve(source: ConfigSource, config: Config, options: Options) -> anyhow::Result<()> {
    let notifier = Notifier::from_env();
    // Installed first: a SIGHUP or SIGTERM during start-up is handled, not fatal.
    let mut signals = Signals::install().context("cannot install signal handlers")?;
    let state_dir = config.state.dir.clone();
    let mut inherited = if options.takeover {
        notifier.status("taking over from the running gateway");
        let h = handoff::take_over(&state_dir).await?;
        tracing::info!("received the listeners and the state lock from the running gateway");
        Some(h)
    } else {
        None
    };
    notifier.status("loading the state and the data plane");
    let started = match start(config, inherited.as_mut()).await {
        Ok(s) => s,
        Err(e) => {
            if let Some(h) = inherited {
                h.failed(format!("{e:#}")).await;
            }
            return Err(e);
        }
    };
    let Started { app, admin, https, l4, lock_fd, fleet, _state_lock } = started;
    let l4_at = l4.as_ref().and_then(|l| l.local_addr().ok()).map(|a| a.to_string());
    let admin_at = admin.describe();
    let https_at = https.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let reloadable: Vec<Arc<dyn Reloadable>> = vec![https.reloader()];
    let fleet_store = fleet.clone();
    let mut serving = Serving::start(app.clone(), admin.clone(), https, l4, fleet);
    if let Some(h) = inherited {
        // The predecessor stops accepting and drains from here on.
        if let Err(e) = h.ready().await {
            tracing::warn!(error = %e, "could not tell the previous process to drain");
        }
    }
    let mut handoff_server = bind_handoff(&state_dir);
    // Programs attached, state reconciled, every listener bound: ready.
    let watchdog = CancellationToken::new();
    notifier.spawn_watchdog(watchdog.clone());
    let sandboxes = app.list(None).map(|l| l.len()).unwrap_or_default();
    notifier.ready(&format!("serving: admin {admin_at}, https {https_at}, {sandboxes} sandboxes"));
    tracing::info!(admin = %admin_at, https = %https_at, l4 = l4_at.as_deref().unwrap_or("off"), sandboxes, pid = std::process::id(), "ready");
    if let ConfigSource::Dev(_) = &source {
        let config = app.config();
        print!("{}", banner::development(&config, &admin_at, &https_at, &config.dataplane.bpffs));
        let _ = std::io::Write::flush(&mut std::io::stdout());
    }

    let exit = loop {
        let successor = async {
            match &handoff_server {
                Some(server) => server.accept().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            event = signals.next() => match event {
                Event::Reload => {
                    tracing::info!(signal = "SIGHUP", "reloading the configuration");
                    let _ = lifecycle::reload(&source, &app, &reloadable, notifier);
                }
                Event::Upgrade => spawn_successor(&options),
                Event::Shutdown(name) => {
                    tracing::info!(signal = name, "shutting down: draining");
                    notifier.stopping("draining in-flight requests");
                    break Exit::Shutdown;
                }
            },
            successor = successor => match successor {
                Ok(successor) => {
                    let server = handoff_server.take();
                    match hand_over(successor, &mut serving, server.as_ref(), lock_fd).await {
                        Ok(()) => break Exit::HandedOver,
                        Err(e) => {
                            tracing::error!(error = %e, "the new process did not take over; serving on");
                            drop(server);
                            handoff_server = bind_handoff(&state_dir);
                            serving.resume_mutators();
                            notifier.status(&format!("serving: admin {admin_at}; a takeover failed: {e}"));
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "a takeover attempt failed"),
            },
        }
    };
    watchdog.cancel();
    serving.drain(options.drain).await;
    match exit {
        Exit::Shutdown => {
            if let Some(fleet) = &fleet_store {
                fleet.withdraw().await;
            }
            admin.remove_socket_file();
            if let Some(server) = &handoff_server {
                server.unlink();
            }
            tracing::info!("stopped; kernel enforcement stays in place");
        }
        Exit::HandedOver => tracing::info!("drained; the new process serves"),
    }
    Ok(())
}

/// Binds this process's handoff socket; without it, zero-downtime restarts are off (logged).
fn bind_handoff(state_dir: &Path) -> Option<HandoffServer> {
    match HandoffServer::bind(state_dir) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(path = %handoff::socket_path(state_dir).display(), error = %e, "zero-downtime restart unavailable");
            None
        }
    }
}

/// Gives the listeners and the state to `successor`. On success the caller drains and exits; on
/// failure nothing was closed and it serves on.
async fn hand_over(
    successor: Successor,
    serving: &mut Serving,
    server: Option<&HandoffServer>,
    lock_fd: std::os::fd::RawFd,
) -> Result<(), handoff::HandoffError> {
    tracing::info!(pid = successor.pid, version = %successor.version, "a new gateway process is taking over");
    // Admin requests in flight finish here; new admin connections wait in the socket's queue
    // for the successor. The HTTPS edge keeps serving (it only reads).
    serving.stop_mutators().await;
    let app = serving.app.clone();
    let frozen = app.freeze().await;
    if let Some(server) = server {
        server.unlink();
    }
    let mut listeners =
        vec![("admin".to_string(), serving.admin.raw_fd()), ("https".to_string(), serving.https.raw_fd())];
    listeners.extend(serving.https.fleet_fd().map(|fd| ("fleet".to_string(), fd)));
    listeners.extend(serving.l4.as_ref().map(|l| ("l4".to_string(), l.raw_fd())));
    match successor.hand_over(listeners, lock_fd).await {
        Ok(()) => {
            frozen.hand_over();
            tracing::info!("the new process is ready; draining");
            Ok(())
        }
        Err(e) => {
            drop(frozen);
            Err(e)
        }
    }
}

/// SIGUSR2: starts the program at its path (a new binary after an upgrade) with the same
/// arguments plus `--takeover`; it connects to this process's handoff socket.
fn spawn_successor(options: &Options) {
    let mut cmd = std::process::Command::new(&options.exe);
    cmd.args(options.args.iter().filter(|a| a.as_os_str() != TAKEOVER_FLAG)).arg(TAKEOVER_FLAG);
    cmd.stdin(std::process::Stdio::null());
    match cmd.spawn() {
        Ok(mut child) => {
            let pid = child.id();
            tracing::info!(signal = "SIGUSR2", pid, exe = %options.exe.display(), "started a new gateway process to take over");
            // Reaped if it fails while this process still runs.
            std::thread::spawn(move || match child.wait() {
                Ok(status) if !status.success() => tracing::error!(pid, %status, "the new gateway process failed"),
                _ => {}
            });
        }
        Err(e) => tracing::error!(error = %e, exe = %options.exe.display(), "cannot start a new gateway process"),
    }
}
