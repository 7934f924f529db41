//! `gateway dataplane teardown|status|dump`: work from the pins, no running gateway needed.

use super::{DataplaneArgs, DataplaneCommand, sandbox::policy_table};
use crate::{config, dataplane, paths};
use anyhow::Context;
use serde_json::Value;
use std::path::PathBuf;

pub(super) fn run(command: DataplaneCommand) -> anyhow::Result<u8> {
    match command {
        DataplaneCommand::Teardown(args) => {
            let bpffs = bpffs(&args)?;
            dataplane::teardown(&bpffs)
                .with_context(|| format!("cannot tear down the data plane pinned under {}", bpffs.display()))?;
            if args.json {
                println!("{}", serde_json::json!({"bpffs": bpffs.display().to_string(), "removed": true}));
            } else {
                println!("data plane under {} removed: programs detached, pins deleted", bpffs.display());
            }
        }
        DataplaneCommand::Status(args) => {
            let bpffs = bpffs(&args)?;
            let value = dataplane::status(&bpffs)
                .with_context(|| format!("cannot read the data plane pinned under {}", bpffs.display()))?;
            print_value(&value, args.json)?;
        }
        DataplaneCommand::Dump(args) => {
            let bpffs = bpffs(&args)?;
            let value = dataplane::dump(&bpffs)
                .with_context(|| format!("cannot read the data plane pinned under {}", bpffs.display()))?;
            if args.json {
                print_value(&value, true)?;
            } else {
                let mut rest = value.clone();
                let sandboxes = rest.as_object_mut().and_then(|o| o.remove("sandboxes"));
                print_value(&rest, false)?;
                for view in sandboxes.as_ref().and_then(Value::as_array).into_iter().flatten() {
                    println!();
                    print!("{}", policy_table(view));
                }
            }
        }
    }
    Ok(0)
}

/// `--bpffs`, else `dataplane.bpffs` of `--config`, else the default.
fn bpffs(args: &DataplaneArgs) -> anyhow::Result<PathBuf> {
    if let Some(dir) = &args.bpffs {
        return Ok(dir.clone());
    }
    if let Some(file) = &args.config {
        return Ok(config::load(file)?.dataplane.bpffs);
    }
    Ok(PathBuf::from(paths::DEFAULT_BPFFS))
}

fn print_value(value: &Value, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        let mut out = String::new();
        render(value, 0, &mut out);
        print!("{out}");
    }
    Ok(())
}

/// An indented, YAML-like rendering of a JSON value.
fn render(value: &Value, indent: usize, out: &mut String) {
    let pad = "  ".repeat(indent);
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match v {
                    Value::Object(m) if !m.is_empty() => {
                        out.push_str(&format!("{pad}{k}:\n"));
                        render(v, indent + 1, out);
                    }
                    Value::Array(a) if a.iter().any(|x| x.is_object() || x.is_array()) => {
                        out.push_str(&format!("{pad}{k}:\n"));
                        render(v, indent + 1, out);
                    }
                    _ => out.push_str(&format!("{pad}{k}: {}\n", scalar(v))),
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                match item {
                    Value::Object(map) => {
                        let line: Vec<String> = map.iter().map(|(k, v)| format!("{k}={}", scalar(v))).collect();
                        out.push_str(&format!("{pad}- {}\n", line.join(" ")));
                    }
                    other => out.push_str(&format!("{pad}- {}\n", scalar(other))),
                }
            }
        }
        other => out.push_str(&format!("{pad}{}\n", scalar(other))),
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        Value::Array(a) if a.is_empty() => "[]".into(),
        Value::Array(a) => a.iter().map(scalar).collect::<Vec<_>>().join(", "),
        Value::Object(m) if m.is_empty() => "{}".into(),
        other => other.to_string(),
    }
}
