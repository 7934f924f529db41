//! `gateway`: the eBPF-accelerated port gateway for cloud sandboxes. See `gateway --help`.

use clap::Parser;
use gateway::{
    cli::{self, Cli},
    config::ConfigErrors,
    telemetry,
};
use std::process::ExitCode;

/// mimalloc: measurably less CPU per proxied request than glibc malloc (BENCHMARKS.md, Profile).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    let code = match cli::run(cli) {
        Ok(code) => code,
        Err(e) => match e.downcast_ref::<ConfigErrors>() {
            Some(problems) => cli::print_problems(problems),
            None => {
                eprintln!("error: {}", describe(&e));
                1
            }
        },
    };
    // Access log lines still buffered (telemetry::logbuf) go out before the process ends.
    telemetry::logbuf::flush();
    ExitCode::from(code)
}

/// The error and its causes, skipping a cause already spelled out by the message before it.
fn describe(e: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if message.contains(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    message
}
