//! Every metric the gateway exports, named `tollgate_<what>_<unit>[_total]` in base units and described once
//! here. Labels are bounded: route, instance, status class, outcome, error kind — never consumer keys, user ids
//! or request ids.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use metrics::{Counter, Histogram, Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusHandle};
use tollgate_schemas::usage::AttemptError;

pub const REQUESTS_TOTAL: &str = "tollgate_requests_total";
pub const REQUEST_DURATION_SECONDS: &str = "tollgate_request_duration_seconds";
pub const UPSTREAM_DURATION_SECONDS: &str = "tollgate_upstream_duration_seconds";
pub const UPSTREAM_ATTEMPTS_TOTAL: &str = "tollgate_upstream_attempts_total";
pub const TOKENS_TOTAL: &str = "tollgate_tokens_total";
pub const OVERHEAD_SECONDS: &str = "tollgate_overhead_seconds";
pub const TIME_TO_FIRST_BYTE_SECONDS: &str = "tollgate_time_to_first_byte_seconds";
pub const QUOTA_REMAINING_TOKENS: &str = "tollgate_quota_remaining_tokens";
/// In whole units of the budget's currency (the base unit), not micro-units.
pub const BUDGET_REMAINING: &str = "tollgate_budget_remaining";
pub const ESTIMATES_TOTAL: &str = "tollgate_prompt_estimates_total";
pub const METER_DURATION_SECONDS: &str = "tollgate_meter_duration_seconds";
pub const METER_BATCH_REQUESTS: &str = "tollgate_meter_batch_requests";
pub const AUTH_FAILURES_TOTAL: &str = "tollgate_auth_failures_total";
pub const COUNT_TOKENS_TOTAL: &str = "tollgate_count_tokens_total";
pub const COUNT_TOKENS_DURATION_SECONDS: &str = "tollgate_count_tokens_duration_seconds";
pub const EVENTS_EMITTED_TOTAL: &str = "tollgate_events_emitted_total";
pub const EVENTS_FAILED_TOTAL: &str = "tollgate_events_failed_total";
pub const EVENTS_DROPPED_TOTAL: &str = "tollgate_events_dropped_total";
pub const EVENTS_QUEUED: &str = "tollgate_events_queued";
pub const EVENTS_SPOOLED_TOTAL: &str = "tollgate_events_spooled_total";
pub const EVENTS_UNMETERED_TOTAL: &str = "tollgate_events_unmetered_total";
pub const SPOOL_BYTES: &str = "tollgate_spool_bytes";
pub const SPOOL_SEGMENTS: &str = "tollgate_spool_segments";
pub const SPOOL_DRAINED_TOTAL: &str = "tollgate_spool_drained_total";
pub const SPOOL_CORRUPT_RECORDS_TOTAL: &str = "tollgate_spool_corrupt_records_total";
pub const FAILOVERS_TOTAL: &str = "tollgate_failovers_total";
pub const TRANSLATIONS_TOTAL: &str = "tollgate_translations_total";
pub const TRANSLATION_SKIPPED_EVENTS_TOTAL: &str = "tollgate_translation_skipped_events_total";
pub const INSTANCE_HEALTHY: &str = "tollgate_instance_healthy";
pub const CIRCUIT_STATE: &str = "tollgate_circuit_state";
pub const PROBES_TOTAL: &str = "tollgate_health_probes_total";
pub const EVENTS_WRITE_AHEAD_SKIPPED_TOTAL: &str = "tollgate_events_write_ahead_skipped_total";
pub const SHARED_HEALTH_PUBLISHED_TOTAL: &str = "tollgate_shared_health_published_total";
pub const SHARED_HEALTH_APPLIED_TOTAL: &str = "tollgate_shared_health_applied_total";
pub const SHARED_HEALTH_DROPPED_TOTAL: &str = "tollgate_shared_health_dropped_total";
pub const SHARED_HEALTH_LAG_SECONDS: &str = "tollgate_shared_health_lag_seconds";
pub const STREAMS_ACTIVE: &str = "tollgate_streams_active";
pub const INFLIGHT_REQUESTS: &str = "tollgate_inflight_requests";
pub const INFLIGHT_BYTES: &str = "tollgate_inflight_bytes";
pub const INFLIGHT_REFUSALS_TOTAL: &str = "tollgate_inflight_refusals_total";
pub const UPSTREAM_ERRORS_SCRUBBED_TOTAL: &str = "tollgate_upstream_errors_scrubbed_total";
pub const SPOOL_FSYNC_FAILURES_TOTAL: &str = "tollgate_spool_fsync_failures_total";
pub const STREAMS_TOTAL: &str = "tollgate_streams_total";
pub const SETTLEMENTS_TOTAL: &str = "tollgate_settlements_total";
pub const RATE_LIMITED_TOTAL: &str = "tollgate_rate_limited_total";
pub const QUOTA_REJECTIONS_TOTAL: &str = "tollgate_quota_rejections_total";
pub const QUOTA_INSTANCE_SKIPS_TOTAL: &str = "tollgate_quota_instance_skips_total";
pub const QUOTA_SNAPSHOTS_TOTAL: &str = "tollgate_quota_snapshots_received_total";
pub const QUOTA_SNAPSHOTS_REGRESSED_TOTAL: &str = "tollgate_quota_snapshots_regressed_total";
pub const QUOTA_SNAPSHOT_AGE_SECONDS: &str = "tollgate_quota_snapshot_age_seconds";
pub const QUOTA_SNAPSHOT_LAG_SECONDS: &str = "tollgate_quota_snapshot_lag_seconds";
pub const QUOTA_DEGRADED: &str = "tollgate_quota_degraded";
pub const QUOTA_FEED_CAUGHT_UP: &str = "tollgate_quota_feed_caught_up";
pub const QUOTA_PENDING_TOKENS: &str = "tollgate_quota_pending_tokens";
pub const ADMIN_REQUESTS_TOTAL: &str = "tollgate_admin_requests_total";
pub const CONFIG_CHANGES_TOTAL: &str = "tollgate_config_changes_total";
pub const KAFKA_PRODUCER_RENEWALS_TOTAL: &str = "tollgate_kafka_producer_renewals_total";
pub const CONFIG_REPLAY_LEFT_OUT_TOTAL: &str = "tollgate_config_replay_left_out_total";
pub const CONFIG_VERSION: &str = "tollgate_config_version";
pub const CONFIG_APPLY_SECONDS: &str = "tollgate_config_apply_seconds";
pub const CONFIG_RESOURCES: &str = "tollgate_config_resources";

