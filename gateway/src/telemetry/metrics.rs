//! Prometheus metrics, served as text on the admin listener's `GET /metrics`.
//!
//! One registry per process, like the process itself: [`global()`] hands out a `&'static`
//! handle, so every layer records where the event happens (the store where it writes, the data
//! plane where it updates maps, the edge where it answers) without threading a handle through
//! constructors other layers own. [`Metrics::new`] builds a private registry for unit tests.
//!
//! What is exported (every name prefixed `gateway_`):
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `requests_total` | counter | `route` ([`RouteKind`]), `status`, `workspace` |
//! | `request_duration_seconds` | histogram | `route` |
//! | `upstream_latency_seconds` | histogram | `route` (time to the sandbox's response head) |
//! | `connections_open`, `connections_total` | gauge, counter | |
//! | `websockets_open`, `websockets_total` | gauge, counter | |
//! | `tcp_tunnels_open`, `tcp_tunnels_total` | gauge, counter | (`connect-tcp` tunnels through the HTTPS listener) |
//! | `tcp_tunnel_bytes_total` | counter | `direction` (`up`: client → sandbox, `down`), counted when a tunnel closes |
//! | `connections_cut_total` | counter | `reason` ([`CutReason`]: `idle`, `no_request`, `cancelled_requests`) |
//! | `tls_handshakes_total` | counter | `result` (`ok`, `error`) |
//! | `policy_apply_seconds` | histogram | (kernel map update of one sandbox) |
//! | `policy_apply_errors_total` | counter | |
//! | `dataplane_entries` | gauge | `map` (`sandboxes`, `policy`) |
//! | `dataplane_verdicts_total` | counter | `hook`, `reason`, `verdict` (read from the per-CPU map at scrape time) |
//! | `dataplane_up` | gauge | 1 when the pinned maps were read at this scrape |
//! | `state_writes_total` | counter | `op` (`write`, `delete`), `result` |
//! | `state_write_seconds` | histogram | |
//! | `config_reloads_total` | counter | `result` (`ok`, `refused`) |
//! | `config_last_reload_success_timestamp_seconds` | gauge | |
//! | `access_log_dropped_lines_total` | counter | |
//! | `fleet_replica_revision` | gauge | (the etcd revision a fleet member's replica reached) |
//! | `fleet_replica_last_news_timestamp_seconds` | gauge | (when etcd last confirmed it: the lag is `time()` minus this) |
//! | `fleet_watch_restarts_total`, `fleet_resyncs_total` | counter | (watch broken; history compacted, everything read again) |
//! | `fleet_etcd_errors_total` | counter | (etcd requests that failed, retries spent) |
//! | `fleet_forwarded_requests_total` | counter | `peer`, `result` (`ok`, `error`): requests sent to the host running the sandbox |
//! | `l4_connections_total` | counter | `workspace`, `sandbox`, `port`, `result` (`accepted`, `not_allowed`, `limit`, `connect_failed`), `engine` (`splice`, `copy`; empty when refused) |
//! | `l4_connections_open` | gauge | `workspace`, `sandbox`, `port` |
//! | `l4_bytes_total` | counter | `workspace`, `sandbox`, `port`, `direction` (`up`: client → app, `down`), counted when a connection ends |
//! | `l4_spliced_bytes_total` | counter | (of `l4_bytes_total`, the bytes the `splice` engine moved in the kernel; the rest went through a read buffer) |
//! | `l4_unrouted_connections_total` | counter | (connections to a public port exposed no more) |
//! | `l4_syns_total` | counter | `port` (public), `result` (`pass`, `not_allowed`, `rate`): the edge guard's SYNs to exposed ports (read from the per-CPU map at scrape time) |
//! | `build_info` | gauge (1) | `version` |
//!
//! The `workspace` label is bounded by the registered workspaces: requests that reach no
//! workspace (unknown host, bad request) are recorded with `workspace=""`.

