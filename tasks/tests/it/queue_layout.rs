//! The queue engine's layout rules (issue 18.1), checked on its source so they cannot
//! drift: the files of `tasks/src/queue/` import each other without a cycle, the graph
//! drawn in `queue/mod.rs`'s module doc is the real one, no file imports `mod.rs` (it
//! only declares and re-exports), and `queue/apalis.rs` is the only file under
//! `tasks/src` that imports apalis, apalis_core or tower.
//!
//! The check reads every `super::…` and `crate::queue::…` path (in `use` trees and
//! inline, outside comments and unit-test modules), expands its braces, and maps it to
//! the file it names.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Sep,
    Open,
    Close,
    Comma,
    Other,
}

/// The source without comments (line comments, doc comments included) and without its
/// unit tests (a `#[cfg(test)]` module, last in the file by convention, whose `super` is
/// the file itself and which is not part of the engine).
fn code(src: &str) -> String {
    let src = src.split("#[cfg(test)]").next().unwrap_or_default();
    src.lines()
        .map(|l| l.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

fn tokens(s: &str) -> Vec<Tok> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c.is_alphanumeric() || c == '_' {
            let mut ident = String::new();
            while let Some(&c) = chars.peek() {
                if !(c.is_alphanumeric() || c == '_') {
                    break;
                }
                ident.push(c);
                chars.next();
            }
            out.push(Tok::Ident(ident));
        } else {
            chars.next();
            out.push(match c {
                ':' if chars.peek() == Some(&':') => {
                    chars.next();
                    Tok::Sep
                }
                '{' => Tok::Open,
                '}' => Tok::Close,
                ',' => Tok::Comma,
                _ => Tok::Other,
            });
            // A path ends at the first token it cannot hold: no need to read further.
            if out.last() == Some(&Tok::Other) {
                break;
            }
        }
    }
    out
}

/// Expands the use tree at `toks[*i]` under `prefix` into full paths.
fn expand(toks: &[Tok], i: &mut usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    match toks.get(*i) {
        Some(Tok::Open) => {
            *i += 1;
            loop {
                if toks.get(*i) == Some(&Tok::Close) {
                    *i += 1;
                    return;
                }
                expand(toks, i, prefix.clone(), out);
                match toks.get(*i) {
                    Some(Tok::Comma) => *i += 1,
                    Some(Tok::Close) => {
                        *i += 1;
                        return;
                    }
                    _ => return,
                }
            }
        }
        Some(Tok::Ident(name)) => {
            let mut path = prefix;
            if name != "self" {
                path.push(name.clone());
            }
            *i += 1;
            if toks.get(*i) == Some(&Tok::Sep) {
                *i += 1;
                expand(toks, i, path, out);
            } else {
                if toks.get(*i) == Some(&Tok::Ident("as".into())) {
                    *i += 2;
                }
                out.push(path);
            }
        }
        _ => out.push(prefix),
    }
}

/// Every path `src` names after `marker` (e.g. `super::`), relative to what the marker
/// stands for.
fn paths_after(src: &str, marker: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for (at, _) in src.match_indices(marker) {
        // `super::super::…` and `crate::queue::` inside a longer path are not ours.
        if src[..at].ends_with("::") {
            continue;
        }
        let toks = tokens(&src[at + marker.len()..]);
        expand(&toks, &mut 0, Vec::new(), &mut out);
    }
    out
}

fn queue_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/queue")
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// A file's node name: its module path inside the queue (`sql`, `maintenance`,
/// `maintenance::periodic`); `""` is `mod.rs`.
fn node(file: &Path) -> String {
    let rel = file.strip_prefix(queue_dir()).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts.join("::")
}

