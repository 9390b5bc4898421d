//! The unpacker against zips built here, well-formed and hostile: each
//! refusal leaves the parent directory as it was.

use super::*;
use std::io::Cursor;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

const BOM: &[u8] = b"\xEF\xBB\xBF";
const MANIFEST: &[u8] = br#"[{"name":"Example","version":1.0,"handlerManifest":{}}]"#;

/// An entry of a test zip.
enum E {
    /// Name, content, unix mode (file type bits added by the writer).
    File(&'static str, Vec<u8>, u32),
    Dir(&'static str, u32),
    Symlink(&'static str, &'static str),
    /// Name, raw external attributes (the unix mode in the high half).
    Raw(&'static str, u32),
}

fn zip_of(entries: Vec<E>) -> Vec<u8> {
    let mut w = ZipWriter::new(Cursor::new(Vec::new()));
    let deflate = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);
    for e in entries {
        match e {
            E::File(name, data, mode) => {
                w.start_file(name, deflate.unix_permissions(mode)).unwrap();
                w.write_all(&data).unwrap();
            }
            E::Dir(name, mode) => w
                .add_directory(name, deflate.unix_permissions(mode))
                .unwrap(),
            E::Symlink(name, target) => w.add_symlink(name, target, deflate).unwrap(),
            E::Raw(name, attrs) => {
                w.start_file(name, deflate.external_attributes(attrs))
                    .unwrap();
                w.write_all(b"raw").unwrap();
            }
        }
    }
    w.finish().unwrap().into_inner()
}

fn manifest() -> E {
    E::File(HANDLER_MANIFEST, MANIFEST.to_vec(), 0o644)
}

/// `root/lib/pkg.zip`, to be unpacked into `root/lib/Ext-1.0`.
struct Fixture {
    root: tempfile::TempDir,
    lib: PathBuf,
    zip: PathBuf,
    dest: PathBuf,
}

fn fixture(bytes: &[u8]) -> Fixture {
    let root = tempfile::tempdir().unwrap();
    let lib = root.path().join("lib");
    fs::create_dir(&lib).unwrap();
    let zip = lib.join("pkg.zip");
    fs::write(&zip, bytes).unwrap();
    let dest = lib.join("Ext-1.0");
    Fixture {
        root,
        lib,
        zip,
        dest,
    }
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Unpacks `bytes` expecting a refusal, and checks nothing was left
/// anywhere: the lib dir holds the zip alone, its parent the lib dir.
fn refused_with(bytes: &[u8], limits: &Limits) -> PackageError {
    let f = fixture(bytes);
    let e = unpack(&f.zip, &f.dest, limits).unwrap_err();
    assert_eq!(listing(&f.lib), ["pkg.zip"], "{e}");
    assert_eq!(listing(f.root.path()), ["lib"], "{e}");
    let text = e.to_string();
    assert!(
        text.starts_with(&format!("{}: ", f.zip.display())),
        "{text}"
    );
    assert!(!text.contains('\n'), "{text}");
    e
}

fn refused(bytes: &[u8]) -> PackageError {
    refused_with(bytes, &Limits::default())
}

#[test]
fn a_package_is_unpacked_with_its_manifest_at_the_base_and_sane_modes() {
    let mut bommed = BOM.to_vec();
    bommed.extend(MANIFEST);
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 97) as u8).collect();
    let bytes = zip_of(vec![
        E::Dir("Example/", 0o777),
        E::File("Example/HandlerManifest.json", bommed.clone(), 0o644),
        // Deeper: not the one copied.
        E::File("Example/old/HandlerManifest.json", b"[]".to_vec(), 0o644),
        E::File("Example/bin/handler.sh", b"#!/bin/sh\n".to_vec(), 0o644),
        E::File("Example/bin/suid", b"x".to_vec(), 0o4777),
        E::File("Example/data/big.bin", big.clone(), 0o600),
        E::File("./Example/dotted", b"d".to_vec(), 0o640),
    ]);
    let f = fixture(&bytes);
    let u = unpack(&f.zip, &f.dest, &Limits::default()).unwrap();
    assert_eq!(
        u,
        Unpacked {
            files: 6,
            // Example, old, bin, data.
            dirs: 4,
            bytes: (bommed.len() + 2 + 10 + 1 + big.len() + 1) as u64,
            manifest: PathBuf::from("Example/HandlerManifest.json"),
        }
    );
    assert_eq!(listing(&f.lib), ["Ext-1.0", "pkg.zip"]);
    let d = &f.dest;
    assert_eq!(fs::read(d.join(HANDLER_MANIFEST)).unwrap(), MANIFEST);
    assert_eq!(
        fs::read(d.join("Example/HandlerManifest.json")).unwrap(),
        bommed
    );
    assert_eq!(fs::read(d.join("Example/data/big.bin")).unwrap(), big);
    assert_eq!(fs::read(d.join("Example/dotted")).unwrap(), b"d");
    // The base is the private temporary directory, renamed.
    assert_eq!(mode(d), 0o700);
    // Group/other write and the special bits never survive; u+rwx always.
    assert_eq!(mode(&d.join("Example")), 0o755);
    assert_eq!(mode(&d.join("Example/bin")), 0o700);
    assert_eq!(mode(&d.join("Example/bin/handler.sh")), 0o744);
    assert_eq!(mode(&d.join("Example/bin/suid")), 0o755);
    assert_eq!(mode(&d.join("Example/data/big.bin")), 0o700);
    assert_eq!(mode(&d.join("Example/dotted")), 0o740);
    assert_eq!(mode(&d.join(HANDLER_MANIFEST)), 0o744);
}

#[test]
fn a_manifest_at_the_base_loses_its_bom_in_place() {
    let mut bommed = BOM.to_vec();
    bommed.extend(MANIFEST);
    let bytes = zip_of(vec![
        E::File(HANDLER_MANIFEST, bommed, 0o644),
        E::File("sub/HandlerManifest.json", b"[]".to_vec(), 0o644),
    ]);
    let f = fixture(&bytes);
    let u = unpack(&f.zip, &f.dest, &Limits::default()).unwrap();
    assert_eq!(u.manifest, PathBuf::from(HANDLER_MANIFEST));
    assert_eq!(fs::read(f.dest.join(HANDLER_MANIFEST)).unwrap(), MANIFEST);
    assert_eq!(listing(&f.dest), [HANDLER_MANIFEST, "sub"]);
}

#[test]
fn zip_slip_is_refused() {
    for name in ["../evil", "a/../../evil", "a/b/../../../evil"] {
        let e = refused(&zip_of(vec![
            manifest(),
            E::File(name, b"x".to_vec(), 0o644),
        ]));
        assert!(matches!(e, PackageError::Refused { .. }), "{e}");
        assert!(
            e.to_string()
                .ends_with(&format!("entry {name:?} refused: a `..` component")),
            "{e}"
        );
    }
}

#[test]
fn an_absolute_path_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let target = root.path().join("evil");
    let name: &'static str = Box::leak(target.to_string_lossy().into_owned().into_boxed_str());
    let e = refused(&zip_of(vec![
        manifest(),
        E::File(name, b"x".to_vec(), 0o644),
    ]));
    assert!(e.to_string().ends_with("refused: an absolute path"), "{e}");
    assert!(!target.exists());
    let e = refused(&zip_of(vec![
        manifest(),
        E::File("/etc/evil", b"x".to_vec(), 0o644),
    ]));
    assert!(
        e.to_string()
            .ends_with("entry \"/etc/evil\" refused: an absolute path"),
        "{e}"
    );
}

