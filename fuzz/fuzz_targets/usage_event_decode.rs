//! The `usage_event_decode` fuzz target: libFuzzer's entry point for [`tollgate_fuzz::usage_event_decode`], where the input format and the
//! invariants checked are described.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate_fuzz::usage_event_decode::run(data));
