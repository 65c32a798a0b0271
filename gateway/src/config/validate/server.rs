//! `[server]`, `[meter]`, `[billing]` and `[kafka]`: the listener, the edge budgets, the meter-sidecar, the usage
//! API's source and the usage producer.

use std::net::SocketAddr;
use std::time::Duration;

use tollgate_schemas::pricing::PriceTable;
use url::Url;

use super::{Problems, http_url};
use crate::config::model::*;
use crate::config::raw::*;

/// serde_json refuses deeper documents itself.
const MAX_JSON_DEPTH: usize = 128;
/// A body read longer than this is a connection held open, not an upload.
const MAX_BODY_READ_TIMEOUT: Duration = Duration::from_secs(600);
/// The most replicas a request-rate limit is shared among.
const MAX_REPLICAS: u32 = 1000;
/// Events the usage producer may queue in memory (rdkafka's own ceiling is 10 million messages).
const MAX_QUEUE_CAPACITY: usize = 10_000_000;

pub(super) fn server(p: &mut Problems, raw: RawServer) -> ServerConfig {
    let listen = raw.listen.parse().unwrap_or_else(|e| {
        p.push(
            "server.listen",
            format!("`{}` is not an address like 127.0.0.1:8080: {e}", raw.listen),
        );
        SocketAddr::from(([127, 0, 0, 1], 0))
    });
    p.name("server.instance_id", &raw.instance_id);
    if raw.workers == 0 {
        p.push("server.workers", "must be at least 1");
    }
    if !(1..=MAX_REPLICAS).contains(&raw.replicas) {
        p.push("server.replicas", format!("must be from 1 to {MAX_REPLICAS}"));
    }
    if raw.max_request_bytes == 0 {
        p.push("server.max_request_bytes", "must be at least 1");
    }
    if raw.max_response_bytes == 0 {
        p.push("server.max_response_bytes", "must be at least 1");
    }
    if !(1..=MAX_JSON_DEPTH).contains(&raw.max_json_depth) {
        p.push(
            "server.max_json_depth",
            format!("must be from 1 to {MAX_JSON_DEPTH} (the JSON parser's own recursion limit)"),
        );
    }
    if raw.max_json_values < 16 {
        p.push("server.max_json_values", "must be at least 16");
    }
    if raw.max_inflight_requests == 0 {
        p.push("server.max_inflight_requests", "must be at least 1");
    }
    if raw.max_inflight_bytes < raw.max_request_bytes {
        p.push(
            "server.max_inflight_bytes",
            format!(
                "must be at least server.max_request_bytes ({}): one largest body must fit",
                raw.max_request_bytes
            ),
        );
    }
    let body_read_timeout = p.duration("server.body_read_timeout", &raw.body_read_timeout);
    if body_read_timeout > MAX_BODY_READ_TIMEOUT {
        p.push(
            "server.body_read_timeout",
            format!("must be at most {}s", MAX_BODY_READ_TIMEOUT.as_secs()),
        );
    }
    let metrics_listen = raw
        .metrics_listen
        .as_deref()
        .and_then(|raw| match raw.parse::<SocketAddr>() {
            Ok(addr) if addr == listen && addr.port() != 0 => {
                p.push(
                    "server.metrics_listen",
                    format!("`{raw}` is server.listen's address: give the metrics their own"),
                );
                None
            }
            Ok(addr) => Some(addr),
            Err(e) => {
                p.push(
                    "server.metrics_listen",
                    format!("`{raw}` is not an address like 127.0.0.1:9464: {e}"),
                );
                None
            }
        });
    ServerConfig {
        listen,
        instance_id: raw.instance_id,
        replicas: raw.replicas,
        workers: raw.workers,
        max_request_bytes: raw.max_request_bytes,
        max_response_bytes: raw.max_response_bytes,
        body_read_timeout,
        max_json_depth: raw.max_json_depth,
        max_json_values: raw.max_json_values,
        max_inflight_requests: raw.max_inflight_requests,
        max_inflight_bytes: raw.max_inflight_bytes,
        shutdown_timeout: p.duration("server.shutdown_timeout", &raw.shutdown_timeout),
        stream_idle_timeout: p.duration("server.stream_idle_timeout", &raw.stream_idle_timeout),
        send_timeout: p.duration("server.send_timeout", &raw.send_timeout),
        drain_timeout: p.duration("server.drain_timeout", &raw.drain_timeout),
        max_retry_after: p.duration("server.max_retry_after", &raw.max_retry_after),
        metering: raw.metering,
        metrics_listen,
    }
}

