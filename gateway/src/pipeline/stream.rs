//! Relaying a streamed (SSE) answer and metering it exactly.
//!
//! [`relay`] answers the client at once with a streaming body fed by a bounded channel, and spawns the tee: a task
//! that reads the upstream chunk by chunk, passes each chunk on as soon as it arrived, and meanwhile frames the
//! bytes into events ([`crate::metering::sse`]) and accumulates what they say ([`crate::metering::stream_usage`]) —
//! the completion text of every choice and any `usage` block — however the bytes were split on the wire.
//!
//! Bytes reach the client unchanged, with one exception: when the client did not ask for
//! `stream_options.include_usage`, the gateway asked the upstream for it (see
//! [`crate::protocol::request::ApiRequest::upstream_body`]) and removes that usage-only chunk; a network chunk
//! that holds whole events and not that one is forwarded as it came, any other is forwarded event by event so the
//! chunk can be cut out cleanly.
//!
//! The tee owns the upstream response and the request's [`Ledger`], not the client connection: when the client
//! goes away (the channel closes), or stops reading for `server.send_timeout` (its buffers stay full), the tee
//! drops the upstream request, which cancels it, and still settles what was streamed so far
//! (`client_cancelled`); an upstream that ends without `[DONE]`/`message_stop`, breaks, or goes idle past
//! `server.stream_idle_timeout` is `upstream_cut`, and the client's stream ends without `[DONE]` too — no fake
//! success. Usage is the provider's when the stream ended as it should; after an early end, completion tokens
//! are the larger of the provider's figure so far and meter-sidecar's exact count of the text, tool-call
//! arguments and refusals streamed ([`usage::at_least_streamed`]). The tee runs on a task tracked by
//! [`crate::http::state::AppState::inflight`], so a graceful stop waits for it; dropped before it ends, its ledger
//! settles from what the meter saw. The event is emitted before the client's stream is closed.

use std::time::Duration;

use actix_web::http::header;
use actix_web::{HttpResponse, web};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tollgate_schemas::Outcome;

use crate::http::state::{AppState, WorkerClients};
use crate::metering::sse::{EventSplitter, parse_event};
use crate::metering::stream_usage::{Observed, StreamMeter};
use crate::metrics as m;
use crate::pipeline::count_text;
use crate::pipeline::crossing::StreamTranslator;
use crate::pipeline::settle::{Ledger, Settlement};
use crate::protocol::usage::{self, Usage};
use crate::protocol::{Endpoint, Provider};
use crate::routing::upstream::UpstreamHead;

/// Chunks in flight between the tee and the client: a slow client slows the upstream read, not memory.
const CLIENT_BUFFER_CHUNKS: usize = 16;
/// One SSE event larger than this ends the stream (a misbehaving upstream must not grow memory without bound).
const MAX_EVENT_BYTES: usize = 4 << 20;

/// Everything the tee needs to settle the request.
#[derive(Debug)]
pub struct StreamJob {
    /// The request's settlement, which the tee takes over.
    pub ledger: Ledger,
    /// The request's share of the in-flight budget, held until the tee ends.
    pub permit: Option<crate::http::inflight::Permit>,
    /// The client did not ask for the usage chunk: remove it.
    pub strip_usage_chunk: bool,
    pub state: web::Data<AppState>,
    pub clients: web::Data<WorkerClients>,
    /// Arrival to the upstream's response head.
    pub ttfb: Duration,
    /// The protocol of the stream's events: the instance's provider and the endpoint it was called on.
    pub provider: Provider,
    pub endpoint: Endpoint,
    /// The client speaks the other protocol: each upstream event is translated for it (and metered as it came).
    pub translator: Option<StreamTranslator>,
}

/// Without metering: the upstream's body to the client as it comes, read by nothing in between.
pub fn pass_through(head: UpstreamHead) -> HttpResponse {
    let mut response = HttpResponse::build(head.status);
    if let Some(content_type) = &head.content_type {
        response.insert_header((header::CONTENT_TYPE, content_type.clone()));
    }
    response.insert_header((header::CACHE_CONTROL, "no-cache"));
    response.streaming(head.body)
}

