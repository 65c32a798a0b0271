//! Admission against snapshots and this replica's own books, with a clock the tests move.

use std::sync::Arc;
use std::time::Duration;

use tollgate_schemas::quota::{LimitStrategy, QuotaSnapshot, Watermark};

use super::{Acceptance, Demand, Quotas};
use crate::clock::{Clock, ManualClock};
use crate::config::Config;

const GATEWAY: &str = "tollgate-gateway/gw-test";
const TEAM_A: &str = "consumer=team-a;models=gpt-4o-mini;window=3600s;strategy=total_tokens";
const MODEL: &str = "models=gpt-4o-mini;window=3600s;strategy=total_tokens";

/// Reference scenario 4, scaled: team-a 1,000 and team-b 2,000 tokens an hour on a model with 2,500 in all;
/// instance `small` has 300 tokens a minute of its own.
fn quotas(clock: Arc<ManualClock>) -> Quotas {
    let config = Config::from_toml_with_env(
        r#"
[meter]
url = "http://127.0.0.1:1"
[kafka]
brokers = "127.0.0.1:1"
[[instances]]
name = "big"
endpoint = "http://127.0.0.1:2/v1"
[[instances]]
name = "small"
endpoint = "http://127.0.0.1:3/v1"
token_limit = { limit = 300, time_window = "1m" }
[[routes]]
name = "mini"
models = ["gpt-4o-mini"]
targets = [{ instance = "small" }, { instance = "big" }]
[[token_limits]]
models = ["gpt-4o-mini"]
limit = 2500
time_window = "1h"
[[consumers]]
name = "team-a"
keys = [{ id = "a1", sha256 = "0000000000000000000000000000000000000000000000000000000000000001" }]
token_limits = [{ models = ["gpt-4o-mini"], limit = 1000, time_window = "1h", rejected_msg = "team-a is out of tokens" }]
[[consumers]]
name = "team-b"
keys = [{ id = "b1", sha256 = "0000000000000000000000000000000000000000000000000000000000000002" }]
token_limits = [{ models = ["gpt-4o-mini"], limit = 2000, time_window = "1h", rejected_type = "insufficient_quota" }]
"#,
        |_| None,
    )
    .unwrap();
    Quotas::new(&config, Arc::from(GATEWAY), clock)
}

fn demand(prompt: u64, completion: u64) -> Demand {
    Demand {
        prompt,
        completion,
        cost: None,
    }
}

fn snapshot(
    quotas: &Quotas,
    clock: &ManualClock,
    scope: &str,
    used: u64,
    watermark: Option<(i32, i64)>,
) -> QuotaSnapshot {
    let window = tollgate_schemas::quota::Window::containing(clock.now_ms(), 3_600_000);
    QuotaSnapshot {
        scope: scope.to_owned(),
        limit: 0,
        strategy: LimitStrategy::TotalTokens,
        currency: None,
        window_start_ms: window.start_ms,
        window_end_ms: window.end_ms,
        used,
        events: 1,
        watermarks: watermark
            .map(|(partition, offset)| Watermark {
                gateway: quotas.gateway.to_string(),
                partition,
                offset,
            })
            .into_iter()
            .collect(),
        newest_event_ms: 0,
        published_at_ms: clock.now_ms(),
    }
}

#[test]
fn admits_while_the_estimate_fits_and_rejects_the_request_that_would_cross_the_limit() {
    let clock = Arc::new(ManualClock::early_in_an_hour());
    let quotas = quotas(clock.clone());
    let mut tickets = Vec::new();
    for _ in 0..4 {
        let (ticket, figures) = quotas.admit("team-a", "gpt-4o-mini", demand(200, 50)).unwrap();
        tickets.push(ticket);
        assert!(figures.unwrap().remaining <= 1000);
    }
    // 4 × 250 = 1,000: exactly the limit. One more token does not fit.
    let rejection = quotas.admit("team-a", "gpt-4o-mini", demand(1, 0)).unwrap_err();
    assert_eq!(rejection.kind, "consumer");
    assert_eq!(rejection.scope, TEAM_A);
    assert_eq!(rejection.message, "team-a is out of tokens");
    assert_eq!(rejection.error_type, "rate_limit_exceeded");
    assert_eq!((rejection.figures.limit, rejection.figures.remaining), (1000, 0));
    assert!(rejection.retry_after >= Duration::from_secs(1));
    assert!(rejection.retry_after <= Duration::from_secs(3600));
    // Another consumer and other models are not affected.
    assert!(quotas.admit("team-b", "gpt-4o-mini", demand(1, 0)).is_ok());
    assert!(quotas.admit("team-a", "gpt-4o", demand(5000, 0)).is_ok());
}