/// Latency buckets in seconds: sub-millisecond gateway work up to long completions.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Requests per meter-sidecar call: 1 up to the batch's bound.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// Installs the process-wide Prometheus recorder (with its upkeep) and returns the handle `/metrics` renders from.
pub fn install_recorder() -> Result<PrometheusHandle, BuildError> {
    let handle = tollgate_plumbing::telemetry::install_prometheus(
        &[
            (Matcher::Suffix("_seconds".to_owned()), SECONDS_BUCKETS),
            (Matcher::Full(METER_BATCH_REQUESTS.to_owned()), BATCH_BUCKETS),
        ],
        "tollgate-metrics-upkeep",
    )?;
    describe();
    Ok(handle)
}

/// Describes every gateway metric (idempotent).
pub fn describe() {
    describe_counter!(
        TRANSLATIONS_TOTAL,
        "Requests sent to an instance of the other protocol, by direction (chat_to_messages, messages_to_chat, chat_to_gemini, messages_to_gemini) \
         and result (ok: sent translated; refused: the client's request cannot be carried across, answered 400; \
         dropped_fields: sent with fields the other protocol cannot carry, named in x-tollgate-dropped-fields; \
         untranslatable_answer: the upstream's answer could not be translated, answered 502)."
    );
    describe_counter!(
        TRANSLATION_SKIPPED_EVENTS_TOTAL,
        "Upstream stream events that could not be translated for the client and were skipped (metered all the \
         same), by direction."
    );
    describe_counter!(
        COUNT_TOKENS_TOTAL,
        "Token counts answered on /v1/messages/count_tokens, by source (provider: an Anthropic instance counted; \
         estimated: the gateway's estimate; refused: an error)."
    );
    describe_histogram!(
        COUNT_TOKENS_DURATION_SECONDS,
        Unit::Seconds,
        "Time to answer a token count on /v1/messages/count_tokens."
    );
    describe_counter!(
        ADMIN_REQUESTS_TOTAL,
        "Admin API requests answered, by status and outcome (ok, not_found, or the refusal: missing_admin_key, \
         invalid_admin_key, address_not_allowed, bad_forwarded_address, read_only_key)."
    );
    describe_counter!(
        CONFIG_CHANGES_TOTAL,
        "Configuration changes read from the config topic (or accepted standalone), by kind, action and result \
         (applied, rejected)."
    );
    describe_counter!(
        KAFKA_PRODUCER_RENEWALS_TOTAL,
        "Kafka producers replaced by a new idempotent session after a failed send or a lost broker, by producer \
         (usage, config): a broker that lost the old producer's state never sees it again."
    );
    describe_counter!(
        CONFIG_REPLAY_LEFT_OUT_TOTAL,
        "Resources left out when this replica rebuilt its configuration from the config topic at start, because \
         the topic's latest values were not valid as a whole (alert on any increase: this replica differs from \
         the configuration the others applied)."
    );
    describe_gauge!(
        CONFIG_VERSION,
        "The config-topic offset of the last change this replica applied; -1 while it runs on its file."
    );
    describe_histogram!(
        CONFIG_APPLY_SECONDS,
        Unit::Seconds,
        "From a change being accepted by the admin API (on any replica) to it being live on this replica."
    );
    describe_gauge!(
        CONFIG_RESOURCES,
        Unit::Count,
        "Resources in the live configuration, by kind."
    );
    describe_histogram!(
        OVERHEAD_SECONDS,
        Unit::Seconds,
        "The gateway's own time per request, by route: to the answer's head (a stream) or last byte (a whole \
         body), less the time spent waiting on upstreams."
    );
    describe_histogram!(
        TIME_TO_FIRST_BYTE_SECONDS,
        Unit::Seconds,
        "Streams: from the request's arrival to the upstream's response head, which the client's follows at once."
    );
    describe_gauge!(
        QUOTA_REMAINING_TOKENS,
        Unit::Count,
        "Tokens left in each token limit's current window as this replica sees it (snapshot plus its own usage \
         not counted yet), by scope; refreshed every second."
    );
    describe_gauge!(
        BUDGET_REMAINING,
        "Money left in each spend budget's current period as this replica sees it (snapshot plus its own \
         reservations and spend not counted yet), in units of its currency (0.42 is 42 cents of USD), by budget; refreshed \
         every second."
    );
    describe_counter!(
        REQUESTS_TOTAL,
        "Requests answered, by route, status class and outcome."
    );
    describe_histogram!(
        REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "Wall time from request arrival to the last byte."
    );
    describe_histogram!(
        UPSTREAM_DURATION_SECONDS,
        Unit::Seconds,
        "Time for one upstream attempt, by instance."
    );
    describe_counter!(
        UPSTREAM_ATTEMPTS_TOTAL,
        "Upstream attempts, by instance and result (ok or error kind)."
    );
    describe_counter!(
        TOKENS_TOTAL,
        Unit::Count,
        "Tokens billed, by consumer class, requested model and kind (prompt, completion)."
    );
    describe_counter!(ESTIMATES_TOTAL, "Prompt estimates, by source (meter, fallback).");
    describe_histogram!(
        METER_DURATION_SECONDS,
        Unit::Seconds,
        "Time to get a prompt estimate from meter-sidecar."
    );
    describe_histogram!(
        METER_BATCH_REQUESTS,
        Unit::Count,
        "Requests whose prompt estimates shared one call to meter-sidecar (1 when the worker was idle)."
    );
    describe_counter!(
        AUTH_FAILURES_TOTAL,
        "Requests refused for a missing or invalid key, by reason."
    );
    describe_counter!(
        EVENTS_EMITTED_TOTAL,
        "Usage events acknowledged by Kafka, sent directly or drained from the spool."
    );
    describe_counter!(
        EVENTS_FAILED_TOTAL,
        "Sends of usage events Kafka did not acknowledge, by reason; the event is (or stays) in the spool."
    );
    describe_counter!(
        EVENTS_DROPPED_TOTAL,
        "Usage events lost before reaching Kafka or the spool, by reason (queue_full, shutting_down, spool_io, \
         too_large)."
    );
    describe_gauge!(EVENTS_QUEUED, "Usage events waiting for the event pump.");
    describe_counter!(
        EVENTS_SPOOLED_TOTAL,
        "Usage events written to the spool because Kafka was unreachable or slow, or the spool was not empty."
    );
    describe_counter!(
        EVENTS_UNMETERED_TOTAL,
        "Requests served without a usage event because the spool was full (spool.on_full = serve_unmetered)."
    );
    describe_gauge!(SPOOL_BYTES, Unit::Bytes, "Bytes in the spool's segment files.");
    describe_gauge!(SPOOL_SEGMENTS, "Segment files in the spool.");
    describe_counter!(
        SPOOL_DRAINED_TOTAL,
        "Spooled usage events sent from the spool and acknowledged by Kafka."
    );
    describe_counter!(
        SPOOL_CORRUPT_RECORDS_TOTAL,
        "Torn or corrupt stretches of spool segments skipped, by reason (torn, checksum, garbage)."
    );
    describe_counter!(
        FAILOVERS_TOTAL,
        "Requests moved to another target, by route, instance left and reason."
    );
    describe_gauge!(
        INSTANCE_HEALTHY,
        "1 when the instance takes traffic (probe passing, circuit closed), else 0."
    );
    describe_gauge!(
        CIRCUIT_STATE,
        "Circuit breaker state by instance: 0 closed, 1 half-open, 2 open."
    );
    describe_counter!(PROBES_TOTAL, "Active health probes, by instance and result.");
    describe_counter!(
        EVENTS_WRITE_AHEAD_SKIPPED_TOTAL,
        "Usage events spool.write_ahead could not append to the spool as they were sent (full or failing); they \
         stay in librdkafka's hands alone."
    );
    describe_counter!(
        SHARED_HEALTH_PUBLISHED_TOTAL,
        "Instance health verdicts this replica sent to the health topic, by verdict (open, cooldown, down, up)."
    );
    describe_counter!(
        SHARED_HEALTH_APPLIED_TOTAL,
        "Other replicas' health verdicts that changed an instance's health here, by verdict."
    );
    describe_counter!(
        SHARED_HEALTH_DROPPED_TOTAL,
        "Health verdicts not sent to the health topic (the publisher's queue was full, or the producer refused)."
    );
    describe_histogram!(
        SHARED_HEALTH_LAG_SECONDS,
        Unit::Seconds,
        "How long another replica's health verdict took to change an instance's health here (its age when applied)."
    );
    describe_gauge!(STREAMS_ACTIVE, "Streamed responses being relayed now.");
    describe_gauge!(
        INFLIGHT_REQUESTS,
        "Metered requests in flight on this replica (server.max_inflight_requests bounds it)."
    );
    describe_gauge!(
        INFLIGHT_BYTES,
        Unit::Bytes,
        "Bytes held for requests in flight: bodies, parse costs, buffered answers (server.max_inflight_bytes bounds it)."
    );
    describe_counter!(
        INFLIGHT_REFUSALS_TOTAL,
        "Requests refused with 503 because the in-flight budget was used up, by reason (requests, bytes)."
    );
    describe_counter!(
        UPSTREAM_ERRORS_SCRUBBED_TOTAL,
        "Upstream error bodies in which something like a provider key was redacted before the client saw it."
    );
    describe_counter!(
        SPOOL_FSYNC_FAILURES_TOTAL,
        "Failed fsyncs of a spool segment; the segment is sealed and its unsynced records written again."
    );
    describe_counter!(
        RATE_LIMITED_TOTAL,
        "Requests rejected because the consumer was over its request rate, by route."
    );
    describe_counter!(
        QUOTA_REJECTIONS_TOTAL,
        "Requests rejected because a token quota was used up, by scope kind (consumer, global)."
    );
    describe_counter!(
        QUOTA_INSTANCE_SKIPS_TOTAL,
        "Targets passed over because their instance's token quota was used up, by instance."
    );
    describe_counter!(
        QUOTA_SNAPSHOTS_TOTAL,
        "Quota snapshots taken into the cache from the quota topic."
    );
    describe_counter!(
        QUOTA_SNAPSHOTS_REGRESSED_TOTAL,
        "Quota snapshots ignored because their watermarks go back from the snapshot of the same window held \
         (a second or stale quota loop publishing)."
    );
    describe_gauge!(
        QUOTA_SNAPSHOT_AGE_SECONDS,
        Unit::Seconds,
        "Age of the newest word (snapshot or heartbeat) from billing-consumer's quota loop."
    );
    describe_histogram!(
        QUOTA_SNAPSHOT_LAG_SECONDS,
        Unit::Seconds,
        "From the newest usage event a snapshot counts being produced to the snapshot reaching this cache."
    );
    describe_gauge!(
        QUOTA_DEGRADED,
        "1 while quota snapshots are older than quota.max_snapshot_age: limits hold from the local view only."
    );
    describe_gauge!(
        QUOTA_FEED_CAUGHT_UP,
        "1 once the quota feed has read what the quota topic held when this replica started; the gateway serves \
         after that, or after quota.load_timeout (then degraded)."
    );
    describe_gauge!(
        QUOTA_PENDING_TOKENS,
        Unit::Count,
        "Tokens this replica reserved or used that no snapshot counts yet, summed over scopes."
    );
    describe_counter!(
        STREAMS_TOTAL,
        "Streamed responses finished, by outcome (ok, client_cancelled, upstream_cut)."
    );
    describe_counter!(
        SETTLEMENTS_TOTAL,
        "Admitted requests settled with one usage event, by path: settled (the answer was read) or dropped \
         (settled with what was known when its task was dropped: a forced stop or a panic)."
    );
}

