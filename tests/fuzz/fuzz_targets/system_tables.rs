#![no_main]
//! libFuzzer entry of the `system_tables` target; the body is in src/targets.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    (waagent_fuzz::targets::find("system_tables")
        .expect("listed")
        .run)(data)
});
