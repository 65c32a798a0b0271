//! Every key of the gateway's TOML file is documented in `docs/configuration.md`.
//!
//! The keys are read from the source, not from a list kept by hand: every `Raw…` struct of
//! `gateway/src/config/raw.rs` (and `TokenLimitConfig` of `schemas/src/quota.rs` and `BudgetConfig` of `schemas/src/budget.rs`, the token limit and budget tables) is parsed
//! for its fields, honouring `#[serde(rename = "…")]`, and the tables are found by walking the field types from
//! `RawConfig` (`instances: Vec<RawInstance>` → `[[instances]]`, `circuit_breaker: RawBreaker` →
//! `[instances.circuit_breaker]`). For every table there must be a heading in `docs/configuration.md` naming it
//! (`[instances.circuit_breaker]` or `[[instances]]`), and every field of the table must appear as `` `field` ``
//! in the text under that heading (up to the next heading). A field added to a `Raw…` struct without a line in
//! the reference fails this test, and the failure lists every missing key at once.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code: a failed expectation fails the test

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The root of the configuration: its fields are the top-level tables.
const ROOT: &str = "RawConfig";

/// Structs outside `config/raw.rs` that are tables of the file.
const SHARED_TABLES: &[(&str, &str)] = &[
    ("schemas/src/quota.rs", "TokenLimitConfig"),
    ("schemas/src/budget.rs", "BudgetConfig"),
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the gateway crate is in the workspace")
        .to_owned()
}

fn read(path: &str) -> String {
    let path = repo().join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// One field of a struct: its TOML key and its Rust type, as written.
#[derive(Debug, Clone)]
struct Field {
    key: String,
    ty: String,
}

/// The named-field structs of a Rust source whose name `wanted` accepts: name → fields in order.
fn structs(source: &str, wanted: impl Fn(&str) -> bool) -> BTreeMap<String, Vec<Field>> {
    let mut found = BTreeMap::new();
    let mut lines = source.lines().peekable();
    let mut attributes: Vec<String> = Vec::new();
    while let Some(line) = lines.next() {
        let trimmed = line.trim();
        if trimmed.starts_with("#[") {
            attributes.push(trimmed.to_owned());
            continue;
        }
        let Some(rest) = trimmed
            .strip_prefix("pub struct ")
            .or_else(|| trimmed.strip_prefix("struct "))
        else {
            if !trimmed.starts_with("///") {
                attributes.clear();
            }
            continue;
        };
        let struct_attributes = std::mem::take(&mut attributes);
        let Some(name) = rest.strip_suffix(" {").map(str::trim) else {
            continue;
        };
        if !wanted(name) {
            continue;
        }
        for attribute in &struct_attributes {
            assert!(
                !attribute.contains("rename_all") && !attribute.contains("flatten"),
                "{name}: `{attribute}` changes the TOML keys in a way this test does not follow; teach it"
            );
        }
        let mut fields = Vec::new();
        let mut field_attributes: Vec<String> = Vec::new();
        for line in lines.by_ref() {
            let trimmed = line.trim();
            if trimmed == "}" {
                break;
            }
            if trimmed.starts_with("///") || trimmed.starts_with("//") || trimmed.is_empty() {
                continue;
            }
            if trimmed.starts_with("#[") {
                field_attributes.push(trimmed.to_owned());
                continue;
            }
            let declaration = trimmed.strip_prefix("pub ").unwrap_or(trimmed);
            let (ident, ty) = declaration
                .split_once(':')
                .unwrap_or_else(|| panic!("{name}: cannot read the field `{trimmed}`"));
            let mut key = ident.trim().trim_start_matches("r#").to_owned();
            for attribute in field_attributes.drain(..) {
                assert!(
                    !attribute.contains("flatten") && !attribute.contains("alias"),
                    "{name}.{key}: `{attribute}` is not followed by this test; teach it"
                );
                if let Some(renamed) = serde_rename(&attribute) {
                    key = renamed;
                }
            }
            fields.push(Field {
                key,
                ty: ty.trim().trim_end_matches(',').trim().to_owned(),
            });
        }
        assert!(!fields.is_empty(), "{name}: no fields found");
        found.insert(name.to_owned(), fields);
    }
    found
}

/// The key of `#[serde(rename = "key")]` (or `rename(deserialize = "key")`), if the attribute renames.
fn serde_rename(attribute: &str) -> Option<String> {
    if !attribute.starts_with("#[serde(") {
        return None;
    }
    let at = attribute.find("rename")?;
    let rest = &attribute[at + "rename".len()..];
    if rest.starts_with("_all") {
        return None;
    }
    let rest = match rest.find("deserialize") {
        Some(de) => &rest[de..],
        None => rest,
    };
    let start = rest.find('"')? + 1;
    let end = start + rest[start..].find('"')?;
    Some(rest[start..end].to_owned())
}

/// The identifiers a type is made of: `Option<Vec<RawTarget>>` → Option, Vec, RawTarget.
fn type_names(ty: &str) -> impl Iterator<Item = &str> {
    ty.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|s| !s.is_empty())
}

