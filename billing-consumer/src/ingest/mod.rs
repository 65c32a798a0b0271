//! The ingest loop: Kafka `tollgate.usage.v1` → ClickHouse `usage_events`, at least once on the wire and exactly
//! once in the ledger.
//!
//! 1. **Collect** up to `batch_size` messages, or whatever arrived within `batch_wait` of the batch's first
//!    message, decoding each into a row ([`batch`]); undecodable messages become `usage_events_rejected` rows.
//! 2. **Write** the batch: one INSERT for the events, one for the rejected messages. If ClickHouse fails, nothing
//!    is committed and the same batch is retried with bounded exponential backoff until it succeeds or shutdown
//!    is requested (then the process exits without committing, and the batch is redelivered on restart).
//! 3. **Commit** the highest offset + 1 per partition, synchronously, and only for partitions still assigned to
//!    this consumer ([`crate::kafka::commit`]).
//!
//! Anything that goes wrong between 2 and 3 (a crash, a failed commit, a rebalance) redelivers messages that
//! are already in the ledger; `usage_events` is a ReplacingMergeTree keyed by event id, so they collapse and
//! billing reads with `FINAL` count each event once. ClickHouse 18.16 offers no insert deduplication, so this is
//! where exactly-once comes from. While a batch is being retried the consumer does not poll; after
//! `max.poll.interval.ms` it leaves the group, its commit fails harmlessly, and it rejoins on its next read.
//!
//! Each event is priced while its row is built ([`crate::ledger::pricing`]: the table loaded at start, or with
//! `--config-topic` the [`LivePrices`] the config follower replaces, read once per batch so a batch is priced by
//! one table) for the model that served it (`model_served`): cost, currency and price version go into the row,
//! so invoices are sums of stored per-event costs. An event with no price in force is stored with cost 0,
//! counted in `billing_events_unpriced_total` (no model label) and its served model logged at warn level once
//! per process ([`UnpricedLog`]; up to [`UnpricedLog::MAX_MODELS`] models, then once that there are more), the
//! number of such models kept in `billing_unpriced_models`. The row is flagged by its empty `price_version`
//! (the ledger's `unpriced` column, migration 0007).
//! [`lag`] keeps `billing_consumer_lag_events` current beside the loop.
//!
//! Shutdown (the token is cancelled) stops collecting, settles the batch in hand (write + commit) and returns.

pub mod batch;
pub mod lag;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use rdkafka::Message;
use tokio_util::sync::CancellationToken;

use crate::error::BillingError;
use crate::kafka::KafkaSettings;
use crate::kafka::{self, IngestConsumer};
use crate::ledger::ClickHouseSettings;
use crate::ledger::pricing::{LivePrices, PriceTable};
use crate::ledger::store::{self, Position};
use crate::telemetry::metrics as m;

use self::batch::Batch;

/// First wait after a failed INSERT.
pub const RETRY_INITIAL: Duration = Duration::from_millis(200);
/// Longest wait between INSERT retries.
pub const RETRY_MAX: Duration = Duration::from_secs(30);
/// Pause after the consumer reported an error, before reading again.
const CONSUME_ERROR_PAUSE: Duration = Duration::from_millis(500);

/// Runs the ingest loop without prices (every row is stored unpriced: cost 0, no currency, no price version)
/// until `shutdown` is cancelled; see [`run_with_prices`].
pub async fn run(settings: IngestSettings, shutdown: CancellationToken) -> Result<(), BillingError> {
    run_with_prices(settings, Arc::new(PriceTable::default()), shutdown).await
}

/// Runs the ingest loop, pricing every event with `prices`, until `shutdown` is cancelled, then settles the
/// batch in hand and returns.
///
/// The database must be migrated first ([`crate::ledger::migrations::apply`]); the topic need not exist yet (the
/// consumer picks it up once it does).
pub async fn run_with_prices(
    settings: IngestSettings,
    prices: Arc<PriceTable>,
    shutdown: CancellationToken,
) -> Result<(), BillingError> {
    run_with_live_prices(settings, LivePrices::new(prices), shutdown).await
}

