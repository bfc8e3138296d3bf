//! libFuzzer entry point of the `tss2_key` target; the target itself is
//! `tessera_fuzz::tss2_key::run` (see its documentation for what it checks).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tessera_fuzz::tss2_key::run(data));
