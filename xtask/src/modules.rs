//! The module graph of `gateway/src`, read from its `crate::` paths: `cargo xtask lint` fails on
//! a cycle, `cargo xtask modules` prints the graph layer by layer (docs/ARCHITECTURE.md).
//!
//! A node is a top-level module (`src/edge/` or `src/config.rs`); under the folders of
//! [`GROUPS`] each child is a node of its own (`service::previews`), so the services cannot lean
//! on each other in a circle either. Comments and string literals are skipped: a doc link is not
//! a dependency. Hand-written rather than `syn`-based: paths are all it needs, and a
//! lexer for comments, strings and braces is short.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
};

use anyhow::{Context, Result, bail};

/// Folders whose children are nodes of their own.
const GROUPS: &[&str] = &["service"];

/// Module → the modules it names.
pub type Graph = BTreeMap<String, BTreeSet<String>>;

/// Fails with every cycle's members when the graph of `src` has one.
#[expect(dead_code, reason = "`cargo xtask lint` calls it once the graph has no cycle left")]
pub fn check(src: &Path) -> Result<()> {
    let graph = graph(src)?;
    let cycles: Vec<Vec<String>> = components(&graph).into_iter().filter(|c| c.len() > 1).collect();
    if cycles.is_empty() {
        return Ok(());
    }
    let mut text = String::new();
    for cycle in &cycles {
        text.push_str(&format!("\n  {{{}}}:", cycle.join(", ")));
        for from in cycle {
            let to: Vec<&str> = graph[from].iter().filter(|t| cycle.contains(t)).map(String::as_str).collect();
            text.push_str(&format!("\n    {from} → {}", to.join(", ")));
        }
    }
    bail!("the modules of {} import each other in a circle:{text}", src.display())
}

/// Prints the graph, lowest layer first: each module with what it imports.
pub fn print(src: &Path) -> Result<()> {
    let graph = graph(src)?;
    for (depth, layer) in layers(&graph).iter().enumerate() {
        println!("layer {depth}:");
        for module in layer {
            let deps: Vec<&str> = graph[module].iter().map(String::as_str).collect();
            println!("  {module:<20} → {}", if deps.is_empty() { "-".to_string() } else { deps.join(", ") });
        }
    }
    for cycle in components(&graph).into_iter().filter(|c| c.len() > 1) {
        println!("cycle: {}", cycle.join(", "));
    }
    Ok(())
}

/// Reads every `.rs` file under `src`.
pub fn graph(src: &Path) -> Result<Graph> {
    let mut graph = Graph::new();
    let mut files = Vec::new();
    walk(src, &mut files)?;
    let nodes = nodes(src, &files);
    for file in &files {
        let rel = file.strip_prefix(src).context("a file outside src")?;
        let Some(from) = node_of(rel) else { continue };
        let text = fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
        let deps = graph.entry(from.clone()).or_default();
        for path in crate_paths(&strip(&text)) {
            let mut to = path.first().cloned().unwrap_or_default();
            if GROUPS.contains(&to.as_str())
                && let Some(child) = path.get(1)
            {
                to = format!("{to}::{child}");
            }
            if to != from && nodes.contains(&to) {
                deps.insert(to);
            }
        }
    }
    Ok(graph)
}

fn walk(dir: &Path, files: &mut Vec<std::path::PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, files)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    Ok(())
}

/// `edge/proxy.rs` → `edge`, `service/previews/gate.rs` → `service::previews`; the crate roots
/// (`lib.rs`, `main.rs`) wire everything and are no node.
fn node_of(rel: &Path) -> Option<String> {
    let parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string()).collect();
    let first = parts.first()?;
    if parts.len() == 1 && (first == "lib" || first == "main") {
        return None;
    }
    if GROUPS.contains(&first.as_str())
        && let Some(child) = parts.get(1)
        && child != "mod"
    {
        return Some(format!("{first}::{child}"));
    }
    Some(first.clone())
}

fn nodes(src: &Path, files: &[std::path::PathBuf]) -> BTreeSet<String> {
    files.iter().filter_map(|f| f.strip_prefix(src).ok()).filter_map(node_of).collect()
}