/// Every table of the file, by its dotted path (`""` is the root), with the struct that defines it.
fn tables(structs: &BTreeMap<String, Vec<Field>>) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut pending = vec![(String::new(), ROOT.to_owned())];
    while let Some((path, name)) = pending.pop() {
        let fields = structs
            .get(&name)
            .unwrap_or_else(|| panic!("no struct {name} found"));
        for field in fields {
            if let Some(inner) = type_names(&field.ty).find(|t| structs.contains_key(*t)) {
                let child = if path.is_empty() {
                    field.key.clone()
                } else {
                    format!("{path}.{}", field.key)
                };
                assert!(
                    child.split('.').count() <= 8,
                    "the tables nest too deep at {child}: a cycle?"
                );
                pending.push((child, inner.to_owned()));
            }
        }
        found.push((path, name));
    }
    found.sort();
    found
}

/// The reference's sections: each heading line with the text under it (up to the next heading).
fn sections(markdown: &str) -> Vec<(String, String)> {
    let mut sections: Vec<(String, String)> = Vec::new();
    let mut in_code = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        }
        if !in_code && line.starts_with('#') {
            sections.push((line.to_owned(), String::new()));
        } else if let Some((_, body)) = sections.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    sections
}

#[test]
fn every_gateway_config_key_is_documented() {
    let mut all = structs(&read("gateway/src/config/raw.rs"), |name| name.starts_with("Raw"));
    for (file, name) in SHARED_TABLES {
        let shared = structs(&read(file), |found| found == *name);
        assert!(shared.contains_key(*name), "no struct {name} in {file}");
        all.extend(shared);
    }
    let tables = tables(&all);
    let reached: BTreeSet<&str> = tables.iter().map(|(_, name)| name.as_str()).collect();
    let unreached: Vec<&String> = all
        .keys()
        .filter(|name| !reached.contains(name.as_str()))
        .collect();
    assert!(
        unreached.is_empty(),
        "structs no field of {ROOT} leads to (is this walk still right?): {unreached:?}"
    );
    assert!(
        tables.len() >= 15,
        "only {} tables found: {tables:?}",
        tables.len()
    );

    let doc_path = "docs/configuration.md";
    let doc = read(doc_path);
    let sections = sections(&doc);
    let mut missing = Vec::new();
    let mut checked = 0;
    for (path, name) in &tables {
        let fields = &all[name];
        if path.is_empty() {
            // The root's fields are tables: each needs a section of its own.
            for field in fields {
                let table = format!("[{}]", field.key);
                if !sections.iter().any(|(heading, _)| heading.contains(&table)) {
                    missing.push(format!("no section for the table {table} (no heading names it)"));
                }
                checked += 1;
            }
            continue;
        }
        let table = format!("[{path}]");
        let candidates: Vec<&(String, String)> = sections
            .iter()
            .filter(|(heading, _)| heading.contains(&table))
            .collect();
        if candidates.is_empty() {
            missing.push(format!(
                "no section for the table {table} ({name}): a heading must name it"
            ));
            continue;
        }
        for field in fields {
            let key = format!("`{}`", field.key);
            if !candidates.iter().any(|(_, body)| body.contains(&key)) {
                missing.push(format!(
                    "{path}.{} ({name}.{}): not under a heading naming {table}",
                    field.key, field.key
                ));
            }
            checked += 1;
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {checked} gateway configuration keys are not documented in {doc_path}:\n  {}",
        missing.len(),
        missing.join("\n  ")
    );
}

#[test]
fn the_struct_reader_follows_renames_and_nesting() {
    let source = r#"
#[derive(Deserialize)]
pub struct RawConfig {
    /// The server.
    #[serde(default)]
    pub server: RawServer,
    pub routes: Vec<RawRoute>,
}
#[derive(Deserialize)]
pub struct RawServer {
    #[serde(rename = "listen-address")]
    pub listen: String,
}
pub struct RawRoute {
    pub name: String,
    pub failover: Option<RawFailover>,
}
struct RawFailover {
    pub max_attempts: usize,
}
"#;
    let parsed = structs(source, |name| name.starts_with("Raw"));
    assert_eq!(parsed["RawServer"][0].key, "listen-address");
    assert_eq!(parsed["RawRoute"][1].ty, "Option<RawFailover>");
    let tables: Vec<String> = tables(&parsed).into_iter().map(|(path, _)| path).collect();
    assert_eq!(tables, ["", "routes", "routes.failover", "server"]);
    let sections = sections("# T\n## `[server]`\n`a`\n```toml\n# not a heading\n```\n### b\nc\n");
    assert_eq!(sections.len(), 3);
    assert!(sections[1].1.contains("# not a heading"));
}
