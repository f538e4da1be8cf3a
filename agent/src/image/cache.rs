//! Images kept on the machine for a later `prepare_image`: on a cache disk, or in memory
//! (files in a tmpfs directory: the ramdisk's root is RAM) up to a share of the memory
//! available.
//!
//! A cache disk is a whole disk given to `cache_images` as `device`; molar owns it from
//! then on (its contents are lost) with this layout, in bytes:
//! - `0..4096`: the table block: magic `MOLARCACHE1\n`, then the decimal length of the JSON
//!   table and `\n`, the table (`[{id, checksum, offset, bytes}]`), `\n`, and the SHA-256
//!   of the table in hex; rewritten after every image cached;
//! - from 1 MiB: the images' files as served, each at a 1 MiB-aligned offset.
//!
//! There is no filesystem (the ramdisk has no mkfs) and no partition table: the disk is
//! not shared. `prepare_image` refuses a target that holds the cache (name another disk,
//! or cache in memory): the cache is never overwritten by the image it feeds.
//!
//! Every entry is re-verified (its bytes hashed again against its digest) before it is
//! used, and when a later `cache_images` asks for it again.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use molar_protocol::image::{
    CacheImagesResult, CacheLocation, CachedImage, Digest, ImageSpec, SkippedImage,
};
use tokio_util::sync::CancellationToken;

use super::checksum::Hasher;
use super::fetch::{self, FetchOptions, Origin};
use super::sink::{DirectSink, DiskSink};
use super::{ImageError, pipeline};

/// Where a cache disk's images start, and their alignment.
pub const DISK_DATA_START: u64 = 1 << 20;
const TABLE_BLOCK: usize = 4096;
const MAGIC: &[u8] = b"MOLARCACHE1\n";

/// Share of the memory available that the in-memory cache may fill.
pub const MEMORY_SHARE: f64 = 0.5;

/// Where an entry's bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Place {
    Memory(PathBuf),
    Disk { offset: u64 },
}

#[derive(Debug, Clone)]
struct Entry {
    id: String,
    digest: Option<Digest>,
    bytes: u64,
    place: Place,
}

/// The cache disk molar owns.
#[derive(Debug, Clone)]
struct DiskArea {
    path: PathBuf,
    /// Kernel name.
    name: String,
    capacity: u64,
}

#[derive(Debug, Default)]
struct State {
    entries: Vec<Entry>,
    disk: Option<DiskArea>,
}

/// The image cache of this agent.
#[derive(Debug)]
pub struct Cache {
    memory_dir: PathBuf,
    /// Bytes the in-memory cache may hold; `None`: [`MEMORY_SHARE`] of `MemAvailable`.
    memory_limit: Option<u64>,
    state: Mutex<State>,
}

/// A cached image ready to be read by the pipeline.
#[derive(Debug, Clone)]
pub struct CachedSource {
    pub origin: Origin,
    pub digest: Option<Digest>,
    pub bytes: u64,
}

fn state(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `MemAvailable` from `/proc/meminfo`, in bytes.
fn mem_available() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Hashes `len` bytes of `path` from `offset`.
fn hash_region(path: &Path, offset: u64, len: u64, digest: &Digest) -> io::Result<Digest> {
    let f = File::open(path)?;
    let mut h = Hasher::new(digest.algo);
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < len {
        let n = (len - at).min(buf.len() as u64) as usize;
        f.read_exact_at(&mut buf[..n], offset + at)?;
        h.update(&buf[..n]);
        at += n as u64;
    }
    Ok(h.finish())
}

/// A directory in RAM for the in-memory cache: `molar-image-cache` under the first of
/// `/dev/shm`, `/run` and the temp dir that is a tmpfs or ramfs (the ramdisk's root is
/// ramfs). On a host where none is, the temp dir is used and the cache may be
/// disk-backed; its size is bounded by [`MEMORY_SHARE`] of the memory available either way.
pub fn memory_dir() -> PathBuf {
    use nix::sys::statfs::{TMPFS_MAGIC, statfs};
    /// `linux/magic.h` (nix does not name it).
    const RAMFS_MAGIC: u64 = 0x8584_58f6;
    let tmp = std::env::temp_dir();
    let in_ram = |p: &Path| {
        statfs(p).is_ok_and(|s| {
            let t = s.filesystem_type();
            t == TMPFS_MAGIC || t.0 as u64 == RAMFS_MAGIC
        })
    };
    [Path::new("/dev/shm"), Path::new("/run"), tmp.as_path()]
        .into_iter()
        .find(|p| in_ram(p))
        .unwrap_or(tmp.as_path())
        .join("molar-image-cache")
}

/// Creates `dir` (mode 0700) or accepts it only when it is a real directory (not a link)
/// owned by this user and closed to others: `/dev/shm` and `/tmp` are shared.
fn own_dir(dir: &Path) -> Result<(), ImageError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let bad = |why: String| ImageError::Cache(format!("{}: {why}", dir.display()));
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(bad(format!("creating it: {e}"))),
    }
    let m = std::fs::symlink_metadata(dir).map_err(|e| bad(e.to_string()))?;
    if !m.file_type().is_dir() {
        return Err(bad("exists and is not a directory".into()));
    }
    if m.uid() != nix::unistd::geteuid().as_raw() || m.mode() & 0o077 != 0 {
        return Err(bad(
            "exists but is not a directory of this user closed to others (mode 0700)".into(),
        ));
    }
    Ok(())
}