/// The series one route's requests record into, each registered with the recorder the first time it is used and
/// held from then on: a request records without building a label set or looking its series up in the registry.
/// Built with the route table, so a configuration change starts a new set (for the same series).
#[derive(Debug)]
pub struct RouteMetrics {
    route: Arc<str>,
    /// `tollgate_requests_total` by status class, in [`STATUS_CLASSES`]' order.
    requests: [OnceLock<Counter>; 5],
    duration: OnceLock<Histogram>,
    overhead: OnceLock<Histogram>,
    time_to_first_byte: OnceLock<Histogram>,
    rate_limited: OnceLock<Counter>,
    /// `tollgate_tokens_total` by consumer class, then model asked for (one of the route's names): prompt and
    /// completion.
    tokens: RwLock<HashMap<String, HashMap<String, [Counter; 2]>>>,
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

impl RouteMetrics {
    pub fn new(route: Arc<str>) -> Self {
        Self {
            route,
            requests: Default::default(),
            duration: OnceLock::new(),
            overhead: OnceLock::new(),
            time_to_first_byte: OnceLock::new(),
            rate_limited: OnceLock::new(),
            tokens: RwLock::default(),
        }
    }

    /// `tollgate_tokens_total{class, model, kind}`: the prompt and the completion counters of a request of a
    /// consumer of `class` that asked for `model`.
    pub fn tokens(&self, class: &str, model: &str) -> [Counter; 2] {
        let known = self
            .tokens
            .read()
            .ok()
            .and_then(|by_class| by_class.get(class)?.get(model).cloned());
        if let Some(counters) = known {
            return counters;
        }
        let series = |kind: &'static str| metrics::counter!(TOKENS_TOTAL, "class" => class.to_owned(), "model" => model.to_owned(), "kind" => kind);
        let counters = [series("prompt"), series("completion")];
        if let Ok(mut by_class) = self.tokens.write() {
            by_class
                .entry(class.to_owned())
                .or_default()
                .insert(model.to_owned(), counters.clone());
        }
        counters
    }

