-- usage_events_rejected: Kafka messages on the usage topic that could not be decoded as a `tollgate.usage.v1`
-- event. They are kept verbatim (payload) with the decoder's error so that nothing disappears silently, they are
-- counted (billing_events_rejected_total{reason}), and their offsets are committed like any other message, so a
-- malformed message never blocks its partition.
--
-- ORDER BY (kafka_topic, kafka_partition, kafka_offset): a message's position identifies it, so a batch that is
-- redelivered after a crash collapses to one row per message (ReplacingMergeTree; read with FINAL to count).
--
-- PARTITION BY toYYYYMM(received_at): rejected messages are inspected and purged by month.
CREATE TABLE IF NOT EXISTS usage_events_rejected
(
    kafka_topic String,
    kafka_partition Int32,
    kafka_offset Int64,
    payload String,
    reason String,
    error String,
    received_at DateTime
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(received_at)
ORDER BY (kafka_topic, kafka_partition, kafka_offset);
