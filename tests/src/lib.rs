//! Tollgate's end-to-end test support.
//!
//! - [`mock_provider`] — the mock OpenAI-compatible provider (also the `mock-provider` binary of the local
//!   stack), the one faked component: it stands for the outside world and misbehaves on demand; its Responses
//!   API in [`mock_responses`], Gemini's in [`mock_gemini`].
//! - [`stack`] — starts a whole Tollgate in-process on port 0 — gateway (one or two replicas), meter-sidecar and
//!   billing-consumer's ingest and quota loops — against the REAL broker and the REAL ClickHouse that
//!   `compose/test` starts, each run on its own topics, consumer group and database, and reads back what landed
//!   in ClickHouse.
//! - [`admin`] — an `[admin]` table with known keys, and a JSON client for the admin API.
//! - [`procs`] — what fault tests kill: Tollgate binaries as child processes, and a private broker and
//!   ClickHouse that can be stopped and started again.
//!
//! The specifications themselves are in `tests/tests/*.rs`.

pub mod admin;
pub mod mock_gemini;
pub mod mock_provider;
pub mod mock_responses;
pub mod procs;
pub mod stack;
