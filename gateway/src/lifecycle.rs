//! The process lifecycle: signals, systemd notifications (readiness, reload, stop, watchdog),
//! and the drain at shutdown.
//!
//! | signal | effect |
//! | --- | --- |
//! | `SIGTERM`, `SIGINT` | stop accepting, drain in-flight requests up to the deadline, exit 0 |
//! | `SIGHUP` | reload the configuration and certificates ([`crate::cli`] `serve`); a refused configuration leaves the old one serving |
//! | `SIGUSR2` | zero-downtime restart: a new process takes the listeners over, this one drains |
//!
//! Under systemd (`Type=notify`, `NOTIFY_SOCKET` set) the gateway sends `READY=1` once the
//! programs are attached, the state is reconciled and every listener is bound; `RELOADING=1`
//! then `READY=1` around a reload; `STOPPING=1` when it starts to drain; `WATCHDOG=1` at half
//! of `WatchdogSec=` from the async runtime (a wedged runtime stops pinging and is restarted);
//! `STATUS=` lines say what it is doing. Without `NOTIFY_SOCKET` every call is a no-op.

use std::{io, path::PathBuf, sync::Arc, time::Duration};

use sd_notify::NotifyState;

use crate::{
    config::{self, Config, ConfigErrors},
    paths,
    service::App,
    telemetry::metrics,
};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// What a signal asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// SIGHUP.
    Reload,
    /// SIGUSR2.
    Upgrade,
    /// SIGTERM or SIGINT (the name).
    Shutdown(&'static str),
}

/// The signals the gateway handles, installed once at start.
pub struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
    usr2: Signal,
}

impl Signals {
    /// Installs the handlers (before the gateway says it is ready, so that an early SIGHUP is
    /// not fatal).
    pub fn install() -> io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            usr2: signal(SignalKind::user_defined2())?,
        })
    }

    /// The next signal received.
    pub async fn next(&mut self) -> Event {
        tokio::select! {
            _ = self.term.recv() => Event::Shutdown("SIGTERM"),
            _ = self.int.recv() => Event::Shutdown("SIGINT"),
            _ = self.hup.recv() => Event::Reload,
            _ = self.usr2.recv() => Event::Upgrade,
        }
    }
}

/// Talks to the service manager (systemd) when there is one.
#[derive(Clone, Copy, Debug)]
pub struct Notifier {
    active: bool,
}

impl Notifier {
    /// Active when `NOTIFY_SOCKET` is set.
    pub fn from_env() -> Self {
        Self { active: std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty()) }
    }

    /// Whether a service manager listens.
    pub fn is_active(&self) -> bool {
        self.active
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if !self.active {
            return;
        }
        if let Err(e) = sd_notify::notify(states) {
            tracing::warn!(error = %e, "cannot notify the service manager");
        }
    }

    /// `READY=1`, with this process as the main one (a process that took over from another
    /// becomes the service's main process here) and a status line.
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::MainPid(std::process::id()), NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// `RELOADING=1` (with the monotonic timestamp systemd ≥ 253 wants).
    pub fn reloading(&self) {
        let mut states = vec![NotifyState::Reloading, NotifyState::Status("reloading the configuration")];
        if let Ok(now) = NotifyState::monotonic_usec_now() {
            states.push(now);
        }
        self.send(&states);
    }

    /// `READY=1` after a reload, applied or refused (the status line says which).
    pub fn reloaded(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// `STOPPING=1`.
    pub fn stopping(&self, status: &str) {
        self.send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }

    /// A `STATUS=` line.
    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// Pings `WATCHDOG=1` at half the interval systemd asked for (`WATCHDOG_USEC`), from the
    /// async runtime, until `stop` is cancelled. Nothing when no watchdog is configured.
    pub fn spawn_watchdog(&self, stop: CancellationToken) {
        let Some(interval) = self.watchdog_interval() else { return };
        let notifier = *self;
        tracing::info!(interval_ms = interval.as_millis() as u64, "systemd watchdog enabled");
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval / 2);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = tick.tick() => notifier.send(&[NotifyState::Watchdog]),
                }
            }
        });
    }

    fn watchdog_interval(&self) -> Option<Duration> {
        if !self.active {
            return None;
        }
        // WATCHDOG_PID names the main process: after a takeover it is still the old one's pid,
        // so the new process accepts it when its own pid is the one announced with MAINPID.
        let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
        (usec > 0).then(|| Duration::from_micros(usec))
    }
}