impl Cache {
    /// An in-memory entry for `path`, as if cached (unit tests elsewhere in the crate).
    #[cfg(test)]
    pub(crate) fn insert_for_test(
        &self,
        id: &str,
        digest: Option<Digest>,
        path: PathBuf,
        bytes: u64,
    ) {
        state(&self.state).entries.push(Entry {
            id: id.to_owned(),
            digest,
            bytes,
            place: Place::Memory(path),
        });
    }

    /// A cache whose in-memory entries are files under `memory_dir`.
    pub fn new(memory_dir: PathBuf, memory_limit: Option<u64>) -> Cache {
        Cache {
            memory_dir,
            memory_limit,
            state: Mutex::new(State::default()),
        }
    }

    /// The kernel name of the cache disk, if there is one.
    pub fn disk(&self) -> Option<String> {
        state(&self.state).disk.as_ref().map(|d| d.name.clone())
    }

    /// The cached image `id` (with `digest`, when given), re-verified; an entry that fails
    /// verification is dropped.
    pub fn get(&self, id: &str, digest: Option<&Digest>) -> Result<CachedSource, ImageError> {
        let (entry, disk) = {
            let st = state(&self.state);
            let e = st
                .entries
                .iter()
                .find(|e| e.id == id && (digest.is_none() || e.digest.as_ref() == digest))
                .cloned()
                .ok_or_else(|| ImageError::NotCached(id.to_owned()))?;
            (e, st.disk.clone())
        };
        let (path, offset) = match (&entry.place, &disk) {
            (Place::Memory(p), _) => (p.clone(), 0),
            (Place::Disk { offset }, Some(d)) => (d.path.clone(), *offset),
            (Place::Disk { .. }, None) => return Err(ImageError::NotCached(id.to_owned())),
        };
        if let Some(want) = &entry.digest {
            let got = hash_region(&path, offset, entry.bytes, want).map_err(|source| {
                ImageError::Read {
                    what: format!("cached image {id} on {}", path.display()),
                    source,
                }
            })?;
            if &got != want {
                self.drop_entry(id);
                return Err(ImageError::ChecksumMismatch {
                    expected: want.to_string(),
                    got: got.to_string(),
                });
            }
        }
        Ok(CachedSource {
            origin: Origin::Local {
                path,
                offset,
                len: entry.bytes,
            },
            digest: entry.digest,
            bytes: entry.bytes,
        })
    }

    fn drop_entry(&self, id: &str) {
        let mut st = state(&self.state);
        if let Some(i) = st.entries.iter().position(|e| e.id == id) {
            let e = st.entries.remove(i);
            if let Place::Memory(p) = e.place {
                let _ = std::fs::remove_file(p);
            }
        }
    }