/// The text without comments, string and char literals (each replaced by a space).
fn strip(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                out.push(' ');
            }
            b'r' if matches!(b.get(i + 1), Some(b'"' | b'#')) && !ident_byte(b, i.wrapping_sub(1)) => {
                // r"…", r#"…"#
                let mut j = i + 1;
                let mut hashes = 0;
                while b.get(j) == Some(&b'#') {
                    hashes += 1;
                    j += 1;
                }
                if b.get(j) != Some(&b'"') {
                    out.push('r');
                    i += 1;
                    continue;
                }
                j += 1;
                let close: Vec<u8> = std::iter::once(b'"').chain(std::iter::repeat_n(b'#', hashes)).collect();
                while j < b.len() && !b[j..].starts_with(&close) {
                    j += 1;
                }
                i = j + close.len();
                out.push(' ');
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                out.push(' ');
            }
            b'\'' => {
                // A char literal ('x', '\n', '\u{..}') or a lifetime ('a): skip only the former.
                let end = if b.get(i + 1) == Some(&b'\\') {
                    b[i + 2..].iter().position(|&c| c == b'\'').map(|p| i + 2 + p)
                } else if b.get(i + 2) == Some(&b'\'') {
                    Some(i + 2)
                } else {
                    text[i + 1..].chars().next().filter(|c| !c.is_ascii()).and_then(|c| {
                        let after = i + 1 + c.len_utf8();
                        (b.get(after) == Some(&b'\'')).then_some(after)
                    })
                };
                match end {
                    Some(end) => {
                        i = end + 1;
                        out.push(' ');
                    }
                    None => {
                        out.push('\'');
                        i += 1;
                    }
                }
            }
            _ => {
                let c = text[i..].chars().next().unwrap_or(' ');
                out.push(c);
                i += c.len_utf8();
            }
        }
    }
    out
}

fn ident_byte(b: &[u8], i: usize) -> bool {
    b.get(i).is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

/// Every path that starts with `crate::`, as its segments; a group `crate::{a::b, c}` gives
/// one path per member.
fn crate_paths(text: &str) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        let before = &text[..text.len() - rest.len() + at];
        let is_word = before.as_bytes().last().is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_');
        rest = &rest[at + "crate::".len()..];
        if is_word {
            continue;
        }
        paths.extend(tree(rest.trim_start()));
    }
    paths
}

/// The paths of a use tree at the start of `s`: `a::b::{c, d::e}` or `{a, b}`.
fn tree(s: &str) -> Vec<Vec<String>> {
    let s = s.trim_start();
    if let Some(inner) = s.strip_prefix('{') {
        let Some(end) = matching_brace(inner) else { return Vec::new() };
        return split_top(&inner[..end]).into_iter().flat_map(tree).collect();
    }
    let ident: String = s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
    if ident.is_empty() {
        return Vec::new();
    }
    let after = s[ident.len()..].trim_start();
    match after.strip_prefix("::") {
        Some(next) => {
            let subs = tree(next);
            if subs.is_empty() {
                vec![vec![ident]]
            } else {
                subs.into_iter()
                    .map(|mut p| {
                        p.insert(0, ident.clone());
                        p
                    })
                    .collect()
            }
        }
        None => vec![vec![ident]],
    }
}

fn matching_brace(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return Some(i),
            '}' => depth -= 1,
            _ => {}
        }
    }
    None
}

fn split_top(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0);
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts.into_iter().filter(|p| !p.trim().is_empty()).collect()
}

/// Strongly connected components (Tarjan), each sorted.
fn components(graph: &Graph) -> Vec<Vec<String>> {
    struct State<'a> {
        graph: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.graph.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.to_string());
                if w == v {
                    break;
                }
            }
            component.sort();
            s.out.push(component);
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

/// Layer 0 imports nothing; layer n imports only layers below n (cycles, if any, share a layer).
fn layers(graph: &Graph) -> Vec<Vec<String>> {
    let mut depth: BTreeMap<&str, usize> = BTreeMap::new();
    fn depth_of<'a>(g: &'a Graph, v: &'a str, d: &mut BTreeMap<&'a str, usize>, seen: &mut BTreeSet<&'a str>) -> usize {
        if let Some(&n) = d.get(v) {
            return n;
        }
        if !seen.insert(v) {
            return 0;
        }
        let n = g.get(v).into_iter().flatten().map(|w| depth_of(g, w, d, seen) + 1).max().unwrap_or(0);
        d.insert(v, n);
        n
    }
    for v in graph.keys() {
        depth_of(graph, v, &mut depth, &mut BTreeSet::new());
    }
    let mut out: Vec<Vec<String>> = Vec::new();
    for (v, n) in depth {
        if out.len() <= n {
            out.resize(n + 1, Vec::new());
        }
        out[n].push(v.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn use_trees_comments_and_strings() {
        let text = strip(
            "use crate::{a::{B, c::D}, e};\n// crate::f\n/* crate::g */\nlet s = \"crate::h\";\n\
             fn x<'a>(c: char) { let _ = 'x'; crate::i::j(); my_crate::k(); }\n",
        );
        let firsts: BTreeSet<String> = crate_paths(&text).into_iter().filter_map(|p| p.first().cloned()).collect();
        assert_eq!(firsts, ["a", "e", "i"].map(String::from).into());
    }

    #[test]
    fn cycles_are_found() {
        let mut g = Graph::new();
        g.entry("a".into()).or_default().insert("b".into());
        g.entry("b".into()).or_default().insert("c".into());
        g.entry("c".into()).or_default().insert("a".into());
        g.entry("d".into()).or_default().insert("a".into());
        let big: Vec<Vec<String>> = components(&g).into_iter().filter(|c| c.len() > 1).collect();
        assert_eq!(big, vec![vec!["a".to_string(), "b".into(), "c".into()]]);
    }
}
