//! The replay audit: recomputes a time range's usage from the Kafka topic, independently of ClickHouse, and
//! compares it with the ledger.
//!
//! 1. **Replay** ([`crate::replay`]): every partition of the usage topic, from the first record at or after
//!    `from − margin` by Kafka time up to the high watermarks at the start, outside any consumer group (nothing
//!    is committed). [`tally`] keeps the events whose `finished_at_ms` is in `[from, to)`, each id once, and sums
//!    per consumer, served model (`model_served`) and currency: events, prompt, cached and completion tokens,
//!    reasoning tokens and 5-minute and 1-hour prompt-cache writes (absent counts as 0), and — with a price
//!    table — the cost under every token type's price and the per-request fee, priced by the same [`crate::ledger::pricing`] code as ingest; the served
//!    models with no price in force are reported (and logged once, at warn level).
//! 2. **Ledger**: the same sums from ClickHouse, `FINAL`, over the rows with `finished_at_ms` in the range
//!    (their `event_time` within a day of it too, so only the partitions concerned are read: the envelope time
//!    of a gateway event is its finished time).
//! 3. **Compare** ([`report`]): every field of every group that differs; for the consumer/model pairs that
//!    differ, the events on one side only or with other numbers, up to `max_events` listed.
//!
//! Audit a range that has ended, once ingest has caught up (`billing_consumer_lag_events` at 0): events
//! produced after the replay started are not read from Kafka but may already be in ClickHouse. A replay holds
//! every event of the range in memory (about 140 bytes each).

pub mod report;
pub mod tally;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use self::report::{AuditReport, EventRecord, KafkaPosition};
use self::tally::{EventValues, GroupKey, Tally, Totals};
use crate::error::BillingError;
use crate::ledger::pricing::PriceTable;
use crate::ledger::{ClickHouseSettings, plain_identifier};
use crate::replay::Replay;
use crate::replay::ReplayRange;

/// Everything [`run`] needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSettings {
    /// The events to compare and where on the usage topic they are read.
    pub range: ReplayRange,
    /// The ledger.
    pub clickhouse: ClickHouseSettings,
    /// The table to compare, normally `usage_events` (or one written by `rebuild`).
    pub table: String,
    /// Prices to recompute costs with; `None` compares counts and tokens only.
    pub prices: Option<Arc<PriceTable>>,
    /// Events that differ listed at most.
    pub max_events: usize,
}

impl AuditSettings {
    /// Settings with the default table (`usage_events`), margin and event list length.
    pub fn new(
        kafka: impl Into<tollgate_plumbing::kafka::KafkaConnection>,
        topic: impl Into<String>,
        clickhouse: ClickHouseSettings,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        prices: Option<Arc<PriceTable>>,
    ) -> Self {
        Self {
            range: ReplayRange::new(kafka, topic, from, to),
            clickhouse,
            table: crate::ledger::store::USAGE_TABLE.to_owned(),
            prices,
            max_events: DEFAULT_MAX_EVENTS,
        }
    }
}

/// Events that differ listed at most, unless told otherwise.
pub const DEFAULT_MAX_EVENTS: usize = 20;
/// How far beyond the range a row's `event_time` may be and still be looked at (partition pruning only).
const EVENT_TIME_SLACK_SECONDS: i64 = 86_400;

/// One group's sums as ClickHouse has them.
#[derive(Debug, serde::Deserialize, clickhouse::Row)]
struct LedgerGroup {
    consumer: String,
    model: String,
    currency: String,
    events: u64,
    prompt_tokens: u64,
    cached_prompt_tokens: u64,
    completion_tokens: u64,
    reasoning_tokens: u64,
    cache_write_5m_tokens: u64,
    cache_write_1h_tokens: u64,
    cost_micros: i64,
}

/// One event as ClickHouse has it.
#[derive(Debug, serde::Deserialize, clickhouse::Row)]
struct LedgerEvent {
    event_id: String,
    currency: String,
    prompt_tokens: u32,
    cached_prompt_tokens: u32,
    completion_tokens: u32,
    reasoning_tokens: u32,
    cache_write_5m_tokens: u32,
    cache_write_1h_tokens: u32,
    cost_micros: i64,
}

