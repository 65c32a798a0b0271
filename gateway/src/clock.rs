//! The time the gateway's quota windows and event timestamps are read from.
//!
//! Production uses [`SystemClock`]. Tests hand the gateway a [`ManualClock`] and move it forward to cross a
//! quota window without sleeping; because the usage events carry the same clock's timestamps, billing-consumer
//! (which windows by event time) sees the same windows.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of "now" in Unix epoch milliseconds.
pub trait Clock: Send + Sync + fmt::Debug {
    fn now_ms(&self) -> u64;
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        wall_ms()
    }
}

/// The system's wall clock in Unix epoch milliseconds (0 before 1970, saturating after 584 million years).
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The wall clock plus an offset that tests move forward.
#[derive(Debug, Default)]
pub struct ManualClock {
    offset_ms: AtomicU64,
}

impl ManualClock {
    pub fn new() -> Self {
        Self::default()
    }

    /// A clock that reads 10 s past the start of the next hour (and runs on from there): windows of up to an hour
    /// then start when a test does, and a test that runs near the top of the wall clock's hour (or minute) does
    /// not see a window roll over that it did not ask for.
    pub fn early_in_an_hour() -> Self {
        const HOUR_MS: u64 = 3_600_000;
        let now = wall_ms();
        let target = (now / HOUR_MS + 1) * HOUR_MS + 10_000;
        Self {
            offset_ms: AtomicU64::new(target - now),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.offset_ms.fetch_add(by, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        wall_ms().saturating_add(self.offset_ms.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clock_early_in_an_hour_is_ten_seconds_past_an_hour() {
        let clock = ManualClock::early_in_an_hour();
        let into_hour = clock.now_ms() % 3_600_000;
        assert!((10_000..11_000).contains(&into_hour), "{into_hour}");
    }

    #[test]
    fn a_manual_clock_moves_only_forward_by_what_it_is_told() {
        let clock = ManualClock::new();
        let before = clock.now_ms();
        clock.advance(Duration::from_secs(3600));
        let after = clock.now_ms();
        assert!(after >= before + 3_600_000);
        assert!(after < before + 3_600_000 + 60_000);
    }
}
