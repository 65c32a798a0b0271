//! The metered request path — OpenAI's `POST /v1/chat/completions`, `/v1/completions` and `/v1/embeddings`
//! and Anthropic's `POST /v1/messages` — from the client's bytes to the usage event. [`serve`] runs these
//! steps, each a function of this module or of the module it names:
//!
//! 0. a share of the replica's in-flight budget ([`crate::http::inflight`]): 503 when requests or bytes in flight
//!    are at their bounds; held to the request's end;
//! 1. [`authenticate`] — the consumer key → [`Principal`] ([`crate::admission::auth`]);
//! 2. [`parse`] — the body, read once up to `server.max_request_bytes` within `server.body_read_timeout`, each
//!    chunk charged to the budget; its depth and value count checked before the parse, and the parse's cost
//!    charged → [`ApiRequest`] (model, stream flag, the prompt of its [`Endpoint`]); duplicate keys among the
//!    fields the gateway reads are refused ([`crate::protocol::request`]);
//! 3. [`route`] — `model` on this path → a route; refused (503) while the usage spool is full and
//!    `spool.on_full = "reject"`, because its usage could not be recorded ([`crate::events`]);
//! 4. [`limit`] — one request off the consumer's request rate ([`crate::admission::limits`]);
//! 5. [`estimate`] — the prompt's tokens from meter-sidecar, in-process fallback when it is slow or down
//!    ([`crate::metering::sidecar`]);
//! 6. [`admit`] — the token quotas of the consumer, then of the model: the estimate plus the most output the
//!    request can produce is reserved; a used-up quota answers 429 ([`crate::admission::quota`]). Rejections in
//!    steps 4 and 6 are usage events too (zero tokens). **From here a [`Ledger`] owns the request** and emits
//!    exactly one usage event for it, whichever way it ends ([`settle`]);
//! 7. [`forward::forward`] — the route's plan, failing over on retry-safe failures before the first byte;
//! 8. answer — a whole body is read to its end and settled from its usage, or from an exact count of its text
//!    when it has none ([`settle_whole`]); a stream is relayed chunk by chunk and settled when it ends
//!    ([`stream::relay`]);
//! 9. [`respond`] — the answer in the client's protocol with `x-request-id`, `x-tollgate-config-version`,
//!    `x-tollgate-instance`, OpenAI's `x-ratelimit-*` headers, and the provider's `Retry-After` on a final
//!    429/503.
//!
//! **Work that outlives the client.** Steps 1–9 run on a task of their own, tracked by
//! [`AppState::inflight`]; the actix handler only waits for its answer. A client that leaves (FIN or RST)
//! drops the handler, not the task: the upstream's answer is still read to its end (within the instance's
//! timeout) and billed, with `outcome = client_cancelled`. A graceful stop waits for these tasks under
//! `server.drain_timeout` ([`crate::http::server::GatewayHandle::stop`]); a task dropped after that, or one that
//! panics, settles in its ledger's `Drop`.

pub mod count_tokens;
pub mod crossing;
pub mod forward;
pub mod settle;
pub mod stream;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use bytes::Bytes;
use tokio::sync::oneshot;
use tollgate_schemas::{EstimateSource, Outcome, UsageSource};
use uuid::Uuid;

use crate::admission::auth::Principal;
use crate::admission::limits::{RateFigures, format_reset};
use crate::admission::quota::{BudgetFigures, QuotaTicket, TokenFigures};
use crate::error::GatewayError;
use crate::http::inflight::{Permit, VALUE_COST};
use crate::http::state::{AppState, WorkerClients};
use crate::live::runtime::Runtime;
use crate::metering::sidecar::{Estimate, fallback_estimate, fallback_text_estimate};
use crate::metrics as m;
use crate::protocol::request::{ApiRequest, BodyLimits, read_body, scan};
use crate::protocol::translate::DROPPED_FIELDS_HEADER;
use crate::protocol::usage;
use crate::protocol::{Endpoint, Provider};
use crate::routing::RouteTable;
use crate::routing::upstream::{AttemptFailure, UpstreamResponse};
use crossing::StreamTranslator;
use forward::{Answer, Crossed};
use settle::{Ledger, PendingEvent, Settlement};
use stream::StreamJob;
use tollgate_schemas::quota::Requester;

