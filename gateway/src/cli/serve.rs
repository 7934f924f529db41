//! `gateway serve`: configuration → state → data plane → reconcile → listeners.

use super::{ServeArgs, print_problems};
use crate::{
    admin,
    app::App,
    config::{self, Config, ConfigErrors},
    dataplane::Dataplane,
    paths,
    state::FileStore,
};
use anyhow::Context;
use std::sync::Arc;

pub(super) fn run(args: ServeArgs) -> anyhow::Result<u8> {
    let config = match load(&args) {
        Ok(c) => c,
        Err(problems) => return Ok(print_problems(&problems)),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("gateway")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(config))?;
    Ok(0)
}

fn load(args: &ServeArgs) -> Result<Config, ConfigErrors> {
    if args.dev {
        let config = Config::dev(paths::dev_state_dir());
        let problems = config.validate("<dev>");
        return if problems.is_empty() { Ok(config) } else { Err(ConfigErrors(problems)) };
    }
    let path = args.config.clone().unwrap_or_else(|| paths::DEFAULT_CONFIG.into());
    config::load(&path)
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let admin_listen = config.admin_listen().map_err(|e| anyhow::anyhow!("listen.admin: {e}"))?;
    if matches!(admin_listen, config::AdminListen::Tcp(_)) && config.admin.token == "change-me" {
        tracing::warn!("admin.token is the default \"change-me\": set a secret token");
    }
    let state_dir = config.state.dir.clone();
    let store = tokio::task::spawn_blocking(move || FileStore::open(&state_dir))
        .await
        .context("state task")?
        .with_context(|| format!("cannot open the state directory {}", config.state.dir.display()))?;
    let dataplane = if config.dataplane.enabled {
        Dataplane::open(&config.dataplane_settings())
            .with_context(|| format!("cannot open the data plane at {}", config.dataplane.bpffs.display()))?
    } else {
        tracing::warn!("dataplane.enabled = false: sandbox ports are NOT enforced in the kernel");
        Dataplane::disabled()
    };
    let app = Arc::new(App::start(config, Arc::new(store), dataplane).await?);
    let listener = admin::bind(&admin_listen).await?;
    tracing::info!(admin = %listener.describe(), "admin API listening");
    admin::serve(listener, app, shutdown_signal()).await;
    tracing::info!("stopped; kernel enforcement stays in place");
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "cannot install signal handlers; stop with SIGKILL");
            return std::future::pending().await;
        }
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(signal = name, "shutting down");
}
