//! Tollgate's meter sidecar: a small HTTP service that counts tokens with tiktoken.
//!
//! The gateway asks it for a prompt estimate before forwarding a request (`POST /v1/tokens/count` with chat
//! `messages` or a `text`), and for the count of a streamed completion afterwards. It answers
//! `{"tokens": N, "encoding": "o200k_base"}`. To settle many finished streams in one call it sends
//! `POST /v1/tokens/count/batch` with `{"items": [...]}` and gets `{"results": [...]}` in the same order, an
//! item's error in its own slot. Counts of texts seen before come from a bounded cache.
//!
//! A tour of the modules, from the outside in:
//! - [`server`] assembles the actix-web server; its [`server::app`] documents the request pipeline step by step.
//! - [`api`] holds the request and response types and the handlers.
//! - [`count`] is the heart: pure functions that count a text or chat messages, with OpenAI's chat overhead.
//! - [`tools`] counts tool definitions (`tools`, legacy `functions`) by OpenAI's rule, others as JSON text.
//! - [`image`] prices image content parts by OpenAI's tile formula, reading sizes from data-URL headers.
//! - [`cache`] remembers the counts of recent texts (each chat string on its own), so recurring system prompts
//!   are tokenized once.
//! - [`encoding`] maps model names to BPE vocabularies and loads each vocabulary once.
//! - [`config`] turns raw settings into a validated [`config::Config`].
//! - [`error`] is the one error type, [`error::MeterError`], and its OpenAI-shaped HTTP rendering.
//! - [`metrics`] names, describes and records the Prometheus metrics.
//!
//! The binary (`src/main.rs`) only parses the command line, installs logging and the metrics recorder, binds
//! the socket and runs [`server::build`] until SIGTERM or Ctrl-C.

pub mod api;
pub mod cache;
pub mod config;
pub mod count;
pub mod encoding;
pub mod error;
pub mod image;
pub mod metrics;
pub mod server;
pub mod tools;
