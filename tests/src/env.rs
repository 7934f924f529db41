//! [`Env`]: the setup the privileged integration tests share. Root, a private bpffs pin directory,
//! a tokio runtime, the real gateway process enforcing in the kernel with its pins there, and
//! optionally one sandbox (namespace + veth) registered in [`WS`] and a workspace token.
//!
//! ```no_run
//! use gateway_tests::{edge::*, env::Env};
//!
//! let e = Env::new().sandbox("web", &[(3000, "HTTP")]).token("proxy").start();
//! let _rt = e.rt.enter();
//! let _app = spawn_backend(e.sb(), e.sb().addr(), 3000, Speaks::Http1);
//! e.rt.block_on(async {
//!     let r = e.client.get(&e.host, "/port/3000/", &[("authorization", &e.bearer)]).await;
//!     assert_eq!(r.status, 200);
//! });
//! ```
//!
//! Fields drop in declaration order: the gateway first, then the sandbox, the pin directory and
//! the runtime, which is the order the tests declared them in by hand. Things a test makes after
//! `start()` (backends, more sandboxes) drop before all of it.

use crate::{
    edge::{EdgeClient, WS, create_token, register, runtime, sandbox_host},
    gateway_process::GatewayProcess,
    harness::{BpffsDir, Sandbox, require_root},
};
use tokio::runtime::Runtime;

/// A test's gateway and what it needs; see the [module](self) documentation.
pub struct Env {
    /// The gateway process (data plane enabled, pins under [`Env::pins`]).
    pub gw: GatewayProcess,
    /// The registered sandbox, see [`Env::sb`] (destructure this field when `gw` is borrowed
    /// mutably).
    pub sandbox: Option<Sandbox>,
    token: Option<String>,
    /// `sbx-{name}-acme.local.gw.test` of the registered sandbox (empty without
    /// [`EnvBuilder::sandbox`]).
    pub host: String,
    /// `Bearer {token}` of the workspace token (empty without [`EnvBuilder::token`]).
    pub bearer: String,
    /// A TLS client of the gateway's HTTPS listener, trusting its development CA (none when the
    /// configuration names certificates: make a client with [`EdgeClient::with_ca`]).
    pub client: EdgeClient,
    /// The gateway's bpffs pin directory.
    pub pins: BpffsDir,
    /// The test's runtime (enter it before spawning backends: `let _rt = e.rt.enter();`).
    pub rt: Runtime,
}

/// What [`Env::new`] made, and what [`EnvBuilder::start`] will start.
pub struct EnvBuilder {
    pins: BpffsDir,
    rt: Runtime,
    config: String,
    log_filter: Option<String>,
    sandbox: Option<(String, Vec<(u16, String)>)>,
    token: Option<String>,
}

impl Env {
    /// Checks for root, makes the bpffs pin directory and the runtime; the builder's
    /// [`EnvBuilder::start`] starts the gateway.
    #[allow(clippy::new_ret_no_self)]
    pub fn new() -> EnvBuilder {
        require_root();
        EnvBuilder {
            pins: BpffsDir::new(),
            rt: runtime(),
            config: String::new(),
            log_filter: None,
            sandbox: None,
            token: None,
        }
    }

    /// The registered sandbox (panics when the builder had no [`EnvBuilder::sandbox`]).
    pub fn sb(&self) -> &Sandbox {
        self.sandbox.as_ref().expect("Env built without .sandbox(…)")
    }

    /// The workspace token's secret (panics when the builder had no [`EnvBuilder::token`]).
    pub fn token(&self) -> &str {
        self.token.as_deref().expect("Env built without .token(…)")
    }
}

impl EnvBuilder {
    /// TOML appended to the gateway's test configuration (e.g. a `[proxy]` section).
    pub fn config(mut self, extra: &str) -> Self {
        self.config.push_str(extra);
        self
    }

    /// The gateway's `GATEWAY_LOG` filter (default `info`), e.g. `trace`.
    pub fn log_filter(mut self, filter: &str) -> Self {
        self.log_filter = Some(filter.to_string());
        self
    }

    /// A [`Sandbox`] made before the gateway starts and registered as `name` of [`WS`] with
    /// these (port, protocol) declarations once it runs.
    pub fn sandbox(mut self, name: &str, ports: &[(u16, &str)]) -> Self {
        self.sandbox = Some((name.to_string(), ports.iter().map(|(p, proto)| (*p, proto.to_string())).collect()));
        self
    }

    /// A workspace token of [`WS`] named `name`, created once the gateway runs.
    pub fn token(mut self, name: &str) -> Self {
        self.token = Some(name.to_string());
        self
    }

    /// Starts the gateway (enforcing, pins in the pin directory), registers the sandbox and
    /// creates the token.
    pub fn start(self) -> Env {
        let EnvBuilder { pins, rt, config, log_filter, sandbox, token } = self;
        let sandbox = sandbox.map(|(name, ports)| (name, Sandbox::new(), ports));
        let mut gw = GatewayProcess::start_enforcing_with(pins.path(), &config);
        if let Some(filter) = log_filter {
            gw.kill();
            gw.set_log_filter(&filter);
            gw.spawn();
        }
        let host = sandbox.as_ref().map(|(name, _, _)| sandbox_host(name)).unwrap_or_default();
        let sandbox = sandbox.map(|(name, sb, ports)| {
            let ports: Vec<(u16, &str)> = ports.iter().map(|(p, proto)| (*p, proto.as_str())).collect();
            register(&gw, WS, &name, &sb, &ports);
            sb
        });
        let token = token.map(|name| create_token(&gw, WS, &name));
        let bearer = token.as_ref().map(|t| format!("Bearer {t}")).unwrap_or_default();
        let client = match gw.dev_ca_path().exists() {
            true => EdgeClient::new(&gw),
            false => EdgeClient::untrusting(gw.https_addr()),
        };
        Env { gw, sandbox, token, host, bearer, client, pins, rt }
    }
}
