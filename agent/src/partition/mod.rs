//! Partition table edits on a whole device, by byte offset: read a GPT or MBR (dos) table and
//! add one partition at the end of the disk. The config drive is its user, and
//! `crate::boot::table` reads the written image's table through [`read`].
//!
//! Everything works on a [`Region`] of an open device (the whole disk, of the size the caller
//! measured with `BLKGETSIZE64`), never on partition device nodes: the kernel's partition
//! nodes may not exist (a loop device without partscan, a ramdisk without udev), and offsets
//! are what the tables say anyway.
//!
//! GPT (`gpt.rs`, with `gptman`): the backup header is first moved to the real end of the
//! device (an image is usually smaller than the disk it was written to, like `sgdisk -e`),
//! then the partition is added in the last free space, 1 MiB aligned, under the **lowest
//! free partition number** (what `sgdisk -n 0:...` picks: partitions 1 and 3 get a new 2);
//! existing entries keep their numbers and bytes. Both headers, both entry arrays and the
//! protective MBR are written. MBR (`mbr.rs`): a primary partition in the lowest free of the
//! four slots, after every existing partition (logical ones included), else a clear error.
//!
//! Nothing here decides whether a device may be edited: the caller has passed the
//! `authority`/`safety` gate with `Action::EditPartitions` before opening the device.

mod gpt;
mod mbr;

use std::io::{self, Read, Seek, SeekFrom, Write};

/// Partitions are placed on 1 MiB boundaries, as every partitioning tool does today.
pub const ALIGN_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    #[error("{device}: reading the partition table: {source}")]
    Io {
        device: String,
        #[source]
        source: io::Error,
    },
    #[error("{device}: no partition table (neither GPT nor MBR): write the image first")]
    NoTable { device: String },
    #[error("{device}: the GPT cannot be read: {reason}")]
    BadGpt { device: String, reason: String },
    #[error("{device}: writing the GPT: {reason}")]
    GptWrite { device: String, reason: String },
    #[error(
        "{device}: partition {number} ends at byte {end}, past the end of the device ({size} bytes)"
    )]
    BeyondEnd {
        device: String,
        number: u32,
        end: u64,
        size: u64,
    },
    #[error(
        "{device}: no room for a {wanted}-byte partition at the end of the disk ({free} bytes \
         free after the last partition)"
    )]
    NoRoom {
        device: String,
        wanted: u64,
        free: u64,
    },
    #[error("{device}: all {slots} partition slots are used")]
    NoFreeSlot { device: String, slots: u32 },
    #[error("{device}: an MBR addresses at most 2 TiB; the free space at the end lies beyond it")]
    MbrLimit { device: String },
    #[error("{device}: sector size {sector_size} is not supported (512 or 4096)")]
    SectorSize { device: String, sector_size: u64 },
}

impl PartitionError {
    /// Stable protocol error code.
    pub fn code(&self) -> &'static str {
        match self {
            PartitionError::Io { .. } => "partition_io_failed",
            PartitionError::NoTable { .. } => "no_partition_table",
            PartitionError::BadGpt { .. } | PartitionError::GptWrite { .. } => "bad_gpt",
            PartitionError::BeyondEnd { .. } => "partition_beyond_end",
            PartitionError::NoRoom { .. } | PartitionError::MbrLimit { .. } => "no_room",
            PartitionError::NoFreeSlot { .. } => "no_free_partition_slot",
            PartitionError::SectorSize { .. } => "unsupported_sector_size",
        }
    }
}

/// The device being edited: how it is named in messages, its size and its logical sector.
#[derive(Debug, Clone)]
pub struct Geometry {
    pub device: String,
    pub size_bytes: u64,
    pub sector_size: u64,
}

impl Geometry {
    fn io(&self) -> impl FnOnce(io::Error) -> PartitionError + '_ {
        move |source| PartitionError::Io {
            device: self.device.clone(),
            source,
        }
    }
}

/// Which kind of table a disk carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Gpt,
    /// The dos label: four primary slots, logical partitions in an extended one.
    Mbr,
}

/// What a partition's table entry says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Type and unique GUIDs as stored on disk (first three fields little endian).
    Gpt {
        type_guid: [u8; 16],
        unique_guid: [u8; 16],
    },
    /// The MBR type byte (`0x83`, `0xef`, ...).
    Mbr { type_byte: u8 },
}