/// Runs the audit: replays Kafka, reads ClickHouse, compares. Differences are the report's, not an error.
pub async fn run(settings: &AuditSettings) -> Result<AuditReport, BillingError> {
    let started = Instant::now();
    let table = plain_identifier(&settings.table, "table")?;
    let (from_ms, to_ms) = settings.range.ms()?;
    let costs = settings.prices.is_some();
    tracing::info!(
        topic = %settings.range.topic,
        table = %format!("{}.{table}", settings.clickhouse.database),
        from = %settings.range.from.to_rfc3339(),
        to = %settings.range.to.to_rfc3339(),
        costs_compared = costs,
        "Audit started: replaying Kafka."
    );

    let mut replay = Replay::open(&settings.range, "audit").await?;
    let mut tally = Tally::new(from_ms, to_ms, settings.prices.clone());
    while replay
        .read(usize::MAX, |partition, offset, payload| {
            tally.add(partition, offset, payload)
        })
        .await?
    {}
    let replayed = replay.finish();
    let counts = tally.counts;
    let unpriced_models: Vec<String> = tally.unpriced_models().iter().cloned().collect();
    if !unpriced_models.is_empty() {
        tracing::warn!(
            models_served = ?unpriced_models,
            events = tally.unpriced_events,
            "Some events have no price in force for their served model (nor its family): they count with cost 0."
        );
    }
    tracing::info!(
        messages = counts.messages,
        events = counts.events,
        duplicates = counts.duplicates,
        outside_range = counts.outside_range,
        undecodable = counts.undecodable,
        partitions = replayed.partitions,
        start_by_time = replayed.start_by_time,
        seconds = replayed.elapsed.as_secs_f64(),
        messages_per_second = per_second(counts.messages, replayed.elapsed),
        "Audit: Kafka replayed."
    );

    let kafka = tally.totals();
    let clickhouse = ledger_totals(&settings.clickhouse, table, from_ms, to_ms, costs).await?;
    let differences = report::differences(&kafka, &clickhouse, costs);

    let mut event_differences = Vec::new();
    let mut event_differences_found = 0;
    if !differences.is_empty() {
        let pairs: BTreeSet<(&str, &str)> = differences
            .iter()
            .map(|d| (d.consumer.as_str(), d.model.as_str()))
            .collect();
        for (consumer, model) in pairs {
            let ours = kafka_events(&tally, consumer, model);
            let theirs = ledger_events(
                &settings.clickhouse,
                table,
                consumer,
                model,
                from_ms,
                to_ms,
                costs,
            )
            .await?;
            let found = report::event_differences(consumer, model, ours, theirs, costs);
            event_differences_found += found.len() as u64;
            let room = settings.max_events.saturating_sub(event_differences.len());
            event_differences.extend(found.into_iter().take(room));
        }
    }

    let sum = |groups: &BTreeMap<GroupKey, Totals>| {
        groups.values().fold(Totals::default(), |mut all, t| {
            all.merge(t);
            all
        })
    };
    let audit = AuditReport {
        from: settings.range.from,
        to: settings.range.to,
        topic: settings.range.topic.clone(),
        table: format!("{}.{table}", settings.clickhouse.database),
        costs_compared: costs,
        kafka: counts,
        unpriced_events: tally.unpriced_events,
        unpriced_models,
        kafka_totals: sum(&kafka),
        clickhouse_totals: sum(&clickhouse),
        groups: kafka
            .keys()
            .chain(clickhouse.keys())
            .collect::<BTreeSet<_>>()
            .len(),
        differences,
        event_differences,
        event_differences_found,
        kafka_seconds: replayed.elapsed.as_secs_f64(),
        seconds: started.elapsed().as_secs_f64(),
    };
    if audit.is_clean() {
        tracing::info!(summary = %audit.summary(), "Audit finished: no difference.");
    } else {
        tracing::warn!(
            differences = audit.differences.len(),
            events = audit.event_differences_found,
            summary = %audit.summary(),
            "Audit finished: Kafka and ClickHouse differ."
        );
    }
    Ok(audit)
}

/// The `WHERE` of the ledger reads: the exact range on `finished_at_ms`, and `event_time` within a day of it so
/// that only the month partitions concerned are read. Binds: from second, to second, from ms, to ms.
const RANGE: &str = "event_time >= toDateTime(?) AND event_time < toDateTime(?) \
                     AND finished_at_ms >= ? AND finished_at_ms < ?";

fn slack_seconds(from_ms: u64, to_ms: u64) -> (u32, u32) {
    let seconds = |ms: u64, slack: i64| {
        let s = i64::try_from(ms / 1000).unwrap_or(i64::MAX).saturating_add(slack);
        u32::try_from(s.max(0)).unwrap_or(u32::MAX)
    };
    (
        seconds(from_ms, -EVENT_TIME_SLACK_SECONDS),
        seconds(to_ms, EVENT_TIME_SLACK_SECONDS + 1),
    )
}

