//! The process's HTTP endpoint on `--metrics-listen`: `GET /metrics` (Prometheus text), `GET /readyz`
//! ([`crate::telemetry::readiness`]) and, where the process writes the ledger (`run`), the usage API's source,
//! `GET /v1/usage?consumer=…|team=…|organization=…&from=YYYY-MM-DD&to=YYYY-MM-DD`
//! ([`crate::reports::statement`]; the period defaults to the current UTC month). The gateway serves it to
//! consumers and admins after checking who asks: this endpoint trusts its network, like `/metrics`. HTTP/1.1
//! through hyper; anything else is 404, a method other than GET or HEAD 405.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use chrono::{Datelike as _, NaiveDate, Utc};
use serde_json::json;

use crate::error::BillingError;
use crate::ledger::ClickHouseSettings;
use crate::ledger::store::USAGE_TABLE;
use crate::reports::invoice::Billed;
use crate::reports::statement;
use crate::telemetry::readiness;

/// How long a connection may take to send its request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds `listen` and serves it on the current runtime until the process ends.
pub async fn serve(
    listen: SocketAddr,
    handle: PrometheusHandle,
    ledger: Option<ClickHouseSettings>,
) -> Result<(), BillingError> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| BillingError::Metrics(format!("cannot listen on {listen}: {e}")))?;
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::debug!(%error, "Accepting a metrics connection failed.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let handle = handle.clone();
            let ledger = ledger.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| answer(request, handle.clone(), ledger.clone()));
                let served = http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                if let Err(error) = served {
                    tracing::debug!(%error, "A metrics connection ended with an error.");
                }
            });
        }
    });
    Ok(())
}

async fn answer(
    request: Request<Incoming>,
    handle: PrometheusHandle,
    ledger: Option<ClickHouseSettings>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return Ok(plain(StatusCode::METHOD_NOT_ALLOWED, "GET only\n"));
    }
    Ok(match request.uri().path() {
        "/metrics" => {
            let mut response = Response::new(Full::new(Bytes::from(handle.render())));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            response
        }
        "/readyz" => {
            let (ready, body) = readiness::STATE.report(readiness::now_ms());
            let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
            *response.status_mut() = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        "/v1/usage" => match ledger {
            Some(ledger) => usage(&ledger, request.uri().query().unwrap_or("")).await,
            None => plain(
                StatusCode::NOT_FOUND,
                "this process does not write the ledger: ask the one that runs `run`\n",
            ),
        },
        _ => plain(
            StatusCode::NOT_FOUND,
            "not found: /metrics, /readyz or /v1/usage\n",
        ),
    })
}

/// `GET /v1/usage`: the statement as JSON; 400 with `{"error"}` for a query it cannot read, 503 when the ledger
/// cannot be read.
async fn usage(ledger: &ClickHouseSettings, query: &str) -> Response<Full<Bytes>> {
    let (status, body) = match UsageQuery::parse(query, Utc::now().date_naive()) {
        Err(problem) => (StatusCode::BAD_REQUEST, json!({ "error": problem })),
        Ok(asked) => {
            match statement::statement(ledger, USAGE_TABLE, &asked.billed, asked.from, asked.to).await {
                Ok(statement) => (StatusCode::OK, json!(statement)),
                Err(BillingError::InvalidPeriod { input }) => {
                    (StatusCode::BAD_REQUEST, json!({ "error": input }))
                }
                Err(error) => {
                    tracing::warn!(%error, "The usage API could not read the ledger.");
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        json!({ "error": "the ledger cannot be read now" }),
                    )
                }
            }
        }
    };
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// What `/v1/usage` was asked: whose usage, and which UTC days.
#[derive(Debug, PartialEq, Eq)]
struct UsageQuery {
    billed: Billed,
    from: NaiveDate,
    to: NaiveDate,
}

impl UsageQuery {
    /// Reads `consumer=…` (or `team=…`, `organization=…`: exactly one), `from` and `to` (`YYYY-MM-DD`, `to`
    /// excluded; default the month of `today`).
    fn parse(query: &str, today: NaiveDate) -> Result<Self, String> {
        let mut billed = Vec::new();
        let (mut from, mut to) = (None, None);
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            let day = || {
                NaiveDate::parse_from_str(&value, "%Y-%m-%d")
                    .map_err(|_| format!("`{key}` must be a date like 2026-12-01"))
            };
            match key.as_ref() {
                "consumer" => billed.push(Billed::Consumer(value.into_owned())),
                "team" => billed.push(Billed::Team(value.into_owned())),
                "organization" => billed.push(Billed::Organization(value.into_owned())),
                "from" => from = Some(day()?),
                "to" => to = Some(day()?),
                other => return Err(format!("unknown parameter `{other}`")),
            }
        }
        let [billed] = <[Billed; 1]>::try_from(billed)
            .map_err(|_| "exactly one of consumer, team or organization".to_owned())?;
        let month = today.with_day(1).unwrap_or(today);
        let from = from.unwrap_or(month);
        let to = to.unwrap_or_else(|| {
            from.checked_add_months(chrono::Months::new(1))
                .unwrap_or(NaiveDate::MAX)
        });
        Ok(Self { billed, from, to })
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(text: &str) -> NaiveDate {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn a_usage_query_names_one_subject_and_defaults_to_the_current_month() {
        let today = day("2026-12-04");
        let asked = UsageQuery::parse("consumer=team-a", today).unwrap();
        assert_eq!(asked.billed, Billed::Consumer("team-a".into()));
        assert_eq!((asked.from, asked.to), (day("2026-12-01"), day("2027-01-01")));
        let asked = UsageQuery::parse("team=r%26d&from=2026-11-03&to=2026-11-10", today).unwrap();
        assert_eq!(asked.billed, Billed::Team("r&d".into()));
        assert_eq!((asked.from, asked.to), (day("2026-11-03"), day("2026-11-10")));
        assert!(UsageQuery::parse("", today).is_err());
        assert!(UsageQuery::parse("consumer=a&team=b", today).is_err());
        assert!(UsageQuery::parse("consumer=a&from=yesterday", today).is_err());
        assert!(UsageQuery::parse("consumer=a&limit=3", today).is_err());
    }
}
