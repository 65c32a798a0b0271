//! Step 7 of the pipeline, forward: follow the route's plan ([`RouteTable::plan`]) until an attempt gives an
//! answer that is not a retry-safe failure, the plan runs out, or the route's deadline passes. Every attempt is
//! recorded (the event's trail, metrics, the instance's health); a target whose instance quota is used up is
//! passed over. A stream's failover is possible until its response head: a head that said success is relayed,
//! never retried. In: the admitted request and its quota ticket; out: [`Forwarded`] — the instance that answered
//! and its [`Answer`], or why none did.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderName, HeaderValue};
use chrono::Utc;
use tollgate_schemas::Attempt;
use tollgate_schemas::usage::AttemptError;

use crate::admission::auth::Principal;
use crate::admission::quota::QuotaTicket;
use crate::config::Instance;
use crate::error::GatewayError;
use crate::http::inflight::Permit;
use crate::http::state::{AppState, WorkerClients};
use crate::metrics as m;
use crate::pipeline::crossing::{self, Crossing};
use crate::pipeline::settle::millis;
use crate::protocol::request::ApiRequest;
use crate::routing::health::parse_retry_after;
use crate::routing::upstream::{AttemptFailure, UpstreamHead, UpstreamResponse, status_is_retryable};
use crate::routing::{HashKeys, RouteTable};

/// What an attempt brought back.
#[derive(Debug)]
pub enum Answer {
    /// A whole response body (non-streaming requests, every error status, and a stream request answered with
    /// a whole JSON body instead of events).
    Full(UpstreamResponse),
    /// A successful event-stream head whose body is to be relayed as a stream.
    Stream(UpstreamHead),
}

impl Answer {
    fn status(&self) -> StatusCode {
        match self {
            Self::Full(r) => r.status,
            Self::Stream(h) => h.status,
        }
    }

    fn retry_after(&self) -> Option<&HeaderValue> {
        match self {
            Self::Full(r) => r.retry_after.as_ref(),
            Self::Stream(h) => h.retry_after.as_ref(),
        }
    }
}

/// The outcome of trying a route's targets.
#[derive(Debug)]
pub struct Forwarded<'a> {
    pub instance: &'a Instance,
    pub result: Result<Answer, AttemptFailure>,
    pub attempts: Vec<Attempt>,
    /// Time spent waiting on upstreams, over every attempt.
    pub upstream_time: Duration,
    /// How the answering instance's protocol differs from the client's, and what the translation dropped.
    pub crossed: Option<Crossed>,
}

/// A request that went to an instance of the other protocol.
#[derive(Debug, Clone)]
pub struct Crossed {
    pub crossing: Crossing,
    /// The client's fields the upstream protocol could not carry, comma-separated.
    pub dropped: Option<String>,
    /// The client (OpenAI) asked for the usage chunk of its stream.
    pub include_usage: bool,
    /// The model sent upstream: it names a translated answer that does not name its own.
    pub model: String,
}

/// The upstream's `Retry-After` as a cooldown: seconds or an HTTP date, cut to `server.max_retry_after` (so a
/// hostile or broken value cannot overflow a deadline or keep an instance out for ever).
pub fn retry_after(value: Option<&HeaderValue>, cap: Duration) -> Option<Duration> {
    value
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, Utc::now()))
        .map(|wait| wait.min(cap))
}

