//! The sidecar's Prometheus metrics: names, descriptions and the functions that record them.
//!
//! Every metric is described once, in [`describe`]; everything else records through the helpers here, so the
//! names and label sets live in one file. Labels are bounded: the endpoint is one of five fixed names, the
//! status is an HTTP status code the sidecar itself produces, the encoding is one of [`Encoding::ALL`], and
//! the error kind is a [`MeterError::kind`].
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `meter_requests_total` | counter | `endpoint`, `status` |
//! | `meter_request_duration_seconds` | histogram | `endpoint` |
//! | `meter_tokens_counted_total` | counter | `encoding`, `kind` (`text` or `chat`) |
//! | `meter_errors_total` | counter | `kind` |
//! | `meter_batch_item_errors_total` | counter | `kind` |
//! | `meter_cache_hits_total` | counter | — |
//! | `meter_cache_misses_total` | counter | — |

use std::time::Duration;

use ::metrics::{Unit, counter, describe_counter, describe_histogram, histogram};
use actix_web::http::StatusCode;
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusHandle};

use crate::encoding::Encoding;
use crate::error::MeterError;

/// Requests served, by endpoint and status code.
pub const REQUESTS_TOTAL: &str = "meter_requests_total";
/// Time from receiving a request to having its response ready, in seconds.
pub const REQUEST_DURATION_SECONDS: &str = "meter_request_duration_seconds";
/// Tokens counted, by encoding and input kind.
pub const TOKENS_COUNTED_TOTAL: &str = "meter_tokens_counted_total";
/// Failed requests, by error kind.
pub const ERRORS_TOTAL: &str = "meter_errors_total";
/// Items of a batch that could not be counted (the batch itself succeeded), by error kind.
pub const BATCH_ITEM_ERRORS_TOTAL: &str = "meter_batch_item_errors_total";
/// Texts whose count came from the count cache.
pub const CACHE_HITS_TOTAL: &str = "meter_cache_hits_total";
/// Cacheable texts that were not in the count cache and were tokenized.
pub const CACHE_MISSES_TOTAL: &str = "meter_cache_misses_total";

/// Histogram buckets for [`REQUEST_DURATION_SECONDS`]: 100 µs to 10 s — small counts take well under a
/// millisecond, megabyte bodies take seconds.
const DURATION_BUCKETS_SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// What a counted request was: a plain text or chat messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// `{"text": ...}`
    Text,
    /// `{"messages": [...]}`
    Chat,
}

impl InputKind {
    /// The `kind` label value.
    pub fn label(self) -> &'static str {
        match self {
            InputKind::Text => "text",
            InputKind::Chat => "chat",
        }
    }
}

/// Describes every metric to the installed recorder. Call once at start-up (the server builder does).
pub fn describe() {
    describe_counter!(
        REQUESTS_TOTAL,
        Unit::Count,
        "HTTP requests served by the meter sidecar, by endpoint and status."
    );
    describe_histogram!(
        REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "Time to serve a meter sidecar request, from receipt to response, in seconds."
    );
    describe_counter!(
        TOKENS_COUNTED_TOTAL,
        Unit::Count,
        "Tokens counted by the meter sidecar, by encoding and input kind."
    );
    describe_counter!(
        ERRORS_TOTAL,
        Unit::Count,
        "Meter sidecar requests that failed, by error kind."
    );
    describe_counter!(
        BATCH_ITEM_ERRORS_TOTAL,
        Unit::Count,
        "Items of a batch count that failed while the batch succeeded, by error kind."
    );
    describe_counter!(
        CACHE_HITS_TOTAL,
        Unit::Count,
        "Texts whose token count the meter sidecar took from its count cache."
    );
    describe_counter!(
        CACHE_MISSES_TOTAL,
        Unit::Count,
        "Cacheable texts the meter sidecar had to tokenize because they were not in its count cache."
    );
}

/// Installs the process-wide Prometheus recorder, with histogram buckets for the request duration and its
/// upkeep, and returns the handle that renders `/metrics`. Fails if a recorder is already installed.
pub fn install_recorder() -> Result<PrometheusHandle, BuildError> {
    tollgate_plumbing::telemetry::install_prometheus(
        &[(
            Matcher::Full(REQUEST_DURATION_SECONDS.to_owned()),
            DURATION_BUCKETS_SECONDS,
        )],
        "meter-metrics-upkeep",
    )
}

/// Records one served request: its count, its duration and, if it failed, its error kind.
pub fn record_request(
    endpoint: &'static str,
    status: StatusCode,
    elapsed: Duration,
    error: Option<&MeterError>,
) {
    counter!(REQUESTS_TOTAL, "endpoint" => endpoint, "status" => status.as_u16().to_string()).increment(1);
    histogram!(REQUEST_DURATION_SECONDS, "endpoint" => endpoint).record(elapsed.as_secs_f64());
    if let Some(error) = error {
        counter!(ERRORS_TOTAL, "kind" => error.kind()).increment(1);
    }
}

/// Records tokens counted for one request.
pub fn record_tokens(encoding: Encoding, kind: InputKind, tokens: usize) {
    let tokens = u64::try_from(tokens).unwrap_or(u64::MAX);
    counter!(TOKENS_COUNTED_TOTAL, "encoding" => encoding.name(), "kind" => kind.label()).increment(tokens);
}

/// Records one item of a batch that could not be counted.
pub fn record_batch_item_error(error: &MeterError) {
    counter!(BATCH_ITEM_ERRORS_TOTAL, "kind" => error.kind()).increment(1);
}

/// Records a text counted from the cache.
pub fn record_cache_hit() {
    counter!(CACHE_HITS_TOTAL).increment(1);
}

/// Records a cacheable text that had to be tokenized.
pub fn record_cache_miss() {
    counter!(CACHE_MISSES_TOTAL).increment(1);
}