/// When and as what a request arrived.
#[derive(Debug, Clone, Copy)]
struct Arrival {
    request_id: Uuid,
    started: Instant,
    started_at_ms: u64,
}

/// Where the consumer stands against its limits, for the `x-ratelimit-*` and `x-budget-*` headers.
#[derive(Debug, Clone, Default)]
struct LimitFigures {
    requests: Option<RateFigures>,
    tokens: Option<TokenFigures>,
    /// The budget closest to being spent (or the one that refused).
    budget: Option<BudgetFigures>,
}

/// What the pipeline's task hands back to the handler.
struct TaskAnswer {
    result: Result<(HttpResponse, Arc<RouteTable>), GatewayError>,
    limits: LimitFigures,
}

/// The handler of every metered endpoint (`http/server.rs` registers it once per [`Endpoint`]): runs the
/// pipeline on a tracked task of its own (so that a client that leaves cannot cut it short), waits for its
/// answer, records metrics.
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
    let (answer, answered) = oneshot::channel::<TaskAnswer>();
    let task = state.inflight.track_future({
        let state = state.clone();
        async move {
            let mut limits = LimitFigures::default();
            let client = ClientLink(&answer);
            let result = run(
                endpoint,
                &req,
                payload,
                &state,
                &clients,
                arrival,
                &mut limits,
                client,
            )
            .await;
            let _ = answer.send(TaskAnswer { result, limits });
        }
    });
    actix_web::rt::spawn(task);
    // The task settles whatever happens; when it panicked, its ledger settled in `Drop` and the client gets a 500.
    let TaskAnswer { result, limits } = answered.await.unwrap_or(TaskAnswer {
        result: Err(GatewayError::Internal),
        limits: LimitFigures::default(),
    });
    let (mut response, route) = match result {
        Ok((response, route)) => (response, Some(route)),
        Err(error) => {
            if matches!(
                error,
                GatewayError::MissingApiKey | GatewayError::InvalidApiKey | GatewayError::ExpiredApiKey
            ) {
                metrics::counter!(m::AUTH_FAILURES_TOTAL, "reason" => error.kind()).increment(1);
            }
            tracing::debug!(request_id = %arrival.request_id, kind = error.kind(), "request refused");
            (error.response_in(endpoint.client_protocol()), None)
        }
    };
    let mut id = [0u8; uuid::fmt::Hyphenated::LENGTH];
    if let Ok(value) = HeaderValue::from_str(arrival.request_id.hyphenated().encode_lower(&mut id)) {
        response
            .headers_mut()
            .insert(header::HeaderName::from_static("x-request-id"), value);
    }
    insert_limit_headers(&mut response, limits);
    let route_metrics = route.as_ref().map_or(&state.unrouted, |r| &r.metrics);
    route_metrics.requests(response.status().as_u16()).increment(1);
    route_metrics
        .duration()
        .record(arrival.started.elapsed().as_secs_f64());
    response
}

/// Whether the client is still waiting for the answer: gone once the handler was dropped (FIN, RST).
#[derive(Clone, Copy)]
struct ClientLink<'a>(&'a oneshot::Sender<TaskAnswer>);

impl ClientLink<'_> {
    fn left(self) -> bool {
        self.0.is_closed()
    }
}

