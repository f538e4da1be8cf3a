//! The `molar-imagebuilder` command line as a user meets it: bad inputs end with a non-zero
//! exit and one clear line naming what is wrong, and no secret is ever echoed.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::path::Path;
use std::process::{Command, Output};

fn imagebuilder(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_molar-imagebuilder"))
        .args(args)
        .env_remove("MOLAR_TOKEN")
        .output()
        .unwrap()
}

/// The smallest static x86_64 executable header the builder accepts (never run).
fn static_elf() -> Vec<u8> {
    let mut h = vec![0u8; 64 + 56];
    h[..4].copy_from_slice(b"\x7fELF");
    h[4] = 2; // 64-bit
    h[5] = 1; // little-endian
    h[6] = 1;
    h[0x10..0x12].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    h[0x12..0x14].copy_from_slice(&62u16.to_le_bytes()); // x86_64
    h[0x20..0x28].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
    h[0x34..0x36].copy_from_slice(&64u16.to_le_bytes());
    h[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
    h[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
    h[64..68].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    h
}

fn kernel_tree(dir: &Path) -> (String, String) {
    let modules = dir.join("lib/modules/6.1.0-cli");
    std::fs::create_dir_all(modules.join("kernel")).unwrap();
    std::fs::write(dir.join("vmlinuz"), b"bzImage").unwrap();
    (
        dir.join("vmlinuz").display().to_string(),
        modules.display().to_string(),
    )
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_dynamic_agent_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (k, m) = kernel_tree(dir.path());
    let out = dir.path().join("out").display().to_string();
    // This test binary is dynamically linked (gnu target): a perfect non-static agent.
    let agent = std::env::current_exe().unwrap().display().to_string();
    let o = imagebuilder(&[
        "build",
        "--kernel",
        &k,
        "--modules",
        &m,
        "--agent",
        &agent,
        "--out",
        &out,
    ]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("cannot be /init") && e.contains("interpreter"),
        "{e}"
    );
    assert_eq!(
        e.matches("interpreter").count(),
        1,
        "cause printed twice: {e}"
    );
}

#[test]
fn a_missing_module_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (k, m) = kernel_tree(dir.path());
    let agent = dir.path().join("agent");
    std::fs::write(&agent, static_elf()).unwrap();
    let out = dir.path().join("out").display().to_string();
    let o = imagebuilder(&[
        "build",
        "--kernel",
        &k,
        "--modules",
        &m,
        "--agent",
        &agent.display().to_string(),
        "--out",
        &out,
    ]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("module nvme is neither in"), "{e}");
}

#[test]
fn bad_kernel_arguments_are_refused_without_echoing_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let (k, m) = kernel_tree(dir.path());
    let out = dir.path().join("out").display().to_string();
    let base = [
        "build",
        "--kernel",
        &k,
        "--modules",
        &m,
        "--agent",
        "/nonexistent",
        "--out",
        &out,
    ];
    let o = imagebuilder(&[&base[..], &["--controller", "ctl example:9000"]].concat());
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--controller"), "{}", stderr(&o));

    let o = imagebuilder(&[&base[..], &["--token", "s3cret value"]].concat());
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("--token") && !e.contains("s3cret"), "{e}");

    let o = imagebuilder(&[&base[..], &["--ca-fingerprint", "md5:00"]].concat());
    assert!(stderr(&o).contains("--ca-fingerprint"), "{}", stderr(&o));
}

#[test]
fn a_bad_package_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let deb = dir.path().join("linux-image.deb");
    std::fs::write(&deb, b"<html>not found</html>").unwrap();
    let agent = dir.path().join("agent");
    std::fs::write(&agent, static_elf()).unwrap();
    let o = imagebuilder(&[
        "build",
        "--kernel-deb",
        &deb.display().to_string(),
        "--agent",
        &agent.display().to_string(),
        "--out",
        &dir.path().join("out").display().to_string(),
    ]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("is not a Debian package"), "{e}");
}
