//! The ClickHouse side of ingest: the row types of `usage_events` and `usage_events_rejected`, the mapping from a
//! decoded [`UsageEvent`] to its row (priced by [`crate::ledger::pricing`] for the model that served it,
//! `model_served`), and the batch INSERTs.
//!
//! Rows go in as `RowBinary` in the struct's field order, which names the columns of the INSERT; the table
//! definitions are in `migrations/`. Times are stored as `DateTime` (Unix seconds, `u32` on the wire) and the
//! millisecond timestamps of the event as `UInt64`, since ClickHouse 18.16 has no DateTime64.

use chrono::{DateTime, Utc};
use tollgate_schemas::usage::UsageEvent;

use crate::error::{BillingError, RejectReason};
use crate::ledger::pricing::{PriceTable, TokenUsage};

/// The `usage_events` table.
pub const USAGE_TABLE: &str = "usage_events";
/// The `usage_events_rejected` table.
pub const REJECTED_TABLE: &str = "usage_events_rejected";

/// Where a message sat in Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The message's offset.
    pub offset: i64,
}

/// One row of `usage_events`: one usage event, flattened.
#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, serde::Serialize)]
pub struct UsageRow {
    /// CloudEvent `id` (UUIDv7), hyphenated; the deduplication key.
    pub event_id: String,
    /// CloudEvent `time`, Unix seconds.
    pub event_time: u32,
    /// CloudEvent `source`: the gateway instance.
    pub source: String,
    pub request_id: String,
    pub consumer_id: String,
    pub key_id: String,
    pub endpoint: String,
    pub route: String,
    pub model_requested: String,
    pub model_served: String,
    pub provider: String,
    pub instance: String,
    /// The attempt trail as a JSON array, exactly as the event carried it.
    pub attempts: String,
    pub attempt_count: u16,
    /// 1 when streamed.
    pub stream: u8,
    pub outcome: String,
    pub http_status: u16,
    pub prompt_tokens_estimated: u32,
    pub prompt_estimate_source: String,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
    pub cached_prompt_tokens: Option<u32>,
    pub usage_source: String,
    pub latency_ms: u32,
    pub ttfb_ms: Option<u32>,
    pub started_at_ms: u64,
    pub finished_at_ms: u64,
    pub kafka_partition: i32,
    pub kafka_offset: i64,
    /// When this consumer wrote the row, Unix seconds.
    pub ingested_at: u32,
    /// The event's cost in micro-units of `currency`; 0 when unpriced.
    pub cost_micros: i64,
    /// ISO 4217 code of the price that applied; `""` when unpriced.
    pub currency: String,
    /// The price version that applied (`model@effective_from`); `""` when no price was in force.
    pub price_version: String,
    /// Of `completion_tokens`, those spent reasoning; NULL when the event did not say (migration 0005).
    pub reasoning_tokens: Option<u32>,
    /// Of `prompt_tokens`, those written to the prompt cache for 5 minutes; NULL when not reported.
    pub cache_write_5m_tokens: Option<u32>,
    /// Of `prompt_tokens`, those written to the prompt cache for an hour; NULL when not reported.
    pub cache_write_1h_tokens: Option<u32>,
    /// The consumer's team when the request was made; `""` when it had none (migration 0006).
    pub team: String,
    /// That team's organisation; `""` when the consumer had no team.
    pub organization: String,
}

impl UsageRow {
    /// True when no price was in force for the event.
    pub fn is_unpriced(&self) -> bool {
        self.price_version.is_empty()
    }
}

/// One row of `usage_events_rejected`: a message that is not a usage event, kept verbatim.
#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, serde::Serialize)]
pub struct RejectedRow {
    pub kafka_topic: String,
    pub kafka_partition: i32,
    pub kafka_offset: i64,
    /// The payload, as UTF-8 (invalid bytes replaced).
    pub payload: String,
    /// [`RejectReason::as_str`].
    pub reason: String,
    /// The decoder's message.
    pub error: String,
    /// When this consumer saw it, Unix seconds.
    pub received_at: u32,
}

/// Seconds since the epoch as a ClickHouse `DateTime`, or `None` outside 1970..2106.
pub fn datetime_seconds(time: DateTime<Utc>) -> Option<u32> {
    u32::try_from(time.timestamp()).ok()
}