/// Steps 1–9 (see the module doc).
#[allow(clippy::too_many_arguments)]
async fn run(
    endpoint: Endpoint,
    req: &HttpRequest,
    payload: web::Payload,
    state: &web::Data<AppState>,
    clients: &web::Data<WorkerClients>,
    arrival: Arrival,
    limits: &mut LimitFigures,
    client: ClientLink<'_>,
) -> Result<(HttpResponse, Arc<RouteTable>), GatewayError> {
    // This request's share of the replica's in-flight budget, held to its end (by the stream tee for a stream).
    let permit = state.budget.admit()?;
    // This request's configuration, kept to its end whatever the admin API changes meanwhile.
    let runtime = state.live.runtime();
    let principal = authenticate(&runtime, req)?;
    let api = parse(endpoint, req, payload, state, &permit).await?;
    let route = self::route(&runtime, state, req, &principal, &api, arrival)?;
    let metered = state.server.metering;
    let request = Incoming {
        arrival,
        principal,
        api,
        route,
    };
    limit(&runtime, state, &request, limits)?;
    let estimate = estimate(state, clients, &request.api).await;
    let mut ticket = admit(state, &request, estimate, limits)?;

    // The route outlives `request`: the instance that answers is borrowed from it.
    let route = Arc::clone(&request.route);
    let forwarded = forward::forward(
        req,
        state,
        clients,
        &route,
        &request.api,
        &request.principal,
        &mut ticket,
        Some(&permit),
    )
    .await;
    let forwarded = match forwarded {
        Err(GatewayError::InstanceQuotaExhausted { retry_after }) => {
            metrics::counter!(m::QUOTA_REJECTIONS_TOTAL, "kind" => "instance").increment(1);
            tracing::info!(
                request_id = %request.arrival.request_id,
                consumer = %request.principal.consumer,
                route = %request.route.name,
                "request rejected: every instance of the route has used its token quota"
            );
            drop(ticket);
            request.rejected(state, estimate, Outcome::RejectedQuota, 429);
            return Err(GatewayError::InstanceQuotaExhausted { retry_after });
        }
        other => other?,
    };
    let Incoming {
        arrival,
        principal,
        api,
        ..
    } = request;
    let instance = forwarded.instance;
    let crossed = forwarded.crossed.clone();
    // The gateway's own share of the time to the answer's head (or, for a whole body, to its last byte).
    let overhead = arrival.started.elapsed().saturating_sub(forwarded.upstream_time);
    route.metrics.overhead().record(overhead.as_secs_f64());
    let pending = PendingEvent {
        model_served: instance.model.clone().unwrap_or_else(|| route.model.to_string()),
        provider: instance.provider.as_str(),
        instance: instance.name.clone(),
        attempts: forwarded.attempts,
        quota: Some(ticket),
        ..PendingEvent::before_upstream(arrival, state, principal, &route, &api, estimate)
    };
    // From here on, the ledger owns the request's one usage event.
    let mut ledger = Ledger::open(pending, state.events.clone(), metered);
    let provider = instance.provider;
    let max_retry_after = state.server.max_retry_after;

    let response = match forwarded.result {
        Ok(Answer::Full(upstream)) => {
            let whole = WholeAnswer {
                upstream: &upstream,
                provider,
                endpoint: api.endpoint,
                model: &api.model,
                estimate,
                ttfb: upstream.head_at.saturating_duration_since(arrival.started),
            };
            if metered {
                settle_whole(ledger, clients, whole, client).await;
            } else {
                drop(ledger);
            }
            respond::whole(
                &upstream,
                max_retry_after,
                instance.api_key.as_ref().map(|k| k.expose()),
                crossed.as_ref(),
                api.endpoint,
            )
        }
        Ok(Answer::Stream(head)) => {
            let ttfb = head.head_at.saturating_duration_since(arrival.started);
            route.metrics.time_to_first_byte().record(ttfb.as_secs_f64());
            // A stream in the other protocol goes through the tee even unmetered: it is translated there.
            if metered || crossed.is_some() {
                ledger.if_dropped(Outcome::UpstreamCut, head.status.as_u16(), Some(ttfb));
                let job = StreamJob {
                    ledger,
                    permit: Some(permit),
                    // A translated stream's usage chunk is the translator's to give or keep.
                    strip_usage_chunk: crossed.is_none()
                        && provider.protocol() == Provider::Openai
                        && matches!(api.endpoint, Endpoint::ChatCompletions | Endpoint::Completions)
                        && !api.client_wants_usage(),
                    translator: crossed.as_ref().map(|c| {
                        StreamTranslator::new(
                            c.crossing,
                            c.include_usage,
                            chrono::Utc::now().timestamp(),
                            &c.model,
                        )
                    }),
                    state: state.clone(),
                    clients: clients.clone(),
                    ttfb,
                    provider,
                    // The endpoint the upstream was called on; Gemini's has none of ours, and its meter needs
                    // none.
                    endpoint: crossed
                        .as_ref()
                        .and_then(|c| c.crossing.upstream_endpoint())
                        .unwrap_or(api.endpoint),
                };
                stream::relay(head, job).await
            } else {
                drop(ledger);
                stream::pass_through(head)
            }
        }
        Err(failure) => {
            let mut usage = usage::estimated(estimate.tokens, false);
            let error = match failure {
                AttemptFailure::Timeout => GatewayError::UpstreamTimeout,
                AttemptFailure::Connect(_) => GatewayError::UpstreamUnreachable,
                AttemptFailure::Protocol(_) => GatewayError::UpstreamBadResponse,
                AttemptFailure::TooLarge {
                    status,
                    read,
                    over_budget,
                } => {
                    // The provider produced (and bills) the answer: the request is billed at least what was
                    // read of it, its prompt estimate and a token per 4 bytes.
                    if status.is_success() {
                        let counted = u32::try_from(read / 4).unwrap_or(u32::MAX);
                        usage =
                            usage::at_least_streamed(None, estimate.tokens, counted, UsageSource::Estimated);
                    }
                    tracing::warn!(
                        request_id = %arrival.request_id,
                        instance = %instance.name,
                        read_bytes = read,
                        over_budget,
                        "the upstream's whole answer was larger than the gateway holds; cut and billed from what was read"
                    );
                    if over_budget {
                        GatewayError::Overloaded { reason: "bytes" }
                    } else {
                        GatewayError::UpstreamAnswerTooLarge {
                            limit: state.server.max_response_bytes,
                        }
                    }
                }
            };
            ledger
                .settle(Settlement {
                    outcome: Outcome::UpstreamError,
                    http_status: error.status_code().as_u16(),
                    usage,
                    ttfb: None,
                })
                .wait()
                .await;
            error.response_in(api.endpoint.client_protocol())
        }
    };
    let mut response = respond::routed(response, &instance.name, runtime.version);
    if let Some(dropped) = crossed.as_ref().and_then(|c| c.dropped.as_deref())
        && let Ok(value) = HeaderValue::from_str(dropped)
    {
        response
            .headers_mut()
            .insert(HeaderName::from_static(DROPPED_FIELDS_HEADER), value);
    }
    Ok((response, route))
}

