//! Rebuilding a time range of the ledger from Kafka into a fresh table: `CREATE TABLE NAME AS usage_events`
//! (same columns, engine, sorting and partition keys), then every event of the usage topic whose
//! `finished_at_ms` is in `[from, to)` — replayed like the audit does ([`crate::replay`]), decoded and turned
//! into rows exactly as ingest does ([`crate::ingest::batch::decode`], [`crate::ledger::store::usage_row`]), priced with
//! the price table given now for the model that served each event — inserted in batches, each event id once.
//! On a ClickHouse cluster the new table is laid out as `usage_events` is ([`crate::ledger::layout::create_like`]):
//! `NAME_local` on every shard, under its own replication path, and `NAME` over them, sharded by consumer (a
//! `REPLACE PARTITION` then goes between the `_local` tables, on each shard).
//! The served models left unpriced are logged once, at the end, and listed in the summary.
//!
//! The table must not exist: a rebuild never writes into a table that holds anything else. If an INSERT fails
//! the rebuild stops with the error and the partial table stays for inspection; drop it and run again. Uses: a
//! re-priced copy of a month to compare (`invoice --table`, `audit --table`) or to swap in for a closed month
//! (`ALTER TABLE usage_events REPLACE PARTITION 202611 FROM NAME`, which 18.16 supports), and a ledger
//! recovered from the topic.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::error::BillingError;
use crate::ingest::batch::decode;
use crate::ledger::pricing::PriceTable;
use crate::ledger::store::{self, Position, UsageRow};
use crate::ledger::{ClickHouseSettings, layout, plain_identifier};
use crate::replay::Replay;
use crate::replay::ReplayRange;

/// Everything [`run`] needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuildSettings {
    /// The events to rebuild and where on the usage topic they are read.
    pub range: ReplayRange,
    /// The ledger database (must be migrated: `usage_events` is the template).
    pub clickhouse: ClickHouseSettings,
    /// The table to create and fill; must not exist.
    pub table: String,
    /// Prices for the rows (an empty table stores every row unpriced).
    pub prices: Arc<PriceTable>,
    /// Rows per INSERT.
    pub batch_size: usize,
}

impl RebuildSettings {
    /// Rows per INSERT unless told otherwise.
    pub const DEFAULT_BATCH_SIZE: usize = 50_000;

    /// Settings with the default margin and batch size.
    pub fn new(
        kafka: impl Into<tollgate_plumbing::kafka::KafkaConnection>,
        topic: impl Into<String>,
        clickhouse: ClickHouseSettings,
        table: impl Into<String>,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        prices: Arc<PriceTable>,
    ) -> Self {
        Self {
            range: ReplayRange::new(kafka, topic, from, to),
            clickhouse,
            table: table.into(),
            prices,
            batch_size: Self::DEFAULT_BATCH_SIZE,
        }
    }
}

/// What a rebuild did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RebuildSummary {
    /// The table written, `database.table`.
    pub table: String,
    /// Messages read from Kafka.
    pub messages: u64,
    /// Rows written: the distinct events of the range.
    pub rows: u64,
    /// Messages repeating an event id written before.
    pub duplicates: u64,
    /// Events outside the range.
    pub outside_range: u64,
    /// Messages that are not usage events (ingest keeps those in `usage_events_rejected`; a rebuild skips them).
    pub undecodable: u64,
    /// Rows with no price in force.
    pub unpriced: u64,
    /// The served models (`model_served`) of those rows, sorted.
    pub unpriced_models: Vec<String>,
    /// Seconds the whole rebuild took.
    pub seconds: f64,
}

