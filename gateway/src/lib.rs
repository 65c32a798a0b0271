//! Tollgate's gateway: the OpenAI-compatible front door that authenticates, routes, forwards and meters every
//! request, and emits one usage event per request to Kafka.
//!
//! A tour, in the order a request meets them:
//! - [`app`] — the server: builds the state, mounts the pipeline, stops gracefully;
//! - [`pipeline`] — the metered request path, admission to settlement (its doc numbers the steps), with
//!   [`pipeline::settle`] — the value that owns a request from admission on and emits its one usage event on
//!   every path — and [`pipeline::stream`] — the SSE tee;
//! - [`state`] — what every worker shares and what each owns;
//! - [`protocol`] — the providers' protocol facts: endpoints, upstream paths, usage shapes, the served model;
//! - [`auth`] — consumer keys, stored as SHA-256 hashes → who is billed;
//! - [`inflight`] — the replica's budget of requests and bytes in flight;
//! - [`request`] — reading the body once, within its deadline, and parsing it after a cheap check of its shape;
//! - [`routing`] — model name → route → a plan of instances by priority, weight and health;
//! - [`health`], [`probe`] — circuit breakers, `Retry-After` cooldowns and active health checks, shared by all
//!   workers;
//! - [`limits`] — request-rate limits per consumer (governor), with OpenAI's `x-ratelimit-*` figures;
//! - [`meter`] — prompt estimates from meter-sidecar, with an in-process fallback;
//! - [`quota`] — token quotas per consumer, model and instance: admission against billing-consumer's snapshots
//!   (kept in a moka cache by [`quota::feed`]) plus this replica's own usage not counted yet;
//! - [`upstream`] — one attempt against one instance, and which failures are safe to retry; [`scrub`] — what
//!   of a provider's error body a client may see;
//! - [`models`] — `GET /v1/models`; [`ready`] — `GET /readyz`, whether the Kafka paths work;
//! - [`sse`] (framing) and [`stream_usage`] (what a stream consumed) — what the stream tee reads along;
//! - [`events`] — usage events off the request path and into Kafka, or into [`spool`] — segment files on local
//!   disk, drained to Kafka in order — while Kafka does not acknowledge them;
//! - [`config`], [`error`], [`metrics`] — the TOML file, the one error type, the exported metrics;
//!   [`kafka`] — the settings of every Kafka client, producers that renew themselves, the broker canary;
//! - [`admin`] — the admin API on its own listener: allowlist, admin keys and roles, resources to read and write;
//! - [`live`] — the live configuration: changes from the config topic, validated whole and swapped in atomically;
//! - [`clock`] — the time quota windows and event timestamps are read from (tests inject their own).

pub mod admin;
pub mod app;
pub mod auth;
pub mod clock;
pub mod config;
pub mod error;
pub mod events;
pub mod health;
pub mod inflight;
pub mod kafka;
pub mod limits;
pub mod live;
pub mod meter;
pub mod metrics;
pub mod models;
pub mod pipeline;
pub mod probe;
pub mod protocol;
pub mod quota;
pub mod ready;
pub mod request;
pub mod routing;
pub mod scrape;
pub mod scrub;
pub mod spool;
pub mod sse;
pub mod state;
pub mod stream_usage;
pub mod upstream;

pub use app::Gateway;
pub use config::Config;
