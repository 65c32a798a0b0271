//! Settlement: the one place a request's usage event is made. Everything known before the answer — who, which
//! route and instance, the attempt trail, the prompt estimate, when it started — is collected into a
//! [`PendingEvent`]; from admission on, a [`Ledger`] owns it and emits **exactly one** event for it, whichever way
//! the request ends:
//!
//! - the path that reads the answer settles it with what was consumed and how it ended ([`Ledger::settle`]): a
//!   whole body in [`crate::pipeline`], a stream in [`crate::pipeline::stream`];
//! - a ledger dropped unsettled — its task dropped at a forced stop, a panic unwinding through it — settles in
//!   `Drop` with what is known: the prompt estimate and, for a stream, the larger of the provider's figure so far
//!   and an in-process count of what was streamed (`usage_source = estimated`), counted in
//!   `tollgate_settlements_total{path="dropped"}` and logged.
//!
//! Settling also counts the tokens in metrics and settles the request's quota reservation with the same numbers
//! the event carries.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tollgate_schemas::{Attempt, CloudEvent, Outcome, UsageRecorded};
use uuid::Uuid;

use crate::admission::auth::Principal;
use crate::admission::quota::QuotaTicket;
use crate::clock::Clock;
use crate::events::{EventSender, Outgoing, Written};
use crate::metering::sidecar::{Estimate, fallback_text_estimate};
use crate::metering::stream_usage::StreamMeter;
use crate::metrics::{self as m, RouteMetrics};
use crate::protocol::usage::{Usage, at_least_streamed, estimated};
use tollgate_schemas::UsageSource;

/// A usage event waiting for its outcome.
#[derive(Debug)]
pub struct PendingEvent {
    pub request_id: Uuid,
    /// The CloudEvents `source` of this replica.
    pub source: Arc<str>,
    pub principal: Principal,
    pub endpoint: &'static str,
    pub route: Arc<str>,
    /// The route's metric series (its token counters).
    pub series: Arc<RouteMetrics>,
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
        let [prompt, completion] = self.series.tokens(&self.principal.class, &self.model_requested);
        prompt.increment(u64::from(usage.prompt_tokens));
        completion.increment(u64::from(usage.completion_tokens));
        let finished_at_ms = self.clock.now_ms();
        let data = UsageRecorded {
            request_id: self.request_id.to_string(),
            consumer_id: self.principal.consumer.to_string(),
            team: self.principal.team.as_ref().map(|t| t.team.clone()),
            organization: self.principal.team.as_ref().map(|t| t.organization.clone()),
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
            reasoning_tokens: usage.reasoning_tokens,
            cache_write_5m_tokens: usage.cache_write_5m_tokens,
            cache_write_1h_tokens: usage.cache_write_1h_tokens,
            usage_source: usage.source,
            latency_ms: millis(self.started.elapsed()),
            ttfb_ms: settled.ttfb.map(millis),
            started_at_ms: self.started_at_ms,
            finished_at_ms,
        };
        // Tokens, and under a budget the cost of the model that served, priced as billing-consumer prices it.
        let local = self.quota.and_then(|ticket| ticket.settle_event(&data));
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

/// The owner of a request's settlement from admission on: settled once by the path that read the answer, or
/// in `Drop` with what is known. Unmetered, it settles nothing (and releases the quota reservation).
#[derive(Debug)]
pub struct Ledger {
    pending: Option<PendingEvent>,
    events: EventSender,
    metered: bool,
    /// How a request that is dropped unsettled ended, as far as the ledger knows.
    on_drop: Outcome,
    /// The HTTP status a dropped request is recorded with.
    drop_status: u16,
    /// What a stream has shown so far; kept here so that a dropped stream is settled from it.
    stream: Option<StreamMeter>,
    ttfb: Option<Duration>,
}

impl Ledger {
    /// Takes ownership of `pending`: from here on, exactly one event is emitted for it (none when unmetered).
    pub fn open(pending: PendingEvent, events: EventSender, metered: bool) -> Self {
        Self {
            pending: Some(pending),
            events,
            metered,
            on_drop: Outcome::ClientCancelled,
            drop_status: 499,
            stream: None,
            ttfb: None,
        }
    }