/// A request past steps 1–3: who asked for what, on which route.
struct Incoming {
    arrival: Arrival,
    principal: Principal,
    api: ApiRequest,
    route: Arc<RouteTable>,
}

impl Incoming {
    /// Records the request as refused before any upstream (a request rate, a token quota): a zero-token event.
    fn rejected(&self, state: &AppState, estimate: Estimate, outcome: Outcome, http_status: u16) {
        PendingEvent::before_upstream(
            self.arrival,
            state,
            self.principal.clone(),
            &self.route,
            &self.api,
            estimate,
        )
        .rejected(state, outcome, http_status);
    }
}

/// Step 1: who is calling.
fn authenticate(runtime: &Runtime, req: &HttpRequest) -> Result<Principal, GatewayError> {
    runtime.keys.authenticate_request(req.headers())
}

/// Step 2: the body, read once within its deadline and budget, its shape checked, then parsed.
pub(crate) async fn parse(
    endpoint: Endpoint,
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    permit: &Permit,
) -> Result<ApiRequest, GatewayError> {
    let server = &state.server;
    let content_length = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let limits = BodyLimits {
        max_bytes: server.max_request_bytes,
        timeout: server.body_read_timeout,
    };
    let raw = read_body(payload, content_length, limits, permit).await?;
    let values = scan(&raw, server.max_json_depth, server.max_json_values)?;
    permit.charge(values.saturating_mul(VALUE_COST))?;
    ApiRequest::parse(endpoint, raw)
}

