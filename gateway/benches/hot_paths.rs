//! The gateway's per-request work outside the network: SSE framing and stream metering, request parsing and
//! the upstream body, route planning, quota admission, usage event encoding, key checks, and the translation
//! between OpenAI and Anthropic requests, answers and streams.
//!
//! `cargo bench -p tollgate-gateway --bench hot_paths`; add `-- <filter>` (e.g. `-- sse/`) to run one group.

// Bench code: a setup that does not hold is a broken bench, and failing loudly is what it should do.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tollgate_gateway::admission::auth::{KeyStore, hash_key};
use tollgate_gateway::admission::quota::Quotas;
use tollgate_gateway::clock::{Clock, SystemClock};
use tollgate_gateway::config::Config;
use tollgate_gateway::metering::sse::{EventSplitter, parse_event};
use tollgate_gateway::metering::stream_usage::StreamMeter;
use tollgate_gateway::protocol::request::ApiRequest;
use tollgate_gateway::protocol::translate::{
    AnthropicToOpenAiStream, GeminiToOpenAiStream, OpenAiToAnthropicStream, anthropic_to_openai_answer,
    anthropic_to_openai_request, gemini_to_openai_answer, openai_object_to_gemini,
    openai_to_anthropic_answer, openai_to_anthropic_request,
};
use tollgate_gateway::protocol::{Endpoint, Provider};
use tollgate_gateway::routing::{HashKeys, Router, health_of};
use tollgate_schemas::quota::{LimitStrategy, QuotaSnapshot, Watermark, Window};
use tollgate_schemas::usage::AttemptError;
use tollgate_schemas::{Attempt, CloudEvent, EstimateSource, Outcome, UsageRecorded, UsageSource};
use uuid::Uuid;

/// The streaming tee's limit on one SSE event (`MAX_EVENT_BYTES` in `pipeline/stream.rs`, private there).
const MAX_EVENT_BYTES: usize = 4 << 20;
/// This replica's CloudEvents `source`, as events and quota watermarks carry it.
const SOURCE: &str = "tollgate-gateway/gw-bench-1";

/// The sections every configuration needs; the instances point nowhere, nothing here connects.
const CONFIG_HEAD: &str = r#"
[meter]
url = "http://127.0.0.1:1"
[kafka]
brokers = "127.0.0.1:1"
"#;

fn config(body: &str) -> Config {
    Config::from_toml_with_env(&format!("{CONFIG_HEAD}{body}"), |_| None).unwrap()
}

// -----------------------------------------------------------------------------------------------------------
// 1. SSE framing and stream metering
// -----------------------------------------------------------------------------------------------------------

/// A streamed chat completion as OpenAI sends it with `stream_options.include_usage`: the role chunk, 40
/// content chunks of a word or two each, the finish chunk, the usage-only chunk and `[DONE]` (about 13 KB).
fn openai_stream() -> Vec<u8> {
    const WORDS: [&str; 8] = [
        " The", " gateway", " meters", " every", " request", ";", " prices", " apply",
    ];
    let chunk = |choices: &str| {
        format!(
            "data: {{\"id\":\"chatcmpl-BlR8lS6zV0o7KfLxX2cXjgwSdB3wq\",\"object\":\"chat.completion.chunk\",\
             \"created\":1750771200,\"model\":\"gpt-4o-mini-2024-07-18\",\"service_tier\":\"default\",\
             \"system_fingerprint\":\"fp_34a54ae93c\",\"choices\":[{choices}],\"usage\":null}}\n\n"
        )
    };
    let mut stream = chunk(
        r#"{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}"#,
    );
    for n in 0..40 {
        let word = WORDS[n % WORDS.len()];
        let word = if n % 5 == 4 {
            format!("{word} {n}")
        } else {
            word.to_owned()
        };
        stream.push_str(&chunk(&format!(
            r#"{{"index":0,"delta":{{"content":"{word}"}},"logprobs":null,"finish_reason":null}}"#
        )));
    }
    stream.push_str(&chunk(
        r#"{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}"#,
    ));
    stream.push_str(concat!(
        "data: {\"id\":\"chatcmpl-BlR8lS6zV0o7KfLxX2cXjgwSdB3wq\",\"object\":\"chat.completion.chunk\",",
        "\"created\":1750771200,\"model\":\"gpt-4o-mini-2024-07-18\",\"service_tier\":\"default\",",
        "\"system_fingerprint\":\"fp_34a54ae93c\",\"choices\":[],\"usage\":{\"prompt_tokens\":812,",
        "\"completion_tokens\":49,\"total_tokens\":861,\"prompt_tokens_details\":{\"cached_tokens\":768,",
        "\"audio_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":0,\"audio_tokens\":0,",
        "\"accepted_prediction_tokens\":0,\"rejected_prediction_tokens\":0}}}\n\n",
    ));
    stream.push_str("data: [DONE]\n\n");
    stream.into_bytes()
}

