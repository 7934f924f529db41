//! [`Env`]: the setup the privileged integration tests share. Root, a private bpffs pin directory,
//! a tokio runtime, the real gateway process enforcing in the kernel with its pins there, and
//! optionally one sandbox (namespace + veth) registered in [`WS`] (or only named, for tests that
//! register it themselves: [`EnvBuilder::unregistered_sandbox`], [`Env::register`]) and a
//! workspace token.
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
//!
//! Tests without a gateway process need only root and a pin directory: [`BpffsDir::new`] checks
//! for root first.

use crate::{
    edge::{EdgeClient, WS, create_token, register, runtime, sandbox_host},
    gateway_process::GatewayProcess,
    harness::{BpffsDir, Sandbox},
};
use serde_json::Value;
use tokio::runtime::Runtime;

/// A test's gateway and what it needs; see the [module](self) documentation.
pub struct Env {
    /// The gateway process (data plane enabled, pins under [`Env::pins`]).
    pub gw: GatewayProcess,
    /// The registered sandbox, see [`Env::sb`] (destructure this field when `gw` is borrowed
    /// mutably).
    pub sandbox: Option<Sandbox>,
    sandbox_name: Option<String>,
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

/// (port, protocol) declarations of a sandbox registered at start.
type Ports = Vec<(u16, String)>;

/// What [`Env::new`] made, and what [`EnvBuilder::start`] will start.
pub struct EnvBuilder {
    pins: BpffsDir,
    rt: Runtime,
    config: String,
    log_filter: Option<String>,
    public_interface: Option<String>,
    https_all_addresses: bool,
    dataplane_keys: String,
    sandbox: Option<(String, Sandbox, Option<Ports>)>,
    token: Option<String>,
}

impl Env {
    /// Checks for root, makes the bpffs pin directory and the runtime; the builder's
    /// [`EnvBuilder::start`] starts the gateway.
    #[allow(clippy::new_ret_no_self)]
    pub fn new() -> EnvBuilder {
        EnvBuilder {
            pins: BpffsDir::new(),
            rt: runtime(),
            config: String::new(),
            log_filter: None,
            public_interface: None,
            https_all_addresses: false,
            dataplane_keys: String::new(),
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

    /// Registers the sandbox (again) under its name in [`WS`] with these (port, protocol)
    /// declarations; the admin API's answer.
    pub fn register(&self, ports: &[(u16, &str)]) -> Value {
        let name = self.sandbox_name.as_deref().expect("Env built without a sandbox");
        register(&self.gw, WS, name, self.sb(), ports)
    }

    /// The admin API path of the sandbox, `/v1/workspaces/{WS}/sandboxes/{name}`.
    pub fn sandbox_path(&self) -> String {
        let name = self.sandbox_name.as_deref().expect("Env built without a sandbox");
        format!("/v1/workspaces/{WS}/sandboxes/{name}")
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

    /// The gateway's public interface (`dataplane.public_interface`, where the XDP edge guard
    /// attaches), e.g. an `OutsideClient`'s host-side link.
    pub fn public_interface(mut self, ifname: &str) -> Self {
        self.public_interface = Some(ifname.to_string());
        self
    }

    /// The HTTPS listener on every address (`0.0.0.0`, same port) rather than 127.0.0.1, so
    /// that an `OutsideClient` reaches it through the edge guard.
    pub fn https_all_addresses(mut self) -> Self {
        self.https_all_addresses = true;
        self
    }

    /// Keys added to the `[dataplane]` section (e.g. `syn_rate = 20`).
    pub fn dataplane(mut self, keys: &str) -> Self {
        self.dataplane_keys.push_str(keys);
        self.dataplane_keys.push('\n');
        self
    }

    /// A [`Sandbox`], made now (before the gateway starts, see [`EnvBuilder::sb`]) and
    /// registered as `name` of [`WS`] with these (port, protocol) declarations once it runs.
    pub fn sandbox(mut self, name: &str, ports: &[(u16, &str)]) -> Self {
        let ports = ports.iter().map(|(p, proto)| (*p, proto.to_string())).collect();
        self.sandbox = Some((name.to_string(), Sandbox::new(), Some(ports)));
        self
    }

    /// A [`Sandbox`] named `name` that the test registers itself ([`Env::register`]).
    pub fn unregistered_sandbox(mut self, name: &str) -> Self {
        self.sandbox = Some((name.to_string(), Sandbox::new(), None));
        self
    }

    /// The sandbox, before the gateway starts (for listeners, or probes without a data plane).
    pub fn sb(&self) -> &Sandbox {
        &self.sandbox.as_ref().expect("no .sandbox(…) yet").1
    }

    /// A workspace token of [`WS`] named `name`, created once the gateway runs.
    pub fn token(mut self, name: &str) -> Self {
        self.token = Some(name.to_string());
        self
    }

    /// Starts the gateway (enforcing, pins in the pin directory), registers the sandbox and
    /// creates the token.
    pub fn start(self) -> Env {
        let EnvBuilder {
            pins,
            rt,
            config,
            log_filter,
            public_interface,
            https_all_addresses,
            dataplane_keys,
            sandbox,
            token,
        } = self;
        let mut gw = GatewayProcess::enforcing(pins.path(), &config);
        if https_all_addresses {
            gw.edit_config(|c| c.replacen("https = \"127.0.0.1:", "https = \"0.0.0.0:", 1));
        }
        if !dataplane_keys.is_empty() {
            gw.edit_config(|c| c.replacen("xdp_mode = \"skb\"\n", &format!("xdp_mode = \"skb\"\n{dataplane_keys}"), 1));
        }
        if let Some(filter) = log_filter {
            gw.set_log_filter(&filter);
        }
        if let Some(ifname) = public_interface {
            gw.edit_config(|c| {
                assert!(c.contains("public_interface = \"\""), "the test configuration names no interface:\n{c}");
                c.replace("public_interface = \"\"", &format!("public_interface = \"{ifname}\""))
            });
        }
        gw.spawn();
        let host = sandbox.as_ref().map(|(name, _, _)| sandbox_host(name)).unwrap_or_default();
        let (sandbox_name, sandbox) = match sandbox {
            Some((name, sb, ports)) => {
                if let Some(ports) = ports {
                    let ports: Vec<(u16, &str)> = ports.iter().map(|(p, proto)| (*p, proto.as_str())).collect();
                    register(&gw, WS, &name, &sb, &ports);
                }
                (Some(name), Some(sb))
            }
            None => (None, None),
        };
        let token = token.map(|name| create_token(&gw, WS, &name));
        let bearer = token.as_ref().map(|t| format!("Bearer {t}")).unwrap_or_default();
        let client = match gw.dev_ca_path().exists() {
            true => EdgeClient::new(&gw),
            false => EdgeClient::untrusting(gw.https_addr()),
        };
        Env { gw, sandbox, sandbox_name, token, host, bearer, client, pins, rt }
    }
}
