//! Threshold alerts: when the usage of a limited subject — a token quota's (scope, window) or a money
//! budget's (scope, period) — crosses one of the configured thresholds (by default 50 %, 80 % and 100 % of
//! its limit), a signed webhook is POSTed, once per (subject, threshold).
//!
//! - **What crosses** (this file): [`crossed`] is the pure check over (previous usage, new usage, limit,
//!   thresholds); [`Standing`] is a subject's usage against its limit, generic over what is counted
//!   ([`AlertKind::TokenQuota`] in tokens, [`AlertKind::Budget`] in a currency's micro-units); [`alert_id`] names
//!   an (subject, threshold) pair deterministically, so a receiver can deduplicate.
//! - **The hook** ([`Alerter`]): the quota loop hands it every snapshot it publishes ([`Alerter::observe_snapshots`]),
//!   only while it holds the lease and is not rebuilding, so only the lease holder alerts. A budget's snapshots
//!   carry its currency and alert as [`AlertKind::Budget`].
//! - **What was sent** ([`ledger`]): the state lives in Kafka, on the compacted alerts topic (one record per alert
//!   id, `pending` → `delivered` | `rejected` | `failed`), read to its end before anything is sent and followed
//!   while the process runs, so a restart, a `kill -9` or a lease moving to another process never sends a
//!   threshold again that was delivered. The in-memory "previous usage" only saves work: after a rebuild or a
//!   takeover every threshold reached is checked against the ledger again.
//! - **Delivery** ([`webhook`]): the body, its HMAC-SHA256 signature, retries with exponential backoff and jitter.
//! - **Settings** ([`settings`]): validated up front, every problem reported at once.
//!
//! **The one unavoidable duplicate.** A process killed after the receiver accepted an alert but before the
//! `delivered` record reached Kafka leaves a `pending` record: the next lease holder sends that alert again, with
//! the same id (and the same body). Receivers deduplicate by `x-tollgate-alert-id`.

pub mod ledger;
pub mod settings;
pub mod webhook;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tollgate_plumbing::kafka::KafkaConnection;
use tollgate_schemas::quota::QuotaSnapshot;

use crate::error::BillingError;
use crate::telemetry::metrics as m;

pub use self::ledger::{Ledger, LedgerRecord, Status};
pub use self::settings::AlertSettings;
pub use self::webhook::{Outcome, Webhook};

/// The thresholds used when none are configured, in percent of the limit.
pub const DEFAULT_THRESHOLDS: [u32; 3] = [50, 80, 100];

/// How long a stopping alerter waits for deliveries in flight before leaving them `pending` (sent again by the
/// next lease holder).
const STOP_GRACE: Duration = Duration::from_secs(5);

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// A token limit's window, counted in tokens.
    TokenQuota,
    /// A money budget's period, counted in a currency (micro-units).
    Budget,
    /// A served model with no price in force on a UTC day: its events are stored unpriced (cost 0) until an
    /// operator prices it. One alert per (model, day), at the first such event.
    UnpricedModel,
}

impl AlertKind {
    /// The name in the webhook body and in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TokenQuota => "token_quota",
            Self::Budget => "budget",
            Self::UnpricedModel => "unpriced_model",
        }
    }
}

/// The unit of token quotas' `used` and `limit`.
pub const UNIT_TOKENS: &str = "tokens";
/// The unit of an unpriced model's `used`: its unpriced events that day.
pub const UNIT_EVENTS: &str = "events";
const DAY_MS: u64 = 86_400_000;

/// A subject's usage against its limit: what the alerting looks at. `used` and `limit` are integers in `unit`:
/// tokens, or for a budget the micro-units of its currency (the ledger's unit), with `unit` the ISO 4217 code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    pub kind: AlertKind,
    /// The scope key, e.g. `consumer=team-a;models=gpt-4o-mini;window=3600s;strategy=total_tokens`.
    pub scope: String,
    /// The window (or budget period), Unix epoch milliseconds, end excluded.
    pub window_start_ms: u64,
    pub window_end_ms: u64,
    pub used: u64,
    pub limit: u64,
    /// `tokens`, or a currency code such as `USD`.
    pub unit: String,
}

