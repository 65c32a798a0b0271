//! `reingest-rejected` against a real ClickHouse: a usage event the old reader refused (it carried a CloudEvents
//! extension, `traceparent`) sits in `usage_events_rejected`; the command, run twice through the binary, bills it
//! exactly once and marks it, while a message that still does not decode stays rejected.

// Test helpers: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use tollgate_billing_consumer::ledger::migrations;
use tollgate_billing_consumer::ledger::store::{self, Position, REJECTED_TABLE};

const FIXTURE: &str = include_str!("../../schemas/fixtures/tollgate.usage.v1.json");
const EVENT_ID: &str = "019a9b8e-4f3c-7a21-9d4e-2b6c1f0e8a57";

fn reingest(ch: &tollgate_billing_consumer::ledger::ClickHouseSettings) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_billing-consumer"))
        .args(["reingest-rejected", "--since", "2026-01-01"])
        .env("TOLLGATE_CLICKHOUSE_URL", &ch.url)
        .env("TOLLGATE_CLICKHOUSE_DATABASE", &ch.database)
        .env("TOLLGATE_CLICKHOUSE_USER", &ch.user)
        .env_remove("TOLLGATE_PRICES")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "reingest-rejected failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test]
async fn a_rejected_event_with_an_extension_is_billed_once_however_often_reingest_runs() {
    let ch = common::clickhouse(&common::unique_suffix());
    migrations::apply(&ch).await.unwrap();
    let client = ch.client();

    // What the old reader stored: the event with `traceparent`, refused as unknown field, and real garbage.
    let extended = FIXTURE.replacen(
        '{',
        "{\"traceparent\": \"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\",",
        1,
    );
    let at = |offset| Position {
        topic: "tollgate.usage.v1".into(),
        partition: 1,
        offset,
    };
    let now = store::datetime_seconds(chrono::Utc::now()).unwrap();
    let rejected = [
        store::rejected_row(
            &at(7),
            extended.as_bytes(),
            tollgate_billing_consumer::error::RejectReason::InvalidJson,
            "unknown field `traceparent`, expected one of `specversion`, `id`, ...",
            now,
        ),
        store::rejected_row(
            &at(8),
            b"{not json",
            tollgate_billing_consumer::error::RejectReason::InvalidJson,
            "key must be a string",
            now,
        ),
    ];
    store::insert_all(&client, REJECTED_TABLE, &rejected)
        .await
        .unwrap();

    let first = reingest(&ch);
    assert!(
        first.contains("Re-ingested 1 of 2 rejected messages; still rejected: 1 invalid_json."),
        "{first}"
    );
    let second = reingest(&ch);
    assert!(
        second.contains("Re-ingested 0 of 1 rejected messages; still rejected: 1 invalid_json."),
        "{second}"
    );

    // Billed once, as ingest would have written it (same position, same tokens).
    let rows: Vec<(String, u32, i32, i64)> = client
        .query("SELECT event_id, total_tokens, kafka_partition, kafka_offset FROM usage_events FINAL")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(rows, [(EVENT_ID.to_owned(), 30, 1, 7)]);
    // Even before merges the raw table holds at most the two inserts, which FINAL collapses.
    let raw: u64 = client
        .query("SELECT count() FROM usage_events WHERE event_id = ?")
        .bind(EVENT_ID)
        .fetch_one()
        .await
        .unwrap();
    assert!(raw <= 1, "the second run wrote nothing: {raw}");
    let reasons: Vec<(i64, String)> = client
        .query("SELECT kafka_offset, reason FROM usage_events_rejected FINAL ORDER BY kafka_offset")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(
        reasons,
        [(7, "reingested".to_owned()), (8, "invalid_json".to_owned())]
    );

    common::drop_database(&ch).await;
}
