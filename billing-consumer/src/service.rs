//! The long-running service: what `billing-consumer run` and `billing-consumer quota` do once their command line
//! is read, wired in one place so that the binary and the end-to-end stack (`tests/src/stack.rs`) run the same
//! code.
//!
//! In order: create the topics it needs (the usage topic with its partitions and replication when it ingests,
//! the quota topic when it computes quotas), bring the ClickHouse schema up to date (when it ingests), follow the
//! config topic until it was read (when one is given: prices and token limits then come from it), and run the
//! ingest loop and the quota loop side by side until shutdown. A loop that fails stops the other. A broker or
//! ClickHouse that cannot be reached yet is waited for, with backoff and a warning per try
//! (`billing_startup_retries_total{step}`); any other start-up error ends the service.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tollgate_plumbing::kafka::KafkaConnection;

use crate::config_topic::{ConfigFollower, FollowSettings};
use crate::error::BillingError;
use crate::ingest::IngestSettings;
use crate::kafka::topics;
use crate::ledger::migrations;
use crate::ledger::pricing::{LivePrices, PriceTable};
use crate::quota::QuotaSettings;
use crate::quota::policy::ConfiguredScope;
use crate::{ingest, quota};

/// How the usage topic is created when it does not exist.
#[derive(Debug, Clone, Copy)]
pub struct UsageTopicLayout {
    /// Partitions: at most this many ingest replicas do work.
    pub partitions: i32,
    /// Copies of each partition (1 on a single broker).
    pub replication_factor: i32,
}

/// Everything the service runs; at least one of `ingest` and `quota`.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    /// The brokers and the operator's librdkafka properties (for the topics and the config topic).
    pub kafka: KafkaConnection,
    /// The ingest loop and how its topic is created; `None`: this process only computes quotas.
    pub ingest: Option<(IngestSettings, UsageTopicLayout)>,
    /// The quota loop; `None`: this process only ingests.
    pub quota: Option<QuotaSettings>,
    /// The config topic to follow for prices and token limits; `None`: the file's only.
    pub config_topic: Option<String>,
    /// The prices from the file (empty: events are stored unpriced unless the config topic has prices).
    pub file_prices: Arc<PriceTable>,
}

/// Runs the service until `shutdown` is cancelled (or a loop fails, which stops the other).
pub async fn run(settings: ServiceSettings, shutdown: CancellationToken) -> Result<(), BillingError> {
    let ServiceSettings {
        kafka,
        ingest,
        quota,
        config_topic,
        file_prices,
    } = settings;
    // A broker or ClickHouse that is down or still starting is waited for: a service started before them (or
    // restarted while they are) comes up when they do, with no supervisor needed.
    if let Some((ingest, layout)) = &ingest {
        let made = until_reachable("create the usage topic", &shutdown, || {
            topics::ensure_with_replication(
                &ingest.kafka.connection,
                &ingest.kafka.topic,
                layout.partitions,
                layout.replication_factor,
            )
        });
        if made.await?.is_none() {
            return Ok(());
        }
    }
    if let Some(quota) = &quota {
        let made = until_reachable("create the quota topic", &shutdown, || {
            topics::ensure_quota(&quota.kafka, &quota.quota_topic)
        });
        if made.await?.is_none() {
            return Ok(());
        }
        if let Some(alerts) = &quota.alerts {
            let made = until_reachable("create the alerts topic", &shutdown, || {
                topics::ensure_alerts(&quota.kafka, &alerts.topic)
            });
            if made.await?.is_none() {
                return Ok(());
            }
        }
    }
    if let Some((ingest, _)) = &ingest {
        let applied = until_reachable("apply the ClickHouse migrations", &shutdown, || {
            migrations::apply(&ingest.clickhouse)
        });
        if applied.await?.is_none() {
            return Ok(());
        }
    }
    let follower = match config_topic {
        Some(topic) => {
            let file_scopes = quota.as_ref().map(|q| q.scopes.clone());
            // Prices matter to ingest and to the quota loop's budgets alike.
            match follow(
                kafka,
                topic,
                Some(Arc::clone(&file_prices)),
                file_scopes,
                &shutdown,
            )
            .await?
            {
                Some(follower) => Some(follower),
                None => return Ok(()),
            }
        }
        None => None,
    };
    let live_prices = follower
        .as_ref()
        .and_then(ConfigFollower::prices)
        .unwrap_or_else(|| LivePrices::new(file_prices));
    let policy = follower.as_ref().and_then(ConfigFollower::policy);
    let prices_for_quota = live_prices.clone();
    let ingesting = async {
        match ingest {
            Some((ingest, _)) => {
                stop_all_on_error(
                    ingest::run_with_live_prices(ingest, live_prices, shutdown.clone()),
                    &shutdown,
                )
                .await
            }
            None => Ok(()),
        }
    };
    let counting = async {
        match quota {
            Some(quota) => {
                stop_all_on_error(
                    quota::run_live(quota, policy, prices_for_quota, shutdown.clone()),
                    &shutdown,
                )
                .await
            }
            None => Ok(()),
        }
    };
    let (ingested, counted) = tokio::join!(ingesting, counting);
    if let Some(follower) = follower {
        follower.stop().await;
    }
    ingested?;
    counted
}