/// Tries the route's plan in order (see the module doc). A whole answer is buffered against the request's
/// in-flight `permit`.
#[allow(clippy::too_many_arguments)]
pub async fn forward<'a>(
    req: &actix_web::HttpRequest,
    state: &AppState,
    clients: &WorkerClients,
    route: &'a RouteTable,
    api: &ApiRequest,
    principal: &Principal,
    ticket: &mut QuotaTicket,
    permit: Option<&Permit>,
) -> Result<Forwarded<'a>, GatewayError> {
    let started = Instant::now();
    let deadline = started + route.failover.deadline;
    let header = route
        .hash_header()
        .and_then(|name| req.headers().get(name))
        .map(HeaderValue::as_bytes);
    let plan = route.plan(
        HashKeys {
            consumer: Some(&principal.consumer),
            header,
        },
        started,
    );
    let passthrough = api.endpoint.passthrough_headers(req.headers());
    let mut attempts = Vec::with_capacity(1);
    let mut upstream_time = Duration::ZERO;
    let mut last: Option<Forwarded<'a>> = None;
    let mut quota_exhausted: Option<Duration> = None;
    for (n, &index) in plan.iter().enumerate() {
        let target = &route.targets[index];
        let instance = &*target.instance;
        let now = Instant::now();
        let remaining = deadline.saturating_duration_since(now);
        if last.is_some() && remaining.is_zero() {
            break;
        }
        // An instance of the other protocol gets the request translated, on its own endpoint — before anything is
        // held for the attempt, so a request that cannot be carried across holds nothing.
        let crossing = Crossing::of(api.endpoint, instance.provider);
        let model_sent = instance.model.as_deref().unwrap_or(&api.model);
        let (body, upstream_path, crossed) = match crossing {
            None => (
                api.upstream_body(
                    instance.body_model(api.endpoint.upstream_path(), &api.model),
                    state.server.metering,
                )?,
                // A target's own path is for the client's protocol.
                target
                    .path
                    .as_deref()
                    .map_or(Cow::Borrowed(api.endpoint.upstream_path()), Cow::Borrowed),
                None,
            ),
            Some(crossing) => {
                let request = crossing::upstream_request(crossing, api, instance)?;
                let crossed = Crossed {
                    crossing,
                    dropped: request.dropped,
                    include_usage: request.include_usage,
                    model: model_sent.to_owned(),
                };
                (
                    request.body,
                    crossing.upstream_path(model_sent, api.stream),
                    Some(crossed),
                )
            }
        };
        // An instance whose own token quota is used up is passed over, as if it were down.
        if let Err(retry_after) =
            state
                .quotas
                .hold_instance(ticket, &principal.consumer, &api.model, &instance.name)
        {
            metrics::counter!(m::QUOTA_INSTANCE_SKIPS_TOTAL, "instance" => instance.name.clone())
                .increment(1);
            tracing::debug!(route = %route.name, instance = %instance.name, "instance token quota used up; next target");
            quota_exhausted = Some(quota_exhausted.map_or(retry_after, |r| r.min(retry_after)));
            continue;
        }
        // Another request may hold this instance's half-open trial; skip it unless nothing else is left to try.
        let is_last = n + 1 == plan.len();
        let claimed = target.health.begin_attempt(now);
        let nothing_else_left = is_last && last.is_none();
        if !(claimed || nothing_else_left) {
            ticket.release_attempt();
            continue;
        }
        let path = instance.request_path(&upstream_path, model_sent);
        let timeout = instance.timeout.min(remaining).max(Duration::from_millis(1));
        let outbound = Outbound {
            path: &path,
            body,
            timeout,
            passthrough: if crossing.is_some() { &[] } else { &passthrough },
            stream: api.stream,
        };
        let result = attempt(clients, state, instance, outbound, permit).await;
        let elapsed = now.elapsed();
        upstream_time += elapsed;
        target.metrics.upstream_duration().record(elapsed.as_secs_f64());

        let (status, error, failure) = classify(&result, &route.failover.retry_on_status);
        match (&result, failure) {
            (_, None) => target.health.record_success(),
            (Ok(answer), Some(_)) => {
                let cooldown = retry_after(answer.retry_after(), state.server.max_retry_after);
                target.health.record_failure(Instant::now(), cooldown);
            }
            (Err(_), Some(_)) => target.health.record_failure(Instant::now(), None),
        }
        target.metrics.attempts(error).increment(1);
        attempts.push(Attempt {
            instance: instance.name.clone(),
            status,
            error,
            latency_ms: millis(elapsed),
        });
        last = Some(Forwarded {
            instance,
            result,
            attempts: Vec::new(),
            upstream_time: Duration::ZERO,
            crossed,
        });
        let can_go_on = !is_last && Instant::now() < deadline;
        let Some(reason) = failure.filter(|_| can_go_on) else {
            break;
        };
        ticket.release_attempt();
        metrics::counter!(
            m::FAILOVERS_TOTAL,
            "route" => route.name.to_string(),
            "instance" => instance.name.clone(),
            "reason" => reason
        )
        .increment(1);
        tracing::warn!(
            route = %route.name,
            instance = %instance.name,
            status = status.unwrap_or(0),
            reason,
            attempt = n + 1,
            consumer = %principal.consumer,
            "upstream attempt failed; failing over to the next target"
        );
    }
    let mut forwarded = last.ok_or(match quota_exhausted {
        Some(retry_after) => GatewayError::InstanceQuotaExhausted { retry_after },
        None => GatewayError::Internal,
    })?;
    forwarded.attempts = attempts;
    forwarded.upstream_time = upstream_time;
    Ok(forwarded)
}

