//! The application: builds the shared state ([`crate::http::state`]) and the per-worker clients, mounts the request
//! pipeline ([`crate::pipeline`], whose doc lists its steps) on every metered endpoint, and runs the server, the
//! admin API and the background loops beside it until a graceful stop.
//!
//! `GET /v1/models` lists the routed model names; `GET /healthz` sits beside the API, and so does `GET /metrics`
//! unless `server.metrics_listen` gives it a listener of its own ([`crate::http::scrape`]); every other path is an
//! OpenAI-shaped 404. The admin API runs beside it on its own listener ([`crate::admin`]).
//!
//! **Stopping.** [`GatewayHandle::stop`] stops accepting connections, then waits up to `server.drain_timeout`
//! for the work that outlives clients (answers read to learn their usage, stream tees; [`AppState::inflight`]),
//! then stops the HTTP workers (which wait `server.shutdown_timeout` for open connections). Whatever is still
//! running after that is dropped, and its settlement value emits its event with what is known
//! ([`crate::pipeline::settle`]). Last, [`Gateway::run`] drains the queued events to Kafka or the spool.

use std::any::Any;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::rt::net::TcpStream;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::AdminServer;
use crate::admission::quota::Quotas;
use crate::admission::quota::feed::{FeedError, QuotaFeed};
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::error::GatewayError;
use crate::events::{EventPipeline, EventsError};
use crate::http::inflight::Inflight;
use crate::http::models;
use crate::http::scrape::{self, MetricsServer};
use crate::http::state::{AppState, WorkerClients};
use crate::live::{LiveConfig, LiveError, LiveHandles};
use crate::metering::sidecar::MeterClient;
use crate::metrics::RouteMetrics;
use crate::pipeline;
use crate::protocol::Endpoint;
use crate::routing::upstream::Upstreams;

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
    inflight: TaskTracker,
    shutdown_timeout: Duration,
    drain_timeout: Duration,
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
        let quota_load_timeout = config.quota.load_timeout;
        let (live, live_handles) =
            LiveConfig::start(config, quotas.clone(), probes.clone(), event_source.clone())?;
        // Serve only once the quota feed has read what the topic holds: before, the books hold none of the
        // spending it carries, and an exhausted quota would admit again after a restart.
        if let Some(feed) = &feed
            && !feed.wait_caught_up(quota_load_timeout)
        {
            tracing::warn!(
                timeout_s = quota_load_timeout.as_secs_f64(),
                "The quota topic could not be read in time: serving degraded, enforcing token limits from this replica's own view until snapshots arrive."
            );
        }
        let inflight = TaskTracker::new();
        let state = web::Data::new(AppState {
            server: server_config.clone(),
            live: live.clone(),
            quotas,
            events,
            event_source,
            clock,
            metrics,
            inflight: inflight.clone(),
            budget: Inflight::new(
                server_config.max_inflight_requests,
                server_config.max_inflight_bytes,
            ),
            unrouted: RouteMetrics::new(Arc::from("none")),
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
                billing: awc::Client::default(),
            };
            let app = App::new()
                .app_data(state.clone())
                .app_data(web::Data::new(clients))
                .route("/v1/models", web::get().to(models::list))
                .route("/v1/usage", web::get().to(crate::http::usage::consumer))
                .route(
                    pipeline::count_tokens::PATH,
                    web::post().to(pipeline::count_tokens::serve),
                )
                .route("/healthz", web::get().to(scrape::healthz))
                .route("/readyz", web::get().to(crate::http::ready::readyz))
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
                                pipeline::serve(endpoint, req, payload, state, clients)
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
            inflight,
            shutdown_timeout: server_config.shutdown_timeout,
            drain_timeout: server_config.drain_timeout,
        })
    }

    /// A handle to stop the gateway, gracefully or not.
    pub fn handle(&self) -> GatewayHandle {
        GatewayHandle {
            server: self.server.handle(),
            inflight: self.inflight.clone(),
            drain_timeout: self.drain_timeout,
        }
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
        // The workers are gone; the requests their stop dropped settle as their tasks are dropped, on the
        // workers' threads. Their events must be queued before the pipeline below stops taking events.
        self.inflight.close();
        if tokio::time::timeout(self.shutdown_timeout, self.inflight.wait())
            .await
            .is_err()
        {
            tracing::error!(
                still_running = self.inflight.len(),
                "requests were still running after the HTTP workers stopped"
            );
        }
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

/// Stops a running [`Gateway`]; cheap to clone.
#[derive(Clone)]
pub struct GatewayHandle {
    server: ServerHandle,
    inflight: TaskTracker,
    drain_timeout: Duration,
}

impl std::fmt::Debug for GatewayHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayHandle")
            .field("inflight", &self.inflight.len())
            .field("drain_timeout", &self.drain_timeout)
            .finish_non_exhaustive()
    }
}

impl GatewayHandle {
    /// Stops the gateway. Graceful: no new connections, then up to `server.drain_timeout` for the work that
    /// outlives clients, then the workers stop with `server.shutdown_timeout` for open connections; what runs
    /// after that is settled with what is known. Not graceful: the workers stop at once, and every request in
    /// flight is settled with what is known.
    pub async fn stop(&self, graceful: bool) {
        if graceful {
            self.server.pause().await;
            self.inflight.close();
            let open = self.inflight.len();
            if tokio::time::timeout(self.drain_timeout, self.inflight.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    still_running = self.inflight.len(),
                    drain_timeout_ms = self.drain_timeout.as_millis() as u64,
                    "drain timed out; the requests still running are settled with what is known"
                );
            } else if open > 0 {
                tracing::info!(drained = open, "requests in flight drained");
            }
        }
        self.server.stop(graceful).await;
    }
}

fn set_nodelay(connection: &dyn Any, _: &mut actix_web::dev::Extensions) {
    if let Some(socket) = connection.downcast_ref::<TcpStream>() {
        let _ = socket.set_nodelay(true);
    }
}

async fn unknown_url(req: HttpRequest) -> HttpResponse {
    GatewayError::UnknownUrl {
        method: req.method().to_string(),
        path: req.path().to_owned(),
    }
    .response_in(Endpoint::protocol_of_path(req.path()))
}