/// Frames and parses every event of `pieces`, as the tee does; with `meter`, also reads each into a
/// [`StreamMeter`]. Returns the number of events and the meter.
fn tee(pieces: &[Bytes], meter: bool) -> (usize, Option<StreamMeter>) {
    let mut splitter = EventSplitter::new(MAX_EVENT_BYTES);
    let mut stream = meter.then(|| StreamMeter::new(Provider::Openai, Endpoint::ChatCompletions));
    let mut events = 0;
    for piece in pieces {
        for raw in splitter.push(piece).unwrap() {
            let event = parse_event(&raw);
            if let Some(stream) = &mut stream {
                stream.observe(&event);
            }
            black_box(&event);
            events += 1;
        }
    }
    if let Some(raw) = splitter.finish() {
        let event = parse_event(&raw);
        if let Some(stream) = &mut stream {
            stream.observe(&event);
        }
        events += 1;
    }
    (events, stream)
}

/// The whole stream fed in pieces of 7 bytes (worst case: many pushes per event), 61 bytes (a few per event)
/// and 1 KB (several events per push); bytes/s of upstream stream.
fn sse(c: &mut Criterion) {
    let stream = openai_stream();
    let mut group = c.benchmark_group("sse");
    group.throughput(Throughput::Bytes(stream.len() as u64));
    for piece in [7, 61, 1024] {
        let pieces: Vec<Bytes> = stream.chunks(piece).map(Bytes::copy_from_slice).collect();
        // The stream is what it claims to be: 44 events, the provider's usage and `[DONE]` seen.
        let (events, meter) = tee(&pieces, true);
        let meter = meter.unwrap();
        assert_eq!(events, 44);
        assert_eq!(meter.provider_usage().map(|u| u.total_tokens), Some(861));
        assert!(meter.saw_done());
        group.bench_function(BenchmarkId::new("split_parse", piece), |b| {
            b.iter(|| tee(black_box(&pieces), false))
        });
        group.bench_function(BenchmarkId::new("split_parse_meter", piece), |b| {
            b.iter(|| tee(black_box(&pieces), true))
        });
    }
    group.finish();
}

// -----------------------------------------------------------------------------------------------------------
// 2. Request parsing and the upstream body
// -----------------------------------------------------------------------------------------------------------