/// The ledger's sums per group (consumer, served model, currency) over the range.
async fn ledger_totals(
    ch: &ClickHouseSettings,
    table: &str,
    from_ms: u64,
    to_ms: u64,
    costs: bool,
) -> Result<BTreeMap<GroupKey, Totals>, BillingError> {
    let (currency, cost, group_by) = if costs {
        ("currency", "sum(cost_micros)", ", currency")
    } else {
        ("''", "toInt64(0)", "")
    };
    let sql = format!(
        "SELECT consumer_id, model_served, {currency}, count(), sum(prompt_tokens), \
         sum(ifNull(cached_prompt_tokens, 0)), sum(completion_tokens), sum(ifNull(reasoning_tokens, 0)), \
         sum(ifNull(cache_write_5m_tokens, 0)), sum(ifNull(cache_write_1h_tokens, 0)), {cost} \
         FROM {table} FINAL WHERE {RANGE} GROUP BY consumer_id, model_served{group_by}"
    );
    let (from_s, to_s) = slack_seconds(from_ms, to_ms);
    let rows = ch
        .client()
        .query(&sql)
        .bind(from_s)
        .bind(to_s)
        .bind(from_ms)
        .bind(to_ms)
        .fetch_all::<LedgerGroup>()
        .await
        .map_err(BillingError::clickhouse("read audit totals"))?;
    Ok(rows
        .into_iter()
        .map(|row| {
            (
                GroupKey {
                    consumer: row.consumer,
                    model: row.model,
                    currency: row.currency,
                },
                Totals {
                    events: row.events,
                    prompt_tokens: row.prompt_tokens,
                    cached_prompt_tokens: row.cached_prompt_tokens,
                    completion_tokens: row.completion_tokens,
                    reasoning_tokens: row.reasoning_tokens,
                    cache_write_5m_tokens: row.cache_write_5m_tokens,
                    cache_write_1h_tokens: row.cache_write_1h_tokens,
                    cost_micros: row.cost_micros,
                },
            )
        })
        .collect())
}

/// The ledger's events of one consumer and served model over the range.
async fn ledger_events(
    ch: &ClickHouseSettings,
    table: &str,
    consumer: &str,
    model: &str,
    from_ms: u64,
    to_ms: u64,
    costs: bool,
) -> Result<Vec<(String, EventRecord)>, BillingError> {
    let (currency, cost) = if costs {
        ("currency", "cost_micros")
    } else {
        ("''", "toInt64(0)")
    };
    let sql = format!(
        "SELECT event_id, {currency}, prompt_tokens, ifNull(cached_prompt_tokens, 0), completion_tokens, \
         ifNull(reasoning_tokens, 0), ifNull(cache_write_5m_tokens, 0), ifNull(cache_write_1h_tokens, 0), {cost} \
         FROM {table} FINAL WHERE consumer_id = ? AND model_served = ? AND {RANGE}"
    );
    let (from_s, to_s) = slack_seconds(from_ms, to_ms);
    let rows = ch
        .client()
        .query(&sql)
        .bind(consumer)
        .bind(model)
        .bind(from_s)
        .bind(to_s)
        .bind(from_ms)
        .bind(to_ms)
        .fetch_all::<LedgerEvent>()
        .await
        .map_err(BillingError::clickhouse("read audit events"))?;
    Ok(rows
        .into_iter()
        .map(|row| {
            (
                row.event_id,
                EventRecord {
                    currency: row.currency,
                    values: EventValues {
                        prompt_tokens: row.prompt_tokens,
                        cached_prompt_tokens: row.cached_prompt_tokens,
                        completion_tokens: row.completion_tokens,
                        reasoning_tokens: row.reasoning_tokens,
                        cache_write_5m_tokens: row.cache_write_5m_tokens,
                        cache_write_1h_tokens: row.cache_write_1h_tokens,
                        cost_micros: row.cost_micros,
                    },
                },
            )
        })
        .collect())
}

/// The replayed events of one consumer and served model.
fn kafka_events(tally: &Tally, consumer: &str, model: &str) -> Vec<(u128, KafkaPosition, EventRecord)> {
    tally
        .events()
        .iter()
        .filter_map(|(id, event)| {
            let group = tally.group_of(event)?;
            (group.consumer == consumer && group.model == model).then(|| {
                (
                    *id,
                    KafkaPosition {
                        partition: event.partition,
                        offset: event.offset,
                    },
                    EventRecord {
                        currency: group.currency.clone(),
                        values: event.values,
                    },
                )
            })
        })
        .collect()
}

fn per_second(count: u64, elapsed: Duration) -> u64 {
    let seconds = elapsed.as_secs_f64();
    if seconds > 0.0 {
        (count as f64 / seconds) as u64
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn the_range_must_be_forward_and_after_1970() {
        assert_eq!(
            crate::replay::range_ms(utc("2026-11-01T00:00:00Z"), utc("2026-11-01T00:00:00.001Z")).unwrap(),
            (1_793_491_200_000, 1_793_491_200_001)
        );
        for (from, to) in [
            ("2026-11-01T00:00:00Z", "2026-11-01T00:00:00Z"),
            ("2026-12-01T00:00:00Z", "2026-11-01T00:00:00Z"),
            ("1969-12-31T00:00:00Z", "2026-11-01T00:00:00Z"),
        ] {
            assert_eq!(
                crate::replay::range_ms(utc(from), utc(to)).unwrap_err().kind(),
                "config",
                "{from} {to}"
            );
        }
    }

    #[test]
    fn event_time_bounds_have_a_day_of_slack_and_stay_in_range() {
        assert_eq!(
            slack_seconds(1_793_491_200_000, 1_796_083_200_000),
            (1_793_491_200 - 86_400, 1_796_083_200 + 86_401)
        );
        assert_eq!(slack_seconds(0, u64::MAX), (0, u32::MAX));
    }
}
