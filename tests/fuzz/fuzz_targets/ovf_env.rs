#![no_main]
//! libFuzzer entry of the `ovf_env` target; the body is in src/targets.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    (waagent_fuzz::targets::find("ovf_env").expect("listed").run)(data)
});