#[test]
fn symlinks_devices_and_fifos_are_refused() {
    let e = refused(&zip_of(vec![manifest(), E::Symlink("bin", "/usr/bin")]));
    assert!(
        e.to_string()
            .ends_with("entry \"bin\" refused: a symbolic link"),
        "{e}"
    );
    for (mode, name) in [(0o010644, "fifo"), (0o020644, "chr"), (0o140644, "sock")] {
        let e = refused(&zip_of(vec![manifest(), E::Raw(name, mode << 16)]));
        assert!(
            e.to_string().ends_with("refused: a device, FIFO or socket"),
            "{e}"
        );
    }
    // A directory's mode on a file's name.
    let e = refused(&zip_of(vec![manifest(), E::Raw("notadir", 0o040755 << 16)]));
    assert!(
        e.to_string()
            .ends_with("disagree on whether it is a directory"),
        "{e}"
    );
}

#[test]
fn names_with_backslashes_nul_or_control_characters_are_refused_and_shown_escaped() {
    let e = refused(&zip_of(vec![
        manifest(),
        E::File("..\\evil", b"x".to_vec(), 0o644),
    ]));
    assert!(e.to_string().ends_with("a backslash in its name"), "{e}");
    let e = refused(&zip_of(vec![
        manifest(),
        E::File("a\0b", b"x".to_vec(), 0o644),
    ]));
    assert!(
        e.to_string()
            .ends_with("entry \"a\\0b\" refused: a NUL in its name"),
        "{e}"
    );
    let forged = "x\n2026-01-01T00:00:00Z INFO all is well";
    let e = refused(&zip_of(vec![
        manifest(),
        E::File(forged, b"x".to_vec(), 0o644),
    ]));
    assert!(e.to_string().contains("entry \"x\\n2026"), "{e}");
    assert!(
        e.to_string().ends_with("a control character in its name"),
        "{e}"
    );
    let long: &'static str = Box::leak("a".repeat(2000).into_boxed_str());
    let e = refused(&zip_of(vec![
        manifest(),
        E::File(long, b"x".to_vec(), 0o644),
    ]));
    let text = e.to_string();
    assert!(text.ends_with("a name longer than 1024 bytes"), "{text}");
    assert!(text.len() < 300, "the name is cut: {text}");
}