    /// The event being settled. Only `None` after settlement, which consumes the ledger.
    pub fn pending(&self) -> Option<&PendingEvent> {
        self.pending.as_ref()
    }

    pub fn pending_mut(&mut self) -> Option<&mut PendingEvent> {
        self.pending.as_mut()
    }

    /// How the request ends if it is dropped from here on (e.g. a stream whose head said 200).
    pub fn if_dropped(&mut self, outcome: Outcome, http_status: u16, ttfb: Option<Duration>) {
        self.on_drop = outcome;
        self.drop_status = http_status;
        self.ttfb = ttfb;
    }

    /// The stream's meter, kept in the ledger so that a dropped stream settles from what it saw.
    pub fn stream_mut(&mut self) -> Option<&mut StreamMeter> {
        self.stream.as_mut()
    }

    pub fn watch_stream(&mut self, meter: StreamMeter) {
        self.stream = Some(meter);
    }

    pub fn stream(&self) -> Option<&StreamMeter> {
        self.stream.as_ref()
    }

    /// Settles the request with how it ended and what it consumed: one event, queued without waiting. The
    /// answer's last byte waits for the returned [`Written`] (immediate unless `spool.write_ahead`).
    pub fn settle(mut self, settled: Settlement) -> Written {
        self.emit(settled, "settled")
    }

    fn emit(&mut self, settled: Settlement, path: &'static str) -> Written {
        let Some(pending) = self.pending.take() else {
            return Written::now();
        };
        if !self.metered {
            return Written::now();
        }
        metrics::counter!(m::SETTLEMENTS_TOTAL, "path" => path).increment(1);
        self.events.emit(pending.finish(settled))
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        let Some(pending) = &self.pending else {
            return;
        };
        let usage = match &self.stream {
            Some(stream) => {
                let text = stream.completion_text();
                at_least_streamed(
                    stream.provider_usage(),
                    pending.estimate.tokens,
                    fallback_text_estimate(text),
                    UsageSource::Estimated,
                )
            }
            None => estimated(pending.estimate.tokens, true),
        };
        if self.metered {
            tracing::warn!(
                request_id = %pending.request_id,
                consumer = %pending.principal.consumer,
                instance = %pending.instance,
                outcome = self.on_drop.as_str(),
                "request dropped before it was settled; settled with what is known"
            );
        }
        let settled = Settlement {
            outcome: self.on_drop,
            http_status: self.drop_status,
            usage,
            ttfb: self.ttfb,
        };
        // Nothing is left to answer: there is no one to wait.
        let _ = self.emit(settled, "dropped");
    }
}

/// Whole milliseconds, saturating.
pub fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    //! The settlement invariant as a property: whatever schedule ends a request — settled by its answer,
    //! dropped by a forced stop, or unwound by a panic, after any number of stream events of either protocol —
    //! exactly one event is emitted for it, and it never bills fewer completion tokens than were streamed.

    use super::*;
    use crate::clock::SystemClock;
    use crate::metering::sse::SseEvent;
    use crate::protocol::Provider;
    use proptest::prelude::*;
    use tollgate_schemas::EstimateSource;

    fn pending(request_id: Uuid) -> PendingEvent {
        PendingEvent {
            request_id,
            source: Arc::from("tollgate-gateway/test"),
            principal: Principal {
                consumer: Arc::from("team-a"),
                class: Arc::from("default"),
                key_id: Arc::from("a-1"),
                models: None,
                team: None,
            },
            endpoint: "/v1/chat/completions",
            route: Arc::from("chat"),
            series: Arc::new(RouteMetrics::new(Arc::from("chat"))),
            model_requested: "gpt-4o-mini".into(),
            model_served: "gpt-4o-mini".into(),
            provider: "openai",
            instance: "mock".into(),
            attempts: Vec::new(),
            stream: true,
            estimate: Estimate {
                tokens: 40,
                source: EstimateSource::Meter,
            },
            started: Instant::now(),
            started_at_ms: 1,
            clock: Arc::new(SystemClock),
            quota: None,
        }
    }