/// One partition, as the kernel will number it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub number: u32,
    pub start_bytes: u64,
    pub size_bytes: u64,
    /// The GPT partition name (MBR partitions have none).
    pub name: Option<String>,
    pub kind: Kind,
}

/// The disk's own identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskId {
    /// The GPT disk GUID, as stored.
    Gpt([u8; 16]),
    /// The MBR disk signature (bytes 440..444), the first half of an MBR `PARTUUID`.
    Mbr(u32),
}

/// A disk's table as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub scheme: Scheme,
    pub disk_id: DiskId,
    /// Data partitions by number (an MBR's extended container is not listed; its logical
    /// partitions are, from 5).
    pub parts: Vec<Part>,
}

/// What the new partition will hold, for its type (GPT type GUID, MBR type byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    Vfat,
    Iso9660,
}

/// Reads the table of a device; every partition lies inside it.
pub fn read<D: Read + Seek>(dev: &mut D, geo: &Geometry) -> Result<Table, PartitionError> {
    check_sector(geo)?;
    let mut disk = Region::new(dev, 0, geo.size_bytes);
    match mbr::read(&mut disk, geo)? {
        mbr::Label::Protective => gpt::read(&mut disk, geo),
        mbr::Label::Dos(table) => Ok(table),
        mbr::Label::None => Err(PartitionError::NoTable {
            device: geo.device.clone(),
        }),
    }
}

/// Adds a partition of `size_bytes` (a multiple of [`ALIGN_BYTES`]) at the end of the disk,
/// named `name` on GPT; returns it as the kernel will see it.
pub fn add_at_end<D: Read + Write + Seek>(
    dev: &mut D,
    geo: &Geometry,
    size_bytes: u64,
    name: &str,
    content: Content,
) -> Result<Part, PartitionError> {
    check_sector(geo)?;
    let mut disk = Region::new(dev, 0, geo.size_bytes);
    match mbr::read(&mut disk, geo)? {
        mbr::Label::Protective => gpt::add_at_end(&mut disk, geo, size_bytes, name, content),
        mbr::Label::Dos(table) => mbr::add_at_end(&mut disk, geo, &table, size_bytes, content),
        mbr::Label::None => Err(PartitionError::NoTable {
            device: geo.device.clone(),
        }),
    }
}

fn check_sector(geo: &Geometry) -> Result<(), PartitionError> {
    if geo.sector_size != 512 && geo.sector_size != 4096 {
        return Err(PartitionError::SectorSize {
            device: geo.device.clone(),
            sector_size: geo.sector_size,
        });
    }
    Ok(())
}

/// A byte range of a device as a stream of its own: offset 0 is `start`, the end is `len`
/// (what `SeekFrom::End` measures, so `gptman` and `fatfs` see the size the caller measured,
/// not what a seek on the device would say), and nothing past it can be written.
#[derive(Debug)]
pub struct Region<'a, F> {
    inner: &'a mut F,
    start: u64,
    len: u64,
    pos: u64,
}

impl<'a, F: Seek> Region<'a, F> {
    pub fn new(inner: &'a mut F, start: u64, len: u64) -> Region<'a, F> {
        Region {
            inner,
            start,
            len,
            pos: 0,
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Writes zeros over the whole region (wipes what an earlier filesystem left).
    pub fn zero(&mut self) -> io::Result<()>
    where
        F: Write,
    {
        let chunk = vec![0u8; 1 << 20];
        self.seek(SeekFrom::Start(0))?;
        let mut left = self.len;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            self.write_all(&chunk[..n])?;
            left -= n as u64;
        }
        self.seek(SeekFrom::Start(0))?;
        Ok(())
    }

    fn place(&mut self) -> io::Result<()> {
        self.inner.seek(SeekFrom::Start(self.start + self.pos))?;
        Ok(())
    }
}

impl<F: Read + Seek> Read for Region<'_, F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.place()?;
        let got = self.inner.read(&mut buf[..n])?;
        self.pos += got as u64;
        Ok(got)
    }
}

impl<F: Write + Seek> Write for Region<'_, F> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let left = self.len.saturating_sub(self.pos);
        if left == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("write past the end of a {}-byte region", self.len),
            ));
        }
        let n = (buf.len() as u64).min(left) as usize;
        self.place()?;
        let put = self.inner.write(&buf[..n])?;
        self.pos += put as u64;
        Ok(put)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<F: Seek> Seek for Region<'_, F> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match target {
            Some(p) => {
                self.pos = p;
                Ok(p)
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the region",
            )),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
