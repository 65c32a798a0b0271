//! Relaying a streamed (SSE) answer and metering it exactly.
//!
//! [`relay`] answers the client at once with a streaming body fed by a bounded channel, and spawns the tee: a
//! task that reads the upstream chunk by chunk, passes each chunk on as soon as it arrived, and meanwhile
//! frames the bytes into events ([`crate::sse`]) and accumulates what they say ([`crate::stream_usage`]) — the
//! completion text of every choice and any `usage` block — however the bytes were split on the wire.
//!
//! Bytes reach the client unchanged, with one exception: when the client did not ask for
//! `stream_options.include_usage`, the gateway asked the upstream for it (see
//! [`crate::request::ChatRequest::upstream_body`]) and removes that usage-only chunk; chunks are then forwarded
//! event by event so the chunk can be cut out cleanly.
//!
//! The tee owns the upstream response, not the client connection: when the client goes away (the channel
//! closes) it drops the upstream request, which cancels it, and still settles what was streamed so far
//! (`client_cancelled`); an upstream that ends without `[DONE]` or breaks is `upstream_cut`, and the client's
//! stream ends without `[DONE]` too — no fake success. Usage is the provider's when a chunk carried it,
//! otherwise meter-sidecar's count of the streamed text (`counted`). The event is emitted before the client's
//! stream is closed, so a graceful shutdown, which waits for open responses, also waits for it.

use std::time::Duration;

use actix_web::http::header;
use actix_web::{HttpResponse, web};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tollgate_schemas::{Outcome, UsageSource};

use crate::app::{AppState, WorkerClients};
use crate::config::Provider;
use crate::meter::fallback_text_estimate;
use crate::metrics as m;
use crate::record::{PendingEvent, Settlement};
use crate::sse::{EventSplitter, parse_event};
use crate::stream_usage::{Observed, StreamMeter};
use crate::upstream::UpstreamHead;
use crate::usage::Usage;

/// Chunks in flight between the tee and the client: a slow client slows the upstream read, not memory.
const CLIENT_BUFFER_CHUNKS: usize = 16;
/// One SSE event larger than this ends the stream (a misbehaving upstream must not grow memory without bound).
const MAX_EVENT_BYTES: usize = 4 << 20;

/// Everything the tee needs to settle the request.
#[derive(Debug)]
pub struct StreamJob {
    pub pending: PendingEvent,
    /// The client did not ask for the usage chunk: remove it.
    pub strip_usage_chunk: bool,
    pub state: web::Data<AppState>,
    pub clients: web::Data<WorkerClients>,
    /// Arrival to the upstream's response head.
    pub ttfb: Duration,
    /// The protocol of the stream's events.
    pub provider: Provider,
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
    metrics::gauge!(m::STREAMS_ACTIVE).increment(1.0);
    actix_web::rt::spawn(tee(head, tx, job));
    tokio::task::yield_now().await;
    let first = rx.try_recv().ok();
    let rest = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, actix_web::Error>(chunk), rx))
    });
    response.streaming(futures_util::stream::iter(first.map(Ok)).chain(rest))
}

async fn tee(mut head: UpstreamHead, tx: mpsc::Sender<Bytes>, job: StreamJob) {
    let idle_timeout = job.state.server.stream_idle_timeout;
    let mut splitter = EventSplitter::new(MAX_EVENT_BYTES);
    let mut stream = StreamMeter::for_provider(job.provider);
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
                tracing::warn!(request_id = %job.pending.request_id, error = %error, "upstream stream broke");
                outcome = Outcome::UpstreamCut;
                break;
            }
            Err(_) => {
                tracing::warn!(request_id = %job.pending.request_id, "upstream stream went idle past its timeout");
                outcome = Outcome::UpstreamCut;
                break;
            }
        };
        let events = match splitter.push(&chunk) {
            Ok(events) => events,
            Err(error) => {
                tracing::warn!(request_id = %job.pending.request_id, error = %error, "upstream sent an oversized event");
                outcome = Outcome::UpstreamCut;
                break;
            }
        };
        let forward = if job.strip_usage_chunk {
            let mut kept = BytesMut::new();
            for raw in &events {
                if stream.observe(&parse_event(raw)) != Observed::UsageOnly {
                    kept.extend_from_slice(raw);
                }
            }
            kept.freeze()
        } else {
            for raw in &events {
                stream.observe(&parse_event(raw));
            }
            chunk
        };
        if !forward.is_empty() && tx.send(forward).await.is_err() {
            outcome = Outcome::ClientCancelled;
            break;
        }
    }
    // Dropping the body cancels the upstream request when the stream did not finish.
    drop(head);
    if outcome != Outcome::ClientCancelled {
        // An event held back for the byte after its final `\r` is complete now that the stream ended.
        let last = splitter.finish();
        let last_kept = last.filter(|raw| stream.observe(&parse_event(raw)) != Observed::UsageOnly);
        if job.strip_usage_chunk {
            // Bytes held back for framing reach the client as the upstream sent them (an unfinished event too).
            let mut tail = BytesMut::new();
            tail.extend_from_slice(last_kept.as_deref().unwrap_or_default());
            tail.extend_from_slice(splitter.remainder());
            if !tail.is_empty() {
                let _ = tx.send(tail.freeze()).await;
            }
        }
    }
    if outcome == Outcome::Ok && !stream.saw_done() {
        outcome = Outcome::UpstreamCut;
    }

    let usage = settle(&job, &stream).await;
    let pending_status = job.pending.attempts.last().and_then(|a| a.status).unwrap_or(200);
    let settled = Settlement {
        outcome,
        http_status: pending_status,
        usage,
        ttfb: Some(job.ttfb),
    };
    metrics::counter!(m::STREAMS_TOTAL, "outcome" => outcome.as_str()).increment(1);
    if outcome != Outcome::Ok {
        tracing::info!(
            request_id = %job.pending.request_id,
            consumer = %job.pending.principal.consumer,
            instance = %job.pending.instance,
            outcome = outcome.as_str(),
            chunks = stream.chunks(),
            "stream ended early; usage settled from what was streamed"
        );
    }
    job.state.events.emit(job.pending.finish(settled));
    metrics::gauge!(m::STREAMS_ACTIVE).decrement(1.0);
    drop(tx);
}

/// The provider's numbers when a chunk carried them; otherwise the prompt estimate and the streamed text
/// counted by meter-sidecar (or approximated in-process when it is down).
async fn settle(job: &StreamJob, stream: &StreamMeter) -> Usage {
    if let Some(usage) = stream.provider_usage() {
        return usage;
    }
    let prompt_tokens = job.pending.estimate.tokens;
    let text = stream.completion_text();
    let (completion_tokens, source) = match job
        .clients
        .meter
        .count_text(&job.pending.model_requested, text)
        .await
    {
        Ok(tokens) => (tokens, UsageSource::Counted),
        Err(_) => (fallback_text_estimate(text), UsageSource::Estimated),
    };
    Usage {
        prompt_tokens,
        completion_tokens,
        total_tokens: prompt_tokens.saturating_add(completion_tokens),
        cached_prompt_tokens: None,
        source,
    }
}
