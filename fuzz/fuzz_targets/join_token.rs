//! libFuzzer entry point of the `join_token` target; the target itself is
//! `tessera_fuzz::join_token::run` (see its documentation for what it checks).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tessera_fuzz::join_token::run(data));