/// Step 3: the route for the body's model on this path — a model the key may not use is answered as OpenAI
/// does, as if it did not exist — while usage can be recorded.
fn route(
    runtime: &Runtime,
    state: &AppState,
    req: &HttpRequest,
    principal: &Principal,
    api: &ApiRequest,
    arrival: Arrival,
) -> Result<Arc<RouteTable>, GatewayError> {
    let route = route_for(runtime, principal, req.path(), &api.model)?;
    if state.server.metering && !state.events.accepts_metered_requests() {
        tracing::debug!(
            request_id = %arrival.request_id,
            consumer = %principal.consumer,
            "request refused: the usage spool is full"
        );
        return Err(GatewayError::UsageSpoolFull);
    }
    Ok(route.clone())
}

/// The route serving `model` on `path` for `principal`: a model the key may not use is answered as OpenAI does,
/// as if it did not exist.
pub(crate) fn route_for<'a>(
    runtime: &'a Runtime,
    principal: &Principal,
    path: &str,
    model: &str,
) -> Result<&'a Arc<RouteTable>, GatewayError> {
    Some(model)
        .filter(|model| principal.may_use(model))
        .and_then(|model| runtime.router.route(path, model))
        .ok_or_else(|| GatewayError::ModelNotFound(model.to_owned()))
}

/// Step 4: one request off the consumer's request rate; a refusal is recorded as a zero-token event.
fn limit(
    runtime: &Runtime,
    state: &AppState,
    request: &Incoming,
    limits: &mut LimitFigures,
) -> Result<(), GatewayError> {
    match runtime.limits.check(&request.principal.consumer) {
        Ok(figures) => {
            limits.requests = figures;
            Ok(())
        }
        Err(rejection) => {
            limits.requests = Some(rejection.figures);
            request.route.metrics.rate_limited().increment(1);
            tracing::info!(
                request_id = %request.arrival.request_id,
                consumer = %request.principal.consumer,
                route = %request.route.name,
                retry_after_ms = rejection.retry_after.as_millis() as u64,
                "request rejected: the consumer is over its request rate"
            );
            let estimate = Estimate {
                tokens: fallback_estimate(&request.api.prompt()),
                source: EstimateSource::Fallback,
            };
            request.rejected(state, estimate, Outcome::RejectedRateLimit, rejection.status);
            Err(GatewayError::RateLimited {
                status: rejection.status,
                message: rejection.message,
                retry_after: rejection.retry_after,
            })
        }
    }
}

/// Step 5: the prompt's tokens. Unmetered, nothing is estimated, limited by tokens or billed.
async fn estimate(state: &AppState, clients: &WorkerClients, api: &ApiRequest) -> Estimate {
    if state.server.metering {
        clients.meter.estimate(&api.model, &api.prompt()).await
    } else {
        Estimate {
            tokens: 0,
            source: EstimateSource::Fallback,
        }
    }
}

/// Step 6: the token quotas of the consumer, then of the model; a refusal is recorded as a zero-token event.
fn admit(
    state: &AppState,
    request: &Incoming,
    estimate: Estimate,
    limits: &mut LimitFigures,
) -> Result<QuotaTicket, GatewayError> {
    let route = &request.route;
    let answering: Vec<&str> = route
        .targets
        .iter()
        .map(|t| t.instance.model.as_deref().unwrap_or(&route.model))
        .collect();
    let demand = state
        .quotas
        .demand(estimate.tokens, request.api.max_output_tokens(), &answering);
    let requested = demand.prompt + demand.completion;
    let who = Requester {
        consumer: &request.principal.consumer,
        team: request.principal.team.as_deref().map(|t| t.team.as_str()),
        organization: request.principal.team.as_deref().map(|t| t.organization.as_str()),
    };
    match state.quotas.admit_for(&who, &request.api.model, demand) {
        Ok((ticket, figures)) => {
            limits.tokens = figures;
            limits.budget = ticket.budget_figures().cloned();
            Ok(ticket)
        }
        Err(rejection) => {
            match rejection.budget.clone() {
                Some(budget) => limits.budget = Some(budget),
                None => limits.tokens = Some(rejection.figures),
            }
            metrics::counter!(m::QUOTA_REJECTIONS_TOTAL, "kind" => rejection.kind).increment(1);
            tracing::info!(
                request_id = %request.arrival.request_id,
                consumer = %request.principal.consumer,
                route = %request.route.name,
                scope = %rejection.scope,
                limit = rejection.figures.limit,
                remaining = rejection.figures.remaining,
                counted_by_snapshot = rejection.counted,
                pending_here = rejection.pending,
                requested,
                retry_after_s = rejection.retry_after.as_secs(),
                "request rejected: a token quota is used up for this window"
            );
            request.rejected(state, estimate, Outcome::RejectedQuota, rejection.status);
            Err(GatewayError::QuotaExceeded {
                status: rejection.status,
                message: rejection.message,
                error_type: rejection.error_type,
                retry_after: rejection.retry_after,
            })
        }
    }
}