/// A typical chat completion: a system prompt, a few turns, one tool, sampling parameters; streamed, with
/// `stream_options` as the client sends it (about 1.6 KB).
fn chat_body(stream_options: &str) -> Bytes {
    let body = format!(
        r#"{{"model":"gpt-4o-mini","messages":[
{{"role":"system","content":"You are the support assistant of Tollgate, an LLM API gateway. Answer in at most three sentences, cite the section of the documentation you rely on, e.g. \"Configuration > routes\", and never invent a price. If the question is about billing, say which event fields the answer comes from. Prices are per million tokens and change only by a new price version, never retroactively."}},
{{"role":"user","content":"How do I split traffic 80/20 between two OpenAI deployments, and fail over to Azure when both are down?"}},
{{"role":"assistant","content":"Give the route two targets of the same priority with weights 80 and 20, and a third target with a lower priority pointing at the Azure instance (Configuration > routes). The gateway tries the lower priority only when no target of the higher one is available (Routing > failover)."}},
{{"role":"user","content":"And does a request that failed over get billed twice? We saw two attempts in one usage event yesterday, one with a 503 and one with a 200, and finance wants to know which instance the tokens are charged to."}}
],"tools":[{{"type":"function","function":{{"name":"search_docs","description":"Full-text search over the Tollgate documentation; returns the best matching sections.","parameters":{{"type":"object","properties":{{"query":{{"type":"string","description":"What to look for"}},"limit":{{"type":"integer","minimum":1,"maximum":10}}}},"required":["query"]}}}}}}],
"tool_choice":"auto","temperature":0.2,"top_p":1,"max_completion_tokens":512,"user":"support-widget","stream":true{stream_options}}}"#
    );
    Bytes::from(body)
}

