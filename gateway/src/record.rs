//! The usage record of one request. Everything known before the answer — who, which route and instance, the
//! attempt trail, the prompt estimate, when it started — is collected into a [`PendingEvent`]; the path that
//! settles the answer (a whole body in [`crate::proxy`], a stream in [`crate::streaming`]) finishes it with what
//! was consumed and how it ended, which also counts the tokens in metrics and settles the request's quota
//! reservation with the same numbers the event carries.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tollgate_schemas::{Attempt, CloudEvent, Outcome, UsageRecorded};
use uuid::Uuid;

use crate::auth::Principal;
use crate::clock::Clock;
use crate::events::Outgoing;
use crate::meter::Estimate;
use crate::metrics as m;
use crate::quota::QuotaTicket;
use crate::usage::Usage;

/// A usage event waiting for its outcome.
#[derive(Debug)]
pub struct PendingEvent {
    pub request_id: Uuid,
    /// The CloudEvents `source` of this replica.
    pub source: Arc<str>,
    pub principal: Principal,
    pub endpoint: &'static str,
    pub route: Arc<str>,
    pub model_requested: String,
    pub model_served: String,
    pub provider: &'static str,
    pub instance: String,
    pub attempts: Vec<Attempt>,
    pub stream: bool,
    pub estimate: Estimate,
    pub started: Instant,
    pub started_at_ms: u64,
    /// The clock event times are read from.
    pub clock: Arc<dyn Clock>,
    /// The request's token quota reservations, settled when the event is finished.
    pub quota: Option<QuotaTicket>,
}

/// How a request ended and what it consumed.
#[derive(Debug, Clone, Copy)]
pub struct Settlement {
    pub outcome: Outcome,
    pub http_status: u16,
    pub usage: Usage,
    /// Arrival to the first upstream response byte.
    pub ttfb: Option<Duration>,
}

impl PendingEvent {
    /// The finished event; also counts its tokens in `tollgate_tokens_total` and settles the quota reservation.
    pub fn finish(self, settled: Settlement) -> Outgoing {
        let usage = settled.usage;
        let labels = |kind: &'static str| {
            [
                ("class", self.principal.class.to_string()),
                ("model", self.model_requested.clone()),
                ("kind", kind.to_owned()),
            ]
        };
        metrics::counter!(m::TOKENS_TOTAL, &labels("prompt")).increment(u64::from(usage.prompt_tokens));
        metrics::counter!(m::TOKENS_TOTAL, &labels("completion"))
            .increment(u64::from(usage.completion_tokens));
        let finished_at_ms = self.clock.now_ms();
        let local = self.quota.and_then(|ticket| {
            ticket.settle(
                u64::from(usage.prompt_tokens),
                u64::from(usage.completion_tokens),
                finished_at_ms,
            )
        });
        let data = UsageRecorded {
            request_id: self.request_id.to_string(),
            consumer_id: self.principal.consumer.to_string(),
            key_id: self.principal.key_id.to_string(),
            endpoint: self.endpoint.to_owned(),
            route: self.route.to_string(),
            model_requested: self.model_requested,
            model_served: self.model_served,
            provider: self.provider.to_owned(),
            instance: self.instance,
            attempts: self.attempts,
            stream: self.stream,
            outcome: settled.outcome,
            http_status: settled.http_status,
            prompt_tokens_estimated: self.estimate.tokens,
            prompt_estimate_source: self.estimate.source,
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            total_tokens: usage.total_tokens,
            cached_prompt_tokens: usage.cached_prompt_tokens,
            usage_source: usage.source,
            latency_ms: millis(self.started.elapsed()),
            ttfb_ms: settled.ttfb.map(millis),
            started_at_ms: self.started_at_ms,
            finished_at_ms,
        };
        let time = i64::try_from(finished_at_ms)
            .ok()
            .and_then(DateTime::from_timestamp_millis)
            .unwrap_or_else(Utc::now);
        let event = CloudEvent::with_id(
            self.request_id,
            &*self.source,
            &*self.principal.consumer,
            time,
            data,
        );
        Outgoing { event, local }
    }
}

/// Whole milliseconds, saturating.
pub fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}
