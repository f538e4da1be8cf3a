//! Deploying images to loop devices over loopback HTTP: `molar-agent image write` with the
//! connection dropped mid-way and resumed with Range (bytes served < 1.1 × the image, the
//! device holds exactly the image), its refusal without `--allow-host`, and
//! `cache_images` → `prepare_image` from the cache, with the cache disk refused as a target.
//! Needs root and loop devices (CI runs it).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::sync::Arc;

use molar_agent::authority::Authority;
use molar_agent::capabilities::HardwareReady;
use molar_agent::capabilities::image::{ImageEnv, prepare};
use molar_agent::image::Progress;
use molar_protocol::image::{CacheLocation, Checksum, ImageSource, ImageSpec, PrepareImageParams};
use molar_tests::bins::bin;
use molar_tests::lab::{Faults, HttpFiles};
use molar_tests::privileged::{LoopDevice, require_root_and_losetup};
use tokio_util::sync::CancellationToken;

const MIB: usize = 1 << 20;

fn disk(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for (i, b) in v.iter_mut().enumerate() {
        if (i / MIB) % 5 == 4 {
            continue;
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = (x >> 58) as u8;
    }
    v
}

fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

fn backing(dev: &LoopDevice, len: usize) -> Vec<u8> {
    let mut d = std::fs::read(dev.backing.path()).unwrap();
    d.truncate(len);
    d
}

#[test]
fn image_write_resumes_a_dropped_download_onto_a_loop_device() {
    if !require_root_and_losetup("image_write_resumes_a_dropped_download_onto_a_loop_device") {
        return;
    }
    let data = disk(40 * MIB);
    let file = zstd::encode_all(&data[..], 3).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("img.raw.zst"), &file).unwrap();
    let faults = Faults {
        drop_after: Some(file.len() as u64 / 2),
        ..Faults::default()
    };
    let http = HttpFiles::serve_with(dir.path(), faults).unwrap();
    let dev = LoopDevice::new(48 << 20);

    // Without --allow-host: refused, nothing written.
    let out = Command::new(bin("molar-agent"))
        .args(["image", "write", "--url", &http.url("img.raw.zst")])
        .args([
            "--checksum",
            &sha256(&file),
            "--device",
            &dev.name(),
            "--yes",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--allow-host"), "{err}");
    assert_eq!(http.bytes_served(), 0);

    let out = Command::new(bin("molar-agent"))
        .args(["image", "write", "--url", &http.url("img.raw.zst")])
        .args(["--checksum", &sha256(&file), "--device", &dev.name()])
        .args(["--allow-host", "--yes"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["resumed"], 1, "{r}");
    assert_eq!(r["disk_bytes"], data.len() as u64);
    assert_eq!(r["checksum"], sha256(&file));
    assert!(http.dropped());
    let served = http.bytes_served();
    assert!(
        (served as f64) < 1.1 * file.len() as f64,
        "served {served} for a {}-byte image",
        file.len()
    );
    assert!(
        backing(&dev, data.len()) == data,
        "device differs from the image"
    );
}

#[test]
fn cache_then_prepare_from_the_cache() {
    if !require_root_and_losetup("cache_then_prepare_from_the_cache") {
        return;
    }
    let a = disk(6 * MIB);
    let b = disk(3 * MIB + 4096);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.raw"), &a).unwrap();
    std::fs::write(
        dir.path().join("b.raw.zst"),
        zstd::encode_all(&b[..], 1).unwrap(),
    )
    .unwrap();
    let bz = std::fs::read(dir.path().join("b.raw.zst")).unwrap();
    let http = HttpFiles::serve(dir.path()).unwrap();
    let spec = |id: &str, name: &str, data: &[u8]| ImageSpec {
        id: id.into(),
        urls: vec![http.url(name)],
        checksum: Some(Checksum::parse(&sha256(data)).unwrap()),
        size: None,
        format: None,
        compression: None,
        ca_pem: None,
    };
    let broken = ImageSpec {
        checksum: Some(Checksum::parse(&sha256(b"not it")).unwrap()),
        ..spec("c", "a.raw", &a)
    };
    let cache_dev = LoopDevice::new(16 << 20);
    let target = LoopDevice::new(16 << 20);
    let mut env = ImageEnv::new(
        "/".into(),
        Authority::host(&[cache_dev.name(), target.name()], false),
        HardwareReady::default(),
    );
    env.cache = Arc::new(molar_agent::image::cache::Cache::new(
        dir.path().join("mem"),
        None,
    ));
    let progress = Arc::new(Progress::default());
    let cancel = CancellationToken::new();
    let images = [spec("a", "a.raw", &a), broken, spec("b", "b.raw.zst", &bz)];
    let disk_path = cache_dev.dev.clone();
    let name = cache_dev.name().rsplit('/').next().unwrap().to_owned();
    let res = env
        .cache
        .cache(
            &images,
            Some((disk_path, name)),
            &env.fetch,
            &progress,
            &cancel,
        )
        .unwrap();
    let ids: Vec<&str> = res.cached.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["a", "b"], "{res:?}");
    assert!(res.cached.iter().all(|c| c.location == CacheLocation::Disk));
    assert_eq!(res.skipped.len(), 1);
    assert_eq!(res.skipped[0].code, "checksum_mismatch");
    // The table block names both, checksummed.
    let head = std::fs::read(cache_dev.backing.path()).unwrap();
    let table = molar_agent::image::cache::read_table(&head[..4096]).unwrap();
    assert_eq!(table.len(), 2);

    // The cache disk is not a target.
    let params = |device: String| PrepareImageParams {
        source: ImageSource::Cached("b".into()),
        device,
    };
    let e = prepare(&env, &params(cache_dev.name()), &progress, &cancel).unwrap_err();
    assert_eq!(e.code, "refused", "{e}");
    assert!(e.msg.contains("holds the image cache"), "{e}");
    // From the cache, re-verified, onto the other disk; the HTTP server is not asked again.
    let before = http.bytes_served();
    let r = prepare(&env, &params(target.name()), &progress, &cancel).unwrap();
    assert_eq!(r.source, "cache");
    assert_eq!(r.disk_bytes, b.len() as u64);
    assert_eq!(http.bytes_served(), before);
    assert!(backing(&target, b.len()) == b);
    let w = molar_agent::image::written_on(&target.name()).unwrap();
    assert_eq!(w.image_id, "b");
    // A second cache_images keeping only `b`: `a` is evicted, `b` re-verified.
    let again = env
        .cache
        .cache(
            &[spec("b", "b.raw.zst", &bz)],
            Some((
                cache_dev.dev.clone(),
                cache_dev.name().rsplit('/').next().unwrap().into(),
            )),
            &env.fetch,
            &progress,
            &cancel,
        )
        .unwrap();
    assert_eq!(again.evicted, ["a"]);
    assert!(again.cached[0].already);
}