use std::{
    cell::RefCell,
    collections::HashMap,
    fmt::{self, Write as _},
    path::Path,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet},
    metrics::{
        MetricType, TypedMetric,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use crate::{
    dataplane::{
        DataplaneError, Observer,
        maps::{L4StatsMap, VerdictMap},
    },
    model::sandbox::Sandbox,
};

/// `Content-Type` of [`Metrics::encode`] (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// What kind of route a request took at the edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RouteKind {
    /// `sbx-…` host, path other than `/port/N/…`: the sandbox API (8080 inside).
    SandboxApi,
    /// `sbx-…` host, `/port/N/…`: a declared port.
    Port,
    /// A preview host.
    Preview,
    /// The `/v0` API host (`api.{domain}`).
    Api,
    /// A request the edge answered itself: unknown host or route, bad request, auth failure
    /// before a route was known.
    Edge,
}

impl RouteKind {
    const ALL: [RouteKind; 5] =
        [RouteKind::SandboxApi, RouteKind::Port, RouteKind::Preview, RouteKind::Api, RouteKind::Edge];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            RouteKind::SandboxApi => "sandbox_api",
            RouteKind::Port => "port",
            RouteKind::Preview => "preview",
            RouteKind::Api => "api",
            RouteKind::Edge => "edge",
        }
    }
}

/// Why the edge closed a client connection on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CutReason {
    /// No byte either way for `proxy.idle_timeout`.
    Idle,
    /// No complete first request head within `proxy.header_read_timeout` of the accept.
    NoRequest,
    /// The client cancelled most of its requests at once (HTTP/2 rapid reset).
    CancelledRequests,
}

impl CutReason {
    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            CutReason::Idle => "idle",
            CutReason::NoRequest => "no_request",
            CutReason::CancelledRequests => "cancelled_requests",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    status: u16,
    workspace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    op: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabels {
    map: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabels {
    hook: &'static str,
    reason: &'static str,
    verdict: &'static str,
}

fn route_histogram() -> Family<RouteLabels, DurationHistogram> {
    // 0.5 ms … ~16 s
    Family::new_with_constructor(|| DurationHistogram::new(exponential_buckets(0.0005, 2.0, 16)))
}

/// A histogram of durations that never locks: an atomic count per bucket and the sum in
/// nanoseconds. prometheus_client's `Histogram` takes a mutex per observation, which every
/// runtime worker would contend for twice per request.
#[derive(Clone, Debug)]
pub struct DurationHistogram(Arc<DurationBuckets>);

#[derive(Debug)]
struct DurationBuckets {
    /// Upper bounds in seconds (as exported) and in nanoseconds (as compared), ascending.
    bounds: Vec<(f64, u64)>,
    /// One count per bound, and the last for `+Inf`.
    counts: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
}

impl DurationHistogram {
    /// Buckets with these upper bounds, in seconds.
    pub fn new(bounds: impl IntoIterator<Item = f64>) -> Self {
        let bounds: Vec<(f64, u64)> = bounds.into_iter().map(|s| (s, (s * 1e9).round() as u64)).collect();
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Self(Arc::new(DurationBuckets { bounds, counts, sum_nanos: AtomicU64::new(0) }))
    }

    /// Counts one observation.
    pub fn observe(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        // `le` buckets: the first bound at or above the value.
        let i = self.0.bounds.partition_point(|&(_, b)| b < nanos);
        if let Some(count) = self.0.counts.get(i) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        self.0.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

impl TypedMetric for DurationHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for DurationHistogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), fmt::Error> {
        let uppers = self.0.bounds.iter().map(|&(s, _)| s).chain(std::iter::once(f64::INFINITY));
        let buckets: Vec<(f64, u64)> = uppers.zip(self.0.counts.iter().map(|c| c.load(Ordering::Relaxed))).collect();
        let count = buckets.iter().map(|&(_, n)| n).sum();
        let sum = self.0.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Counters by (route, status), of one workspace.
type RouteStatusCounters = Vec<(RouteKind, u16, Counter)>;

thread_local! {
    /// This thread's handles to the global `requests` counters, by workspace then (route,
    /// status): found without hashing a label set (and allocating its workspace) under the
    /// family's lock on every request.
    static REQUEST_COUNTERS: RefCell<HashMap<String, RouteStatusCounters>> = RefCell::new(HashMap::new());
}

fn ok(result: bool) -> ResultLabels {
    ResultLabels { result: if result { "ok" } else { "error" } }
}

/// Every metric of the process. Cheap to share (`&'static` from [`global()`], or `Arc`).
pub struct Metrics {
    registry: Registry,
    verdicts: Arc<VerdictCollector>,
    requests: Family<RequestLabels, Counter>,
    request_duration: Family<RouteLabels, DurationHistogram>,
    upstream_latency: Family<RouteLabels, DurationHistogram>,
    /// (request duration, upstream latency) of each [`RouteKind`], resolved once.
    by_route: [(DurationHistogram, DurationHistogram); 5],
    connections_open: Gauge,
    connections_total: Counter,
    websockets_open: Gauge,
    websockets_total: Counter,
    tcp_tunnels_open: Gauge,
    tcp_tunnels_total: Counter,
    tcp_tunnel_bytes: Family<DirectionLabels, Counter>,
    connections_cut: Family<ReasonLabels, Counter>,
    tls_handshakes: Family<ResultLabels, Counter>,
    policy_apply: Histogram,
    policy_apply_errors: Counter,
    dataplane_entries: Family<MapLabels, Gauge>,
    state_writes: Family<StateLabels, Counter>,
    state_write_seconds: Histogram,
    reloads: Family<ResultLabels, Counter>,
    last_reload: Gauge<i64, AtomicI64>,
    access_log_dropped: Counter,
    fleet_revision: Gauge<i64, AtomicI64>,
    fleet_news: Gauge<i64, AtomicI64>,
    fleet_watch_restarts: Counter,
    fleet_resyncs: Counter,
    fleet_etcd_errors: Counter,
    fleet_forwarded: Family<PeerLabels, Counter>,
    l4_connections: Family<L4ResultLabels, Counter>,
    l4_open: Family<L4Labels, Gauge>,
    l4_bytes: Family<L4DirectionLabels, Counter>,
    l4_spliced_bytes: Counter,
    l4_unrouted: Counter,
}

/// A public TCP port of a sandbox.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct L4Labels {
    workspace: String,
    sandbox: String,
    port: u16,
}

/// A public TCP connection's outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct L4ResultLabels {
    workspace: String,
    sandbox: String,
    port: u16,
    result: &'static str,
    engine: &'static str,
}

/// Bytes of a public TCP port by direction.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct L4DirectionLabels {
    workspace: String,
    sandbox: String,
    port: u16,
    direction: &'static str,
}

/// Labels of the edge guard's per-port counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SynLabels {
    port: u16,
    result: &'static str,
}

