//! Every metric billing-consumer exports, named and described once in [`describe`], and the Prometheus
//! exporter's HTTP listener. Units are base units (seconds, events); labels are bounded (`reason` is a
//! [`crate::error::RejectReason`], `kind` a resource kind; no metric is labelled by model or consumer). Ingest's
//! metrics start with `billing_`, the quota loop's with `billing_quota_`, the config follower's with
//! `billing_config_`. The one-shot commands (`invoice`, `audit`, `rebuild`)
//! export nothing: they log what they did and print their result.

use std::net::SocketAddr;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::Matcher;

/// Buckets of every `_seconds` histogram: a millisecond to two minutes.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

use crate::error::{BillingError, RejectReason};

/// Usage events written to `usage_events` (counted once ClickHouse acknowledged them).
pub const EVENTS_INGESTED: &str = "billing_events_ingested_total";
/// Messages written to `usage_events_rejected`, by `reason`.
pub const EVENTS_REJECTED: &str = "billing_events_rejected_total";
/// Batches written to ClickHouse.
pub const BATCHES_INSERTED: &str = "billing_batches_inserted_total";
/// Duration of a batch's INSERTs that succeeded.
pub const INSERT_DURATION: &str = "billing_insert_duration_seconds";
/// INSERT attempts that failed (each is retried).
pub const INSERT_FAILURES: &str = "billing_insert_failures_total";
/// Messages per batch.
pub const BATCH_SIZE: &str = "billing_batch_size_events";
/// Offset commits that failed after a successful INSERT (the batch will be redelivered and deduplicated).
pub const COMMIT_FAILURES: &str = "billing_commit_failures_total";
/// Errors returned by the Kafka consumer while reading.
pub const CONSUME_ERRORS: &str = "billing_consume_errors_total";
/// Events dropped inside one batch because their id already appeared earlier in that batch.
pub const DUPLICATES_IN_BATCH: &str = "billing_duplicate_events_in_batch_total";
/// Usage events written with no price in force for their served model (nor its family) at their time (cost 0).
/// No model label: the served models are logged once each instead, so the label set cannot grow with what
/// upstreams answer.
pub const EVENTS_UNPRICED: &str = "billing_events_unpriced_total";
/// Distinct served models this process has stored unpriced events of since it started (each also logged once at
/// warn level), at most [`crate::ingest::UnpricedLog::MAX_MODELS`]. Goes up when a new model is missing from the
/// price table; an alert on unpriced usage watches this and `billing_events_unpriced_total`.
pub const UNPRICED_MODELS: &str = "billing_unpriced_models";
/// Messages of the usage topic not yet committed by the ingest group: high watermark − committed offset, summed
/// over the topic's partitions.
pub const CONSUMER_LAG: &str = "billing_consumer_lag_events";

/// Usage events the quota loop counted (in every scope they match, possibly none).
pub const QUOTA_EVENTS_APPLIED: &str = "billing_quota_events_applied_total";
/// Usage events the quota loop skipped because their id was counted before.
pub const QUOTA_EVENTS_DUPLICATE: &str = "billing_quota_events_duplicate_total";
/// Messages on the usage topic the quota loop could not decode, by `reason`.
pub const QUOTA_EVENTS_UNDECODABLE: &str = "billing_quota_events_undecodable_total";
/// Usage events ingested whose time is more than 5 min ahead of their Kafka timestamp (stored with their own time).
pub const EVENTS_CLOCK_SKEW: &str = "billing_events_clock_skew_total";
/// Usage events whose time was too far ahead of their broker timestamp; the quota loop counted them at the
/// broker's time.
pub const QUOTA_CLOCK_SKEW_EVENTS: &str = "billing_quota_clock_skew_events_total";
/// 1 while this process's quota loop holds the lease (it alone publishes), 0 while it is a standby.
pub const QUOTA_LEASE_HELD: &str = "billing_quota_lease_held";
/// Start-up steps tried again because the broker or ClickHouse could not be reached yet, by `step`.
pub const STARTUP_RETRIES: &str = "billing_startup_retries_total";
/// Times the ingest consumer left its group and joined again because it held no partition while nobody committed
/// and events waited (an orphaned group).
pub const INGEST_REJOINS: &str = "billing_ingest_rejoins_total";
/// Times this quota loop left the lease group and joined again because nobody published while it did not hold the
/// lease (an orphaned lease).
pub const QUOTA_LEASE_REJOINS: &str = "billing_quota_lease_rejoins_total";
/// Quota snapshots delivered to the quota topic.
pub const QUOTA_SNAPSHOTS_PUBLISHED: &str = "billing_quota_snapshots_published_total";
/// Quota snapshots that could not be delivered (each is published again).
pub const QUOTA_PUBLISH_FAILURES: &str = "billing_quota_publish_failures_total";
/// Scopes the quota loop computes.
pub const QUOTA_SCOPES: &str = "billing_quota_scopes";
/// How long the last rebuild of the quota windows from the usage topic took.
pub const QUOTA_REBUILD_DURATION: &str = "billing_quota_rebuild_duration_seconds";
/// Heartbeats delivered to the quota topic.
pub const QUOTA_HEARTBEATS: &str = "billing_quota_heartbeats_total";
/// Per live snapshot: its delivery time minus the Kafka timestamp of the newest event it counts.
pub const QUOTA_LAG: &str = "billing_quota_lag_seconds";

