//! The config drive `standbye.run_image` writes (and `molar-agent configdrive write`): a
//! filesystem labelled `config-2` that cloud-init's ConfigDrive datasource and the other
//! readers of the OpenStack layout find by label, on a partition at the end of the disk.
//!
//! From documents ([`ConfigDrive::Contents`]) it builds `openstack/latest/` and the dated
//! version `openstack/2018-08-27/` (what the reference family writes), each holding
//! `meta_data.json`, `network_data.json`, `vendor_data2.json` and, when given, `user_data`:
//! FAT by default (`vfat.rs`, written in place on the partition), ISO 9660 on request
//! (`iso.rs`). A ready image ([`ConfigDrive::Image`], `image.rs`) is decoded with bounds and
//! must already be such a filesystem; its own format is reported, whatever was asked.
//! [`ConfigDrive::Fetch`] is refused by [`write`] ("not supported yet"): a caller holding
//! the image fetcher downloads the file (bounded, checksum verified) and hands the bytes to
//! [`write_fetched`], which treats them like an inline image.
//!
//! Where it goes ([`crate::partition`]): an existing `config-2` partition (by GPT name, or
//! by filesystem label) is rewritten in place when big enough; otherwise a new partition
//! sized to the content (at least 8 MiB for FAT, at most 64 MiB) is added at the end of the
//! disk. The region is zeroed before the filesystem is written, so no older signature is
//! left for `blkid` to find beside the new one, and the result is probed again before
//! [`write`] returns.
//!
//! [`write`] is the gate: `Action::EditPartitions` through [`safety::select_targets_for`]
//! (authority, mounted, held, boot device ...), a whole disk only, opened `O_EXCL`.

mod image;
mod iso;
mod vfat;

use crate::authority::Action;
use crate::hw::block::{self, BlockError};
use crate::partition::{self, Content, Geometry, Part, PartitionError, Region};
use crate::safety::{self, Authority};
use molar_protocol::configdrive::{
    ConfigDrive, ConfigDriveContents, ConfigDriveFormat, MAX_CONFIG_DRIVE_BYTES,
};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

pub use molar_protocol::configdrive::ConfigDriveOutcome;

/// The version directories written, `latest` last so a reader listing the dated ones first
/// finds the newest it knows.
pub const VERSIONS: [&str; 2] = ["2018-08-27", "latest"];
/// GPT partition name of a partition this module creates.
pub const PARTITION_NAME: &str = "config-2";
/// The smallest FAT config drive partition: room for later edits, a comfortable FAT12.
pub const MIN_VFAT_BYTES: u64 = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ConfigDriveError {
    #[error("config drive on {device} refused: {reason}")]
    Refused {
        device: String,
        reason: String,
        code: &'static str,
    },
    #[error("config drive on {device}: a config drive goes on a whole disk, not a partition")]
    NotWholeDisk { device: String },
    #[error("config drive on {device}: the device is busy (mounted or opened exclusively)")]
    Busy { device: String },
    #[error("config drive on {device}: opening it: {source}")]
    Open {
        device: String,
        #[source]
        source: io::Error,
    },
    #[error("config drive on {device}: {source}")]
    Block {
        device: String,
        #[source]
        source: BlockError,
    },
    #[error("config drive: listing block devices: {0}")]
    Disks(#[from] crate::disks::DiskError),
    #[error("config drive: {0}")]
    Partition(#[from] PartitionError),
    #[error(
        "config drive on {device}: the existing config-2 partition {number} has {size} bytes, \
         the config drive needs {needed}"
    )]
    ExistingTooSmall {
        device: String,
        number: u32,
        size: u64,
        needed: u64,
    },
    #[error("config drive on {device}: writing the {format} filesystem: {source}")]
    Write {
        device: String,
        format: ConfigDriveFormat,
        #[source]
        source: io::Error,
    },
    #[error("config drive on {device}: read back, partition {number} {problem}")]
    Verify {
        device: String,
        number: u32,
        problem: String,
    },
    #[error("config_drive image: {reason}")]
    BadImage { reason: String },
    #[error("config_drive url: not supported yet (give the documents or an inline image)")]
    FetchNotSupported,
    #[error(
        "config drive: the documents need {needed} bytes, more than the {max} a config drive may have"
    )]
    TooLarge { needed: u64, max: u64 },
    #[error(
        "config drive on {device}: iso9660 cannot be read from a device with {sector_size}-byte \
         sectors (Linux isofs needs them no larger than 2048): use vfat"
    )]
    IsoOnLargeSectors { device: String, sector_size: u64 },
}