#[test]
fn the_tightest_scope_sets_the_token_headers() {
    let clock = Arc::new(ManualClock::early_in_an_hour());
    let quotas = quotas(clock.clone());
    let (_ticket, figures) = quotas.admit("team-b", "gpt-4o-mini", demand(100, 0)).unwrap();
    // team-b: 2,000 − 100; the model: 2,500 − 100. The consumer's is tighter.
    assert_eq!(figures.unwrap().remaining, 1900);
    quotas.accept(snapshot(&quotas, &clock, MODEL, 2300, None));
    let (_ticket2, figures) = quotas.admit("team-b", "gpt-4o-mini", demand(50, 0)).unwrap();
    assert_eq!(figures.unwrap().remaining, 2500 - 2300 - 100 - 50);
}

#[test]
fn the_consumer_is_checked_before_the_model_and_either_rejects() {
    let clock = Arc::new(ManualClock::early_in_an_hour());
    let quotas = quotas(clock.clone());
    quotas.accept(snapshot(&quotas, &clock, MODEL, 2400, None));
    let rejection = quotas.admit("team-b", "gpt-4o-mini", demand(101, 0)).unwrap_err();
    assert_eq!(rejection.kind, "global");
    assert_eq!(rejection.scope, MODEL);
    quotas.accept(snapshot(&quotas, &clock, TEAM_A, 1000, None));
    let rejection = quotas.admit("team-a", "gpt-4o-mini", demand(1, 0)).unwrap_err();
    assert_eq!(
        rejection.kind, "consumer",
        "both are used up; the consumer's answers"
    );
}

#[test]
fn settling_replaces_the_reservation_and_a_covering_snapshot_takes_it_over() {
    let clock = Arc::new(ManualClock::early_in_an_hour());
    let quotas = quotas(clock.clone());
    let (ticket, _) = quotas.admit("team-a", "gpt-4o-mini", demand(100, 500)).unwrap();
    // Reserved 600 of 1,000: a 401-token request does not fit, a 400-token one does.
    assert!(quotas.admit("team-a", "gpt-4o-mini", demand(401, 0)).is_err());
    let local = ticket.settle(120, 30, clock.now_ms()).unwrap();
    // Actual usage 150: now 850 fit.
    let (probe, _) = quotas.admit("team-a", "gpt-4o-mini", demand(850, 0)).unwrap();
    drop(probe);
    local.delivered(2, 17);
    // A snapshot that does not reach offset 17 counts other usage only: ours stays pending on top.
    quotas.accept(snapshot(&quotas, &clock, TEAM_A, 300, Some((2, 16))));
    assert!(quotas.admit("team-a", "gpt-4o-mini", demand(551, 0)).is_err());
    assert!(quotas.admit("team-a", "gpt-4o-mini", demand(550, 0)).is_ok());
    // One that does counts it: 450 used in all, never 600.
    quotas.accept(snapshot(&quotas, &clock, TEAM_A, 450, Some((2, 17))));
    assert!(quotas.admit("team-a", "gpt-4o-mini", demand(551, 0)).is_err());
    assert!(quotas.admit("team-a", "gpt-4o-mini", demand(550, 0)).is_ok());
    // The model's scope holds the same request until its own snapshot covers it.
    assert_eq!(quotas.pending_tokens(), 150);
    quotas.accept(snapshot(&quotas, &clock, MODEL, 450, Some((2, 17))));
    assert_eq!(quotas.pending_tokens(), 0);
}

#[test]
fn an_event_acknowledged_after_the_snapshot_that_counts_it_is_not_refused_on() {
    let clock = Arc::new(ManualClock::early_in_an_hour());
    let quotas = quotas(clock.clone());
    let (ticket, _) = quotas.admit("team-a", "gpt-4o-mini", demand(600, 0)).unwrap();
    let local = ticket.settle(600, 0, clock.now_ms()).unwrap();
    // billing-consumer counted the event before Kafka's acknowledgment reached this replica: the snapshot's
    // recount could not drop it from the book yet.
    quotas.accept(snapshot(&quotas, &clock, TEAM_A, 600, Some((0, 3))));
    local.delivered(0, 3);
    clock.advance(Duration::from_millis(1));
    // Counted twice (1,200) the request would be refused; the recount before a refusal finds it covered.
    let (_held, figures) = quotas
        .admit("team-a", "gpt-4o-mini", demand(400, 0))
        .expect("600 of 1,000 used: 400 fit");
    assert_eq!(figures.map(|f| f.remaining), Some(0));
    let rejection = quotas.admit("team-a", "gpt-4o-mini", demand(1, 0)).unwrap_err();
    assert_eq!((rejection.counted, rejection.pending), (600, 400));
}

