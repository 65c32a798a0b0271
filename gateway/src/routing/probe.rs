//! Active health checks. For every instance with a `health_check`, a background task sends the configured
//! request (e.g. a 1-token chat completion, with the instance's key) every `interval`, within `timeout`, and
//! reports whether the status was one of `expected_statuses` to the instance's [`InstanceHealth`]. Probes never
//! run on the request path; their verdict takes effect after `healthy_threshold` / `unhealthy_threshold`
//! consecutive results, and shows as `tollgate_instance_healthy`.

use std::sync::Arc;

use actix_web::http::Method;
use actix_web::http::header;
use tokio_util::sync::CancellationToken;

use crate::config::{HealthCheck, HealthMethod, Instance};
use crate::metrics as m;
use crate::routing::health::InstanceHealth;
use crate::routing::upstream::{url_for, with_auth};

/// Starts `instance`'s probe task in the current actix system, when it has a health check; it stops when
/// `stop` is cancelled (the instance changed or went away, or the gateway stops).
pub fn spawn_one(instance: &Instance, health: &Arc<InstanceHealth>, stop: &CancellationToken) {
    if let Some(check) = &instance.health_check {
        actix_web::rt::spawn(run(instance.clone(), check.clone(), health.clone(), stop.clone()));
    }
}

async fn run(instance: Instance, check: HealthCheck, health: Arc<InstanceHealth>, stop: CancellationToken) {
    let client = awc::Client::builder()
        .connector(awc::Connector::new().timeout(check.timeout))
        .timeout(check.timeout)
        .disable_redirects()
        .finish();
    let url = url_for(&instance.endpoint, &check.path);
    let mut interval = actix_web::rt::time::interval(check.interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        let ok = probe_once(&client, &instance, &check, &url).await;
        let result = if ok { "ok" } else { "fail" };
        metrics::counter!(m::PROBES_TOTAL, "instance" => instance.name.clone(), "result" => result)
            .increment(1);
        tracing::debug!(instance = %instance.name, result, "health probe");
        health.record_probe(ok);
    }
}

async fn probe_once(client: &awc::Client, instance: &Instance, check: &HealthCheck, url: &str) -> bool {
    let method = match check.method {
        HealthMethod::Get => Method::GET,
        HealthMethod::Post => Method::POST,
    };
    let request = with_auth(client.request(method, url), instance);
    let sent = match &check.body {
        Some(body) => {
            request
                .insert_header((header::CONTENT_TYPE, "application/json"))
                .send_body(body.clone())
                .await
        }
        None => request.send().await,
    };
    match sent {
        Ok(mut response) => {
            // Drain the body so the connection can be reused; its content does not matter.
            let _ = response.body().limit(1 << 20).await;
            check.expected_statuses.contains(&response.status().as_u16())
        }
        Err(_) => false,
    }
}
