//! The state a request reads: what every worker shares ([`AppState`]: fixed server settings, the live
//! configuration, quota books, the event sender, the clock, the tracker of work that outlives clients) and what
//! each worker owns ([`WorkerClients`]: its HTTP clients, which are not `Send`). Built once by
//! [`crate::http::server`], read by [`crate::pipeline`], [`crate::http::models`] and [`crate::http::scrape`].

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::task::TaskTracker;

use crate::admission::quota::Quotas;
use crate::clock::Clock;
use crate::config::ServerConfig;
use crate::events::EventSender;
use crate::http::inflight::Inflight;
use crate::live::LiveConfig;
use crate::metering::sidecar::MeterClient;
use crate::metrics::RouteMetrics;
use crate::routing::upstream::Upstreams;

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
    /// The work that outlives a client: answers read to their end after the client left, stream tees. A
    /// graceful stop waits for it under `server.drain_timeout` ([`crate::http::server::GatewayHandle::stop`]).
    pub inflight: TaskTracker,
    /// The replica's budget of requests and bytes in flight ([`crate::http::inflight`]).
    pub budget: Arc<Inflight>,
    /// The series of requests refused before they had a route (`route="none"`).
    pub unrouted: RouteMetrics,
}

/// HTTP clients owned by one worker thread (awc clients are not `Send`).
pub struct WorkerClients {
    pub meter: MeterClient,
    pub upstreams: Upstreams,
    /// For billing-consumer's usage statements ([`crate::http::usage`]).
    pub billing: awc::Client,
}

impl std::fmt::Debug for WorkerClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerClients")
            .field("meter", &self.meter)
            .field("upstreams", &self.upstreams)
            .finish_non_exhaustive()
    }
}
