#![no_main]
//! libFuzzer entry of the `certificates_der` target; the body is in src/targets.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    (waagent_fuzz::targets::find("certificates_der")
        .expect("listed")
        .run)(data)
});
