//! Every crate berth builds with (the whole dependency graph of the
//! workspace, from `cargo metadata`) is under a licence that lets an
//! Apache-2.0 project ship it: GPL, AGPL, LGPL-only and unknown licences
//! fail the suite, naming the crate. The SPDX expression of each is
//! evaluated (`A OR B` needs one allowed, `A AND B` both, `A WITH
//! exception` as A; the old `A/B` is OR).

use std::process::Command;

/// Licences fit for a permissive (Apache-2.0) product.
const ALLOWED: &[&str] = &[
    "Apache-2.0",
    "MIT",
    "BSD-2-Clause",
    "BSD-3-Clause",
    "ISC",
    "Zlib",
    "Unicode-3.0",
    "Unicode-DFS-2016",
    "CC0-1.0",
    "Unlicense",
    "BSL-1.0",
    "0BSD",
    "MPL-2.0",
];

fn tokens(expr: &str) -> Vec<String> {
    expr.replace('(', " ( ")
        .replace(')', " ) ")
        .replace('/', " OR ")
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// expr := term (OR term)*; term := factor (AND factor)*;
/// factor := ( expr ) | ID [WITH ID]
fn expr(t: &[String], i: &mut usize) -> Option<bool> {
    let mut ok = term(t, i)?;
    while t.get(*i).map(String::as_str) == Some("OR") {
        *i += 1;
        ok |= term(t, i)?;
    }
    Some(ok)
}

fn term(t: &[String], i: &mut usize) -> Option<bool> {
    let mut ok = factor(t, i)?;
    while t.get(*i).map(String::as_str) == Some("AND") {
        *i += 1;
        ok &= factor(t, i)?;
    }
    Some(ok)
}

fn factor(t: &[String], i: &mut usize) -> Option<bool> {
    let tok = t.get(*i)?.clone();
    *i += 1;
    if tok == "(" {
        let ok = expr(t, i)?;
        (t.get(*i).map(String::as_str) == Some(")")).then_some(())?;
        *i += 1;
        return Some(ok);
    }
    if matches!(tok.as_str(), ")" | "OR" | "AND" | "WITH") {
        return None;
    }
    if t.get(*i).map(String::as_str) == Some("WITH") {
        *i += 2;
    }
    Some(ALLOWED.contains(&tok.as_str()))
}

/// Whether `license` (an SPDX expression) lets berth ship the crate;
/// None when it does not parse.
fn allowed(license: &str) -> Option<bool> {
    let t = tokens(license);
    let mut i = 0;
    let ok = expr(&t, &mut i)?;
    (i == t.len()).then_some(ok)
}

#[test]
fn spdx_expressions_are_read_as_cargo_writes_them() {
    assert_eq!(allowed("MIT OR Apache-2.0"), Some(true));
    assert_eq!(allowed("MIT/Apache-2.0"), Some(true));
    assert_eq!(allowed("Apache-2.0 WITH LLVM-exception OR MIT"), Some(true));
    assert_eq!(allowed("(MIT OR Apache-2.0) AND Unicode-3.0"), Some(true));
    assert_eq!(
        allowed("MIT OR Apache-2.0 OR LGPL-2.1-or-later"),
        Some(true)
    );
    assert_eq!(allowed("GPL-3.0-only"), Some(false));
    assert_eq!(allowed("MIT AND GPL-2.0-or-later"), Some(false));
    assert_eq!(allowed("AGPL-3.0"), Some(false));
    assert_eq!(allowed("LGPL-2.1-only"), Some(false));
    assert_eq!(allowed("MIT OR"), None);
    assert_eq!(allowed("(MIT"), None);
}

#[test]
fn every_dependency_has_a_licence_berth_may_ship() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(root)
        .output()
        .expect("running cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let packages = meta["packages"].as_array().expect("packages");
    assert!(packages.len() > 100, "the whole graph: {}", packages.len());
    let mut refused = Vec::new();
    for p in packages {
        let name = format!(
            "{} {}",
            p["name"].as_str().unwrap_or("?"),
            p["version"].as_str().unwrap_or("?")
        );
        match p["license"].as_str() {
            Some(l) if allowed(l) == Some(true) => {}
            Some(l) => refused.push(format!("{name}: {l}")),
            None => refused.push(format!(
                "{name}: no SPDX licence (license_file {:?})",
                p["license_file"]
            )),
        }
    }
    assert!(
        refused.is_empty(),
        "crates under licences berth may not ship: {refused:#?}"
    );
}