#[test]
fn a_watermark_of_another_partition_or_gateway_does_not_cover_our_event() {
    let clock = Arc::new(ManualClock::early_in_an_hour());
    let quotas = quotas(clock.clone());
    let (ticket, _) = quotas.admit("team-a", "gpt-4o-mini", demand(100, 0)).unwrap();
    ticket.settle(100, 0, clock.now_ms()).unwrap().delivered(1, 5);
    quotas.accept(snapshot(&quotas, &clock, TEAM_A, 0, Some((0, 99))));
    let mut other = snapshot(&quotas, &clock, TEAM_A, 0, Some((1, 99)));
    other.watermarks[0].gateway = "tollgate-gateway/other".into();
    quotas.accept(other);
    assert!(quotas.admit("team-a", "gpt-4o-mini", demand(901, 0)).is_err());
}

#[test]
fn a_dropped_ticket_gives_its_reservation_back() {
    let clock = Arc::new(ManualClock::early_in_an_hour());
    let quotas = quotas(clock.clone());
    let (ticket, _) = quotas.admit("team-a", "gpt-4o-mini", demand(1000, 0)).unwrap();
    assert!(quotas.admit("team-a", "gpt-4o-mini", demand(1, 0)).is_err());
    drop(ticket);
    assert!(quotas.admit("team-a", "gpt-4o-mini", demand(1000, 0)).is_ok());
}

#[test]
fn windows_roll_over_on_the_hour_and_the_old_usage_stops_counting() {
    let clock = Arc::new(ManualClock::early_in_an_hour());
    let quotas = quotas(clock.clone());
    let (ticket, _) = quotas.admit("team-a", "gpt-4o-mini", demand(1000, 0)).unwrap();
    ticket.settle(1000, 0, clock.now_ms());
    quotas.accept(snapshot(&quotas, &clock, TEAM_A, 1000, None));
    let rejection = quotas.admit("team-a", "gpt-4o-mini", demand(1, 0)).unwrap_err();
    let reset = rejection.figures.reset;
    clock.advance(reset);
    // The next window: the old snapshot and the settled request belong to the previous hour.
    let (_ticket, figures) = quotas.admit("team-a", "gpt-4o-mini", demand(1000, 0)).unwrap();
    let figures = figures.unwrap();
    assert_eq!(figures.remaining, 0);
    assert!(figures.reset > Duration::from_secs(3599));
}

#[test]
fn a_request_in_flight_across_the_window_boundary_counts_in_the_window_it_finishes_in() {
    let clock = Arc::new(ManualClock::early_in_an_hour());
    let quotas = quotas(clock.clone());
    let (ticket, figures) = quotas.admit("team-a", "gpt-4o-mini", demand(400, 0)).unwrap();
    clock.advance(figures.unwrap().reset);
    assert!(quotas.admit("team-a", "gpt-4o-mini", demand(601, 0)).is_err());
    ticket.settle(400, 0, clock.now_ms());
    assert!(quotas.admit("team-a", "gpt-4o-mini", demand(601, 0)).is_err());
    assert!(quotas.admit("team-a", "gpt-4o-mini", demand(600, 0)).is_ok());
}

#[test]
fn concurrent_admissions_cannot_share_the_same_remaining_tokens() {
    let clock = Arc::new(ManualClock::early_in_an_hour());
    let quotas = Arc::new(quotas(clock));
    let admitted: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..64)
            .map(|_| {
                let quotas = quotas.clone();
                s.spawn(move || {
                    quotas
                        .admit("team-a", "gpt-4o-mini", demand(90, 10))
                        .map(|(ticket, _)| std::mem::forget(ticket))
                        .is_ok()
                })
            })
            .collect();
        handles.into_iter().map(|h| usize::from(h.join().unwrap())).sum()
    });
    assert_eq!(
        admitted, 10,
        "1,000 tokens hold exactly ten 100-token reservations"
    );
}

