//! No cycle between the crate's top-level modules (issue 27).
//!
//! A top-level module is what sits directly under `src/`: `src/hub.rs` is
//! `hub`, and `src/redis/` with every file below it is `redis` (`lib.rs` and
//! `main.rs` are not modules). Module A depends on B when a file of A names
//! `crate::B`: `use crate::B::x`, a group `use crate::{B, c::{d, e}}` (each
//! item of the group), or a path `crate::B::f()` in code. A `super::` path
//! that climbs to the crate root counts the same way. Test code is left out
//! (`#[cfg(test)] mod m { ... }` blocks and `tests.rs` files): the layering
//! is the product's, and a module's tests may drive it through any other
//! (the connection core's tests go through `world`, which builds on `conn`).
//! Comments, strings and char literals are blanked first, so neither a doc
//! link nor `"crate::x"` in a string makes an edge. Not followed: a name
//! re-exported by `lib.rs` (there is none) and aliases such as `use crate as c`.
//!
//! `cargo test --test module_graph -- --nocapture` prints every edge
//! with the file:line of its first use, and fails with each cycle written as
//! a path (`config -> redis -> hub -> config`) and the edges to cut.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

/// from -> to -> where the first use is, as `src/file.rs:line`.
type Graph = BTreeMap<String, BTreeMap<String, String>>;

/// Each top-level module with its files (relative to the crate), sorted.
fn modules(root: &Path) -> BTreeMap<String, Vec<String>> {
    fn walk(root: &Path, rel: String, out: &mut BTreeMap<String, Vec<String>>) {
        for entry in fs::read_dir(root.join(&rel)).unwrap() {
            let rel = format!("{rel}/{}", entry.unwrap().file_name().to_str().unwrap());
            let module = rel.split('/').nth(1).unwrap().trim_end_matches(".rs");
            if root.join(&rel).is_dir() {
                walk(root, rel, out);
            } else if rel.ends_with(".rs") && !["lib", "main"].contains(&module) {
                out.entry(module.to_string()).or_default().push(rel);
            }
        }
    }
    let mut modules = BTreeMap::new();
    walk(root, "src".into(), &mut modules);
    modules.values_mut().for_each(|files| files.sort());
    modules
}

