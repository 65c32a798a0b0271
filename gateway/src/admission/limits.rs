//! Request-rate limits per consumer (`limit_count`, as APISIX names it): at most `count` requests per
//! `time_window`, enforced with governor's GCRA — the burst of `count` requests is allowed at once and
//! capacity returns evenly over the window, so a consumer cannot double its rate across a window boundary.
//! State is shared by every worker of a replica; quotas shared across replicas come from the event log.
//!
//! **Across replicas** (`server.replicas = N`, set the same on every replica behind one load balancer), each
//! replica allows its share, `ceil(count / N)` requests per `time_window`, with no coordination on the request
//! path. The bound, for any spread of a consumer's requests over the replicas: together they never allow more
//! than `N × ceil(count / N)` per window — `count` when N divides it, at most `count + N − 1` otherwise; and a
//! consumer whose requests the load balancer spreads evenly (round-robin) gets its whole `count`. One whose
//! requests all land on one replica (a balancer hashing on its address) gets only that replica's share: balance
//! per request, not per client. The `x-ratelimit-*-requests` headers show the whole `count` and this replica's
//! remaining share scaled by N (an estimate of what is left across the replicas).
//!
//! [`RequestLimits::check`] answers with the `x-ratelimit-*-requests` figures OpenAI sends on every response,
//! and for a rejection how long to wait (`Retry-After`). The limiter takes its clock as a type parameter so that
//! tests move time without sleeping.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use crate::config::{Consumer, LimitCount};

type Limiter<C> = RateLimiter<NotKeyed, InMemoryState, C, StateInformationMiddleware>;

/// The figures of the `x-ratelimit-*-requests` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateFigures {
    pub limit: u32,
    pub remaining: u32,
    /// Until the limit is fully available again.
    pub reset: Duration,
}

/// A rejected request: what to answer, and when to come back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub figures: RateFigures,
    pub retry_after: Duration,
    pub status: u16,
    pub message: String,
}

struct ConsumerLimit<C: Clock> {
    limiter: Limiter<C>,
    config: LimitCount,
    /// Time for one request's worth of capacity to return.
    period: Duration,
}

/// Every consumer's request limiter.
pub struct RequestLimits<C: Clock = DefaultClock> {
    by_consumer: HashMap<String, Arc<ConsumerLimit<C>>>,
    clock: C,
    /// The replicas sharing every limit (`server.replicas`).
    replicas: u32,
}

