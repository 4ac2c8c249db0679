//! The module table of docs/design.md, held to the code: every `crate::`, `maxbatch::` and
//! `super::` path in src/ (test modules aside) names a module the table puts in the same row
//! or below the using file's row. A module that uses one above it, an import circle between
//! rows, or a file the table does not place fails here, so the table cannot drift again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The tables' rows, top to bottom: each row's paths (`finder/`, `memory/counting.rs`).
fn rows() -> Vec<Vec<String>> {
    let design = std::fs::read_to_string(root().join("docs/design.md")).unwrap();
    let section = design
        .split("## Modules and what each may touch")
        .nth(1)
        .expect("docs/design.md has the module table");
    // Every table row of the section (the binary's table, then the library's), in order.
    section
        .lines()
        .take_while(|l| !l.starts_with("## "))
        .filter(|l| l.starts_with("| `"))
        .map(|line| {
            let first = line.split('|').nth(1).unwrap_or_default();
            first
                .split('`')
                .skip(1)
                .step_by(2)
                .filter(|p| p.ends_with(".rs") || p.ends_with('/'))
                .map(str::to_string)
                .collect()
        })
        .collect()
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The row of the file at `path` (relative to src/): an exact file, else the longest folder.
fn row_of(rows: &[Vec<String>], path: &str) -> Option<usize> {
    let mut best: Option<(usize, usize)> = None;
    for (i, row) in rows.iter().enumerate() {
        for entry in row {
            let matches = if entry.ends_with('/') {
                path.starts_with(entry.as_str())
            } else {
                path == entry
            };
            let specificity = if entry.ends_with('/') {
                entry.len()
            } else {
                usize::MAX
            };
            if matches && best.is_none_or(|(_, s)| specificity > s) {
                best = Some((i, specificity));
            }
        }
    }
    best.map(|(i, _)| i)
}

/// Every .rs file under src/, relative to it.
fn sources() -> Vec<String> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, base, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(
                    path.strip_prefix(base)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    let mut out = Vec::new();
    walk(&root().join("src"), &root().join("src"), &mut out);
    out.sort();
    out
}

/// The binary's top modules (declared in main.rs); every other module is the library's.
fn binary_modules() -> Vec<String> {
    let main = std::fs::read_to_string(root().join("src/main.rs")).unwrap();
    main.lines()
        .filter_map(|l| l.trim().strip_prefix("mod "))
        .map(|m| m.trim_end_matches(';').to_string())
        .collect()
}

/// The module path of a file: `memory/cpu.rs` is [memory, cpu], `models/mod.rs` [models].
fn module_of(path: &str) -> Vec<String> {
    let mut parts: Vec<String> = path
        .trim_end_matches(".rs")
        .split('/')
        .map(str::to_string)
        .collect();
    if parts
        .last()
        .is_some_and(|p| p == "mod" || p == "lib" || p == "main")
    {
        parts.pop();
    }
    parts
}

/// A file's text without comments, strings and its test module.
fn code(path: &str) -> String {
    let text = std::fs::read_to_string(root().join("src").join(path)).unwrap();
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    text.lines()
        .map(|l| match l.find("//") {
            Some(at) => &l[..at],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path after `crate::`, `maxbatch::` or `super::` in `code`, as (anchor, segments),
/// with `use x::{a, b::c}` groups expanded.
fn paths(code: &str) -> Vec<(String, Vec<String>)> {
    let mut found = Vec::new();
    for anchor in ["crate::", "maxbatch::", "super::"] {
        let mut rest = code;
        while let Some(at) = rest.find(anchor) {
            let before = rest[..at].chars().last();
            rest = &rest[at + anchor.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue; // `super::super::` is taken whole below; `a::crate::` is not a path
            }
            let mut supers = 0;
            while let Some(more) = rest.strip_prefix("super::") {
                supers += 1;
                rest = more;
            }
            let anchor = format!("{anchor}{}", "super::".repeat(supers));
            for segments in expand(rest) {
                found.push((anchor.clone(), segments));
            }
        }
    }
    found
}

/// The paths that start `text`: one (`a::b::C`) or a group's (`{a, b::{c, d}}`).
fn expand(text: &str) -> Vec<Vec<String>> {
    let ident = |t: &str| -> usize {
        t.find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(t.len())
    };
    let mut prefix = Vec::new();
    let mut rest = text;
    loop {
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let end = group
                .char_indices()
                .find(|&(_, c)| {
                    depth += match c {
                        '{' => 1,
                        '}' => -1,
                        _ => 0,
                    };
                    depth == 0
                })
                .map_or(group.len(), |(i, _)| i);
            let mut items = Vec::new();
            let (mut level, mut start) = (0, 0);
            let inner = &group[..end];
            for (i, c) in inner.char_indices() {
                match c {
                    '{' => level += 1,
                    '}' => level -= 1,
                    ',' if level == 0 => {
                        items.push(&inner[start..i]);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            items.push(&inner[start..]);
            return items
                .into_iter()
                .flat_map(|item| expand(item.trim()))
                .map(|tail| prefix.iter().cloned().chain(tail).collect())
                .collect();
        }
        let n = ident(rest);
        if n == 0 {
            return vec![prefix];
        }
        prefix.push(rest[..n].to_string());
        match rest[n..].strip_prefix("::") {
            Some(more) => rest = more,
            None => return vec![prefix],
        }
    }
}

/// The file a module path lands in: the longest prefix of `segments` that is a file or a
/// folder's mod.rs (an item's path ends in its module), through `reexports` at a root.
fn file_of(
    segments: &[String],
    files: &[String],
    reexports: &HashMap<String, Vec<String>>,
) -> Option<String> {
    let segments: Vec<String> = match segments.first().and_then(|s| reexports.get(s)) {
        Some(module) => module.iter().chain(&segments[1..]).cloned().collect(),
        None => segments.to_vec(),
    };
    (1..=segments.len()).rev().find_map(|n| {
        let stem = segments[..n].join("/");
        [format!("{stem}.rs"), format!("{stem}/mod.rs")]
            .into_iter()
            .find(|candidate| files.contains(candidate))
    })
}

/// A root's `pub use module::Name` lines: each name's module.
fn reexports(root_file: &str) -> HashMap<String, Vec<String>> {
    let text = code(root_file);
    let mut map = HashMap::new();
    for line in text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub use "))
    {
        for segments in expand(line.trim_end_matches(';')) {
            if let Some((name, module)) = segments.split_last() {
                map.insert(name.clone(), module.to_vec());
            }
        }
    }
    map
}

#[test]
fn no_module_uses_one_the_design_notes_put_above_it() {
    let rows = rows();
    assert!(rows.len() > 10, "the table was not read: {rows:?}");
    let files = sources();
    let binary = binary_modules();
    let is_binary =
        |module: &[String]| module.is_empty() || module.first().is_some_and(|m| binary.contains(m));
    // The binary's files, as paths from src/, and the library's.
    let lib_reexports = reexports("lib.rs");
    let mut unplaced = Vec::new();
    let mut violations = Vec::new();
    for file in files.iter().filter(|f| !f.ends_with("tests.rs")) {
        let Some(own) = row_of(&rows, file) else {
            unplaced.push(file.clone());
            continue;
        };
        let module = module_of(file);
        let in_binary = file == "main.rs" || (file != "lib.rs" && is_binary(&module));
        for (anchor, segments) in paths(&code(file)) {
            let target: Vec<String> = if anchor == "crate::" {
                segments.clone()
            } else if anchor == "maxbatch::" {
                if !in_binary {
                    continue; // the library's own doc examples
                }
                segments.iter().map(|s| format!("<lib>{s}")).collect()
            } else {
                // super:: (one or more): up from the file's own module.
                // A file's module path leaves out `mod`, so one `super::` from either
                // `memory/cpu.rs` or `memory/stop/mod.rs` is the folder above.
                let ups = anchor.matches("super::").count();
                let keep = module.len().saturating_sub(ups);
                module[..keep].iter().cloned().chain(segments).collect()
            };
            let (lookup, reexports_here) = match target.first() {
                Some(first) if first.starts_with("<lib>") => (
                    target
                        .iter()
                        .map(|s| s.trim_start_matches("<lib>").to_string())
                        .collect::<Vec<_>>(),
                    &lib_reexports,
                ),
                _ if in_binary => (target.clone(), &HashMap::new()),
                _ => (target.clone(), &lib_reexports),
            };
            let Some(used) = file_of(&lookup, &files, reexports_here) else {
                continue; // an external crate's path, or a root item
            };
            let used_in_binary = used == "main.rs" || is_binary(&module_of(&used));
            if in_binary != used_in_binary && !in_binary {
                violations.push(format!("{file} (library) uses the binary's {used}"));
                continue;
            }
            // The library's files are all below the binary's.
            if in_binary && !used_in_binary {
                continue;
            }
            let Some(row) = row_of(&rows, &used) else {
                unplaced.push(used.clone());
                continue;
            };
            if row < own {
                violations.push(format!(
                    "{file} (row {}) uses {used} (row {}), above it",
                    own + 1,
                    row + 1
                ));
            }
        }
    }
    unplaced.sort();
    unplaced.dedup();
    assert!(
        unplaced.is_empty(),
        "files docs/design.md's table does not place: {unplaced:?}"
    );
    assert!(
        violations.is_empty(),
        "modules that use one above them:\n{}",
        violations.join("\n")
    );
}

#[test]
fn paths_are_read_with_their_groups() {
    assert_eq!(
        expand("memory::{cpu::{A, B}, Capacity};"),
        [
            vec!["memory", "cpu", "A"],
            vec!["memory", "cpu", "B"],
            vec!["memory", "Capacity"]
        ]
    );
    let found = paths("use super::super::counting::CURRENT;");
    assert_eq!(
        found,
        [(
            "super::super::".to_string(),
            vec!["counting".to_string(), "CURRENT".to_string()]
        )]
    );
}
