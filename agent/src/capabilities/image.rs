//! `standbye.prepare_image` and `standbye.cache_images`: the image pipeline
//! ([`crate::image`]) as tasks, behind the same gate as an erase (drivers loaded, the
//! authority's `WriteImage`, [`crate::safety::select_targets_for`]), with progress in bytes
//! and throughput.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use molar_protocol::codes;
use molar_protocol::image::{
    CacheImagesParams, ImageSource, ImageSpec, PrepareImageParams, PrepareImageResult,
};
use serde_json::Value;

use super::HardwareReady;
use crate::authority::{Action, Authority};
use crate::image::cache::Cache;
use crate::image::fetch::{FetchOptions, Origin};
use crate::image::{self, ImageError, Job, Progress, pipeline};
use crate::safety::ClearedTarget;
use crate::tasks::{TaskContext, TaskFailure};

/// What both image tasks share: where the machine is, who may change it, the cache.
#[derive(Clone)]
pub struct ImageEnv {
    pub root: PathBuf,
    pub authority: Authority,
    pub ready: HardwareReady,
    pub cache: Arc<Cache>,
    pub fetch: FetchOptions,
}

impl ImageEnv {
    pub fn new(root: PathBuf, authority: Authority, ready: HardwareReady) -> ImageEnv {
        ImageEnv {
            root,
            authority,
            ready,
            cache: Arc::new(Cache::new(crate::image::cache::memory_dir(), None)),
            fetch: FetchOptions::default(),
        }
    }
}

fn fail(e: ImageError) -> TaskFailure {
    TaskFailure::new(e.code(), e.to_string())
}

/// The one device `device` names, if the authority and the safety checks allow writing it.
pub fn clear_target(
    root: &Path,
    authority: &Authority,
    device: &str,
) -> Result<ClearedTarget, TaskFailure> {
    let disks = crate::disks::enumerate(root)
        .map_err(|e| TaskFailure::new(e.code(), format!("enumerating block devices: {e}")))?;
    #[allow(clippy::redundant_closure)] // see safety::DeviceAction
    let (mut cleared, skipped) = crate::safety::select_targets_for(
        root,
        &disks,
        authority,
        |d| Action::WriteImage(d),
        Some(&[device.to_owned()]),
        &[],
    );
    if let Some(s) = skipped.first() {
        return Err(TaskFailure::new(
            codes::REFUSED,
            format!("{}: {}", s.device, s.reason()),
        ));
    }
    cleared
        .pop()
        .ok_or_else(|| TaskFailure::new(codes::REFUSED, format!("{device}: not a target")))
}

/// Sends `progress` to the task every second until `done` fires.
fn report(
    ctx: TaskContext,
    progress: Arc<Progress>,
    what: &'static str,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let t0 = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if ctx.is_cancelled() {
                return;
            }
            let fetched = progress.fetch.fetched.load(Ordering::Relaxed);
            let total = progress.fetch.total.load(Ordering::Relaxed);
            let written = progress.written.load(Ordering::Relaxed);
            let secs = t0.elapsed().as_secs_f64().max(0.001);
            if total > 0 {
                ctx.set_progress_of(fetched, total);
            }
            ctx.set_message(progress_message(what, fetched, total, written, secs));
        }
    })
}

/// `fetched 1.2 of 2.0 GiB, written 3.1 GiB, 850 MB/s` (fetch rate).
pub fn progress_message(what: &str, fetched: u64, total: u64, written: u64, secs: f64) -> String {
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let of = if total > 0 {
        format!(" of {:.2}", gib(total))
    } else {
        String::new()
    };
    format!(
        "{what}: fetched {:.2}{of} GiB, written {:.2} GiB, {:.0} MB/s",
        gib(fetched),
        gib(written),
        fetched as f64 / secs / 1e6
    )
}

/// Where `spec`'s bytes come from: the cache when it holds the same image (same id and
/// digest, re-verified), else its URLs; a spec that waives its checksum is always fetched.
fn origin_of(
    env: &ImageEnv,
    spec: &ImageSpec,
) -> Result<(Origin, Option<molar_protocol::image::Digest>, bool), ImageError> {
    let mut options = env.fetch.clone();
    options.ca_pem = spec.ca_pem.clone();
    let digest = pipeline::resolve_digest(spec, &options)?;
    // With the checksum waived nothing says that an entry with this id is this image (it
    // may have been cached from another URL, or under a digest): fetch it.
    let cached = match &digest {
        Some(d) => env.cache.get(&spec.id, Some(d)),
        None => Err(ImageError::NotCached(spec.id.clone())),
    };
    match cached {
        Ok(c) => Ok((c.origin, c.digest, true)),
        Err(ImageError::NotCached(_)) => Ok((
            Origin::Http {
                urls: spec.urls.clone(),
                options,
            },
            digest,
            false,
        )),
        Err(e) => Err(e),
    }
}