fn request(c: &mut Criterion) {
    let plain = chat_body("");
    let with_usage = chat_body(r#","stream_options":{"include_usage":true}"#);
    let mut group = c.benchmark_group("request");
    let parsed_plain = ApiRequest::parse(Endpoint::ChatCompletions, plain.clone()).unwrap();
    let with_usage = ApiRequest::parse(Endpoint::ChatCompletions, with_usage).unwrap();
    assert!(!parsed_plain.client_wants_usage() && with_usage.client_wants_usage());
    // The client asked for usage itself and the instance serves the name asked for: the client's bytes go as
    // sent (a reference-counted clone; no throughput, nothing is read).
    group.bench_function("upstream_body/as_sent", |b| {
        b.iter(|| black_box(&with_usage).upstream_body(None, true).unwrap())
    });
    // Body bytes per second from here on.
    group.throughput(Throughput::Bytes(plain.len() as u64));
    group.bench_function("parse_chat", |b| {
        b.iter(|| ApiRequest::parse(Endpoint::ChatCompletions, black_box(plain.clone())).unwrap())
    });
    let plain = parsed_plain;
    // Metered and streamed without usage: `stream_options.include_usage` is added, the body re-serialized.
    group.bench_function("upstream_body/ask_usage", |b| {
        b.iter(|| black_box(&plain).upstream_body(None, true).unwrap())
    });
    // The instance has its own model name: `model` is replaced, the body re-serialized.
    group.bench_function("upstream_body/model_override", |b| {
        b.iter(|| {
            black_box(&with_usage)
                .upstream_body(Some("gpt-4o-mini-2024-07-18"), true)
                .unwrap()
        })
    });
    group.finish();
}

// -----------------------------------------------------------------------------------------------------------
// 3. Routing
// -----------------------------------------------------------------------------------------------------------

/// Three instances; each route has two weighted targets at priority 1 (80/20) and a fallback at priority 0.
const ROUTES: &str = r#"
[[instances]]
name = "openai-east"
endpoint = "http://127.0.0.1:2/v1"
[[instances]]
name = "openai-west"
endpoint = "http://127.0.0.1:3/v1"
[[instances]]
name = "azure-fallback"
endpoint = "http://127.0.0.1:4/v1"
model = "gpt-4o-mini-2024-07-18"
[[routes]]
name = "gpt-4o"
models = ["gpt-4o", "gpt-4o-2024-08-06"]
targets = [{ instance = "openai-east" }, { instance = "openai-west" }]
[[routes]]
name = "mini"
models = ["gpt-4o-mini", "gpt-4o-mini-2024-07-18"]
targets = [
  { instance = "openai-east", priority = 1, weight = 80 },
  { instance = "openai-west", priority = 1, weight = 20 },
  { instance = "azure-fallback", priority = 0, weight = 1 },
]
[[routes]]
name = "mini-sticky"
models = ["gpt-4o-mini-sticky"]
balancer = "consistent_hash"
hash_on = "consumer"
targets = [
  { instance = "openai-east", priority = 1, weight = 80 },
  { instance = "openai-west", priority = 1, weight = 20 },
  { instance = "azure-fallback", priority = 0, weight = 1 },
]
"#;

/// `router.route(path, model)` then `plan(...)`, as the proxy does per request.
fn route_and_plan(router: &Router, model: &str, consumer: &str) -> Vec<usize> {
    let route = router.route("/v1/chat/completions", model).unwrap();
    route.plan(
        HashKeys {
            consumer: Some(consumer),
            header: None,
        },
        Instant::now(),
    )
}

fn routing(c: &mut Criterion) {
    let config = config(ROUTES);
    let router = Router::new(&config, &health_of(&config));
    assert_eq!(route_and_plan(&router, "gpt-4o-mini", "team-a"), [0, 1, 2]);
    // The same routes with `openai-east` cooling down for an hour after a 429 with `Retry-After`.
    let degraded_health = health_of(&config);
    degraded_health[0].record_failure(Instant::now(), Some(Duration::from_secs(3600)));
    let degraded = Router::new(&config, &degraded_health);
    assert_eq!(route_and_plan(&degraded, "gpt-4o-mini", "team-a"), [1, 2]);
    let consumers: Vec<String> = (0..1000).map(|n| format!("consumer-{n:04}")).collect();

    let mut group = c.benchmark_group("routing");
    group.bench_function("route_plan/weighted_round_robin", |b| {
        b.iter(|| route_and_plan(&router, black_box("gpt-4o-mini"), "team-a"))
    });
    group.bench_function("route_plan/weighted_round_robin_primary_cooling_down", |b| {
        b.iter(|| route_and_plan(&degraded, black_box("gpt-4o-mini"), "team-a"))
    });
    // A different consumer each request: the hash and the ring lookup are not cached.
    let mut n = 0;
    group.bench_function("route_plan/consistent_hash_consumer", |b| {
        b.iter(|| {
            n = (n + 1) % consumers.len();
            route_and_plan(&router, black_box("gpt-4o-mini-sticky"), &consumers[n])
        })
    });
    group.bench_function("route_miss", |b| {
        b.iter(|| router.route("/v1/chat/completions", black_box("gpt-5-unrouted")))
    });
    group.finish();
}

// -----------------------------------------------------------------------------------------------------------
// 4. Quota admission
// -----------------------------------------------------------------------------------------------------------

/// team-a has its own hourly limit on gpt-4o-mini; all consumers together have a global one on it. The limits
/// are far above what a bench consumes, so every admission succeeds.
const QUOTAS: &str = r#"
[[instances]]
name = "openai"
endpoint = "http://127.0.0.1:2/v1"
[[routes]]
name = "mini"
models = ["gpt-4o-mini"]
targets = [{ instance = "openai" }]
[[token_limits]]
models = ["gpt-4o-mini"]
limit = 1000000000000000
time_window = "1h"
[[consumers]]
name = "team-a"
keys = [{ id = "a1", sha256 = "0000000000000000000000000000000000000000000000000000000000000001" }]
token_limits = [{ models = ["gpt-4o-mini"], limit = 1000000000000000, time_window = "1h" }]
"#;

/// Settled requests between two quota snapshots in `quota/admit_settle`.
const SNAPSHOT_EVERY: u64 = 100;

fn quota(c: &mut Criterion) {
    let config = config(QUOTAS);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let quotas = Quotas::new(&config, Arc::from(SOURCE), clock.clone());
    let demand = quotas.demand(812, Some(512), &["gpt-4o-mini"]);
    let (_, figures) = quotas.admit("team-a", "gpt-4o-mini", demand.clone()).unwrap();
    assert!(figures.is_some(), "both scopes apply");
    assert_eq!(
        quotas.pending_tokens(),
        0,
        "a dropped ticket gives its reservation back"
    );
    // The two scopes' snapshot keys, to feed snapshots that cover settled usage.
    let keys: Vec<String> = config
        .consumers
        .iter()
        .flat_map(|c| &c.token_limits)
        .chain(&config.token_limits)
        .map(|l| l.key.clone())
        .collect();
    assert_eq!(keys.len(), 2);

    let mut group = c.benchmark_group("quota");
    // Admission then the ticket dropped unsettled: the request failed before any upstream took it.
    group.bench_function("admit_release", |b| {
        b.iter(|| {
            quotas
                .admit(black_box("team-a"), "gpt-4o-mini", demand.clone())
                .unwrap()
        })
    });
    // Admission then settlement with the actual usage. Settled usage stays in this replica's books until a
    // snapshot covers it; between measured runs of SNAPSHOT_EVERY requests, their events are "delivered" and
    // a snapshot covering them is accepted, so the books hold 0..SNAPSHOT_EVERY uncovered requests, as with a
    // snapshot lag of a fraction of a second at a few hundred requests per second.
    let mut offset: i64 = 0;
    group.bench_function("admit_settle", |b| {
        b.iter_custom(|iters| {
            let mut measured = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let run = left.min(SNAPSHOT_EVERY);
                let mut settled = Vec::with_capacity(run as usize);
                let start = Instant::now();
                for _ in 0..run {
                    let (ticket, _) = quotas
                        .admit(black_box("team-a"), "gpt-4o-mini", demand.clone())
                        .unwrap();
                    settled.push(ticket.settle(790, 49, clock.now_ms()));
                }
                measured += start.elapsed();
                left -= run;
                for local in settled.into_iter().flatten() {
                    offset += 1;
                    local.delivered(0, offset);
                }
                let now = clock.now_ms();
                let window = Window::containing(now, 3_600_000);
                for key in &keys {
                    quotas.accept(QuotaSnapshot {
                        scope: key.clone(),
                        limit: 0,
                        strategy: LimitStrategy::TotalTokens,
                        currency: None,
                        window_start_ms: window.start_ms,
                        window_end_ms: window.end_ms,
                        used: 0,
                        events: 0,
                        watermarks: vec![Watermark {
                            gateway: SOURCE.to_owned(),
                            partition: 0,
                            offset,
                        }],
                        newest_event_ms: now,
                        published_at_ms: now,
                    });
                }
            }
            measured
        })
    });
    group.finish();
    assert_eq!(quotas.pending_tokens(), 0, "every settled request was covered");
}

