//! Tollgate's fuzz targets, one module each: what a target feeds the code under test and the invariants it checks
//! beyond "no panic". libFuzzer drives them through the thin entry points in `fuzz_targets/` (cargo fuzz, nightly);
//! `tests/replay.rs` runs the committed seed corpus through the same checks on any toolchain. How to run them and
//! the figures of the last long runs: docs/fuzzing.md.

pub mod config_toml;
pub mod provider_usage;
pub mod request_parse;
pub mod spool_frame;
pub mod sse_stream;
pub mod usage_event_decode;

/// A target's entry point: runs one input, panics when an invariant does not hold.
pub type Run = fn(&[u8]);

/// Every target: its name (the directory of its corpus under `corpus/`) and its entry point.
pub const TARGETS: [(&str, Run); 6] = [
    ("config_toml", config_toml::run),
    ("provider_usage", provider_usage::run),
    ("request_parse", request_parse::run),
    ("spool_frame", spool_frame::run),
    ("sse_stream", sse_stream::run),
    ("usage_event_decode", usage_event_decode::run),
];
