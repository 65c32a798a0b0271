//! billing-consumer: Tollgate's ledger. It reads `tollgate.usage.v1` events from Kafka in a consumer group,
//! writes them to ClickHouse in batches, commits offsets only after ClickHouse acknowledged a batch, and reports
//! usage from what it wrote. Beside that, it is the single writer of quota state: it counts the same events into
//! token-limit windows and publishes them on `tollgate.quota.v1` for the gateways.
//!
//! A tour, in the order data flows:
//!
//! - [`cli`] — the command line (`migrate`, `run`, `quota`, `usage`) and how it becomes settings.
//! - [`settings`] — plain settings structs and the ClickHouse client they build.
//! - [`topics`] — creates the usage topic and the compacted quota topic when they do not exist yet.
//! - [`migrations`] — versioned, checksummed SQL embedded from `migrations/`, applied in order.
//! - [`kafka`] — the consumer (manual commits, earliest reset) and the commit of a written batch.
//! - [`ingest`] — the loop: collect a batch, write it, commit it; retry ClickHouse failures, never skip.
//!   [`ingest::batch`] decodes messages and computes the offsets to commit.
//! - [`store`] — the `usage_events` / `usage_events_rejected` rows, the event → row mapping and the INSERTs.
//! - [`report`] — per-model usage of one consumer, read with `FINAL`; `--since` parsing; table and JSON output.
//! - [`quota`] — the quota loop: rebuild the windows from the usage topic, then count live events and publish
//!   changed snapshots and heartbeats. [`quota::policy`] reads the scopes from the gateway's TOML,
//!   [`quota::windows`] is the counting (pure), [`quota::reader`] positions the consumer at the rebuild point,
//!   [`quota::publisher`] writes the quota topic.
//! - [`metrics`] — every metric, described once; the Prometheus exporter.
//! - [`error`] — [`BillingError`], the one error type, with a bounded `kind()`.
//!
//! Exactly-once in the ledger comes from the data, not the transport: Kafka redelivers after a crash or a
//! rebalance, and `usage_events` is a ReplacingMergeTree keyed by the event id, read with `FINAL`.
//!
//! Still to come, each in its own module beside these: pricing from a versioned price table, invoices and the
//! replay audit.

pub mod cli;
pub mod error;
pub mod ingest;
pub mod kafka;
pub mod metrics;
pub mod migrations;
pub mod quota;
pub mod report;
pub mod settings;
pub mod store;
pub mod topics;

pub use error::BillingError;