impl Standing {
    /// A token quota's or a budget's standing in one snapshot.
    pub fn of_snapshot(snapshot: &QuotaSnapshot) -> Self {
        let (kind, unit) = match &snapshot.currency {
            Some(currency) => (AlertKind::Budget, currency.clone()),
            None => (AlertKind::TokenQuota, UNIT_TOKENS.to_owned()),
        };
        Self {
            kind,
            scope: snapshot.scope.clone(),
            window_start_ms: snapshot.window_start_ms,
            window_end_ms: snapshot.window_end_ms,
            used: snapshot.used,
            limit: snapshot.limit,
            unit,
        }
    }

    /// `events` unpriced events of the served `model` on the UTC day containing `at_ms` (scope
    /// `model_served=<model>`, limit 1: the first event reaches 100 %).
    pub fn unpriced(model: &str, at_ms: u64, events: u64) -> Self {
        let day = at_ms - at_ms % DAY_MS;
        Self {
            kind: AlertKind::UnpricedModel,
            scope: format!("model_served={model}"),
            window_start_ms: day,
            window_end_ms: day + DAY_MS,
            used: events,
            limit: 1,
            unit: UNIT_EVENTS.to_owned(),
        }
    }

    fn subject(&self) -> (AlertKind, String, u64) {
        (self.kind, self.scope.clone(), self.window_start_ms)
    }
}

/// Whether `used` has reached `threshold` percent of `limit` (exact integer arithmetic; a zero limit is never
/// reached, since it alerts nothing that the gateway's refusals do not already say).
pub fn reached(used: u64, limit: u64, threshold: u32) -> bool {
    limit > 0 && u128::from(used) * 100 >= u128::from(limit) * u128::from(threshold)
}

/// The thresholds (percent of `limit`) that usage crossed going from `previous` to `used`: reached now and not
/// before, in the order given. Pure; usage that did not grow crosses nothing.
pub fn crossed(previous: u64, used: u64, limit: u64, thresholds: &[u32]) -> Vec<u32> {
    thresholds
        .iter()
        .copied()
        .filter(|t| reached(used, limit, *t) && !reached(previous, limit, *t))
        .collect()
}

/// The id of the alert for `threshold` of (`kind`, `scope`, window starting at `window_start_ms`): the first 128
/// bits of SHA-256 over `kind \n scope \n window_start_ms \n threshold`, in hex (32 characters). The same in
/// every process and on every attempt, so a receiver can deduplicate by it, and the alerts topic keys by it.
pub fn alert_id(kind: AlertKind, scope: &str, window_start_ms: u64, threshold: u32) -> String {
    let digest = Sha256::digest(format!(
        "{}\n{scope}\n{window_start_ms}\n{threshold}",
        kind.as_str()
    ));
    hex::encode(&digest[..16])
}

/// One alert: the webhook's JSON body, field for field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// [`alert_id`]: the same for every delivery of this (subject, threshold).
    pub id: String,
    pub kind: AlertKind,
    pub scope: String,
    pub window_start_ms: u64,
    pub window_end_ms: u64,
    /// The threshold crossed, percent of `limit`.
    pub threshold_percent: u32,
    /// Usage when the crossing was seen (at least `threshold_percent` of `limit`).
    pub used: u64,
    pub limit: u64,
    pub unit: String,
    /// When the crossing was seen, RFC 3339 (UTC, milliseconds).
    pub time: String,
}

impl Alert {
    /// The alert for `threshold` of `standing`, seen at `now_ms`.
    pub fn new(standing: &Standing, threshold: u32, now_ms: u64) -> Self {
        let time = chrono::DateTime::from_timestamp_millis(i64::try_from(now_ms).unwrap_or(i64::MAX))
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        Self {
            id: alert_id(
                standing.kind,
                &standing.scope,
                standing.window_start_ms,
                threshold,
            ),
            kind: standing.kind,
            scope: standing.scope.clone(),
            window_start_ms: standing.window_start_ms,
            window_end_ms: standing.window_end_ms,
            threshold_percent: threshold,
            used: standing.used,
            limit: standing.limit,
            unit: standing.unit.clone(),
            time,
        }
    }
}

