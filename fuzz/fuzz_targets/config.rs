//! libFuzzer entry point of the `config` target; the target itself is
//! `tessera_fuzz::config::run` (see its documentation for what it checks).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tessera_fuzz::config::run(data));