/// A whole answer and what settling it needs.
struct WholeAnswer<'a> {
    upstream: &'a UpstreamResponse,
    provider: Provider,
    endpoint: Endpoint,
    /// The model the client asked for (the tokenizer of the count).
    model: &'a str,
    estimate: Estimate,
    ttfb: Duration,
}

/// Step 8 for a whole body: the provider's usage when it reported one; otherwise the prompt estimate and an
/// exact count of the answer's text (`counted`; in-process approximation when meter-sidecar is down), or, for a
/// body that is not JSON, the prompt estimate alone (`estimated`). The model
/// the answer names is the model served. A client that left meanwhile makes it `client_cancelled`; the provider's
/// work is billed all the same.
async fn settle_whole(
    mut ledger: Ledger,
    clients: &WorkerClients,
    whole: WholeAnswer<'_>,
    client: ClientLink<'_>,
) {
    let upstream = whole.upstream;
    let succeeded = upstream.status.is_success();
    let facts = usage::read_answer(whole.provider, &upstream.body);
    if let (Some(model), Some(pending)) = (facts.model, ledger.pending_mut()) {
        pending.model_served = model;
    }
    let text = (facts.usage.is_none() && succeeded && whole.endpoint != Endpoint::Embeddings)
        .then(|| usage::completion_text(whole.provider, &upstream.body))
        .flatten();
    let usage = match (facts.usage, text) {
        (Some(usage), _) => usage,
        (None, Some(text)) => {
            let (counted, source) = count_text(clients, whole.model, &text).await;
            usage::at_least_streamed(None, whole.estimate.tokens, counted, source)
        }
        (None, None) => usage::estimated(whole.estimate.tokens, succeeded),
    };
    let outcome = if !succeeded {
        Outcome::UpstreamError
    } else if client.left() {
        Outcome::ClientCancelled
    } else {
        Outcome::Ok
    };
    if outcome == Outcome::ClientCancelled
        && let Some(pending) = ledger.pending()
    {
        tracing::info!(
            request_id = %pending.request_id,
            consumer = %pending.principal.consumer,
            instance = %pending.instance,
            completion_tokens = usage.completion_tokens,
            "client left before the answer; the answer was read to its end and billed"
        );
    }
    ledger
        .settle(Settlement {
            outcome,
            http_status: upstream.status.as_u16(),
            usage,
            ttfb: Some(whole.ttfb),
        })
        .wait()
        .await;
}

/// The exact token count of generated text by meter-sidecar, or the in-process approximation when it is down.
pub(crate) async fn count_text(clients: &WorkerClients, model: &str, text: &str) -> (u32, UsageSource) {
    if text.is_empty() {
        return (0, UsageSource::Counted);
    }
    match clients.meter.count_text(model, text).await {
        Ok(tokens) => (tokens, UsageSource::Counted),
        Err(_) => (fallback_text_estimate(text), UsageSource::Estimated),
    }
}