/// Sets `billing_quota_used_ratio{scope}` from snapshots of the window that contains `now_ms` (one series per
/// configured scope).
pub fn record_standing(snapshots: &[QuotaSnapshot], now_ms: u64) {
    for snapshot in snapshots {
        if snapshot.window_start_ms <= now_ms && now_ms < snapshot.window_end_ms && snapshot.limit > 0 {
            metrics::gauge!(m::QUOTA_USED_RATIO, "scope" => snapshot.scope.clone())
                .set(snapshot.used as f64 / snapshot.limit as f64);
        }
    }
}

/// The hook the quota loop (and, later, money budgets) feeds: finds the thresholds crossed, leaves out those the
/// ledger says were already dealt with, and hands the rest to delivery tasks, which record each alert
/// `pending` on the alerts topic, POST it, and record how it ended.
#[derive(Debug)]
pub struct Alerter {
    thresholds: Vec<u32>,
    /// The last (used, limit) seen per subject while holding the lease: the "previous usage" of [`crossed`].
    seen: HashMap<(AlertKind, String, u64), (u64, u64)>,
    /// Alert ids this process handed to delivery (the ledger may not show them yet).
    queued: HashSet<String>,
    ledger: Arc<Ledger>,
    sender: Option<mpsc::UnboundedSender<Alert>>,
    worker: Option<tokio::task::JoinHandle<()>>,
}

impl Alerter {
    /// Starts following the alerts topic (which should exist: [`crate::kafka::topics::ensure_alerts`]) and the
    /// delivery worker. Nothing is sent before the topic was read to its end.
    pub fn start(settings: AlertSettings, kafka: &KafkaConnection) -> Result<Self, BillingError> {
        let ledger = Arc::new(Ledger::start(kafka, &settings.topic)?);
        let webhook = Webhook::new(&settings)?;
        let (sender, receiver) = mpsc::unbounded_channel();
        let worker = tokio::spawn(deliver_all(receiver, Arc::clone(&ledger), Arc::new(webhook)));
        tracing::info!(
            url = %settings.redacted_url(),
            topic = %settings.topic,
            thresholds = ?settings.thresholds,
            max_attempts = settings.retry.max_attempts,
            "Threshold alerts are on."
        );
        Ok(Self {
            thresholds: settings.thresholds,
            seen: HashMap::new(),
            queued: HashSet::new(),
            ledger,
            sender: Some(sender),
            worker: Some(worker),
        })
    }

    /// Forgets the usage seen so far: the next observation of each subject checks every threshold it reached
    /// against the ledger (after a rebuild, or when the lease comes to this process).
    pub fn forget_seen(&mut self) {
        self.seen.clear();
    }

    /// The hook: `standing` was just computed. Queues an alert for every threshold crossed since the last
    /// observation of its subject that the ledger does not show as dealt with; returns how many were queued.
    pub fn observe(&mut self, standing: &Standing, now_ms: u64) -> usize {
        let subject = standing.subject();
        let previous = match self.seen.insert(subject, (standing.used, standing.limit)) {
            // A new limit re-checks everything reached (the ledger tells what was sent).
            Some((used, limit)) if limit == standing.limit => used,
            _ => 0,
        };
        let mut queued = 0;
        // An unpriced model is alerted once, when it is first seen: it has no "half way".
        let thresholds: &[u32] = match standing.kind {
            AlertKind::UnpricedModel => &[100],
            AlertKind::TokenQuota | AlertKind::Budget => &self.thresholds,
        };
        for threshold in crossed(previous, standing.used, standing.limit, thresholds) {
            let id = alert_id(
                standing.kind,
                &standing.scope,
                standing.window_start_ms,
                threshold,
            );
            if self.queued.contains(&id) {
                continue;
            }
            let alert = match self.ledger.status(&id) {
                Some(record) if record.status.is_final() => continue,
                // Left pending by a process that stopped mid-delivery: the same alert again.
                Some(record) => record.alert,
                None => Alert::new(standing, threshold, now_ms),
            };
            let Some(sender) = &self.sender else { break };
            if sender.send(alert).is_ok() {
                self.queued.insert(id);
                queued += 1;
            }
        }
        queued
    }

    /// [`Alerter::observe`] for each snapshot, as token quotas; `fresh` first forgets what was seen.
    pub fn observe_snapshots(&mut self, snapshots: &[QuotaSnapshot], fresh: bool, now_ms: u64) -> usize {
        if fresh {
            self.forget_seen();
        }
        snapshots
            .iter()
            .map(|s| self.observe(&Standing::of_snapshot(s), now_ms))
            .sum()
    }

