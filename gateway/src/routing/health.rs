//! Instance health, shared by every worker: the passive circuit breaker, the cooldown a provider asks for with
//! `Retry-After`, and the verdict of the active probe. Routing asks [`InstanceHealth::is_available`] when it
//! plans a request and [`InstanceHealth::begin_attempt`] before each try; the request path reports what
//! happened with [`InstanceHealth::record_success`] / [`InstanceHealth::record_failure`], the prober with
//! [`InstanceHealth::record_probe`].
//!
//! Circuit: `closed` → (`failures` consecutive retry-worthy failures) → `open` for `cooldown` → the first
//! request after the cooldown is a trial (`half_open`; others keep away) → success closes, failure reopens.
//! Every method takes `now`, so the state machine is tested without sleeping.
//!
//! With a health topic ([`super::shared`]), every verdict this replica reaches — a circuit opened, a provider's
//! cooldown, a probe's "down" or "up", a trial that closed the circuit — is told to the other replicas through
//! the instance's [`HealthBus`], and theirs arrive through [`InstanceHealth::apply_remote`], which never tells
//! again (no echo).

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::config::{BreakerConfig, HealthCheck};
use crate::metrics as m;
use crate::routing::shared::{HealthBus, HealthNews, Verdict};

/// Circuit states, as exported in `tollgate_circuit_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Circuit {
    Closed,
    HalfOpen,
    Open,
}

impl Circuit {
    fn gauge(self) -> f64 {
        match self {
            Self::Closed => 0.0,
            Self::HalfOpen => 1.0,
            Self::Open => 2.0,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::HalfOpen => "half_open",
            Self::Open => "open",
        }
    }
}

#[derive(Debug)]
struct State {
    circuit: Circuit,
    consecutive_failures: u32,
    /// Open: traffic resumes (as a trial) from here.
    open_until: Option<Instant>,
    /// Half-open: when the trial request started (a trial abandoned mid-way is replaced after a cooldown).
    trial_started: Option<Instant>,
    /// A provider's `Retry-After`: no traffic before this.
    cooldown_until: Option<Instant>,
    last_failure: Option<Instant>,
    /// Active probe verdict; instances without a probe are always probe-healthy.
    probe_healthy: bool,
    probe_streak: u32,
    /// Another replica's probe found the instance down: no traffic before this (its "up" ends it sooner).
    remote_down_until: Option<Instant>,
}

/// The health of one instance.
#[derive(Debug)]
pub struct InstanceHealth {
    name: String,
    breaker: BreakerConfig,
    /// The probe's healthy and unhealthy thresholds and its interval.
    probe: Option<(u32, u32, Duration)>,
    state: Mutex<State>,
    /// Where this replica's verdicts go to the others, with a health topic.
    bus: Option<HealthBus>,
}

impl InstanceHealth {
    pub fn new(name: &str, breaker: BreakerConfig, health_check: Option<&HealthCheck>) -> Self {
        let health = Self {
            name: name.to_owned(),
            breaker,
            probe: health_check.map(|h| (h.healthy_threshold, h.unhealthy_threshold, h.interval)),
            state: Mutex::new(State {
                circuit: Circuit::Closed,
                consecutive_failures: 0,
                open_until: None,
                trial_started: None,
                cooldown_until: None,
                last_failure: None,
                probe_healthy: true,
                probe_streak: 0,
                remote_down_until: None,
            }),
            bus: None,
        };
        health.export(&health.lock());
        health
    }

