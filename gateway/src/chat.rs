//! `POST /v1/chat/completions` (non-streaming): the metered request path from admission to the usage event.
//!
//! 1. authenticate the consumer key → [`Principal`];
//! 2. read and parse the body once → [`ChatRequest`];
//! 3. resolve the route for `model`;
//! 4. estimate the prompt with meter-sidecar (in-process fallback when it is slow or down);
//! 5. follow the route's plan ([`RouteTable::plan`]): fail over only on retry-safe failures (see
//!    [`crate::upstream`]), at most `failover.max_attempts` targets within `failover.deadline`, and report
//!    every outcome to the instance's health;
//! 6. settle usage: the provider's `usage` block, otherwise the estimate;
//! 7. emit one `UsageRecorded` for every request that reached an upstream, without waiting for Kafka;
//! 8. return the upstream's status and body unchanged, with `x-request-id` and `x-tollgate-instance`.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use chrono::Utc;
use tollgate_schemas::usage::{AttemptError, UsageEvent};
use tollgate_schemas::{Attempt, CloudEvent, Outcome, UsageRecorded};
use uuid::Uuid;

use crate::app::{AppState, WorkerClients};
use crate::auth::Principal;
use crate::config::Instance;
use crate::error::GatewayError;
use crate::health::parse_retry_after;
use crate::meter::Estimate;
use crate::metrics as m;
use crate::request::{ChatRequest, read_body};
use crate::routing::{HashKeys, RouteTable};
use crate::upstream::{AttemptFailure, UpstreamResponse, status_is_retryable};
use crate::usage::{self, Usage};

pub const ENDPOINT: &str = "/v1/chat/completions";
const UPSTREAM_PATH: &str = "chat/completions";

/// The handler: runs the pipeline, turns its error into an OpenAI-shaped response, records metrics.
pub async fn chat_completions(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    clients: web::Data<WorkerClients>,
) -> HttpResponse {
    let started = Instant::now();
    let started_at_ms = now_ms();
    let request_id = Uuid::now_v7();
    let (mut response, route) = match handle(
        &req,
        payload,
        &state,
        &clients,
        request_id,
        started,
        started_at_ms,
    )
    .await
    {
        Ok((response, route)) => (response, route),
        Err(error) => {
            if matches!(error, GatewayError::MissingApiKey | GatewayError::InvalidApiKey) {
                metrics::counter!(m::AUTH_FAILURES_TOTAL, "reason" => error.kind()).increment(1);
            }
            tracing::debug!(%request_id, kind = error.kind(), "request refused");
            (error.error_response(), None)
        }
    };
    if let Ok(value) = HeaderValue::from_str(&request_id.to_string()) {
        response
            .headers_mut()
            .insert(header::HeaderName::from_static("x-request-id"), value);
    }
    let route = route.unwrap_or_else(|| "none".to_owned());
    metrics::counter!(m::REQUESTS_TOTAL, "route" => route.clone(), "status" => m::status_class(response.status().as_u16()))
        .increment(1);
    metrics::histogram!(m::REQUEST_DURATION_SECONDS, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// The outcome of trying a route's targets.
struct Forwarded<'a> {
    instance: &'a Instance,
    result: Result<UpstreamResponse, AttemptFailure>,
    attempts: Vec<Attempt>,
}

async fn handle(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    clients: &WorkerClients,
    request_id: Uuid,
    started: Instant,
    started_at_ms: u64,
) -> Result<(HttpResponse, Option<String>), GatewayError> {
    let principal = state.keys.authenticate(
        req.headers()
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes),
    )?;
    let raw = read_body(payload, state.config.server.max_request_bytes).await?;
    let chat = ChatRequest::parse(raw)?;
    if chat.stream {
        return Err(GatewayError::UnsupportedParameter {
            param: "stream",
            message: "streamed responses are not served by this gateway version; send \"stream\": false"
                .into(),
        });
    }
    let route = state
        .router
        .route(req.path(), &chat.model)
        .ok_or_else(|| GatewayError::ModelNotFound(chat.model.clone()))?;
    let estimate = clients.meter.estimate_chat(&chat.model, chat.messages()).await;

    let forwarded = forward(req, state, clients, route, &chat, &principal).await?;
    let served_model = forwarded
        .instance
        .model
        .clone()
        .unwrap_or_else(|| chat.model.clone());
    let (response, status, ttfb, usage) = match &forwarded.result {
        Ok(upstream) => {
            let succeeded = upstream.status.is_success();
            let usage = usage::from_response_body(&upstream.body)
                .unwrap_or_else(|| usage::estimated(estimate.tokens, succeeded));
            (
                pass_through(upstream),
                upstream.status,
                Some(upstream.ttfb),
                usage,
            )
        }
        Err(failure) => {
            let error = match failure {
                AttemptFailure::Timeout => GatewayError::UpstreamTimeout,
                AttemptFailure::Connect(_) => GatewayError::UpstreamUnreachable,
                AttemptFailure::Protocol(_) => GatewayError::UpstreamBadResponse,
            };
            (
                error.error_response(),
                error.status_code(),
                None,
                usage::estimated(estimate.tokens, false),
            )
        }
    };
    let outcome = if status.is_success() {
        Outcome::Ok
    } else {
        Outcome::UpstreamError
    };

    record_tokens(&route.name, &usage);
    let served_by = HeaderValue::from_str(&forwarded.instance.name).ok();
    let event = usage_event(
        state,
        request_id,
        &principal,
        route,
        &chat,
        served_model,
        forwarded,
        Settled {
            outcome,
            status,
            estimate,
            usage,
            started,
            started_at_ms,
            ttfb,
        },
    );
    state.events.emit(event);

    let mut response = response;
    if let Some(instance) = served_by {
        response
            .headers_mut()
            .insert(header::HeaderName::from_static("x-tollgate-instance"), instance);
    }
    Ok((response, Some(route.name.to_string())))
}

