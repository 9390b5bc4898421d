#![no_main]
//! libFuzzer entry of the `wire_documents` target; the body is in src/targets.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    (waagent_fuzz::targets::find("wire_documents")
        .expect("listed")
        .run)(data)
});
