//! ATA commands through SCSI generic (`SG_IO`) with ATA PASS-THROUGH(16) CDBs (SAT-4).
//!
//! Owns the `sg_io_hdr` ioctl, the CDB encoding of IDENTIFY DEVICE and the Security feature
//! set commands used by secure erase (SET PASSWORD, ERASE PREPARE, ERASE UNIT, DISABLE
//! PASSWORD, UNLOCK), the decoding of IDENTIFY data (ACS-4 words 82, 89, 90, 128) and of
//! sense data (fixed and descriptor format, ATA Status Return descriptor). CDBs and the
//! 512-byte password blocks are plain values, unit-tested byte by byte.
//!
//! Works on the block device of a disk behind libata or a SAT-capable HBA (`/dev/sdX`).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::time::Duration;

/// ATA command opcodes (ACS-4).
pub mod command {
    pub const IDENTIFY_DEVICE: u8 = 0xEC;
    pub const SECURITY_SET_PASSWORD: u8 = 0xF1;
    pub const SECURITY_UNLOCK: u8 = 0xF2;
    pub const SECURITY_ERASE_PREPARE: u8 = 0xF3;
    pub const SECURITY_ERASE_UNIT: u8 = 0xF4;
    pub const SECURITY_DISABLE_PASSWORD: u8 = 0xF6;
}

#[derive(Debug, thiserror::Error)]
pub enum AtaError {
    #[error("ata {what}: SG_IO: {source}")]
    Ioctl {
        what: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("ata {what}: device reported {sense}")]
    Sense { what: &'static str, sense: Sense },
    #[error(
        "ata {what}: transport error (scsi status {status:#04x}, host {host:#06x}, driver {driver:#06x})"
    )]
    Transport {
        what: &'static str,
        status: u8,
        host: u16,
        driver: u16,
    },
    #[error("ata {what}: invalid identify data")]
    Data { what: &'static str },
}

impl AtaError {
    /// Stable protocol error code.
    pub fn code(&self) -> &'static str {
        match self {
            AtaError::Ioctl { .. } => "ata_ioctl_failed",
            AtaError::Sense { sense, .. } if sense.is_aborted() => "ata_command_aborted",
            AtaError::Sense { .. } => "ata_command_failed",
            AtaError::Transport { .. } => "ata_transport_error",
            AtaError::Data { .. } => "ata_bad_data",
        }
    }
    pub fn errno(&self) -> Option<nix::Error> {
        match self {
            AtaError::Ioctl { source, .. } => Some(*source),
            _ => None,
        }
    }
}

/// Decoded sense data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sense {
    pub key: u8,
    pub asc: u8,
    pub ascq: u8,
    /// ATA Error register, from the ATA Status Return descriptor (or fixed-format info).
    pub ata_error: Option<u8>,
    /// ATA Status register.
    pub ata_status: Option<u8>,
}

impl Sense {
    /// Decode fixed (0x70/0x71) or descriptor (0x72/0x73) format sense data.
    pub fn parse(sb: &[u8]) -> Option<Sense> {
        let rc = *sb.first()? & 0x7f;
        match rc {
            0x70 | 0x71 => {
                if sb.len() < 14 {
                    return None;
                }
                // SAT: for ATA PASS-THROUGH, fixed format carries ERROR in info byte 3 and
                // STATUS in info byte 4.
                let ata = (sb[2] & 0x0f == 0x01 && sb[12] == 0x00 && sb[13] == 0x1d)
                    .then(|| (sb[3], sb[4]));
                Some(Sense {
                    key: sb[2] & 0x0f,
                    asc: sb[12],
                    ascq: sb[13],
                    ata_error: ata.map(|a| a.0),
                    ata_status: ata.map(|a| a.1),
                })
            }
            0x72 | 0x73 => {
                if sb.len() < 8 {
                    return None;
                }
                let mut s = Sense {
                    key: sb[1] & 0x0f,
                    asc: sb[2],
                    ascq: sb[3],
                    ..Default::default()
                };
                let add = sb[7] as usize;
                let end = (8 + add).min(sb.len());
                let mut i = 8;
                while i + 2 <= end {
                    let code = sb[i];
                    let len = sb[i + 1] as usize;
                    if code == 0x09 && i + 13 < sb.len() && len >= 12 {
                        s.ata_error = Some(sb[i + 3]);
                        s.ata_status = Some(sb[i + 13]);
                    }
                    i += 2 + len;
                }
                Some(s)
            }
            _ => None,
        }
    }