// -----------------------------------------------------------------------------------------------------------
// 5. Usage event encoding
// -----------------------------------------------------------------------------------------------------------

/// The event of a streamed request that failed over once, as `record.rs` builds it (about 950 bytes of JSON).
fn usage_event(request_id: Uuid, finished_at_ms: u64) -> CloudEvent<UsageRecorded> {
    let data = UsageRecorded {
        request_id: request_id.to_string(),
        consumer_id: "team-a".to_owned(),
        team: None,
        organization: None,
        key_id: "a1-2025-06".to_owned(),
        endpoint: "/v1/chat/completions".to_owned(),
        route: "mini".to_owned(),
        model_requested: "gpt-4o-mini".to_owned(),
        model_served: "gpt-4o-mini".to_owned(),
        provider: "openai".to_owned(),
        instance: "openai-west".to_owned(),
        attempts: vec![
            Attempt {
                instance: "openai-east".to_owned(),
                status: Some(503),
                error: Some(AttemptError::Status),
                latency_ms: 212,
            },
            Attempt {
                instance: "openai-west".to_owned(),
                status: Some(200),
                error: None,
                latency_ms: 388,
            },
        ],
        stream: true,
        outcome: Outcome::Ok,
        http_status: 200,
        prompt_tokens_estimated: 806,
        prompt_estimate_source: EstimateSource::Meter,
        prompt_tokens: 812,
        completion_tokens: 49,
        total_tokens: 861,
        cached_prompt_tokens: Some(768),
        reasoning_tokens: None,
        cache_write_5m_tokens: None,
        cache_write_1h_tokens: None,
        usage_source: UsageSource::Provider,
        latency_ms: 1_904,
        ttfb_ms: Some(601),
        started_at_ms: finished_at_ms - 1_904,
        finished_at_ms,
    };
    let time = i64::try_from(finished_at_ms)
        .ok()
        .and_then(DateTime::from_timestamp_millis)
        .unwrap_or_else(Utc::now);
    CloudEvent::with_id(request_id, SOURCE, "team-a", time, data)
}

