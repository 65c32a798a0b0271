-- usage_events: one row per `tollgate.usage.v1` event, the ledger that invoices and audits read.
--
-- ORDER BY (consumer_id, event_time, event_id): every billing query filters on one consumer and a time range,
-- so those lead the sorting key; event_id closes it so that the key identifies one event.
--
-- PARTITION BY toYYYYMM(event_time): invoices are monthly, so a month is the unit that is read, re-priced,
-- dropped or re-ingested; a month of one installation stays a few partitions, never thousands.
--
-- Deduplication: ClickHouse 18.16 has no insert deduplication for non-replicated tables, and Kafka delivers at
-- least once (a crash between the INSERT and the offset commit, or a rebalance, redelivers a batch). Exactly-once
-- comes from the table instead: ReplacingMergeTree collapses rows with the same sorting key, and a redelivered
-- event carries the same id, consumer and time, so it has the same key and lands in the same partition. Merges
-- happen in the background, so every read that bills uses FINAL (or groups by event_id) to see one row per event.
CREATE TABLE IF NOT EXISTS usage_events
(
    event_id String,
    event_time DateTime,
    source String,
    request_id String,
    consumer_id String,
    key_id String,
    endpoint String,
    route String,
    model_requested String,
    model_served String,
    provider String,
    instance String,
    attempts String,
    attempt_count UInt16,
    stream UInt8,
    outcome String,
    http_status UInt16,
    prompt_tokens_estimated UInt32,
    prompt_estimate_source String,
    prompt_tokens UInt32,
    completion_tokens UInt32,
    total_tokens UInt32,
    cached_prompt_tokens Nullable(UInt32),
    usage_source String,
    latency_ms UInt32,
    ttfb_ms Nullable(UInt32),
    started_at_ms UInt64,
    finished_at_ms UInt64,
    kafka_partition Int32,
    kafka_offset Int64,
    ingested_at DateTime
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (consumer_id, event_time, event_id);
