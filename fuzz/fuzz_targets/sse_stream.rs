//! The `sse_stream` fuzz target: libFuzzer's entry point for [`tollgate_fuzz::sse_stream`], where the input format and the
//! invariants checked are described.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate_fuzz::sse_stream::run(data));
