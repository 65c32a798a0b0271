//! Ingest against the real broker and ClickHouse: produce usage events (with redeliveries and malformed
//! messages) to a fresh topic, run the ingest loop, and check that every distinct event is in the ledger once,
//! the malformed ones are kept aside, the group's committed offsets reached the end of every partition, and the
//! usage report adds up.

// Test helpers: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::ledger::{
    Fixture, PARTITIONS, count, offsets, produce, produce_event, wait_until_committed_to_the_end,
};
use tokio_util::sync::CancellationToken;
use tollgate_billing_consumer::ingest;
use tollgate_billing_consumer::ingest::IngestSettings;
use tollgate_billing_consumer::kafka::KafkaSettings;
use tollgate_billing_consumer::kafka::topics;
use tollgate_billing_consumer::ledger::ClickHouseSettings;
use tollgate_billing_consumer::reports::usage;
use tollgate_schemas::usage::UsageEvent;

const DISTINCT_FIRST: usize = 480;
const DISTINCT_LATER: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_writes_each_event_once_keeps_malformed_ones_and_commits_to_the_end() {
    let Fixture {
        brokers,
        ch,
        topic,
        group,
        producer,
    } = Fixture::new().await;
    topics::ensure(&brokers.as_str().into(), &topic, PARTITIONS)
        .await
        .unwrap(); // already exists: fine

    // Phase 1, before the consumer starts: 480 distinct events, 20 of them sent twice (the gateway's spool
    // retried), and two messages that are not usage events.
    let events: Vec<UsageEvent> = (0..DISTINCT_FIRST + DISTINCT_LATER).map(common::event).collect();
    let mut sent = 0_i64;
    for (i, event) in events[..DISTINCT_FIRST].iter().enumerate() {
        produce_event(&producer, &topic, event).await;
        sent += 1;
        if i % 24 == 0 {
            produce_event(&producer, &topic, event).await;
            sent += 1;
        }
    }
    produce(&producer, &topic, "team-a", b"{\"specversion\":\"1.0\",\"id\":").await;
    produce(
        &producer,
        &topic,
        "team-b",
        br#"{"specversion":"1.0","type":"tollgate.quota.v1","data":{}}"#,
    )
    .await;
    sent += 2;

    let settings = IngestSettings {
        kafka: KafkaSettings {
            connection: brokers.as_str().into(),
            topic: topic.clone(),
            group_id: group.clone(),
        },
        clickhouse: ch.clone(),
        batch_size: 100,
        batch_wait: Duration::from_millis(100),
    };
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(ingest::run(settings, shutdown.clone()));

    wait_until_committed_to_the_end(&brokers, &group, &topic, sent).await;
    assert_eq!(
        count(&ch, "SELECT count() FROM usage_events FINAL").await,
        DISTINCT_FIRST as u64
    );

    // Phase 2, while it runs: 30 events that are already in the ledger (redelivered, a later batch) and
    // 20 new ones.
    for event in &events[100..130] {
        produce_event(&producer, &topic, event).await;
        sent += 1;
    }
    for event in &events[DISTINCT_FIRST..] {
        produce_event(&producer, &topic, event).await;
        sent += 1;
    }
    wait_until_committed_to_the_end(&brokers, &group, &topic, sent).await;

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    // Every distinct event exactly once with FINAL, whatever the merges did.
    let distinct = (DISTINCT_FIRST + DISTINCT_LATER) as u64;
    assert_eq!(
        count(&ch, "SELECT count() FROM usage_events FINAL").await,
        distinct
    );
    assert_eq!(
        count(&ch, "SELECT uniqExact(event_id) FROM usage_events").await,
        distinct
    );
    let raw = count(&ch, "SELECT count() FROM usage_events").await;
    assert!(raw >= distinct, "{raw} raw rows");

    // The malformed messages are kept with their reason, once each.
    let rejected: Vec<(String, String)> = ch
        .client()
        .query("SELECT reason, payload FROM usage_events_rejected FINAL ORDER BY reason")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(rejected.len(), 2, "{rejected:?}");
    assert_eq!(rejected[0].0, "invalid_json");
    assert_eq!(rejected[0].1, "{\"specversion\":\"1.0\",\"id\":");
    assert_eq!(rejected[1].0, "unexpected_type");

    // Offsets: committed == end on every partition, and the partitions hold every message sent.
    let offsets = offsets(&brokers, &group, &topic);
    assert_eq!(offsets.values().map(|(_, end)| end).sum::<i64>(), sent);
    for (partition, (committed, end)) in &offsets {
        assert_eq!(committed, end, "partition {partition}");
    }

    // The report adds up to the events produced, per consumer and model, and with --since.
    let mut grand_total = 0;
    for consumer in common::CONSUMERS {
        for since in [None, Some(common::event_time(250))] {
            let usage = usage::usage(&ch, consumer, since).await.unwrap();
            let got = common::report_lines(&usage);
            assert_eq!(
                got,
                common::expected_usage(&events, consumer, since),
                "{consumer} since {since:?}"
            );
            assert_eq!(usage.total.total_tokens, got.iter().map(|l| l.4).sum::<u64>());
            if since.is_none() {
                grand_total += usage.total.total_tokens;
            }
        }
    }
    let expected_total: u64 = events.iter().map(|e| u64::from(e.data.total_tokens)).sum();
    assert_eq!(grand_total, expected_total);

    common::drop_database(&ch).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clickhouse_outage_commits_nothing_and_loses_nothing() {
    let Fixture {
        brokers,
        ch,
        topic,
        group,
        producer,
    } = Fixture::new().await;
    let events: Vec<UsageEvent> = (0..30).map(common::event).collect();
    for event in &events {
        produce_event(&producer, &topic, event).await;
    }

    // ClickHouse unreachable: the loop keeps retrying the batch and never commits. Shutdown mid-retry returns.
    let down = ClickHouseSettings {
        url: "http://127.0.0.1:1".into(),
        ..ch.clone()
    };
    let settings = IngestSettings {
        kafka: KafkaSettings {
            connection: brokers.as_str().into(),
            topic: topic.clone(),
            group_id: group.clone(),
        },
        clickhouse: down,
        batch_size: 100,
        batch_wait: Duration::from_millis(50),
    };
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(ingest::run(settings.clone(), shutdown.clone()));
    // Absence can only be observed over time: give it several retries' worth.
    tokio::time::sleep(Duration::from_secs(4)).await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let committed: i64 = offsets(&brokers, &group, &topic)
        .values()
        .map(|(committed, _)| committed)
        .sum();
    assert_eq!(committed, 0, "nothing may be committed while ClickHouse is down");

    // ClickHouse back: the same group picks the batch up again and everything lands, once.
    let settings = IngestSettings {
        clickhouse: ch.clone(),
        ..settings
    };
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(ingest::run(settings, shutdown.clone()));
    wait_until_committed_to_the_end(&brokers, &group, &topic, events.len() as i64).await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        count(&ch, "SELECT count() FROM usage_events FINAL").await,
        events.len() as u64
    );

    common::drop_database(&ch).await;
}