#[test]
fn a_later_entry_cannot_write_through_an_earlier_one() {
    // A file, then a directory of the same name to write below it.
    let e = refused(&zip_of(vec![
        manifest(),
        E::File("bin", b"x".to_vec(), 0o644),
        E::File("bin/handler.sh", b"y".to_vec(), 0o644),
    ]));
    assert!(
        e.to_string()
            .ends_with("a directory where an earlier entry put a file"),
        "{e}"
    );
    // The same file twice, spelt differently.
    let e = refused(&zip_of(vec![
        manifest(),
        E::File("a/b", b"x".to_vec(), 0o644),
        E::File("a/./b", b"y".to_vec(), 0o644),
    ]));
    assert!(
        e.to_string().ends_with("a second entry of the same name"),
        "{e}"
    );
}

#[test]
fn an_entry_count_bomb_is_refused() {
    let limits = Limits {
        max_entries: 50,
        ..Limits::default()
    };
    let many = (0..100)
        .map(|i| {
            E::File(
                Box::leak(format!("f{i}").into_boxed_str()),
                Vec::new(),
                0o644,
            )
        })
        .chain([manifest()])
        .collect();
    let e = refused_with(&zip_of(many), &limits);
    assert!(e.to_string().ends_with("101 entries, more than 50"), "{e}");
    // Few entries, but each implies a deep chain of new directories.
    let deep = (0..10)
        .map(|i| {
            let name = format!("d{i}/a/b/c/d/e/f");
            E::File(Box::leak(name.into_boxed_str()), Vec::new(), 0o644)
        })
        .chain([manifest()])
        .collect();
    let e = refused_with(&zip_of(deep), &limits);
    assert!(matches!(e, PackageError::TooLarge { .. }), "{e}");
    assert!(
        e.to_string()
            .ends_with("more than 50 files and directories"),
        "{e}"
    );
}

#[test]
fn a_size_bomb_is_refused_by_the_bytes_it_inflates_to() {
    // 64 MiB of zeros deflate to about 64 KiB.
    let bomb = zip_of(vec![manifest(), E::File("bomb", vec![0; 64 << 20], 0o644)]);
    assert!(bomb.len() < 1 << 20, "{}", bomb.len());
    let e = refused_with(
        &bomb,
        &Limits {
            max_total_bytes: 8 << 20,
            ..Limits::default()
        },
    );
    assert!(
        e.to_string()
            .ends_with("entry \"bomb\": the package expands past 8388608 bytes"),
        "{e}"
    );
    let e = refused_with(
        &bomb,
        &Limits {
            max_entry_bytes: 1 << 20,
            ..Limits::default()
        },
    );
    assert!(
        e.to_string()
            .ends_with("entry \"bomb\": expands past 1048576 bytes"),
        "{e}"
    );
    // The archive itself over its bound is not even opened.
    let e = refused_with(
        &bomb,
        &Limits {
            max_archive_bytes: 1000,
            ..Limits::default()
        },
    );
    assert!(e.to_string().ends_with("more than 1000"), "{e}");
}