#[test]
fn an_instance_with_its_quota_used_up_is_refused_per_attempt_and_released_on_failover() {
    let clock = Arc::new(ManualClock::early_in_an_hour());
    let quotas = quotas(clock.clone());
    let (mut first, _) = quotas.admit("team-b", "gpt-4o-mini", demand(200, 0)).unwrap();
    quotas
        .hold_instance(&mut first, "team-b", "gpt-4o-mini", "small")
        .unwrap();
    let (mut second, _) = quotas.admit("team-b", "gpt-4o-mini", demand(200, 0)).unwrap();
    let retry = quotas
        .hold_instance(&mut second, "team-b", "gpt-4o-mini", "small")
        .unwrap_err();
    assert!(retry <= Duration::from_secs(60));
    quotas
        .hold_instance(&mut second, "team-b", "gpt-4o-mini", "big")
        .unwrap();
    // The first request fails over away from `small`: its hold there is given back.
    first.release_attempt();
    quotas
        .hold_instance(&mut second, "team-b", "gpt-4o-mini", "small")
        .unwrap();
}

#[test]
fn an_event_acknowledged_after_the_snapshot_that_counts_it_stops_counting_at_the_next_recount() {
    let clock = Arc::new(ManualClock::early_in_an_hour());
    let quotas = quotas(clock.clone());
    let (ticket, _) = quotas.admit("team-a", "gpt-4o-mini", demand(100, 0)).unwrap();
    let local = ticket.settle(100, 0, clock.now_ms()).unwrap();
    // The snapshot counting the event arrives before Kafka's acknowledgement: the event stays pending.
    quotas.accept(snapshot(&quotas, &clock, TEAM_A, 100, Some((0, 5))));
    local.delivered(0, 5);
    assert!(
        quotas.admit("team-a", "gpt-4o-mini", demand(801, 0)).is_err(),
        "200 counted"
    );
    // Admission trusts the running total only so long; then the list is recounted and the event is covered.
    clock.advance(Duration::from_millis(super::RECOUNT_INTERVAL_MS));
    assert!(
        quotas.admit("team-a", "gpt-4o-mini", demand(900, 0)).is_ok(),
        "100 counted, once"
    );
}

#[test]
fn admission_does_not_rescan_the_books_on_every_request() {
    let clock = Arc::new(ManualClock::early_in_an_hour());
    let quotas = quotas(clock.clone());
    // Thousands of settled requests no snapshot covers (billing-consumer's loop is down).
    for _ in 0..5_000 {
        let (ticket, _) = quotas.admit("team-b", "gpt-4o-mini", demand(0, 0)).unwrap();
        ticket.settle(0, 0, clock.now_ms());
    }
    let book = quotas.layout.load().by_key[MODEL].clone();
    let counted_at = book.lock().counted_at_ms;
    for _ in 0..100 {
        drop(quotas.admit("team-b", "gpt-4o-mini", demand(1, 0)).unwrap());
    }
    assert_eq!(
        book.lock().counted_at_ms,
        counted_at,
        "no recount within the interval"
    );
    assert_eq!(book.lock().list.len(), 5_000);
}

#[test]
fn settled_acknowledged_requests_fold_into_a_few_spans_that_a_snapshot_takes_over_whole() {
    let clock = Arc::new(ManualClock::early_in_an_hour());
    let quotas = quotas(clock.clone());
    // billing-consumer's loop is away: 10,000 requests over 5 s, their events landing in two partitions.
    for i in 0..10_000i64 {
        let (ticket, _) = quotas.admit("team-b", "gpt-4o-mini", demand(0, 0)).unwrap();
        ticket
            .settle(0, 0, clock.now_ms())
            .unwrap()
            .delivered((i % 2) as i32, i / 2);
        if i % 20 == 19 {
            clock.advance(Duration::from_millis(10));
        }
    }
    let book = quotas.layout.load().by_key[MODEL].clone();
    // Within FOLD_AFTER_MS of settling, a request still waits to be covered on its own.
    clock.advance(Duration::from_millis(super::RECOUNT_INTERVAL_MS));
    drop(quotas.admit("team-b", "gpt-4o-mini", demand(0, 0)).unwrap());
    assert!(book.lock().list.len() > 5_000);
    clock.advance(Duration::from_millis(super::FOLD_AFTER_MS));
    drop(quotas.admit("team-b", "gpt-4o-mini", demand(0, 0)).unwrap());
    {
        let pending = book.lock();
        assert!(
            pending.list.len() <= 1,
            "only the request in flight: {}",
            pending.list.len()
        );
        // Two partitions × 5 s / 250 ms.
        assert!(pending.folded.len() <= 2 * 21, "{} spans", pending.folded.len());
    }
    // A snapshot that reaches the middle of partition 0 drops the spans it passes, not the ones after.
    quotas.accept(snapshot(&quotas, &clock, MODEL, 0, Some((0, 2_499))));
    let after = book.lock().folded.len();
    assert!(after > 0 && after < 2 * 21);
    // One that reaches the end of both partitions takes them all over.
    let mut both = snapshot(&quotas, &clock, MODEL, 0, Some((0, 4_999)));
    both.watermarks.push(tollgate_schemas::quota::Watermark {
        gateway: GATEWAY.to_owned(),
        partition: 1,
        offset: 4_999,
    });
    quotas.accept(both);
    assert!(book.lock().folded.is_empty());
}

