//! The metered request path of the OpenAI-compatible endpoints — `POST /v1/chat/completions`,
//! `/v1/completions` and `/v1/embeddings` — and of Anthropic's `POST /v1/messages`, from admission to the usage
//! event:
//!
//! 1. authenticate the consumer key → [`Principal`];
//! 2. read and parse the body once → [`ApiRequest`] (model, stream flag, and the prompt of its [`Endpoint`]);
//! 3. resolve the route for `model` on this path; refuse it (503) while the usage spool is full and
//!    `spool.on_full = "reject"`, because its usage could not be recorded ([`crate::events`]); then take one
//!    request from the consumer's request rate ([`crate::limits`]);
//! 4. estimate the prompt with meter-sidecar (in-process fallback when it is slow or down), and admit it against
//!    the token quotas of the consumer, then of the model ([`crate::quota`]): the estimate plus `max_tokens` is
//!    reserved, a used-up quota answers 429. Rejections are usage events too (zero tokens);
//! 5. follow the route's plan ([`RouteTable::plan`]): fail over only on retry-safe failures (see
//!    [`crate::upstream`]), at most `failover.max_attempts` targets within `failover.deadline`, and report
//!    every outcome to the instance's health. A target whose instance quota is used up is passed over. For a
//!    stream, failover is possible until the response head: a stream whose head said success is relayed, never
//!    retried;
//! 6. answer: a whole body is returned unchanged and settled from its `usage` block (or the estimate); a stream
//!    is relayed chunk by chunk by [`crate::streaming`], which settles it when it ends;
//! 7. emit one `UsageRecorded` for every request that reached an upstream, without waiting for Kafka;
//! 8. every response carries `x-request-id`; a routed one `x-tollgate-config-version` (the live configuration
//!    that routed it) and, when an instance answered, `x-tollgate-instance`; and OpenAI's
//!    `x-ratelimit-*-requests` / `x-ratelimit-*-tokens` when the consumer has such limits.

use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use chrono::Utc;
use tollgate_schemas::usage::AttemptError;
use tollgate_schemas::{Attempt, EstimateSource, Outcome};
use uuid::Uuid;

use crate::app::{AppState, WorkerClients};
use crate::auth::Principal;
use crate::config::{Instance, Provider};
use crate::error::GatewayError;
use crate::health::parse_retry_after;
use crate::limits::{RateFigures, format_reset};
use crate::meter::{Estimate, fallback_estimate};
use crate::metrics as m;
use crate::quota::{QuotaTicket, TokenFigures};
use crate::record::{PendingEvent, Settlement, millis};
use crate::request::{ApiRequest, Endpoint, read_body};
use crate::routing::{HashKeys, RouteTable};
use crate::streaming::{self, StreamJob};
use crate::upstream::{AttemptFailure, UpstreamHead, UpstreamResponse, status_is_retryable};
use crate::usage;

/// When and as what a request arrived.
#[derive(Debug, Clone, Copy)]
struct Arrival {
    request_id: Uuid,
    started: Instant,
    started_at_ms: u64,
}

/// The handler of every metered endpoint (`app.rs` registers it once per [`Endpoint`]): runs the pipeline,
/// turns its error into an OpenAI-shaped response, records metrics.
pub async fn serve(
    endpoint: Endpoint,
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    clients: web::Data<WorkerClients>,
) -> HttpResponse {
    let arrival = Arrival {
        request_id: Uuid::now_v7(),
        started: Instant::now(),
        started_at_ms: state.clock.now_ms(),
    };
    let mut limits = LimitFigures::default();
    let (mut response, route) =
        match handle(endpoint, &req, payload, &state, &clients, arrival, &mut limits).await {
            Ok((response, route)) => (response, Some(route)),
            Err(error) => {
                if matches!(
                    error,
                    GatewayError::MissingApiKey | GatewayError::InvalidApiKey | GatewayError::ExpiredApiKey
                ) {
                    metrics::counter!(m::AUTH_FAILURES_TOTAL, "reason" => error.kind()).increment(1);
                }
                tracing::debug!(request_id = %arrival.request_id, kind = error.kind(), "request refused");
                (error.error_response(), None)
            }
        };
    if let Ok(value) = HeaderValue::from_str(&arrival.request_id.to_string()) {
        response
            .headers_mut()
            .insert(header::HeaderName::from_static("x-request-id"), value);
    }
    insert_limit_headers(&mut response, limits);
    let route = route.unwrap_or_else(|| "none".to_owned());
    let status = m::status_class(response.status().as_u16());
    metrics::counter!(m::REQUESTS_TOTAL, "route" => route.clone(), "status" => status).increment(1);
    metrics::histogram!(m::REQUEST_DURATION_SECONDS, "route" => route)
        .record(arrival.started.elapsed().as_secs_f64());
    response
}