    /// Tells this instance's verdicts to the other replicas through `bus`.
    #[must_use]
    pub fn with_bus(mut self, bus: HealthBus) -> Self {
        self.bus = Some(bus);
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// May this instance be planned for a request now?
    pub fn is_available(&self, now: Instant) -> bool {
        let s = self.lock();
        if !s.probe_healthy || held_off(&s, now) {
            return false;
        }
        match s.circuit {
            Circuit::Closed => true,
            Circuit::Open => s.open_until.is_some_and(|until| now >= until),
            Circuit::HalfOpen => self.trial_abandoned(&s, now),
        }
    }

    /// Claims the right to send a request now: false when another request holds the half-open trial (or the
    /// instance became unavailable since planning).
    pub fn begin_attempt(&self, now: Instant) -> bool {
        let mut s = self.lock();
        if held_off(&s, now) {
            return false;
        }
        match s.circuit {
            Circuit::Closed => true,
            Circuit::Open if s.open_until.is_some_and(|until| now >= until) => {
                s.circuit = Circuit::HalfOpen;
                s.trial_started = Some(now);
                tracing::info!(instance = %self.name, "circuit half-open: sending one trial request");
                self.export(&s);
                true
            }
            Circuit::Open => false,
            Circuit::HalfOpen if self.trial_abandoned(&s, now) => {
                s.trial_started = Some(now);
                true
            }
            Circuit::HalfOpen => false,
        }
    }

    /// The instance answered in a way that says nothing against it.
    pub fn record_success(&self) {
        let mut s = self.lock();
        s.consecutive_failures = 0;
        if s.circuit != Circuit::Closed {
            tracing::info!(instance = %self.name, "circuit closed: the instance answered again");
            s.circuit = Circuit::Closed;
            s.open_until = None;
            s.trial_started = None;
            self.export(&s);
            self.tell(Verdict::Up, None);
        }
    }

    /// A retry-worthy failure (connect error, timeout, 429, 5xx). `retry_after` is the provider's cooldown.
    pub fn record_failure(&self, now: Instant, retry_after: Option<Duration>) {
        let mut s = self.lock();
        s.consecutive_failures = s.consecutive_failures.saturating_add(1);
        s.last_failure = Some(now);
        if let Some(wait) = retry_after {
            // Callers cap `wait` (server.max_retry_after); a deadline past what an Instant holds is the latest one.
            s.cooldown_until = Some(
                now.checked_add(wait)
                    .unwrap_or(now + Duration::from_secs(86_400 * 365)),
            );
            tracing::warn!(instance = %self.name, retry_after_ms = wait.as_millis() as u64, "instance cooling down as its Retry-After asks");
            self.tell(Verdict::Cooldown, Some(wait));
        }
        let trips = match s.circuit {
            Circuit::HalfOpen => true,
            Circuit::Closed => s.consecutive_failures >= self.breaker.failures,
            Circuit::Open => false,
        };
        if trips {
            s.circuit = Circuit::Open;
            s.open_until = Some(now + self.breaker.cooldown);
            s.trial_started = None;
            tracing::warn!(
                instance = %self.name,
                consecutive_failures = s.consecutive_failures,
                cooldown_ms = self.breaker.cooldown.as_millis() as u64,
                "circuit opened: no traffic until the cooldown ends"
            );
            self.export(&s);
            self.tell(Verdict::Open, Some(self.breaker.cooldown));
        }
    }

    /// One active probe result; flips the verdict after the configured streak.
    pub fn record_probe(&self, ok: bool) {
        let Some((healthy_threshold, unhealthy_threshold, interval)) = self.probe else {
            return;
        };
        // Another replica's "down" lasts this long unless told again: every failing probe renews it.
        let down_for = interval.saturating_mul(3);
        let mut s = self.lock();
        if ok == s.probe_healthy {
            s.probe_streak = 0;
            if !ok {
                self.tell(Verdict::Down, Some(down_for));
            }
            return;
        }
        s.probe_streak += 1;
        let threshold = if ok {
            healthy_threshold
        } else {
            unhealthy_threshold
        };
        if s.probe_streak >= threshold {
            s.probe_healthy = ok;
            s.probe_streak = 0;
            if ok {
                // A recovered probe also forgives the passive failures it outlived.
                s.circuit = Circuit::Closed;
                s.consecutive_failures = 0;
                s.open_until = None;
                s.remote_down_until = None;
                tracing::info!(instance = %self.name, "health check passing: instance back in rotation");
                self.tell(Verdict::Up, None);
            } else {
                tracing::warn!(instance = %self.name, "health check failing: instance out of rotation");
                self.tell(Verdict::Down, Some(down_for));
            }
            self.export(&s);
        }
    }

    /// Applies what another replica learned about this instance (`now_ms`: the wall clock, in Unix
    /// milliseconds, that `news.until_ms` is compared with). Returns whether it changed anything here.
    ///
    /// - `open`: the circuit opens here too, until the same end of cooldown; then this replica sends its own
    ///   trial. A circuit already open here for longer, or holding a trial, is left alone.
    /// - `cooldown`: no traffic until the provider's `Retry-After` ends.
    /// - `down`: no traffic until the verdict's end, which the other replica's failing probes keep renewing.
    /// - `up`: the instance answered there — a trial closed the circuit or the probe passes again: the circuit
    ///   closes, cooldowns and "down" verdicts end, and the probe verdict here is "healthy" until its own
    ///   probes say otherwise.
    ///
    /// A verdict whose end has passed (an old record read at start-up) changes nothing.
    pub fn apply_remote(&self, news: &HealthNews, now: Instant, now_ms: u64) -> bool {
        let remaining = news
            .until_ms
            .and_then(|until| until.checked_sub(now_ms))
            .filter(|left| *left > 0)
            .map(Duration::from_millis);
        let mut s = self.lock();
        let changed = match (news.verdict, remaining) {
            (Verdict::Up, _) => {
                let changed = s.circuit != Circuit::Closed
                    || s.remote_down_until.is_some()
                    || s.cooldown_until.is_some_and(|until| now < until)
                    || !s.probe_healthy;
                s.circuit = Circuit::Closed;
                s.consecutive_failures = 0;
                s.open_until = None;
                s.trial_started = None;
                s.cooldown_until = None;
                s.remote_down_until = None;
                s.probe_healthy = true;
                s.probe_streak = 0;
                changed
            }
            (_, None) => false,
            (Verdict::Open, Some(left)) => {
                let until = now + left;
                let opens = match s.circuit {
                    Circuit::Closed => true,
                    Circuit::Open => s.open_until.is_none_or(|current| current < until),
                    Circuit::HalfOpen => false,
                };
                if opens {
                    s.circuit = Circuit::Open;
                    s.open_until = Some(until);
                    s.trial_started = None;
                }
                opens
            }
            (Verdict::Cooldown, Some(left)) => extend(&mut s.cooldown_until, now + left),
            (Verdict::Down, Some(left)) => extend(&mut s.remote_down_until, now + left),
        };
        if changed {
            tracing::info!(
                instance = %self.name,
                verdict = news.verdict.as_str(),
                from = %news.origin,
                for_ms = remaining.map(|left| left.as_millis() as u64),
                "instance health told by another replica"
            );
            self.export(&s);
        }
        changed
    }

    /// When this instance last failed (for choosing among instances that are all unavailable).
    pub fn last_failure(&self) -> Option<Instant> {
        self.lock().last_failure
    }

    pub fn circuit(&self) -> Circuit {
        self.lock().circuit
    }

    fn trial_abandoned(&self, s: &State, now: Instant) -> bool {
        s.trial_started
            .is_none_or(|started| now.saturating_duration_since(started) >= self.breaker.cooldown)
    }

    /// Tells the other replicas, when there is a health topic.
    fn tell(&self, verdict: Verdict, lasting: Option<Duration>) {
        if let Some(bus) = &self.bus {
            bus.tell(&self.name, verdict, lasting);
        }
    }

    fn export(&self, s: &State) {
        let healthy = s.probe_healthy
            && s.circuit == Circuit::Closed
            && s.remote_down_until.is_none_or(|until| Instant::now() >= until);
        metrics::gauge!(m::INSTANCE_HEALTHY, "instance" => self.name.clone()).set(if healthy {
            1.0
        } else {
            0.0
        });
        metrics::gauge!(m::CIRCUIT_STATE, "instance" => self.name.clone()).set(s.circuit.gauge());
    }
}

/// A cooldown or another replica's "down" verdict keeps the instance out now.
fn held_off(s: &State, now: Instant) -> bool {
    s.cooldown_until.is_some_and(|until| now < until) || s.remote_down_until.is_some_and(|until| now < until)
}

/// Moves `deadline` out to `until`, if that is later; whether it moved.
fn extend(deadline: &mut Option<Instant>, until: Instant) -> bool {
    if deadline.is_some_and(|current| current >= until) {
        return false;
    }
    *deadline = Some(until);
    true
}

/// Parses `Retry-After` (delay in seconds, or an HTTP date) into a duration from `now_utc`.
pub fn parse_retry_after(value: &str, now_utc: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    (date.with_timezone(&chrono::Utc) - now_utc).to_std().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOLDOWN: Duration = Duration::from_secs(10);

    fn health() -> InstanceHealth {
        InstanceHealth::new(
            "a",
            BreakerConfig {
                failures: 3,
                cooldown: COOLDOWN,
            },
            None,
        )
    }

    #[test]
    fn consecutive_failures_open_the_circuit_and_a_success_in_between_resets_the_count() {
        let h = health();
        let t = Instant::now();
        h.record_failure(t, None);
        h.record_failure(t, None);
        h.record_success();
        h.record_failure(t, None);
        h.record_failure(t, None);
        assert_eq!(h.circuit(), Circuit::Closed);
        assert!(h.is_available(t));
        h.record_failure(t, None);
        assert_eq!(h.circuit(), Circuit::Open);
        assert!(!h.is_available(t + COOLDOWN / 2));
        assert!(!h.begin_attempt(t + COOLDOWN / 2));
    }

    #[test]
    fn after_the_cooldown_one_trial_is_let_through_and_its_success_closes_the_circuit() {
        let h = health();
        let t = Instant::now();
        for _ in 0..3 {
            h.record_failure(t, None);
        }
        let later = t + COOLDOWN;
        assert!(h.is_available(later));
        assert!(h.begin_attempt(later));
        assert_eq!(h.circuit(), Circuit::HalfOpen);
        assert!(!h.is_available(later), "only one trial at a time");
        assert!(!h.begin_attempt(later));
        h.record_success();
        assert_eq!(h.circuit(), Circuit::Closed);
        assert!(h.is_available(later));
    }

    #[test]
    fn a_failed_trial_reopens_for_another_cooldown() {
        let h = health();
        let t = Instant::now();
        for _ in 0..3 {
            h.record_failure(t, None);
        }
        let trial = t + COOLDOWN;
        assert!(h.begin_attempt(trial));
        h.record_failure(trial, None);
        assert_eq!(h.circuit(), Circuit::Open);
        assert!(!h.is_available(trial + COOLDOWN / 2));
        assert!(h.is_available(trial + COOLDOWN));
    }

    #[test]
    fn an_abandoned_trial_is_replaced_after_a_cooldown() {
        let h = health();
        let t = Instant::now();
        for _ in 0..3 {
            h.record_failure(t, None);
        }
        assert!(h.begin_attempt(t + COOLDOWN));
        assert!(!h.begin_attempt(t + COOLDOWN + COOLDOWN / 2));
        assert!(h.begin_attempt(t + COOLDOWN * 2));
    }

    #[test]
    fn retry_after_keeps_the_instance_out_for_exactly_that_long() {
        let h = health();
        let t = Instant::now();
        h.record_failure(t, Some(Duration::from_secs(2)));
        assert_eq!(h.circuit(), Circuit::Closed, "one 429 does not open the circuit");
        assert!(!h.is_available(t + Duration::from_millis(1999)));
        assert!(h.is_available(t + Duration::from_secs(2)));
    }

    #[test]
    fn probes_flip_the_verdict_only_after_their_streak() {
        let check = HealthCheck {
            method: crate::config::HealthMethod::Get,
            path: "/health".into(),
            body: None,
            expected_statuses: vec![200],
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        };
        let h = InstanceHealth::new(
            "p",
            BreakerConfig {
                failures: 3,
                cooldown: COOLDOWN,
            },
            Some(&check),
        );
        let t = Instant::now();
        h.record_probe(false);
        h.record_probe(false);
        assert!(h.is_available(t));
        h.record_probe(false);
        assert!(!h.is_available(t));
        h.record_probe(true);
        assert!(!h.is_available(t));
        h.record_probe(true);
        assert!(h.is_available(t));
    }

    /// What the replica told the other replicas so far: each verdict, and for how long it holds (ms).
    fn told_verdicts(told: &std::sync::mpsc::Receiver<HealthNews>) -> Vec<(Verdict, Option<u64>)> {
        told.try_iter()
            .map(|n| (n.verdict, n.until_ms.map(|u| u - n.at_ms)))
            .collect()
    }

    fn news(verdict: Verdict, at_ms: u64, until_ms: Option<u64>) -> HealthNews {
        HealthNews {
            instance: "a".into(),
            origin: "gw-2".into(),
            verdict,
            at_ms,
            until_ms,
        }
    }

    #[test]
    fn another_replicas_open_circuit_keeps_traffic_away_until_its_cooldown_ends_then_this_replica_tries() {
        let h = health();
        let t = Instant::now();
        assert!(h.apply_remote(&news(Verdict::Open, 1_000, Some(11_000)), t, 1_000));
        assert_eq!(h.circuit(), Circuit::Open);
        assert!(!h.is_available(t + Duration::from_millis(9_999)));
        assert!(h.is_available(t + COOLDOWN));
        assert!(
            h.begin_attempt(t + COOLDOWN),
            "the trial after the shared cooldown is this replica's own"
        );
        assert_eq!(h.circuit(), Circuit::HalfOpen);
    }

    #[test]
    fn another_replicas_up_closes_the_circuit_and_ends_cooldowns_and_down_verdicts() {
        let h = health();
        let t = Instant::now();
        for _ in 0..3 {
            h.record_failure(t, Some(Duration::from_secs(60)));
        }
        h.apply_remote(&news(Verdict::Down, 0, Some(60_000)), t, 0);
        assert!(!h.is_available(t));
        assert!(h.apply_remote(&news(Verdict::Up, 5, None), t, 5));
        assert_eq!(h.circuit(), Circuit::Closed);
        assert!(h.is_available(t));
        assert!(
            !h.apply_remote(&news(Verdict::Up, 6, None), t, 6),
            "already up: nothing changes"
        );
    }

    #[test]
    fn a_verdict_that_has_ended_changes_nothing() {
        let h = health();
        let t = Instant::now();
        for verdict in [Verdict::Open, Verdict::Cooldown, Verdict::Down] {
            assert!(!h.apply_remote(&news(verdict, 0, Some(10_000)), t, 10_000));
            assert!(
                !h.apply_remote(&news(verdict, 0, None), t, 0),
                "no end: not a verdict that holds"
            );
        }
        assert!(h.is_available(t));
    }

    #[test]
    fn another_replicas_down_lapses_unless_renewed_and_a_cooldown_holds_for_as_long_as_asked() {
        let h = health();
        let t = Instant::now();
        assert!(h.apply_remote(&news(Verdict::Down, 0, Some(3_000)), t, 0));
        assert!(!h.is_available(t + Duration::from_millis(2_999)));
        assert!(!h.begin_attempt(t + Duration::from_millis(2_999)));
        assert!(h.is_available(t + Duration::from_secs(3)));
        assert!(h.apply_remote(&news(Verdict::Cooldown, 0, Some(5_000)), t, 0));
        assert!(!h.is_available(t + Duration::from_millis(4_999)));
        assert!(h.is_available(t + Duration::from_secs(5)));
        assert!(
            !h.apply_remote(&news(Verdict::Cooldown, 0, Some(4_000)), t, 0),
            "a shorter one changes nothing"
        );
    }

    #[test]
    fn this_replicas_verdicts_are_told_once_per_change_and_what_it_is_told_is_never_told_again() {
        let (bus, told) = HealthBus::channel("gw-1", 16);
        let h = health().with_bus(bus);
        let t = Instant::now();
        for _ in 0..4 {
            h.record_failure(t, None);
        }
        h.record_failure(t, Some(Duration::from_secs(2)));
        assert!(h.begin_attempt(t + COOLDOWN));
        h.record_success();
        h.record_success();
        h.apply_remote(&news(Verdict::Open, 0, Some(10_000)), t, 0);
        h.apply_remote(&news(Verdict::Up, 0, None), t, 0);
        let verdicts = told_verdicts(&told);
        assert_eq!(
            verdicts,
            [
                (Verdict::Open, Some(10_000)),
                (Verdict::Cooldown, Some(2_000)),
                (Verdict::Up, None)
            ]
        );
    }

    #[test]
    fn a_failing_probe_tells_down_on_every_probe_so_that_the_verdict_lapses_only_when_it_stops() {
        let check = HealthCheck {
            method: crate::config::HealthMethod::Get,
            path: "/health".into(),
            body: None,
            expected_statuses: vec![200],
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            healthy_threshold: 1,
            unhealthy_threshold: 1,
        };
        let (bus, told) = HealthBus::channel("gw-1", 16);
        let h = InstanceHealth::new(
            "p",
            BreakerConfig {
                failures: 3,
                cooldown: COOLDOWN,
            },
            Some(&check),
        )
        .with_bus(bus);
        h.record_probe(false);
        h.record_probe(false);
        h.record_probe(true);
        h.record_probe(true);
        let verdicts = told_verdicts(&told);
        assert_eq!(
            verdicts,
            [
                (Verdict::Down, Some(3_000)),
                (Verdict::Down, Some(3_000)),
                (Verdict::Up, None)
            ]
        );
    }

    #[test]
    fn a_cooldown_longer_than_an_instant_can_hold_does_not_panic() {
        let h = health();
        let t = Instant::now();
        h.record_failure(t, Some(Duration::MAX));
        assert!(!h.is_available(t + Duration::from_secs(3600)));
    }

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-22T10:00:00Z")
            .unwrap()
            .to_utc();
        assert_eq!(parse_retry_after("2", now), Some(Duration::from_secs(2)));
        assert_eq!(
            parse_retry_after("Sun, 22 Nov 2026 10:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(
            parse_retry_after("Sun, 22 Nov 2026 09:00:00 GMT", now),
            None,
            "a date in the past"
        );
    }
}
