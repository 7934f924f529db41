//! The module graph of `gateway/src`, read from its paths (`crate::`, `super::`, `self::`):
//! `cargo xtask lint` fails on a cycle, `cargo xtask modules` prints the top-level graph layer by
//! layer (docs/ARCHITECTURE.md).
//!
//! Every level counts: the top-level modules (`edge`, `service`) and the children of each module
//! (`service::previews`, `admin::router`) must not import each other in a circle. A parent naming
//! its child (re-exports) and a child naming its parent (`super::Item`) are not edges. Comments
//! and string literals are skipped: a doc link is not a dependency. Hand-written rather than
//! `syn`-based: paths are all it needs, and a lexer for comments, strings and braces is short.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};

/// Module (`edge::proxy`) → the sibling modules it names.
pub type Graph = BTreeMap<String, BTreeSet<String>>;

/// Fails with every cycle's members when the graph of `src` has one.
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

/// Prints the top-level graph ([`render`]), then any cycle at any level.
pub fn print(src: &Path) -> Result<()> {
    let graph = graph(src)?;
    print!("{}", render(&graph));
    for cycle in components(&graph).into_iter().filter(|c| c.len() > 1) {
        println!("cycle: {}", cycle.join(", "));
    }
    Ok(())
}

/// The top-level modules, highest layer first, each with the modules it imports: what
/// docs/ARCHITECTURE.md shows between its `modules` markers.
pub fn render(graph: &Graph) -> String {
    let top: Graph =
        graph.iter().filter(|(m, _)| !m.contains("::")).map(|(m, deps)| (m.clone(), deps.clone())).collect();
    let mut out = String::new();
    for (depth, layer) in layers(&top).iter().enumerate().rev() {
        for module in layer {
            let deps: Vec<&str> = top[module].iter().map(String::as_str).collect();
            let deps = if deps.is_empty() { "-".to_string() } else { deps.join(", ") };
            out.push_str(&format!("{depth:>2}  {module:<10} → {deps}\n"));
        }
    }
    out
}

/// Reads every `.rs` file under `src`. A path naming a module outside the file's own ancestry
/// is an edge between the two siblings where the module paths part: `edge/proxy.rs` naming
/// `crate::service::App` is `edge → service`; naming `super::pool` is `edge::proxy → edge::pool`.
pub fn graph(src: &Path) -> Result<Graph> {
    let mut files = Vec::new();
    walk(src, &mut files)?;
    let mut modules: Vec<(Vec<String>, &PathBuf)> = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(src).context("a file outside src")?;
        modules.push((module_of(rel), file));
    }
    let known: BTreeSet<Vec<String>> = modules.iter().map(|(m, _)| m.clone()).collect();
    let mut graph = Graph::new();
    for m in known.iter().filter(|m| !m.is_empty()) {
        graph.entry(m.join("::")).or_default();
    }
    for (from, file) in &modules {
        let text = fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
        for path in paths(&strip(&text), from) {
            // The longest prefix of the path that is a module is what it names.
            let Some(to) = (1..=path.len()).rev().map(|n| &path[..n]).find(|p| known.contains(*p)) else {
                continue;
            };
            let k = from.iter().zip(to.iter()).take_while(|(a, b)| a == b).count();
            if k == to.len() || k == from.len() {
                continue;
            }
            graph.entry(from[..=k].join("::")).or_default().insert(to[..=k].join("::"));
        }
    }
    Ok(graph)
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
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

/// `edge/proxy.rs` → `[edge, proxy]`, `edge/mod.rs` → `[edge]`, `lib.rs` and `main.rs` → `[]`.
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string()).collect();
    let root = parts.len() == 1 && matches!(parts[0].as_str(), "lib" | "main");
    if root || parts.last().is_some_and(|l| l == "mod") {
        parts.pop();
    }
    parts
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

/// Every path that starts with `crate::`, `super::` or `self::`, made absolute (segments from
/// the crate root) for a file whose module is `module`; a group `crate::{a::b, c}` gives one
/// path per member.
fn paths(text: &str, module: &[String]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for (at, _) in text.match_indices("::") {
        let start = text[..at].rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).map_or(0, |i| i + 1);
        let mut base: Vec<String> = match &text[start..at] {
            "crate" => Vec::new(),
            "self" => module.to_vec(),
            "super" => module[..module.len().saturating_sub(1)].to_vec(),
            _ => continue,
        };
        // Only where a path starts (not `a::super::…`).
        if text[..start].ends_with("::") {
            continue;
        }
        let mut rest = &text[at + 2..];
        while let Some(r) = rest.strip_prefix("super::") {
            base.pop();
            rest = r;
        }
        for p in tree(rest.trim_start()) {
            let mut full = base.clone();
            full.extend(p);
            out.push(full);
        }
    }
    out
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
             fn x<'a>(c: char) { let _ = 'x'; crate::i::j(); my_crate::k(); super::l::M; }\n",
        );
        let module = ["p".to_string(), "q".to_string()];
        let got: BTreeSet<Vec<String>> = paths(&text, &module).into_iter().collect();
        let want: BTreeSet<Vec<String>> =
            [vec!["a", "B"], vec!["a", "c", "D"], vec!["e"], vec!["i", "j"], vec!["p", "l", "M"]]
                .into_iter()
                .map(|p| p.into_iter().map(String::from).collect())
                .collect();
        assert_eq!(got, want);
    }

    /// docs/ARCHITECTURE.md shows the graph of the code as it is (`cargo xtask modules` prints it).
    #[test]
    fn the_architecture_doc_shows_the_module_graph() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let doc = fs::read_to_string(root.join("docs/ARCHITECTURE.md")).expect("docs/ARCHITECTURE.md");
        let (begin, end) = ("<!-- modules:begin -->\n```\n", "```\n<!-- modules:end -->");
        let start = doc.find(begin).expect("the modules:begin marker") + begin.len();
        let stop = doc[start..].find(end).expect("the modules:end marker") + start;
        let want = render(&graph(&root.join("gateway/src")).expect("graph"));
        assert_eq!(&doc[start..stop], want, "docs/ARCHITECTURE.md: paste `cargo xtask modules` between the markers");
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