/// Where the consumer stands against its limits, for the `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, Default)]
struct LimitFigures {
    requests: Option<RateFigures>,
    tokens: Option<TokenFigures>,
}

/// OpenAI's rate-limit headers, on every response to a consumer that has a request limit or a token quota.
fn insert_limit_headers(response: &mut HttpResponse, figures: LimitFigures) {
    let requests = figures.requests.into_iter().flat_map(|f| {
        [
            ("x-ratelimit-limit-requests", f.limit.to_string()),
            ("x-ratelimit-remaining-requests", f.remaining.to_string()),
            ("x-ratelimit-reset-requests", format_reset(f.reset)),
        ]
    });
    let tokens = figures.tokens.into_iter().flat_map(|f| {
        [
            ("x-ratelimit-limit-tokens", f.limit.to_string()),
            ("x-ratelimit-remaining-tokens", f.remaining.to_string()),
            ("x-ratelimit-reset-tokens", format_reset(f.reset)),
        ]
    });
    for (name, value) in requests.chain(tokens) {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response
                .headers_mut()
                .insert(HeaderName::from_static(name), value);
        }
    }
}

impl PendingEvent {
    /// The event of a request admitted to `route`, before any upstream was tried.
    fn before_upstream(
        arrival: Arrival,
        state: &AppState,
        principal: Principal,
        endpoint: Endpoint,
        route: &std::sync::Arc<str>,
        api: &ApiRequest,
        estimate: Estimate,
    ) -> Self {
        PendingEvent {
            request_id: arrival.request_id,
            source: state.event_source.clone(),
            principal,
            endpoint: endpoint.path(),
            route: route.clone(),
            model_requested: api.model.clone(),
            model_served: api.model.clone(),
            provider: "",
            instance: String::new(),
            attempts: Vec::new(),
            stream: api.stream,
            estimate,
            started: arrival.started,
            started_at_ms: arrival.started_at_ms,
            clock: state.clock.clone(),
            quota: None,
        }
    }

    /// Records a request rejected before any upstream (a request rate or a token quota): zero tokens.
    fn rejected(self, state: &AppState, outcome: Outcome, http_status: u16) {
        let settled = Settlement {
            outcome,
            http_status,
            usage: usage::estimated(0, false),
            ttfb: None,
        };
        if state.server.metering {
            state.events.emit(self.finish(settled));
        }
    }
}

/// What an attempt brought back.
enum Answer {
    /// A whole response body (non-streaming requests, and every error status).
    Full(UpstreamResponse),
    /// A successful response head whose body is to be relayed as a stream.
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
struct Forwarded<'a> {
    instance: &'a Instance,
    result: Result<Answer, AttemptFailure>,
    attempts: Vec<Attempt>,
    /// Time spent waiting on upstreams, over every attempt.
    upstream_time: Duration,
}