/// Where the configuration comes from, to read it again on SIGHUP.
#[derive(Clone, Debug)]
pub enum ConfigSource {
    /// `--config FILE`.
    File(PathBuf),
    /// `--dev`: built-in defaults with this state directory.
    Dev(PathBuf),
}

impl ConfigSource {
    /// Reads, parses and validates the configuration.
    pub fn load(&self) -> Result<Config, ConfigErrors> {
        match self {
            ConfigSource::File(path) => config::load(path),
            ConfigSource::Dev(state_dir) => {
                let config = Config::dev(state_dir.clone());
                let problems = config.validate(paths::DEV_CONFIG_NAME);
                if problems.is_empty() { Ok(config) } else { Err(ConfigErrors(problems)) }
            }
        }
    }
}

/// A part of the gateway that applies reloadable keys (certificates, proxy settings).
pub trait Reloadable: Send + Sync {
    /// Checks `config` and prepares everything that can fail (reading certificate files…);
    /// returns what applies it. Nothing changes until every part has prepared.
    fn prepare(&self, config: &Config) -> Result<Box<dyn FnOnce() + Send>, String>;
}

/// Why a reload was refused (the previous configuration keeps serving).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new file is invalid.
    #[error("the configuration is invalid: {0}")]
    Invalid(ConfigErrors),
    /// Keys that only a restart applies changed.
    #[error("{} changed: restart the gateway to apply (systemctl restart gateway, or SIGUSR2 for a zero-downtime restart)", .0.join(", "))]
    NeedsRestart(Vec<&'static str>),
    /// A part refused the new configuration.
    #[error("{0}")]
    Refused(String),
}

/// Reloads the configuration from `source` into `app` and `parts`: all or nothing. Notifies
/// the service manager, logs and counts the outcome.
pub fn reload(
    source: &ConfigSource,
    app: &App,
    parts: &[Arc<dyn Reloadable>],
    notifier: Notifier,
) -> Result<(), ReloadError> {
    notifier.reloading();
    let result = try_reload(source, app, parts);
    metrics::global().reload(result.is_ok());
    match &result {
        Ok(()) => {
            tracing::info!("configuration reloaded");
            notifier.reloaded("serving; configuration reloaded");
        }
        Err(ReloadError::Invalid(problems)) => {
            for p in &problems.0 {
                tracing::error!(file = %p.file, key = %p.key, reason = %p.reason, "configuration reload refused");
            }
            notifier.reloaded("serving the previous configuration: the new one is invalid (see the log)");
        }
        Err(e) => {
            tracing::error!(error = %e, "configuration reload refused; the previous configuration keeps serving");
            notifier.reloaded(&format!("serving the previous configuration: reload refused: {e}"));
        }
    }
    result
}

fn try_reload(source: &ConfigSource, app: &App, parts: &[Arc<dyn Reloadable>]) -> Result<(), ReloadError> {
    let new = source.load().map_err(ReloadError::Invalid)?;
    let changed = config::restart_only_changes(&app.config(), &new);
    if !changed.is_empty() {
        return Err(ReloadError::NeedsRestart(changed));
    }
    let mut apply = Vec::with_capacity(parts.len());
    for part in parts {
        apply.push(part.prepare(&new).map_err(ReloadError::Refused)?);
    }
    app.replace_config(new);
    for f in apply {
        f();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn notifications_reach_the_socket() {
        let dir = std::env::temp_dir().join(format!("gw-notify-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).expect("bind");
        socket.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
        // The only test of this binary that touches NOTIFY_SOCKET.
        // SAFETY: tests in this module do not read the environment concurrently with this write.
        unsafe { std::env::set_var("NOTIFY_SOCKET", &path) };
        let n = Notifier::from_env();
        n.ready("serving");
        n.reloading();
        n.reloaded("reloaded");
        n.stopping("draining");
        unsafe { std::env::remove_var("NOTIFY_SOCKET") };
        let mut got = Vec::new();
        for _ in 0..4 {
            let mut buf = [0u8; 512];
            let len = socket.recv(&mut buf).expect("datagram");
            got.push(String::from_utf8_lossy(&buf[..len]).into_owned());
        }
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            got[0].contains("READY=1") && got[0].contains("MAINPID=") && got[0].contains("STATUS=serving"),
            "{got:?}"
        );
        assert!(got[1].contains("RELOADING=1") && got[1].contains("MONOTONIC_USEC="), "{got:?}");
        assert!(got[2].contains("READY=1") && got[2].contains("STATUS=reloaded"), "{got:?}");
        assert!(got[3].contains("STOPPING=1"), "{got:?}");
        assert!(!Notifier::from_env().is_active());
    }
}
