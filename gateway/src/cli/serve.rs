//! `gateway serve`: configuration → state → data plane → reconcile → listeners → READY, then
//! signals (reload, shutdown) until the drain ends. See [`crate::lifecycle`].

use super::{ServeArgs, print_problems};
use crate::{
    admin,
    app::App,
    config::{self, Config},
    dataplane::Dataplane,
    lifecycle::{self, ConfigSource, Event, Notifier, Reloadable, Signals},
    paths,
    state::FileStore,
};
use anyhow::Context;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub(super) fn run(args: ServeArgs) -> anyhow::Result<u8> {
    let source = if args.dev {
        ConfigSource::Dev(paths::dev_state_dir())
    } else {
        ConfigSource::File(args.config.clone().unwrap_or_else(|| paths::DEFAULT_CONFIG.into()))
    };
    let config = match source.load() {
        Ok(c) => c,
        Err(problems) => return Ok(print_problems(&problems)),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("gateway")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(source, config))?;
    Ok(0)
}

async fn serve(source: ConfigSource, config: Config) -> anyhow::Result<()> {
    let notifier = Notifier::from_env();
    // Installed first: a SIGHUP or SIGTERM during start-up is handled, not fatal.
    let mut signals = Signals::install().context("cannot install signal handlers")?;
    let admin_listen = config.admin_listen().map_err(|e| anyhow::anyhow!("listen.admin: {e}"))?;
    if matches!(admin_listen, config::AdminListen::Tcp(_)) && config.admin.token == "change-me" {
        tracing::warn!("admin.token is the default \"change-me\": set a secret token");
    }
    notifier.status("loading the state and the data plane");
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
    let admin_at = listener.describe();

    let stop = CancellationToken::new();
    let admin_task = tokio::spawn(admin::serve(listener, app.clone(), stop.clone().cancelled_owned()));
    let reaper_task = tokio::spawn(crate::previews::reaper::run(app.clone(), stop.clone().cancelled_owned()));
    // Programs attached, state reconciled, every listener bound: ready.
    notifier.spawn_watchdog(stop.clone());
    let sandboxes = app.list(None).map(|l| l.len()).unwrap_or_default();
    notifier.ready(&format!("serving: admin {admin_at}, {sandboxes} sandboxes"));
    tracing::info!(admin = %admin_at, sandboxes, "ready");

    let reloadable: Vec<Arc<dyn Reloadable>> = Vec::new();
    loop {
        match signals.next().await {
            Event::Reload => {
                tracing::info!(signal = "SIGHUP", "reloading the configuration");
                let _ = lifecycle::reload(&source, &app, &reloadable, notifier);
            }
            Event::Upgrade => {
                tracing::warn!(signal = "SIGUSR2", "zero-downtime restart is not available in this build; ignored");
            }
            Event::Shutdown(name) => {
                tracing::info!(signal = name, "shutting down: draining");
                notifier.stopping("draining in-flight requests");
                break;
            }
        }
    }
    stop.cancel();
    if let Err(e) = admin_task.await {
        tracing::error!(error = %e, "the admin listener task failed");
    }
    if let Err(e) = reaper_task.await {
        tracing::error!(error = %e, "the preview reaper task failed");
    }
    tracing::info!("stopped; kernel enforcement stays in place");
    Ok(())
}