impl ConfigDriveError {
    /// Stable protocol error code.
    pub fn code(&self) -> &'static str {
        match self {
            ConfigDriveError::Refused { code, .. } => code,
            ConfigDriveError::NotWholeDisk { .. } => "not_whole_disk",
            ConfigDriveError::Busy { .. } => "device_busy",
            ConfigDriveError::Open { .. } => "open_failed",
            ConfigDriveError::Block { source, .. } => source.code(),
            ConfigDriveError::Disks(e) => e.code(),
            ConfigDriveError::Partition(e) => e.code(),
            ConfigDriveError::ExistingTooSmall { .. } => "no_room",
            ConfigDriveError::Write { .. } => "config_drive_write_failed",
            ConfigDriveError::Verify { .. } => "config_drive_verify_failed",
            ConfigDriveError::BadImage { .. } => "invalid_params",
            ConfigDriveError::FetchNotSupported => "not_supported",
            ConfigDriveError::TooLarge { .. } => "invalid_params",
            ConfigDriveError::IsoOnLargeSectors { .. } => "invalid_params",
        }
    }
}

/// What goes onto the partition, decided before the disk is touched.
enum Payload {
    Documents {
        files: Vec<(&'static str, Vec<u8>)>,
        format: ConfigDriveFormat,
    },
    Image {
        bytes: Vec<u8>,
        format: ConfigDriveFormat,
    },
}

impl Payload {
    fn new(spec: &ConfigDrive, format: ConfigDriveFormat) -> Result<Payload, ConfigDriveError> {
        match spec {
            ConfigDrive::Contents(c) => Ok(Payload::Documents {
                files: ConfigDriveContents::files(c),
                format,
            }),
            ConfigDrive::Image(text) => Payload::image(image::decode(text)?),
            ConfigDrive::Fetch { .. } => Err(ConfigDriveError::FetchNotSupported),
        }
    }

    /// A ready image's bytes, possibly gzipped.
    fn image(raw: Vec<u8>) -> Result<Payload, ConfigDriveError> {
        let (bytes, format) = image::check(image::unpack(raw)?)?;
        Ok(Payload::Image { bytes, format })
    }

    fn format(&self) -> ConfigDriveFormat {
        match self {
            Payload::Documents { format, .. } | Payload::Image { format, .. } => *format,
        }
    }

    /// Bytes the filesystem needs at least.
    fn needed(&self) -> u64 {
        match self {
            Payload::Documents {
                files,
                format: ConfigDriveFormat::Vfat,
            } => vfat::size_for(&VERSIONS, files).max(MIN_VFAT_BYTES),
            Payload::Documents {
                files,
                format: ConfigDriveFormat::Iso9660,
            } => iso::Iso::new(&VERSIONS, files).size(),
            Payload::Image { bytes, .. } => bytes.len() as u64,
        }
    }

