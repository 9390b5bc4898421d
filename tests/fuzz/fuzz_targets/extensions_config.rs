#![no_main]
//! libFuzzer entry of the `extensions_config` target; the body is in src/targets.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    (waagent_fuzz::targets::find("extensions_config")
        .expect("listed")
        .run)(data)
});
