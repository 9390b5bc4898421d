#![no_main]
//! libFuzzer entry of the `imds_json` target; the body is in src/targets.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    (waagent_fuzz::targets::find("imds_json")
        .expect("listed")
        .run)(data)
});
