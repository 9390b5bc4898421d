//! Facts of the sandboxed VM the end-to-end tests provision: its SMBIOS
//! UUID, and what test-data/ovf/full.xml and the simulator's IMDS hold.

#![allow(dead_code)] // each test binary uses some of them

/// What `/sys/class/dmi/id/product_uuid` reads in the sandbox.
pub const DMI_UUID: &str = "C4BFE7E2-EB2D-4A4E-8615-EA6AAF50162E";
/// `DMI_UUID` with its first three groups byte-swapped, as `provisioned` holds it.
pub const INSTANCE_ID: &str = "e2e7bfc4-2deb-4e4a-8615-ea6aaf50162e";
/// The password in test-data/ovf/full.xml, entities decoded.
pub const FULL_PASSWORD: &str = "Sup3r$ecret P@ss & más <x>";
/// The SSH key the simulator's IMDS serves.
pub const IMDS_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGltZHNrZXlmb3J3YWFnZW50cnNvbmx5bm90cmVhbA== imds@azure";

/// A binary built beside `waagent` (fabric-sim, the test helpers).
pub fn sibling_bin(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_BIN_EXE_waagent")).with_file_name(name)
}

/// A handler package as the storage serves it: `files` (name, text), each
/// deflated with the Unix `mode`.
pub fn handler_package(files: &[(&str, &str)], mode: u32) -> Vec<u8> {
    use std::io::Write;
    use zip::write::SimpleFileOptions;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let o = SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .unix_permissions(mode);
    for (name, data) in files {
        w.start_file(*name, o).unwrap();
        w.write_all(data.as_bytes()).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// Copies what an e2e VM runs into `dir`: the `waagent` and `fabric-sim`
/// binaries and the tenant certificate (test-data/certs) that seals the
/// handler's protected settings.
pub fn stage_binaries_and_tenant_cert(dir: &std::path::Path) {
    for b in ["waagent", "fabric-sim"] {
        std::fs::copy(sibling_bin(b), dir.join(b)).unwrap();
    }
    for f in ["tenant.crt", "tenant.key"] {
        std::fs::copy(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("test-data/certs")
                .join(f),
            dir.join(f),
        )
        .unwrap();
    }
}
