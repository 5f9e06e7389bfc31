//! The host's layers, bottom up, checked: a module may import (`crate::…`)
//! only from layers below its own, and no two files of one module folder may
//! import each other, directly or around a loop. The picture and the reasons
//! are in docs/architecture.md. To print the graph:
//! `cargo test -p sluice --lib layers -- --nocapture` (or
//! `scripts/module-graph.sh`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Bottom up. Modules in one layer do not import each other.
const LAYERS: &[&[&str]] = &[
    &["model", "retry"],
    &["config"],
    &["audit", "encryption"],
    &["ledger", "runtime", "sink", "source"],
    &["router"],
    &["canary", "schema"],
    &["pipeline"],
    &["dlq"],
    &["scheduler"],
    &["api"],
    &["lib"],
];

/// Every `.rs` file of the library, by path relative to `src/`.
fn library_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    let mut relative: Vec<PathBuf> = files
        .into_iter()
        .map(|p| p.strip_prefix(&src).unwrap().to_path_buf())
        // The binary (`main.rs`, `cli/`) sits on top of the library.
        .filter(|p| !p.starts_with("cli") && p != Path::new("main.rs"))
        .filter(|p| p != Path::new("layers.rs"))
        .collect();
    relative.sort();
    relative
}

/// The top-level module a file belongs to: `pipeline/writer.rs` -> `pipeline`.
fn module_of(file: &Path) -> String {
    let first = file
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// The code of a file without its comment lines.
fn code(file: &Path) -> String {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(file);
    std::fs::read_to_string(src)
        .unwrap()
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first segment of every path after `prefix` (`crate::`, `super::`),
/// including each item of a `prefix{a::x, b}` group.
fn paths_after(code: &str, prefix: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    for (at, _) in code.match_indices(prefix) {
        // `super::super::` and friends are not used here; `self::` neither.
        let before = code[..at].chars().last();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let rest = &code[at + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let (mut depth, mut item_start, mut items) = (1, 0, Vec::new());
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 1 => {
                        items.push(&group[item_start..i]);
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 1 => {
                        items.push(&group[item_start..i]);
                        item_start = i + 1;
                    }
                    _ => {}
                }
            }
            found.extend(items.iter().map(|i| ident(i.trim())));
        } else {
            found.insert(ident(rest));
        }
    }
    found.retain(|s| !s.is_empty());
    found
}

/// Module -> the modules it imports.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let modules: BTreeSet<String> = library_files().iter().map(|f| module_of(f)).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in library_files() {
        let from = module_of(&file);
        let imports = graph.entry(from.clone()).or_default();
        let code = code(&file);
        let mut names = paths_after(&code, "crate::");
        if file == Path::new("lib.rs") {
            // The root names its modules without `crate::`.
            names.extend(
                paths_after(&code, "use ")
                    .into_iter()
                    .filter(|n| modules.contains(n)),
            );
        }
        for name in names {
            // `crate::Host` and the like are items of lib.rs.
            let to = if modules.contains(&name) {
                name
            } else {
                "lib".into()
            };
            if to != from {
                imports.insert(to);
            }
        }
    }
    graph
}

/// Within each module folder: file stem -> sibling files it imports.
fn file_graphs() -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let mut by_module: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for file in library_files()
        .into_iter()
        .filter(|f| f.components().count() > 1)
    {
        by_module.entry(module_of(&file)).or_default().push(file);
    }
    let mut graphs = BTreeMap::new();
    for (module, files) in by_module {
        let stem = |f: &Path| f.file_stem().unwrap().to_string_lossy().into_owned();
        let siblings: BTreeSet<String> = files.iter().map(|f| stem(f)).collect();
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for file in files.iter().filter(|f| stem(f) != "mod") {
            let code = code(file);
            let mut used = paths_after(&code, "super::");
            used.extend(paths_after(&code, &format!("crate::{module}::")));
            used.retain(|u| siblings.contains(u) && *u != stem(file) && u != "mod");
            graph.insert(stem(file), used);
        }
        graphs.insert(module, graph);
    }
    graphs
}

/// The loops of a graph, each once (as found by a depth-first search).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        found: &mut Vec<Vec<String>>,
    ) {
        if let Some(i) = path.iter().position(|n| n == node) {
            found.push(path[i..].to_vec());
            return;
        }
        if done.contains(node) {
            return;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            visit(next, graph, path, done, found);
        }
        path.pop();
        done.insert(node.to_string());
    }
    let (mut done, mut found) = (BTreeSet::new(), Vec::new());
    for node in graph.keys() {
        visit(node, graph, &mut Vec::new(), &mut done, &mut found);
    }
    found
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

#[test]
fn layers_point_one_way_and_no_module_imports_another_in_a_loop() {
    let graph = module_graph();
    println!("module graph (module -> what it imports), bottom layer first:");
    for (i, layer) in LAYERS.iter().enumerate() {
        for module in *layer {
            let imports: Vec<&str> = graph
                .get(*module)
                .into_iter()
                .flatten()
                .map(String::as_str)
                .collect();
            println!("  {i} {module:<10} -> {}", imports.join(", "));
        }
    }
    let mut problems = Vec::new();
    for module in graph.keys() {
        if layer_of(module).is_none() {
            problems.push(format!(
                "module '{module}' is in no layer: add it to LAYERS"
            ));
        }
    }
    for (from, imports) in &graph {
        for to in imports {
            if let (Some(a), Some(b)) = (layer_of(from), layer_of(to))
                && a <= b
            {
                problems.push(format!(
                    "'{from}' (layer {a}) imports '{to}' (layer {b}): imports must point to a lower layer"
                ));
            }
        }
    }
    for cycle in cycles(&graph) {
        problems.push(format!("import loop: {}", cycle.join(" -> ")));
    }
    for (module, files) in file_graphs() {
        for cycle in cycles(&files) {
            problems.push(format!(
                "files of {module}/ import each other: {}",
                cycle.join(" -> ")
            ));
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn the_checker_sees_groups_nested_paths_and_loops() {
    let code = "use crate::{config::{A, B}, model::Row};\nlet x = crate::sink::connect();";
    let found = paths_after(code, "crate::");
    assert_eq!(found, ["config", "model", "sink"].map(String::from).into());
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a".to_string(), ["b".to_string()].into()),
        ("b".to_string(), ["a".to_string()].into()),
    ]
    .into();
    assert_eq!(cycles(&graph), vec![vec!["a".to_string(), "b".to_string()]]);
}
