//! The `spool_frame` fuzz target: libFuzzer's entry point for [`tollgate_fuzz::spool_frame`], where the input format and the
//! invariants checked are described.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate_fuzz::spool_frame::run(data));