/// Tries the route's plan in order until an attempt gives an answer that is not a retry-safe failure, the plan
/// runs out, or the route's deadline passes. Every attempt is recorded (trail, metrics, instance health).
async fn forward<'a>(
    req: &HttpRequest,
    state: &AppState,
    clients: &WorkerClients,
    route: &'a RouteTable,
    chat: &ChatRequest,
    principal: &Principal,
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
    let mut attempts = Vec::with_capacity(1);
    let mut last: Option<Forwarded<'a>> = None;
    for (n, &index) in plan.iter().enumerate() {
        let target = &route.targets[index];
        let instance = &*target.instance;
        let now = Instant::now();
        let remaining = deadline.saturating_duration_since(now);
        if last.is_some() && remaining.is_zero() {
            break;
        }
        // Another request may hold this instance's half-open trial; skip it unless nothing else is left to try.
        let is_last = n + 1 == plan.len();
        let claimed = target.health.begin_attempt(now);
        let nothing_else_left = is_last && last.is_none();
        if !(claimed || nothing_else_left) {
            continue;
        }
        let body = chat.upstream_body(instance.model.as_deref())?;
        let path = target.path.as_deref().unwrap_or(UPSTREAM_PATH);
        let timeout = instance.timeout.min(remaining).max(Duration::from_millis(1));
        let result = clients
            .upstreams
            .send(
                instance,
                path,
                body,
                timeout,
                state.config.server.max_response_bytes,
            )
            .await;
        let elapsed = now.elapsed();
        metrics::histogram!(m::UPSTREAM_DURATION_SECONDS, "instance" => instance.name.clone())
            .record(elapsed.as_secs_f64());

        let (status, error, failure) = classify(&result, &route.failover.retry_on_status);
        match (&result, failure) {
            (_, None) => target.health.record_success(),
            (Ok(r), Some(_)) => {
                let retry_after = r
                    .retry_after
                    .as_ref()
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, Utc::now()));
                target.health.record_failure(Instant::now(), retry_after);
            }
            (Err(_), Some(_)) => target.health.record_failure(Instant::now(), None),
        }
        let result_label = error.map_or("ok", AttemptError::as_str);
        metrics::counter!(m::UPSTREAM_ATTEMPTS_TOTAL, "instance" => instance.name.clone(), "result" => result_label)
            .increment(1);
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
        });
        let can_go_on = !is_last && Instant::now() < deadline;
        let Some(reason) = failure.filter(|_| can_go_on) else {
            break;
        };
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
    let mut forwarded = last.ok_or(GatewayError::Internal)?;
    forwarded.attempts = attempts;
    Ok(forwarded)
}