/// File → the files it imports.
fn import_graph() -> BTreeMap<String, BTreeSet<String>> {
    let files = rust_files(&queue_dir());
    let nodes: BTreeSet<String> = files.iter().map(|f| node(f)).collect();
    let mut graph = BTreeMap::new();
    for file in &files {
        let me = node(file);
        if me.is_empty() {
            continue; // mod.rs: declarations and re-exports only
        }
        let src = code(&fs::read_to_string(file).unwrap());
        // `super::` is relative to the file's parent module.
        let mut parent: Vec<String> = me.split("::").map(str::to_owned).collect();
        parent.pop();
        let is_mod_rs = file.file_name().is_some_and(|n| n == "mod.rs");
        if is_mod_rs {
            // A folder's mod.rs: `super::` is the folder's parent.
            parent = me.split("::").map(str::to_owned).collect();
            parent.pop();
        }
        let mut named: Vec<Vec<String>> = paths_after(&src, "crate::queue::");
        for path in paths_after(&src, "super::") {
            named.push(parent.iter().cloned().chain(path).collect());
        }
        let mut imports = BTreeSet::new();
        for path in named {
            // The longest prefix of the path that is a file.
            let target = (1..=path.len())
                .rev()
                .map(|n| path[..n].join("::"))
                .find(|candidate| nodes.contains(candidate))
                .unwrap_or_default();
            assert!(
                !target.is_empty(),
                "{me} imports {} from queue/mod.rs: import it from the file that defines it",
                path.join("::")
            );
            // A folder's own files (maintenance → maintenance::periodic) are declared by
            // it, not imported.
            if target != me && !target.starts_with(&format!("{me}::")) {
                imports.insert(target);
            }
        }
        graph.insert(me, imports);
    }
    graph
}

/// Each file's level: 0 for a file that imports no other, else one more than the
/// highest level it imports; or, when there is none, the files on or above a cycle.
fn levels(
    graph: &BTreeMap<String, BTreeSet<String>>,
) -> Result<BTreeMap<String, usize>, Vec<String>> {
    let mut levels: BTreeMap<String, usize> = BTreeMap::new();
    while levels.len() < graph.len() {
        let ready: Vec<(String, usize)> = graph
            .iter()
            .filter(|(f, deps)| {
                !levels.contains_key(*f) && deps.iter().all(|d| levels.contains_key(d))
            })
            .map(|(f, deps)| {
                let level = deps.iter().map(|d| levels[d] + 1).max().unwrap_or(0);
                (f.clone(), level)
            })
            .collect();
        if ready.is_empty() {
            return Err(graph
                .keys()
                .filter(|f| !levels.contains_key(*f))
                .cloned()
                .collect());
        }
        levels.extend(ready);
    }
    Ok(levels)
}

/// The graph as `queue/mod.rs` draws it: one line per file, floor first.
fn drawing(graph: &BTreeMap<String, BTreeSet<String>>, levels: &BTreeMap<String, usize>) -> String {
    let mut order: Vec<&String> = graph.keys().collect();
    order.sort_by_key(|f| (levels[*f], *f));
    let width = order.iter().map(|f| f.len()).max().unwrap_or(0);
    order
        .iter()
        .map(|f| {
            let deps = &graph[*f];
            let deps = if deps.is_empty() {
                "(nothing)".to_owned()
            } else {
                deps.iter().cloned().collect::<Vec<_>>().join(", ")
            };
            format!("//! {}  {f:<width$}  imports {deps}", levels[*f])
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_queue_files_import_each_other_without_a_cycle_as_mod_rs_draws_them() {
    let graph = import_graph();
    // The parser sees what is there (guards against it silently seeing nothing).
    assert!(graph["worker"].contains("apalis"), "{graph:?}");
    assert!(
        graph["maintenance::periodic"].contains("client"),
        "{graph:?}"
    );
    let levels = levels(&graph).unwrap_or_else(|cycle| {
        panic!("import cycle: these files are on or above one: {cycle:?}\n{graph:#?}");
    });
    let drawn = drawing(&graph, &levels);
    let doc = fs::read_to_string(queue_dir().join("mod.rs")).unwrap();
    assert!(
        doc.contains(&drawn),
        "queue/mod.rs's import graph is out of date; it should read:\n\n{drawn}\n"
    );
}

#[test]
fn only_the_apalis_adapter_imports_apalis_or_tower() {
    let src_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut importers = BTreeSet::new();
    for file in rust_files(&src_dir) {
        let src = code(&fs::read_to_string(&file).unwrap());
        let mut paths = paths_after(&src, "use ");
        // Inline paths: `apalis_core` and `tower` name nothing of ours, so any use of
        // them is the crate.
        for krate in ["apalis_core::", "tower::"] {
            paths.extend(paths_after(&src, krate).into_iter().map(|mut p| {
                p.insert(0, krate.trim_end_matches(':').to_owned());
                p
            }));
        }
        if paths.iter().any(|p| {
            p.first()
                .is_some_and(|k| ["apalis", "apalis_core", "tower"].contains(&k.as_str()))
        }) {
            importers.insert(file.strip_prefix(&src_dir).unwrap().display().to_string());
        }
    }
    assert_eq!(
        importers,
        BTreeSet::from(["queue/apalis.rs".to_owned()]),
        "apalis stays at one edge"
    );
}