    /// `cache_images`: `images` in priority order; `disk` the cache disk (path and kernel
    /// name, already cleared by the safety checks) or `None` for memory.
    pub fn cache(
        &self,
        images: &[ImageSpec],
        disk: Option<(PathBuf, String)>,
        options: &FetchOptions,
        progress: &Arc<pipeline::Progress>,
        cancel: &CancellationToken,
    ) -> Result<CacheImagesResult, ImageError> {
        let mut result = CacheImagesResult::default();
        // Switching between disk and memory, or to another disk, drops the old cache.
        {
            let mut st = state(&self.state);
            let same = match (&st.disk, &disk) {
                (None, None) => true,
                (Some(a), Some((_, n))) => &a.name == n,
                _ => false,
            };
            if !same {
                for e in std::mem::take(&mut st.entries) {
                    if let Place::Memory(p) = &e.place {
                        let _ = std::fs::remove_file(p);
                    }
                    result.evicted.push(e.id);
                }
                st.disk = None;
            }
            // Entries no longer asked for make room.
            let wanted: Vec<&str> = images.iter().map(|i| i.id.as_str()).collect();
            let (keep, drop): (Vec<Entry>, Vec<Entry>) = std::mem::take(&mut st.entries)
                .into_iter()
                .partition(|e| wanted.contains(&e.id.as_str()));
            st.entries = keep;
            for e in drop {
                if let Place::Memory(p) = &e.place {
                    let _ = std::fs::remove_file(p);
                }
                result.evicted.push(e.id);
            }
        }
        let capacity = match &disk {
            Some((path, name)) => {
                let f = crate::directio::open(path).map_err(|source| ImageError::Open {
                    device: path.display().to_string(),
                    source,
                })?;
                let cap = crate::hw::block::size_bytes(&f)
                    .or_else(|_| f.metadata().map(|m| m.len()))
                    .map_err(|e| ImageError::Cache(format!("sizing {}: {e}", path.display())))?;
                drop(f);
                let mut st = state(&self.state);
                if st.disk.is_none() {
                    crate::disks::zeroed::forget(name);
                    super::forget_written(name);
                    st.disk = Some(DiskArea {
                        path: path.clone(),
                        name: name.clone(),
                        capacity: cap,
                    });
                    st.entries.clear();
                }
                cap.saturating_sub(DISK_DATA_START)
            }
            None => {
                own_dir(&self.memory_dir)?;
                let used: u64 = state(&self.state).entries.iter().map(|e| e.bytes).sum();
                self.memory_limit
                    .unwrap_or_else(|| (mem_available() as f64 * MEMORY_SHARE) as u64 + used)
            }
        };
        result.capacity_bytes = capacity;
        for (rank, spec) in images.iter().enumerate() {
            if cancel.is_cancelled() {
                return Err(ImageError::Cancelled);
            }
            match self.cache_one(spec, rank, images, capacity, options, progress, cancel) {
                Ok((c, evicted)) => {
                    result.evicted.extend(evicted);
                    result.cached.push(c);
                }
                Err(ImageError::Cancelled) => return Err(ImageError::Cancelled),
                Err(e) => result.skipped.push(SkippedImage {
                    id: spec.id.clone(),
                    code: match e.code() {
                        "checksum_mismatch" => "checksum_mismatch",
                        "unreachable" | "checksum_unavailable" => "unreachable",
                        "no_room" => "no_room",
                        _ => "failed",
                    }
                    .to_owned(),
                    reason: e.to_string(),
                }),
            }
        }
        let disk = state(&self.state).disk.clone();
        if let Some(d) = disk {
            self.write_table(&d)?;
        }
        result.used_bytes = state(&self.state).entries.iter().map(|e| e.bytes).sum();
        Ok(result)
    }