/// An attempt's status, error kind for the trail, and — when another instance may succeed — the failover reason.
fn classify(
    result: &Result<UpstreamResponse, AttemptFailure>,
    retry_on_status: &[u16],
) -> (Option<u16>, Option<AttemptError>, Option<&'static str>) {
    match result {
        Ok(r) if status_is_retryable(r.status, retry_on_status) => {
            let reason = if r.status.as_u16() == 429 {
                "status_429"
            } else {
                "status_5xx"
            };
            (Some(r.status.as_u16()), Some(AttemptError::Status), Some(reason))
        }
        Ok(r) if r.status.is_success() => (Some(r.status.as_u16()), None, None),
        Ok(r) => (Some(r.status.as_u16()), Some(AttemptError::Status), None),
        Err(f) => (None, Some(f.kind()), Some(f.kind().as_str())),
    }
}

/// The upstream's response as the client receives it: same status, same body, same content type.
fn pass_through(upstream: &UpstreamResponse) -> HttpResponse {
    let mut response = HttpResponse::build(upstream.status);
    if let Some(content_type) = &upstream.content_type {
        response.insert_header((header::CONTENT_TYPE, content_type.clone()));
    }
    response.body(upstream.body.clone())
}

fn record_tokens(route: &str, usage: &Usage) {
    metrics::counter!(m::TOKENS_TOTAL, "route" => route.to_owned(), "kind" => "prompt")
        .increment(u64::from(usage.prompt_tokens));
    metrics::counter!(m::TOKENS_TOTAL, "route" => route.to_owned(), "kind" => "completion")
        .increment(u64::from(usage.completion_tokens));
}

/// How the request ended, for the event.
struct Settled {
    outcome: Outcome,
    status: StatusCode,
    estimate: Estimate,
    usage: Usage,
    started: Instant,
    started_at_ms: u64,
    ttfb: Option<std::time::Duration>,
}

#[allow(clippy::too_many_arguments)]
fn usage_event(
    state: &AppState,
    request_id: Uuid,
    principal: &Principal,
    route: &RouteTable,
    chat: &ChatRequest,
    model_served: String,
    forwarded: Forwarded<'_>,
    settled: Settled,
) -> UsageEvent {
    let finished_at_ms = now_ms();
    let data = UsageRecorded {
        request_id: request_id.to_string(),
        consumer_id: principal.consumer.to_string(),
        key_id: principal.key_id.to_string(),
        endpoint: ENDPOINT.to_owned(),
        route: route.name.to_string(),
        model_requested: chat.model.clone(),
        model_served,
        provider: forwarded.instance.provider.as_str().to_owned(),
        instance: forwarded.instance.name.clone(),
        attempts: forwarded.attempts,
        stream: chat.stream,
        outcome: settled.outcome,
        http_status: settled.status.as_u16(),
        prompt_tokens_estimated: settled.estimate.tokens,
        prompt_estimate_source: settled.estimate.source,
        prompt_tokens: settled.usage.prompt_tokens,
        completion_tokens: settled.usage.completion_tokens,
        total_tokens: settled.usage.total_tokens,
        cached_prompt_tokens: settled.usage.cached_prompt_tokens,
        usage_source: settled.usage.source,
        latency_ms: millis(settled.started.elapsed()),
        ttfb_ms: settled.ttfb.map(millis),
        started_at_ms: settled.started_at_ms,
        finished_at_ms,
    };
    CloudEvent::with_id(
        request_id,
        state.event_source.as_str(),
        principal.consumer.as_ref(),
        Utc::now(),
        data,
    )
}

fn millis(d: std::time::Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