    /// Writes the filesystem into `region` (zeroed already) of a disk with `sector_size`
    /// logical sectors (FAT's own sectors must not be smaller, or Linux refuses to mount it).
    fn write<F: Read + Write + Seek>(
        &self,
        region: &mut Region<'_, F>,
        sector_size: u64,
    ) -> io::Result<()> {
        match self {
            Payload::Documents {
                files,
                format: ConfigDriveFormat::Vfat,
            } => vfat::build(region, sector_size as u16, &VERSIONS, files),
            Payload::Documents {
                files,
                format: ConfigDriveFormat::Iso9660,
            } => {
                region.seek(io::SeekFrom::Start(0))?;
                let mut out = io::BufWriter::with_capacity(1 << 20, &mut *region);
                iso::Iso::new(&VERSIONS, files).write_to(&mut out)?;
                out.flush()
            }
            Payload::Image { bytes, .. } => {
                region.seek(io::SeekFrom::Start(0))?;
                region.write_all(bytes)
            }
        }
    }
}

fn round_mib(n: u64) -> u64 {
    n.div_ceil(partition::ALIGN_BYTES).max(1) * partition::ALIGN_BYTES
}

/// Writes the config drive onto `device` (a whole disk, by kernel name or path under `root`):
/// the gate, then [`write_on`], then fsync and a partition table re-read. `format` applies to
/// documents; a ready image keeps its own.
pub fn write(
    root: &Path,
    device: &str,
    spec: &ConfigDrive,
    format: ConfigDriveFormat,
    authority: &Authority,
) -> Result<ConfigDriveOutcome, ConfigDriveError> {
    // Bad params fail before any device is looked at.
    let payload = Payload::new(spec, format)?;
    write_gated(root, device, &payload, authority)
}

/// [`write`] for the fetched form: `raw` is the downloaded file (checksum verified by the
/// caller's fetcher), a ready image, gzipped or not, checked like an inline one.
pub fn write_fetched(
    root: &Path,
    device: &str,
    raw: Vec<u8>,
    authority: &Authority,
) -> Result<ConfigDriveOutcome, ConfigDriveError> {
    let payload = Payload::image(raw)?;
    write_gated(root, device, &payload, authority)
}

fn write_gated(
    root: &Path,
    device: &str,
    payload: &Payload,
    authority: &Authority,
) -> Result<ConfigDriveOutcome, ConfigDriveError> {
    let disks = crate::disks::enumerate(root)?;
    #[allow(clippy::redundant_closure)] // see safety::DeviceAction
    let (targets, skipped) = safety::select_targets_for(
        root,
        &disks,
        authority,
        |d| Action::EditPartitions(d),
        Some(&[device.to_owned()]),
        &[],
    );
    if let Some(s) = skipped.first() {
        return Err(ConfigDriveError::Refused {
            device: device.to_owned(),
            reason: s.refusal.to_string(),
            code: if s.refusal == safety::Refusal::NotAllowedOnHost {
                molar_protocol::codes::REFUSED
            } else {
                s.refusal.code()
            },
        });
    }
    let Some(target) = targets.first() else {
        return Err(ConfigDriveError::Refused {
            device: device.to_owned(),
            reason: "no such block device".into(),
            code: "not_found",
        });
    };
    if target.is_partition() {
        return Err(ConfigDriveError::NotWholeDisk {
            device: device.to_owned(),
        });
    }
    let name = target.dev_path().display().to_string();
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_EXCL | libc::O_CLOEXEC)
        .open(target.dev_path())
        .map_err(|source| match source.raw_os_error() {
            Some(libc::EBUSY) => ConfigDriveError::Busy {
                device: name.clone(),
            },
            _ => ConfigDriveError::Open {
                device: name.clone(),
                source,
            },
        })?;
    let block_err = |source| ConfigDriveError::Block {
        device: name.clone(),
        source,
    };
    let geo = Geometry {
        device: name.clone(),
        size_bytes: block::size_bytes(&file).map_err(block_err)?,
        sector_size: block::logical_block_size(&file).map_err(block_err)? as u64,
    };
    let mut outcome = write_payload(&mut file, &geo, payload)?;
    block::sync(&file).map_err(block_err)?;
    if let Err(e) = block::reread_partitions(&file) {
        // A loop device without partscan answers EINVAL; the table on disk is what counts
        // (the next boot reads it), the kernel's view only matters to someone using it now.
        tracing::warn!(device = %name, error = %e, "partition table written; the kernel did not re-read it");
        outcome.notes.push(format!(
            "the kernel did not re-read the partition table: {e}"
        ));
    }
    tracing::info!(
        device = %name,
        partition = outcome.partition_number,
        start = outcome.start_bytes,
        size = outcome.size_bytes,
        format = %outcome.format,
        reused = outcome.reused,
        "config drive written"
    );
    Ok(outcome)
}

/// Writes the config drive onto an open disk (`geo` says its size and sector size): the
/// part of [`write`] after the gate, on any `Read + Write + Seek` (temp files in tests).
pub fn write_on<F: Read + Write + Seek>(
    dev: &mut F,
    geo: &Geometry,
    spec: &ConfigDrive,
    format: ConfigDriveFormat,
) -> Result<ConfigDriveOutcome, ConfigDriveError> {
    let payload = Payload::new(spec, format)?;
    write_payload(dev, geo, &payload)
}

