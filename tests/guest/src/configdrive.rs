//! Finds the config drive — the partition whose FAT volume label is `config-2`, what
//! cloud-init's ConfigDrive datasource looks for — and reads `openstack/latest/meta_data.json`
//! from it in user space. Partitions are read at their offset on the whole disk (start and
//! size from `/sys/block/DISK/PART/`), so neither partition device nodes nor a vfat module
//! are needed.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, Instant};

/// The FAT volume label of a config drive.
pub const LABEL: &str = "config-2";
/// Where the meta data lives on it.
pub const META_DATA: &str = "openstack/latest/meta_data.json";

#[derive(Debug)]
pub struct Found {
    /// `DISK partition N`.
    pub location: String,
    pub meta_data: String,
}

/// Polls the disks until one has a config drive or `wait` has passed.
pub fn wait_for_meta_data(wait: Duration) -> Result<Found, String> {
    let deadline = Instant::now() + wait;
    loop {
        let (found, seen) = scan(Path::new("/sys/block"), Path::new("/dev"));
        match found {
            Some(Ok(f)) => return Ok(f),
            Some(Err(e)) => return Err(e),
            None if Instant::now() >= deadline => {
                return Err(format!(
                    "no partition labelled {LABEL} after {} s (partitions seen: {})",
                    wait.as_secs(),
                    if seen.is_empty() {
                        "none".to_owned()
                    } else {
                        seen.join(", ")
                    }
                ));
            }
            None => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// One pass over `sys_block`: the config drive's meta data if a partition has the label
/// (an error if it has the label but not the file), and the partitions looked at.
fn scan(sys_block: &Path, dev: &Path) -> (Option<Result<Found, String>>, Vec<String>) {
    let mut seen = Vec::new();
    let Ok(disks) = fs::read_dir(sys_block) else {
        return (None, seen);
    };
    let mut disks: Vec<_> = disks.filter_map(|e| e.ok()).collect();
    disks.sort_by_key(|e| e.file_name());
    for disk in disks {
        let name = disk.file_name().to_string_lossy().into_owned();
        let Ok(parts) = fs::read_dir(disk.path()) else {
            continue;
        };
        let mut parts: Vec<_> = parts
            .filter_map(|e| e.ok())
            .filter(|p| p.path().join("partition").is_file())
            .collect();
        parts.sort_by_key(|e| e.file_name());
        for part in parts {
            let number = read_u64(&part.path().join("partition")).unwrap_or(0);
            let (Some(start), Some(size)) = (
                read_u64(&part.path().join("start")),
                read_u64(&part.path().join("size")),
            ) else {
                continue;
            };
            let location = format!("{name} partition {number}");
            seen.push(location.clone());
            let Ok(file) = File::open(dev.join(&name)) else {
                continue;
            };
            let window = Window::new(file, start * 512, size * 512);
            if let Some(result) = read_if_config_drive(window) {
                return (
                    Some(result.map(|meta_data| Found {
                        location,
                        meta_data,
                    })),
                    seen,
                );
            }
        }
    }
    (None, seen)
}

/// `None` when the window holds no FAT filesystem labelled `config-2`.
fn read_if_config_drive<T: Read + Write + Seek>(window: T) -> Option<Result<String, String>> {
    let fs = fatfs::FileSystem::new(window, fatfs::FsOptions::new()).ok()?;
    let label = fs.volume_label();
    let root_label = fs.read_volume_label_from_root_dir().ok().flatten();
    let is_config_drive = label.trim().eq_ignore_ascii_case(LABEL)
        || root_label.is_some_and(|l| l.trim().eq_ignore_ascii_case(LABEL));
    if !is_config_drive {
        return None;
    }
    let mut text = String::new();
    let read = fs
        .root_dir()
        .open_file(META_DATA)
        .and_then(|mut f| f.read_to_string(&mut text));
    Some(
        read.map(|_| text)
            .map_err(|e| format!("reading {META_DATA} on the {LABEL} partition: {e}")),
    )
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A read-only window `start..start+len` of a disk, as the `Read + Write + Seek` that
/// `fatfs` takes; writes are refused (the guest never changes its config drive).
struct Window {
    file: File,
    start: u64,
    len: u64,
    pos: u64,
}

impl Window {
    fn new(file: File, start: u64, len: u64) -> Window {
        Window {
            file,
            start,
            len,
            pos: 0,
        }
    }
}

impl Read for Window {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        if n == 0 {
            return Ok(0);
        }
        self.file.seek(SeekFrom::Start(self.start + self.pos))?;
        let got = self.file.read(&mut buf[..n])?;
        self.pos += got as u64;
        Ok(got)
    }
}

impl Write for Window {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the config drive is read only",
        ))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for Window {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match target {
            Some(t) if t <= self.len => {
                self.pos = t;
                Ok(t)
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek outside the partition",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A disk file with a FAT partition at 1 MiB, made with `fatfs` itself (the lab test
    /// checks the real `mkfs.vfat` + `mcopy` form in QEMU).
    fn disk_with_fat(label: &[u8; 11], meta: Option<&str>) -> tempfile::NamedTempFile {
        let disk = tempfile::NamedTempFile::new().unwrap();
        let file = disk.reopen().unwrap();
        file.set_len(5 << 20).unwrap();
        let mut part = RwWindow(Window::new(file, 1 << 20, 4 << 20));
        fatfs::format_volume(
            &mut part,
            fatfs::FormatVolumeOptions::new().volume_label(*label),
        )
        .unwrap();
        part.seek(SeekFrom::Start(0)).unwrap();
        if let Some(meta) = meta {
            let fs = fatfs::FileSystem::new(&mut part, fatfs::FsOptions::new()).unwrap();
            let root = fs.root_dir();
            root.create_dir("openstack").unwrap();
            root.create_dir("openstack/latest").unwrap();
            let mut f = root.create_file(META_DATA).unwrap();
            f.write_all(meta.as_bytes()).unwrap();
        }
        disk
    }

    /// Tests only: a writable window to format the fixture.
    struct RwWindow(Window);
    impl Read for RwWindow {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.0.read(buf)
        }
    }
    impl Seek for RwWindow {
        fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
            self.0.seek(to)
        }
    }
    impl Write for RwWindow {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let w = &mut self.0;
            let n = buf.len().min((w.len - w.pos) as usize);
            w.file.seek(SeekFrom::Start(w.start + w.pos))?;
            w.file.write_all(&buf[..n])?;
            w.pos += n as u64;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn sys_tree(disk_name: &str) -> tempfile::TempDir {
        let sys = tempfile::tempdir().unwrap();
        let part = sys.path().join(disk_name).join(format!("{disk_name}p2"));
        fs::create_dir_all(&part).unwrap();
        fs::write(part.join("partition"), "2\n").unwrap();
        fs::write(part.join("start"), "2048\n").unwrap();
        fs::write(part.join("size"), "8192\n").unwrap();
        sys
    }

    #[test]
    fn reads_the_meta_data_at_the_partition_offset() {
        let disk = disk_with_fat(b"CONFIG-2   ", Some("{\"uuid\": \"u-1\"}\n"));
        let dev = tempfile::tempdir().unwrap();
        fs::copy(disk.path(), dev.path().join("nvme0n1")).unwrap();
        let sys = sys_tree("nvme0n1");
        let (found, seen) = scan(sys.path(), dev.path());
        let found = found.unwrap().unwrap();
        assert_eq!(found.meta_data, "{\"uuid\": \"u-1\"}\n");
        assert_eq!(found.location, "nvme0n1 partition 2");
        assert_eq!(seen, ["nvme0n1 partition 2"]);
    }

    #[test]
    fn ignores_other_labels_and_names_a_config_drive_without_meta_data() {
        let dev = tempfile::tempdir().unwrap();
        let sys = sys_tree("vda");
        let other = disk_with_fat(b"ESP        ", Some("{}"));
        fs::copy(other.path(), dev.path().join("vda")).unwrap();
        let (found, seen) = scan(sys.path(), dev.path());
        assert!(found.is_none());
        assert_eq!(seen, ["vda partition 2"]);

        let empty = disk_with_fat(b"config-2   ", None);
        fs::copy(empty.path(), dev.path().join("vda")).unwrap();
        let err = scan(sys.path(), dev.path()).0.unwrap().unwrap_err();
        assert!(err.contains("openstack/latest/meta_data.json"), "{err}");
    }
}