/// Team-a's books with four settled 100-token requests whose events landed at offsets 0 to 3 of partition 0.
fn four_settled_requests_in_partition_0() -> (Arc<ManualClock>, Quotas) {
    let clock = Arc::new(ManualClock::early_in_an_hour());
    let quotas = quotas(clock.clone());
    for offset in 0..4 {
        let (ticket, _) = quotas.admit("team-a", "gpt-4o-mini", demand(100, 0)).unwrap();
        ticket
            .settle(100, 0, clock.now_ms())
            .unwrap()
            .delivered(0, offset);
    }
    (clock, quotas)
}

#[test]
fn while_snapshots_keep_up_each_request_is_covered_on_its_own_not_in_a_span() {
    let (clock, quotas) = four_settled_requests_in_partition_0();
    clock.advance(Duration::from_millis(super::RECOUNT_INTERVAL_MS));
    // A snapshot that counts three of the four: exactly the fourth stays pending (300 + 100 of 1,000 used).
    quotas.accept(snapshot(&quotas, &clock, TEAM_A, 300, Some((0, 2))));
    assert!(quotas.admit("team-a", "gpt-4o-mini", demand(601, 0)).is_err());
    assert!(quotas.admit("team-a", "gpt-4o-mini", demand(600, 0)).is_ok());
    assert!(quotas.layout.load().by_key[TEAM_A].lock().folded.is_empty());
}

#[test]
fn a_folded_span_counts_its_tokens_until_a_snapshot_passes_its_last_offset() {
    let (clock, quotas) = four_settled_requests_in_partition_0();
    // No snapshot for FOLD_AFTER_MS: folded at the next recount, still 400 of team-a's 1,000 counted.
    clock.advance(Duration::from_millis(super::FOLD_AFTER_MS));
    assert!(quotas.admit("team-a", "gpt-4o-mini", demand(601, 0)).is_err());
    assert_eq!(quotas.layout.load().by_key[TEAM_A].lock().folded.len(), 1);
    // A snapshot that counts the first three of the span's four events: the span stays whole (counted twice for
    // now, which errs on the safe side).
    quotas.accept(snapshot(&quotas, &clock, TEAM_A, 300, Some((0, 2))));
    assert!(quotas.admit("team-a", "gpt-4o-mini", demand(301, 0)).is_err());
    // One that counts all four: only the snapshot's 400.
    quotas.accept(snapshot(&quotas, &clock, TEAM_A, 400, Some((0, 3))));
    assert!(quotas.admit("team-a", "gpt-4o-mini", demand(600, 0)).is_ok());
}

#[test]
fn books_are_locked_in_one_order_whatever_order_they_are_listed_in() {
    use std::sync::Mutex;
    use std::time::Duration;

    let books = [Mutex::new(0u32), Mutex::new(0u32)];
    let (low, high) = if std::ptr::from_ref(&books[0]).addr() < std::ptr::from_ref(&books[1]).addr() {
        (&books[0], &books[1])
    } else {
        (&books[1], &books[0])
    };
    std::thread::scope(|scope| {
        // Someone holds the lower book; a request lists the books the other way round.
        let held = low.lock().unwrap();
        let waiter = scope.spawn(|| {
            let guards = super::lock_all([high, low].into_iter());
            guards.len()
        });
        std::thread::sleep(Duration::from_millis(100));
        // Locking in listed order would hold `high` now, while waiting for `low`: a cycle with anyone who holds
        // `high` and wants `low`. In address order, it waits for `low` first and holds nothing.
        assert!(high.try_lock().is_ok(), "the higher book was taken out of order");
        drop(held);
        assert_eq!(waiter.join().unwrap(), 2);
    });
}