/// Starts relaying `head`'s body; returns the client's response.
///
/// The relay runs once before the response is returned, so whatever the upstream sent with its head (often the
/// whole of a short stream) is ready when the client's head is written and leaves in the same write; the relay
/// does not wait for anything that has not arrived.
pub async fn relay(head: UpstreamHead, job: StreamJob) -> HttpResponse {
    let (tx, mut rx) = mpsc::channel::<Bytes>(CLIENT_BUFFER_CHUNKS);
    let mut response = HttpResponse::build(head.status);
    if let Some(content_type) = &head.content_type {
        response.insert_header((header::CONTENT_TYPE, content_type.clone()));
    }
    response.insert_header((header::CACHE_CONTROL, "no-cache"));
    let active = ActiveStream::start();
    let inflight = job.state.inflight.clone();
    let tee = inflight.track_future(tee(head, tx, job, active));
    actix_web::rt::spawn(tee);
    tokio::task::yield_now().await;
    let first = rx.try_recv().ok();
    let rest = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, actix_web::Error>(chunk), rx))
    });
    response.streaming(futures_util::stream::iter(first.map(Ok)).chain(rest))
}

async fn tee(mut head: UpstreamHead, tx: mpsc::Sender<Bytes>, mut job: StreamJob, _active: ActiveStream) {
    let idle_timeout = job.state.server.stream_idle_timeout;
    let send_timeout = job.state.server.send_timeout;
    let status = head.status.as_u16();
    let mut splitter = EventSplitter::new(MAX_EVENT_BYTES);
    job.ledger
        .watch_stream(StreamMeter::new(job.provider, job.endpoint));
    let request_id = job.ledger.pending().map(|p| p.request_id);
    let mut outcome = Outcome::Ok;
    loop {
        let next = tokio::select! {
            next = tokio::time::timeout(idle_timeout, head.body.next()) => next,
            () = tx.closed() => {
                outcome = Outcome::ClientCancelled;
                break;
            }
        };
        let chunk = match next {
            Ok(Some(Ok(chunk))) => chunk,
            Ok(None) => break,
            Ok(Some(Err(error))) => {
                tracing::warn!(request_id = ?request_id, error = %error, "upstream stream broke");
                outcome = Outcome::UpstreamCut;
                break;
            }
            Err(_) => {
                tracing::warn!(request_id = ?request_id, "upstream stream went idle past its timeout");
                outcome = Outcome::UpstreamCut;
                break;
            }
        };
        // Whether this chunk starts where an event starts: then, if it also ends where one ends and nothing is cut
        // out of it, it goes to the client as it came, without being rebuilt.
        let starts_an_event = splitter.remainder().is_empty();
        let mut events = match splitter.push(&chunk) {
            Ok(events) => events,
            Err(error) => {
                tracing::warn!(request_id = ?request_id, error = %error, "upstream sent an oversized event");
                outcome = Outcome::UpstreamCut;
                break;
            }
        };
        let Some(stream) = job.ledger.stream_mut() else {
            break;
        };
        let forward = if let Some(translator) = job.translator.as_mut() {
            let mut translated = Vec::new();
            for raw in &events {
                let event = parse_event(raw);
                stream.observe(&event);
                if let Some(data) = event.data.as_deref() {
                    translated.extend(translator.push(event.event.as_deref(), data.as_bytes()));
                }
            }
            Bytes::from(translated)
        } else if job.strip_usage_chunk {
            let framed = events.len();
            events.retain(|raw| stream.observe(&parse_event(raw)) != Observed::UsageOnly);
            if events.len() == framed && starts_an_event && splitter.remainder().is_empty() {
                chunk
            } else if events.len() == 1 {
                events.pop().unwrap_or_default()
            } else {
                let mut kept = BytesMut::with_capacity(events.iter().map(Bytes::len).sum());
                for raw in &events {
                    kept.extend_from_slice(raw);
                }
                kept.freeze()
            }
        } else {
            for raw in &events {
                stream.observe(&parse_event(raw));
            }
            chunk
        };
        if forward.is_empty() {
            continue;
        }
        match tokio::time::timeout(send_timeout, tx.send(forward)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                outcome = Outcome::ClientCancelled;
                break;
            }
            Err(_) => {
                tracing::info!(
                    request_id = ?request_id,
                    send_timeout_ms = send_timeout.as_millis() as u64,
                    "client stopped reading its stream; ending it"
                );
                outcome = Outcome::ClientCancelled;
                break;
            }
        }
    }
    // Dropping the body cancels the upstream request when the stream did not finish.
    drop(head);
    if outcome != Outcome::ClientCancelled
        && let Some(stream) = job.ledger.stream_mut()
    {
        // An event held back for the byte after its final `\r` is complete now that the stream ended.
        let last = splitter.finish();
        if let Some(translator) = job.translator.as_mut() {
            let mut tail = Vec::new();
            if let Some(raw) = last {
                let event = parse_event(&raw);
                stream.observe(&event);
                if let Some(data) = event.data.as_deref() {
                    tail.extend(translator.push(event.event.as_deref(), data.as_bytes()));
                }
            }
            // Closed for the client only when the upstream's stream ended as it should: no fake success.
            if stream.saw_done() {
                tail.extend(translator.finish());
            }
            if translator.malformed_events() > 0 {
                metrics::counter!(m::TRANSLATION_SKIPPED_EVENTS_TOTAL, "direction" => translator.direction())
                    .increment(translator.malformed_events());
                tracing::warn!(
                    request_id = ?request_id,
                    skipped = translator.malformed_events(),
                    "upstream stream events that could not be translated were skipped"
                );
            }
            if !tail.is_empty() {
                let _ = tokio::time::timeout(send_timeout, tx.send(Bytes::from(tail))).await;
            }
        } else if job.strip_usage_chunk {
            let last_kept = last.filter(|raw| stream.observe(&parse_event(raw)) != Observed::UsageOnly);
            // Bytes held back for framing reach the client as the upstream sent them (an unfinished event too).
            let mut tail = BytesMut::new();
            tail.extend_from_slice(last_kept.as_deref().unwrap_or_default());
            tail.extend_from_slice(splitter.remainder());
            if !tail.is_empty() {
                let _ = tokio::time::timeout(send_timeout, tx.send(tail.freeze())).await;
            }
        } else if let Some(raw) = last {
            stream.observe(&parse_event(&raw));
        }
    }
    let saw_done = job.ledger.stream().is_some_and(StreamMeter::saw_done);
    if outcome == Outcome::Ok && !saw_done {
        outcome = Outcome::UpstreamCut;
    }
    // From here the stream is over: a drop would still settle it, as ended early.
    job.ledger.if_dropped(outcome, status, Some(job.ttfb));
    let usage = settle(&job, outcome).await;
    if let Some(model) = job
        .ledger
        .stream()
        .and_then(StreamMeter::served_model)
        .map(str::to_owned)
        && let Some(pending) = job.ledger.pending_mut()
    {
        pending.model_served = model;
    }
    metrics::counter!(m::STREAMS_TOTAL, "outcome" => outcome.as_str()).increment(1);
    if outcome != Outcome::Ok
        && let Some(pending) = job.ledger.pending()
    {
        tracing::info!(
            request_id = %pending.request_id,
            consumer = %pending.principal.consumer,
            instance = %pending.instance,
            outcome = outcome.as_str(),
            chunks = job.ledger.stream().map_or(0, StreamMeter::chunks),
            completion_tokens = usage.completion_tokens,
            "stream ended early; usage settled from what was streamed"
        );
    }
    let settled = Settlement {
        outcome,
        http_status: status,
        usage,
        ttfb: Some(job.ttfb),
    };
    // The stream's end reaches the client only once its event is written ahead (with `spool.write_ahead`).
    job.ledger.settle(settled).wait().await;
    drop(tx);
}

