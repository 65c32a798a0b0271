//! The process's HTTP endpoint on `--metrics-listen`: `GET /metrics` (Prometheus text) and `GET /readyz`
//! ([`crate::telemetry::readiness`]). HTTP/1.1 through hyper; anything else is 404, a method other than GET or HEAD 405.

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

use crate::error::BillingError;
use crate::telemetry::readiness;

/// How long a connection may take to send its request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds `listen` and serves it on the current runtime until the process ends.
pub async fn serve(listen: SocketAddr, handle: PrometheusHandle) -> Result<(), BillingError> {
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
            tokio::spawn(async move {
                let service = service_fn(move |request| answer(request, handle.clone()));
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
        _ => plain(StatusCode::NOT_FOUND, "not found: /metrics or /readyz\n"),
    })
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response
}