/// Flattens a decoded event into its row, priced by `prices` for its served model (`model_served`, never the
/// requested one) at its `finished_at_ms`.
pub fn usage_row(
    event: &UsageEvent,
    at: &Position,
    ingested_at: u32,
    prices: &PriceTable,
) -> Result<UsageRow, BillingError> {
    let data = &event.data;
    let charge = prices.charge(&data.model_served, data.finished_at_ms, &TokenUsage::of(data));
    let event_time = datetime_seconds(event.time).ok_or_else(|| BillingError::Decode {
        reason: RejectReason::Unrepresentable,
        message: format!("event time {} is outside 1970..2106", event.time.to_rfc3339()),
    })?;
    let attempts = serde_json::to_string(&data.attempts).map_err(|e| BillingError::Decode {
        reason: RejectReason::Unrepresentable,
        message: format!("attempt trail does not serialize: {e}"),
    })?;
    Ok(UsageRow {
        event_id: event.id.hyphenated().to_string(),
        event_time,
        source: event.source.clone(),
        request_id: data.request_id.clone(),
        consumer_id: data.consumer_id.clone(),
        key_id: data.key_id.clone(),
        endpoint: data.endpoint.clone(),
        route: data.route.clone(),
        model_requested: data.model_requested.clone(),
        model_served: data.model_served.clone(),
        provider: data.provider.clone(),
        instance: data.instance.clone(),
        attempts,
        attempt_count: u16::try_from(data.attempts.len()).unwrap_or(u16::MAX),
        stream: u8::from(data.stream),
        outcome: data.outcome.as_str().to_owned(),
        http_status: data.http_status,
        prompt_tokens_estimated: data.prompt_tokens_estimated,
        prompt_estimate_source: data.prompt_estimate_source.as_str().to_owned(),
        prompt_tokens: data.prompt_tokens,
        completion_tokens: data.completion_tokens,
        total_tokens: data.total_tokens,
        cached_prompt_tokens: data.cached_prompt_tokens,
        usage_source: data.usage_source.as_str().to_owned(),
        latency_ms: data.latency_ms,
        ttfb_ms: data.ttfb_ms,
        started_at_ms: data.started_at_ms,
        finished_at_ms: data.finished_at_ms,
        kafka_partition: at.partition,
        kafka_offset: at.offset,
        ingested_at,
        cost_micros: charge.cost_micros,
        currency: charge.currency().to_owned(),
        price_version: charge.price_version().to_owned(),
        reasoning_tokens: data.reasoning_tokens,
        cache_write_5m_tokens: data.cache_write_5m_tokens,
        cache_write_1h_tokens: data.cache_write_1h_tokens,
        team: data.team.clone().unwrap_or_default(),
        organization: data.organization.clone().unwrap_or_default(),
    })
}

/// The row recording a rejected message.
pub fn rejected_row(
    at: &Position,
    payload: &[u8],
    reason: RejectReason,
    error: &str,
    now: u32,
) -> RejectedRow {
    RejectedRow {
        kafka_topic: at.topic.clone(),
        kafka_partition: at.partition,
        kafka_offset: at.offset,
        payload: String::from_utf8_lossy(payload).into_owned(),
        reason: reason.as_str().to_owned(),
        error: error.to_owned(),
        received_at: now,
    }
}

