//! `GET /readyz`: whether this replica's Kafka paths work — usage events reach Kafka directly (nothing waits in
//! the spool) and quota snapshots are current (not degraded). 200 `{"status":"ready",…}` when both hold, 503
//! `{"status":"degraded",…}` with each check's state otherwise.
//!
//! It is for monitoring and the stack's scripts, not for a load balancer's eviction: a degraded replica still
//! serves correctly — it spools usage events and enforces quotas from its own view — and taking every replica
//! out when the broker dies would turn a billing delay into an outage. `/healthz` says whether the process
//! serves.

use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::http::state::AppState;

pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let spool_bytes = state.events.spool_bytes();
    let config = state.live.runtime().config.clone();
    let max_age = config.quota.max_snapshot_age;
    let quotas_in_use = !state.quotas.is_empty() || config.admin.config_topic.is_some();
    let snapshot_age = state.quotas.staleness();
    let quota_ok = !quotas_in_use || snapshot_age.is_some_and(|age| age <= max_age);
    let events_ok = spool_bytes == 0;
    let body = json!({
        "status": if quota_ok && events_ok { "ready" } else { "degraded" },
        "checks": {
            "usage_events": {
                "ok": events_ok,
                "spool_bytes": spool_bytes,
            },
            "quota_snapshots": {
                "ok": quota_ok,
                "in_use": quotas_in_use,
                "age_seconds": snapshot_age.map(|age| age.as_secs_f64()),
                "max_age_seconds": max_age.as_secs_f64(),
            },
        },
    });
    if quota_ok && events_ok {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