fn event(c: &mut Criterion) {
    let request_id = Uuid::now_v7();
    let finished_at_ms = 1_750_771_201_904;
    let encoded = serde_json::to_vec(&usage_event(request_id, finished_at_ms)).unwrap();
    let mut group = c.benchmark_group("event");
    group.bench_function("build", |b| {
        b.iter(|| usage_event(black_box(request_id), finished_at_ms))
    });
    // Encoded bytes per second from here on.
    group.throughput(Throughput::Bytes(encoded.len() as u64));
    let built = usage_event(request_id, finished_at_ms);
    group.bench_function("to_vec", |b| {
        b.iter(|| serde_json::to_vec(black_box(&built)).unwrap())
    });
    group.bench_function("build_to_vec", |b| {
        b.iter(|| serde_json::to_vec(&usage_event(black_box(request_id), finished_at_ms)).unwrap())
    });
    group.finish();
}

// -----------------------------------------------------------------------------------------------------------
// 6. Key check
// -----------------------------------------------------------------------------------------------------------

/// A consumer key as the admin API makes them: `tg-` and 32 bytes in unpadded base64url (46 characters).
fn key(n: u32) -> String {
    let bytes = hash_key(format!("bench key {n}").as_bytes());
    format!(
        "tg-{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

fn auth(c: &mut Criterion) {
    const CONSUMERS: u32 = 1000;
    let mut toml = String::new();
    for n in 0..CONSUMERS {
        toml.push_str(&format!(
            "[[consumers]]\nname = \"consumer-{n:04}\"\nkeys = [{{ id = \"k{n:04}\", sha256 = \"{}\" }}]\n",
            hex::encode(hash_key(key(n).as_bytes()))
        ));
    }
    let config = config(&toml);
    assert_eq!(config.consumers.len(), CONSUMERS as usize);
    let store = KeyStore::new(&config.consumers);
    let headers: Vec<Vec<u8>> = (0..CONSUMERS)
        .map(|n| format!("Bearer {}", key(n)).into_bytes())
        .collect();
    let unknown = format!("Bearer {}", key(CONSUMERS)).into_bytes();
    assert_eq!(
        &*store.authenticate(Some(&headers[7])).unwrap().consumer,
        "consumer-0007"
    );
    assert!(store.authenticate(Some(&unknown)).is_err());

    let mut group = c.benchmark_group("auth");
    let mut n = 0;
    group.bench_function("authenticate_1000_consumers/hit", |b| {
        b.iter(|| {
            n = (n + 1) % headers.len();
            store.authenticate(Some(black_box(&headers[n]))).unwrap()
        })
    });
    group.bench_function("authenticate_1000_consumers/unknown_key", |b| {
        b.iter(|| store.authenticate(Some(black_box(&unknown))).is_err())
    });
    group.finish();
}

// -----------------------------------------------------------------------------------------------------------
// 7. Protocol translation
// -----------------------------------------------------------------------------------------------------------

/// A whole Anthropic answer: a paragraph of text and a tool call, with cache usage (about 1 KB).
fn anthropic_answer() -> Vec<u8> {
    let text = "Failover does not bill twice: the usage event lists both attempts, but tokens are charged \
                only for the attempt that answered (Billing > attempts). The 503 attempt carries no usage; \
                the 200 attempt carries the provider's figures and names the instance that served it, which \
                is the one finance should attribute the tokens to. "
        .repeat(2);
    serde_json::to_vec(&serde_json::json!({
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": [
            {"type": "text", "text": text},
            {"type": "tool_use", "id": "toolu_01A", "name": "search_docs",
             "input": {"query": "billing attempts failover", "limit": 3}},
        ],
        "stop_reason": "tool_use", "stop_sequence": null,
        "usage": {"input_tokens": 512, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 768,
                  "output_tokens": 96},
    }))
    .unwrap()
}

/// The same answer streamed by Anthropic: 40 text deltas, 12 argument fragments, pings; (event, data) pairs.
fn anthropic_events() -> Vec<(&'static str, Vec<u8>)> {
    use serde_json::json;
    let event = |name: &'static str, data: serde_json::Value| (name, serde_json::to_vec(&data).unwrap());
    let mut events = vec![event(
        "message_start",
        json!({"type": "message_start", "message": {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant",
        "model": "claude-sonnet-4-5-20250929", "content": [], "stop_reason": null, "stop_sequence": null,
        "usage": {"input_tokens": 512, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 768,
                  "output_tokens": 1}}}),
    )];
    events.push(event(
        "content_block_start",
        json!({"type": "content_block_start", "index": 0,
        "content_block": {"type": "text", "text": ""}}),
    ));
    for n in 0..40 {
        events.push(event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": format!(" word{n} and more")}}),
        ));
        if n % 10 == 0 {
            events.push(event("ping", json!({"type": "ping"})));
        }
    }
    events.push(event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    events.push(event(
        "content_block_start",
        json!({"type": "content_block_start", "index": 1,
        "content_block": {"type": "tool_use", "id": "toolu_01A", "name": "search_docs", "input": {}}}),
    ));
    let arguments = r#"{"query": "billing attempts failover", "limit": 3}"#;
    for piece in arguments.as_bytes().chunks(5) {
        events.push(event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": std::str::from_utf8(piece).unwrap()}}),
        ));
    }
    events.push(event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 1}),
    ));
    events.push(event(
        "message_delta",
        json!({"type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 96}}),
    ));
    events.push(event("message_stop", json!({"type": "message_stop"})));
    events
}

/// A Gemini stream of about the same answer as [`anthropic_events`]: 60 text pieces, a function call, usage
/// growing on each event and final on the last.
fn gemini_events() -> Vec<Vec<u8>> {
    let mut events: Vec<Vec<u8>> = (0..60)
        .map(|n| {
            serde_json::to_vec(&serde_json::json!({
                "candidates": [{"content": {"role": "model", "parts": [{"text": format!(" word{n} and more")}]}, "index": 0}],
                "usageMetadata": {"promptTokenCount": 1280, "candidatesTokenCount": n + 1, "totalTokenCount": 1281 + n},
                "modelVersion": "gemini-2.5-flash", "responseId": "r-bench"
            }))
            .unwrap()
        })
        .collect();
    events.push(
        serde_json::to_vec(&serde_json::json!({
            "candidates": [{"content": {"role": "model", "parts": [{"functionCall": {"name": "search_docs",
                "args": {"query": "billing attempts failover", "limit": 3}}}]}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 1280, "candidatesTokenCount": 96, "thoughtsTokenCount": 40,
                "totalTokenCount": 1416},
            "modelVersion": "gemini-2.5-flash", "responseId": "r-bench"
        }))
        .unwrap(),
    );
    events
}

/// Request translation each way on the chat body of group 2 (as parsed JSON), whole answers each way, and
/// streams each way per upstream event.
fn translate(c: &mut Criterion) {
    let chat: serde_json::Value = serde_json::from_slice(&chat_body("")).unwrap();
    let chat_bytes = serde_json::to_vec(&chat).unwrap().len() as u64;
    let messages = openai_to_anthropic_request(&chat, 4096).unwrap().body;
    assert_eq!(
        anthropic_to_openai_request(&messages).unwrap().body["messages"]
            .as_array()
            .unwrap()
            .len(),
        4
    );

    let anthropic = anthropic_answer();
    let openai = serde_json::to_vec(
        &anthropic_to_openai_answer(&anthropic, 1_750_771_200)
            .unwrap()
            .body,
    )
    .unwrap();
    assert!(openai_to_anthropic_answer(&openai).unwrap().usage.is_some());

    let events = anthropic_events();
    let mut to_openai = AnthropicToOpenAiStream::new(true, 1_750_771_200);
    let openai_events: Vec<Vec<u8>> = events
        .iter()
        .flat_map(|(name, data)| {
            let frames = to_openai.push(Some(name), data);
            String::from_utf8(frames)
                .unwrap()
                .split_terminator("\n\n")
                .map(|frame| frame.strip_prefix("data: ").unwrap().as_bytes().to_vec())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(to_openai.malformed_events(), 0);
    assert_eq!(to_openai.usage().unwrap().prompt_tokens, 1280);

    let mut group = c.benchmark_group("translate");
    group.throughput(Throughput::Bytes(chat_bytes));
    group.bench_function("request/openai_to_anthropic", |b| {
        b.iter(|| openai_to_anthropic_request(black_box(&chat), 4096).unwrap())
    });
    group.bench_function("request/anthropic_to_openai", |b| {
        b.iter(|| anthropic_to_openai_request(black_box(&messages)).unwrap())
    });
    group.throughput(Throughput::Bytes(anthropic.len() as u64));
    group.bench_function("answer/anthropic_to_openai", |b| {
        b.iter(|| anthropic_to_openai_answer(black_box(&anthropic), 1_750_771_200).unwrap())
    });
    group.throughput(Throughput::Bytes(openai.len() as u64));
    group.bench_function("answer/openai_to_anthropic", |b| {
        b.iter(|| openai_to_anthropic_answer(black_box(&openai)).unwrap())
    });
    // Upstream events per second.
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("stream/anthropic_to_openai", |b| {
        b.iter(|| {
            let mut stream = AnthropicToOpenAiStream::new(true, 1_750_771_200);
            let mut bytes = 0;
            for (name, data) in black_box(&events) {
                bytes += stream.push(Some(name), data).len();
            }
            bytes
        })
    });
    group.throughput(Throughput::Elements(openai_events.len() as u64));
    group.bench_function("stream/openai_to_anthropic", |b| {
        b.iter(|| {
            let mut stream = OpenAiToAnthropicStream::new();
            let mut bytes = 0;
            for data in black_box(&openai_events) {
                bytes += stream.push(None, data).len();
            }
            bytes
        })
    });
    let chat_object = chat.as_object().unwrap();
    assert!(openai_object_to_gemini(chat_object).is_ok());
    group.throughput(Throughput::Bytes(chat_bytes));
    group.bench_function("request/openai_to_gemini", |b| {
        b.iter(|| openai_object_to_gemini(black_box(chat_object)).unwrap())
    });
    let gemini_events = gemini_events();
    let gemini_answer = serde_json::to_vec(&serde_json::json!({
        "candidates": [{"content": {"role": "model", "parts": [
            {"text": (0..60).map(|n| format!(" word{n} and more")).collect::<String>()},
            {"functionCall": {"name": "search_docs", "args": {"query": "billing attempts failover", "limit": 3}}}]},
            "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 1280, "candidatesTokenCount": 96, "totalTokenCount": 1376},
        "modelVersion": "gemini-2.5-flash"
    }))
    .unwrap();
    assert!(
        gemini_to_openai_answer(&gemini_answer, "gemini-2.5-flash", 0)
            .unwrap()
            .usage
            .is_some()
    );
    group.throughput(Throughput::Bytes(gemini_answer.len() as u64));
    group.bench_function("answer/gemini_to_openai", |b| {
        b.iter(|| {
            gemini_to_openai_answer(black_box(&gemini_answer), "gemini-2.5-flash", 1_750_771_200).unwrap()
        })
    });
    group.throughput(Throughput::Elements(gemini_events.len() as u64));
    group.bench_function("stream/gemini_to_openai", |b| {
        b.iter(|| {
            let mut stream = GeminiToOpenAiStream::new(true, 1_750_771_200, "gemini-2.5-flash");
            let mut bytes = 0;
            for data in black_box(&gemini_events) {
                bytes += stream.push(None, data).len();
            }
            bytes + stream.finish().len()
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    // Short runs, as in meter-sidecar's bench: orders of magnitude on a shared 2-core machine, not 1 %
    // changes.
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = sse, request, routing, quota, event, auth, translate
}
criterion_main!(benches);
