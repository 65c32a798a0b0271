//! Published event versions never change: their golden fixtures keep deserializing, and the checked-in JSON
//! Schemas match the types.

use std::path::PathBuf;

use tollgate_schemas::quota::{LimitStrategy, QuotaHeartbeat, QuotaSnapshot};
use tollgate_schemas::quota::{QuotaHeartbeatEvent, QuotaSnapshotEvent};
use tollgate_schemas::usage::UsageEvent;
use tollgate_schemas::{EventData, Outcome, UsageRecorded, UsageSource};

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn usage_v1_golden_fixture_still_deserializes() {
    let text = std::fs::read_to_string(crate_dir().join("fixtures/tollgate.usage.v1.json")).unwrap();
    let event: UsageEvent = serde_json::from_str(&text).unwrap();

    assert!(event.is_expected_type());
    assert_eq!(event.event_type, UsageRecorded::TYPE);
    assert_eq!(event.id.get_version_num(), 7, "event ids are UUIDv7");
    assert_eq!(event.subject, event.data.consumer_id);
    assert_eq!(event.data.outcome, Outcome::Ok);
    assert_eq!(event.data.usage_source, UsageSource::Provider);
    assert_eq!(
        event.data.total_tokens,
        event.data.prompt_tokens + event.data.completion_tokens
    );
}

#[test]
fn usage_v1_round_trips_without_loss() {
    let text = std::fs::read_to_string(crate_dir().join("fixtures/tollgate.usage.v1.json")).unwrap();
    let event: UsageEvent = serde_json::from_str(&text).unwrap();
    let again: UsageEvent = serde_json::from_str(&serde_json::to_string(&event).unwrap()).unwrap();
    assert_eq!(event, again);
}

/// The token types added after the first events were written (reasoning, cache writes by lifetime) are
/// optional: an event without them reads with none, one with them round-trips, and a writer leaves out those it
/// does not know, so an event is byte-for-byte what it was before they existed.
#[test]
fn token_types_added_later_are_optional_and_left_out_when_unknown() {
    let text = std::fs::read_to_string(crate_dir().join("fixtures/tollgate.usage.v1.json")).unwrap();
    let old: UsageEvent = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (
            old.data.reasoning_tokens,
            old.data.cache_write_5m_tokens,
            old.data.cache_write_1h_tokens
        ),
        (None, None, None)
    );
    let written = serde_json::to_value(&old).unwrap();
    for field in [
        "reasoning_tokens",
        "cache_write_5m_tokens",
        "cache_write_1h_tokens",
    ] {
        assert!(
            written["data"].get(field).is_none(),
            "{field} is left out when unknown"
        );
    }
    let mut value: serde_json::Value = serde_json::from_str(&text).unwrap();
    value["data"]["reasoning_tokens"] = 448.into();
    value["data"]["cache_write_5m_tokens"] = 100.into();
    value["data"]["cache_write_1h_tokens"] = 200.into();
    let new: UsageEvent = serde_json::from_value(value).unwrap();
    assert_eq!(
        (
            new.data.reasoning_tokens,
            new.data.cache_write_5m_tokens,
            new.data.cache_write_1h_tokens
        ),
        (Some(448), Some(100), Some(200))
    );
    let again: UsageEvent = serde_json::from_str(&serde_json::to_string(&new).unwrap()).unwrap();
    assert_eq!(new, again);
}

/// Readers tolerate what a newer writer or a CloudEvents transport adds: an extension attribute on the envelope
/// (`traceparent`) and an unknown field in `data` or in an attempt are ignored, so such an event is billed, not
/// rejected. The known fields stay strict in type.
#[test]
fn readers_ignore_unknown_fields_and_extensions_but_keep_known_fields_strict() {
    let text = std::fs::read_to_string(crate_dir().join("fixtures/tollgate.usage.v1.json")).unwrap();
    let expected: UsageEvent = serde_json::from_str(&text).unwrap();
    let mut value: serde_json::Value = serde_json::from_str(&text).unwrap();
    value["traceparent"] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into();
    value["partitionkey"] = "team-a".into();
    value["data"]["audio_tokens"] = 3.into();
    value["data"]["attempts"][0]["region"] = "eu-west-1".into();
    let event: UsageEvent = serde_json::from_value(value.clone()).unwrap();
    assert_eq!(
        event, expected,
        "the unknown members are ignored, the known ones read as before"
    );

    let mut wrong_type = value.clone();
    wrong_type["data"]["prompt_tokens"] = (-1).into();
    assert!(serde_json::from_value::<UsageEvent>(wrong_type).is_err());
    let mut missing = value;
    missing["data"]
        .as_object_mut()
        .unwrap()
        .remove("completion_tokens");
    assert!(serde_json::from_value::<UsageEvent>(missing).is_err());

    let quota = std::fs::read_to_string(crate_dir().join("fixtures/tollgate.quota.v1.json")).unwrap();
    let mut quota: serde_json::Value = serde_json::from_str(&quota).unwrap();
    quota["traceparent"] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into();
    quota["data"]["spend_micros"] = 7.into();
    quota["data"]["watermarks"][0]["epoch"] = 2.into();
    assert!(serde_json::from_value::<QuotaSnapshotEvent>(quota).is_ok());
}

