//! The layer rule of ARCHITECTURE.md, checked on the source: a module of
//! `src/` imports only from layers below its own (or from itself). A
//! violation names the file, the line and the rule broken.

use std::fs;
use std::path::{Path, PathBuf};

/// The layers, bottom first: each top-level module of the crate and its rank.
/// Keep in step with the table in ARCHITECTURE.md.
const LAYERS: &[(&str, &[&str])] = &[
    ("lock", &["lock", "read", "write", "now_ms"]),
    ("kept", &["kept"]),
    ("config", &["config"]),
    ("net", &["net"]),
    ("http", &["http"]),
    ("observe", &["observe"]),
    ("route", &["route"]),
    ("upstream", &["upstream"]),
    ("policy", &["policy"]),
    ("l4", &["l4"]),
    ("proxy", &["proxy"]),
    ("compile", &["compile"]),
    ("server", &["server"]),
    ("admin", &["admin"]),
    ("gateway", &["gateway"]),
    ("demo", &["demo"]),
];

/// Imports allowed against the rule, each with the reason ARCHITECTURE.md
/// gives: (file, imported top-level module).
const EXEMPT: &[(&str, &str)] = &[];

/// The rank of a top-level module, by its name.
fn rank(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .position(|(_, members)| members.contains(&module))
}

/// The layer's name at `rank`.
fn layer_name(rank: usize) -> &'static str {
    LAYERS[rank].0
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of `src/` belongs to (`None` for the crate
/// root and the binary).
fn module_of(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    match name {
        "lib" | "main" => None,
        other => Some(other.to_string()),
    }
}

/// Whether `file` is compiled only for tests: its parent declares it
/// right under `#[cfg(test)]`.
fn test_only(file: &Path) -> bool {
    let stem = file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    let dir = file.parent().unwrap();
    let parent = ["mod.rs", "lib.rs"]
        .iter()
        .map(|n| dir.join(n))
        .chain(std::iter::once(dir.with_extension("rs")))
        .find(|p| p.exists() && p != file);
    let Some(parent) = parent else {
        return false;
    };
    let text = fs::read_to_string(parent).unwrap();
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    lines.windows(2).any(|w| {
        w[0] == "#[cfg(test)]"
            && (w[1] == format!("mod {stem};") || w[1] == format!("pub mod {stem};"))
    })
}

/// The code of `text` that ships: up to its `#[cfg(test)] mod tests`
/// block (always the last item), line numbers kept.
fn shipped(text: &str) -> Vec<(usize, &str)> {
    let lines: Vec<&str> = text.lines().collect();
    let end = lines
        .windows(2)
        .position(|w| w[0].trim() == "#[cfg(test)]" && w[1].trim_start().starts_with("mod tests"))
        .unwrap_or(lines.len());
    lines[..end]
        .iter()
        .enumerate()
        .map(|(i, l)| (i + 1, *l))
        .filter(|(_, l)| !l.trim_start().starts_with("//"))
        .collect()
}

/// The top-level modules a line names through `crate::` paths, including
/// grouped imports (`use crate::{a::X, b};`).
fn named_modules(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("crate::") {
        // `portcullis_crate::` and the like are not crate paths.
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item = String::new();
            let mut items = Vec::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => items.push(std::mem::take(&mut item)),
                    _ => item.push(c),
                }
            }
            items.push(item);
            for item in items {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.push(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            out.push(name);
        }
    }
    out
}

#[test]
fn every_module_imports_only_from_layers_below_its_own() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    let mut broken = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let Some(own) = module_of(rel) else {
            continue;
        };
        let own_rank = rank(&own).unwrap_or_else(|| {
            panic!(
                "src/{}: module `{own}` has no layer; add it to LAYERS and ARCHITECTURE.md",
                rel.display()
            )
        });
        if test_only(file) {
            continue;
        }
        let text = fs::read_to_string(file).unwrap();
        for (line_no, line) in shipped(&text) {
            for target in named_modules(line) {
                if target == own {
                    continue;
                }
                let Some(target_rank) = rank(&target) else {
                    broken.push(format!(
                        "src/{}:{line_no}: `crate::{target}` is in no layer; add it to LAYERS and ARCHITECTURE.md",
                        rel.display()
                    ));
                    continue;
                };
                let exempt = EXEMPT
                    .iter()
                    .any(|(f, m)| rel.to_str() == Some(*f) && *m == target);
                if target_rank >= own_rank && !exempt {
                    broken.push(format!(
                        "src/{}:{line_no}: `{own}` ({} layer) imports `{target}` ({} layer), \
                         which is not below it: a module uses only layers below its own",
                        rel.display(),
                        layer_name(own_rank),
                        layer_name(target_rank),
                    ));
                }
            }
        }
    }
    assert!(
        broken.is_empty(),
        "{} imports break the layer rule (ARCHITECTURE.md):\n{}",
        broken.len(),
        broken.join("\n")
    );
}

#[test]
fn grouped_and_plain_crate_paths_are_both_seen() {
    assert_eq!(
        named_modules("use crate::{http::body::Body, proxy::{a, b}};"),
        ["http", "proxy"]
    );
    assert_eq!(
        named_modules("let x = crate::lock(&m); y(crate::net::tls::f());"),
        ["lock", "net"]
    );
    assert!(named_modules("use my_crate::thing;").is_empty());
}
