//! Disk burn-in: sequential `O_DIRECT` reads of each disk from its start, for a duration or
//! a size, judged against a minimum throughput; with verify the same region is read again
//! and the two SHA-256 digests compared. Then the disk's own health log: NVMe SMART / Health
//! Information (log page 0x02) through the admin passthrough, ATA SMART READ DATA through
//! SG_IO. READ-ONLY: nothing here opens a disk for writing.

use crate::directio::{self, AlignedBuf, CHUNK};
use crate::hw::{ata, block, nvme};
use molar_protocol::burnin::DiskHealth;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// What one read pass did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadPass {
    pub bytes: u64,
    pub elapsed: Duration,
    pub digest: Option<[u8; 32]>,
}

/// Why a read pass stopped early.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("reading at byte {offset}: {source}")]
    Io {
        offset: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("cancelled")]
    Cancelled,
}

/// The size of a block device or a regular file.
pub fn size_of(file: &File) -> std::io::Result<u64> {
    let meta = file.metadata()?;
    if meta.is_file() {
        return Ok(meta.len());
    }
    block::size_bytes(file).map_err(|e| std::io::Error::other(e.to_string()))
}

/// Reads `file` from byte 0 in [`CHUNK`] requests until `limit` bytes, its end or
/// `deadline`, whichever comes first; a digest of what was read when `digest`.
/// `progress(bytes)` after each request.
pub fn read_pass(
    file: &File,
    limit: u64,
    deadline: Option<Instant>,
    digest: bool,
    cancel: &CancellationToken,
    progress: &mut dyn FnMut(u64),
) -> Result<ReadPass, ReadError> {
    let mut buf = AlignedBuf::zeroed(CHUNK);
    let mut hasher = digest.then(Sha256::new);
    let start = Instant::now();
    let mut offset = 0u64;
    while offset < limit {
        if cancel.is_cancelled() {
            return Err(ReadError::Cancelled);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let want = (limit - offset).min(CHUNK as u64) as usize;
        // O_DIRECT reads whole blocks: round the request up, keep only what was asked.
        let aligned = want.div_ceil(directio::ALIGN) * directio::ALIGN;
        let n = file
            .read_at(&mut buf.as_mut_slice()[..aligned], offset)
            .map_err(|source| ReadError::Io { offset, source })?;
        let n = n.min(want);
        if n == 0 {
            break;
        }
        if let Some(h) = hasher.as_mut() {
            h.update(&buf.as_slice()[..n]);
        }
        offset += n as u64;
        progress(offset);
    }
    Ok(ReadPass {
        bytes: offset,
        elapsed: start.elapsed(),
        digest: hasher.map(|h| h.finalize().into()),
    })
}

/// Opens `path` read-only (direct where possible).
pub fn open(path: &Path) -> std::io::Result<File> {
    directio::open_read(path)
}

/// Decodes the SMART / Health Information log (NVMe base spec, log page 0x02, 512 bytes).
pub fn parse_nvme_smart(d: &[u8]) -> Option<DiskHealth> {
    if d.len() < 512 {
        return None;
    }
    let u128le = |o: usize| u128::from_le_bytes(d[o..o + 16].try_into().unwrap_or([0; 16]));
    Some(DiskHealth {
        source: "nvme".into(),
        critical_warning: Some(d[0]),
        percentage_used: Some(d[5]),
        media_errors: Some(u64::try_from(u128le(160)).unwrap_or(u64::MAX)),
        ..DiskHealth::default()
    })
}

/// Reads the NVMe SMART / Health log for the whole controller.
pub fn nvme_smart(file: &File) -> Result<DiskHealth, nvme::NvmeError> {
    let mut buf = vec![0u8; 512];
    nvme::admin_command(
        file.as_fd(),
        "smart/health log",
        nvme::AdminCommand::get_log_page(0x02, nvme::NSID_ALL, 512, 0),
        Some(&mut buf),
    )?;
    parse_nvme_smart(&buf).ok_or(nvme::NvmeError::Data {
        what: "smart/health log",
    })
}

/// ATA SMART attributes that mean media trouble when their raw value is not zero.
const REALLOCATED: u8 = 5;
const PENDING: u8 = 197;
const UNCORRECTABLE: u8 = 198;

/// Decodes SMART READ DATA (512 bytes: 30 attribute entries of 12 bytes from byte 2) and,
/// when given, SMART READ THRESHOLDS (same layout, threshold at byte 1 of each entry).
pub fn parse_ata_smart(data: &[u8], thresholds: Option<&[u8]>) -> Option<DiskHealth> {
    if data.len() < 362 {
        return None;
    }
    let mut h = DiskHealth {
        source: "ata".into(),
        ..DiskHealth::default()
    };
    for e in 0..30 {
        let a = &data[2 + e * 12..2 + (e + 1) * 12];
        let id = a[0];
        if id == 0 {
            continue;
        }
        let current = a[3];
        let mut raw = [0u8; 8];
        raw[..6].copy_from_slice(&a[5..11]);
        let raw = u64::from_le_bytes(raw);
        match id {
            REALLOCATED => h.reallocated = Some(raw),
            PENDING => h.pending = Some(raw),
            UNCORRECTABLE => h.uncorrectable = Some(raw),
            _ => {}
        }
        if let Some(t) = thresholds.filter(|t| t.len() >= 362) {
            let te = &t[2 + e * 12..2 + (e + 1) * 12];
            // A threshold of 0 means "never fails"; 0xFE/0xFF are reserved.
            let thr = te[1];
            if te[0] == id && thr != 0 && thr < 0xFE && current != 0 && current <= thr {
                h.failing_attributes.push(id);
            }
        }
    }
    Some(h)
}

/// SMART READ DATA (`sub` 0xD0) or READ THRESHOLDS (0xD1) through ATA PASS-THROUGH(16).
fn ata_smart_read(file: &File, sub: u8) -> Result<[u8; 512], ata::AtaError> {
    let mut cdb = ata::passthrough16(ata::Protocol::PioDataIn, 0xB0, sub, 1);
    cdb[10] = 0x4F; // LBA mid
    cdb[12] = 0xC2; // LBA high: the SMART signature
    let mut buf = [0u8; 512];
    ata::sg_io(
        file,
        "smart read",
        &cdb,
        ata::Data::In(&mut buf),
        Duration::from_secs(15),
    )?;
    Ok(buf)
}

/// The SMART attributes of an ATA disk.
pub fn ata_smart(file: &File) -> Result<DiskHealth, ata::AtaError> {
    let data = ata_smart_read(file, 0xD0)?;
    let thresholds = ata_smart_read(file, 0xD1).ok();
    parse_ata_smart(&data, thresholds.as_ref().map(|t| &t[..]))
        .ok_or(ata::AtaError::Data { what: "smart read" })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_file_is_read_to_its_end_or_its_limit_with_a_stable_digest() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let data: Vec<u8> = (0..(CHUNK + 5000)).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).unwrap();
        let file = open(f.path()).unwrap();
        assert_eq!(size_of(&file).unwrap(), data.len() as u64);
        let c = CancellationToken::new();
        let mut seen = Vec::new();
        let a = read_pass(&file, u64::MAX, None, true, &c, &mut |b| seen.push(b)).unwrap();
        assert_eq!(a.bytes, data.len() as u64);
        assert_eq!(seen, [CHUNK as u64, data.len() as u64]);
        let want: [u8; 32] = Sha256::digest(&data).into();
        assert_eq!(a.digest, Some(want));
        let b = read_pass(&file, 10_000, None, true, &c, &mut |_| {}).unwrap();
        assert_eq!(b.bytes, 10_000);
        assert_eq!(b.digest, Some(Sha256::digest(&data[..10_000]).into()));
        let past = read_pass(
            &file,
            u64::MAX,
            Some(Instant::now()),
            false,
            &c,
            &mut |_| {},
        );
        assert_eq!(past.unwrap().bytes, 0);
        c.cancel();
        assert!(matches!(
            read_pass(&file, u64::MAX, None, false, &c, &mut |_| {}),
            Err(ReadError::Cancelled)
        ));
    }

    #[test]
    fn nvme_smart_log_fields_are_decoded() {
        let mut d = vec![0u8; 512];
        d[0] = 0x04;
        d[5] = 17;
        d[160] = 0x02;
        d[161] = 0x01;
        let h = parse_nvme_smart(&d).unwrap();
        assert_eq!(h.critical_warning, Some(4));
        assert_eq!(h.percentage_used, Some(17));
        assert_eq!(h.media_errors, Some(0x102));
        d[175] = 1; // beyond u64: saturates
        assert_eq!(parse_nvme_smart(&d).unwrap().media_errors, Some(u64::MAX));
        assert!(parse_nvme_smart(&d[..100]).is_none());
    }

    fn attr(buf: &mut [u8], slot: usize, id: u8, current: u8, raw: u64) {
        let a = &mut buf[2 + slot * 12..2 + (slot + 1) * 12];
        a[0] = id;
        a[3] = current;
        a[5..11].copy_from_slice(&raw.to_le_bytes()[..6]);
    }

    #[test]
    fn ata_smart_attributes_and_thresholds_are_decoded() {
        let mut data = vec![0u8; 512];
        attr(&mut data, 0, 1, 100, 12345); // raw read error rate: not critical
        attr(&mut data, 1, REALLOCATED, 90, 8);
        attr(&mut data, 2, PENDING, 100, 0);
        attr(&mut data, 3, UNCORRECTABLE, 100, 0);
        let mut thr = vec![0u8; 512];
        for (slot, id, t) in [(0, 1, 6), (1, REALLOCATED, 90), (2, PENDING, 0)] {
            thr[2 + slot * 12] = id;
            thr[2 + slot * 12 + 1] = t;
        }
        let h = parse_ata_smart(&data, Some(&thr)).unwrap();
        assert_eq!(h.reallocated, Some(8));
        assert_eq!(h.pending, Some(0));
        assert_eq!(h.uncorrectable, Some(0));
        assert_eq!(h.failing_attributes, [REALLOCATED]);
        assert_eq!(
            h.problems(),
            ["8 reallocated sectors", "attributes at threshold: [5]"]
        );
        let h = parse_ata_smart(&data, None).unwrap();
        assert!(h.failing_attributes.is_empty());
        assert!(parse_ata_smart(&data[..300], None).is_none());
    }
}