/// Writers never produce a member the types do not declare: a serialized event has exactly the declared members,
/// and the published JSON Schemas (the writers' contract) still forbid additional properties.
#[test]
fn writers_produce_only_declared_fields() {
    let text = std::fs::read_to_string(crate_dir().join("fixtures/tollgate.usage.v1.json")).unwrap();
    let event: UsageEvent = serde_json::from_str(&text).unwrap();
    let written = serde_json::to_value(&event).unwrap();
    let fixture: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        written, fixture,
        "what a writer emits is the declared envelope and data, nothing more"
    );
    for (name, schema) in tollgate_schemas::json_schema::all() {
        let schema: serde_json::Value = serde_json::from_str(&schema).unwrap();
        assert_eq!(
            schema["additionalProperties"],
            serde_json::Value::Bool(false),
            "{name}: the envelope forbids undeclared members to writers"
        );
    }
}

#[test]
fn quota_v1_golden_fixture_still_deserializes() {
    let text = std::fs::read_to_string(crate_dir().join("fixtures/tollgate.quota.v1.json")).unwrap();
    let event: QuotaSnapshotEvent = serde_json::from_str(&text).unwrap();

    assert!(event.is_expected_type());
    assert_eq!(event.event_type, QuotaSnapshot::TYPE);
    assert_eq!(event.subject, event.data.scope);
    assert_eq!(event.data.strategy, LimitStrategy::TotalTokens);
    assert_eq!(event.data.window_end_ms - event.data.window_start_ms, 3_600_000);
    assert!(event.data.covers("tollgate-gateway/gw-1", 1, 88_123));
    let again: QuotaSnapshotEvent = serde_json::from_str(&serde_json::to_string(&event).unwrap()).unwrap();
    assert_eq!(event, again);
}

#[test]
fn quota_heartbeat_v1_golden_fixture_still_deserializes() {
    let text =
        std::fs::read_to_string(crate_dir().join("fixtures/tollgate.quota.heartbeat.v1.json")).unwrap();
    let event: QuotaHeartbeatEvent = serde_json::from_str(&text).unwrap();
    assert!(event.is_expected_type());
    assert_eq!(event.event_type, QuotaHeartbeat::TYPE);
    assert!(!event.data.rebuilding);
}

#[test]
fn checked_in_schemas_are_current() {
    let bless = std::env::var_os("TOLLGATE_BLESS").is_some();
    for (name, generated) in tollgate_schemas::json_schema::all() {
        let path = crate_dir().join("json-schema").join(name);
        if bless {
            std::fs::write(&path, &generated).unwrap();
            continue;
        }
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == generated,
            "{} is stale: the event types changed. If this is a new version (published ones never change), \
             regenerate with `TOLLGATE_BLESS=1 cargo test -p tollgate-schemas`.",
            path.display()
        );
    }
}

#[test]
fn config_v1_golden_fixture_still_deserializes() {
    let text = std::fs::read_to_string(crate_dir().join("fixtures/tollgate.config.v1.json")).unwrap();
    let event: tollgate_schemas::config::ConfigChangeEvent = serde_json::from_str(&text).unwrap();

    assert!(event.is_expected_type());
    assert_eq!(event.subject, event.data.key());
    assert_eq!(event.data.kind, tollgate_schemas::config::ResourceKind::Route);
    assert_eq!(event.data.action, tollgate_schemas::config::ChangeAction::Put);
    assert_eq!(event.data.resource.as_ref().unwrap()["targets"][1]["weight"], 20);
    let again: tollgate_schemas::config::ConfigChangeEvent =
        serde_json::from_str(&serde_json::to_string(&event).unwrap()).unwrap();
    assert_eq!(event, again);
}