    /// ATA ERROR register ABRT bit (command aborted: unsupported, frozen, wrong password …).
    pub fn is_aborted(&self) -> bool {
        self.ata_error.is_some_and(|e| e & 0x04 != 0)
            || (self.key == 0x0b && self.ata_error.is_none())
    }

    /// Whether the sense only reports the ATA registers of a successful command (CK_COND,
    /// "ATA PASS-THROUGH INFORMATION AVAILABLE") rather than an error: ERR and DF clear.
    pub fn is_success(&self) -> bool {
        match self.ata_status {
            Some(st) => st & 0x21 == 0 && matches!(self.key, 0x00 | 0x01),
            None => self.key == 0x00 || (self.key == 0x01 && self.asc == 0 && self.ascq == 0x1d),
        }
    }
}

impl std::fmt::Display for Sense {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let key = match self.key {
            0x00 => "no sense",
            0x01 => "recovered error",
            0x02 => "not ready",
            0x03 => "medium error",
            0x04 => "hardware error",
            0x05 => "illegal request",
            0x06 => "unit attention",
            0x07 => "data protect",
            0x0b => "aborted command",
            _ => "sense key",
        };
        write!(
            f,
            "{key} (key {:#x}, asc {:#04x}, ascq {:#04x}",
            self.key, self.asc, self.ascq
        )?;
        if let (Some(e), Some(s)) = (self.ata_error, self.ata_status) {
            write!(f, ", ata error {e:#04x}, status {s:#04x}")?;
            if e & 0x04 != 0 {
                write!(f, ": command aborted by the drive")?;
            }
        }
        write!(f, ")")
    }
}

/// ATA PASS-THROUGH protocol field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    NonData = 3,
    PioDataIn = 4,
    PioDataOut = 5,
}

/// Build an ATA PASS-THROUGH(16) CDB (opcode 85h) for a 28-bit command with `count`
/// 512-byte blocks of data (transfer length in the COUNT field).
pub fn passthrough16(protocol: Protocol, command: u8, features: u8, count: u8) -> [u8; 16] {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x85;
    cdb[1] = (protocol as u8) << 1; // MULTIPLE_COUNT 0, EXTEND 0
    cdb[2] = match protocol {
        // T_LENGTH = 2 (COUNT field), BYTE_BLOCK = 1 (blocks), CK_COND = 1 for non-data so
        // the registers come back for checking.
        Protocol::NonData => 0x20,
        // T_DIR = 1 (from device)
        Protocol::PioDataIn => 0x08 | 0x04 | 0x02,
        Protocol::PioDataOut => 0x04 | 0x02,
    };
    cdb[4] = features;
    cdb[6] = count;
    cdb[13] = 0x40; // DEVICE: LBA bit, as hdparm sends
    cdb[14] = command;
    cdb
}

/// IDENTIFY DEVICE CDB.
pub fn identify_cdb() -> [u8; 16] {
    passthrough16(Protocol::PioDataIn, command::IDENTIFY_DEVICE, 0, 1)
}

/// Which password a security command uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordKind {
    User,
    Master,
}

/// A security password (32 bytes, zero-padded). Debug never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Password([u8; 32]);

