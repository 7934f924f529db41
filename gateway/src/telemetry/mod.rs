//! Telemetry: logs and metrics.
//!
//! Logging: `tracing` to stderr, as text or JSON lines, filtered by `GATEWAY_LOG`
//! (an `EnvFilter` directive such as `info,gateway::admin=debug`), default [`DEFAULT_FILTER`].
//! Records of the `log` crate (aya-log's records of the eBPF programs among them, target
//! `gateway_ebpf`) are bridged into `tracing` (tracing-subscriber's `tracing-log` feature) and
//! filtered and formatted like the rest: `GATEWAY_LOG=info,gateway_ebpf=debug` logs every
//! packet the programs drop. Colours only on a terminal; no timestamps under journald.
//!
//! Metrics: [`metrics`], served on the admin listener's `/metrics`.

pub mod access;
pub mod logbuf;
pub mod metrics;

use std::io::IsTerminal;
use tracing_subscriber::{EnvFilter, filter::filter_fn, fmt, prelude::*};

/// The access log's target: its lines go through [`logbuf`], the rest straight to stderr.
pub const ACCESS_TARGET: &str = "gateway::access";

/// Environment variable holding the filter directives.
pub const ENV_FILTER: &str = "GATEWAY_LOG";
/// The filter when `GATEWAY_LOG` is unset: `info`, except rustls, whose warnings are about
/// individual clients' protocol mistakes (an IP address as SNI…) and would let any client fill
/// the log.
pub const DEFAULT_FILTER: &str = "info,rustls=error";

/// `--log-format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber. An invalid `GATEWAY_LOG` is reported and `info` used.
pub fn init(format: LogFormat) {
    let (filter, bad) = match std::env::var(ENV_FILTER) {
        Ok(spec) if !spec.trim().is_empty() => match EnvFilter::try_new(&spec) {
            Ok(f) => (f, None),
            Err(e) => (
                EnvFilter::new(DEFAULT_FILTER),
                Some(format!("{ENV_FILTER}={spec:?} is invalid ({e}); using \"{DEFAULT_FILTER}\"")),
            ),
        },
        _ => (EnvFilter::new(DEFAULT_FILTER), None),
    };
    let registry = tracing_subscriber::registry().with(filter);
    // Colours only on a terminal; under journald (JOURNAL_STREAM set) no timestamp either: the
    // journal records its own.
    let ansi = std::io::stderr().is_terminal();
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    // Access lines are formatted by `access` itself (the layers below only make the filter
    // see the access target as enabled, and serve library users that skip this function).
    access::set_format(access::AccessFormat { json: format == LogFormat::Json, time: !journald });
    // The same format twice: one layer for the access log (buffered, see `logbuf`), one for the
    // rest (written at once, so warnings and errors are never late).
    let access = || filter_fn(|m| m.target() == ACCESS_TARGET);
    let other = || filter_fn(|m| m.target() != ACCESS_TARGET);
    let result = match format {
        LogFormat::Text if journald => registry
            .with(fmt::layer().with_ansi(false).without_time().with_writer(logbuf::Buffered).with_filter(access()))
            .with(fmt::layer().with_ansi(false).without_time().with_writer(std::io::stderr).with_filter(other()))
            .try_init(),
        LogFormat::Text => registry
            .with(fmt::layer().with_ansi(ansi).with_writer(logbuf::Buffered).with_filter(access()))
            .with(fmt::layer().with_ansi(ansi).with_writer(std::io::stderr).with_filter(other()))
            .try_init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_writer(logbuf::Buffered)
                    .with_filter(access()),
            )
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_writer(std::io::stderr)
                    .with_filter(other()),
            )
            .try_init(),
    };
    if result.is_ok()
        && let Some(message) = bad
    {
        tracing::warn!("{message}");
    }
}