impl PendingEvent {
    /// The event of a request admitted to `route`, before any upstream was tried.
    fn before_upstream(
        arrival: Arrival,
        state: &AppState,
        principal: Principal,
        route: &RouteTable,
        api: &ApiRequest,
        estimate: Estimate,
    ) -> Self {
        PendingEvent {
            request_id: arrival.request_id,
            source: state.event_source.clone(),
            principal,
            endpoint: api.endpoint.path(),
            route: route.name.clone(),
            series: route.metrics.clone(),
            model_requested: api.model.clone(),
            model_served: route.model.to_string(),
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
            // Rejected before any upstream: no answer waits for the event to be written ahead.
            let _ = state.events.emit(self.finish(settled));
        }
    }
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
    // Amounts in currency units (`0.25`), the reset in seconds (`86400s`), as the token figures are.
    let money =
        |micros: u64| tollgate_schemas::prices::format_micros(i64::try_from(micros).unwrap_or(i64::MAX));
    let budget = figures.budget.into_iter().flat_map(|f| {
        [
            ("x-budget-limit", money(f.limit_micros)),
            ("x-budget-remaining", money(f.remaining_micros)),
            ("x-budget-currency", f.currency),
            ("x-budget-reset", format!("{}s", f.reset.as_secs())),
        ]
    });
    for (name, value) in requests.chain(tokens).chain(budget) {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response
                .headers_mut()
                .insert(HeaderName::from_static(name), value);
        }
    }
}

/// Step 9: the answer as the client receives it.
mod respond {
    use super::*;

    /// The upstream's whole answer: same status, same body, same content type — an error body with anything
    /// like the instance's `key` redacted ([`crate::routing::scrub`]); on a final 429 or 503 the provider's
    /// `Retry-After` (in whole seconds, cut to `server.max_retry_after`), so the client backs off as the
    /// provider asked.
    pub fn whole(
        upstream: &UpstreamResponse,
        max_retry_after: Duration,
        key: Option<&str>,
        crossed: Option<&Crossed>,
        endpoint: Endpoint,
    ) -> HttpResponse {
        let mut response = HttpResponse::build(upstream.status);
        if let Some(content_type) = &upstream.content_type {
            response.insert_header((header::CONTENT_TYPE, content_type.clone()));
        }
        if matches!(
            upstream.status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) && let Some(wait) = forward::retry_after(upstream.retry_after.as_ref(), max_retry_after)
        {
            // Rounded up: a client told 0 would retry at once.
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            response.insert_header((header::RETRY_AFTER, seconds.to_string()));
        }
        let body = if upstream.status.is_success() {
            upstream.body.clone()
        } else {
            match crate::routing::scrub::error_body(&upstream.body, key) {
                std::borrow::Cow::Borrowed(_) => upstream.body.clone(),
                std::borrow::Cow::Owned(scrubbed) => {
                    metrics::counter!(m::UPSTREAM_ERRORS_SCRUBBED_TOTAL).increment(1);
                    Bytes::from(scrubbed)
                }
            }
        };
        let Some(crossed) = crossed else {
            return response.body(body);
        };
        // In the client's protocol: the answer or the error translated, always JSON.
        let created = chrono::Utc::now().timestamp();
        match crossing::client_body(
            crossed.crossing,
            upstream.status.as_u16(),
            &body,
            created,
            &crossed.model,
        ) {
            Ok((status, translated)) => {
                response.status(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY));
                response.insert_header(header::ContentType::json());
                response.body(translated)
            }
            Err(error) => error.response_in(endpoint.client_protocol()),
        }
    }

    /// Which instance answered and which configuration routed the request: during a change, says whether a
    /// request was served before or after it.
    pub fn routed(mut response: HttpResponse, instance: &str, version: i64) -> HttpResponse {
        if let Ok(instance) = HeaderValue::from_str(instance) {
            response
                .headers_mut()
                .insert(HeaderName::from_static("x-tollgate-instance"), instance);
        }
        response.headers_mut().insert(
            HeaderName::from_static("x-tollgate-config-version"),
            HeaderValue::from(version),
        );
        response
    }
}
