//! The log lines of a meter-sidecar outage. A sidecar that is down makes every request fall back to the
//! in-process estimate; a log line per request would flood the log at the gateway's full rate (and cost more CPU
//! than the fallback). Instead a worker logs one warning when its calls start failing, one every
//! [`REPEAT_EVERY`] while they keep failing (how many fell back since the last line, and the latest reason), and
//! one line when the sidecar answers again (how long it was away, how many fell back). Each fallback is counted
//! anyway, in `tollgate_prompt_estimates_total{source="fallback"}`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often a continuing outage is logged again.
pub const REPEAT_EVERY: Duration = Duration::from_secs(10);

/// One worker's view of whether meter-sidecar answers. Thread-safe, lock-free; cheap when the sidecar is up
/// (one relaxed load per call).
#[derive(Debug)]
pub struct Outage {
    /// The origin of the millisecond clock below.
    epoch: Instant,
    /// When the outage began, in ms since `epoch` plus one (0: the sidecar answers).
    since: AtomicU64,
    /// When the outage was last logged, in ms since `epoch`.
    logged: AtomicU64,
    /// Fallbacks since the last line, and since the outage began.
    unlogged: AtomicU64,
    total: AtomicU64,
}

/// What a call to [`Outage::failed`] or [`Outage::answered`] says to log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// Nothing: the state did not change and the last line is recent.
    Quiet,
    /// The first failure after answers.
    Began,
    /// Still failing: `fallbacks` since the last line.
    Continues { fallbacks: u64 },
    /// It answers again after `away`, with `fallbacks` in all.
    Ended { away: Duration, fallbacks: u64 },
}

impl Default for Outage {
    fn default() -> Self {
        Self::new(Instant::now())
    }
}

impl Outage {
    pub fn new(epoch: Instant) -> Self {
        Self {
            epoch,
            since: AtomicU64::new(0),
            logged: AtomicU64::new(0),
            unlogged: AtomicU64::new(0),
            total: AtomicU64::new(0),
        }
    }

    fn ms(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX - 1)
    }

    /// A call failed at `now`.
    pub fn failed(&self, now: Instant) -> Report {
        let at = self.ms(now);
        self.total.fetch_add(1, Ordering::Relaxed);
        let unlogged = self.unlogged.fetch_add(1, Ordering::Relaxed) + 1;
        if self
            .since
            .compare_exchange(0, at + 1, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.logged.store(at, Ordering::Relaxed);
            self.unlogged.store(0, Ordering::Relaxed);
            return Report::Began;
        }
        let last = self.logged.load(Ordering::Relaxed);
        let due = at.saturating_sub(last) >= REPEAT_EVERY.as_millis() as u64;
        if due
            && self
                .logged
                .compare_exchange(last, at, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.unlogged.store(0, Ordering::Relaxed);
            return Report::Continues { fallbacks: unlogged };
        }
        Report::Quiet
    }

    /// A call was answered at `now`.
    pub fn answered(&self, now: Instant) -> Report {
        if self.since.load(Ordering::Relaxed) == 0 {
            return Report::Quiet;
        }
        let since = self.since.swap(0, Ordering::Relaxed);
        if since == 0 {
            return Report::Quiet;
        }
        let away = Duration::from_millis(self.ms(now).saturating_sub(since - 1));
        self.unlogged.store(0, Ordering::Relaxed);
        Report::Ended {
            away,
            fallbacks: self.total.swap(0, Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_logged_when_it_begins_every_ten_seconds_while_it_lasts_and_when_it_ends() {
        let t = Instant::now();
        let outage = Outage::new(t);
        assert_eq!(outage.answered(t), Report::Quiet, "answers while up say nothing");
        assert_eq!(outage.failed(t), Report::Began);
        for n in 1..1000 {
            assert_eq!(
                outage.failed(t + Duration::from_millis(n)),
                Report::Quiet,
                "the failures of the next ten seconds say nothing"
            );
        }
        assert_eq!(
            outage.failed(t + REPEAT_EVERY),
            Report::Continues { fallbacks: 1000 },
            "then one line with how many fell back since the first"
        );
        assert_eq!(
            outage.failed(t + REPEAT_EVERY + Duration::from_secs(1)),
            Report::Quiet
        );
        assert_eq!(
            outage.answered(t + Duration::from_secs(12)),
            Report::Ended {
                away: Duration::from_secs(12),
                fallbacks: 1002
            }
        );
        assert_eq!(outage.answered(t + Duration::from_secs(13)), Report::Quiet);
        assert_eq!(
            outage.failed(t + Duration::from_secs(14)),
            Report::Began,
            "the next outage is a new one"
        );
    }
}