/// Labels of bytes by direction.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: &'static str,
}

/// Labels of a request forwarded to a fleet peer.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    peer: String,
    result: &'static str,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

static GLOBAL: OnceLock<Metrics> = OnceLock::new();

/// The process's metrics.
pub fn global() -> &'static Metrics {
    GLOBAL.get_or_init(Metrics::new)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered (at zero).
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("gateway");
        let request_duration = route_histogram();
        let upstream_latency = route_histogram();
        let by_route = RouteKind::ALL.map(|route| {
            let labels = RouteLabels { route: route.as_str() };
            (request_duration.get_or_create(&labels).clone(), upstream_latency.get_or_create(&labels).clone())
        });
        let m = Self {
            registry: Registry::default(),
            verdicts: Arc::new(VerdictCollector::default()),
            requests: Family::default(),
            request_duration,
            upstream_latency,
            by_route,
            connections_open: Gauge::default(),
            connections_total: Counter::default(),
            websockets_open: Gauge::default(),
            websockets_total: Counter::default(),
            tcp_tunnels_open: Gauge::default(),
            tcp_tunnels_total: Counter::default(),
            tcp_tunnel_bytes: Family::default(),
            connections_cut: Family::default(),
            tls_handshakes: Family::default(),
            // 2 µs … ~1 s
            policy_apply: Histogram::new(exponential_buckets(0.000_002, 2.5, 15)),
            policy_apply_errors: Counter::default(),
            dataplane_entries: Family::default(),
            state_writes: Family::default(),
            // 50 µs … ~3 s (fsync dominates)
            state_write_seconds: Histogram::new(exponential_buckets(0.000_05, 2.2, 15)),
            reloads: Family::default(),
            access_log_dropped: Counter::default(),
            last_reload: Gauge::default(),
            fleet_revision: Gauge::default(),
            fleet_news: Gauge::default(),
            fleet_watch_restarts: Counter::default(),
            fleet_resyncs: Counter::default(),
            fleet_etcd_errors: Counter::default(),
            fleet_forwarded: Family::default(),
            l4_connections: Family::default(),
            l4_open: Family::default(),
            l4_bytes: Family::default(),
            l4_spliced_bytes: Counter::default(),
            l4_unrouted: Counter::default(),
        };
        registry.register("requests", "Requests answered by the HTTPS edge", m.requests.clone());
        registry.register(
            "request_duration_seconds",
            "Time from request head to response head at the HTTPS edge",
            m.request_duration.clone(),
        );
        registry.register(
            "upstream_latency_seconds",
            "Time from sending a request to a sandbox to its response head",
            m.upstream_latency.clone(),
        );
        registry.register("connections_open", "Client connections open at the HTTPS edge", m.connections_open.clone());
        registry.register("connections", "Client connections accepted by the HTTPS edge", m.connections_total.clone());
        registry.register("websockets_open", "WebSockets (and other upgrades) open", m.websockets_open.clone());
        registry.register("websockets", "WebSockets (and other upgrades) established", m.websockets_total.clone());
        registry.register("tcp_tunnels_open", "connect-tcp tunnels open", m.tcp_tunnels_open.clone());
        registry.register("tcp_tunnels", "connect-tcp tunnels established", m.tcp_tunnels_total.clone());
        registry.register(
            "tcp_tunnel_bytes",
            "Bytes carried by closed connect-tcp tunnels, by direction",
            m.tcp_tunnel_bytes.clone(),
        );
        registry.register(
            "connections_cut",
            "Client connections the HTTPS edge closed on its own, by reason",
            m.connections_cut.clone(),
        );
        registry.register("tls_handshakes", "TLS handshakes by result", m.tls_handshakes.clone());
        registry.register(
            "policy_apply_seconds",
            "Kernel map update of one sandbox's policy (register, re-register, preview)",
            m.policy_apply.clone(),
        );
        registry.register("policy_apply_errors", "Kernel policy updates refused", m.policy_apply_errors.clone());
        registry.register(
            "dataplane_entries",
            "Entries the control plane holds in the kernel maps",
            m.dataplane_entries.clone(),
        );
        registry.register("state_writes", "Durable state writes by operation and result", m.state_writes.clone());
        registry.register(
            "state_write_seconds",
            "Duration of a durable state write (fsync included)",
            m.state_write_seconds.clone(),
        );
        registry.register("config_reloads", "Configuration reloads (SIGHUP) by result", m.reloads.clone());
        registry.register(
            "access_log_dropped_lines",
            "Access log lines dropped because stderr did not keep up (the buffer of a worker was full)",
            m.access_log_dropped.clone(),
        );
        registry.register(
            "fleet_replica_revision",
            "The etcd revision this fleet member's replica reached",
            m.fleet_revision.clone(),
        );
        registry.register(
            "fleet_replica_last_news_timestamp_seconds",
            "When etcd last confirmed this fleet member's replica",
            m.fleet_news.clone(),
        );
        registry.register(
            "fleet_watch_restarts",
            "Times the watch of the fleet's state broke and was resumed",
            m.fleet_watch_restarts.clone(),
        );
        registry.register(
            "fleet_resyncs",
            "Times the replica read everything again (the history it needed was compacted)",
            m.fleet_resyncs.clone(),
        );
        registry.register("fleet_etcd_errors", "etcd requests that failed", m.fleet_etcd_errors.clone());
        registry.register(
            "fleet_forwarded_requests",
            "Requests sent to the fleet host running their sandbox, by peer and result",
            m.fleet_forwarded.clone(),
        );
        registry.register(
            "l4_connections",
            "Connections to public TCP ports, by sandbox port and result",
            m.l4_connections.clone(),
        );
        registry.register("l4_connections_open", "Public TCP connections open, by sandbox port", m.l4_open.clone());
        registry.register(
            "l4_bytes",
            "Bytes carried by ended public TCP connections, by sandbox port and direction",
            m.l4_bytes.clone(),
        );
        registry.register(
            "l4_spliced_bytes",
            "Of the bytes of ended public TCP connections, those moved by splice(2) in the kernel",
            m.l4_spliced_bytes.clone(),
        );
        registry.register(
            "l4_unrouted_connections",
            "Connections to a public TCP port no longer exposed (reset)",
            m.l4_unrouted.clone(),
        );
        registry.register(
            "config_last_reload_success_timestamp_seconds",
            "When the configuration was last loaded successfully (start or reload)",
            m.last_reload.clone(),
        );
        let info: Family<VersionLabels, Gauge> = Family::default();
        info.get_or_create(&VersionLabels { version: env!("CARGO_PKG_VERSION") }).set(1);
        registry.register("build_info", "The gateway's version", info);
        registry.register_collector(Box::new(m.verdicts.clone()));
        // Make the well-known series exist at zero, so rates work from the first scrape.
        for result in [true, false] {
            drop(m.tls_handshakes.get_or_create(&ok(result)));
        }
        for result in ["ok", "refused"] {
            drop(m.reloads.get_or_create(&ResultLabels { result }));
        }
        for reason in [CutReason::Idle, CutReason::NoRequest, CutReason::CancelledRequests] {
            drop(m.connections_cut.get_or_create(&ReasonLabels { reason: reason.as_str() }));
        }
        m.last_reload.set(unix_now());
        Self { registry, ..m }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "cannot encode the metrics");
        }
        out
    }

    /// Reads the verdict counters from the maps pinned under `bpffs`'s `maps/` at every scrape
    /// from now on (and the per-CPU sums are exported as counters).
    pub fn attach_dataplane(&self, maps_dir: &Path) -> Result<(), DataplaneError> {
        let map = VerdictMap::open(maps_dir)?;
        *self.verdicts.map.lock().unwrap_or_else(|p| p.into_inner()) = Some(map);
        match L4StatsMap::open(maps_dir) {
            Ok(l4) => *self.verdicts.l4.lock().unwrap_or_else(|p| p.into_inner()) = Some(l4),
            Err(e) => tracing::warn!(error = %e, "the public TCP ports' SYN counters will be missing from /metrics"),
        }
        Ok(())
    }

    /// A request answered at the edge: its route kind, status and workspace (`None` when no
    /// workspace was resolved), and how long until the response head.
    pub fn request(&self, route: RouteKind, status: u16, workspace: Option<&str>, duration: Duration) {
        let workspace = workspace.unwrap_or_default();
        let counter = || {
            self.requests.get_or_create(&RequestLabels {
                route: route.as_str(),
                status,
                workspace: workspace.to_owned(),
            })
        };
        if std::ptr::eq(self, global()) {
            REQUEST_COUNTERS.with(|cache| {
                let mut cache = cache.borrow_mut();
                if !cache.contains_key(workspace) {
                    cache.insert(workspace.to_owned(), Vec::new());
                }
                let Some(list) = cache.get_mut(workspace) else { return };
                match list.iter().find(|(r, s, _)| *r == route && *s == status) {
                    Some((_, _, c)) => {
                        c.inc();
                    }
                    None => {
                        let c = counter().clone();
                        c.inc();
                        list.push((route, status, c));
                    }
                }
            });
        } else {
            counter().inc();
        }
        self.route_histograms(route).0.observe(duration);
    }

    fn route_histograms(&self, route: RouteKind) -> &(DurationHistogram, DurationHistogram) {
        // `ALL` lists the kinds in declaration order.
        &self.by_route[route as usize]
    }

    /// Time from sending a request to a sandbox to its response head.
    pub fn upstream_latency(&self, route: RouteKind, latency: Duration) {
        self.route_histograms(route).1.observe(latency);
    }

    /// A client connection was accepted; it counts as open until the guard is dropped.
    #[must_use = "the connection counts as open until the guard is dropped"]
    pub fn connection_opened(&self) -> OpenGuard<'_> {
        self.connections_total.inc();
        self.connections_open.inc();
        OpenGuard { gauge: &self.connections_open }
    }

    /// A WebSocket (or other upgrade) was established; open until the guard is dropped.
    #[must_use = "the WebSocket counts as open until the guard is dropped"]
    pub fn websocket_opened(&self) -> OpenGuard<'_> {
        self.websockets_total.inc();
        self.websockets_open.inc();
        OpenGuard { gauge: &self.websockets_open }
    }

    /// A `connect-tcp` tunnel was established; open until the guard is dropped.
    #[must_use = "the tunnel counts as open until the guard is dropped"]
    pub fn tcp_tunnel_opened(&self) -> OpenGuard<'_> {
        self.tcp_tunnels_total.inc();
        self.tcp_tunnels_open.inc();
        OpenGuard { gauge: &self.tcp_tunnels_open }
    }

    /// A `connect-tcp` tunnel closed after carrying `up` bytes to the sandbox, `down` back.
    pub fn tcp_tunnel_closed(&self, up: u64, down: u64) {
        self.tcp_tunnel_bytes.get_or_create(&DirectionLabels { direction: "up" }).inc_by(up);
        self.tcp_tunnel_bytes.get_or_create(&DirectionLabels { direction: "down" }).inc_by(down);
    }

    /// A public TCP connection to `port` of `sandbox` was accepted (with `engine`) or refused.
    pub fn l4_connection(&self, sandbox: &Sandbox, port: u16, result: &'static str, engine: Option<&'static str>) {
        let labels = L4ResultLabels {
            workspace: sandbox.workspace.clone(),
            sandbox: sandbox.name.clone(),
            port,
            result,
            engine: engine.unwrap_or(""),
        };
        self.l4_connections.get_or_create(&labels).inc();
    }

    /// A public TCP connection to `port` of `sandbox` is open until the guard is dropped.
    #[must_use = "the connection counts as open until the guard is dropped"]
    pub fn l4_opened(&self, sandbox: &Sandbox, port: u16) -> L4OpenGuard {
        let labels = L4Labels { workspace: sandbox.workspace.clone(), sandbox: sandbox.name.clone(), port };
        let gauge = self.l4_open.get_or_create(&labels).clone();
        gauge.inc();
        L4OpenGuard { gauge }
    }

    /// A public TCP connection to `port` of `sandbox` ended after carrying `up` bytes to the
    /// app and `down` back.
    pub fn l4_bytes(&self, sandbox: &Sandbox, port: u16, up: u64, down: u64) {
        for (direction, n) in [("up", up), ("down", down)] {
            let labels = L4DirectionLabels {
                workspace: sandbox.workspace.clone(),
                sandbox: sandbox.name.clone(),
                port,
                direction,
            };
            self.l4_bytes.get_or_create(&labels).inc_by(n);
        }
    }

    /// Of an ended public TCP connection's bytes, `n` were spliced.
    pub fn l4_spliced(&self, n: u64) {
        self.l4_spliced_bytes.inc_by(n);
    }

    /// A connection reached a public port that is exposed no more.
    pub fn l4_unrouted(&self) {
        self.l4_unrouted.inc();
    }

    /// The edge closed a client connection on its own.
    pub fn connection_cut(&self, reason: CutReason) {
        self.connections_cut.get_or_create(&ReasonLabels { reason: reason.as_str() }).inc();
    }

    /// A TLS handshake finished (`ok`) or failed.
    pub fn tls_handshake(&self, ok_: bool) {
        self.tls_handshakes.get_or_create(&ok(ok_)).inc();
    }

    /// One sandbox's kernel policy was written in `took`.
    pub fn policy_applied(&self, took: Duration) {
        self.policy_apply.observe(took.as_secs_f64());
    }

    /// The kernel refused a policy update.
    pub fn policy_apply_failed(&self) {
        self.policy_apply_errors.inc();
    }

    /// How many sandboxes and policy entries the control plane holds in the kernel.
    pub fn dataplane_entries(&self, sandboxes: usize, policy: usize) {
        let set = |map, n: usize| {
            self.dataplane_entries.get_or_create(&MapLabels { map }).set(i64::try_from(n).unwrap_or(i64::MAX))
        };
        set("sandboxes", sandboxes);
        set("policy", policy);
    }

    /// A durable state write (`op`: `write` or `delete`) finished.
    pub fn state_write(&self, op: &'static str, success: bool, took: Duration) {
        self.state_writes.get_or_create(&StateLabels { op, result: if success { "ok" } else { "error" } }).inc();
        self.state_write_seconds.observe(took.as_secs_f64());
    }

    /// An access log line was dropped (see `telemetry::logbuf`).
    pub fn access_log_dropped(&self) {
        self.access_log_dropped.inc();
    }

    /// etcd confirmed that the replica reached `revision`.
    pub fn fleet_news(&self, revision: i64) {
        self.fleet_revision.set(revision);
        self.fleet_news.set(unix_now());
    }

    /// The fleet's watch broke (it resumes).
    pub fn fleet_watch_restart(&self) {
        self.fleet_watch_restarts.inc();
    }

    /// The replica read everything again.
    pub fn fleet_resync(&self) {
        self.fleet_resyncs.inc();
    }

    /// An etcd request failed.
    pub fn fleet_etcd_error(&self) {
        self.fleet_etcd_errors.inc();
    }

    /// A request was forwarded to fleet peer `peer` (`ok`: it answered).
    pub fn fleet_forwarded(&self, peer: &str, ok: bool) {
        let labels = PeerLabels { peer: peer.to_string(), result: if ok { "ok" } else { "error" } };
        self.fleet_forwarded.get_or_create(&labels).inc();
    }

    /// A configuration reload was applied (`true`) or refused.
    pub fn reload(&self, applied: bool) {
        self.reloads.get_or_create(&ResultLabels { result: if applied { "ok" } else { "refused" } }).inc();
        if applied {
            self.last_reload.set(unix_now());
        }
    }
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Decrements an "open" gauge when dropped.
#[derive(Debug)]
pub struct OpenGuard<'a> {
    gauge: &'a Gauge<i64, AtomicI64>,
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Counts one public TCP connection as open until dropped.
pub struct L4OpenGuard {
    gauge: Gauge,
}

