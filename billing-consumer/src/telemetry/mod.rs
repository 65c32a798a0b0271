//! What billing-consumer shows about itself: [`metrics`] (every metric, described once, and the recorder),
//! [`endpoint`] (the HTTP server of `/metrics` and `/readyz`) and [`readiness`] (whether ingest and the quota
//! loop reach the broker and ClickHouse).

pub mod endpoint;
pub mod metrics;
pub mod readiness;
