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
//!   `reingest-rejected`, `check-prices`) and how it becomes settings; [`service`] — `run`'s wiring (topics,
//!   migrations, ingest, the quota loop, the config follower, the endpoint), which `main` and the end-to-end
//!   stack both run.
//! - [`kafka`] — the ingest consumer (manual commits, earliest reset) and the commit of a written batch;
//!   [`kafka::topics`] creates the usage topic and the compacted quota topic; [`kafka::reader`] reads the usage
//!   topic outside any group from a point in Kafka time up to the high watermarks (the quota loop and
//!   [`replay`] use it); [`kafka::stall`] makes a group member that holds nothing while work stands still join
//!   again.
//! - [`ingest`] — the loop: collect a batch, price and write it, commit it; retry ClickHouse failures, never
//!   skip. [`ingest::batch`] decodes messages and computes the offsets to commit; [`ingest::lag`] measures the
//!   group's lag.
//! - [`ledger`] — ClickHouse: [`ledger::migrations`] (versioned, checksummed SQL embedded from `migrations/`),
//!   [`ledger::pricing`] (the price file, its versions, the cost of one event in integer micro-units; pure),
//!   [`ledger::store`] (the rows, the event → row mapping and the INSERTs), [`ledger::reingest`]
//!   (`reingest-rejected`: bills the kept rejected messages that the current reader decodes, idempotently).
//! - [`reports`] — [`reports::usage`] (per-model usage of one consumer, read with `FINAL`) and
//!   [`reports::invoice`] (one consumer's month: line items per model and price version, totals per currency;
//!   table, JSON and CSV).
//! - [`replay`] — a time range of the usage topic read back in chunks ([`replay::ReplayRange`]):
//!   [`replay::audit`] recomputes it and compares it with ClickHouse, [`replay::rebuild`] re-ingests it into a
//!   fresh table with today's prices.
//! - [`quota`] — the quota loop: rebuild the windows from the usage topic, then count live events and publish
//!   changed snapshots and heartbeats. [`quota::policy`] reads the scopes from the gateway's TOML (or the config
//!   topic's resources), [`quota::windows`] is the counting (pure), [`quota::publisher`] writes the quota topic,
//!   [`quota::lease`] decides which loop publishes.
//! - [`alerts`] — threshold alerts: the quota loop hands it each snapshot it publishes; a threshold crossed (50,
//!   80, 100 % by default) is POSTed once to a signed webhook, with what was sent kept on the compacted alerts
//!   topic so that restarts and lease moves never send it twice.
//! - [`config_topic`] — with `--config-topic`, follows the admin API's `tollgate.config.v1`: its limits replace
//!   the gateway file's for the quota loop, live, and its price versions join the price file's for ingest.
//!   [`config_topic::resources`] is the resource map the topic's changes build (pure).
//! - [`telemetry`] — every metric, described once, and the Prometheus recorder; the endpoint that serves it and
//!   `GET /readyz` (whether ingest and the quota loop reach the broker and ClickHouse).
//! - [`error`] — [`BillingError`], the one error type, with a bounded `kind()`.
//!
//! Exactly-once in the ledger comes from the data, not the transport: Kafka redelivers after a crash or a
//! rebalance, and `usage_events` is a ReplacingMergeTree keyed by the event id, read with `FINAL`. Costs are
//! computed from the event alone, so every delivery of an event carries the same cost, and invoices are sums of
//! stored per-event costs that the audit reproduces from Kafka to the micro-unit.

pub mod alerts;
pub mod cli;
pub mod config_topic;
pub mod error;
pub mod ingest;
pub mod kafka;
pub mod ledger;
pub mod quota;
pub mod replay;
pub mod reports;
pub mod service;
pub mod telemetry;

pub use error::BillingError;