impl Drop for L4OpenGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Reads `GW_VERDICTS` at scrape time.
#[derive(Default)]
struct VerdictCollector {
    map: Mutex<Option<VerdictMap>>,
    /// The edge guard's per-port counters of public TCP ports.
    l4: Mutex<Option<L4StatsMap>>,
}

impl fmt::Debug for VerdictCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VerdictCollector")
    }
}

impl Collector for VerdictCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let guard = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let Some(map) = guard.as_ref() else { return Ok(()) };
        let counters = match map.read() {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the verdict counters");
                None
            }
        };
        drop(guard);
        let up = ConstGauge::new(i64::from(counters.is_some()));
        let e = encoder.encode_descriptor(
            "dataplane_up",
            "1 when the pinned kernel maps were readable at this scrape",
            None,
            up.metric_type(),
        )?;
        up.encode(e)?;
        let Some(counters) = counters else { return Ok(()) };
        let mut family = encoder.encode_descriptor(
            "dataplane_verdicts",
            "Packets judged by the eBPF programs, by hook and reason (summed over CPUs)",
            None,
            MetricType::Counter,
        )?;
        for (hook, reason, packets) in counters {
            let labels = VerdictLabels {
                hook: hook.name(),
                reason: reason.name(),
                verdict: if reason.is_drop() { "drop" } else { "pass" },
            };
            ConstCounter::new(packets).encode(family.encode_family(&labels)?)?;
        }
        let l4 = self.l4.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(L4StatsMap::read);
        let Some(l4) = l4 else { return Ok(()) };
        let mut family = encoder.encode_descriptor(
            "l4_syns",
            "New connections to exposed public TCP ports judged by the edge guard, by public port and result",
            None,
            MetricType::Counter,
        )?;
        for (port, stats) in l4 {
            for (result, n) in
                [("pass", stats.syn_pass), ("not_allowed", stats.drop_not_allowed), ("rate", stats.drop_rate)]
            {
                ConstCounter::new(n).encode(family.encode_family(&SynLabels { port, result })?)?;
            }
        }
        Ok(())
    }
}