    #[allow(clippy::too_many_arguments)]
    fn cache_one(
        &self,
        spec: &ImageSpec,
        rank: usize,
        images: &[ImageSpec],
        capacity: u64,
        options: &FetchOptions,
        progress: &Arc<pipeline::Progress>,
        cancel: &CancellationToken,
    ) -> Result<(CachedImage, Vec<String>), ImageError> {
        let mut options = options.clone();
        options.ca_pem = spec.ca_pem.clone();
        let digest = pipeline::resolve_digest(spec, &options)?;
        let disk = state(&self.state).disk.clone();
        let location = if disk.is_some() {
            CacheLocation::Disk
        } else {
            CacheLocation::Memory
        };
        let cached = |bytes, already| CachedImage {
            id: spec.id.clone(),
            bytes,
            checksum: digest.as_ref().map(|d| d.to_string()),
            location,
            device: disk.as_ref().map(|d| d.path.display().to_string()),
            already,
        };
        // Already there: re-verified, kept. Without a digest nothing ties an entry of
        // this id to this spec: fetched again.
        let present = digest.is_some()
            && state(&self.state)
                .entries
                .iter()
                .any(|e| e.id == spec.id && e.digest == digest);
        if present {
            match self.get(&spec.id, digest.as_ref()) {
                Ok(s) => return Ok((cached(s.bytes, true), Vec::new())),
                Err(ImageError::ChecksumMismatch { .. }) => {} // dropped; fetched again
                Err(e) => return Err(e),
            }
        }
        self.drop_entry(&spec.id);
        let size = match spec.size {
            Some(s) => s,
            None => {
                let http = fetch::Http::new(&options)?;
                http.probe(&spec.urls)?.1.ok_or_else(|| {
                    ImageError::Cache("the server does not say the image's size".into())
                })?
            }
        };
        // Room: evict lower-priority entries (later in the list) if that makes enough.
        let mut evicted = Vec::new();
        let (offset, room) = self.room(size, capacity);
        let offset = if room >= size {
            offset
        } else {
            let lower: Vec<String> = images[rank + 1..].iter().map(|i| i.id.clone()).collect();
            let freeable: u64 = state(&self.state)
                .entries
                .iter()
                .filter(|e| lower.contains(&e.id))
                .map(|e| e.bytes.next_multiple_of(DISK_DATA_START))
                .sum();
            if room + freeable < size {
                return Err(ImageError::NoRoom {
                    needed: size,
                    free: room,
                    capacity,
                });
            }
            for id in lower.iter().rev() {
                if self.room(size, capacity).1 >= size {
                    break;
                }
                if state(&self.state).entries.iter().any(|e| &e.id == id) {
                    self.drop_entry(id);
                    evicted.push(id.clone());
                }
            }
            let (offset, room) = self.room(size, capacity);
            if room < size {
                return Err(ImageError::NoRoom {
                    needed: size,
                    free: room,
                    capacity,
                });
            }
            offset
        };
        progress.fetch.fetched.store(0, Ordering::Relaxed);
        let mut source = fetch::start(
            Origin::Http {
                urls: spec.urls.clone(),
                options: options.clone(),
            },
            digest.as_ref().map(|d| d.algo),
            Some(size),
            progress.fetch.clone(),
            cancel.clone(),
        );
        let place =
            match &disk {
                Some(d) => {
                    let mut sink = DirectSink::open(&d.path, false, None, Arc::new(|_| {}))
                        .map_err(|source| ImageError::Open {
                            device: d.path.display().to_string(),
                            source,
                        })?;
                    copy(&mut source, |at, data| sink.write_at(offset + at, data))?;
                    sink.finish().map_err(|source| ImageError::Write {
                        device: d.path.display().to_string(),
                        source,
                    })?;
                    Place::Disk { offset }
                }
                None => {
                    let path = self.memory_dir.join(format!("{rank}-{}", spec.id));
                    let mut f = File::create(&path).map_err(|source| ImageError::Write {
                        device: path.display().to_string(),
                        source,
                    })?;
                    let r = copy(&mut source, |_, data| f.write_all(data));
                    if r.is_err() {
                        let _ = std::fs::remove_file(&path);
                    }
                    r?;
                    Place::Memory(path)
                }
            };
        let fetched = match source.take_outcome() {
            Some(Ok(f)) => f,
            Some(Err(e)) => {
                discard(&place);
                return Err(e.into());
            }
            None => {
                discard(&place);
                return Err(ImageError::Internal(
                    "the fetch ended without an outcome".into(),
                ));
            }
        };
        if let (Some(want), Some(got)) = (&digest, &fetched.digest)
            && want != got
        {
            discard(&place);
            return Err(ImageError::ChecksumMismatch {
                expected: want.to_string(),
                got: got.to_string(),
            });
        }
        state(&self.state).entries.push(Entry {
            id: spec.id.clone(),
            digest: digest.clone(),
            bytes: fetched.bytes,
            place,
        });
        Ok((cached(fetched.bytes, false), evicted))
    }

    /// Where an image of `size` bytes would go and how much room there is for it: on the
    /// disk, the largest gap after the data start; in memory, what the limit leaves.
    fn room(&self, size: u64, capacity: u64) -> (u64, u64) {
        let st = state(&self.state);
        match &st.disk {
            None => {
                let used: u64 = st.entries.iter().map(|e| e.bytes).sum();
                (0, capacity.saturating_sub(used))
            }
            Some(d) => {
                let mut taken: Vec<(u64, u64)> = st
                    .entries
                    .iter()
                    .filter_map(|e| match e.place {
                        Place::Disk { offset } => {
                            Some((offset, offset + e.bytes.next_multiple_of(DISK_DATA_START)))
                        }
                        Place::Memory(_) => None,
                    })
                    .collect();
                taken.sort_unstable();
                let mut best = (DISK_DATA_START, 0u64);
                let mut at = DISK_DATA_START;
                for (s, e) in taken.iter().copied().chain([(d.capacity, d.capacity)]) {
                    let gap = s.saturating_sub(at);
                    if gap >= size {
                        return (at, gap);
                    }
                    if gap > best.1 {
                        best = (at, gap);
                    }
                    at = at.max(e);
                }
                best
            }
        }
    }