/// The first wait after an unreachable dependency, and the longest.
const FIRST_RETRY: Duration = Duration::from_millis(500);
const LAST_RETRY: Duration = Duration::from_secs(5);

/// Runs `step` until it succeeds, waiting (with backoff) while it fails because the broker or ClickHouse cannot be
/// reached; any other error is returned at once. `None` when shutdown came first.
async fn until_reachable<T, F, Fut>(
    step_name: &'static str,
    shutdown: &CancellationToken,
    mut step: F,
) -> Result<Option<T>, BillingError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, BillingError>>,
{
    let mut wait = FIRST_RETRY;
    let mut attempt: u32 = 0;
    loop {
        attempt = attempt.saturating_add(1);
        let error = tokio::select! {
            result = step() => match result {
                Ok(value) => return Ok(Some(value)),
                Err(error) if error.is_unreachable() => error,
                Err(error) => return Err(error),
            },
            () = shutdown.cancelled() => return Ok(None),
        };
        metrics::counter!(crate::telemetry::metrics::STARTUP_RETRIES, "step" => step_name).increment(1);
        tracing::warn!(
            step = step_name,
            attempt,
            retry_in_ms = wait.as_millis() as u64,
            %error,
            "A dependency cannot be reached yet; waiting for it."
        );
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => return Ok(None),
        }
        wait = (wait * 2).min(LAST_RETRY);
    }
}

/// Starts following the config topic `topic` and waits until it was read; `None` when shutdown came first.
async fn follow(
    kafka: KafkaConnection,
    topic: String,
    file_prices: Option<Arc<PriceTable>>,
    file_scopes: Option<Vec<ConfiguredScope>>,
    shutdown: &CancellationToken,
) -> Result<Option<ConfigFollower>, BillingError> {
    let follower = ConfigFollower::start(FollowSettings {
        kafka,
        topic,
        file_prices,
        file_scopes,
    })?;
    tokio::select! {
        () = follower.ready() => Ok(Some(follower)),
        () = shutdown.cancelled() => {
            follower.stop().await;
            Ok(None)
        }
    }
}

/// Runs `task`; if it fails, cancels `shutdown` so that the loops beside it stop too.
async fn stop_all_on_error(
    task: impl Future<Output = Result<(), BillingError>>,
    shutdown: &CancellationToken,
) -> Result<(), BillingError> {
    let result = task.await;
    if let Err(error) = &result {
        tracing::error!(error_kind = error.kind(), %error, "A loop failed; stopping the others.");
        shutdown.cancel();
    }
    result
}

/// Cancels `shutdown` on SIGTERM or Ctrl-C.
pub async fn cancel_on_signal(shutdown: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "Cannot listen for SIGTERM; only Ctrl-C stops the process.");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    tracing::info!("Shutdown requested; settling the batch in hand and the pending quota snapshots.");
    shutdown.cancel();
}
