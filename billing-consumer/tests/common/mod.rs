//! Shared by the integration tests: where the real broker and ClickHouse are, unique names per run, and
//! usage events to feed them.

// Test support: a panic here is a failed test, not a crash in production.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod ledger;

use chrono::{DateTime, Duration, Utc};
use tollgate_billing_consumer::ledger::ClickHouseSettings;
use tollgate_schemas::CloudEvent;
use tollgate_schemas::usage::{Attempt, EstimateSource, Outcome, UsageEvent, UsageRecorded, UsageSource};

const START_THE_STACK: &str = "start the stack with compose/test (it sets TOLLGATE_TEST_KAFKA_BROKERS and \
                               TOLLGATE_TEST_CLICKHOUSE_URL)";

/// The broker under test.
pub fn brokers() -> String {
    std::env::var("TOLLGATE_TEST_KAFKA_BROKERS")
        .unwrap_or_else(|_| panic!("TOLLGATE_TEST_KAFKA_BROKERS is not set: {START_THE_STACK}"))
}

/// A fresh database name on the ClickHouse under test.
pub fn clickhouse(suffix: &str) -> ClickHouseSettings {
    let url = std::env::var("TOLLGATE_TEST_CLICKHOUSE_URL")
        .unwrap_or_else(|_| panic!("TOLLGATE_TEST_CLICKHOUSE_URL is not set: {START_THE_STACK}"));
    ClickHouseSettings {
        url,
        database: format!("billing_it_{suffix}"),
        user: std::env::var("TOLLGATE_TEST_CLICKHOUSE_USER").unwrap_or_else(|_| "default".to_owned()),
        password: std::env::var("TOLLGATE_TEST_CLICKHOUSE_PASSWORD")
            .ok()
            .filter(|p| !p.is_empty()),
        cluster: None,
    }
}

/// A suffix unique to this run (and usable in identifiers).
pub fn unique_suffix() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// Drops the test database.
pub async fn drop_database(ch: &ClickHouseSettings) {
    let sql = format!("DROP DATABASE IF EXISTS `{}`", ch.database);
    let _ = ch.client().with_database("default").query(&sql).execute().await;
}

pub const CONSUMERS: [&str; 3] = ["team-a", "team-b", "team-c"];
pub const MODELS: [&str; 3] = ["gpt-4o-mini", "claude-haiku", "llama-3"];

/// The model that serves a request for `model`: a dated snapshot of it, which a price for `model` (its family)
/// prices.
pub fn served(model: &str) -> String {
    format!("{model}-2026-01-15")
}

/// The time of event `i`: one minute apart from 2026-11-20T00:00:00Z.
pub fn event_time(i: usize) -> DateTime<Utc> {
    let base = DateTime::parse_from_rfc3339("2026-11-20T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    base + Duration::minutes(i as i64)
}

/// Event `i`: consumer and model cycle, token numbers vary with `i`, every fourth one failed over once.
pub fn event(i: usize) -> UsageEvent {
    let consumer = CONSUMERS[i % CONSUMERS.len()];
    let model = MODELS[(i / CONSUMERS.len()) % MODELS.len()];
    let prompt = 10 + (i as u32 % 97);
    let completion = (i as u32 * 7) % 301;
    let mut attempts = vec![Attempt {
        instance: "primary".into(),
        status: Some(200),
        error: None,
        latency_ms: 40,
    }];
    if i.is_multiple_of(4) {
        attempts.insert(
            0,
            Attempt {
                instance: "local".into(),
                status: Some(503),
                error: Some(tollgate_schemas::usage::AttemptError::Status),
                latency_ms: 3,
            },
        );
    }
    let time = event_time(i);
    let finished = time.timestamp_millis() as u64;
    CloudEvent::new(
        "tollgate-gateway/it",
        consumer,
        time,
        UsageRecorded {
            request_id: format!("req-{i}"),
            consumer_id: consumer.into(),
            team: None,
            organization: None,
            key_id: format!("{consumer}-key"),
            endpoint: "/v1/chat/completions".into(),
            route: model.into(),
            model_requested: model.into(),
            model_served: served(model),
            provider: "openai".into(),
            instance: "primary".into(),
            attempts,
            stream: i.is_multiple_of(2),
            outcome: Outcome::Ok,
            http_status: 200,
            prompt_tokens_estimated: prompt,
            prompt_estimate_source: EstimateSource::Meter,
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            cached_prompt_tokens: i.is_multiple_of(3).then_some(prompt / 2),
            reasoning_tokens: None,
            cache_write_5m_tokens: None,
            cache_write_1h_tokens: None,
            usage_source: UsageSource::Provider,
            latency_ms: 50,
            ttfb_ms: (!i.is_multiple_of(5)).then_some(20),
            started_at_ms: finished - 50,
            finished_at_ms: finished,
        },
    )
}

/// A report's per-model lines as (model, requests, prompt, completion, total), comparable with
/// [`expected_usage`].
pub fn report_lines(
    report: &tollgate_billing_consumer::reports::usage::UsageReport,
) -> Vec<(String, u64, u64, u64, u64)> {
    report
        .models
        .iter()
        .map(|l| {
            (
                l.model.clone(),
                l.requests,
                l.prompt_tokens,
                l.completion_tokens,
                l.total_tokens,
            )
        })
        .collect()
}

/// Requests and token sums of `events` for `consumer` per served model, from `since` on, as (model, requests, prompt,
/// completion, total), sorted by model.
pub fn expected_usage(
    events: &[UsageEvent],
    consumer: &str,
    since: Option<DateTime<Utc>>,
) -> Vec<(String, u64, u64, u64, u64)> {
    let mut by_model = std::collections::BTreeMap::<String, (u64, u64, u64, u64)>::new();
    for e in events {
        let truncated = DateTime::from_timestamp(e.time.timestamp(), 0).unwrap();
        if e.data.consumer_id != consumer || since.is_some_and(|s| truncated < s) {
            continue;
        }
        let line = by_model.entry(e.data.model_served.clone()).or_default();
        line.0 += 1;
        line.1 += u64::from(e.data.prompt_tokens);
        line.2 += u64::from(e.data.completion_tokens);
        line.3 += u64::from(e.data.total_tokens);
    }
    by_model
        .into_iter()
        .map(|(m, (r, p, c, t))| (m, r, p, c, t))
        .collect()
}

/// A usage event produced by gateway `source` (e.g. `tollgate-gateway/gw-1`): `consumer` asked for `model`,
/// [`served`] answered, and used `prompt` + `completion` tokens, finishing at `finished_at_ms`; everything else as in [`event`].
pub fn usage_event(
    source: &str,
    consumer: &str,
    model: &str,
    prompt: u32,
    completion: u32,
    finished_at_ms: u64,
) -> UsageEvent {
    let mut event = event(0);
    let time = DateTime::from_timestamp_millis(finished_at_ms as i64).unwrap();
    event.source = source.into();
    event.subject = consumer.into();
    event.time = time;
    let data = &mut event.data;
    data.request_id = format!("req-{}", event.id.simple());
    data.consumer_id = consumer.into();
    data.key_id = format!("{consumer}-key");
    data.route = model.into();
    data.model_requested = model.into();
    data.model_served = served(model);
    data.prompt_tokens_estimated = prompt;
    data.prompt_tokens = prompt;
    data.completion_tokens = completion;
    data.total_tokens = prompt + completion;
    data.started_at_ms = finished_at_ms - 50;
    data.finished_at_ms = finished_at_ms;
    event
}