impl<C: Clock> std::fmt::Debug for RequestLimits<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestLimits")
            .field("consumers", &self.by_consumer.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl RequestLimits<DefaultClock> {
    /// Every consumer's limiter, each allowing a `1/replicas` share of its limit.
    pub fn new(consumers: &[Consumer], replicas: u32) -> Self {
        Self::with_clock(consumers, replicas, DefaultClock::default())
    }
}

impl<C: Clock + Clone> RequestLimits<C> {
    pub fn with_clock(consumers: &[Consumer], replicas: u32, clock: C) -> Self {
        Self {
            by_consumer: HashMap::new(),
            clock,
            replicas: replicas.max(1),
        }
        .rebuilt(consumers)
    }

    /// The limiters of a new configuration: a consumer whose `limit_count` is unchanged keeps its limiter (and
    /// what it has used of it); a new or changed limit starts full.
    pub fn rebuilt(&self, consumers: &[Consumer]) -> Self {
        let by_consumer = consumers
            .iter()
            .filter_map(|c| {
                let config = c.limit_count.clone()?;
                if let Some(kept) = self.by_consumer.get(&c.name).filter(|l| l.config == config) {
                    return Some((c.name.clone(), kept.clone()));
                }
                let share = NonZeroU32::new(config.count.div_ceil(self.replicas))?;
                let period = config.time_window / share.get();
                let quota = Quota::with_period(period)?.allow_burst(share);
                let limiter = RateLimiter::direct_with_clock(quota, self.clock.clone()).with_middleware();
                Some((
                    c.name.clone(),
                    Arc::new(ConsumerLimit {
                        limiter,
                        config,
                        period,
                    }),
                ))
            })
            .collect();
        Self {
            by_consumer,
            clock: self.clock.clone(),
            replicas: self.replicas,
        }
    }

    /// Takes one request from `consumer`'s allowance: `Ok(None)` when the consumer has no limit, `Ok(figures)`
    /// when the request may go on, `Err` when it must be rejected.
    pub fn check(&self, consumer: &str) -> Result<Option<RateFigures>, Rejection> {
        let Some(limit) = self.by_consumer.get(consumer) else {
            return Ok(None);
        };
        let count = limit.config.count;
        let share = count.div_ceil(self.replicas);
        match limit.limiter.check() {
            Ok(state) => {
                let remaining = state.remaining_burst_capacity().min(share);
                let reset = limit.period * (share - remaining);
                Ok(Some(RateFigures {
                    limit: count,
                    remaining: remaining.saturating_mul(self.replicas).min(count),
                    reset,
                }))
            }
            Err(not_until) => {
                let retry_after = not_until.wait_time_from(self.clock.now());
                let figures = RateFigures {
                    limit: count,
                    remaining: 0,
                    reset: limit.period * share,
                };
                Err(Rejection {
                    figures,
                    retry_after,
                    status: limit.config.rejected_code,
                    message: limit.config.rejected_msg.clone(),
                })
            }
        }
    }
}

/// A duration as OpenAI writes it in `x-ratelimit-reset-*`: `20ms`, `1s`, `6m0s`.
pub fn format_reset(d: Duration) -> String {
    let millis = d.as_millis();
    if millis < 1000 {
        return format!("{millis}ms");
    }
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    if secs < 60 {
        format!("{secs}s")
    } else {
        format!("{}m{}s", secs / 60, secs % 60)
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;
    use crate::config::ConsumerKey;

    fn consumer(name: &str, limit: Option<LimitCount>) -> Consumer {
        Consumer {
            team: None,
            name: name.into(),
            class: "default".into(),
            keys: vec![ConsumerKey {
                id: format!("{name}-1"),
                sha256: [0; 32],
                expires_at: None,
                models: None,
            }],
            limit_count: limit,
            token_limits: Vec::new(),
        }
    }

    fn three_per_minute() -> LimitCount {
        LimitCount {
            count: 3,
            time_window: Duration::from_secs(60),
            rejected_code: 429,
            rejected_msg: "Rate limit reached for requests".into(),
        }
    }

    #[test]
    fn a_consumer_gets_its_count_then_waits_for_capacity_to_return() {
        let clock = FakeRelativeClock::default();
        let limits = RequestLimits::with_clock(&[consumer("a", Some(three_per_minute()))], 1, clock.clone());
        let remaining: Vec<u32> = (0..3)
            .map(|_| limits.check("a").unwrap().unwrap().remaining)
            .collect();
        assert_eq!(remaining, [2, 1, 0]);
        let rejected = limits.check("a").unwrap_err();
        assert_eq!(rejected.status, 429);
        assert_eq!(
            rejected.retry_after,
            Duration::from_secs(20),
            "one request's worth returns every 20 s"
        );
        clock.advance(Duration::from_secs(20));
        assert_eq!(limits.check("a").unwrap().unwrap().remaining, 0);
        assert!(limits.check("a").is_err());
    }

    #[test]
    fn replicas_each_allow_their_share_so_that_together_they_allow_the_count_and_never_more_than_the_bound() {
        let ten_per_minute = LimitCount {
            count: 10,
            ..three_per_minute()
        };
        let clock = FakeRelativeClock::default();
        let replicas: Vec<_> = (0..3)
            .map(|_| {
                RequestLimits::with_clock(&[consumer("a", Some(ten_per_minute.clone()))], 3, clock.clone())
            })
            .collect();
        // Round-robin: the first ten requests all pass, and the headers speak of the whole limit.
        let figures: Vec<RateFigures> = (0..10)
            .map(|i| replicas[i % 3].check("a").expect("within the limit").unwrap())
            .collect();
        assert!(figures.iter().all(|f| f.limit == 10));
        assert_eq!(
            figures[0].remaining, 9,
            "ceil(10/3) = 4 per replica: 3 left here, about 9 across three"
        );
        // Together they allow at most 3 × ceil(10 / 3) = 12 in the window, whatever the spread.
        let more = (0..30).filter(|i| replicas[i % 3].check("a").is_ok()).count();
        assert_eq!(10 + more, 12);
        // All on one replica: that replica's share.
        let lone = RequestLimits::with_clock(&[consumer("a", Some(ten_per_minute))], 3, clock);
        assert_eq!((0..10).filter(|_| lone.check("a").is_ok()).count(), 4);
    }

    #[test]
    fn consumers_without_a_limit_and_unknown_ones_are_not_limited() {
        let limits = RequestLimits::new(&[consumer("free", None)], 1);
        assert_eq!(limits.check("free"), Ok(None));
        assert_eq!(limits.check("nobody"), Ok(None));
    }

    #[test]
    fn resets_are_written_as_openai_writes_them() {
        assert_eq!(format_reset(Duration::from_millis(20)), "20ms");
        assert_eq!(format_reset(Duration::from_secs(1)), "1s");
        assert_eq!(format_reset(Duration::from_millis(1500)), "2s");
        assert_eq!(format_reset(Duration::from_secs(360)), "6m0s");
    }
}