async fn handle(
    endpoint: Endpoint,
    req: &HttpRequest,
    payload: web::Payload,
    state: &web::Data<AppState>,
    clients: &web::Data<WorkerClients>,
    arrival: Arrival,
    limits: &mut LimitFigures,
) -> Result<(HttpResponse, String), GatewayError> {
    // This request's configuration, kept to its end whatever the admin API changes meanwhile.
    let runtime = state.live.runtime();
    let principal = runtime.keys.authenticate_request(req.headers())?;
    let raw = read_body(payload, state.server.max_request_bytes).await?;
    let api = ApiRequest::parse(endpoint, raw)?;
    // A model the key may not use is answered as OpenAI does: as if it did not exist.
    let route = Some(&api.model)
        .filter(|model| principal.may_use(model))
        .and_then(|model| runtime.router.route(req.path(), model))
        .ok_or_else(|| GatewayError::ModelNotFound(api.model.clone()))?;
    if state.server.metering && !state.events.accepts_metered_requests() {
        tracing::debug!(
            request_id = %arrival.request_id,
            consumer = %principal.consumer,
            "request refused: the usage spool is full"
        );
        return Err(GatewayError::UsageSpoolFull);
    }
    match runtime.limits.check(&principal.consumer) {
        Ok(figures) => limits.requests = figures,
        Err(rejection) => {
            limits.requests = Some(rejection.figures);
            metrics::counter!(m::RATE_LIMITED_TOTAL, "route" => route.name.to_string()).increment(1);
            tracing::info!(
                request_id = %arrival.request_id,
                consumer = %principal.consumer,
                route = %route.name,
                retry_after_ms = rejection.retry_after.as_millis() as u64,
                "request rejected: the consumer is over its request rate"
            );
            let estimate = Estimate {
                tokens: fallback_estimate(&api.prompt()),
                source: EstimateSource::Fallback,
            };
            PendingEvent::before_upstream(arrival, state, principal, endpoint, &route.name, &api, estimate)
                .rejected(state, Outcome::RejectedRateLimit, rejection.status);
            return Err(GatewayError::RateLimited {
                status: rejection.status,
                message: rejection.message,
                retry_after: rejection.retry_after,
            });
        }
    }
    // Unmetered, nothing is estimated, limited by tokens or billed: the request goes straight on.
    let metered = state.server.metering;
    let estimate = if metered {
        clients.meter.estimate(&api.model, &api.prompt()).await
    } else {
        Estimate {
            tokens: 0,
            source: EstimateSource::Fallback,
        }
    };
    let demand = state.quotas.demand(estimate.tokens, api.max_output_tokens());
    let mut ticket = match state.quotas.admit(&principal.consumer, &api.model, demand) {
        Ok((ticket, figures)) => {
            limits.tokens = figures;
            ticket
        }
        Err(rejection) => {
            limits.tokens = Some(rejection.figures);
            metrics::counter!(m::QUOTA_REJECTIONS_TOTAL, "kind" => rejection.kind).increment(1);
            tracing::info!(
                request_id = %arrival.request_id,
                consumer = %principal.consumer,
                route = %route.name,
                scope = %rejection.scope,
                limit = rejection.figures.limit,
                remaining = rejection.figures.remaining,
                requested = demand.prompt + demand.completion,
                retry_after_s = rejection.retry_after.as_secs(),
                "request rejected: a token quota is used up for this window"
            );
            PendingEvent::before_upstream(arrival, state, principal, endpoint, &route.name, &api, estimate)
                .rejected(state, Outcome::RejectedQuota, rejection.status);
            return Err(GatewayError::QuotaExceeded {
                status: rejection.status,
                message: rejection.message,
                error_type: rejection.error_type,
                retry_after: rejection.retry_after,
            });
        }
    };

    let forwarded = match forward(req, state, clients, route, &api, &principal, &mut ticket).await {
        Err(GatewayError::InstanceQuotaExhausted { retry_after }) => {
            metrics::counter!(m::QUOTA_REJECTIONS_TOTAL, "kind" => "instance").increment(1);
            tracing::info!(
                request_id = %arrival.request_id,
                consumer = %principal.consumer,
                route = %route.name,
                "request rejected: every instance of the route has used its token quota"
            );
            drop(ticket);
            PendingEvent::before_upstream(arrival, state, principal, endpoint, &route.name, &api, estimate)
                .rejected(state, Outcome::RejectedQuota, 429);
            return Err(GatewayError::InstanceQuotaExhausted { retry_after });
        }
        other => other?,
    };
    let instance = forwarded.instance;
    let served_by = HeaderValue::from_str(&instance.name).ok();
    // The gateway's own share of the time to the answer's head (or, for a whole body, to its last byte).
    let overhead = arrival.started.elapsed().saturating_sub(forwarded.upstream_time);
    metrics::histogram!(m::OVERHEAD_SECONDS, "route" => route.name.to_string())
        .record(overhead.as_secs_f64());
    let pending = PendingEvent {
        model_served: instance.model.clone().unwrap_or_else(|| api.model.clone()),
        provider: instance.provider.as_str(),
        instance: instance.name.clone(),
        attempts: forwarded.attempts,
        quota: Some(ticket),
        ..PendingEvent::before_upstream(arrival, state, principal, endpoint, &route.name, &api, estimate)
    };

    let mut response = match forwarded.result {
        Ok(Answer::Full(upstream)) if !metered => pass_through(&upstream),
        Ok(Answer::Stream(head)) if !metered => {
            record_ttfb(
                &route.name,
                head.head_at.saturating_duration_since(arrival.started),
            );
            streaming::pass_through(head)
        }
        Ok(Answer::Full(upstream)) => {
            let succeeded = upstream.status.is_success();
            let usage = usage::from_body(instance.provider, &upstream.body)
                .unwrap_or_else(|| usage::estimated(estimate.tokens, succeeded));
            let outcome = if succeeded {
                Outcome::Ok
            } else {
                Outcome::UpstreamError
            };
            let ttfb = Some(upstream.head_at.saturating_duration_since(arrival.started));
            let settled = Settlement {
                outcome,
                http_status: upstream.status.as_u16(),
                usage,
                ttfb,
            };
            state.events.emit(pending.finish(settled));
            pass_through(&upstream)
        }
        Ok(Answer::Stream(head)) => {
            record_ttfb(
                &route.name,
                head.head_at.saturating_duration_since(arrival.started),
            );
            let job = StreamJob {
                pending,
                strip_usage_chunk: instance.provider == Provider::Openai && !api.client_wants_usage(),
                state: state.clone(),
                clients: clients.clone(),
                ttfb: head.head_at.saturating_duration_since(arrival.started),
                provider: instance.provider,
            };
            streaming::relay(head, job).await
        }
        Err(failure) => {
            let error = match failure {
                AttemptFailure::Timeout => GatewayError::UpstreamTimeout,
                AttemptFailure::Connect(_) => GatewayError::UpstreamUnreachable,
                AttemptFailure::Protocol(_) => GatewayError::UpstreamBadResponse,
            };
            let settled = Settlement {
                outcome: Outcome::UpstreamError,
                http_status: error.status_code().as_u16(),
                usage: usage::estimated(estimate.tokens, false),
                ttfb: None,
            };
            if metered {
                state.events.emit(pending.finish(settled));
            }
            error.error_response()
        }
    };
    if let Some(instance) = served_by {
        response
            .headers_mut()
            .insert(header::HeaderName::from_static("x-tollgate-instance"), instance);
    }
    // Which configuration routed it: during a change, says whether a request was served before or after it.
    response.headers_mut().insert(
        header::HeaderName::from_static("x-tollgate-config-version"),
        HeaderValue::from(runtime.version),
    );
    Ok((response, route.name.to_string()))
}

