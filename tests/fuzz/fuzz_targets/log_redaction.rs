#![no_main]
//! libFuzzer entry of the `log_redaction` target; the body is in src/targets.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    (waagent_fuzz::targets::find("log_redaction")
        .expect("listed")
        .run)(data)
});