/// Runs the ingest loop as [`run_with_prices`] does, pricing each batch with the table `prices` holds when the
/// batch starts.
pub async fn run_with_live_prices(
    settings: IngestSettings,
    prices: LivePrices,
    shutdown: CancellationToken,
) -> Result<(), BillingError> {
    let consumer = Arc::new(kafka::subscribe(&settings.kafka)?);
    let client = settings.clickhouse.client();
    let batch_size = settings.batch_size.max(1);
    tracing::info!(
        brokers = %settings.kafka.connection.brokers,
        topic = %settings.kafka.topic,
        group = %settings.kafka.group_id,
        database = %settings.clickhouse.database,
        batch_size,
        batch_wait = %humantime::format_duration(settings.batch_wait),
        price_versions = prices.current().versions().len(),
        "Ingest started."
    );
    crate::telemetry::readiness::STATE.ingest_started(lag::INTERVAL, crate::telemetry::readiness::now_ms());
    let watching = shutdown.child_token();
    let lag_task = tokio::spawn(lag::watch(
        Arc::clone(&consumer),
        settings.kafka.topic.clone(),
        watching.clone(),
    ));

    // One for the whole process: a model is logged the first time one of its events is stored unpriced.
    let mut unpriced_log = UnpricedLog::default();
    loop {
        let (batch, table) = collect(&consumer, batch_size, settings.batch_wait, &prices, &shutdown).await;
        if let Some(table) = table {
            let unpriced_models = batch.unpriced_models.clone();
            if !settle(&consumer, &client, batch, &shutdown).await {
                break;
            }
            // Without any price every event is unpriced, which was said once at start: the models are only
            // counted then.
            if table.is_empty() {
                unpriced_log.first_sightings(&unpriced_models);
            } else {
                unpriced_log.log(&unpriced_models);
            }
            metrics::gauge!(m::UNPRICED_MODELS).set(unpriced_log.models() as f64);
        }
        if shutdown.is_cancelled() {
            break;
        }
    }
    watching.cancel();
    let _ = lag_task.await;
    tracing::info!(group = %settings.kafka.group_id, "Ingest stopped.");
    Ok(())
}

/// Reads messages until the batch is full, `batch_wait` has passed since its first message, or shutdown. The
/// batch is priced by the table in use when its first message arrived, which is returned with it (`None`: the
/// batch is empty).
async fn collect(
    consumer: &IngestConsumer,
    batch_size: usize,
    batch_wait: Duration,
    prices: &LivePrices,
    shutdown: &CancellationToken,
) -> (Batch, Option<Arc<PriceTable>>) {
    let mut batch = Batch::default();
    let mut table: Option<Arc<PriceTable>> = None;
    let mut deadline: Option<tokio::time::Instant> = None;
    while batch.len() < batch_size {
        let timer = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            () = timer => break,
            // `recv` is cancellation safe: a message is only taken from the queue when it is returned.
            received = consumer.recv() => match received {
                Ok(message) => {
                    let at = Position {
                        topic: message.topic().to_owned(),
                        partition: message.partition(),
                        offset: message.offset(),
                    };
                    let table = table.get_or_insert_with(|| prices.current());
                    let kafka_ms = message.timestamp().to_millis();
                    batch.push_at(at, kafka_ms, message.payload(), now_seconds(), table);
                    if deadline.is_none() {
                        deadline = Some(tokio::time::Instant::now() + batch_wait);
                    }
                }
                Err(error) => {
                    metrics::counter!(m::CONSUME_ERRORS).increment(1);
                    tracing::warn!(%error, "Reading from Kafka failed; retrying.");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(CONSUME_ERROR_PAUSE) => {}
                    }
                }
            }
        }
    }
    (batch, table)
}

