#![no_main]
//! libFuzzer entry of the `waagent_conf` target; the body is in src/targets.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    (waagent_fuzz::targets::find("waagent_conf")
        .expect("listed")
        .run)(data)
});
