//! Tollgate's end-to-end test support.
//!
//! - [`mock_provider`] — the mock OpenAI-compatible provider (also the `mock-provider` binary of the local
//!   stack), the one faked component: it stands for the outside world and misbehaves on demand.
//! - [`stack`] — starts a whole Tollgate in-process on port 0 — gateway, meter-sidecar and billing-consumer's
//!   ingest — against the REAL broker and the REAL ClickHouse that `compose/test` starts, each run on its own
//!   topic, consumer group and database, and reads back what landed in ClickHouse.
//!
//! The specifications themselves are in `tests/tests/*.rs`.

pub mod mock_provider;
pub mod stack;
