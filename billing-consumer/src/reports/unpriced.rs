//! Unpriced events read from the ledger: per served model (`model_served`), the events stored with no price in
//! force (`unpriced`, migration 0007: `price_version = ''`) in a time range, with their first and last event
//! time and the consumers they belong to — what a price table is missing, and the input of an alert on unpriced
//! usage ([`unpriced_models`]; live, ingest's `billing_events_unpriced_total` and `billing_unpriced_models` say
//! the same without a query).
//!
//! Fixing it: add a price version for the model (or its family) in force from before the first event, and
//! re-price the range (`rebuild`, then swap); the audit with the new price file then agrees with the ledger.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::error::BillingError;
use crate::ledger::{ClickHouseSettings, plain_identifier};

/// One served model's unpriced events in the range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, clickhouse::Row)]
pub struct UnpricedModel {
    /// The served model (`model_served`) no price was in force for.
    pub model: String,
    /// Its unpriced events (each once).
    pub events: u64,
    /// Distinct consumers among them.
    pub consumers: u64,
    /// The first one's event time, Unix seconds.
    pub first_event_time: u32,
    /// The last one's event time, Unix seconds.
    pub last_event_time: u32,
}

/// The served models with unpriced events in `[from, to)` (event time) in `table` (`usage_events`, or a table
/// written by `rebuild`), most events first; empty when every event of the range was priced.
pub async fn unpriced_models(
    ch: &ClickHouseSettings,
    table: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<UnpricedModel>, BillingError> {
    let table = plain_identifier(table, "table")?;
    let seconds = |t: DateTime<Utc>| crate::ledger::store::datetime_seconds(t).unwrap_or(u32::MAX);
    let from = crate::ledger::store::datetime_seconds(from).unwrap_or(0);
    let sql = format!(
        "SELECT model_served, count(), uniqExact(consumer_id), toUInt32(min(event_time)), \
         toUInt32(max(event_time)) \
         FROM {table} FINAL \
         WHERE unpriced AND event_time >= toDateTime(?) AND event_time < toDateTime(?) \
         GROUP BY model_served ORDER BY count() DESC, model_served"
    );
    ch.client()
        .query(&sql)
        .bind(from)
        .bind(seconds(to))
        .fetch_all::<UnpricedModel>()
        .await
        .map_err(BillingError::clickhouse("read unpriced models"))
}