/// A stream's time to first byte: arrival to the upstream's head, which the client's head follows at once.
fn record_ttfb(route: &str, ttfb: Duration) {
    metrics::histogram!(m::TIME_TO_FIRST_BYTE_SECONDS, "route" => route.to_owned())
        .record(ttfb.as_secs_f64());
}

/// Tries the route's plan in order until an attempt gives an answer that is not a retry-safe failure, the plan
/// runs out, or the route's deadline passes. Every attempt is recorded (trail, metrics, instance health).
async fn forward<'a>(
    req: &HttpRequest,
    state: &AppState,
    clients: &WorkerClients,
    route: &'a RouteTable,
    api: &ApiRequest,
    principal: &Principal,
    ticket: &mut QuotaTicket,
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
    let passthrough = passthrough_headers(req, api.endpoint);
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
        let body = api.upstream_body(instance.model.as_deref(), state.server.metering)?;
        let path = target.path.as_deref().unwrap_or(api.endpoint.upstream_path());
        let timeout = instance.timeout.min(remaining).max(Duration::from_millis(1));
        let outbound = Outbound {
            path,
            body,
            timeout,
            passthrough: &passthrough,
            stream: api.stream,
        };
        let result = attempt(clients, state, instance, outbound).await;
        let elapsed = now.elapsed();
        upstream_time += elapsed;
        metrics::histogram!(m::UPSTREAM_DURATION_SECONDS, "instance" => instance.name.clone())
            .record(elapsed.as_secs_f64());

        let (status, error, failure) = classify(&result, &route.failover.retry_on_status);
        match (&result, failure) {
            (_, None) => target.health.record_success(),
            (Ok(answer), Some(_)) => {
                let retry_after = answer
                    .retry_after()
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
            upstream_time: Duration::ZERO,
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

/// One attempt: the head, then the whole body — unless it is a successful stream, which is relayed instead.
async fn attempt(
    clients: &WorkerClients,
    state: &AppState,
    instance: &Instance,
    outbound: Outbound<'_>,
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
    if stream && head.status.is_success() {
        return Ok(Answer::Stream(head));
    }
    head.read_to_end(state.server.max_response_bytes)
        .await
        .map(Answer::Full)
}

/// Client headers an endpoint's protocol needs upstream: Anthropic's API version and beta flags. Nothing else of
/// the client's request headers is forwarded (in particular not its key).
fn passthrough_headers(req: &HttpRequest, endpoint: Endpoint) -> Vec<(HeaderName, HeaderValue)> {
    const ANTHROPIC: [&str; 2] = ["anthropic-version", "anthropic-beta"];
    let names: &[&str] = match endpoint {
        Endpoint::Messages => &ANTHROPIC,
        Endpoint::ChatCompletions | Endpoint::Completions | Endpoint::Embeddings => &[],
    };
    names
        .iter()
        .filter_map(|name| Some((HeaderName::from_static(name), req.headers().get(*name)?.clone())))
        .collect()
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
