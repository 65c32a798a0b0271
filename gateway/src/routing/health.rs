//! Instance health, shared by every worker: the passive circuit breaker, the cooldown a provider asks for with
//! `Retry-After`, and the verdict of the active probe. Routing asks [`InstanceHealth::is_available`] when it
//! plans a request and [`InstanceHealth::begin_attempt`] before each try; the request path reports what
//! happened with [`InstanceHealth::record_success`] / [`InstanceHealth::record_failure`], the prober with
//! [`InstanceHealth::record_probe`].
//!
//! Circuit: `closed` → (`failures` consecutive retry-worthy failures) → `open` for `cooldown` → the first
//! request after the cooldown is a trial (`half_open`; others keep away) → success closes, failure reopens.
//! Every method takes `now`, so the state machine is tested without sleeping.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::config::{BreakerConfig, HealthCheck};
use crate::metrics as m;

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
}

/// The health of one instance.
#[derive(Debug)]
pub struct InstanceHealth {
    name: String,
    breaker: BreakerConfig,
    probe: Option<(u32, u32)>,
    state: Mutex<State>,
}

impl InstanceHealth {
    pub fn new(name: &str, breaker: BreakerConfig, health_check: Option<&HealthCheck>) -> Self {
        let health = Self {
            name: name.to_owned(),
            breaker,
            probe: health_check.map(|h| (h.healthy_threshold, h.unhealthy_threshold)),
            state: Mutex::new(State {
                circuit: Circuit::Closed,
                consecutive_failures: 0,
                open_until: None,
                trial_started: None,
                cooldown_until: None,
                last_failure: None,
                probe_healthy: true,
                probe_streak: 0,
            }),
        };
        health.export(&health.lock());
        health
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
        if !s.probe_healthy || s.cooldown_until.is_some_and(|until| now < until) {
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
        if s.cooldown_until.is_some_and(|until| now < until) {
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
        }
    }

    /// One active probe result; flips the verdict after the configured streak.
    pub fn record_probe(&self, ok: bool) {
        let Some((healthy_threshold, unhealthy_threshold)) = self.probe else {
            return;
        };
        let mut s = self.lock();
        if ok == s.probe_healthy {
            s.probe_streak = 0;
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
                tracing::info!(instance = %self.name, "health check passing: instance back in rotation");
            } else {
                tracing::warn!(instance = %self.name, "health check failing: instance out of rotation");
            }
            self.export(&s);
        }
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

    fn export(&self, s: &State) {
        let healthy = s.probe_healthy && s.circuit == Circuit::Closed;
        metrics::gauge!(m::INSTANCE_HEALTHY, "instance" => self.name.clone()).set(if healthy {
            1.0
        } else {
            0.0
        });
        metrics::gauge!(m::CIRCUIT_STATE, "instance" => self.name.clone()).set(s.circuit.gauge());
    }
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