impl Password {
    /// At most 32 bytes are used.
    pub fn new(bytes: &[u8]) -> Password {
        let mut p = [0u8; 32];
        let n = bytes.len().min(32);
        p[..n].copy_from_slice(&bytes[..n]);
        Password(p)
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The 512-byte data block of SECURITY SET PASSWORD / ERASE UNIT / DISABLE PASSWORD /
/// UNLOCK (ACS-4 7.41–7.46): word 0 control bits, words 1–16 the password, and for SET
/// PASSWORD with the master password, word 17 the master password identifier.
pub fn security_block(kind: PasswordKind, password: &Password, enhanced: bool) -> [u8; 512] {
    let mut b = [0u8; 512];
    let mut w0: u16 = 0;
    if kind == PasswordKind::Master {
        w0 |= 1; // identifier: master
    }
    if enhanced {
        w0 |= 1 << 1; // ERASE UNIT: enhanced erase mode
    }
    // Bit 8 (security level) stays 0: High, so the master password can still unlock.
    b[0..2].copy_from_slice(&w0.to_le_bytes());
    b[2..34].copy_from_slice(&password.0);
    b
}

/// Decoded IDENTIFY DEVICE data (the parts secure erase needs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentifyDevice {
    pub model: String,
    pub serial: String,
    pub firmware: String,
    /// User addressable sectors (48-bit when supported).
    pub sectors: u64,
    pub security_supported: bool,
    pub security_enabled: bool,
    pub security_locked: bool,
    pub security_frozen: bool,
    pub security_count_expired: bool,
    pub enhanced_erase_supported: bool,
    /// Estimated time of SECURITY ERASE UNIT (normal / enhanced), when reported.
    pub erase_time: Option<Duration>,
    pub enhanced_erase_time: Option<Duration>,
}

fn word(d: &[u8], w: usize) -> u16 {
    u16::from_le_bytes([d[2 * w], d[2 * w + 1]])
}

/// ATA strings store two characters per word, first character in the high byte.
fn ata_string(d: &[u8], from: usize, words: usize) -> String {
    let mut s = Vec::with_capacity(words * 2);
    for w in from..from + words {
        let v = word(d, w);
        s.push((v >> 8) as u8);
        s.push((v & 0xff) as u8);
    }
    String::from_utf8_lossy(&s)
        .trim_matches(|c: char| c == ' ' || c == '\0')
        .to_owned()
}

/// Words 89/90: bit 15 set → bits 14:0 in 2-minute units, else bits 7:0; 0 = not reported;
/// the maximum value means "longer than that".
fn erase_time(w: u16) -> Option<Duration> {
    let units = if w & 0x8000 != 0 {
        w & 0x7fff
    } else {
        w & 0xff
    };
    (units != 0).then(|| Duration::from_secs(units as u64 * 120))
}

impl IdentifyDevice {
    pub fn parse(d: &[u8]) -> Option<IdentifyDevice> {
        if d.len() < 512 || word(d, 0) & 0x8000 != 0 {
            return None; // short, or not an ATA device (ATAPI)
        }
        let w82 = word(d, 82);
        let w128 = word(d, 128);
        let lba28 = (word(d, 60) as u64) | ((word(d, 61) as u64) << 16);
        let lba48 = (0..4).fold(0u64, |acc, i| acc | ((word(d, 100 + i) as u64) << (16 * i)));
        let lba48_supported = word(d, 83) & (1 << 10) != 0;
        // Word 128 is valid when word 82 says the feature set exists and bit 0 agrees.
        let sec = w82 & (1 << 1) != 0 && w128 & 1 != 0;
        Some(IdentifyDevice {
            serial: ata_string(d, 10, 10),
            firmware: ata_string(d, 23, 4),
            model: ata_string(d, 27, 20),
            sectors: if lba48_supported && lba48 != 0 {
                lba48
            } else {
                lba28
            },
            security_supported: sec,
            security_enabled: sec && w128 & (1 << 1) != 0,
            security_locked: sec && w128 & (1 << 2) != 0,
            security_frozen: sec && w128 & (1 << 3) != 0,
            security_count_expired: sec && w128 & (1 << 4) != 0,
            enhanced_erase_supported: sec && w128 & (1 << 5) != 0,
            erase_time: erase_time(word(d, 89)),
            enhanced_erase_time: erase_time(word(d, 90)),
        })
    }
}

mod ioctl {
    /// `struct sg_io_hdr` from `<scsi/sg.h>`.
    #[repr(C)]
    #[derive(Debug)]
    pub struct SgIoHdr {
        pub interface_id: libc::c_int,
        pub dxfer_direction: libc::c_int,
        pub cmd_len: u8,
        pub mx_sb_len: u8,
        pub iovec_count: u16,
        pub dxfer_len: u32,
        pub dxferp: *mut libc::c_void,
        pub cmdp: *const u8,
        pub sbp: *mut u8,
        pub timeout: u32,
        pub flags: u32,
        pub pack_id: libc::c_int,
        pub usr_ptr: *mut libc::c_void,
        pub status: u8,
        pub masked_status: u8,
        pub msg_status: u8,
        pub sb_len_wr: u8,
        pub host_status: u16,
        pub driver_status: u16,
        pub resid: libc::c_int,
        pub duration: u32,
        pub info: u32,
    }

    pub const SG_DXFER_NONE: libc::c_int = -1;
    pub const SG_DXFER_TO_DEV: libc::c_int = -2;
    pub const SG_DXFER_FROM_DEV: libc::c_int = -3;

