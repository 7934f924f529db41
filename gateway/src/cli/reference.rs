//! The CLI reference in Markdown, generated from the clap definitions (the README's "CLI
//! reference" section is this text; `tests/tests/docs.rs` checks it, and rewrites it with
//! `GATEWAY_UPDATE_DOCS=1`, which `cargo xtask docs` sets).

use super::Cli;
use clap::CommandFactory;
use std::fmt::Write as _;

/// Every command, its options and their examples.
pub fn markdown() -> String {
    let mut out = String::new();
    let root = Cli::command();
    let globals: Vec<&clap::Arg> = root.get_arguments().filter(|a| a.is_global_set()).collect();
    if !globals.is_empty() {
        out.push_str("Options of every command:\n\n");
        table(&mut out, &globals);
        out.push('\n');
    }
    for sub in root.get_subcommands() {
        walk(&mut out, sub, "gateway");
    }
    out
}

/// One table row per command: `gateway …` and what it does (the README's overview).
pub fn summary() -> String {
    fn rows(cmd: &clap::Command, parent: &str, out: &mut String) {
        for sub in cmd.get_subcommands().filter(|c| !c.is_hide_set() && c.get_name() != "help") {
            let path = format!("{parent} {}", sub.get_name());
            if sub.has_subcommands() {
                rows(sub, &path, out);
            } else {
                let about = sub.get_about().map(|a| one_line(&a.to_string())).unwrap_or_default();
                let _ = writeln!(out, "| `{path}` | {} |", cell(&about));
            }
        }
    }
    let mut out = String::from("| command | what it does |\n| --- | --- |\n");
    rows(&Cli::command(), "gateway", &mut out);
    out
}

fn walk(out: &mut String, cmd: &clap::Command, parent: &str) {
    if cmd.is_hide_set() || cmd.get_name() == "help" {
        return;
    }
    let path = format!("{parent} {}", cmd.get_name());
    let subs: Vec<&clap::Command> =
        cmd.get_subcommands().filter(|c| !c.is_hide_set() && c.get_name() != "help").collect();
    let args: Vec<&clap::Arg> = cmd
        .get_arguments()
        .filter(|a| !a.is_hide_set() && !a.is_global_set() && !matches!(a.get_id().as_str(), "help" | "version"))
        .collect();
    let _ = writeln!(out, "#### `{path}`\n");
    if let Some(about) = cmd.get_about() {
        let _ = writeln!(out, "{}\n", one_line(&about.to_string()));
    }
    if !args.is_empty() {
        table(out, &args);
        out.push('\n');
    }
    for sub in subs {
        walk(out, sub, &path);
    }
}

fn table(out: &mut String, args: &[&clap::Arg]) {
    out.push_str("| argument | meaning | example |\n| --- | --- | --- |\n");
    for arg in args {
        let help = arg.get_long_help().or(arg.get_help()).map(|h| h.to_string()).unwrap_or_default();
        let (text, example) = match help.split_once("Example:") {
            Some((t, e)) => (t.trim().to_string(), e.trim().to_string()),
            None => (help.trim().to_string(), String::new()),
        };
        let mut text = one_line(&text);
        let defaults: Vec<String> = arg.get_default_values().iter().map(|v| v.to_string_lossy().into_owned()).collect();
        if !defaults.is_empty() && arg.get_action().takes_values() {
            let _ = write!(text, " Default: `{}`.", defaults.join(","));
        }
        if let Some(env) = arg.get_env() {
            let _ = write!(text, " Env: `{}`.", env.to_string_lossy());
        }
        let possible: Vec<String> = arg.get_possible_values().iter().map(|v| v.get_name().to_string()).collect();
        if !possible.is_empty() && arg.get_action().takes_values() {
            let _ =
                write!(text, " One of: {}.", possible.iter().map(|p| format!("`{p}`")).collect::<Vec<_>>().join(", "));
        }
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            name(arg),
            cell(&text),
            if example.is_empty() { String::new() } else { format!("`{}`", example.replace('|', "\\|")) }
        );
    }
}

fn name(arg: &clap::Arg) -> String {
    let value = arg
        .get_value_names()
        .and_then(|v| v.first())
        .map(|v| v.to_string())
        .unwrap_or_else(|| arg.get_id().as_str().to_uppercase());
    let takes = arg.get_action().takes_values();
    match (arg.get_long(), arg.get_short()) {
        (Some(long), Some(short)) if takes => format!("`-{short}`, `--{long} <{value}>`"),
        (Some(long), Some(short)) => format!("`-{short}`, `--{long}`"),
        (Some(long), None) if takes => format!("`--{long} <{value}>`"),
        (Some(long), None) => format!("`--{long}`"),
        (None, _) => format!("`<{value}>`"),
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Table-cell text: `|` escaped, and `<`/`>` so that `<state>` is not read as HTML.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_command_is_documented() {
        let md = super::markdown();
        for cmd in ["`gateway serve`", "`gateway check-config`", "`gateway dataplane dump`", "`gateway sandbox create`"]
        {
            assert!(md.contains(&format!("#### {cmd}")), "{cmd} missing:\n{md}");
        }
        assert!(md.contains("`--takeover`"), "{md}");
        assert!(md.contains("`--log-format <LOG_FORMAT>`"), "{md}");
    }
}
