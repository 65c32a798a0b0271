//! `reingest-rejected`: after a reader fix (such as tolerating unknown fields and CloudEvents extensions), the
//! messages `usage_events_rejected` kept are decoded again with the current reader, and those that now decode are
//! written to the ledger — billed, as they should have been.
//!
//! Idempotent, so running it twice (or after a crash half-way) bills each event once:
//!
//! - a recovered event becomes the same `usage_events` row ordinary ingest would have written for its message
//!   (same event id, consumer and time: the same ReplacingMergeTree key, so a second copy collapses under
//!   `FINAL`, and an event that was also ingested normally — delivered twice, once rejected — counts once too);
//! - then its rejected row is marked: a row with the same key `(kafka_topic, kafka_partition, kafka_offset)`
//!   and reason [`REINGESTED`] replaces it under `FINAL`, and later runs skip marked rows. The ledger row is
//!   written before the mark, so a crash in between only means the next run writes the row again (collapsed).
//!
//! Rows still undecodable stay as they were and are counted by reason in the summary.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::error::{BillingError, RejectReason};
use crate::ingest::batch::decode;
use crate::ledger::ClickHouseSettings;
use crate::ledger::pricing::PriceTable;
use crate::ledger::store::{self, Position, REJECTED_TABLE, RejectedRow, USAGE_TABLE};

/// The `reason` of a rejected row whose message is in the ledger now.
pub const REINGESTED: &str = "reingested";

/// Rows read and written per round.
const CHUNK: u64 = 10_000;

/// What one run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReingestSummary {
    /// Rejected rows looked at (not marked before).
    pub examined: u64,
    /// Of those, decoded and written to the ledger (and marked).
    pub reingested: u64,
    /// Of those, still undecodable, by reason.
    pub still_rejected: BTreeMap<&'static str, u64>,
}

/// A rejected row as read back.
#[derive(Debug, Clone, clickhouse::Row, serde::Deserialize)]
struct Stored {
    kafka_topic: String,
    kafka_partition: i32,
    kafka_offset: i64,
    payload: String,
    received_at: u32,
}

/// Re-decodes every rejected row received at or after `since` (all when `None`) that is not marked yet, writes
/// the decodable ones to `usage_events` priced with `prices`, and marks them.
pub async fn run(
    ch: &ClickHouseSettings,
    since: Option<DateTime<Utc>>,
    prices: &PriceTable,
) -> Result<ReingestSummary, BillingError> {
    let client = ch.client();
    let since = since.and_then(store::datetime_seconds).unwrap_or(0);
    let mut summary = ReingestSummary::default();
    // Position after the last row of the previous round (rows are read in key order).
    let mut after: Option<(String, i32, i64)> = None;
    loop {
        let (topic, partition, offset) = after.clone().unwrap_or((String::new(), i32::MIN, i64::MIN));
        let rows: Vec<Stored> = client
            .query(&format!(
                "SELECT kafka_topic, kafka_partition, kafka_offset, payload, toUInt32(received_at) \
                 FROM {REJECTED_TABLE} FINAL \
                 WHERE reason != ? AND received_at >= toDateTime(?) \
                 AND (kafka_topic, kafka_partition, kafka_offset) > (?, ?, ?) \
                 ORDER BY kafka_topic, kafka_partition, kafka_offset LIMIT {CHUNK}"
            ))
            .bind(REINGESTED)
            .bind(since)
            .bind(topic.as_str())
            .bind(partition)
            .bind(offset)
            .fetch_all()
            .await
            .map_err(BillingError::clickhouse("read usage_events_rejected"))?;
        let Some(last) = rows.last() else {
            break;
        };
        after = Some((last.kafka_topic.clone(), last.kafka_partition, last.kafka_offset));
        let now = store::datetime_seconds(Utc::now()).unwrap_or(0);
        let mut ledger = Vec::new();
        let mut marks = Vec::new();
        for row in &rows {
            summary.examined += 1;
            let at = Position {
                topic: row.kafka_topic.clone(),
                partition: row.kafka_partition,
                offset: row.kafka_offset,
            };
            let decoded = decode(Some(row.payload.as_bytes()))
                .and_then(|event| store::usage_row(&event, &at, now, prices));
            match decoded {
                Ok(usage) => {
                    ledger.push(usage);
                    marks.push(RejectedRow {
                        kafka_topic: row.kafka_topic.clone(),
                        kafka_partition: row.kafka_partition,
                        kafka_offset: row.kafka_offset,
                        payload: row.payload.clone(),
                        reason: REINGESTED.to_owned(),
                        error: String::new(),
                        received_at: row.received_at,
                    });
                }
                Err(error) => {
                    let reason = match error {
                        BillingError::Decode { reason, .. } => reason,
                        _ => RejectReason::InvalidJson,
                    };
                    *summary.still_rejected.entry(reason.as_str()).or_default() += 1;
                }
            }
        }
        // The ledger first, the marks second: a crash in between leaves rows a later run writes again (collapsed).
        store::insert_all(&client, USAGE_TABLE, &ledger).await?;
        store::insert_all(&client, REJECTED_TABLE, &marks).await?;
        summary.reingested += ledger.len() as u64;
        tracing::info!(
            examined = summary.examined,
            reingested = summary.reingested,
            "Re-ingested a chunk of rejected messages."
        );
    }
    Ok(summary)
}
