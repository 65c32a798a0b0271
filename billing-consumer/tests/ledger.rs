//! The ClickHouse side against a real server: migrations apply once and refuse a changed migration; rows
//! written twice count once with FINAL, and every copy of an event hashes to one shard under the cluster layout's
//! sharding key; the usage report matches known data.

// Test helpers: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use tollgate_billing_consumer::ledger::layout::{self, Placement};
use tollgate_billing_consumer::ledger::migrations::{self, MIGRATIONS};
use tollgate_billing_consumer::ledger::pricing::PriceTable;
use tollgate_billing_consumer::ledger::store::{self, Position};
use tollgate_billing_consumer::reports::usage;

#[tokio::test]
async fn migrations_apply_once_and_refuse_a_changed_migration() {
    let ch = common::clickhouse(&common::unique_suffix());
    let all: Vec<u32> = MIGRATIONS.iter().map(|m| m.version).collect();
    assert_eq!(migrations::apply(&ch).await.unwrap(), all);
    assert_eq!(
        migrations::apply(&ch).await.unwrap(),
        Vec::<u32>::new(),
        "second run applies nothing"
    );

    // Both tables exist with the columns the rest of Tollgate queries.
    let columns: Vec<String> = ch
        .client()
        .query("SELECT name FROM system.columns WHERE database = ? AND table = 'usage_events' ORDER BY name")
        .bind(ch.database.as_str())
        .fetch_all()
        .await
        .unwrap();
    for column in [
        "event_id",
        "event_time",
        "consumer_id",
        "attempts",
        "cached_prompt_tokens",
        "kafka_offset",
        "cost_micros",
        "currency",
        "price_version",
        "reasoning_tokens",
        "cache_write_5m_tokens",
        "cache_write_1h_tokens",
        "unpriced",
        "team",
        "organization",
    ] {
        assert!(
            columns.iter().any(|c| c == column),
            "missing {column} in {columns:?}"
        );
    }
    assert_eq!(columns.len(), 40);

    // Every DateTime column outside the keys states 'UTC' (0004); the key columns cannot be altered, and the
    // server is checked to behave as UTC instead.
    let types: Vec<(String, String, String)> = ch
        .client()
        .query(
            "SELECT table, name, type FROM system.columns WHERE database = ? AND type LIKE 'DateTime%' \
             AND table != 'schema_migrations' ORDER BY table, name",
        )
        .bind(ch.database.as_str())
        .fetch_all()
        .await
        .unwrap();
    let types: Vec<(&str, &str, &str)> = types
        .iter()
        .map(|(t, n, ty)| (t.as_str(), n.as_str(), ty.as_str()))
        .collect();
    assert_eq!(
        types,
        [
            ("usage_events", "event_time", "DateTime"),
            ("usage_events", "ingested_at", "DateTime('UTC')"),
            ("usage_events_rejected", "received_at", "DateTime"),
        ]
    );
    migrations::check_server_time_zone(&ch.client()).await.unwrap();

    // Somebody edited migration 1 after it was applied: the record no longer matches the embedded SQL.
    ch.client()
        .query("INSERT INTO schema_migrations (version, name, checksum, applied_at) VALUES (1, 'usage_events', 'edited', now())")
        .execute()
        .await
        .unwrap();
    let err = migrations::apply(&ch).await.unwrap_err();
    assert_eq!(err.kind(), "migration_changed", "{err}");

    common::drop_database(&ch).await;
}

