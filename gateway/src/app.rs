//! The application: shared state, per-worker clients, the route table, and the server that runs them.
//!
//! Request pipeline for `POST /v1/chat/completions`, `/v1/completions` and `/v1/embeddings` (details in [`crate::proxy`]):
//! 1. accept — TCP_NODELAY on the client socket (no 40 ms Nagle stalls on kept-alive connections);
//! 2. authenticate — `Authorization: Bearer` key → consumer and key id ([`crate::auth`]);
//! 3. parse — body read once up to `server.max_request_bytes`, `model`/`messages`/`stream` checked
//!    ([`crate::request`]);
//! 4. route — `model` → route; refused (503) while the usage spool is full and `spool.on_full = "reject"`
//!    ([`crate::events`]); then the consumer's request rate ([`crate::limits`]) → a plan of targets by priority,
//!    weight and health ([`crate::routing`], [`crate::health`]; active probes run in the background,
//!    [`crate::probe`]);
//! 5. estimate and admit — meter-sidecar prompt count, in-process fallback ([`crate::meter`]); token quotas of
//!    the consumer and the model against billing-consumer's snapshots plus this replica's own pending usage
//!    ([`crate::quota`], fed from the quota topic by [`crate::quota::feed`]);
//! 6. forward — instance URL, model and key; failover on retry-safe failures ([`crate::upstream`]);
//! 7. settle and emit — usage from the provider or the estimate; one event, queued without waiting
//!    ([`crate::usage`], [`crate::events`]), to Kafka or, while Kafka does not acknowledge, the spool
//!    ([`crate::spool`]);
//! 8. respond — upstream status and body unchanged, plus `x-request-id` and `x-tollgate-instance`.
//!
//! Any step's failure is a [`GatewayError`](crate::error::GatewayError), answered in OpenAI's error shape.
//! `GET /v1/models` lists the routed model names; `GET /healthz` sits beside the API, and so does `GET /metrics`
//! unless `server.metrics_listen` gives it a listener of its own ([`crate::scrape`]); every other path is an
//! OpenAI-shaped 404. The admin API runs beside it on its own listener ([`crate::admin`]).

use std::any::Any;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::http::header::ContentType;
use actix_web::rt::net::TcpStream;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, ResponseError, web};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use crate::admin::AdminServer;
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, ServerConfig};
use crate::error::GatewayError;
use crate::events::{EventPipeline, EventSender, EventsError};
use crate::live::{LiveConfig, LiveError, LiveHandles};
use crate::meter::MeterClient;
use crate::models;
use crate::proxy;
use crate::quota::Quotas;
use crate::quota::feed::{FeedError, QuotaFeed};
use crate::request::Endpoint;
use crate::scrape::{self, MetricsServer};
use crate::upstream::Upstreams;

/// State shared by every worker. What the admin API can change lives in [`LiveConfig`]; a request loads its
/// [`Runtime`](crate::live::runtime::Runtime) once and keeps it to the end.
#[derive(Debug)]
pub struct AppState {
    /// `[server]`: fixed for the life of the process.
    pub server: ServerConfig,
    /// Routes, instances, consumers, keys and limits: swapped whole by the admin API's changes.
    pub live: Arc<LiveConfig>,
    pub quotas: Arc<Quotas>,
    pub events: EventSender,
    /// The CloudEvents `source` of this replica's events.
    pub event_source: Arc<str>,
    /// Now, for quota windows and event timestamps.
    pub clock: Arc<dyn Clock>,
    pub metrics: PrometheusHandle,
}

