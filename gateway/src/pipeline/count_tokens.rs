//! `POST /v1/messages/count_tokens`: Anthropic's token count of a Messages request, before sending it.
//!
//! The request is authenticated, read and checked like a Messages request (same key, body limits and model
//! access), and counts against the consumer's request rate — a count is cheap, but not free for the provider.
//! It is answered by the first available Anthropic instance of the model's route (its own
//! `/messages/count_tokens`, with the instance's key and the instance's model name), and when no such instance
//! can answer — the route has none, or it is unreachable or failing — by the gateway's own estimate (the meter
//! sidecar's count of the same prompt that token quotas use). The answer says which in
//! `x-tollgate-token-count: provider` or `estimated`. Nothing is generated, so nothing is billed: no usage
//! event, and token quotas are not charged; `tollgate_count_tokens_total{source}` counts the answers.
//!
//! Errors are Anthropic-shaped, like every error on `/v1/messages`. An instance's 4xx (a request it refuses) is
//! passed to the client as it is; a 5xx, a timeout or a refused connection falls back to the estimate.

use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::Bytes;
use serde_json::json;

use crate::error::GatewayError;
use crate::http::state::{AppState, WorkerClients};
use crate::metrics as m;
use crate::protocol::{Endpoint, Provider};
use crate::routing::HashKeys;

/// The client path.
pub const PATH: &str = "/v1/messages/count_tokens";
/// The path relative to an Anthropic instance's endpoint.
const UPSTREAM_PATH: &str = "messages/count_tokens";
/// The response header naming where the count came from.
pub const SOURCE_HEADER: &str = "x-tollgate-token-count";

/// Where a count came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CountSource {
    /// An Anthropic instance counted it.
    Provider,
    /// The gateway estimated it.
    Estimated,
}

impl CountSource {
    fn as_str(self) -> &'static str {
        match self {
            Self::Provider => "provider",
            Self::Estimated => "estimated",
        }
    }
}

/// The handler.
pub async fn serve(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    clients: web::Data<WorkerClients>,
) -> HttpResponse {
    let started = Instant::now();
    match count(&req, payload, &state, &clients).await {
        Ok((response, source)) => {
            metrics::counter!(m::COUNT_TOKENS_TOTAL, "source" => source.as_str()).increment(1);
            metrics::histogram!(m::COUNT_TOKENS_DURATION_SECONDS).record(started.elapsed().as_secs_f64());
            response
        }
        Err(error) => {
            metrics::counter!(m::COUNT_TOKENS_TOTAL, "source" => "refused").increment(1);
            tracing::debug!(kind = error.kind(), "token count refused");
            error.response_in(Provider::Anthropic)
        }
    }
}

async fn count(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    clients: &WorkerClients,
) -> Result<(HttpResponse, CountSource), GatewayError> {
    let permit = state.budget.admit()?;
    let runtime = state.live.runtime();
    let principal = runtime.keys.authenticate_request(req.headers())?;
    let api = super::parse(Endpoint::Messages, req, payload, state, &permit).await?;
    let route = super::route_for(&runtime, &principal, Endpoint::Messages.path(), &api.model)?.clone();
    if let Err(rejection) = runtime.limits.check(&principal.consumer) {
        return Err(GatewayError::RateLimited {
            status: rejection.status,
            message: rejection.message,
            retry_after: rejection.retry_after,
        });
    }
    let keys = HashKeys {
        consumer: Some(&principal.consumer),
        header: None,
    };
    let anthropic = route
        .plan(keys, Instant::now())
        .into_iter()
        .map(|i| &route.targets[i].instance)
        .find(|instance| instance.provider == Provider::Anthropic);
    if let Some(instance) = anthropic {
        let body = api.upstream_body(instance.model.as_deref(), false)?;
        let passthrough = Endpoint::Messages.passthrough_headers(req.headers());
        let answered = match clients
            .upstreams
            .open(instance, UPSTREAM_PATH, body, instance.timeout, &passthrough)
            .await
        {
            Ok(head) => head.read_to_end(MAX_COUNT_ANSWER_BYTES, Some(&permit)).await.ok(),
            Err(_) => None,
        };
        match answered {
            Some(answer) if answer.status.is_success() || answer.status.is_client_error() => {
                let mut response = HttpResponse::build(answer.status);
                if let Some(content_type) = answer.content_type {
                    response.insert_header((header::CONTENT_TYPE, content_type));
                }
                response.insert_header(source_header(CountSource::Provider));
                return Ok((response.body(answer.body), CountSource::Provider));
            }
            _ => {
                tracing::info!(
                    instance = %instance.name,
                    "the instance did not count the tokens; answering with the gateway's estimate"
                );
            }
        }
    }
    let estimate = clients.meter.estimate(&api.model, &api.prompt()).await;
    let body = json!({ "input_tokens": estimate.tokens });
    let response = HttpResponse::build(StatusCode::OK)
        .insert_header(source_header(CountSource::Estimated))
        .insert_header(header::ContentType::json())
        .body(Bytes::from(body.to_string()));
    Ok((response, CountSource::Estimated))
}

/// An instance's count answer is a few bytes; anything larger is not one.
const MAX_COUNT_ANSWER_BYTES: usize = 64 * 1024;

fn source_header(source: CountSource) -> (HeaderName, HeaderValue) {
    (
        HeaderName::from_static(SOURCE_HEADER),
        HeaderValue::from_static(source.as_str()),
    )
}