/// A second (or stale) quota loop publishes a snapshot of the same window whose watermark is behind the one held:
/// it is ignored, so the usage between the two watermarks is neither dropped from this replica's book nor missing
/// from `used` (before, it replaced the held snapshot and that usage counted zero times).
#[test]
fn a_snapshot_whose_watermarks_go_back_is_ignored() {
    let clock = Arc::new(ManualClock::early_in_an_hour());
    let quotas = quotas(clock.clone());
    let (ticket, _) = quotas.admit("team-a", "gpt-4o-mini", demand(100, 0)).unwrap();
    ticket.settle(100, 0, clock.now_ms()).unwrap().delivered(0, 7);
    assert_eq!(
        quotas.accept(snapshot(&quotas, &clock, TEAM_A, 600, Some((0, 7)))),
        Acceptance::Taken
    );
    // 600 used, ours among them: 400 left.
    assert!(quotas.admit("team-a", "gpt-4o-mini", demand(401, 0)).is_err());
    // The lagging loop has not counted offset 7 yet: it says 500 and covers offset 5 only.
    assert_eq!(
        quotas.accept(snapshot(&quotas, &clock, TEAM_A, 500, Some((0, 5)))),
        Acceptance::Regressed
    );
    let mut other_gateway_only = snapshot(&quotas, &clock, TEAM_A, 10, Some((0, 99)));
    other_gateway_only.watermarks[0].gateway = "tollgate-gateway/other".into();
    assert_eq!(
        quotas.accept(other_gateway_only),
        Acceptance::Regressed,
        "ours went missing"
    );
    assert!(
        quotas.admit("team-a", "gpt-4o-mini", demand(401, 0)).is_err(),
        "still 600 used"
    );
    assert!(quotas.admit("team-a", "gpt-4o-mini", demand(400, 0)).is_ok());
    // Forward (or the same) watermarks are taken, whatever `used` says.
    assert_eq!(
        quotas.accept(snapshot(&quotas, &clock, TEAM_A, 600, Some((0, 7)))),
        Acceptance::Taken
    );
    assert_eq!(
        quotas.accept(snapshot(&quotas, &clock, TEAM_A, 650, Some((0, 9)))),
        Acceptance::Taken
    );
}

/// Snapshots are held per (scope, window): at a rollover, a replica whose clock is still in the old window keeps
/// that window's usage when billing-consumer already publishes the next one (before, the next window's snapshot
/// replaced it and the lagging replica saw `used = 0`); a snapshot of a window ahead does not touch the current.
#[test]
fn a_replica_still_in_the_previous_window_keeps_its_usage_when_the_next_one_is_published() {
    let clock = Arc::new(ManualClock::early_in_an_hour());
    let quotas = quotas(clock.clone());
    let current = snapshot(&quotas, &clock, TEAM_A, 1000, Some((0, 1)));
    let mut next = current.clone();
    next.window_start_ms += 3_600_000;
    next.window_end_ms += 3_600_000;
    next.used = 5;
    let mut tomorrow = current.clone();
    tomorrow.window_start_ms += 24 * 3_600_000;
    tomorrow.window_end_ms += 24 * 3_600_000;
    tomorrow.used = 0;
    assert_eq!(quotas.accept(current), Acceptance::Taken);
    assert_eq!(quotas.accept(next), Acceptance::Taken);
    assert_eq!(quotas.accept(tomorrow), Acceptance::Taken);
    let rejection = quotas.admit("team-a", "gpt-4o-mini", demand(1, 0)).unwrap_err();
    assert_eq!(
        rejection.figures.remaining, 0,
        "the current window's 1,000 still count"
    );
    clock.advance(rejection.figures.reset);
    let (_ticket, figures) = quotas.admit("team-a", "gpt-4o-mini", demand(10, 0)).unwrap();
    assert_eq!(
        figures.unwrap().remaining,
        1000 - 5 - 10,
        "the next window's snapshot, once in it"
    );
}

mod budgets {
    //! Spend budgets: money reserved at the dearest model a route could answer with, settled at the model that
    //! answered.

    use super::*;
    use crate::admission::quota::{Costs, Reservation};
    use tollgate_schemas::quota::Requester;
    use tollgate_schemas::usage::{EstimateSource, Outcome, UsageRecorded, UsageSource};

    /// `cheap` costs 1 USD / 2 USD per million input / output tokens, `dear` 10 / 30, `euro` 100 / 300 EUR;
    /// `free` has no price.
    const PRICES: &str = r#"
[[prices]]
model = "cheap"
effective_from = "2020-01-01"
currency = "USD"
input_per_mtok = "1"
output_per_mtok = "2"
[[prices]]
model = "dear"
effective_from = "2020-01-01"
currency = "USD"
input_per_mtok = "10"
output_per_mtok = "30"
[[prices]]
model = "euro"
effective_from = "2020-01-01"
currency = "EUR"
input_per_mtok = "100"
output_per_mtok = "300"
"#;

