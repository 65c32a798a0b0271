//! Tollgate's gateway: the OpenAI-compatible front door that authenticates, routes, forwards and meters every
//! request, and emits one usage event per request to Kafka.
//!
//! A tour, folder by folder in the order a request meets them:
//! - [`http`] — the HTTP surface: [`http::server`] builds the state, mounts the pipeline and stops gracefully;
//!   [`http::state`] is what every worker shares and what each owns; [`http::inflight`] the replica's budget
//!   of requests and bytes in flight; [`http::models`] serves `GET /v1/models`, [`http::ready`] `GET /readyz`
//!   (whether the Kafka paths work) and [`http::scrape`] `GET /metrics` on a listener of its own;
//! - [`pipeline`] — the metered request path, admission to settlement (its doc numbers the steps), with
//!   [`pipeline::settle`] — the value that owns a request from admission on and emits its one usage event on
//!   every path — and [`pipeline::stream`] — the SSE tee;
//! - [`admission`] — [`admission::auth`]: consumer keys, stored as SHA-256 hashes → who is billed;
//!   [`admission::limits`]: request-rate limits per consumer (governor), with OpenAI's `x-ratelimit-*`
//!   figures; [`admission::quota`]: token quotas per consumer, model and instance — admission against
//!   billing-consumer's snapshots (kept in a moka cache by [`admission::quota::feed`]) plus this replica's own
//!   usage not counted yet;
//! - [`protocol`] — the providers' protocol facts: endpoints, upstream paths, usage shapes, the served model,
//!   and [`protocol::request`] — reading the body once, within its deadline, and parsing it after a cheap check
//!   of its shape;
//! - [`routing`] — model name → route → a plan of instances by priority, weight and health, with
//!   [`routing::health`] and [`routing::probe`] — circuit breakers, `Retry-After` cooldowns and active health
//!   checks, shared by all workers — [`routing::upstream`] — one attempt against one instance, and which
//!   failures are safe to retry — and [`routing::scrub`] — what of a provider's error body a client may see;
//! - [`metering`] — [`metering::sidecar`]: prompt estimates from meter-sidecar, with an in-process fallback;
//!   [`metering::sse`] (framing) and [`metering::stream_usage`] (what a stream consumed) — what the stream tee
//!   reads along;
//! - [`events`] — usage events off the request path and into Kafka, or into [`events::spool`] — segment files
//!   on local disk, drained to Kafka in order — while Kafka does not acknowledge them;
//! - [`live`] — the live configuration: changes from the config topic, validated whole and swapped in atomically;
//! - [`admin`] — the admin API on its own listener: allowlist, admin keys and roles, resources to read and write;
//! - [`config`], [`error`], [`metrics`] — the TOML file, the one error type, the exported metrics;
//!   [`kafka`] — the settings of every Kafka client, producers that renew themselves, the broker canary;
//!   [`clock`] — the time quota windows and event timestamps are read from (tests inject their own).

pub mod admin;
pub mod admission;
pub mod clock;
pub mod config;
pub mod error;
pub mod events;
pub mod http;
pub mod kafka;
pub mod live;
pub mod metering;
pub mod metrics;
pub mod pipeline;
pub mod protocol;
pub mod routing;

pub use config::Config;
pub use http::server::Gateway;