pub(super) fn meter(p: &mut Problems, raw: RawMeter, placeholder: &Url) -> MeterConfig {
    MeterConfig {
        url: http_url(p, "meter.url", &raw.url, placeholder),
        timeout: p.duration("meter.timeout", &raw.timeout),
    }
}

pub(super) fn billing(p: &mut Problems, raw: RawBilling, placeholder: &Url) -> BillingConfig {
    let timeout = raw
        .timeout
        .as_deref()
        .map_or(Duration::from_secs(10), |t| p.duration("billing.timeout", t));
    BillingConfig {
        url: raw
            .url
            .as_deref()
            .map(|url| http_url(p, "billing.url", url, placeholder)),
        timeout,
        prices: raw.prices.map(std::path::PathBuf::from),
    }
}

/// The price file's table (`[billing] prices`), every problem of it reported at `billing.prices`; empty
/// without one.
pub(super) fn prices(p: &mut Problems, path: Option<&std::path::Path>) -> std::sync::Arc<PriceTable> {
    let Some(path) = path else {
        return std::sync::Arc::default();
    };
    let table = std::fs::read_to_string(path)
        .map_err(|e| vec![format!("cannot be read: {e}")])
        .and_then(|text| PriceTable::from_toml(&text));
    match table {
        Ok(table) => std::sync::Arc::new(table),
        Err(problems) => {
            for problem in problems {
                p.push("billing.prices", format!("{}: {problem}", path.display()));
            }
            std::sync::Arc::default()
        }
    }
}

pub(super) fn kafka(p: &mut Problems, raw: RawKafka) -> KafkaConfig {
    if raw.brokers.trim().is_empty() {
        p.push(
            "kafka.brokers",
            "must name at least one broker, e.g. \"127.0.0.1:9092\"",
        );
    }
    if raw.usage_topic.trim().is_empty() {
        p.push("kafka.usage_topic", "must not be empty");
    }
    if raw
        .health_topic
        .as_deref()
        .is_some_and(|topic| topic.trim().is_empty() || topic == raw.usage_topic)
    {
        p.push(
            "kafka.health_topic",
            "must name a topic of its own (not empty, not the usage topic), e.g. \"tollgate.health.v1\"",
        );
    }
    if raw.queue_capacity == 0 || raw.queue_capacity > MAX_QUEUE_CAPACITY {
        p.push("kafka.queue_capacity", format!("must be 1–{MAX_QUEUE_CAPACITY}"));
    }
    for (key, value) in &raw.properties {
        if let Some(problem) = weakens_delivery(key, value) {
            p.push(format!("kafka.properties.\"{key}\""), problem);
        }
    }
    KafkaConfig {
        brokers: raw.brokers,
        usage_topic: raw.usage_topic,
        queue_capacity: raw.queue_capacity,
        message_timeout: p.duration("kafka.message_timeout", &raw.message_timeout),
        health_topic: raw.health_topic,
        properties: raw.properties,
    }
}

/// Why a librdkafka property would weaken the usage producer's delivery guarantees (acknowledged by every
/// in-sync replica, idempotent: nothing lost, nothing doubled), if it would.
fn weakens_delivery(key: &str, value: &str) -> Option<String> {
    let value = value.trim();
    match key.trim() {
        "acks" | "request.required.acks" if !matches!(value, "all" | "-1") => Some(format!(
            "`{value}` would let the broker acknowledge usage events before every in-sync replica has them; only \
             \"all\" is allowed"
        )),
        "enable.idempotence" if !value.eq_ignore_ascii_case("true") => Some(
            "usage events are produced idempotently (a retry must not double an event); it cannot be turned off"
                .to_owned(),
        ),
        "enable.gapless.guarantee" | "transactional.id" => Some(format!(
            "`{key}` is not supported for usage events (the broker has no transactions)"
        )),
        _ => None,
    }
}