/// Threshold alerts delivered to the webhook (2xx), by `kind` (token_quota, budget) and `threshold` (percent, one
/// of the configured thresholds).
pub const ALERTS_SENT: &str = "billing_alerts_sent_total";
/// Threshold alerts not delivered, by `reason`: `rejected` (a 4xx other than 429) or `gave_up` (every attempt
/// failed).
pub const ALERTS_FAILED: &str = "billing_alerts_failed_total";
/// From an alert's first attempt to its 2xx, retries included.
pub const ALERT_DELIVERY_DURATION: &str = "billing_alert_delivery_seconds";
/// Writes to the alerts topic that failed (each is tried again).
pub const ALERT_RECORD_FAILURES: &str = "billing_alert_record_failures_total";
/// Usage of each token limit's current window over its limit, by `scope` (the configured scopes only).
pub const QUOTA_USED_RATIO: &str = "billing_quota_used_ratio";

/// Kafka producers replaced by a new idempotent session after a failed send, by `producer` (`quota`).
pub const KAFKA_PRODUCER_RENEWALS: &str = "billing_kafka_producer_renewals_total";

/// Changes of the config topic applied (puts, deletes, and tombstones that removed a resource), by `kind`.
pub const CONFIG_CHANGES: &str = "billing_config_changes_total";
/// The offset of the last config topic message whose change is in effect (in the price table and the quota
/// policy).
pub const CONFIG_VERSION: &str = "billing_config_version";