/// HTTP clients owned by one worker thread (awc clients are not `Send`).
#[derive(Debug)]
pub struct WorkerClients {
    pub meter: MeterClient,
    pub upstreams: Upstreams,
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Events(#[from] EventsError),
    #[error(transparent)]
    QuotaFeed(#[from] FeedError),
    #[error(transparent)]
    Live(#[from] LiveError),
    #[error("could not start the HTTP server: {0}")]
    Http(#[from] std::io::Error),
    #[error("could not start the metrics listener on {listen}: {source}")]
    Metrics {
        listen: SocketAddr,
        source: std::io::Error,
    },
    #[error("could not start the admin API on {listen}: {source}")]
    Admin {
        listen: SocketAddr,
        source: std::io::Error,
    },
}

/// A gateway ready to run: the HTTP server and the event pipeline behind it.
pub struct Gateway {
    server: Server,
    /// The admin API, when an admin key is configured.
    admin: Option<AdminServer>,
    /// `/metrics` on a listener of its own, when `server.metrics_listen` is set.
    scrape: Option<MetricsServer>,
    pipeline: EventPipeline,
    feed: Option<QuotaFeed>,
    live: LiveHandles,
    probes: CancellationToken,
    shutdown_timeout: Duration,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("shutdown_timeout", &self.shutdown_timeout)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// Builds the gateway on an already bound listener (port 0 in tests). Must be called inside an actix
    /// system (`#[actix_web::main]`, `actix_rt::System`).
    pub fn start(
        config: Config,
        listener: TcpListener,
        metrics: PrometheusHandle,
    ) -> Result<Self, StartError> {
        Self::start_with_clock(config, listener, metrics, Arc::new(SystemClock))
    }

    /// [`Gateway::start`] with the clock quota windows and event times are read from (tests move it).
    pub fn start_with_clock(
        config: Config,
        listener: TcpListener,
        metrics: PrometheusHandle,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StartError> {
        let event_source: Arc<str> = Arc::from(format!("tollgate-gateway/{}", config.server.instance_id));
        let (events, pipeline) = EventPipeline::start(&config.kafka, &config.spool, &event_source)?;
        let quotas = Arc::new(Quotas::new(&config, event_source.clone(), clock.clone()));
        let feed = QuotaFeed::start(&config, quotas.clone())?;
        let probes = CancellationToken::new();
        let server_config = config.server.clone();
        let admin_config = config.admin.clone();
        let (live, live_handles) =
            LiveConfig::start(config, quotas.clone(), probes.clone(), event_source.clone())?;
        let state = web::Data::new(AppState {
            server: server_config.clone(),
            live: live.clone(),
            quotas,
            events,
            event_source,
            clock,
            metrics,
        });
        let worker_live = live.clone();
        let scrape = server_config
            .metrics_listen
            .map(|listen| {
                MetricsServer::start(listen, state.metrics.clone())
                    .map_err(|source| StartError::Metrics { listen, source })
            })
            .transpose()?;
        let metrics_here = scrape.is_none().then(|| web::Data::new(state.metrics.clone()));
        let server = HttpServer::new(move || {
            let runtime = worker_live.runtime();
            let clients = WorkerClients {
                meter: MeterClient::new(&runtime.config.meter),
                upstreams: Upstreams::new(&runtime.config.instances),
            };
            let app = App::new()
                .app_data(state.clone())
                .app_data(web::Data::new(clients))
                .route("/v1/models", web::get().to(models::list))
                .route("/healthz", web::get().to(healthz))
                .configure(|cfg| {
                    if let Some(metrics) = &metrics_here {
                        cfg.app_data(metrics.clone())
                            .route("/metrics", web::get().to(scrape::render));
                    }
                });
            Endpoint::ALL
                .into_iter()
                .fold(app, |app, endpoint| {
                    app.route(
                        endpoint.path(),
                        web::post().to(
                            move |req: HttpRequest,
                                  payload: web::Payload,
                                  state: web::Data<AppState>,
                                  clients: web::Data<WorkerClients>| {
                                proxy::serve(endpoint, req, payload, state, clients)
                            },
                        ),
                    )
                })
                .default_service(web::to(unknown_url))
        })
        .on_connect(set_nodelay)
        .workers(server_config.workers)
        .shutdown_timeout(server_config.shutdown_timeout.as_secs())
        .disable_signals()
        .listen(listener)?
        .run();
        let admin =
            AdminServer::start(&admin_config, &server_config, live).map_err(|source| StartError::Admin {
                listen: admin_config.listen,
                source,
            })?;
        Ok(Self {
            server,
            admin,
            scrape,
            pipeline,
            feed,
            live: live_handles,
            probes,
            shutdown_timeout: server_config.shutdown_timeout,
        })
    }

    /// A handle to stop the server gracefully.
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// The admin API's bound address; `None` when no admin key is configured (the listener did not start).
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(AdminServer::addr)
    }

    /// The metrics listener's bound address; `None` when `/metrics` is on the API listener.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.scrape.as_ref().map(MetricsServer::addr)
    }

    /// Serves until stopped, then drains the usage events still queued to Kafka, or to the spool what Kafka
    /// does not acknowledge within `server.shutdown_timeout`.
    pub async fn run(self) -> std::io::Result<()> {
        let served = self.server.await;
        if let Some(admin) = self.admin
            && let Err(e) = admin.stop().await
        {
            tracing::error!(error = %e, "the admin API did not stop cleanly");
        }
        if let Some(scrape) = self.scrape
            && let Err(e) = scrape.stop().await
        {
            tracing::error!(error = %e, "the metrics listener did not stop cleanly");
        }
        self.live.stop();
        self.probes.cancel();
        if let Some(feed) = self.feed {
            feed.stop();
        }
        if !self.pipeline.shutdown(self.shutdown_timeout).await {
            tracing::error!("shutdown timed out before every usage event reached Kafka or the spool");
        }
        served
    }
}

fn set_nodelay(connection: &dyn Any, _: &mut actix_web::dev::Extensions) {
    if let Some(socket) = connection.downcast_ref::<TcpStream>() {
        let _ = socket.set_nodelay(true);
    }
}

/// `{"status":"ok"}` while the process serves: on the API listener, and on the metrics listener when it has one.
pub(crate) async fn healthz() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(ContentType::json())
        .body(r#"{"status":"ok"}"#)
}

async fn unknown_url(req: HttpRequest) -> HttpResponse {
    GatewayError::UnknownUrl {
        method: req.method().to_string(),
        path: req.path().to_owned(),
    }
    .error_response()
}
