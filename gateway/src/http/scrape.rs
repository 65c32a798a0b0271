//! The metrics listener: `GET /metrics` (and `/healthz`) on an address of its own (`server.metrics_listen`),
//! for Prometheus on an operations network, so route, instance, model and consumer-class names are not readable
//! by whoever can reach the API. Without `metrics_listen`, `/metrics` stays on the API listener.
//!
//! In: the process-wide Prometheus handle. Out: its text exposition, and [`healthz`] — which the API listener
//! serves too.

use std::net::{SocketAddr, TcpListener};

use actix_web::dev::ServerHandle;
use actix_web::http::header::ContentType;
use actix_web::{App, HttpResponse, HttpServer, web};
use metrics_exporter_prometheus::PrometheusHandle;

/// The running metrics listener.
pub struct MetricsServer {
    handle: ServerHandle,
    /// The server runs only while polled, so it is spawned; `stop` waits for it.
    task: actix_web::rt::task::JoinHandle<std::io::Result<()>>,
    addr: SocketAddr,
}

impl std::fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl MetricsServer {
    /// Binds `listen` and serves the metrics there. Must be called inside an actix system.
    pub fn start(listen: SocketAddr, metrics: PrometheusHandle) -> std::io::Result<Self> {
        let listener = TcpListener::bind(listen)?;
        let addr = listener.local_addr()?;
        let metrics = web::Data::new(metrics);
        let server = HttpServer::new(move || {
            App::new()
                .app_data(metrics.clone())
                .route("/metrics", web::get().to(render))
                .route("/healthz", web::get().to(healthz))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)?
        .run();
        let handle = server.handle();
        let task = actix_web::rt::spawn(server);
        tracing::info!(listen = %addr, "metrics listening (server.metrics_listen); /metrics is off the API listener");
        Ok(Self { handle, task, addr })
    }

    /// The bound address (the port picked when `listen` asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving and waits for the server to finish.
    pub async fn stop(self) -> std::io::Result<()> {
        self.handle.stop(true).await;
        self.task.await.unwrap_or(Ok(()))
    }
}

/// The Prometheus text exposition of every metric this process records.
pub async fn render(metrics: web::Data<PrometheusHandle>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(metrics.render())
}

/// `{"status":"ok"}` while the process serves: on the API listener, and on the metrics listener when it has one.
pub(crate) async fn healthz() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(ContentType::json())
        .body(r#"{"status":"ok"}"#)
}
