//! What the admin API clients share: one call with its output, error lines, aligned tables.

use super::{AdminArgs, Output, client::AdminClient};
use anyhow::Context;
use http::{Method, StatusCode};
use serde_json::Value;

/// Sends one admin request and prints the answer: the JSON pretty-printed (`--output json`) or
/// `table(json)`; for a 204, `done` (table output only). An API error is printed as one line on
/// stderr and gives exit code 1.
pub(super) async fn call(
    admin: &AdminArgs,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
    done: &str,
    table: impl FnOnce(&Value) -> String,
) -> anyhow::Result<u8> {
    let client = AdminClient::from_args(admin)?;
    let (status, body) = client.request(method, path, body).await?;
    if !status.is_success() {
        report_error(status, &body);
        return Ok(1);
    }
    if status == StatusCode::NO_CONTENT {
        if admin.output == Output::Table && !done.is_empty() {
            println!("{done}");
        }
        return Ok(0);
    }
    let value: Value = serde_json::from_slice(&body).context("the admin API answered something that is not JSON")?;
    match admin.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&value)?),
        Output::Table => print!("{}", table(&value)),
    }
    Ok(0)
}

/// Prints an API error as `error: CODE (STATUS): MESSAGE` on stderr.
pub(super) fn report_error(status: StatusCode, body: &[u8]) {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    match parsed.as_ref().and_then(|v| v.get("error")) {
        Some(e) => eprintln!(
            "error: {} ({}): {}",
            e.get("code").and_then(Value::as_str).unwrap_or("?"),
            status.as_u16(),
            e.get("message").and_then(Value::as_str).unwrap_or("")
        ),
        None => eprintln!("error: HTTP {status}: {}", String::from_utf8_lossy(body)),
    }
}

/// A JSON scalar as a table cell (`-` for null).
pub(super) fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Aligned columns; `header` may be empty.
pub(super) fn columns(header: &[&str], rows: &[Vec<String>]) -> String {
    let n = header.len().max(rows.iter().map(Vec::len).max().unwrap_or(0));
    let mut widths = vec![0usize; n];
    let all = std::iter::once(header.iter().map(|s| s.to_string()).collect::<Vec<_>>()).chain(rows.iter().cloned());
    for row in all.clone() {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in all {
        if row.is_empty() {
            continue;
        }
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, c)| if i + 1 == row.len() { c.clone() } else { format!("{c:<w$}", w = widths[i]) })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