    nix::ioctl_readwrite_bad!(sg_io, 0x2285, SgIoHdr);
}

/// Data phase of a pass-through command.
pub enum Data<'a> {
    None,
    In(&'a mut [u8]),
    Out(&'a [u8]),
}

/// Send one CDB through SG_IO. Returns the sense data when the device supplied any.
pub fn sg_io(
    file: &File,
    what: &'static str,
    cdb: &[u8; 16],
    data: Data<'_>,
    timeout: Duration,
) -> Result<Option<Sense>, AtaError> {
    let mut sense = [0u8; 64];
    let (dir, ptr, len) = match data {
        Data::None => (ioctl::SG_DXFER_NONE, std::ptr::null_mut(), 0u32),
        Data::In(b) => (
            ioctl::SG_DXFER_FROM_DEV,
            b.as_mut_ptr() as *mut libc::c_void,
            b.len() as u32,
        ),
        Data::Out(b) => (
            ioctl::SG_DXFER_TO_DEV,
            b.as_ptr() as *mut libc::c_void,
            b.len() as u32,
        ),
    };
    let mut hdr = ioctl::SgIoHdr {
        interface_id: b'S' as libc::c_int,
        dxfer_direction: dir,
        cmd_len: 16,
        mx_sb_len: sense.len() as u8,
        iovec_count: 0,
        dxfer_len: len,
        dxferp: ptr,
        cmdp: cdb.as_ptr(),
        sbp: sense.as_mut_ptr(),
        timeout: timeout.as_millis().min(u32::MAX as u128) as u32,
        flags: 0,
        pack_id: 0,
        usr_ptr: std::ptr::null_mut(),
        status: 0,
        masked_status: 0,
        msg_status: 0,
        sb_len_wr: 0,
        host_status: 0,
        driver_status: 0,
        resid: 0,
        duration: 0,
        info: 0,
    };
    // SAFETY: `hdr` is a fully initialised sg_io_hdr; cmdp points to the 16-byte CDB,
    // sbp to a 64-byte sense buffer (mx_sb_len = 64) and dxferp/dxfer_len to a buffer we
    // borrow for the whole call (mutably for data-in), all of which outlive the ioctl.
    // For data-out the kernel only reads through dxferp.
    unsafe { ioctl::sg_io(file.as_raw_fd(), &mut hdr) }
        .map_err(|source| AtaError::Ioctl { what, source })?;
    let sense = (hdr.sb_len_wr > 0)
        .then(|| Sense::parse(&sense[..hdr.sb_len_wr as usize]))
        .flatten();
    // SCSI status CHECK CONDITION (0x02) carries sense; with CK_COND it may be success.
    if let Some(s) = sense {
        if s.is_success() {
            return Ok(Some(s));
        }
        return Err(AtaError::Sense { what, sense: s });
    }
    if hdr.status & !0x02 != 0 || hdr.host_status != 0 || (hdr.driver_status & 0x0f) != 0 {
        return Err(AtaError::Transport {
            what,
            status: hdr.status,
            host: hdr.host_status,
            driver: hdr.driver_status,
        });
    }
    Ok(None)
}

/// IDENTIFY DEVICE.
pub fn identify(file: &File) -> Result<IdentifyDevice, AtaError> {
    let mut buf = [0u8; 512];
    sg_io(
        file,
        "identify device",
        &identify_cdb(),
        Data::In(&mut buf),
        Duration::from_secs(15),
    )?;
    IdentifyDevice::parse(&buf).ok_or(AtaError::Data {
        what: "identify device",
    })
}

fn security_out(
    file: &File,
    what: &'static str,
    cmd: u8,
    block: &[u8; 512],
    timeout: Duration,
) -> Result<(), AtaError> {
    let cdb = passthrough16(Protocol::PioDataOut, cmd, 0, 1);
    sg_io(file, what, &cdb, Data::Out(block), timeout).map(|_| ())
}

/// SECURITY SET PASSWORD (user password, security level high).
pub fn security_set_password(file: &File, password: &Password) -> Result<(), AtaError> {
    let block = security_block(PasswordKind::User, password, false);
    security_out(
        file,
        "security set password",
        command::SECURITY_SET_PASSWORD,
        &block,
        Duration::from_secs(30),
    )
}

/// SECURITY ERASE PREPARE: must immediately precede ERASE UNIT.
pub fn security_erase_prepare(file: &File) -> Result<(), AtaError> {
    let cdb = passthrough16(Protocol::NonData, command::SECURITY_ERASE_PREPARE, 0, 0);
    sg_io(
        file,
        "security erase prepare",
        &cdb,
        Data::None,
        Duration::from_secs(30),
    )
    .map(|_| ())
}

/// SECURITY ERASE UNIT with the user password; blocks for the whole erase.
pub fn security_erase_unit(
    file: &File,
    password: &Password,
    enhanced: bool,
    timeout: Duration,
) -> Result<(), AtaError> {
    let block = security_block(PasswordKind::User, password, enhanced);
    security_out(
        file,
        "security erase unit",
        command::SECURITY_ERASE_UNIT,
        &block,
        timeout,
    )
}

/// SECURITY DISABLE PASSWORD with the user password.
pub fn security_disable_password(file: &File, password: &Password) -> Result<(), AtaError> {
    let block = security_block(PasswordKind::User, password, false);
    security_out(
        file,
        "security disable password",
        command::SECURITY_DISABLE_PASSWORD,
        &block,
        Duration::from_secs(30),
    )
}

/// SECURITY UNLOCK with the user password.
pub fn security_unlock(file: &File, password: &Password) -> Result<(), AtaError> {
    let block = security_block(PasswordKind::User, password, false);
    security_out(
        file,
        "security unlock",
        command::SECURITY_UNLOCK,
        &block,
        Duration::from_secs(30),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sg_io_hdr_layout() {
        assert_eq!(std::mem::size_of::<ioctl::SgIoHdr>(), 88);
        assert_eq!(std::mem::offset_of!(ioctl::SgIoHdr, dxferp), 16);
        assert_eq!(std::mem::offset_of!(ioctl::SgIoHdr, timeout), 40);
        assert_eq!(std::mem::offset_of!(ioctl::SgIoHdr, usr_ptr), 56);
        assert_eq!(std::mem::offset_of!(ioctl::SgIoHdr, status), 64);
        assert_eq!(std::mem::offset_of!(ioctl::SgIoHdr, resid), 72);
    }

    #[test]
    fn identify_cdb_bytes() {
        // SAT-4 ATA PASS-THROUGH(16): 85h, PROTOCOL=4 (PIO in) → 08h, T_DIR|BYTE_BLOCK|
        // T_LENGTH=2 → 0Eh, COUNT=1, DEVICE=40h, COMMAND=ECh.
        assert_eq!(
            identify_cdb(),
            [
                0x85, 0x08, 0x0e, 0, 0, 0, 0x01, 0, 0, 0, 0, 0, 0, 0x40, 0xec, 0
            ]
        );
    }

    #[test]
    fn security_cdb_bytes() {
        // PIO data-out (5) → 0Ah; BYTE_BLOCK|T_LENGTH=2 → 06h.
        assert_eq!(
            passthrough16(Protocol::PioDataOut, command::SECURITY_SET_PASSWORD, 0, 1),
            [
                0x85, 0x0a, 0x06, 0, 0, 0, 0x01, 0, 0, 0, 0, 0, 0, 0x40, 0xf1, 0
            ]
        );
        assert_eq!(
            passthrough16(Protocol::PioDataOut, command::SECURITY_ERASE_UNIT, 0, 1)[14],
            0xf4
        );
        assert_eq!(
            passthrough16(
                Protocol::PioDataOut,
                command::SECURITY_DISABLE_PASSWORD,
                0,
                1
            )[14],
            0xf6
        );
        // Non-data (3) → 06h; CK_COND → 20h.
        assert_eq!(
            passthrough16(Protocol::NonData, command::SECURITY_ERASE_PREPARE, 0, 0),
            [
                0x85, 0x06, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x40, 0xf3, 0
            ]
        );
    }

    #[test]
    fn password_blocks() {
        let p = Password::new(b"molar-tmp");
        let b = security_block(PasswordKind::User, &p, true);
        assert_eq!(&b[0..2], &[0x02, 0x00], "user, enhanced");
        assert_eq!(&b[2..11], b"molar-tmp");
        assert!(b[11..].iter().all(|x| *x == 0));
        let b = security_block(PasswordKind::Master, &p, false);
        assert_eq!(&b[0..2], &[0x01, 0x00]);
        assert_eq!(format!("{p:?}"), "<redacted>");
        assert_eq!(Password::new(&[b'x'; 40]).0, [b'x'; 32]);
    }

    fn identify_data() -> Vec<u8> {
        let mut d = vec![0u8; 512];
        let put = |d: &mut Vec<u8>, w: usize, v: u16| {
            d[2 * w..2 * w + 2].copy_from_slice(&v.to_le_bytes())
        };
        let put_str = |d: &mut Vec<u8>, w: usize, s: &str, words: usize| {
            let mut b = s.as_bytes().to_vec();
            b.resize(words * 2, b' ');
            for i in 0..words {
                d[2 * (w + i)] = b[2 * i + 1];
                d[2 * (w + i) + 1] = b[2 * i];
            }
        };
        put_str(&mut d, 10, "S5Y1NX0R", 10);
        put_str(&mut d, 23, "2B6Q", 4);
        put_str(&mut d, 27, "Samsung SSD 870 EVO 1TB", 20);
        put(&mut d, 82, 1 << 1);
        put(&mut d, 83, 1 << 10);
        put(&mut d, 100, 0x5000);
        put(&mut d, 101, 0x0003);
        put(&mut d, 89, 2);
        put(&mut d, 90, 0x8000 | 300);
        put(&mut d, 128, 0b10_1001); // supported, frozen, enhanced
        d
    }

    #[test]
    fn identify_decoding() {
        let id = IdentifyDevice::parse(&identify_data()).unwrap();
        assert_eq!(id.model, "Samsung SSD 870 EVO 1TB");
        assert_eq!(id.serial, "S5Y1NX0R");
        assert_eq!(id.firmware, "2B6Q");
        assert_eq!(id.sectors, 0x3_5000);
        assert!(id.security_supported && id.security_frozen && id.enhanced_erase_supported);
        assert!(!id.security_enabled && !id.security_locked && !id.security_count_expired);
        assert_eq!(id.erase_time, Some(Duration::from_secs(240)));
        assert_eq!(id.enhanced_erase_time, Some(Duration::from_secs(300 * 120)));
        let mut atapi = identify_data();
        atapi[1] = 0x85;
        assert!(IdentifyDevice::parse(&atapi).is_none());
        // Without word 82 bit 1, word 128 is not trusted.
        let mut d = identify_data();
        d[164] = 0;
        assert!(!IdentifyDevice::parse(&d).unwrap().security_frozen);
    }

    #[test]
    fn sense_decoding() {
        // Descriptor format, ABORTED COMMAND, ATA Status Return descriptor with ABRT.
        let mut sb = vec![0x72, 0x0b, 0x00, 0x00, 0, 0, 0, 14];
        sb.extend_from_slice(&[0x09, 12, 0, 0x04, 0, 0, 0, 0, 0, 0, 0, 0, 0x40, 0x51]);
        let s = Sense::parse(&sb).unwrap();
        assert_eq!(
            (s.key, s.ata_error, s.ata_status),
            (0x0b, Some(0x04), Some(0x51))
        );
        assert!(s.is_aborted() && !s.is_success());
        assert!(s.to_string().contains("command aborted by the drive"));
        // Fixed format, ILLEGAL REQUEST / INVALID FIELD IN CDB.
        let mut sb = vec![0u8; 18];
        sb[0] = 0x70;
        sb[2] = 0x05;
        sb[12] = 0x24;
        let s = Sense::parse(&sb).unwrap();
        assert_eq!((s.key, s.asc, s.ata_error), (0x05, 0x24, None));
        assert!(!s.is_aborted());
        // CK_COND success: recovered error, ATA PASS-THROUGH INFORMATION AVAILABLE.
        let mut sb = vec![0x72, 0x01, 0x00, 0x1d, 0, 0, 0, 14];
        sb.extend_from_slice(&[0x09, 12, 0, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0x40, 0x50]);
        assert!(Sense::parse(&sb).unwrap().is_success());
        assert!(Sense::parse(&[0x10]).is_none());
        assert!(Sense::parse(&[]).is_none());
    }

    #[test]
    fn sg_io_on_a_plain_file_fails_with_enotty() {
        let f = tempfile::tempfile().unwrap();
        let e = identify(&f).unwrap_err();
        assert_eq!(e.errno(), Some(nix::Error::ENOTTY));
        assert_eq!(e.code(), "ata_ioctl_failed");
        assert!(e.to_string().starts_with("ata identify device: SG_IO: "));
        let p = Password::new(b"x");
        assert!(security_set_password(&f, &p).is_err());
        assert!(
            !format!(
                "{:?}",
                security_erase_unit(&f, &p, false, Duration::from_secs(1))
            )
            .contains("x\"")
        );
    }
}