/// The source with comments, strings and char literals turned into spaces,
/// newlines kept (so lines still count). Lifetimes (`'a`) are left alone.
fn blank(source: &str) -> String {
    let s: Vec<char> = source.chars().collect();
    let at = |i: usize, text: &str| {
        s.get(i..)
            .is_some_and(|rest| rest.iter().copied().take(text.len()).eq(text.chars()))
    };
    let ident = |i: usize| i < s.len() && (s[i].is_alphanumeric() || s[i] == '_');
    // `r"`, `r#"`, `br##"`...: the number of `#`, when a raw string starts at i.
    let raw = |i: usize| {
        let hashes = s[i + 1..].iter().take_while(|&&c| c == '#').count();
        let alone = i == 0 || !ident(i - 1) || (s[i - 1] == 'b' && (i < 2 || !ident(i - 2)));
        (s[i] == 'r' && alone && at(i + 1 + hashes, "\"")).then_some(hashes)
    };
    let mut out = s.clone();
    let mut i = 0;
    while i < s.len() {
        let start = i;
        if at(i, "//") {
            i = (i..s.len()).find(|&j| s[j] == '\n').unwrap_or(s.len());
        } else if at(i, "/*") {
            let mut depth = 0;
            while i < s.len() {
                depth += i32::from(at(i, "/*")) - i32::from(at(i, "*/"));
                i += if at(i, "/*") || at(i, "*/") { 2 } else { 1 };
                if depth == 0 {
                    break;
                }
            }
        } else if let Some(hashes) = raw(i) {
            let end: String = std::iter::once('"')
                .chain(std::iter::repeat_n('#', hashes))
                .collect();
            i += 2 + hashes;
            while i < s.len() && !at(i, &end) {
                i += 1;
            }
            i += end.len();
        } else if s[i] == '"' || (s[i] == '\'' && (at(i + 1, "\\") || at(i + 2, "'"))) {
            // A string or a char literal (not a lifetime), escapes skipped.
            let quote = s[i];
            i += 1;
            while i < s.len() && s[i] != quote {
                i += if s[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else {
            i += 1;
            continue;
        }
        for c in &mut out[start..i.min(s.len())] {
            if *c != '\n' {
                *c = ' ';
            }
        }
    }
    out.into_iter().collect()
}

/// Every top-level name a file reaches through the crate root, with its
/// line: the first segment after `crate::` (or after as many `super::` as it
/// takes to climb to the root), or each first segment of a `{...}` group.
/// `depth` is the file's own module depth: 1 for `src/x.rs` and
/// `src/x/mod.rs`, 2 for `src/x/y.rs`; inline `mod m { ... }` blocks add one.
fn root_names(source: &str, depth: usize) -> Vec<(String, usize)> {
    let code = blank(source);
    let mut tokens = Vec::new(); // (token, line)
    for (n, line) in code.lines().enumerate() {
        let mut rest = line;
        while let Some(c) = rest.chars().next() {
            let len = if c.is_alphanumeric() || c == '_' || c == '$' {
                rest.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
                    .unwrap_or(rest.len())
            } else if rest.starts_with("::") {
                2
            } else {
                c.len_utf8()
            };
            if !c.is_whitespace() {
                tokens.push((&rest[..len], n + 1));
            }
            rest = &rest[len..];
        }
    }
    let tok = |i: usize| tokens.get(i).map_or("", |t| t.0);
    let (mut found, mut braces, mut inline_mods) = (Vec::new(), 0, Vec::new());
    let mut i = 0;
    while i < tokens.len() {
        if (i..i + 10)
            .map(tok)
            .eq(["#", "[", "cfg", "(", "test", ")", "]", "mod"]
                .into_iter()
                .chain([tok(i + 8), "{"]))
        {
            // A test module: skip to its closing brace.
            let mut level = 0;
            i += 9;
            while i < tokens.len() {
                level += i32::from(tok(i) == "{") - i32::from(tok(i) == "}");
                if level == 0 {
                    break;
                }
                i += 1;
            }
            i += 1;
            continue;
        }
        match tok(i) {
            "{" => braces += 1,
            "}" => {
                braces -= 1;
                if inline_mods.last() == Some(&braces) {
                    inline_mods.pop();
                }
            }
            "mod" if tok(i + 2) == "{" => inline_mods.push(braces),
            _ => {}
        }
        let mut j = i;
        let to_root = if matches!(tok(i), "crate" | "$crate") && tok(i + 1) == "::" {
            j += 2;
            true
        } else if tok(i) == "super" && (i == 0 || tok(i - 1) != "::") {
            while tok(j) == "super" && tok(j + 1) == "::" {
                j += 2;
            }
            (j - i) / 2 == depth + inline_mods.len()
        } else {
            false
        };
        if to_root && tok(j) == "{" {
            // A group: the first segment of each item at the group's own level.
            let (mut level, mut item_start) = (0, true);
            for (k, (t, line)) in tokens.iter().enumerate().skip(j) {
                match *t {
                    "{" => level += 1,
                    "}" => level -= 1,
                    "," if level == 1 => item_start = true,
                    t if item_start && level == 1 => {
                        found.push((t.to_string(), *line));
                        item_start = false;
                    }
                    _ => {}
                }
                if level == 0 {
                    i = k; // the group's closing brace is consumed below
                    break;
                }
            }
        } else if to_root {
            found.push((tok(j).to_string(), tokens[j.min(tokens.len() - 1)].1));
        }
        i += 1;
    }
    found
}

/// The dependency graph between top-level modules; a module naming itself is no edge.
fn module_graph(root: &Path) -> Graph {
    let modules = modules(root);
    let mut graph = Graph::new();
    for (module, files) in &modules {
        graph.entry(module.clone()).or_default();
        for file in files.iter().filter(|file| !file.ends_with("/tests.rs")) {
            let source = fs::read_to_string(root.join(file)).unwrap();
            let depth = file.matches('/').count() - usize::from(file.ends_with("/mod.rs"));
            for (name, line) in root_names(&source, depth) {
                if name != *module && modules.contains_key(&name) {
                    let edges = graph.get_mut(module).unwrap();
                    edges
                        .entry(name)
                        .or_insert_with(|| format!("{file}:{line}"));
                }
            }
        }
    }
    graph
}

/// The strongly connected components of more than one module, each sorted:
/// A and B are in one when each reaches the other (the graph is small).
fn tangles(graph: &Graph) -> Vec<Vec<String>> {
    let reaches: BTreeMap<&String, BTreeSet<&String>> = (graph.keys())
        .map(|from| {
            let (mut seen, mut todo) = (BTreeSet::new(), vec![from]);
            while let Some(v) = todo.pop() {
                todo.extend(graph[v].keys().filter(|w| seen.insert(*w)));
            }
            (from, seen)
        })
        .collect();
    let mut found: Vec<Vec<String>> = Vec::new();
    for (v, seen) in &reaches {
        let tangle: Vec<String> = seen
            .iter()
            .filter(|w| reaches[*w].contains(v))
            .map(|w| w.to_string())
            .collect();
        if tangle.len() > 1 && !found.contains(&tangle) {
            found.push(tangle);
        }
    }
    found
}

/// Each tangle's simple cycles as paths (at most 20 each), then its edges
/// with the first use of each: what to cut. Empty when there is no cycle.
fn report(graph: &Graph) -> String {
    fn walk(graph: &Graph, set: &BTreeSet<&str>, path: &mut Vec<String>, out: &mut Vec<String>) {
        for next in graph[path.last().unwrap()]
            .keys()
            .filter(|n| set.contains(n.as_str()))
        {
            if *next == path[0] && out.len() < 20 {
                out.push(format!("{} -> {next}", path.join(" -> ")));
            } else if *next > path[0] && !path.contains(next) {
                path.push(next.clone());
                walk(graph, set, path, out);
                path.pop();
            }
        }
    }
    let mut text = String::new();
    for tangle in tangles(graph) {
        let set: BTreeSet<&str> = tangle.iter().map(String::as_str).collect();
        text += &format!("modules in a cycle: {}\n", tangle.join(", "));
        let mut cycles = Vec::new();
        for start in &tangle {
            walk(graph, &set, &mut vec![start.clone()], &mut cycles);
        }
        for cycle in cycles {
            text += &format!("  cycle: {cycle}\n");
        }
        for from in &tangle {
            for (to, at) in graph[from]
                .iter()
                .filter(|(to, _)| set.contains(to.as_str()))
            {
                text += &format!("  edge: {from} -> {to}  (first at {at})\n");
            }
        }
    }
    text
}

#[test]
fn no_cycle_between_top_level_modules() {
    let graph = module_graph(Path::new(env!("CARGO_MANIFEST_DIR")));
    for (from, edges) in &graph {
        edges
            .iter()
            .for_each(|(to, at)| println!("{from} -> {to}  ({at})"));
    }
    let report = report(&graph);
    assert!(
        report.is_empty(),
        "the top-level modules depend on each other in a cycle:\n{report}"
    );
}

#[test]
fn the_detector_finds_edges_and_cycles() {
    let source = "use crate::{alpha::{A, B}, beta};\n\
        // crate::gamma\n\
        fn f() { crate::delta::x(\"crate::eps\"); let _ = '\"'; super::zeta::g(); }\n\
        mod inner { use super::*; use super::super::eta; /* crate::theta */ }\n\
        #[cfg(test)] mod tests { use crate::kappa; fn t() { crate::lambda::x(); } }\n\
        const R: &str = r#\"crate::iota\"#;\n";
    let names: Vec<_> = root_names(source, 1)
        .into_iter()
        .map(|(n, l)| format!("{n}:{l}"))
        .collect();
    assert_eq!(names, ["alpha:1", "beta:1", "delta:3", "zeta:3", "eta:4"]);

    // Edges written "a>b b>c", each first seen at line 1 of its file.
    let graph = |edges: &str| {
        let mut g = Graph::new();
        for (from, to) in edges.split(' ').filter_map(|e| e.split_once('>')) {
            g.entry(to.to_string()).or_default();
            let at = format!("src/{from}.rs:1");
            g.entry(from.to_string()).or_default().insert(to.into(), at);
        }
        g
    };
    let acyclic = graph("a>b a>c b>d c>d");
    assert!(tangles(&acyclic).is_empty() && report(&acyclic).is_empty());
    let cyclic = graph("a>b b>c c>a c>d d>b x>a");
    assert_eq!(tangles(&cyclic), [["a", "b", "c", "d"]]);
    let report = report(&cyclic);
    assert!(report.contains("cycle: a -> b -> c -> a\n"), "{report}");
    assert!(report.contains("cycle: b -> c -> d -> b\n"), "{report}");
    assert!(
        report.contains("edge: c -> a  (first at src/c.rs:1)"),
        "{report}"
    );
    assert!(!report.contains("x -> a"), "{report}");

    // The real tree is read: every module lib.rs declares (`pub mod x;`, or a
    // line `x,` of its `internal_modules!` list) is a module of the graph.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib = fs::read_to_string(root.join("src/lib.rs")).unwrap();
    let mut declared: Vec<_> = lib
        .lines()
        .filter_map(|l| {
            let listed = l.strip_prefix("    ").and_then(|l| l.strip_suffix(','));
            listed
                .filter(|name| name.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
                .or_else(|| l.strip_prefix("pub mod ")?.strip_suffix(';'))
        })
        .collect();
    declared.sort();
    assert_eq!(module_graph(root).keys().collect::<Vec<_>>(), declared);
}