/// Describes every metric to the installed recorder and registers the counters at zero, so that a scrape
/// before the first batch already shows them. Call once at start-up.
pub fn describe() {
    describe_counter!(
        EVENTS_INGESTED,
        Unit::Count,
        "Usage events written to ClickHouse."
    );
    describe_counter!(
        EVENTS_REJECTED,
        Unit::Count,
        "Messages that are not usage events, kept in usage_events_rejected, by reason."
    );
    describe_counter!(BATCHES_INSERTED, Unit::Count, "Batches written to ClickHouse.");
    describe_histogram!(
        INSERT_DURATION,
        Unit::Seconds,
        "Time to write one batch to ClickHouse."
    );
    describe_counter!(
        INSERT_FAILURES,
        Unit::Count,
        "Failed batch INSERTs (retried with backoff)."
    );
    describe_histogram!(BATCH_SIZE, Unit::Count, "Kafka messages per batch.");
    describe_counter!(
        KAFKA_PRODUCER_RENEWALS,
        Unit::Count,
        "Kafka producers replaced by a new idempotent session after a failed send, by producer."
    );
    describe_counter!(
        COMMIT_FAILURES,
        Unit::Count,
        "Offset commits that failed after the batch was written (it will be redelivered and deduplicated)."
    );
    describe_counter!(
        CONSUME_ERRORS,
        Unit::Count,
        "Errors from the Kafka consumer while reading."
    );
    describe_counter!(
        DUPLICATES_IN_BATCH,
        Unit::Count,
        "Events whose id appeared twice within one batch; written once."
    );
    describe_counter!(
        EVENTS_UNPRICED,
        Unit::Count,
        "Usage events written with no price in force for their served model at their time (stored with cost 0)."
    );
    describe_gauge!(
        UNPRICED_MODELS,
        Unit::Count,
        "Distinct served models this process stored unpriced events of since it started (each logged once)."
    );
    metrics::gauge!(UNPRICED_MODELS).set(0.0);
    describe_gauge!(
        CONSUMER_LAG,
        Unit::Count,
        "Messages of the usage topic the ingest group has not committed yet, summed over partitions."
    );

    describe_counter!(
        QUOTA_EVENTS_APPLIED,
        Unit::Count,
        "Usage events the quota loop counted, in every scope they match (possibly none)."
    );
    describe_counter!(
        QUOTA_EVENTS_DUPLICATE,
        Unit::Count,
        "Usage events the quota loop skipped because their id was counted before."
    );
    describe_counter!(
        QUOTA_EVENTS_UNDECODABLE,
        Unit::Count,
        "Messages on the usage topic the quota loop could not decode and skipped, by reason."
    );
    describe_counter!(
        EVENTS_CLOCK_SKEW,
        Unit::Count,
        "Usage events ingested whose time is more than 5 min ahead of their Kafka timestamp (a gateway's clock is \
         ahead); stored with their own time."
    );
    describe_counter!(
        QUOTA_CLOCK_SKEW_EVENTS,
        Unit::Count,
        "Usage events whose time was more than the clock-skew bound ahead of their broker timestamp; counted \
         at the broker's time."
    );
    describe_counter!(
        STARTUP_RETRIES,
        Unit::Count,
        "Start-up steps (topics, migrations) tried again because the broker or ClickHouse could not be reached yet."
    );
    describe_counter!(
        INGEST_REJOINS,
        Unit::Count,
        "Times the ingest consumer joined its group again because it held no partition while nobody committed and events waited."
    );
    describe_counter!(
        QUOTA_LEASE_REJOINS,
        Unit::Count,
        "Times this quota loop joined the lease group again because nobody published on the quota topic while it did not hold the lease."
    );
    describe_gauge!(
        QUOTA_LEASE_HELD,
        Unit::Count,
        "1 while this quota loop holds the lease and publishes; 0 while it counts as a standby and publishes nothing."
    );
    describe_counter!(
        QUOTA_SNAPSHOTS_PUBLISHED,
        Unit::Count,
        "Quota snapshots delivered to the quota topic."
    );
    describe_counter!(
        QUOTA_PUBLISH_FAILURES,
        Unit::Count,
        "Quota snapshots that could not be delivered (each is published again)."
    );
    describe_gauge!(QUOTA_SCOPES, Unit::Count, "Quota scopes being computed.");
    describe_gauge!(
        QUOTA_REBUILD_DURATION,
        Unit::Seconds,
        "Time the last rebuild of the quota windows from the usage topic took."
    );
    describe_counter!(
        QUOTA_HEARTBEATS,
        Unit::Count,
        "Heartbeats delivered to the quota topic."
    );
    describe_histogram!(
        QUOTA_LAG,
        Unit::Seconds,
        "Delivery time of a live quota snapshot minus the Kafka timestamp of the newest event it counts."
    );

    describe_counter!(
        ALERTS_SENT,
        Unit::Count,
        "Threshold alerts delivered to the webhook (2xx), by kind and threshold (percent)."
    );
    describe_counter!(
        ALERTS_FAILED,
        Unit::Count,
        "Threshold alerts not delivered, by reason (rejected: a 4xx other than 429; gave_up: every attempt failed)."
    );
    describe_histogram!(
        ALERT_DELIVERY_DURATION,
        Unit::Seconds,
        "Time from an alert's first delivery attempt to its 2xx, retries included."
    );
    describe_counter!(
        ALERT_RECORD_FAILURES,
        Unit::Count,
        "Writes to the alerts topic that failed (each is tried again)."
    );
    describe_gauge!(
        QUOTA_USED_RATIO,
        Unit::Count,
        "Usage of each token limit's current window over its limit (1 = used up), by scope."
    );

    describe_counter!(
        CONFIG_CHANGES,
        Unit::Count,
        "Changes of the config topic applied (puts, deletes, tombstones that removed a resource), by kind."
    );
    describe_gauge!(
        CONFIG_VERSION,
        Unit::Count,
        "Offset of the last config topic message in effect (prices and quota policy)."
    );

    for counter in [
        EVENTS_INGESTED,
        BATCHES_INSERTED,
        INSERT_FAILURES,
        COMMIT_FAILURES,
        CONSUME_ERRORS,
        DUPLICATES_IN_BATCH,
        EVENTS_UNPRICED,
        QUOTA_EVENTS_APPLIED,
        QUOTA_EVENTS_DUPLICATE,
        QUOTA_SNAPSHOTS_PUBLISHED,
        QUOTA_PUBLISH_FAILURES,
        QUOTA_HEARTBEATS,
        ALERT_RECORD_FAILURES,
    ] {
        metrics::counter!(counter).increment(0);
    }
    for kind in tollgate_schemas::config::ResourceKind::ALL {
        metrics::counter!(CONFIG_CHANGES, "kind" => kind.as_str()).increment(0);
    }
    for reason in ["rejected", "gave_up"] {
        metrics::counter!(ALERTS_FAILED, "reason" => reason).increment(0);
    }
    for reason in RejectReason::ALL {
        metrics::counter!(EVENTS_REJECTED, "reason" => reason.as_str()).increment(0);
        metrics::counter!(QUOTA_EVENTS_UNDECODABLE, "reason" => reason.as_str()).increment(0);
    }
}

/// Installs the Prometheus recorder (with its upkeep), describes the metrics and serves them with the readiness
/// on `listen` ([`crate::telemetry::endpoint`]). Must be called within a tokio runtime.
pub async fn install_exporter(
    listen: SocketAddr,
    ledger: Option<crate::ledger::ClickHouseSettings>,
) -> Result<(), BillingError> {
    // Histograms, not summaries: p99 can then be aggregated across replicas.
    let handle = tollgate_plumbing::telemetry::install_prometheus(
        &[(Matcher::Suffix("_seconds".to_owned()), SECONDS_BUCKETS)],
        "billing-metrics-upkeep",
    )
    .map_err(|e| BillingError::Metrics(e.to_string()))?;
    describe();
    crate::telemetry::endpoint::serve(listen, handle, ledger).await
}