/// Creates `settings.table` like `usage_events` and fills it with the range's events from Kafka.
pub async fn run(settings: &RebuildSettings) -> Result<RebuildSummary, BillingError> {
    let started = Instant::now();
    let table = plain_identifier(&settings.table, "table")?;
    let (from_ms, to_ms) = settings.range.ms()?;
    let client = settings.clickhouse.client();
    let existing: u64 = client
        .query("SELECT count() FROM system.tables WHERE database = ? AND name IN (?, ?)")
        .bind(settings.clickhouse.database.as_str())
        .bind(table)
        .bind(format!("{table}{}", layout::LOCAL_SUFFIX))
        .fetch_one()
        .await
        .map_err(BillingError::clickhouse("look up the rebuild table"))?;
    if existing > 0 {
        return Err(BillingError::Config {
            setting: "table",
            reason: format!(
                "`{}.{table}` exists; a rebuild writes a fresh table: drop it or choose another name",
                settings.clickhouse.database
            ),
        });
    }
    let mut replay = Replay::open(&settings.range, "rebuild").await?;
    // On a cluster: `<table>_local` on every shard under its own replication path, `<table>` over them.
    let layout = settings.clickhouse.layout()?;
    for statement in layout::create_like(table, store::USAGE_TABLE, &layout)? {
        client
            .query(&statement)
            .execute()
            .await
            .map_err(BillingError::clickhouse("create the rebuild table"))?;
    }
    tracing::info!(
        table = %format!("{}.{table}", settings.clickhouse.database),
        topic = %settings.range.topic,
        from = %settings.range.from.to_rfc3339(),
        to = %settings.range.to.to_rfc3339(),
        price_versions = settings.prices.versions().len(),
        messages_to_read = replay.to_read(),
        "Rebuild started."
    );

    let mut summary = RebuildSummary {
        table: format!("{}.{table}", settings.clickhouse.database),
        messages: 0,
        rows: 0,
        duplicates: 0,
        outside_range: 0,
        undecodable: 0,
        unpriced: 0,
        unpriced_models: Vec::new(),
        seconds: 0.0,
    };
    let now = store::datetime_seconds(Utc::now()).unwrap_or(u32::MAX);
    let mut seen: HashSet<u128> = HashSet::new();
    let mut unpriced_models = BTreeSet::new();
    let mut rows: Vec<UsageRow> = Vec::with_capacity(settings.batch_size.max(1));
    loop {
        let more = replay
            .read(settings.batch_size.max(1), |partition, offset, payload| {
                summary.messages += 1;
                let Ok(event) = decode(payload) else {
                    summary.undecodable += 1;
                    return;
                };
                let finished = event.data.finished_at_ms;
                if finished < from_ms || finished >= to_ms {
                    summary.outside_range += 1;
                    return;
                }
                if !seen.insert(event.id.as_u128()) {
                    summary.duplicates += 1;
                    return;
                }
                let at = Position {
                    topic: settings.range.topic.clone(),
                    partition,
                    offset,
                };
                match store::usage_row(&event, &at, now, &settings.prices) {
                    Ok(row) => {
                        if row.is_unpriced() {
                            summary.unpriced += 1;
                            if !unpriced_models.contains(&row.model_served) {
                                unpriced_models.insert(row.model_served.clone());
                            }
                        }
                        rows.push(row);
                    }
                    Err(_) => summary.undecodable += 1,
                }
            })
            .await?;
        store::insert_all(&client, table, &rows).await?;
        summary.rows += rows.len() as u64;
        rows.clear();
        if !more {
            break;
        }
    }
    replay.finish();
    summary.seconds = started.elapsed().as_secs_f64();
    if !unpriced_models.is_empty() {
        tracing::warn!(
            models_served = ?unpriced_models,
            rows = summary.unpriced,
            "Some rows had no price in force for their served model (nor its family); they are stored with cost 0."
        );
    }
    summary.unpriced_models = unpriced_models.into_iter().collect();
    tracing::info!(
        table = %summary.table,
        messages = summary.messages,
        rows = summary.rows,
        duplicates = summary.duplicates,
        outside_range = summary.outside_range,
        undecodable = summary.undecodable,
        unpriced = summary.unpriced,
        seconds = summary.seconds,
        "Rebuild finished."
    );
    Ok(summary)
}
