//! The `provider_usage` fuzz target: libFuzzer's entry point for [`tollgate_fuzz::provider_usage`], where the input format and the
//! invariants checked are described.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate_fuzz::provider_usage::run(data));