    /// Stops taking alerts, waits up to a few seconds for deliveries in flight (those cut short stay `pending`
    /// and are sent again by the next lease holder), and stops following the alerts topic.
    pub async fn stop(mut self) {
        self.sender = None;
        if let Some(mut worker) = self.worker.take()
            && tokio::time::timeout(STOP_GRACE, &mut worker).await.is_err()
        {
            worker.abort();
            tracing::warn!(
                "Alert deliveries still in flight at shutdown stay pending; the next lease holder sends them."
            );
        }
        if let Some(ledger) = Arc::into_inner(self.ledger) {
            ledger.stop().await;
        }
    }
}

/// The delivery worker: one task per alert, each waiting for the ledger to be read to its end first.
async fn deliver_all(mut alerts: mpsc::UnboundedReceiver<Alert>, ledger: Arc<Ledger>, webhook: Arc<Webhook>) {
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            alert = alerts.recv() => match alert {
                Some(alert) => {
                    tasks.spawn(deliver_one(alert, Arc::clone(&ledger), Arc::clone(&webhook)));
                }
                None => break,
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    while tasks.join_next().await.is_some() {}
}

/// Records `alert` pending, delivers it, records how that ended.
async fn deliver_one(alert: Alert, ledger: Arc<Ledger>, webhook: Arc<Webhook>) {
    ledger.caught_up().await;
    if let Some(record) = ledger.status(&alert.id)
        && record.status.is_final()
    {
        tracing::debug!(id = %alert.id, status = record.status.as_str(), "Alert already dealt with.");
        return;
    }
    ledger.record_until_written(&alert, Status::Pending, 0, "").await;
    let started = std::time::Instant::now();
    let (outcome, attempts) = webhook.deliver(&alert).await;
    let (status, detail) = match &outcome {
        Outcome::Delivered { status } => {
            metrics::counter!(m::ALERTS_SENT, "kind" => alert.kind.as_str(), "threshold" => alert.threshold_percent.to_string())
                .increment(1);
            metrics::histogram!(m::ALERT_DELIVERY_DURATION).record(started.elapsed().as_secs_f64());
            tracing::info!(id = %alert.id, scope = %alert.scope, threshold = alert.threshold_percent, used = alert.used, limit = alert.limit, attempts, status, "Alert delivered.");
            (Status::Delivered, format!("http {status}"))
        }
        Outcome::Rejected { status } => {
            metrics::counter!(m::ALERTS_FAILED, "reason" => "rejected").increment(1);
            tracing::error!(id = %alert.id, scope = %alert.scope, threshold = alert.threshold_percent, attempts, status, "The webhook receiver rejected an alert; it is not sent again.");
            (Status::Rejected, format!("http {status}"))
        }
        Outcome::GaveUp { last_error } => {
            metrics::counter!(m::ALERTS_FAILED, "reason" => "gave_up").increment(1);
            tracing::error!(id = %alert.id, scope = %alert.scope, threshold = alert.threshold_percent, attempts, error = %last_error, "Delivering an alert failed on every attempt; it is not sent again.");
            (Status::Failed, last_error.clone())
        }
    };
    ledger
        .record_until_written(&alert, status, attempts, &detail)
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_cross_once_between_previous_and_new_usage() {
        let t = DEFAULT_THRESHOLDS;
        assert_eq!(crossed(0, 499, 1000, &t), Vec::<u32>::new());
        assert_eq!(crossed(0, 500, 1000, &t), [50]);
        assert_eq!(crossed(500, 799, 1000, &t), Vec::<u32>::new());
        assert_eq!(crossed(500, 800, 1000, &t), [80]);
        assert_eq!(
            crossed(499, 1000, 1000, &t),
            [50, 80, 100],
            "a jump crosses every threshold on the way"
        );
        assert_eq!(
            crossed(1000, 5000, 1000, &t),
            Vec::<u32>::new(),
            "over the limit crosses nothing new"
        );
        assert_eq!(
            crossed(800, 700, 1000, &t),
            Vec::<u32>::new(),
            "usage that went down crosses nothing"
        );
        assert_eq!(
            crossed(0, 10, 0, &t),
            Vec::<u32>::new(),
            "a zero limit alerts nothing"
        );
        assert_eq!(
            crossed(0, 1200, 1000, &[120, 100]),
            [120, 100],
            "in the order configured, above 100 % too"
        );
        // Exact: 1/3 of a limit of 3 is 33.33 %, so 33 % is reached and 34 % is not.
        assert_eq!(crossed(0, 1, 3, &[33, 34]), [33]);
        // No overflow near u64::MAX.
        assert_eq!(crossed(0, u64::MAX, u64::MAX, &[100]), [100]);
        assert!(
            reached(u64::MAX / 2, u64::MAX, 50)
                == (u128::from(u64::MAX / 2) * 100 >= u128::from(u64::MAX) * 50)
        );
    }

    #[test]
    fn the_alert_id_is_deterministic_per_subject_and_threshold() {
        let id = alert_id(
            AlertKind::TokenQuota,
            "consumer=team-a;window=3600s;strategy=total_tokens",
            1_795_168_800_000,
            80,
        );
        assert_eq!(id.len(), 32);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(
            id,
            alert_id(
                AlertKind::TokenQuota,
                "consumer=team-a;window=3600s;strategy=total_tokens",
                1_795_168_800_000,
                80
            )
        );
        let others = [
            alert_id(
                AlertKind::TokenQuota,
                "consumer=team-a;window=3600s;strategy=total_tokens",
                1_795_168_800_000,
                50,
            ),
            alert_id(
                AlertKind::TokenQuota,
                "consumer=team-a;window=3600s;strategy=total_tokens",
                1_795_172_400_000,
                80,
            ),
            alert_id(
                AlertKind::TokenQuota,
                "consumer=team-b;window=3600s;strategy=total_tokens",
                1_795_168_800_000,
                80,
            ),
            alert_id(
                AlertKind::Budget,
                "consumer=team-a;window=3600s;strategy=total_tokens",
                1_795_168_800_000,
                80,
            ),
        ];
        assert!(others.iter().all(|o| *o != id), "{others:?}");
        // Pinned: receivers may store these ids; changing how they are made would re-send every alert.
        let digest = Sha256::digest("token_quota\ns\n0\n50");
        assert_eq!(
            alert_id(AlertKind::TokenQuota, "s", 0, 50),
            hex::encode(&digest[..16])
        );
    }

    #[test]
    fn the_alert_body_names_its_subject_generically() {
        let standing = Standing {
            kind: AlertKind::Budget,
            scope: "consumer=team-a".into(),
            window_start_ms: 0,
            window_end_ms: 2_592_000_000,
            used: 81_000_000,
            limit: 100_000_000,
            unit: "USD".into(),
        };
        let alert = Alert::new(&standing, 80, 1_795_168_800_123);
        let body = serde_json::to_value(&alert).unwrap_or_default();
        assert_eq!(body["kind"], "budget");
        assert_eq!(body["unit"], "USD");
        assert_eq!(body["threshold_percent"], 80);
        assert_eq!(body["time"], "2026-11-20T10:00:00.123Z");
        assert_eq!(body["id"], alert_id(AlertKind::Budget, "consumer=team-a", 0, 80));
    }

    #[test]
    fn an_unpriced_model_is_one_subject_per_utc_day_reached_by_its_first_event() {
        // 2026-11-20T10:00:00Z and 23:59:59.999Z are the same day; the next millisecond is the next one.
        let morning = Standing::unpriced("gpt-9", 1_795_168_800_000, 1);
        let night = Standing::unpriced("gpt-9", 1_795_219_199_999, 7);
        assert_eq!(morning.subject(), night.subject());
        assert_eq!(
            (
                morning.scope.as_str(),
                morning.window_start_ms,
                morning.window_end_ms
            ),
            ("model_served=gpt-9", 1_795_132_800_000, 1_795_219_200_000)
        );
        assert_ne!(
            Standing::unpriced("gpt-9", 1_795_219_200_000, 1).subject(),
            night.subject()
        );
        assert_eq!(crossed(0, morning.used, morning.limit, &[100]), [100]);
        assert!(crossed(1, night.used, night.limit, &[100]).is_empty());
        assert_eq!(morning.kind.as_str(), "unpriced_model");
    }
}
