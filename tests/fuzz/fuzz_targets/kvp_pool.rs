#![no_main]
//! libFuzzer entry of the `kvp_pool` target; the body is in src/targets.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    (waagent_fuzz::targets::find("kvp_pool").expect("listed").run)(data)
});
