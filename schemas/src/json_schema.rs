//! JSON Schema documents for every published event version, generated from the Rust types.
//!
//! The generated documents are checked in under `json-schema/`; the test `checked_in_schemas_are_current`
//! fails when a type changed without its schema file being regenerated. Regenerate with
//! `TOLLGATE_BLESS=1 cargo test -p tollgate-schemas`.

use schemars::schema_for;

use crate::config::ConfigChangeEvent;
use crate::quota::{QuotaHeartbeatEvent, QuotaSnapshotEvent};
use crate::usage::UsageEvent;

/// Every published schema: (file name under `json-schema/`, pretty-printed JSON Schema).
pub fn all() -> Vec<(&'static str, String)> {
    vec![
        ("tollgate.usage.v1.json", render(schema_for!(UsageEvent))),
        ("tollgate.quota.v1.json", render(schema_for!(QuotaSnapshotEvent))),
        ("tollgate.config.v1.json", render(schema_for!(ConfigChangeEvent))),
        (
            "tollgate.quota.heartbeat.v1.json",
            render(schema_for!(QuotaHeartbeatEvent)),
        ),
    ]
}

fn render(schema: schemars::Schema) -> String {
    // Serializing a `Schema` (a JSON value) cannot fail; fall back to an empty document rather than panic.
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}
