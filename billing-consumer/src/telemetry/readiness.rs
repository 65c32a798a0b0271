//! Whether this process's Kafka and ClickHouse paths work, as `GET /readyz` on the metrics address reports it:
//! **ingest** — the group's offsets and the topic's watermarks were read from the broker lately (a broker whose
//! storage died still answers metadata, not these) and ClickHouse takes the batches; **quota** — the lease holder's
//! last heartbeat was delivered lately (a standby, which publishes nothing, is ready while it counts). Each path
//! marks its own state here as it runs; the endpoint only reads it. 200 `{"status":"ready",…}` when every path
//! that runs in this process works, 503 `{"status":"degraded",…}` with each check otherwise.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

/// How long a path may go without a success before it counts as not working, in multiples of its interval.
const INTERVALS_OF_GRACE: u64 = 3;

/// The state each running path marks. One per process ([`STATE`]), like the metrics registry.
#[derive(Debug)]
pub struct Readiness {
    ingest_running: AtomicBool,
    /// When the lag was last measured from the broker (ms since the epoch; 0: never).
    lag_measured_ms: AtomicU64,
    lag_interval_ms: AtomicU64,
    insert_failing: AtomicBool,
    quota_running: AtomicBool,
    lease_held: AtomicBool,
    /// When the last heartbeat was delivered (ms since the epoch; 0: never).
    heartbeat_ms: AtomicU64,
    heartbeat_interval_ms: AtomicU64,
}

/// This process's readiness.
pub static STATE: Readiness = Readiness::new();

impl Readiness {
    const fn new() -> Self {
        Self {
            ingest_running: AtomicBool::new(false),
            lag_measured_ms: AtomicU64::new(0),
            lag_interval_ms: AtomicU64::new(1_000),
            insert_failing: AtomicBool::new(false),
            quota_running: AtomicBool::new(false),
            lease_held: AtomicBool::new(false),
            heartbeat_ms: AtomicU64::new(0),
            heartbeat_interval_ms: AtomicU64::new(1_000),
        }
    }

    /// The ingest loop started; its lag is measured every `lag_interval`.
    pub fn ingest_started(&self, lag_interval: Duration, now_ms: u64) {
        self.lag_interval_ms
            .store(millis(lag_interval), Ordering::Relaxed);
        // Counted from the start, so a process that never reaches the broker turns degraded too.
        self.lag_measured_ms.store(now_ms, Ordering::Relaxed);
        self.ingest_running.store(true, Ordering::Relaxed);
    }

    /// The group's lag was read from the broker.
    pub fn lag_measured(&self, now_ms: u64) {
        self.lag_measured_ms.store(now_ms, Ordering::Relaxed);
    }

    /// A batch insert into ClickHouse failed (`true`) or succeeded (`false`).
    pub fn insert_failing(&self, failing: bool) {
        self.insert_failing.store(failing, Ordering::Relaxed);
    }

    /// The quota loop started; it heartbeats every `heartbeat_interval` while it holds the lease.
    pub fn quota_started(&self, heartbeat_interval: Duration, now_ms: u64) {
        self.heartbeat_interval_ms
            .store(millis(heartbeat_interval), Ordering::Relaxed);
        self.heartbeat_ms.store(now_ms, Ordering::Relaxed);
        self.quota_running.store(true, Ordering::Relaxed);
    }

    /// The quota lease was granted (`true`) or lost.
    pub fn lease_held(&self, held: bool, now_ms: u64) {
        if held && !self.lease_held.swap(true, Ordering::Relaxed) {
            // A new holder gets one interval's grace for its first heartbeat.
            self.heartbeat_ms.store(now_ms, Ordering::Relaxed);
        }
        self.lease_held.store(held, Ordering::Relaxed);
    }

    /// A heartbeat was delivered to the quota topic.
    pub fn heartbeat_delivered(&self, now_ms: u64) {
        self.heartbeat_ms.store(now_ms, Ordering::Relaxed);
    }

    /// Whether every running path works, and the body `/readyz` answers with.
    pub fn report(&self, now_ms: u64) -> (bool, Value) {
        let mut ready = true;
        let mut checks = serde_json::Map::new();
        if self.ingest_running.load(Ordering::Relaxed) {
            let age_ms = now_ms.saturating_sub(self.lag_measured_ms.load(Ordering::Relaxed));
            let max_ms = INTERVALS_OF_GRACE * self.lag_interval_ms.load(Ordering::Relaxed);
            let inserting = !self.insert_failing.load(Ordering::Relaxed);
            let ok = age_ms <= max_ms && inserting;
            ready &= ok;
            checks.insert(
                "ingest".to_owned(),
                json!({
                    "ok": ok,
                    "broker_offsets_age_seconds": seconds(age_ms),
                    "max_age_seconds": seconds(max_ms),
                    "clickhouse_inserting": inserting,
                }),
            );
        }
        if self.quota_running.load(Ordering::Relaxed) {
            let held = self.lease_held.load(Ordering::Relaxed);
            let age_ms = now_ms.saturating_sub(self.heartbeat_ms.load(Ordering::Relaxed));
            let max_ms = INTERVALS_OF_GRACE * self.heartbeat_interval_ms.load(Ordering::Relaxed).max(1_000);
            let ok = !held || age_ms <= max_ms;
            ready &= ok;
            checks.insert(
                "quota".to_owned(),
                json!({
                    "ok": ok,
                    "lease_held": held,
                    "heartbeat_age_seconds": held.then(|| seconds(age_ms)),
                    "max_age_seconds": seconds(max_ms),
                }),
            );
        }
        let body = json!({
            "status": if ready { "ready" } else { "degraded" },
            "checks": checks,
        });
        (ready, body)
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn seconds(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readiness() -> Readiness {
        Readiness::new()
    }

    #[test]
    fn a_process_running_nothing_is_ready() {
        let (ready, body) = readiness().report(1_000);
        assert!(ready);
        assert_eq!(body["status"], "ready");
    }

    #[test]
    fn ingest_is_degraded_once_the_broker_offsets_are_three_intervals_old() {
        let r = readiness();
        r.ingest_started(Duration::from_secs(1), 10_000);
        assert!(r.report(13_000).0);
        let (ready, body) = r.report(13_001);
        assert!(!ready);
        assert_eq!(body["checks"]["ingest"]["ok"], false);
        r.lag_measured(13_000);
        assert!(r.report(13_001).0);
    }

    #[test]
    fn ingest_is_degraded_while_clickhouse_refuses_batches() {
        let r = readiness();
        r.ingest_started(Duration::from_secs(1), 0);
        r.insert_failing(true);
        let (ready, body) = r.report(0);
        assert!(!ready);
        assert_eq!(body["checks"]["ingest"]["clickhouse_inserting"], false);
        r.insert_failing(false);
        assert!(r.report(0).0);
    }

    #[test]
    fn a_standby_quota_loop_is_ready_and_a_holder_needs_its_heartbeats_delivered() {
        let r = readiness();
        r.quota_started(Duration::from_secs(1), 0);
        assert!(r.report(60_000).0, "a standby publishes nothing");
        r.lease_held(true, 60_000);
        assert!(r.report(63_000).0, "a new holder has its grace");
        let (ready, body) = r.report(63_001);
        assert!(!ready);
        assert_eq!(body["checks"]["quota"]["lease_held"], true);
        r.heartbeat_delivered(63_000);
        assert!(r.report(63_001).0);
    }
}
