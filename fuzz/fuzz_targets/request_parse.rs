//! The `request_parse` fuzz target: libFuzzer's entry point for [`tollgate_fuzz::request_parse`], where the input format and the
//! invariants checked are described.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate_fuzz::request_parse::run(data));
