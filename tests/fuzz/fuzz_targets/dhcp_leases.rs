#![no_main]
//! libFuzzer entry of the `dhcp_leases` target; the body is in src/targets.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    (waagent_fuzz::targets::find("dhcp_leases")
        .expect("listed")
        .run)(data)
});