    /// alice (team research, organisation acme) has 1.00 USD a month of her own, research 0.10 USD a day; bob
    /// is alerted past 0.01 USD a month, never refused. Route `mini` answers with `cheap` or `dear`, `open` with
    /// `free`.
    fn budgets(clock: Arc<ManualClock>) -> Quotas {
        let dir = std::env::temp_dir().join(format!("tollgate-budget-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let prices = dir.join("prices.toml");
        std::fs::write(&prices, PRICES).unwrap();
        let config = Config::from_toml_with_env(
            &format!(
                r#"
[meter]
url = "http://127.0.0.1:1"
[kafka]
brokers = "127.0.0.1:1"
[billing]
prices = "{}"
[[instances]]
name = "big"
endpoint = "http://127.0.0.1:2/v1"
model = "dear"
[[instances]]
name = "small"
endpoint = "http://127.0.0.1:3/v1"
model = "cheap"
[[instances]]
name = "open"
endpoint = "http://127.0.0.1:4/v1"
model = "free"
[[routes]]
name = "mini"
models = ["gpt-4o-mini"]
targets = [{{ instance = "small" }}, {{ instance = "big" }}]
[[routes]]
name = "open"
models = ["open"]
targets = [{{ instance = "open" }}]
[[teams]]
name = "acme"
[[teams]]
name = "research"
parent = "acme"
budgets = [{{ amount = "0.10", currency = "USD", period = "day" }}]
[[consumers]]
name = "alice"
team = "research"
keys = [{{ id = "a1", sha256 = "0000000000000000000000000000000000000000000000000000000000000001" }}]
budgets = [{{ id = "alice-monthly", amount = "1.00", currency = "USD", period = "month" }}]
[[consumers]]
name = "bob"
keys = [{{ id = "b1", sha256 = "0000000000000000000000000000000000000000000000000000000000000002" }}]
budgets = [{{ amount = "0.01", currency = "USD", period = "month", on_exceed = "alert" }}]
"#,
                prices.display()
            ),
            |_| None,
        )
        .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        Quotas::new(&config, Arc::from(GATEWAY), clock)
    }

    const ALICE: Requester<'static> = Requester {
        consumer: "alice",
        team: Some("research"),
        organization: Some("acme"),
    };

    fn answered(model: &str, prompt: u32, completion: u32, at_ms: u64) -> UsageRecorded {
        UsageRecorded {
            request_id: "r".into(),
            consumer_id: "alice".into(),
            team: Some("research".into()),
            organization: Some("acme".into()),
            key_id: "a1".into(),
            endpoint: "chat_completions".into(),
            route: "mini".into(),
            model_requested: "gpt-4o-mini".into(),
            model_served: model.into(),
            provider: "openai".into(),
            instance: "small".into(),
            attempts: Vec::new(),
            stream: false,
            outcome: Outcome::Ok,
            http_status: 200,
            prompt_tokens_estimated: prompt,
            prompt_estimate_source: EstimateSource::Fallback,
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            cached_prompt_tokens: None,
            reasoning_tokens: None,
            cache_write_5m_tokens: None,
            cache_write_1h_tokens: None,
            usage_source: UsageSource::Provider,
            latency_ms: 1,
            ttfb_ms: None,
            started_at_ms: at_ms,
            finished_at_ms: at_ms,
        }
    }

    #[test]
    fn a_request_reserves_what_the_dearest_model_of_its_route_would_charge() {
        let quotas = budgets(Arc::new(ManualClock::early_in_an_hour()));
        // 1,000 prompt tokens and max_tokens 1,000: `dear` charges 0.01 + 0.03 USD, `cheap` 0.001 + 0.002.
        let demand = quotas.demand(1000, Some(1000), &["cheap", "dear"]);
        assert_eq!(demand.cost, Some(Reservation::Priced(Costs::one("USD", 40_000))));
        // Without max_tokens the output cap is quota.budget_output_tokens (4,096).
        let uncapped = quotas.demand(1000, None, &["cheap"]);
        assert_eq!(
            uncapped.cost,
            Some(Reservation::Priced(Costs::one("USD", 1_000 + 8_192)))
        );
        assert_eq!(
            quotas.demand(10, Some(10), &["cheap", "free"]).cost,
            Some(Reservation::Unpriced { model: "free".into() })
        );
    }

    #[test]
    fn a_route_priced_in_two_currencies_reserves_the_dearest_model_of_each_against_its_budgets() {
        let quotas = budgets(Arc::new(ManualClock::early_in_an_hour()));
        // `euro` charges 0.1 + 0.3 EUR: ten times `dear`, but in another currency. A USD budget must still hold
        // what `dear` would charge, not the EUR figure, nor nothing.
        let Some(Reservation::Priced(costs)) =
            quotas.demand(1000, Some(1000), &["cheap", "euro", "dear"]).cost
        else {
            panic!("every model is priced")
        };
        assert_eq!(costs.micros_in(Some("USD")), 40_000);
        assert_eq!(costs.micros_in(Some("EUR")), 400_000);
        assert_eq!(costs.micros_in(Some("GBP")), 0);
        let demand = quotas.demand(1000, Some(1000), &["euro", "dear"]);
        let (ticket, _) = quotas.admit_for(&ALICE, "gpt-4o-mini", demand).unwrap();
        assert_eq!(
            ticket.budget_figures().unwrap().remaining_micros,
            60_000,
            "the team's 0.10 USD less dear's 0.04 USD"
        );
    }

    #[test]
    fn reservations_fill_the_tightest_budget_and_the_next_request_is_refused_with_its_figures() {
        let clock = Arc::new(ManualClock::early_in_an_hour());
        let quotas = budgets(clock.clone());
        let reserve = || quotas.demand(1000, Some(1000), &["cheap", "dear"]);
        let (first, _) = quotas.admit_for(&ALICE, "gpt-4o-mini", reserve()).unwrap();
        assert_eq!(
            first.budget_figures().unwrap().remaining_micros,
            60_000,
            "the team's 0.10 less 0.04"
        );
        let (_second, _) = quotas.admit_for(&ALICE, "gpt-4o-mini", reserve()).unwrap();
        let refused = quotas.admit_for(&ALICE, "gpt-4o-mini", reserve()).unwrap_err();
        assert_eq!(
            (refused.status, refused.error_type, refused.kind),
            (429, "insufficient_quota", "budget")
        );
        let figures = refused.budget.clone().unwrap();
        assert_eq!(
            (
                figures.currency.as_str(),
                figures.limit_micros,
                figures.remaining_micros
            ),
            ("USD", 100_000, 20_000)
        );
        assert!(
            refused
                .message
                .starts_with("Budget of 0.10 USD per day is spent (0.02 USD left, 0.04 USD needed"),
            "{}",
            refused.message
        );
        // Settled at what `cheap` charged (0.003 USD), the first request gives back the rest of its reservation.
        first.settle_event(&answered("cheap", 1000, 1000, clock.now_ms()));
        assert!(quotas.admit_for(&ALICE, "gpt-4o-mini", reserve()).is_ok());
    }

    #[test]
    fn a_team_budget_covers_its_members_and_no_one_else() {
        let quotas = budgets(Arc::new(ManualClock::early_in_an_hour()));
        let big = || quotas.demand(10_000, Some(1000), &["dear"]); // 0.1 + 0.03 USD: more than research's day
        assert_eq!(
            quotas.admit_for(&ALICE, "gpt-4o-mini", big()).unwrap_err().kind,
            "budget"
        );
        let outsider = Requester::consumer("carol");
        assert!(quotas.admit_for(&outsider, "gpt-4o-mini", big()).is_ok());
    }

    #[test]
    fn an_unpriced_model_is_refused_under_a_refusing_budget_and_an_alert_only_budget_never_refuses() {
        let quotas = budgets(Arc::new(ManualClock::early_in_an_hour()));
        let unpriced = quotas.demand(10, Some(10), &["free"]);
        let refused = quotas.admit_for(&ALICE, "open", unpriced.clone()).unwrap_err();
        assert!(
            refused.message.contains("Model `free` has no price in force"),
            "{}",
            refused.message
        );
        let bob = Requester::consumer("bob");
        assert!(quotas.admit_for(&bob, "open", unpriced).is_ok());
        let mut held = Vec::new();
        for _ in 0..10 {
            // 0.04 USD each, four times bob's 0.01: counted, never refused.
            let (ticket, _) = quotas
                .admit_for(&bob, "gpt-4o-mini", quotas.demand(1000, Some(1000), &["dear"]))
                .unwrap();
            held.push(ticket);
        }
        let standing = quotas.standing_of(&bob);
        assert_eq!(standing[0].currency.as_deref(), Some("USD"));
        assert_eq!((standing[0].strategy, standing[0].used), ("spend", 400_000));
    }
}