/// Writes `rows` into `table` in one INSERT. Succeeds only when ClickHouse acknowledged the whole INSERT.
pub async fn insert_all<T>(client: &clickhouse::Client, table: &str, rows: &[T]) -> Result<(), BillingError>
where
    T: clickhouse::RowOwned + clickhouse::RowWrite,
{
    if rows.is_empty() {
        return Ok(());
    }
    let operation = match table {
        USAGE_TABLE => "insert usage_events",
        REJECTED_TABLE => "insert usage_events_rejected",
        _ => "insert rebuilt usage rows",
    };
    let mut insert = client
        .insert::<T>(table)
        .await
        .map_err(BillingError::clickhouse(operation))?;
    for row in rows {
        insert
            .write(row)
            .await
            .map_err(BillingError::clickhouse(operation))?;
    }
    insert.end().await.map_err(BillingError::clickhouse(operation))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_schemas::CloudEvent;
    use tollgate_schemas::usage::{
        Attempt, AttemptError, EstimateSource, Outcome, UsageRecorded, UsageSource,
    };

    const FIXTURE: &str = include_str!("../../../schemas/fixtures/tollgate.usage.v1.json");

    fn at() -> Position {
        Position {
            topic: "tollgate.usage.v1".into(),
            partition: 2,
            offset: 41,
        }
    }

    #[test]
    fn golden_event_maps_every_field() {
        let event: UsageEvent = serde_json::from_str(FIXTURE).unwrap();
        let row = usage_row(&event, &at(), 1_800_000_000, &PriceTable::default()).unwrap();
        let expected = UsageRow {
            event_id: "019a9b8e-4f3c-7a21-9d4e-2b6c1f0e8a57".into(),
            event_time: 1_795_338_902, // 2026-11-22T09:15:02.481Z, truncated to the second
            source: "tollgate-gateway/gw-1".into(),
            request_id: "019a9b8e-4dd0-7c55-8f3b-9e0a6c2d4b18".into(),
            consumer_id: "team-a".into(),
            key_id: "team-a-ci".into(),
            endpoint: "/v1/chat/completions".into(),
            route: "gpt-4o-mini".into(),
            model_requested: "gpt-4o-mini".into(),
            model_served: "gpt-4o-mini-2024-07-18".into(),
            provider: "openai".into(),
            instance: "openai-primary".into(),
            attempts: r#"[{"instance":"vllm-local","status":503,"error":"status","latency_ms":12},{"instance":"openai-primary","status":200,"error":null,"latency_ms":343}]"#.into(),
            attempt_count: 2,
            stream: 0,
            outcome: "ok".into(),
            http_status: 200,
            prompt_tokens_estimated: 21,
            prompt_estimate_source: "meter".into(),
            prompt_tokens: 21,
            completion_tokens: 9,
            total_tokens: 30,
            cached_prompt_tokens: None,
            usage_source: "provider".into(),
            latency_ms: 364,
            ttfb_ms: Some(355),
            started_at_ms: 1_795_338_902_117,
            finished_at_ms: 1_795_338_902_481,
            kafka_partition: 2,
            kafka_offset: 41,
            ingested_at: 1_800_000_000,
            cost_micros: 0,
            currency: String::new(),
            price_version: String::new(),
            reasoning_tokens: None,
            cache_write_5m_tokens: None,
            cache_write_1h_tokens: None,
            team: String::new(),
            organization: String::new(),
        };
        assert_eq!(row, expected);
        // The attempt trail round-trips to what the event carried.
        let back: Vec<Attempt> = serde_json::from_str(&row.attempts).unwrap();
        assert_eq!(back, event.data.attempts);
    }

    fn streamed_event() -> UsageEvent {
        let time = DateTime::parse_from_rfc3339("2026-11-22T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        CloudEvent::new(
            "tollgate-gateway/gw-2",
            "team-b",
            time,
            UsageRecorded {
                request_id: "r-1".into(),
                consumer_id: "team-b".into(),
                team: None,
                organization: None,
                key_id: "k-1".into(),
                endpoint: "/v1/chat/completions".into(),
                route: "llama".into(),
                model_requested: "llama-3".into(),
                model_served: "meta-llama/Llama-3-8B".into(),
                provider: "vllm".into(),
                instance: "vllm-local".into(),
                attempts: vec![Attempt {
                    instance: "vllm-local".into(),
                    status: None,
                    error: Some(AttemptError::Timeout),
                    latency_ms: 5000,
                }],
                stream: true,
                outcome: Outcome::UpstreamCut,
                http_status: 200,
                prompt_tokens_estimated: 12,
                prompt_estimate_source: EstimateSource::Fallback,
                prompt_tokens: 12,
                completion_tokens: 40,
                total_tokens: 52,
                cached_prompt_tokens: Some(8),
                reasoning_tokens: None,
                cache_write_5m_tokens: None,
                cache_write_1h_tokens: None,
                usage_source: UsageSource::Counted,
                latency_ms: 900,
                ttfb_ms: None,
                started_at_ms: 1_795_341_599_100,
                finished_at_ms: 1_795_341_600_000,
            },
        )
    }

    #[test]
    fn options_flags_and_enums_map_to_their_columns() {
        let event = streamed_event();
        let row = usage_row(&event, &at(), 0, &PriceTable::default()).unwrap();
        assert_eq!(row.event_id, event.id.to_string());
        assert_eq!(row.event_time, 1_795_341_600);
        assert_eq!(row.stream, 1);
        assert_eq!(row.outcome, "upstream_cut");
        assert_eq!(row.prompt_estimate_source, "fallback");
        assert_eq!(row.usage_source, "counted");
        assert_eq!(row.cached_prompt_tokens, Some(8));
        assert_eq!(row.ttfb_ms, None);
        assert_eq!(row.attempt_count, 1);
        assert_eq!(
            row.attempts,
            r#"[{"instance":"vllm-local","status":null,"error":"timeout","latency_ms":5000}]"#
        );
    }

    #[test]
    fn the_row_carries_the_price_in_force_for_the_served_model_and_its_cost() {
        let prices = PriceTable::from_toml(
            r#"
            [[prices]]
            model = "meta-llama/Llama-3-8B"
            effective_from = "2026-11-01"
            currency = "EUR"
            input_per_mtok = "2"
            cached_input_per_mtok = "0.5"
            output_per_mtok = "8"

            [[prices]]
            model = "llama-3"
            effective_from = "2026-01-01"
            currency = "USD"
            input_per_mtok = "100"
            output_per_mtok = "100"
            "#,
        )
        .unwrap();
        // Served by meta-llama/Llama-3-8B (llama-3 was requested, at another price): 12 prompt tokens of which 8
        // cached, 40 completion: 4 × 2 + 8 × 0.5 + 40 × 8 = 332 micro-EUR.
        let row = usage_row(&streamed_event(), &at(), 0, &prices).unwrap();
        assert_eq!(
            (row.cost_micros, row.currency.as_str(), row.price_version.as_str()),
            (332, "EUR", "meta-llama/Llama-3-8B@2026-11-01")
        );
        assert!(!row.is_unpriced());

        // Served by a model without a price: unpriced, although the requested model has one.
        let mut other = streamed_event();
        other.data.model_served = "gpt-5".into();
        let row = usage_row(&other, &at(), 0, &prices).unwrap();
        assert_eq!(
            (row.cost_micros, row.currency.as_str(), row.price_version.as_str()),
            (0, "", "")
        );
        assert!(row.is_unpriced());
    }

    #[test]
    fn the_row_is_priced_for_every_token_type_and_the_fee_by_outcome() {
        let prices = PriceTable::from_toml(
            r#"
            [[prices]]
            model = "meta-llama/Llama-3-8B"
            effective_from = "2026-11-01"
            currency = "USD"
            input_per_mtok = "2"
            cached_input_per_mtok = "0.5"
            cache_write_5m_per_mtok = "2.5"
            cache_write_1h_per_mtok = "4"
            output_per_mtok = "8"
            reasoning_per_mtok = "10"
            per_request = "0.0001"
            "#,
        )
        .unwrap();
        // 12 prompt = 8 cached + 3 5-min writes + 1 uncached; 40 completion = 30 output + 10 reasoning:
        // 1 × 2 + 8 × 0.5 + 3 × 2.5 + 30 × 8 + 10 × 10 = 353.5 → 354, + 100 (upstream_cut: a provider answered).
        let mut event = streamed_event();
        event.data.cache_write_5m_tokens = Some(3);
        event.data.reasoning_tokens = Some(10);
        let row = usage_row(&event, &at(), 0, &prices).unwrap();
        assert_eq!(row.cost_micros, 454);
        assert_eq!(
            (
                row.reasoning_tokens,
                row.cache_write_5m_tokens,
                row.cache_write_1h_tokens
            ),
            (Some(10), Some(3), None)
        );
        // Every attempt failed: no fee.
        event.data.outcome = Outcome::UpstreamError;
        assert_eq!(usage_row(&event, &at(), 0, &prices).unwrap().cost_micros, 354);
    }

    #[test]
    fn the_golden_event_is_priced_by_the_family_of_its_dated_snapshot() {
        let event: UsageEvent = serde_json::from_str(FIXTURE).unwrap();
        let prices = PriceTable::from_toml(
            r#"
            [[prices]]
            model = "gpt-4o-mini"
            effective_from = "2024-07-18"
            currency = "USD"
            input_per_mtok = "0.15"
            output_per_mtok = "0.60"
            "#,
        )
        .unwrap();
        // Served by gpt-4o-mini-2024-07-18: 21 × 0.15 + 9 × 0.60 = 8.55 → 9 micro-USD.
        let row = usage_row(&event, &at(), 0, &prices).unwrap();
        assert_eq!(
            (row.cost_micros, row.price_version.as_str()),
            (9, "gpt-4o-mini@2024-07-18")
        );
    }

    #[test]
    fn an_empty_attempt_trail_is_an_empty_json_array() {
        let mut event = streamed_event();
        event.data.attempts.clear();
        let row = usage_row(&event, &at(), 0, &PriceTable::default()).unwrap();
        assert_eq!((row.attempts.as_str(), row.attempt_count), ("[]", 0));
    }

    #[test]
    fn times_before_1970_are_unrepresentable() {
        let mut event = streamed_event();
        event.time = DateTime::parse_from_rfc3339("1969-12-31T23:59:59Z")
            .unwrap()
            .with_timezone(&Utc);
        match usage_row(&event, &at(), 0, &PriceTable::default()) {
            Err(BillingError::Decode { reason, .. }) => assert_eq!(reason, RejectReason::Unrepresentable),
            other => panic!("expected a decode error, got {other:?}"),
        }
    }

    #[test]
    fn rejected_rows_keep_the_payload_and_position() {
        let row = rejected_row(
            &at(),
            b"{not json\xff",
            RejectReason::InvalidJson,
            "expected value",
            7,
        );
        assert_eq!(row.kafka_topic, "tollgate.usage.v1");
        assert_eq!(
            (row.kafka_partition, row.kafka_offset, row.received_at),
            (2, 41, 7)
        );
        assert_eq!(row.payload, "{not json\u{fffd}");
        assert_eq!(
            (row.reason.as_str(), row.error.as_str()),
            ("invalid_json", "expected value")
        );
    }
}
