//! The folders are the architecture: within each crate, the top-level modules (a folder
//! under `src/`, or a file beside `lib.rs`) import each other without a circle, and the
//! language-model side of llama-train never reaches into classification.
//!
//! An import is any `crate::NAME` path in the code outside comments and test modules (a
//! test may use a helper from a higher layer).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("tests.rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`None` for the crate root).
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).expect("under src");
    let first = relative
        .components()
        .next()?
        .as_os_str()
        .to_str()?
        .to_owned();
    match first.strip_suffix(".rs") {
        Some("lib" | "main") => None,
        Some(stem) => Some(stem.to_owned()),
        None => Some(first),
    }
}

/// The top-level modules named by `crate::…` paths in `text`, skipping comments and the
/// inline `#[cfg(test)] mod tests { … }` block at the end of a file.
fn imports(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let code = line.trim_start();
        let test_module = lines.peek().is_some_and(|next| {
            next.trim_start()
                .trim_start_matches("pub(crate) ")
                .starts_with("mod tests {")
        });
        if code.starts_with("#[cfg(test)]") && test_module {
            break;
        }
        if code.starts_with("//") {
            continue;
        }
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let preceded_by_ident = rest[..at]
                .chars()
                .last()
                .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$');
            let after = &rest[at + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            if !preceded_by_ident && !name.is_empty() {
                found.insert(name);
            }
            rest = after;
        }
    }
    found
}

/// The import graph between the top-level modules of the crate in `crate_dir`.
fn graph(crate_dir: &str) -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(crate_dir)
        .join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 5, "{}: too few files", src.display());
    let tops: BTreeSet<String> = files.iter().filter_map(|f| top_module(&src, f)).collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let Some(from) = top_module(&src, file) else {
            continue;
        };
        let text = std::fs::read_to_string(file).expect("source file");
        let targets = edges.entry(from.clone()).or_default();
        for to in imports(&text) {
            if to != from && tops.contains(&to) {
                targets.insert(to);
            }
        }
    }
    edges
}

/// A circle in `edges`, as the list of its modules, if there is one.
fn circle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut found = path[at..].to_vec();
            found.push(node.to_owned());
            return Some(found);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(found) = visit(next, edges, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|node| visit(node, edges, &mut Vec::new(), &mut done))
}

#[test]
fn no_import_circle_between_the_top_level_modules_of_a_crate() {
    for crate_dir in ["llama-model", "llama-train", "llama-cli"] {
        let edges = graph(crate_dir);
        if let Some(found) = circle(&edges) {
            panic!("{crate_dir}: import circle {}", found.join(" -> "));
        }
    }
}

#[test]
fn language_model_training_does_not_import_classification() {
    let edges = graph("llama-train");
    let lm = edges.get("lm").expect("llama-train has lm/");
    assert!(!lm.contains("classify"), "lm/ imports classify/: {lm:?}");
    assert!(
        edges.get("classify").is_some_and(|c| c.contains("run")),
        "the graph sees classify/ -> run/"
    );
}

#[test]
fn the_circle_finder_finds_circles() {
    let edge = |a: &str, b: &str| (a.to_owned(), BTreeSet::from([b.to_owned()]));
    let with = BTreeMap::from([edge("a", "b"), edge("b", "c"), edge("c", "a")]);
    assert_eq!(
        circle(&with).map(|c| c.join(" -> ")),
        Some("a -> b -> c -> a".to_owned())
    );
    let without = BTreeMap::from([edge("a", "b"), edge("b", "c")]);
    assert_eq!(circle(&without), None);
    assert_eq!(
        imports("use crate::a::X;\n// crate::b\nlet y = crate::c::f();\n#[cfg(test)]\nmod tests {\nuse crate::d;"),
        BTreeSet::from(["a".to_owned(), "c".to_owned()])
    );
}