/// Writes the batch (retrying until it succeeds or shutdown) and then commits its offsets.
/// Returns false when shutdown interrupted the retries, i.e. the batch was not written.
async fn settle(
    consumer: &Arc<IngestConsumer>,
    client: &clickhouse::Client,
    batch: Batch,
    shutdown: &CancellationToken,
) -> bool {
    metrics::histogram!(m::BATCH_SIZE).record(batch.len() as f64);
    let mut backoff = RETRY_INITIAL;
    let mut attempt: u32 = 1;
    loop {
        let started = Instant::now();
        match write(client, &batch).await {
            Ok(()) => {
                metrics::histogram!(m::INSERT_DURATION).record(started.elapsed().as_secs_f64());
                crate::telemetry::readiness::STATE.insert_failing(false);
                break;
            }
            Err(error) => {
                metrics::counter!(m::INSERT_FAILURES).increment(1);
                crate::telemetry::readiness::STATE.insert_failing(true);
                tracing::warn!(
                    error_kind = error.kind(),
                    %error,
                    attempt,
                    messages = batch.len(),
                    retry_in = %humantime::format_duration(backoff),
                    "Writing the batch to ClickHouse failed; offsets stay uncommitted and the batch will be retried."
                );
                tokio::select! {
                    () = shutdown.cancelled() => {
                        tracing::warn!(
                            messages = batch.len(),
                            "Shutting down with an unwritten batch; it is not committed and will be redelivered."
                        );
                        return false;
                    }
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = next_backoff(backoff);
                attempt = attempt.saturating_add(1);
            }
        }
    }

    metrics::counter!(m::BATCHES_INSERTED).increment(1);
    metrics::counter!(m::EVENTS_INGESTED).increment(batch.rows.len() as u64);
    metrics::counter!(m::DUPLICATES_IN_BATCH).increment(batch.duplicates_in_batch as u64);
    metrics::counter!(m::EVENTS_UNPRICED).increment(batch.unpriced);
    metrics::counter!(m::EVENTS_CLOCK_SKEW).increment(batch.clock_skewed);
    for (reason, count) in &batch.rejected_by_reason {
        metrics::counter!(m::EVENTS_REJECTED, "reason" => reason.as_str()).increment(*count);
    }

    match kafka::commit(consumer, batch.next_offsets()).await {
        Ok(outcome) => tracing::debug!(
            messages = batch.len(),
            events = batch.rows.len(),
            rejected = batch.rejected.len(),
            partitions = outcome.committed,
            skipped_partitions = outcome.skipped,
            "Batch written and committed."
        ),
        Err(error) => {
            metrics::counter!(m::COMMIT_FAILURES).increment(1);
            tracing::warn!(
                error_kind = error.kind(),
                %error,
                messages = batch.len(),
                "Committing offsets failed after the batch was written; it will be redelivered and deduplicated."
            );
        }
    }
    true
}

/// The batch's two INSERTs. Retrying after a partial success re-inserts rows that ReplacingMergeTree collapses.
async fn write(client: &clickhouse::Client, batch: &Batch) -> Result<(), BillingError> {
    store::insert_all(client, store::USAGE_TABLE, &batch.rows).await?;
    store::insert_all(client, store::REJECTED_TABLE, &batch.rejected).await
}

/// The served models already logged as unpriced by this process, so that each is logged once however many
/// batches hold its events. Bounded: past [`UnpricedLog::MAX_MODELS`] distinct models (the served model comes
/// from the upstream's answer), further ones are no longer named, which is logged once.
#[derive(Debug, Default)]
pub struct UnpricedLog {
    logged: HashSet<String>,
    full: bool,
}

impl UnpricedLog {
    /// Distinct models named at most.
    pub const MAX_MODELS: usize = 1024;

    /// Logs at warn level each of `models` (served models stored unpriced) not logged before.
    pub fn log<'a>(&mut self, models: impl IntoIterator<Item = &'a String>) {
        for model in self.first_sightings(models) {
            tracing::warn!(
                model_served = %model,
                "No price is in force for this served model (nor its family) at its events' time; they are \
                 stored with cost 0 (logged once per model, counted in billing_events_unpriced_total)."
            );
        }
    }

    /// How many distinct served models were seen unpriced (at most [`UnpricedLog::MAX_MODELS`]).
    pub fn models(&self) -> usize {
        self.logged.len()
    }

    /// The models of `models` not seen before, remembered now; once [`UnpricedLog::MAX_MODELS`] are
    /// remembered, none (and a warning, once).
    pub fn first_sightings<'a>(&mut self, models: impl IntoIterator<Item = &'a String>) -> Vec<String> {
        let mut new = Vec::new();
        for model in models {
            if self.logged.contains(model) || self.full {
                continue;
            }
            if self.logged.len() >= Self::MAX_MODELS {
                self.full = true;
                tracing::warn!(
                    models = Self::MAX_MODELS,
                    "More served models are unpriced than are logged; further ones are only counted in \
                     billing_events_unpriced_total."
                );
                continue;
            }
            self.logged.insert(model.clone());
            new.push(model.clone());
        }
        new
    }
}

/// Doubles the wait, up to [`RETRY_MAX`].
pub fn next_backoff(current: Duration) -> Duration {
    current.saturating_mul(2).min(RETRY_MAX)
}

fn now_seconds() -> u32 {
    store::datetime_seconds(Utc::now()).unwrap_or(u32::MAX)
}

/// Everything [`crate::ingest::run`] needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestSettings {
    /// The topic and group to consume.
    pub kafka: KafkaSettings,
    /// The ledger to write to.
    pub clickhouse: ClickHouseSettings,
    /// A batch is written when it holds this many messages…
    pub batch_size: usize,
    /// …or when this long has passed since its first message, whichever comes first.
    pub batch_wait: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_bound() {
        let mut wait = RETRY_INITIAL;
        let mut waits = Vec::new();
        for _ in 0..12 {
            waits.push(wait);
            wait = next_backoff(wait);
        }
        assert_eq!(waits[..4], [200, 400, 800, 1600].map(Duration::from_millis));
        assert_eq!(*waits.last().unwrap(), RETRY_MAX);
        assert!(waits.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn an_unpriced_model_is_logged_once_per_process_not_once_per_batch() {
        let mut log = UnpricedLog::default();
        let batch = |models: &[&str]| models.iter().map(|m| (*m).to_owned()).collect::<Vec<String>>();
        assert_eq!(
            log.first_sightings(&batch(&["gpt-5", "llama-3-70b"])),
            ["gpt-5", "llama-3-70b"]
        );
        // Later batches: only what is new.
        assert!(log.first_sightings(&batch(&["gpt-5"])).is_empty());
        assert_eq!(
            log.first_sightings(&batch(&["llama-3-70b", "o3", "gpt-5"])),
            ["o3"]
        );
        assert!(log.first_sightings(&batch(&[])).is_empty());
        // What billing_unpriced_models reports.
        assert_eq!(log.models(), 3);
    }

    #[test]
    fn the_unpriced_log_is_bounded() {
        let mut log = UnpricedLog::default();
        let many: Vec<String> = (0..UnpricedLog::MAX_MODELS + 5)
            .map(|i| format!("m-{i}"))
            .collect();
        assert_eq!(log.first_sightings(&many).len(), UnpricedLog::MAX_MODELS);
        assert!(log.first_sightings(&["another".to_owned()]).is_empty());
        assert!(log.first_sightings(&["m-0".to_owned()]).is_empty());
    }
}