/// `tollgate_streams_active` for as long as a tee runs, however it ends.
struct ActiveStream;

impl ActiveStream {
    fn start() -> Self {
        metrics::gauge!(m::STREAMS_ACTIVE).increment(1.0);
        Self
    }
}

impl Drop for ActiveStream {
    fn drop(&mut self) {
        metrics::gauge!(m::STREAMS_ACTIVE).decrement(1.0);
    }
}

/// The provider's numbers when the stream ended as it should and carried its final figures; otherwise — an
/// early end, no usage, or only a provisional figure — the prompt (the provider's figure when it gave one, else the estimate) and the larger of the
/// provider's completion figure so far and the exact count of the streamed text.
async fn settle(job: &StreamJob, outcome: Outcome) -> Usage {
    let Some(stream) = job.ledger.stream() else {
        return usage::estimated(0, false);
    };
    if outcome == Outcome::Ok
        && let Some(usage) = stream.final_usage()
    {
        return usage;
    }
    let provider = stream.provider_usage();
    let estimate = job.ledger.pending().map_or(0, |p| p.estimate.tokens);
    let model = job.ledger.pending().map_or("", |p| p.model_requested.as_str());
    let (counted, source) = count_text(&job.clients, model, stream.completion_text()).await;
    usage::at_least_streamed(provider, estimate, counted, source)
}
