//! Recognising a consumer group that Tansu 0.6 formed with nobody holding the partitions (an *orphaned* group).
//!
//! A member that joins while the group's leader is dead may be told that the dead member leads; it then sends an
//! empty assignment in SyncGroup and waits for the leader's. Tansu 0.6 expires the dead leader while handling that
//! SyncGroup and forms the group from the empty assignment: every member holds nothing, heartbeats succeed, and
//! no rebalance ever comes (seen after a broker and the billing-consumer were killed together). Apache Kafka does
//! not do this, but the remedy is harmless there too: a member that holds nothing while the work it would share
//! stands still leaves the group and joins again as a new member, and the group assigns its partitions afresh.
//!
//! What "stands still" means is the caller's: the quota lease watches the end of the quota topic (the holder
//! heartbeats on it), ingest watches the group's committed offsets while there is lag. [`Stall`] only says
//! whether an observed value has not changed for longer than a bound.

use std::time::{Duration, Instant};

/// Whether an observed value has stood still for longer than a bound.
#[derive(Debug)]
pub struct Stall<T> {
    bound: Duration,
    last: Option<T>,
    since: Instant,
}

impl<T: PartialEq> Stall<T> {
    /// Nothing observed yet, as of `now`.
    pub fn new(bound: Duration, now: Instant) -> Self {
        Self {
            bound,
            last: None,
            since: now,
        }
    }

    /// The bound it was made with.
    pub fn bound(&self) -> Duration {
        self.bound
    }

    /// Starts over (the member holds work again, or it just joined again).
    pub fn reset(&mut self, now: Instant) {
        self.last = None;
        self.since = now;
    }

    /// Records `value` seen at `now`; true once it has not changed for longer than the bound.
    pub fn observe(&mut self, value: T, now: Instant) -> bool {
        if self.last.as_ref() != Some(&value) {
            self.last = Some(value);
            self.since = now;
            return false;
        }
        now.duration_since(self.since) > self.bound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUND: Duration = Duration::from_secs(12);

    #[test]
    fn a_value_that_keeps_changing_never_stalls() {
        let start = Instant::now();
        let mut stall = Stall::new(BOUND, start);
        for second in 0..60u64 {
            assert!(!stall.observe(second, start + Duration::from_secs(second)));
        }
    }

    #[test]
    fn a_value_that_stands_still_past_the_bound_stalls() {
        let start = Instant::now();
        let mut stall = Stall::new(BOUND, start);
        assert!(!stall.observe(7, start));
        assert!(!stall.observe(7, start + BOUND));
        assert!(stall.observe(7, start + BOUND + Duration::from_millis(1)));
    }

    #[test]
    fn a_reset_starts_the_count_over() {
        let start = Instant::now();
        let mut stall = Stall::new(BOUND, start);
        assert!(!stall.observe(7, start));
        stall.reset(start + BOUND);
        assert!(!stall.observe(7, start + BOUND + Duration::from_secs(1)));
        assert!(!stall.observe(7, start + BOUND * 2));
        assert!(stall.observe(7, start + BOUND * 2 + Duration::from_secs(2)));
    }
}
