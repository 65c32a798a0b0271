//! The HTTP surface: the server that builds the shared state, mounts the request pipeline on every metered
//! endpoint and stops gracefully ([`server`]); the state every worker shares and the clients each owns
//! ([`state`]); the replica's budget of requests and bytes in flight, taken on arrival ([`inflight`]); and the
//! endpoints that are not metered — `GET /v1/models` ([`models`]), the usage API `GET /v1/usage` ([`usage`]; its
//! admin form too), `GET /readyz` ([`ready`]), and `GET /metrics` with `/healthz`, on a listener of their own when
//! configured ([`scrape`]). The metered path itself is
//! [`crate::pipeline`]; the admin API has its own listener ([`crate::admin`]).

pub mod inflight;
pub mod models;
pub mod ready;
pub mod scrape;
pub mod server;
pub mod state;
pub mod usage;