#[test]
fn a_declared_size_that_lies_does_not_raise_the_bound() {
    let mut bytes = zip_of(vec![manifest(), E::File("bomb", vec![0; 4 << 20], 0o644)]);
    // Claim 10 bytes in the local and central headers of "bomb".
    let claim = 10u32.to_le_bytes();
    let mut patched = 0;
    for (sig, off) in [(b"PK\x03\x04", 22), (b"PK\x01\x02", 24)] {
        let mut i = 0;
        while let Some(p) = bytes[i..].windows(4).position(|w| w == sig) {
            let at = i + p;
            let name_at = at + if sig[2] == 3 { 30 } else { 46 };
            if bytes[name_at..].starts_with(b"bomb") {
                bytes[at + off..at + off + 4].copy_from_slice(&claim);
                patched += 1;
            }
            i = at + 4;
        }
    }
    assert_eq!(patched, 2);
    let e = refused_with(
        &bytes,
        &Limits {
            max_total_bytes: 1 << 20,
            ..Limits::default()
        },
    );
    // Either the reader stops at the claim (and the CRC fails) or the
    // count stops the copy: never 4 MiB on disk.
    assert!(
        matches!(
            e,
            PackageError::TooLarge { .. } | PackageError::Corrupt { .. }
        ),
        "{e}"
    );
}

#[test]
fn a_truncated_or_corrupt_zip_is_refused() {
    // Noise (xorshift), so the deflated data is as long as the original.
    let mut x = 0x2545_f491_u32;
    let data: Vec<u8> = (0..100_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    let good = zip_of(vec![manifest(), E::File("data.bin", data, 0o644)]);
    let e = refused(&good[..good.len() / 2]);
    assert!(
        matches!(e, PackageError::Corrupt { entry: None, .. }),
        "{e}"
    );
    assert!(e.to_string().contains(": not a readable zip: "), "{e}");
    let e = refused(b"");
    assert!(matches!(e, PackageError::Corrupt { .. }), "{e}");
    // The central directory intact, the compressed data damaged.
    let mut bad = good.clone();
    let at = bad.windows(8).position(|w| w == b"data.bin").unwrap() + 2000;
    for b in &mut bad[at..at + 64] {
        *b ^= 0x5a;
    }
    let e = refused(&bad);
    assert!(
        matches!(e, PackageError::Corrupt { entry: Some(ref n), .. } if n == "data.bin"),
        "{e}"
    );
}

#[test]
fn a_package_without_a_manifest_is_refused() {
    let e = refused(&zip_of(vec![
        E::File("bin/handler.sh", b"#!/bin/sh\n".to_vec(), 0o755),
        // A directory of that name is not a manifest.
        E::Dir("HandlerManifest.json/", 0o755),
    ]));
    assert!(matches!(e, PackageError::NoManifest { .. }), "{e}");
    assert!(
        e.to_string()
            .ends_with(": no HandlerManifest.json in the package"),
        "{e}"
    );
}

#[test]
fn an_existing_destination_is_left_alone() {
    let f = fixture(&zip_of(vec![manifest()]));
    fs::create_dir(&f.dest).unwrap();
    fs::write(f.dest.join("mine"), b"keep").unwrap();
    let e = unpack(&f.zip, &f.dest, &Limits::default()).unwrap_err();
    assert!(matches!(e, PackageError::Exists { .. }), "{e}");
    assert_eq!(listing(&f.lib), ["Ext-1.0", "pkg.zip"]);
    assert_eq!(listing(&f.dest), ["mine"]);
    // An empty directory too: rename(2) would silently replace it.
    fs::remove_file(f.dest.join("mine")).unwrap();
    let e = unpack(&f.zip, &f.dest, &Limits::default()).unwrap_err();
    assert!(matches!(e, PackageError::Exists { .. }), "{e}");
    assert!(listing(&f.dest).is_empty());
}

#[test]
fn names_are_checked_component_by_component() {
    assert_eq!(components("a/b/"), Ok((vec!["a", "b"], true)));
    assert_eq!(components("./a//b"), Ok((vec!["a", "b"], false)));
    assert_eq!(components("./"), Ok((vec![], true)));
    assert!(components(".").is_err());
    assert!(components("").is_err());
    assert!(components("a/..").is_err());
    assert!(components("..").is_err());
    assert_eq!(components("a..b/..c"), Ok((vec!["a..b", "..c"], false)));
    assert_eq!(final_mode(None), 0o700);
    assert_eq!(final_mode(Some(0o100777)), 0o755);
    assert_eq!(final_mode(Some(0o104000)), 0o700);
    assert_eq!(
        kind(Some(0o100644), true),
        Err("its mode and its name disagree on whether it is a directory")
    );
    assert_eq!(kind(None, true), Ok(Kind::Dir));
    assert_eq!(kind(Some(0o644), false), Ok(Kind::File));
}