/// What one attempt sends.
struct Outbound<'a> {
    path: &'a str,
    body: bytes::Bytes,
    timeout: Duration,
    passthrough: &'a [(HeaderName, HeaderValue)],
    stream: bool,
}

/// One attempt: the head, then the whole body — unless it is a successful event stream, which is relayed
/// instead. A stream request answered with anything but `text/event-stream` (a whole JSON body) is read whole
/// and settled as a whole answer.
async fn attempt(
    clients: &WorkerClients,
    state: &AppState,
    instance: &Instance,
    outbound: Outbound<'_>,
    permit: Option<&Permit>,
) -> Result<Answer, AttemptFailure> {
    let Outbound {
        path,
        body,
        timeout,
        passthrough,
        stream,
    } = outbound;
    let head = clients
        .upstreams
        .open(instance, path, body, timeout, passthrough)
        .await?;
    if stream && head.status.is_success() && head.is_event_stream() {
        return Ok(Answer::Stream(head));
    }
    head.read_to_end(state.server.max_response_bytes, permit)
        .await
        .map(Answer::Full)
}

/// An attempt's status, error kind for the trail, and — when another instance may succeed — the failover reason.
fn classify(
    result: &Result<Answer, AttemptFailure>,
    retry_on_status: &[u16],
) -> (Option<u16>, Option<AttemptError>, Option<&'static str>) {
    match result {
        Ok(answer) => {
            let status = answer.status();
            let code = Some(status.as_u16());
            if status_is_retryable(status, retry_on_status) {
                let reason = if status.as_u16() == 429 {
                    "status_429"
                } else {
                    "status_5xx"
                };
                (code, Some(AttemptError::Status), Some(reason))
            } else if status.is_success() {
                (code, None, None)
            } else {
                (code, Some(AttemptError::Status), None)
            }
        }
        // The instance answered, only too much: another would do the same work again, and bill it again.
        Err(AttemptFailure::TooLarge { status, .. }) => {
            (Some(status.as_u16()), Some(AttemptError::Protocol), None)
        }
        Err(f) => (None, Some(f.kind()), Some(f.kind().as_str())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_after_is_cut_to_the_configured_bound_and_garbage_is_ignored() {
        let hour = Duration::from_secs(3600);
        let huge = HeaderValue::from_static("9223372036854775808");
        assert_eq!(retry_after(Some(&huge), hour), Some(hour));
        let two = HeaderValue::from_static("2");
        assert_eq!(retry_after(Some(&two), hour), Some(Duration::from_secs(2)));
        let beyond_u64 = HeaderValue::from_static("99999999999999999999999");
        assert_eq!(retry_after(Some(&beyond_u64), hour), None);
        assert_eq!(retry_after(None, hour), None);
    }
}