/// Sums the packets of the counters whose name matches, in a scrape text (for tests and checks).
pub fn sum_samples(text: &str, name: &str, label_filter: &[(&str, &str)]) -> u64 {
    let mut total = 0u64;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else { continue };
        let (labels, value) = match rest.strip_prefix('{') {
            Some(r) => match r.split_once("} ") {
                Some((l, v)) => (l, v),
                None => continue,
            },
            None => match rest.strip_prefix(' ') {
                Some(v) => ("", v),
                None => continue,
            },
        };
        let matches = label_filter.iter().all(|(k, v)| {
            let mut want = String::new();
            let _ = write!(want, "{k}=\"{v}\"");
            labels.split(',').any(|l| l == want)
        });
        if matches && let Ok(v) = value.trim().parse::<f64>() {
            total = total.saturating_add(v as u64);
        }
    }
    total
}

/// The data plane reports policy updates and its fill here (connected at start-up).
impl Observer for Metrics {
    fn policy_applied(&self, took: Duration) {
        Metrics::policy_applied(self, took);
    }

    fn policy_apply_failed(&self) {
        Metrics::policy_apply_failed(self);
    }

    fn entries(&self, sandboxes: usize, policy_entries: usize) {
        self.dataplane_entries(sandboxes, policy_entries);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_exported_with_help() {
        let m = Metrics::new();
        m.request(RouteKind::Port, 200, Some("acme"), Duration::from_millis(3));
        m.request(RouteKind::Edge, 404, None, Duration::from_millis(1));
        m.upstream_latency(RouteKind::Port, Duration::from_millis(2));
        let c = m.connection_opened();
        let w = m.websocket_opened();
        m.tls_handshake(true);
        m.tls_handshake(false);
        m.policy_applied(Duration::from_micros(12));
        m.state_write("write", true, Duration::from_millis(1));
        m.reload(false);
        m.dataplane_entries(2, 5);
        let text = m.encode();
        for name in [
            "gateway_requests_total{route=\"port\",status=\"200\",workspace=\"acme\"} 1",
            "gateway_requests_total{route=\"edge\",status=\"404\",workspace=\"\"} 1",
            "gateway_connections_open 1",
            "gateway_connections_total 1",
            "gateway_websockets_open 1",
            "gateway_tls_handshakes_total{result=\"ok\"} 1",
            "gateway_tls_handshakes_total{result=\"error\"} 1",
            "gateway_policy_apply_seconds_count 1",
            "gateway_upstream_latency_seconds_count{route=\"port\"} 1",
            "gateway_state_writes_total{op=\"write\",result=\"ok\"} 1",
            "gateway_config_reloads_total{result=\"refused\"} 1",
            "gateway_config_reloads_total{result=\"ok\"} 0",
            "gateway_dataplane_entries{map=\"policy\"} 5",
            "gateway_build_info{version=",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
        assert!(text.contains("# HELP gateway_requests_total"), "{text}");
        drop((c, w));
        let text = m.encode();
        assert!(text.contains("gateway_connections_open 0"), "{text}");
        assert!(text.contains("gateway_websockets_open 0"), "{text}");
        assert_eq!(sum_samples(&text, "gateway_requests_total", &[]), 2);
        assert_eq!(sum_samples(&text, "gateway_requests_total", &[("route", "port")]), 1);
        assert_eq!(sum_samples(&text, "gateway_tls_handshakes_total", &[("result", "error")]), 1);
    }

    #[test]
    fn duration_histogram_buckets_count_and_sum() {
        let h = DurationHistogram::new([0.001, 0.01]);
        for ms in [0, 1, 5, 10, 11, 5000] {
            h.observe(Duration::from_millis(ms));
        }
        let mut registry = Registry::default();
        registry.register("h", "help", h);
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).expect("encode");
        for line in [
            "h_bucket{le=\"0.001\"} 2",
            "h_bucket{le=\"0.01\"} 4",
            "h_bucket{le=\"+Inf\"} 6",
            "h_count 6",
            "h_sum 5.027",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }

    #[test]
    fn the_global_request_counters_count_through_the_thread_cache() {
        let m = global();
        let count = |filter: &[(&str, &str)]| sum_samples(&m.encode(), "gateway_requests_total", filter);
        let ws = [("workspace", "cache-test")];
        assert_eq!(count(&ws), 0);
        m.request(RouteKind::Port, 200, Some("cache-test"), Duration::from_millis(1));
        m.request(RouteKind::Port, 200, Some("cache-test"), Duration::from_millis(1));
        m.request(RouteKind::Port, 503, Some("cache-test"), Duration::from_millis(1));
        std::thread::spawn(move || m.request(RouteKind::Port, 200, Some("cache-test"), Duration::ZERO))
            .join()
            .expect("thread");
        assert_eq!(count(&ws), 4);
        assert_eq!(count(&[("workspace", "cache-test"), ("status", "200")]), 3);
    }
}
