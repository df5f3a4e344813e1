//! The library's imports run one way: each top-level module of `src/` uses only modules below
//! it in [`LAYERS`] (the error type excepted: it names the errors of several modules). The
//! stages run data -> moments -> subspace -> search -> learn; beneath them sit the types and
//! tools every stage shares (the network type is the teacher that labels generated samples, the
//! residual fits and the model alike).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The library's modules, lowest first.
const LAYERS: &[&str] = &[
    "linalg", "output", "safety", "runtime", "progress", "network", "data", "moments", "backend",
    "sphere", "teacher", "subspace", "search", "learn", "predict", "metrics", "export", "bench",
    "plot",
];

/// What any module may name: the error type (it wraps the errors of several modules) and its
/// re-exports at the crate's root.
const EVERYWHERE: &[&str] = &["error", "Error", "Result"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules a file's code (not its comments, nor its `#[cfg(test)]` tail) names
/// through `crate::`.
fn named_modules(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("#[cfg(test)]") {
            break;
        }
        let code = line.split("//").next().unwrap_or("");
        for (at, _) in code.match_indices("crate::") {
            let rest = &code[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.push(name);
            }
        }
    }
    found
}

#[test]
fn imports_run_from_higher_modules_to_lower_ones_only() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let rank = |m: &str| LAYERS.iter().position(|&l| l == m);
    let mut wrong: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut checked = 0;
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = top.trim_end_matches(".rs").to_string();
        if ["lib", "main", "error"].contains(&module.as_str()) {
            continue;
        }
        let own = rank(&module).unwrap_or_else(|| {
            panic!("src/{module}: a top-level module missing from LAYERS; place it there")
        });
        for named in named_modules(&std::fs::read_to_string(file).unwrap()) {
            checked += 1;
            if named == module || EVERYWHERE.contains(&named.as_str()) {
                continue;
            }
            match rank(&named) {
                Some(r) if r < own => {}
                _ => wrong
                    .entry(format!("{}", rel.display()))
                    .or_default()
                    .push(named),
            }
        }
    }
    assert!(
        checked > 100,
        "only {checked} crate:: paths found: is the scan broken?"
    );
    assert!(
        wrong.is_empty(),
        "imports from a module at or above the importer's layer (LAYERS, lowest first): {wrong:?}"
    );
}

#[test]
fn the_scan_sees_code_and_skips_comments_and_tests() {
    let text = "use crate::data::X;\n// crate::learn in a comment\nlet a = crate::moments::f(); \
                // crate::search\n#[cfg(test)]\nuse crate::learn::Y;\n";
    assert_eq!(named_modules(text), ["data", "moments"]);
}
