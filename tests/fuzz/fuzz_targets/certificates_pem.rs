#![no_main]
//! libFuzzer entry of the `certificates_pem` target; the body is in src/targets.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    (waagent_fuzz::targets::find("certificates_pem")
        .expect("listed")
        .run)(data)
});