    /// Rewrites the cache disk's table block (see the module documentation).
    fn write_table(&self, d: &DiskArea) -> Result<(), ImageError> {
        let table: Vec<serde_json::Value> = state(&self.state)
            .entries
            .iter()
            .filter_map(|e| match e.place {
                Place::Disk { offset } => Some(serde_json::json!({
                    "id": e.id,
                    "checksum": e.digest.as_ref().map(|d| d.to_string()),
                    "offset": offset,
                    "bytes": e.bytes,
                })),
                Place::Memory(_) => None,
            })
            .collect();
        let json = serde_json::to_vec(&table).map_err(|e| ImageError::Internal(e.to_string()))?;
        let mut block = Vec::with_capacity(TABLE_BLOCK);
        block.extend_from_slice(MAGIC);
        block.extend_from_slice(format!("{}\n", json.len()).as_bytes());
        block.extend_from_slice(&json);
        block.push(b'\n');
        let mut h = Hasher::new(molar_protocol::image::HashAlgo::Sha256);
        h.update(&json);
        block.extend_from_slice(hex::encode(h.finish().bytes).as_bytes());
        if block.len() > TABLE_BLOCK {
            return Err(ImageError::Cache(format!(
                "the cache table needs {} bytes, more than its {TABLE_BLOCK}-byte block",
                block.len()
            )));
        }
        block.resize(TABLE_BLOCK, 0);
        let mut sink =
            DirectSink::open(&d.path, false, None, Arc::new(|_| {})).map_err(|source| {
                ImageError::Open {
                    device: d.path.display().to_string(),
                    source,
                }
            })?;
        let w = |source| ImageError::Write {
            device: d.path.display().to_string(),
            source,
        };
        sink.write_at(0, &block).map_err(w)?;
        sink.finish().map_err(w)?;
        Ok(())
    }
}

/// One image in a cache disk's table: `(id, checksum, offset, bytes)`.
pub type TableRow = (String, Option<String>, u64, u64);

/// Reads a cache disk's table block, `None` when the block is not a valid table (another
/// disk, or a torn write).
pub fn read_table(block: &[u8]) -> Option<Vec<TableRow>> {
    let rest = block.strip_prefix(MAGIC)?;
    let nl = rest.iter().position(|b| *b == b'\n')?;
    let len: usize = std::str::from_utf8(&rest[..nl]).ok()?.parse().ok()?;
    let json = rest.get(nl + 1..nl + 1 + len)?;
    let sum = rest.get(nl + 2 + len..nl + 2 + len + 64)?;
    let mut h = Hasher::new(molar_protocol::image::HashAlgo::Sha256);
    h.update(json);
    if hex::encode(h.finish().bytes).as_bytes() != sum {
        return None;
    }
    let v: Vec<serde_json::Value> = serde_json::from_slice(json).ok()?;
    v.iter()
        .map(|e| {
            Some((
                e.get("id")?.as_str()?.to_owned(),
                e.get("checksum")
                    .and_then(|c| c.as_str())
                    .map(str::to_owned),
                e.get("offset")?.as_u64()?,
                e.get("bytes")?.as_u64()?,
            ))
        })
        .collect()
}

fn discard(place: &Place) {
    if let Place::Memory(p) = place {
        let _ = std::fs::remove_file(p);
    }
}

/// Copies the fetched bytes through `put(offset, data)`.
fn copy(
    source: &mut fetch::Source,
    mut put: impl FnMut(u64, &[u8]) -> io::Result<()>,
) -> Result<u64, ImageError> {
    use std::io::Read;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    loop {
        let n = match source.read(&mut buf) {
            Ok(0) => return Ok(at),
            Ok(n) => n,
            // The outcome says why.
            Err(_) => return Ok(at),
        };
        put(at, &buf[..n]).map_err(|source| ImageError::Write {
            device: "the cache".into(),
            source,
        })?;
        at += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_memory_dir_is_ours_and_closed() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("c");
        own_dir(&d).unwrap();
        let mode = std::fs::metadata(&d).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        own_dir(&d).unwrap();
        // Someone else's: a link planted in a shared directory, or an open directory.
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&d, &link).unwrap();
        assert!(
            own_dir(&link)
                .unwrap_err()
                .to_string()
                .contains("not a directory")
        );
        let open = t.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(own_dir(&open).unwrap_err().to_string().contains("0700"));
        assert!(memory_dir().ends_with("molar-image-cache"));
    }
}