fn write_payload<F: Read + Write + Seek>(
    dev: &mut F,
    geo: &Geometry,
    payload: &Payload,
) -> Result<ConfigDriveOutcome, ConfigDriveError> {
    let needed = payload.needed();
    if needed > MAX_CONFIG_DRIVE_BYTES {
        return Err(ConfigDriveError::TooLarge {
            needed,
            max: MAX_CONFIG_DRIVE_BYTES,
        });
    }
    let format = payload.format();
    if format == ConfigDriveFormat::Iso9660 && geo.sector_size > 2048 {
        return Err(ConfigDriveError::IsoOnLargeSectors {
            device: geo.device.clone(),
            sector_size: geo.sector_size,
        });
    }
    let table = partition::read(dev, geo)?;
    let (part, reused) = match find_existing(dev, &table.parts)? {
        Some(p) if p.size_bytes < needed => {
            return Err(ConfigDriveError::ExistingTooSmall {
                device: geo.device.clone(),
                number: p.number,
                size: p.size_bytes,
                needed,
            });
        }
        Some(p) => (p, true),
        None => {
            let content = match format {
                ConfigDriveFormat::Vfat => Content::Vfat,
                ConfigDriveFormat::Iso9660 => Content::Iso9660,
            };
            let size = round_mib(needed);
            let p = partition::add_at_end(dev, geo, size, PARTITION_NAME, content)?;
            (p, false)
        }
    };
    // FAT is formatted over the whole region it is given; a large reused partition gets a
    // filesystem of the largest size this module makes, the rest left as it was.
    let region_len = part.size_bytes.min(MAX_CONFIG_DRIVE_BYTES);
    let write_err = |source| ConfigDriveError::Write {
        device: geo.device.clone(),
        format,
        source,
    };
    let mut region = Region::new(dev, part.start_bytes, region_len);
    region.zero().map_err(write_err)?;
    payload
        .write(&mut region, geo.sector_size)
        .map_err(write_err)?;
    region.flush().map_err(write_err)?;
    verify(&mut region, geo, &part, payload)?;
    Ok(ConfigDriveOutcome {
        partition_number: part.number,
        start_bytes: part.start_bytes,
        size_bytes: part.size_bytes,
        format,
        reused,
        notes: Vec::new(),
    })
}

/// A partition already holding a config drive: named `config-2` (GPT), or carrying a
/// filesystem labelled so.
fn find_existing<F: Read + Write + Seek>(
    dev: &mut F,
    parts: &[Part],
) -> Result<Option<Part>, ConfigDriveError> {
    if let Some(p) = parts.iter().find(|p| {
        p.name
            .as_deref()
            .is_some_and(|n| n.eq_ignore_ascii_case(PARTITION_NAME))
    }) {
        return Ok(Some(p.clone()));
    }
    for p in parts {
        let mut region = Region::new(dev, p.start_bytes, p.size_bytes);
        // A partition that cannot be probed is not a config drive to reuse.
        if let Ok(Some(_)) = image::config_drive_format(&mut region, p.size_bytes) {
            return Ok(Some(p.clone()));
        }
    }
    Ok(None)
}

/// Probes what was written: the filesystem and label expected, and for FAT documents the
/// meta data read back through the filesystem.
fn verify<F: Read + Write + Seek>(
    region: &mut Region<'_, F>,
    geo: &Geometry,
    part: &Part,
    payload: &Payload,
) -> Result<(), ConfigDriveError> {
    let fail = |problem: String| ConfigDriveError::Verify {
        device: geo.device.clone(),
        number: part.number,
        problem,
    };
    let len = region.len();
    match image::config_drive_format(region, len) {
        Ok(Some(f)) if f == payload.format() => {}
        Ok(other) => {
            return Err(fail(format!(
                "holds {other:?}, not a {} labelled config-2",
                payload.format()
            )));
        }
        Err(e) => return Err(fail(format!("cannot be read: {e}"))),
    }
    if let Payload::Documents {
        files,
        format: ConfigDriveFormat::Vfat,
    } = payload
    {
        let got = vfat::read_file(region, "openstack/latest/meta_data.json")
            .map_err(|e| fail(format!("meta_data.json cannot be read: {e}")))?;
        let want = files
            .iter()
            .find(|(n, _)| *n == "meta_data.json")
            .map(|(_, d)| d);
        if Some(&got) != want {
            return Err(fail("meta_data.json differs from what was written".into()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
