//! Assembling the HTTP server: routes, middleware and workers.
//!
//! In: a validated [`Config`], a bound `TcpListener` and the Prometheus handle. Out: a running-on-await
//! [`Server`]. [`app`] is the same application without the socket, for in-process tests.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{Server, Service, ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::{App, HttpServer, web};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::api::{self, AppState};
use crate::config::Config;
use crate::encoding::Encoding;
use crate::error::MeterError;
use crate::metrics;

/// How long a graceful stop waits for in-flight requests before closing them.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Path of the counting endpoint.
pub const COUNT_PATH: &str = "/v1/tokens/count";
/// Path of the batch counting endpoint.
pub const COUNT_BATCH_PATH: &str = "/v1/tokens/count/batch";
/// Path of the liveness endpoint.
pub const HEALTHZ_PATH: &str = "/healthz";
/// Path of the Prometheus endpoint.
pub const METRICS_PATH: &str = "/metrics";

/// Builds the server on `listener`; it runs when awaited (or spawned) on an actix system.
///
/// Before returning, it describes the metrics, loads every tokenizer and creates the count cache (one for all
/// workers, `config.cache_entries` entries), so the first request does not pay for any of it. The server does not install signal handlers: whoever runs it decides when to stop it,
/// through [`Server::handle`] (the binary stops it gracefully on SIGTERM or Ctrl-C).
pub fn build(config: Config, listener: TcpListener, metrics: PrometheusHandle) -> std::io::Result<Server> {
    metrics::describe();
    Encoding::load_all();
    let workers = config.workers;
    let state = web::Data::new(AppState::new(config, metrics));
    let server = HttpServer::new(move || app(state.clone()))
        .workers(workers)
        .disable_signals()
        .shutdown_timeout(SHUTDOWN_TIMEOUT.as_secs())
        .listen(listener)?
        .run();
    Ok(server)
}

/// The application: every route, behind one middleware.
///
/// A request goes through these steps, in order:
/// 1. **Measure** (the `wrap_fn` middleware): notes the start time and the endpoint label (from the path:
///    `count`, `count_batch`, `healthz`, `metrics` or `unmatched`).
/// 2. **Route**: `POST /v1/tokens/count` → [`api::count_tokens`]; `POST /v1/tokens/count/batch` →
///    [`api::count_tokens_batch`]; other methods on either → 405; `GET /healthz` → [`api::healthz`];
///    `GET /metrics` → [`api::metrics`]; anything else → 404.
/// 3. **Count** ([`api::count_tokens`]): reads the body up to `max_body_bytes` (413 beyond), parses and
///    validates it (400 naming the field), picks the encoding (explicit, else by model, else the default),
///    and counts through the count cache — inline for small bodies, on the blocking pool for large ones.
///    A batch ([`api::count_tokens_batch`]) validates its envelope (400 for a bad one or more than
///    `max_batch_items` items), then runs each item through the same validation and counting, turning an
///    item's failure into that item's error result.
/// 4. **Respond**: the JSON result, or the [`MeterError`] rendered as an OpenAI-shaped error.
/// 5. **Record** (back in the middleware): `meter_requests_total`, `meter_request_duration_seconds` and, for a
///    failure, `meter_errors_total{kind}` plus one log line with the endpoint, status and error kind.
pub fn app(
    state: web::Data<AppState>,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    App::new()
        .app_data(state)
        .wrap_fn(|request, service| {
            let endpoint = endpoint_label(request.path());
            let started = Instant::now();
            let response = service.call(request);
            async move {
                let response = response.await?;
                let status = response.status();
                let error = response
                    .response()
                    .error()
                    .and_then(|err| err.as_error::<MeterError>());
                metrics::record_request(endpoint, status, started.elapsed(), error);
                if let Some(error) = error {
                    let kind = error.kind();
                    if status.is_server_error() {
                        tracing::error!(endpoint, status = status.as_u16(), kind, %error, "request failed");
                    } else {
                        tracing::info!(endpoint, status = status.as_u16(), kind, %error, "request rejected");
                    }
                }
                Ok(response)
            }
        })
        .service(
            web::resource(COUNT_PATH)
                .route(web::post().to(api::count_tokens))
                .default_service(web::to(api::count_method_not_allowed)),
        )
        .service(
            web::resource(COUNT_BATCH_PATH)
                .route(web::post().to(api::count_tokens_batch))
                .default_service(web::to(api::count_method_not_allowed)),
        )
        .route(HEALTHZ_PATH, web::get().to(api::healthz))
        .route(METRICS_PATH, web::get().to(api::metrics))
        .default_service(web::to(api::not_found))
}

/// The bounded `endpoint` label for a request path.
fn endpoint_label(path: &str) -> &'static str {
    match path {
        COUNT_PATH => "count",
        COUNT_BATCH_PATH => "count_batch",
        HEALTHZ_PATH => "healthz",
        METRICS_PATH => "metrics",
        _ => "unmatched",
    }
}
