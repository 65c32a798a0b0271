//! Admission: whether a request may go on, decided before anything is sent upstream. Who is asking — the
//! consumer key, stored as a SHA-256 hash → a billed [`auth::Principal`] ([`auth`]); how often — request-rate
//! limits per consumer, with OpenAI's `x-ratelimit-*` figures ([`limits`]); and how much — token quotas per
//! consumer, model and instance against billing-consumer's snapshots plus this replica's usage not counted yet
//! ([`quota`], fed by [`quota::feed`]). The replica's in-flight budget is the HTTP surface's
//! ([`crate::http::inflight`]).

pub mod auth;
pub mod limits;
pub mod quota;
