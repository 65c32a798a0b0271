//! Every metric billing-consumer exports, named and described once in [`describe`], and the Prometheus
//! exporter's HTTP listener. Units are base units (seconds, events); labels are bounded (`reason` is a
//! [`crate::error::RejectReason`]).

use std::net::SocketAddr;

use metrics::{Unit, describe_counter, describe_histogram};
use metrics_exporter_prometheus::PrometheusBuilder;

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

    for counter in [
        EVENTS_INGESTED,
        BATCHES_INSERTED,
        INSERT_FAILURES,
        COMMIT_FAILURES,
        CONSUME_ERRORS,
        DUPLICATES_IN_BATCH,
    ] {
        metrics::counter!(counter).increment(0);
    }
    for reason in RejectReason::ALL {
        metrics::counter!(EVENTS_REJECTED, "reason" => reason.as_str()).increment(0);
    }
}

/// Installs the Prometheus recorder with its HTTP listener on `listen` and describes the metrics.
/// Must be called within a tokio runtime.
pub fn install_exporter(listen: SocketAddr) -> Result<(), BillingError> {
    PrometheusBuilder::new()
        .with_http_listener(listen)
        .install()
        .map_err(|e| BillingError::Metrics(e.to_string()))?;
    describe();
    Ok(())
}