    /// One stream event of `provider` carrying `text`.
    fn event(provider: Provider, text: &str) -> SseEvent<'static> {
        let data = match provider {
            Provider::Openai | Provider::AzureOpenai => {
                serde_json::json!({"choices": [{"delta": {"content": text}}]})
            }
            Provider::Anthropic => {
                serde_json::json!({"type": "content_block_delta", "delta": {"type": "text_delta", "text": text}})
            }
            Provider::Gemini => {
                serde_json::json!({"candidates": [{"content": {"role": "model", "parts": [{"text": text}]}}]})
            }
        };
        SseEvent {
            data: Some(data.to_string().into()),
            ..SseEvent::default()
        }
    }

    /// How the request ends.
    #[derive(Debug, Clone, Copy)]
    enum End {
        /// The path that read the answer settles it with the provider's figures.
        Settled { completion: u32 },
        /// Its task is dropped (a forced stop).
        Dropped,
        /// A panic unwinds through its owner.
        Panicked,
    }

    fn end() -> impl Strategy<Value = End> {
        prop_oneof![
            (0u32..500).prop_map(|completion| End::Settled { completion }),
            Just(End::Dropped),
            Just(End::Panicked),
        ]
    }

    proptest! {
        #[test]
        fn every_schedule_emits_exactly_one_event_never_below_what_was_streamed(
            provider in prop_oneof![Just(Provider::Openai), Just(Provider::Anthropic), Just(Provider::Gemini)],
            streamed in proptest::collection::vec("[a-z ]{0,24}", 0..20),
            watch in any::<bool>(),
            end in end(),
            metered in any::<bool>(),
        ) {
            let (events, mut received) = EventSender::to_channel(16);
            let request_id = Uuid::now_v7();
            let mut ledger = Ledger::open(pending(request_id), events, metered);
            ledger.if_dropped(Outcome::UpstreamCut, 200, None);
            let text: String = streamed.concat();
            if watch {
                ledger.watch_stream(StreamMeter::new(provider, crate::protocol::Endpoint::ChatCompletions));
                for piece in &streamed {
                    if let Some(stream) = ledger.stream_mut() {
                        stream.observe(&event(provider, piece));
                    }
                }
            }
            match end {
                End::Settled { completion } => drop(ledger.settle(Settlement {
                    outcome: Outcome::Ok,
                    http_status: 200,
                    usage: Usage {
                        prompt_tokens: 40,
                        completion_tokens: completion,
                        total_tokens: 40 + completion,
                        cached_prompt_tokens: None,
                        reasoning_tokens: None,
                        cache_write_5m_tokens: None,
                        cache_write_1h_tokens: None,
                        source: UsageSource::Provider,
                    },
                    ttfb: None,
                })),
                End::Dropped => drop(ledger),
                End::Panicked => {
                    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                        let _owner = ledger;
                        std::panic::panic_any("a bug in the request path");
                    }));
                    prop_assert!(unwound.is_err());
                }
            }
            let mut emitted = Vec::new();
            while let Ok(outgoing) = received.try_recv() {
                emitted.push(outgoing.event);
            }
            if !metered {
                prop_assert!(emitted.is_empty());
                return Ok(());
            }
            prop_assert_eq!(emitted.len(), 1, "exactly one event");
            let data = &emitted[0].data;
            prop_assert_eq!(&data.request_id, &request_id.to_string());
            match end {
                End::Settled { completion } => prop_assert_eq!(data.completion_tokens, completion),
                End::Dropped | End::Panicked => {
                    prop_assert_eq!(data.outcome, Outcome::UpstreamCut);
                    let streamed_tokens = if watch { fallback_text_estimate(&text) } else { 0 };
                    prop_assert!(data.completion_tokens >= streamed_tokens);
                    prop_assert_eq!(data.prompt_tokens, 40);
                }
            }
        }
    }
}