    /// `tollgate_requests_total{route, status}` for an answer with `status`.
    pub fn requests(&self, status: u16) -> &Counter {
        let index = status_index(status);
        let class = STATUS_CLASSES[index];
        self.requests[index].get_or_init(
            || metrics::counter!(REQUESTS_TOTAL, "route" => self.route.to_string(), "status" => class),
        )
    }

    /// `tollgate_request_duration_seconds{route}`.
    pub fn duration(&self) -> &Histogram {
        self.duration
            .get_or_init(|| metrics::histogram!(REQUEST_DURATION_SECONDS, "route" => self.route.to_string()))
    }

    /// `tollgate_overhead_seconds{route}`.
    pub fn overhead(&self) -> &Histogram {
        self.overhead
            .get_or_init(|| metrics::histogram!(OVERHEAD_SECONDS, "route" => self.route.to_string()))
    }

    /// `tollgate_time_to_first_byte_seconds{route}`.
    pub fn time_to_first_byte(&self) -> &Histogram {
        self.time_to_first_byte.get_or_init(
            || metrics::histogram!(TIME_TO_FIRST_BYTE_SECONDS, "route" => self.route.to_string()),
        )
    }

    /// `tollgate_rate_limited_total{route}`.
    pub fn rate_limited(&self) -> &Counter {
        self.rate_limited
            .get_or_init(|| metrics::counter!(RATE_LIMITED_TOTAL, "route" => self.route.to_string()))
    }
}

/// The series one instance's attempts record into, registered on first use and held (see [`RouteMetrics`]);
/// shared by every route the instance serves.
#[derive(Debug)]
pub struct InstanceMetrics {
    instance: String,
    upstream_duration: OnceLock<Histogram>,
    /// `tollgate_upstream_attempts_total` by result: `ok`, then one per [`AttemptError`].
    attempts: [OnceLock<Counter>; 5],
}

impl InstanceMetrics {
    pub fn new(instance: &str) -> Self {
        Self {
            instance: instance.to_owned(),
            upstream_duration: OnceLock::new(),
            attempts: Default::default(),
        }
    }

    /// `tollgate_upstream_duration_seconds{instance}`.
    pub fn upstream_duration(&self) -> &Histogram {
        self.upstream_duration.get_or_init(
            || metrics::histogram!(UPSTREAM_DURATION_SECONDS, "instance" => self.instance.clone()),
        )
    }

    /// `tollgate_upstream_attempts_total{instance, result}` for an attempt that ended with `error` (none: `ok`).
    pub fn attempts(&self, error: Option<AttemptError>) -> &Counter {
        let index = match error {
            None => 0,
            Some(AttemptError::Connect) => 1,
            Some(AttemptError::Timeout) => 2,
            Some(AttemptError::Status) => 3,
            Some(AttemptError::Protocol) => 4,
        };
        let result = error.map_or("ok", AttemptError::as_str);
        self.attempts[index].get_or_init(|| {
            metrics::counter!(UPSTREAM_ATTEMPTS_TOTAL, "instance" => self.instance.clone(), "result" => result)
        })
    }
}

/// The index of `status`'s class (`1xx` … `5xx`, a bounded label) in [`STATUS_CLASSES`].
fn status_index(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}
