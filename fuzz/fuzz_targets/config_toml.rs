//! The `config_toml` fuzz target: libFuzzer's entry point for [`tollgate_fuzz::config_toml`], where the input format and the
//! invariants checked are described.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate_fuzz::config_toml::run(data));