/// `prepare_image`, blocking: the checks, then the pipeline.
pub fn prepare(
    env: &ImageEnv,
    params: &PrepareImageParams,
    progress: &Arc<Progress>,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<PrepareImageResult, TaskFailure> {
    let target = clear_target(&env.root, &env.authority, &params.device)?;
    if target.is_partition() {
        // A disk image carries its own partition table: it goes onto a whole disk.
        return Err(TaskFailure::new(
            codes::REFUSED,
            format!(
                "{}: a partition; an image is written to a whole disk",
                target.name()
            ),
        ));
    }
    let name = target.name().to_owned();
    if env.cache.disk().as_deref() == Some(name.as_str()) {
        return Err(fail(ImageError::CacheOnTarget {
            device: target.dev_path().display().to_string(),
        }));
    }
    let (spec, origin, digest, from_cache) = match &params.source {
        ImageSource::Spec(spec) => {
            let (origin, digest, cached) = origin_of(env, spec).map_err(fail)?;
            ((**spec).clone(), origin, digest, cached)
        }
        ImageSource::Cached(id) => {
            let c = env.cache.get(id, None).map_err(fail)?;
            let spec = ImageSpec {
                id: id.clone(),
                urls: Vec::new(),
                checksum: None,
                size: Some(c.bytes),
                format: None,
                compression: None,
                ca_pem: None,
            };
            (spec, c.origin, c.digest, true)
        }
    };
    // Only the agent's own verified erase/discard in this boot counts.
    let skip_zeros = crate::disks::zeroed::reads_zeros(&name);
    crate::disks::zeroed::forget(&name);
    image::forget_written(&name);
    let job = Job {
        spec,
        origin,
        digest,
        target: target.dev_path().to_path_buf(),
        skip_zeros,
        file_capacity: None,
    };
    let out = pipeline::write(&job, progress, cancel).map_err(fail)?;
    let checksum = out.digest.as_ref().map(|d| d.to_string());
    image::record_written(image::Written {
        image_id: job.spec.id.clone(),
        device: name,
        bytes: out.disk_bytes,
        checksum: checksum.clone(),
    });
    let mut notes = out.notes;
    if skip_zeros {
        notes.push("zero runs skipped: the device was erased and verified in this boot".into());
    }
    Ok(PrepareImageResult {
        image_id: job.spec.id,
        device: target.dev_path().display().to_string(),
        source: if from_cache { "cache".into() } else { out.from },
        format: out.format,
        compression: out.compression,
        file_bytes: out.file_bytes,
        disk_bytes: out.disk_bytes,
        bytes_written: out.bytes_written,
        zero_bytes_skipped: out.zeros_skipped,
        seconds: out.seconds,
        throughput: if out.seconds > 0.0 {
            out.disk_bytes as f64 / out.seconds
        } else {
            0.0
        },
        checksum,
        resumed: out.resumed,
        notes,
    })
}

/// `standbye.prepare_image`.
pub struct PrepareImage(pub ImageEnv);

impl crate::tasks::Task for PrepareImage {
    type Params = PrepareImageParams;

    async fn run(
        &self,
        params: PrepareImageParams,
        ctx: TaskContext,
    ) -> Result<Value, TaskFailure> {
        self.0
            .ready
            .wait()
            .await
            .map_err(|e| TaskFailure::new(&e.code, e.msg))?;
        let progress = Arc::new(Progress::default());
        let reporter = report(ctx.clone(), progress.clone(), "prepare_image");
        let env = self.0.clone();
        let cancel = ctx.cancel_token().clone();
        let r =
            tokio::task::spawn_blocking(move || prepare(&env, &params, &progress, &cancel)).await;
        reporter.abort();
        let result =
            r.map_err(|e| TaskFailure::new(codes::INTERNAL, format!("image thread: {e}")))??;
        serde_json::to_value(&result)
            .map_err(|e| TaskFailure::new(codes::INTERNAL, format!("encoding the result: {e}")))
    }
}

/// `standbye.cache_images`.
pub struct CacheImages(pub ImageEnv);

impl crate::tasks::Task for CacheImages {
    type Params = CacheImagesParams;

    async fn run(&self, params: CacheImagesParams, ctx: TaskContext) -> Result<Value, TaskFailure> {
        self.0
            .ready
            .wait()
            .await
            .map_err(|e| TaskFailure::new(&e.code, e.msg))?;
        let progress = Arc::new(Progress::default());
        let reporter = report(ctx.clone(), progress.clone(), "cache_images");
        let env = self.0.clone();
        let cancel = ctx.cancel_token().clone();
        let r = tokio::task::spawn_blocking(move || {
            let disk = match &params.device {
                Some(d) => {
                    let t = clear_target(&env.root, &env.authority, d)?;
                    Some((t.dev_path().to_path_buf(), t.name().to_owned()))
                }
                None => None,
            };
            env.cache
                .cache(&params.images, disk, &env.fetch, &progress, &cancel)
                .map_err(fail)
        })
        .await;
        reporter.abort();
        let result =
            r.map_err(|e| TaskFailure::new(codes::INTERNAL, format!("image thread: {e}")))??;
        serde_json::to_value(&result)
            .map_err(|e| TaskFailure::new(codes::INTERNAL, format!("encoding the result: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::{Machine, methods};
    use crate::session::{Agent, AgentConfig};
    use crate::tls::Trust;
    use molar_protocol::Secret;
    use molar_protocol::catalogue::{CacheImages, Method, PrepareImage, TaskList};
    use serde_json::json;

    /// Bad params are refused before a task is accepted; good ones are accepted, and a device
    /// the host agent was not allowed to write fails the task as refused.
    #[tokio::test]
    async fn params_are_checked_before_the_task_and_the_authority_decides() {
        let fixture =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inventory/qemu-q35");
        let agent = Agent::new(
            AgentConfig::new("127.0.0.1:1", Trust::Insecure, Secret::default()),
            methods(&Machine::host(fixture, &[])),
            crate::logfwd::LogBuffer::new(1),
        );
        let img = json!({"id": "x", "url": "http://127.0.0.1:9/x.raw",
            "checksum": format!("sha256:{}", "0".repeat(64))});
        for bad in [
            json!({"task_id": "t1", "image": img, "device": "vda", "force": true}),
            json!({"task_id": "t1", "image": {"id": "x", "url": "http://a/b"}, "device": "vda"}),
            json!({"task_id": "t1", "image_id": "x", "image": img, "device": "vda"}),
        ] {
            let e = agent
                .clone()
                .dispatch(PrepareImage::NAME.into(), bad)
                .await
                .unwrap_err();
            assert_eq!(e.code, codes::INVALID_PARAMS, "{}", e.msg);
        }
        let e = agent
            .clone()
            .dispatch(
                CacheImages::NAME.into(),
                json!({"task_id": "t2", "images": [img],
                "devise": "vdb"}),
            )
            .await
            .unwrap_err();
        assert_eq!(e.code, codes::INVALID_PARAMS);
        let accepted = agent
            .clone()
            .dispatch(
                PrepareImage::NAME.into(),
                json!({"task_id": "t3", "image": img,
                "device": "vda"}),
            )
            .await
            .unwrap();
        assert_eq!(accepted["task_id"], "t3");
        let info = loop {
            let list = agent
                .clone()
                .dispatch(TaskList::NAME.into(), json!({}))
                .await
                .unwrap();
            let t = list["tasks"][0].clone();
            if t["state"] == "error" || t["state"] == "complete" {
                break t;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(info["code"], codes::REFUSED, "{info}");
        assert!(
            info["msg"].as_str().unwrap_or("").contains("--allow-host"),
            "{info}"
        );
    }

    /// A partition is not an image target (the image carries its own partition table).
    #[test]
    fn a_partition_is_refused_as_target() {
        let f = crate::disks::tests::sample();
        f.mountinfo(&["23 1 0:5 / /proc rw - proc proc rw"]);
        let env = ImageEnv::new(
            f.root().to_path_buf(),
            Authority::Ramdisk,
            HardwareReady::default(),
        );
        let params = PrepareImageParams {
            source: ImageSource::Cached("x".into()),
            device: "sda1".into(),
        };
        let e = prepare(
            &env,
            &params,
            &Arc::new(Progress::default()),
            &tokio_util::sync::CancellationToken::new(),
        )
        .unwrap_err();
        assert_eq!(e.code, codes::REFUSED, "{}", e.msg);
        assert!(e.msg.contains("a partition"), "{}", e.msg);
    }

    /// A spec with its checksum waived does not take a cache entry of the same id: nothing
    /// ties that entry to this spec's URLs.
    #[test]
    fn a_waived_checksum_does_not_use_the_cache() {
        let t = tempfile::tempdir().unwrap();
        let file = t.path().join("cached");
        std::fs::write(&file, b"someone else's image").unwrap();
        let mut env = ImageEnv::new(
            t.path().to_path_buf(),
            Authority::Ramdisk,
            HardwareReady::default(),
        );
        env.cache = Arc::new(Cache::new(t.path().join("mem"), None));
        env.cache.insert_for_test("x", None, file, 20);
        let spec: ImageSpec = serde_json::from_value(json!({"id": "x",
            "url": "http://127.0.0.1:9/other.raw", "insecure_skip_checksum": true}))
        .unwrap();
        let (origin, digest, cached) = origin_of(&env, &spec).unwrap();
        assert!(!cached);
        assert!(digest.is_none());
        assert!(matches!(origin, Origin::Http { .. }), "{origin:?}");
        // Named by id (image_id), the entry is what the caller asked for.
        assert!(env.cache.get("x", None).is_ok());
    }
}
