//! libFuzzer entry point of the `h2_authority` target; the target itself is
//! `tessera_fuzz::h2_authority::run` (see its documentation for what it checks).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tessera_fuzz::h2_authority::run(data));