#[tokio::test]
async fn redelivered_rows_count_once_and_the_report_matches() {
    let ch = common::clickhouse(&common::unique_suffix());
    migrations::apply(&ch).await.unwrap();
    let client = ch.client();

    let events: Vec<_> = (0..60).map(common::event).collect();
    let rows: Vec<_> = events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let at = Position {
                topic: "t".into(),
                partition: 0,
                offset: i as i64,
            };
            store::usage_row(e, &at, 1_800_000_000, &PriceTable::default()).unwrap()
        })
        .collect();
    // The first 40 are written twice, as after a crash between INSERT and commit.
    store::insert_all(&client, store::USAGE_TABLE, &rows[..40])
        .await
        .unwrap();
    store::insert_all(&client, store::USAGE_TABLE, &rows)
        .await
        .unwrap();
    // The first 10 once more, as a gateway's retried publish puts them in Kafka twice: the copy sits at
    // another offset and is ingested later, so its row differs outside the key. Neither server-side insert
    // deduplication (identical blocks only) nor a position key would catch it; the ReplacingMergeTree key does.
    // (tests/invoice.rs publishes an event twice through Kafka and finds it once on the invoice.)
    let republished: Vec<_> = rows[..10]
        .iter()
        .map(|row| store::UsageRow {
            kafka_offset: row.kafka_offset + 1_000,
            ingested_at: row.ingested_at + 60,
            ..row.clone()
        })
        .collect();
    store::insert_all(&client, store::USAGE_TABLE, &republished)
        .await
        .unwrap();

    let raw: u64 = client
        .query("SELECT count() FROM usage_events")
        .fetch_one()
        .await
        .unwrap();
    let distinct: u64 = client
        .query("SELECT count() FROM usage_events FINAL")
        .fetch_one()
        .await
        .unwrap();
    // Background merges may already have collapsed some duplicates; FINAL always has.
    assert!((60..=110).contains(&raw), "{raw} raw rows");
    assert_eq!(distinct, 60);

    // On a cluster (--clickhouse-cluster) FINAL collapses copies only within one shard, so the whole design rests
    // on every copy of an event having one value of the Distributed sharding key. Checked here on the copies
    // above, with the key the cluster layout uses: one value per event id.
    let Placement::Sharded { key } = layout::TABLES
        .iter()
        .find(|(table, _)| *table == store::USAGE_TABLE)
        .unwrap()
        .1
    else {
        panic!("usage_events is sharded on a cluster")
    };
    let (events_seen, most_shards): (u64, u64) = client
        .query(&format!(
            "SELECT count(), max(keys) FROM (SELECT event_id, uniqExact({key}) AS keys FROM usage_events \
             GROUP BY event_id)"
        ))
        .fetch_one()
        .await
        .unwrap();
    assert_eq!((events_seen, most_shards), (60, 1), "sharding key {key}");

    // A row reads back exactly as written, Nullable columns included.
    let (attempts, cached, ttfb): (String, Option<u32>, Option<u32>) = client
        .query("SELECT attempts, cached_prompt_tokens, ttfb_ms FROM usage_events FINAL WHERE event_id = ?")
        .bind(rows[0].event_id.as_str())
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(
        (attempts, cached, ttfb),
        (
            rows[0].attempts.clone(),
            rows[0].cached_prompt_tokens,
            rows[0].ttfb_ms
        )
    );

    for consumer in common::CONSUMERS {
        for since in [None, Some(common::event_time(30))] {
            let report = usage::usage(&ch, consumer, since).await.unwrap();
            let got = common::report_lines(&report);
            assert_eq!(
                got,
                common::expected_usage(&events, consumer, since),
                "{consumer} since {since:?}"
            );
            assert_eq!(report.total.requests, got.iter().map(|l| l.1).sum::<u64>());
            assert_eq!(report.total.total_tokens, got.iter().map(|l| l.4).sum::<u64>());
        }
    }
    let nobody = usage::usage(&ch, "nobody", None).await.unwrap();
    assert!(nobody.models.is_empty());
    assert_eq!(nobody.total.requests, 0);

    common::drop_database(&ch).await;
}

/// Reasoning tokens and cache writes by lifetime reach their own columns; an event that did not report them
/// (every event written before they existed) stores NULL, never a zero that would read as measured.
#[tokio::test]
async fn token_types_are_stored_in_their_own_columns_and_null_when_unreported() {
    let ch = common::clickhouse(&common::unique_suffix());
    migrations::apply(&ch).await.unwrap();
    let client = ch.client();
    let mut reported = common::event(0);
    reported.data.reasoning_tokens = Some(448);
    reported.data.cache_write_5m_tokens = Some(100);
    reported.data.cache_write_1h_tokens = Some(200);
    let unreported = common::event(1);
    let rows: Vec<_> = [&reported, &unreported]
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let at = Position {
                topic: "t".into(),
                partition: 0,
                offset: i as i64,
            };
            store::usage_row(e, &at, 1_800_000_000, &PriceTable::default()).unwrap()
        })
        .collect();
    store::insert_all(&client, store::USAGE_TABLE, &rows)
        .await
        .unwrap();
    let read = |event_id: String| {
        let client = client.clone();
        async move {
            client
                .query(
                    "SELECT reasoning_tokens, cache_write_5m_tokens, cache_write_1h_tokens \
                     FROM usage_events FINAL WHERE event_id = ?",
                )
                .bind(event_id.as_str())
                .fetch_one::<(Option<u32>, Option<u32>, Option<u32>)>()
                .await
                .unwrap()
        }
    };
    assert_eq!(
        read(rows[0].event_id.clone()).await,
        (Some(448), Some(100), Some(200))
    );
    assert_eq!(read(rows[1].event_id.clone()).await, (None, None, None));
}
