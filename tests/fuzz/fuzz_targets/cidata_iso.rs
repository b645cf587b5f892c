#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| attestd_fuzz::cidata_iso(data));
