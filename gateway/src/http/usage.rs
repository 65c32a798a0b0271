//! The usage API. `GET /v1/usage?from=YYYY-MM-DD&to=YYYY-MM-DD` answers a consumer, with its own key, what it
//! used — tokens of every type and spend, per served model and per day, totals per currency — and where each of
//! its token quotas stands; `GET /admin/v1/usage?consumer=…|team=…|organization=…&from=…&to=…` answers an admin
//! the same for anyone. The period is whole UTC days, `to` excluded, the current month by default.
//!
//! The numbers are billing-consumer's ([`[billing] url`](crate::config::BillingConfig)), read from the ledger by
//! the same selection as the invoice, so a month's statement equals its invoice to the micro-unit; the answer
//! says how far the ledger had caught up (`ledger_newest_event`). The quota standings are this replica's view,
//! the one its admissions use. A consumer can only ever ask for itself: the gateway names the consumer, the
//! client cannot.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::Value;

use crate::admin::error::AdminError;
use crate::error::GatewayError;
use crate::http::state::{AppState, WorkerClients};
use crate::live::LiveConfig;
use crate::protocol::Provider;

/// The query parameters a consumer may give: the period.
const CONSUMER_PARAMETERS: [&str; 2] = ["from", "to"];

/// Why a statement could not be read.
#[derive(Debug)]
enum StatementError {
    /// No `[billing] url`.
    Off,
    /// billing-consumer refused the question (400): its message.
    Refused(String),
    Timeout,
    /// Unreachable, or an answer that is not a statement.
    Unavailable,
}

/// `GET /v1/usage`.
pub async fn consumer(
    req: HttpRequest,
    state: web::Data<AppState>,
    clients: web::Data<WorkerClients>,
) -> HttpResponse {
    let runtime = state.live.runtime();
    let principal = match runtime.keys.authenticate_request(req.headers()) {
        Ok(principal) => principal,
        Err(error) => return error.response_in(Provider::Openai),
    };
    let query = req.query_string();
    if let Some((key, _)) = url::form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| !CONSUMER_PARAMETERS.contains(&key.as_ref()))
    {
        return GatewayError::InvalidParameter {
            param: "query",
            message: format!("unknown parameter `{key}`: the usage API takes `from` and `to` (YYYY-MM-DD)"),
        }
        .response_in(Provider::Openai);
    }
    let asked = format!(
        "consumer={}&{query}",
        url::form_urlencoded::byte_serialize(principal.consumer.as_bytes()).collect::<String>()
    );
    let billing = &runtime.config.billing;
    match statement(&clients.billing, billing.url.as_ref(), billing.timeout, &asked).await {
        Ok(mut statement) => {
            with_quotas(
                &mut statement,
                &state.quotas,
                &runtime.config,
                &principal.consumer,
            );
            HttpResponse::Ok().json(statement)
        }
        Err(error) => {
            let error = match error {
                StatementError::Off => GatewayError::UnknownUrl {
                    method: "GET".to_owned(),
                    path: req.path().to_owned(),
                },
                StatementError::Refused(message) => GatewayError::InvalidParameter {
                    param: "query",
                    message,
                },
                StatementError::Timeout => GatewayError::UpstreamTimeout,
                StatementError::Unavailable => GatewayError::UpstreamUnreachable,
            };
            error.response_in(Provider::Openai)
        }
    }
}

/// `GET /admin/v1/usage`.
pub async fn admin(req: HttpRequest, live: web::Data<LiveConfig>) -> Result<HttpResponse, AdminError> {
    let runtime = live.runtime();
    let billing = &runtime.config.billing;
    let client = awc::Client::default();
    match statement(&client, billing.url.as_ref(), billing.timeout, req.query_string()).await {
        Ok(mut statement) => {
            let billed = |field: &str| {
                statement
                    .pointer(&format!("/billed/{field}"))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            };
            match (billed("kind").as_deref(), billed("name")) {
                (Some("consumer"), Some(consumer)) => {
                    with_quotas(&mut statement, live.quotas(), &runtime.config, &consumer);
                }
                (Some("team" | "organization"), Some(team)) => {
                    let standing = serde_json::to_value(live.quotas().standing_of_team(&team));
                    if let Some(object) = statement.as_object_mut() {
                        object.insert("quotas".to_owned(), standing.unwrap_or(Value::Null));
                    }
                }
                _ => {}
            }
            Ok(HttpResponse::Ok().json(statement))
        }
        Err(StatementError::Off) => Err(AdminError::UnknownUrl {
            method: "GET".to_owned(),
            path: req.path().to_owned(),
        }),
        Err(StatementError::Refused(message)) => Err(AdminError::InvalidBody(message)),
        Err(StatementError::Timeout | StatementError::Unavailable) => Err(AdminError::Unreadable {
            status: StatusCode::BAD_GATEWAY,
            message: "billing-consumer's usage statement cannot be read now".to_owned(),
        }),
    }
}

/// Adds `quotas`: where each of `consumer`'s token quotas and budgets (its own, its team's and its
/// organisation's, as configured now) stands.
fn with_quotas(
    statement: &mut Value,
    quotas: &crate::admission::quota::Quotas,
    config: &crate::config::Config,
    consumer: &str,
) {
    let place = config
        .consumers
        .iter()
        .find(|c| c.name == consumer)
        .and_then(|c| c.team.as_ref());
    let who = tollgate_schemas::quota::Requester {
        consumer,
        team: place.map(|t| t.team.as_str()),
        organization: place.map(|t| t.organization.as_str()),
    };
    if let Some(object) = statement.as_object_mut() {
        let standing = serde_json::to_value(quotas.standing_of(&who)).unwrap_or(Value::Null);
        object.insert("quotas".to_owned(), standing);
    }
}

/// billing-consumer's statement for `query`.
async fn statement(
    client: &awc::Client,
    url: Option<&url::Url>,
    timeout: Duration,
    query: &str,
) -> Result<Value, StatementError> {
    let url = url.ok_or(StatementError::Off)?;
    let target = format!("{}/v1/usage?{query}", url.as_str().trim_end_matches('/'));
    let mut response = match client.get(target).timeout(timeout).send().await {
        Ok(response) => response,
        Err(awc::error::SendRequestError::Timeout) => return Err(StatementError::Timeout),
        Err(error) => {
            tracing::warn!(%error, "the usage API cannot reach billing-consumer");
            return Err(StatementError::Unavailable);
        }
    };
    let body: Value = response
        .json()
        .limit(16 << 20)
        .await
        .map_err(|_| StatementError::Unavailable)?;
    match response.status().as_u16() {
        200 => Ok(body),
        400 => Err(StatementError::Refused(
            body["error"]
                .as_str()
                .unwrap_or("the period cannot be read")
                .to_owned(),
        )),
        status => {
            tracing::warn!(status, "billing-consumer did not give the usage statement");
            Err(StatementError::Unavailable)
        }
    }
}
