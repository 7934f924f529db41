//! The generated parts of the documentation match the code: the configuration reference in the
//! README is `gateway print-default-config` (whose every key a unit test checks), and the CLI
//! reference (README overview, docs/CLI.md) is generated from the clap definitions.
//! `GATEWAY_UPDATE_DOCS=1` (what `cargo xtask docs` sets) rewrites them instead of failing.

use std::{fs, path::PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Replaces (or checks) the text between `<!-- generated: NAME -->` and `<!-- end: NAME -->`.
fn section(file: &str, name: &str, want: &str) -> Option<String> {
    let path = repo().join(file);
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (open, close) = (format!("<!-- generated: {name} -->\n"), format!("<!-- end: {name} -->"));
    let start = text.find(&open).unwrap_or_else(|| panic!("{file} has no {open:?} marker")) + open.len();
    let end = start + text[start..].find(&close).unwrap_or_else(|| panic!("{file} has no {close:?} marker"));
    if &text[start..end] == want {
        return None;
    }
    if std::env::var_os("GATEWAY_UPDATE_DOCS").is_some() {
        fs::write(&path, format!("{}{want}{}", &text[..start], &text[end..])).expect("rewrite");
        return None;
    }
    Some(format!("{file}: the {name} section is out of date; run `cargo xtask docs`"))
}

#[test]
fn generated_documentation_matches_the_code() {
    let config = format!("```toml\n{}```\n", gateway::config::DEFAULT_CONFIG_TOML);
    let problems: Vec<String> = [
        section("README.md", "default-config", &config),
        section("README.md", "cli-summary", &gateway::cli::reference::summary()),
        section("docs/CLI.md", "cli-reference", &gateway::cli::reference::markdown()),
    ]
    .into_iter()
    .flatten()
    .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
