//! billing-consumer: Tollgate's ledger. It reads `tollgate.usage.v1` events from Kafka in a consumer group,
//! prices each one from a versioned price table, writes them to ClickHouse in batches, commits offsets only
//! after ClickHouse acknowledged a batch, and reports usage and invoices from what it wrote. It can replay the
//! topic to audit the ledger, or to rebuild a time range of it. Beside that, it is the single writer of quota
//! state: it counts the same events into token-limit windows and publishes them on `tollgate.quota.v1` for the
//! gateways.
//!
//! A tour, in the order data flows:
//!
//! - [`cli`] — the command line (`migrate`, `run`, `quota`, `usage`, `invoice`, `audit`, `rebuild`,
//!   `reingest-rejected`, `check-prices`) and how it becomes settings.
//! - [`settings`] — plain settings structs and the ClickHouse client they build.
//! - [`topics`] — creates the usage topic and the compacted quota topic when they do not exist yet.
//! - [`migrations`] — versioned, checksummed SQL embedded from `migrations/`, applied in order.
//! - [`pricing`] — the price file, its versions, and the cost of one event in integer micro-units (pure).
//! - [`kafka`] — the consumer (manual commits, earliest reset) and the commit of a written batch.
//! - [`ingest`] — the loop: collect a batch, price and write it, commit it; retry ClickHouse failures, never
//!   skip. [`ingest::batch`] decodes messages and computes the offsets to commit; [`ingest::lag`] measures the
//!   group's lag.
//! - [`store`] — the `usage_events` / `usage_events_rejected` rows, the event → row mapping and the INSERTs.
//! - [`report`] — per-model usage of one consumer, read with `FINAL`; `--since` parsing; table and JSON output.
//! - [`invoice`] — one consumer's calendar month: line items per model and price version, totals per currency;
//!   table, JSON and CSV. [`table`] aligns the text tables.
//! - [`reader`] — the usage topic read outside any group from a point in Kafka time up to the high watermarks,
//!   with the broker's offsets-by-time quirks handled; used by the quota loop and by [`replay`], which reads a
//!   time range in chunks with a progress bar.
//! - [`audit`] — recomputes a range from Kafka ([`audit::tally`], pure) and compares it with ClickHouse
//!   ([`audit::report`]): every differing field, then the events that differ.
//! - [`rebuild`] — re-ingests a range from Kafka into a fresh table like `usage_events`, with today's prices.
//! - [`reingest`] — `reingest-rejected`: decodes the kept rejected messages again with the current reader and
//!   bills those that decode now, idempotently.
//! - [`quota`] — the quota loop: rebuild the windows from the usage topic, then count live events and publish
//!   changed snapshots and heartbeats. [`quota::policy`] reads the scopes from the gateway's TOML (or the config
//!   topic's resources), [`quota::windows`] is the counting (pure), [`quota::publisher`] writes the quota topic.
//! - [`config_topic`] — with `--config-topic`, follows the admin API's `tollgate.config.v1`: its limits replace
//!   the gateway file's for the quota loop, live, and its price versions join the price file's for ingest.
//!   [`config_topic::resources`] is the resource map the topic's changes build (pure).
//! - [`metrics`] — every metric, described once; the Prometheus recorder. [`endpoint`] serves it and
//!   [`readiness`] (`GET /readyz`: whether ingest and the quota loop reach the broker and ClickHouse).
//! - [`error`] — [`BillingError`], the one error type, with a bounded `kind()`.
//!
//! Exactly-once in the ledger comes from the data, not the transport: Kafka redelivers after a crash or a
//! rebalance, and `usage_events` is a ReplacingMergeTree keyed by the event id, read with `FINAL`. Costs are
//! computed from the event alone, so every delivery of an event carries the same cost, and invoices are sums of
//! stored per-event costs that the audit reproduces from Kafka to the micro-unit.

pub mod audit;
pub mod cli;
pub mod config_topic;
pub mod endpoint;
pub mod error;
pub mod ingest;
pub mod invoice;
pub mod kafka;
pub mod metrics;
pub mod migrations;
pub mod pricing;
pub mod quota;
pub mod reader;
pub mod readiness;
pub mod rebuild;
pub mod reingest;
pub mod replay;
pub mod report;
pub mod service;
pub mod settings;
pub mod stall;
pub mod store;
pub mod table;
pub mod topics;

pub use error::BillingError;
