//! NVMe admin commands through the kernel's passthrough ioctl (`NVME_IOCTL_ADMIN_CMD`).
//!
//! Owns the 72-byte `struct nvme_passthru_cmd`, the encoding of the admin commands molar
//! needs (Identify Controller/Namespace, Get Log Page, Format NVM, Sanitize) and the decoding
//! of their data into typed structs. Commands are built as plain [`AdminCommand`] values so
//! their encoding is unit-tested against the NVMe Base Specification without hardware; the
//! only `unsafe` is the ioctl itself, in `mod ioctl`.
//!
//! Works on a namespace block device (`/dev/nvme0n1`) or the controller character device
//! (`/dev/nvme0`): the kernel accepts admin commands on both.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

/// Admin opcodes (NVMe Base Spec 2.0, figure 28).
pub mod opcode {
    pub const GET_LOG_PAGE: u8 = 0x02;
    pub const IDENTIFY: u8 = 0x06;
    pub const FORMAT_NVM: u8 = 0x80;
    pub const SANITIZE: u8 = 0x84;
}

/// Namespace id meaning "all namespaces" / "the controller".
pub const NSID_ALL: u32 = 0xFFFF_FFFF;

/// Log identifier of the Sanitize Status log page.
pub const LOG_SANITIZE_STATUS: u8 = 0x81;
/// Firmware Slot Information log page.
pub const LOG_FIRMWARE_SLOT: u8 = 0x03;

#[derive(Debug, thiserror::Error)]
pub enum NvmeError {
    #[error("nvme {what}: {source}")]
    Ioctl {
        what: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("nvme {what}: command failed with status {status:#06x} ({})", status_text(*status))]
    Status { what: &'static str, status: u16 },
    #[error("nvme {what}: short or invalid data")]
    Data { what: &'static str },
}

impl NvmeError {
    /// Stable protocol error code.
    pub fn code(&self) -> &'static str {
        match self {
            NvmeError::Ioctl { .. } => "nvme_ioctl_failed",
            NvmeError::Status { .. } => "nvme_command_failed",
            NvmeError::Data { .. } => "nvme_bad_data",
        }
    }

    /// The ioctl errno, when the kernel refused the command.
    pub fn errno(&self) -> Option<nix::Error> {
        match self {
            NvmeError::Ioctl { source, .. } => Some(*source),
            _ => None,
        }
    }

    /// True when the controller answered "invalid opcode" or "invalid field": the command
    /// is not supported, as opposed to having failed.
    pub fn is_unsupported(&self) -> bool {
        matches!(self, NvmeError::Status { status, .. } if (status & 0x7ff) == 0x001 || (status & 0x7ff) == 0x002)
    }
}

/// Human text for the common generic status codes (SCT 0) and a few command-specific ones.
fn status_text(status: u16) -> &'static str {
    let sct = (status >> 8) & 0x7;
    let sc = status & 0xff;
    match (sct, sc) {
        (0, 0x01) => "invalid command opcode",
        (0, 0x02) => "invalid field in command",
        (0, 0x0b) => "invalid namespace or format",
        (0, 0x1d) => "sanitize failed",
        (0, 0x1e) => "sanitize in progress",
        (0, 0x20) => "namespace is write protected",
        (1, 0x0a) => "invalid format",
        (1, 0x15) => "namespace insufficient capacity",
        (1, 0x23) => "sanitize prohibited while persistent memory region is enabled",
        (2, _) => "media or data integrity error",
        _ => "see nvme base specification",
    }
}

/// An admin command without its data buffer: what gets encoded into the passthru struct.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AdminCommand {
    pub opcode: u8,
    pub nsid: u32,
    pub cdw10: u32,
    pub cdw11: u32,
    pub cdw12: u32,
    pub cdw13: u32,
    pub cdw14: u32,
    pub cdw15: u32,
    /// Length of the data the controller returns (0 for none).
    pub data_len: u32,
    /// 0 = the kernel's default admin timeout.
    pub timeout_ms: u32,
}

impl AdminCommand {
    /// Identify (CDW10.CNS = `cns`).
    pub fn identify(cns: u8, nsid: u32) -> AdminCommand {
        AdminCommand {
            opcode: opcode::IDENTIFY,
            nsid,
            cdw10: cns as u32,
            data_len: 4096,
            ..Default::default()
        }
    }

    /// Get Log Page: `len` bytes (multiple of 4) of log `lid` from byte `offset`.
    pub fn get_log_page(lid: u8, nsid: u32, len: u32, offset: u64) -> AdminCommand {
        let numd = (len / 4).saturating_sub(1);
        AdminCommand {
            opcode: opcode::GET_LOG_PAGE,
            nsid,
            cdw10: lid as u32 | ((numd & 0xffff) << 16),
            cdw11: numd >> 16,
            cdw12: offset as u32,
            cdw13: (offset >> 32) as u32,
            data_len: len,
            ..Default::default()
        }
    }

    /// Format NVM of namespace `nsid` to LBA format `lbaf` with secure erase setting `ses`.
    /// Protection information and metadata settings are left at 0 (none, separate buffer).
    pub fn format_nvm(nsid: u32, lbaf: u8, ses: SecureEraseSetting) -> AdminCommand {
        let lbaf = lbaf as u32;
        AdminCommand {
            opcode: opcode::FORMAT_NVM,
            nsid,
            cdw10: (lbaf & 0xf) | ((ses as u32) << 9) | (((lbaf >> 4) & 0x3) << 12),
            // A user-data erase of a large namespace can take many minutes.
            timeout_ms: 4 * 3600 * 1000,
            ..Default::default()
        }
    }

    /// Sanitize (whole NVM subsystem; the namespace id is not used).
    pub fn sanitize(action: SanitizeAction, allow_unrestricted_exit: bool) -> AdminCommand {
        let mut cdw10 = action as u32;
        if allow_unrestricted_exit {
            cdw10 |= 1 << 3;
        }
        let mut cdw11 = 0;
        if action == SanitizeAction::Overwrite {
            cdw10 |= 1 << 4; // OWPASS = 1 pass
            cdw11 = 0; // pattern: zeros
        }
        AdminCommand {
            opcode: opcode::SANITIZE,
            nsid: 0,
            cdw10,
            cdw11,
            ..Default::default()
        }
    }
}

/// Format NVM Secure Erase Settings (CDW10 bits 11:9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecureEraseSetting {
    None = 0,
    UserData = 1,
    Cryptographic = 2,
}

/// Sanitize Action (CDW10 bits 2:0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SanitizeAction {
    ExitFailureMode = 1,
    BlockErase = 2,
    Overwrite = 3,
    CryptoErase = 4,
}

/// Decoded Identify Controller data (the fields molar uses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentifyController {
    pub vid: u16,
    pub serial: String,
    pub model: String,
    pub firmware: String,
    pub cntlid: u16,
    pub version: u32,
    /// Optional Admin Command Support.
    pub oacs: u16,
    /// Sanitize Capabilities.
    pub sanicap: u32,
    /// Number of Namespaces (maximum namespace id).
    pub nn: u32,
    /// Optional NVM Command Support.
    pub oncs: u16,
    /// Format NVM Attributes.
    pub fna: u8,
    /// Firmware Updates (byte 260); see [`Frmw`].
    pub frmw: u8,
    /// Firmware Update Granularity (byte 319), in 4 KiB units; 0 and 0xff mean none given.
    pub fwug: u8,
    /// Total NVM capacity in bytes (0 when not reported).
    pub tnvmcap: u128,
}

impl IdentifyController {
    pub fn supports_format(&self) -> bool {
        self.oacs & (1 << 1) != 0
    }
    pub fn supports_security_send_receive(&self) -> bool {
        self.oacs & 1 != 0
    }
    pub fn sanitize_crypto(&self) -> bool {
        self.sanicap & 1 != 0
    }
    pub fn sanitize_block(&self) -> bool {
        self.sanicap & (1 << 1) != 0
    }
    pub fn sanitize_overwrite(&self) -> bool {
        self.sanicap & (1 << 2) != 0
    }
    /// FNA bit 0: a format applies to every namespace.
    pub fn format_applies_to_all(&self) -> bool {
        self.fna & 1 != 0
    }
    /// FNA bit 1: a secure erase (by format) applies to every namespace.
    pub fn secure_erase_applies_to_all(&self) -> bool {
        self.fna & (1 << 1) != 0
    }
    /// FNA bit 2: cryptographic erase is supported as a secure erase setting.
    pub fn crypto_erase_supported(&self) -> bool {
        self.fna & (1 << 2) != 0
    }

    /// Decode the 4096-byte Identify Controller data structure.
    pub fn parse(d: &[u8]) -> Option<IdentifyController> {
        if d.len() < 4096 {
            return None;
        }
        Some(IdentifyController {
            vid: le16(d, 0),
            serial: ascii(&d[4..24]),
            model: ascii(&d[24..64]),
            firmware: ascii(&d[64..72]),
            cntlid: le16(d, 78),
            version: le32(d, 80),
            oacs: le16(d, 256),
            tnvmcap: u128::from_le_bytes(d[280..296].try_into().ok()?),
            sanicap: le32(d, 328),
            nn: le32(d, 516),
            oncs: le16(d, 520),
            fna: d[524],
            frmw: d[260],
            fwug: d[319],
        })
    }
}

/// One LBA Format descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LbaFormat {
    /// Metadata bytes per LBA.
    pub ms: u16,
    /// LBA data size as a power of two.
    pub lbads: u8,
    /// Relative performance (0 best).
    pub rp: u8,
}

/// Decoded Identify Namespace data (the fields molar uses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentifyNamespace {
    /// Namespace size in logical blocks.
    pub nsze: u64,
    pub ncap: u64,
    pub nuse: u64,
    pub nlbaf: u8,
    /// Formatted LBA Size (raw byte).
    pub flbas: u8,
    /// Deallocate Logical Block Features.
    pub dlfeat: u8,
    pub lbaf: Vec<LbaFormat>,
    pub eui64: [u8; 8],
    pub nguid: [u8; 16],
}

impl IdentifyNamespace {
    /// Index of the LBA format in use (FLBAS bits 3:0, plus bits 6:5 as the upper bits when
    /// more than 16 formats exist).
    pub fn current_lbaf(&self) -> u8 {
        let low = self.flbas & 0xf;
        if self.nlbaf >= 16 {
            low | (((self.flbas >> 5) & 0x3) << 4)
        } else {
            low
        }
    }
    /// Bytes per logical block of the current format.
    pub fn block_size(&self) -> Option<u64> {
        let f = self.lbaf.get(self.current_lbaf() as usize)?;
        1u64.checked_shl(f.lbads as u32)
    }
    pub fn size_bytes(&self) -> Option<u64> {
        self.nsze.checked_mul(self.block_size()?)
    }
    /// DLFEAT bits 2:0 = 001: deallocated blocks read as zeroes.
    pub fn deallocated_reads_zero(&self) -> bool {
        self.dlfeat & 0x7 == 1
    }

    /// Decode the 4096-byte Identify Namespace data structure.
    pub fn parse(d: &[u8]) -> Option<IdentifyNamespace> {
        if d.len() < 4096 {
            return None;
        }
        let nlbaf = d[25];
        let count = (nlbaf as usize + 1).min(64);
        let lbaf = (0..count)
            .map(|i| {
                let v = le32(d, 128 + 4 * i);
                LbaFormat {
                    ms: (v & 0xffff) as u16,
                    lbads: ((v >> 16) & 0xff) as u8,
                    rp: ((v >> 24) & 0x3) as u8,
                }
            })
            .collect();
        Some(IdentifyNamespace {
            nsze: le64(d, 0),
            ncap: le64(d, 8),
            nuse: le64(d, 16),
            nlbaf,
            flbas: d[26],
            dlfeat: d[33],
            lbaf,
            nguid: d[104..120].try_into().ok()?,
            eui64: d[120..128].try_into().ok()?,
        })
    }
}

/// Sanitize Status log page (log 0x81).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SanitizeStatus {
    /// Progress of the running sanitize, out of 65536.
    pub sprog: u16,
    /// SSTAT bits 2:0.
    pub state: SanitizeState,
    pub overwrite_passes_done: u8,
    pub global_data_erased: bool,
    /// CDW10 of the last sanitize command.
    pub scdw10: u32,
    /// Estimated seconds (0xffffffff = no estimate) for overwrite, block and crypto erase.
    pub est_overwrite: u32,
    pub est_block: u32,
    pub est_crypto: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SanitizeState {
    NeverSanitized,
    Completed,
    InProgress,
    Failed,
    CompletedNoDeallocate,
    Reserved(u8),
}

impl SanitizeStatus {
    pub fn parse(d: &[u8]) -> Option<SanitizeStatus> {
        if d.len() < 20 {
            return None;
        }
        let sstat = le16(d, 2);
        Some(SanitizeStatus {
            sprog: le16(d, 0),
            state: match sstat & 0x7 {
                0 => SanitizeState::NeverSanitized,
                1 => SanitizeState::Completed,
                2 => SanitizeState::InProgress,
                3 => SanitizeState::Failed,
                4 => SanitizeState::CompletedNoDeallocate,
                n => SanitizeState::Reserved(n as u8),
            },
            overwrite_passes_done: ((sstat >> 3) & 0x1f) as u8,
            global_data_erased: sstat & (1 << 8) != 0,
            scdw10: le32(d, 4),
            est_overwrite: le32(d, 8),
            est_block: le32(d, 12),
            est_crypto: le32(d, 16),
        })
    }
    /// Progress as a fraction 0.0–1.0.
    pub fn fraction(&self) -> f64 {
        match self.state {
            SanitizeState::InProgress => self.sprog as f64 / 65536.0,
            SanitizeState::Completed | SanitizeState::CompletedNoDeallocate => 1.0,
            _ => 0.0,
        }
    }
}

/// FRMW, the Firmware Updates byte of Identify Controller (byte 260).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frmw {
    /// Bit 0: slot 1 holds a read-only image.
    pub slot1_read_only: bool,
    /// Bits 3:1: how many slots the controller has (1 to 7; 0 from a broken controller).
    pub slots: u8,
    /// Bit 4: Firmware Commit can activate an image without a reset.
    pub activation_without_reset: bool,
}

impl Frmw {
    pub fn decode(b: u8) -> Frmw {
        Frmw {
            slot1_read_only: b & 1 != 0,
            slots: (b >> 1) & 0x7,
            activation_without_reset: b & (1 << 4) != 0,
        }
    }
}

/// The Firmware Slot Information log page (LID 03h, 512 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirmwareSlotLog {
    /// AFI bits 2:0: the slot the running firmware was loaded from.
    pub active_slot: u8,
    /// AFI bits 6:4: the slot activated at the next controller reset; `None` when unset.
    pub next_reset_slot: Option<u8>,
    /// FRS1..FRS7: each slot's revision, `None` for an empty slot.
    pub revisions: [Option<String>; 7],
}

impl FirmwareSlotLog {
    /// Decodes the page; `None` when it is shorter than the 64 bytes that carry AFI and the
    /// seven revisions. Revisions are printable ASCII by the spec; anything else is
    /// replaced rather than trusted.
    pub fn parse(d: &[u8]) -> Option<FirmwareSlotLog> {
        if d.len() < 64 {
            return None;
        }
        let afi = d[0];
        let next = (afi >> 4) & 0x7;
        let revisions = std::array::from_fn(|i| {
            let raw = &d[8 + i * 8..16 + i * 8];
            let text: String = ascii(raw)
                .chars()
                .map(|c| {
                    if c.is_ascii_graphic() || c == ' ' {
                        c
                    } else {
                        '?'
                    }
                })
                .collect();
            (!text.is_empty()).then_some(text)
        });
        Some(FirmwareSlotLog {
            active_slot: afi & 0x7,
            next_reset_slot: (next != 0).then_some(next),
            revisions,
        })
    }
}

fn le16(d: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([d[o], d[o + 1]])
}
fn le32(d: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([d[o], d[o + 1], d[o + 2], d[o + 3]])
}
fn le64(d: &[u8], o: usize) -> u64 {
    (le32(d, o) as u64) | ((le32(d, o + 4) as u64) << 32)
}
fn ascii(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .trim_matches(|c: char| c == ' ' || c == '\0')
        .to_owned()
}

mod ioctl {
    /// `struct nvme_passthru_cmd` from `<linux/nvme_ioctl.h>` (72 bytes).
    #[repr(C)]
    #[derive(Debug, Default, Clone, Copy)]
    pub struct NvmePassthruCmd {
        pub opcode: u8,
        pub flags: u8,
        pub rsvd1: u16,
        pub nsid: u32,
        pub cdw2: u32,
        pub cdw3: u32,
        pub metadata: u64,
        pub addr: u64,
        pub metadata_len: u32,
        pub data_len: u32,
        pub cdw10: u32,
        pub cdw11: u32,
        pub cdw12: u32,
        pub cdw13: u32,
        pub cdw14: u32,
        pub cdw15: u32,
        pub timeout_ms: u32,
        pub result: u32,
    }

    const _: () = assert!(std::mem::size_of::<NvmePassthruCmd>() == 72);

    nix::ioctl_readwrite!(nvme_admin_cmd, b'N', 0x41, NvmePassthruCmd);
    nix::ioctl_none!(nvme_ioctl_id, b'N', 0x40);
}

impl AdminCommand {
    /// The command as the kernel reads it (`struct nvme_passthru_cmd`, little-endian), with
    /// `addr` as the data pointer: what tests compare byte by byte.
    pub fn to_bytes(self, addr: u64) -> [u8; 72] {
        let r = self.to_raw(addr);
        let mut b = [0u8; 72];
        b[0] = r.opcode;
        b[1] = r.flags;
        b[2..4].copy_from_slice(&r.rsvd1.to_le_bytes());
        let dwords = [
            (4, r.nsid),
            (8, r.cdw2),
            (12, r.cdw3),
            (32, r.metadata_len),
            (36, r.data_len),
            (40, r.cdw10),
            (44, r.cdw11),
            (48, r.cdw12),
            (52, r.cdw13),
            (56, r.cdw14),
            (60, r.cdw15),
            (64, r.timeout_ms),
            (68, r.result),
        ];
        for (o, v) in dwords {
            b[o..o + 4].copy_from_slice(&v.to_le_bytes());
        }
        b[16..24].copy_from_slice(&r.metadata.to_le_bytes());
        b[24..32].copy_from_slice(&r.addr.to_le_bytes());
        b
    }

    fn to_raw(self, addr: u64) -> ioctl::NvmePassthruCmd {
        ioctl::NvmePassthruCmd {
            opcode: self.opcode,
            nsid: self.nsid,
            addr,
            data_len: self.data_len,
            cdw10: self.cdw10,
            cdw11: self.cdw11,
            cdw12: self.cdw12,
            cdw13: self.cdw13,
            cdw14: self.cdw14,
            cdw15: self.cdw15,
            timeout_ms: self.timeout_ms,
            ..Default::default()
        }
    }
}

/// Send an admin command; `data` receives the controller's data (its length must be at
/// least `cmd.data_len`). Returns the command-specific result dword.
pub fn admin_command(
    fd: BorrowedFd<'_>,
    what: &'static str,
    cmd: AdminCommand,
    data: Option<&mut [u8]>,
) -> Result<u32, NvmeError> {
    let (addr, avail) = match data {
        Some(buf) => (buf.as_mut_ptr() as u64, buf.len()),
        None => (0, 0),
    };
    if (cmd.data_len as usize) > avail {
        return Err(NvmeError::Data { what });
    }
    let mut raw = cmd.to_raw(addr);
    // SAFETY: `raw` is a valid, initialised nvme_passthru_cmd that lives across the call;
    // its `addr` is either 0 with data_len 0, or points to a buffer we exclusively borrow
    // for the duration of the call whose length was checked to be ≥ data_len above, so the
    // kernel's copy-out stays inside it.
    let rc = unsafe { ioctl::nvme_admin_cmd(fd.as_raw_fd(), &mut raw) }
        .map_err(|source| NvmeError::Ioctl { what, source })?;
    if rc != 0 {
        return Err(NvmeError::Status {
            what,
            status: rc as u16,
        });
    }
    Ok(raw.result)
}

/// Identify Controller (CNS 01h).
pub fn identify_controller(file: &File) -> Result<IdentifyController, NvmeError> {
    let mut buf = vec![0u8; 4096];
    admin_command(
        file.as_fd(),
        "identify controller",
        AdminCommand::identify(1, 0),
        Some(&mut buf),
    )?;
    IdentifyController::parse(&buf).ok_or(NvmeError::Data {
        what: "identify controller",
    })
}

/// Identify Namespace (CNS 00h) for `nsid`.
pub fn identify_namespace(file: &File, nsid: u32) -> Result<IdentifyNamespace, NvmeError> {
    let mut buf = vec![0u8; 4096];
    admin_command(
        file.as_fd(),
        "identify namespace",
        AdminCommand::identify(0, nsid),
        Some(&mut buf),
    )?;
    IdentifyNamespace::parse(&buf).ok_or(NvmeError::Data {
        what: "identify namespace",
    })
}

/// Active namespace id list (CNS 02h), starting after namespace 0.
pub fn active_namespaces(file: &File) -> Result<Vec<u32>, NvmeError> {
    let mut buf = vec![0u8; 4096];
    admin_command(
        file.as_fd(),
        "identify active namespaces",
        AdminCommand::identify(2, 0),
        Some(&mut buf),
    )?;
    Ok((0..1024)
        .map(|i| le32(&buf, i * 4))
        .take_while(|n| *n != 0)
        .collect())
}

/// The namespace id of a namespace block device (`NVME_IOCTL_ID`).
pub fn namespace_id(file: &File) -> Result<u32, NvmeError> {
    // SAFETY: NVME_IOCTL_ID takes no argument and only returns an integer.
    let rc =
        unsafe { ioctl::nvme_ioctl_id(file.as_raw_fd()) }.map_err(|source| NvmeError::Ioctl {
            what: "namespace id",
            source,
        })?;
    Ok(rc as u32)
}

/// Format NVM; blocks until the controller completes it.
pub fn format_nvm(
    file: &File,
    nsid: u32,
    lbaf: u8,
    ses: SecureEraseSetting,
) -> Result<(), NvmeError> {
    admin_command(
        file.as_fd(),
        "format nvm",
        AdminCommand::format_nvm(nsid, lbaf, ses),
        None,
    )
    .map(|_| ())
}

/// Start a sanitize; it runs in the background, poll [`sanitize_status`].
pub fn sanitize(file: &File, action: SanitizeAction, ause: bool) -> Result<(), NvmeError> {
    admin_command(
        file.as_fd(),
        "sanitize",
        AdminCommand::sanitize(action, ause),
        None,
    )
    .map(|_| ())
}

/// Read the Sanitize Status log page.
pub fn sanitize_status(file: &File) -> Result<SanitizeStatus, NvmeError> {
    let mut buf = vec![0u8; 512];
    admin_command(
        file.as_fd(),
        "get log page sanitize status",
        AdminCommand::get_log_page(LOG_SANITIZE_STATUS, NSID_ALL, 512, 0),
        Some(&mut buf),
    )?;
    SanitizeStatus::parse(&buf).ok_or(NvmeError::Data {
        what: "sanitize status",
    })
}

/// Read the Firmware Slot Information log page (controller-wide, hence NSID_ALL).
pub fn firmware_slot_log(file: &File) -> Result<FirmwareSlotLog, NvmeError> {
    let mut buf = vec![0u8; 512];
    admin_command(
        file.as_fd(),
        "get log page firmware slot information",
        AdminCommand::get_log_page(LOG_FIRMWARE_SLOT, NSID_ALL, 512, 0),
        Some(&mut buf),
    )?;
    FirmwareSlotLog::parse(&buf).ok_or(NvmeError::Data {
        what: "firmware slot information",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frmw_decoding() {
        // 0x17: slot 1 read-only, 3 slots, activation without reset.
        assert_eq!(
            Frmw::decode(0x17),
            Frmw {
                slot1_read_only: true,
                slots: 3,
                activation_without_reset: true
            }
        );
        // QEMU's 0x03: slot 1 read-only, one slot, reset needed.
        assert_eq!(
            Frmw::decode(0x03),
            Frmw {
                slot1_read_only: true,
                slots: 1,
                activation_without_reset: false
            }
        );
        // Reserved bits (5..7) do not leak into the fields.
        assert_eq!(Frmw::decode(0xe0), Frmw::decode(0x00));
        assert_eq!(Frmw::decode(0x0e).slots, 7);
        for b in 0..=u8::MAX {
            assert!(Frmw::decode(b).slots <= 7);
        }
    }

    #[test]
    fn firmware_slot_log_decoding() {
        let mut d = vec![0u8; 512];
        d[0] = 0x21; // active slot 1, slot 2 at the next reset
        d[8..16].copy_from_slice(b"1.0     ");
        d[16..24].copy_from_slice(b"2.1.7-rc");
        d[56..64].copy_from_slice(b"7\0\0\0\0\0\0\0");
        let log = FirmwareSlotLog::parse(&d).expect("parse");
        assert_eq!(log.active_slot, 1);
        assert_eq!(log.next_reset_slot, Some(2));
        assert_eq!(log.revisions[0].as_deref(), Some("1.0"));
        assert_eq!(log.revisions[1].as_deref(), Some("2.1.7-rc"));
        assert_eq!(log.revisions[2], None);
        assert_eq!(log.revisions[6].as_deref(), Some("7"));

        // No next-reset slot; the reserved AFI bits 3 and 7 are ignored.
        d[0] = 0x89;
        let log = FirmwareSlotLog::parse(&d).expect("parse");
        assert_eq!((log.active_slot, log.next_reset_slot), (1, None));

        // Hostile input: short pages are refused, garbage bytes never panic or pass through.
        assert_eq!(FirmwareSlotLog::parse(&d[..63]), None);
        assert_eq!(FirmwareSlotLog::parse(&[]), None);
        let mut junk = vec![0xffu8; 64];
        junk[8..16].copy_from_slice(&[0xc3, 0x28, 0x1b, b'a', 0x7f, 0x80, 0xfe, 0xff]);
        let log = FirmwareSlotLog::parse(&junk).expect("parse");
        assert_eq!((log.active_slot, log.next_reset_slot), (7, Some(7)));
        for r in log.revisions.iter().flatten() {
            assert!(r.chars().all(|c| c.is_ascii_graphic() || c == ' '), "{r:?}");
        }
        assert!(log.revisions[0].as_deref().unwrap().contains('a'));

        // Every length and a cheap pseudo-random fill: decodes or refuses, never panics.
        let mut x = 0x9e37_79b9_u32;
        for len in 0..600 {
            let buf: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let parsed = FirmwareSlotLog::parse(&buf);
            assert_eq!(parsed.is_some(), len >= 64);
            if let Some(log) = parsed {
                assert!(log.active_slot <= 7 && log.next_reset_slot.is_none_or(|s| s <= 7));
            }
        }
    }

    fn raw_bytes(c: AdminCommand, addr: u64) -> [u8; 72] {
        let r = c.to_raw(addr);
        let mut b = [0u8; 72];
        b[0] = r.opcode;
        b[1] = r.flags;
        b[2..4].copy_from_slice(&r.rsvd1.to_ne_bytes());
        b[4..8].copy_from_slice(&r.nsid.to_ne_bytes());
        b[8..12].copy_from_slice(&r.cdw2.to_ne_bytes());
        b[12..16].copy_from_slice(&r.cdw3.to_ne_bytes());
        b[16..24].copy_from_slice(&r.metadata.to_ne_bytes());
        b[24..32].copy_from_slice(&r.addr.to_ne_bytes());
        b[32..36].copy_from_slice(&r.metadata_len.to_ne_bytes());
        b[36..40].copy_from_slice(&r.data_len.to_ne_bytes());
        for (i, v) in [
            r.cdw10,
            r.cdw11,
            r.cdw12,
            r.cdw13,
            r.cdw14,
            r.cdw15,
            r.timeout_ms,
            r.result,
        ]
        .iter()
        .enumerate()
        {
            b[40 + 4 * i..44 + 4 * i].copy_from_slice(&v.to_ne_bytes());
        }
        b
    }

    #[test]
    fn passthru_layout_matches_the_kernel_header() {
        assert_eq!(std::mem::size_of::<ioctl::NvmePassthruCmd>(), 72);
        assert_eq!(std::mem::offset_of!(ioctl::NvmePassthruCmd, nsid), 4);
        assert_eq!(std::mem::offset_of!(ioctl::NvmePassthruCmd, addr), 24);
        assert_eq!(std::mem::offset_of!(ioctl::NvmePassthruCmd, data_len), 36);
        assert_eq!(std::mem::offset_of!(ioctl::NvmePassthruCmd, cdw10), 40);
        assert_eq!(std::mem::offset_of!(ioctl::NvmePassthruCmd, timeout_ms), 64);
        assert_eq!(std::mem::offset_of!(ioctl::NvmePassthruCmd, result), 68);
        // _IOWR('N', 0x41, 72 bytes)
        assert_eq!(nix::request_code_readwrite!(b'N', 0x41, 72), 0xC048_4E41);
    }

    #[test]
    fn identify_encoding() {
        let b = raw_bytes(AdminCommand::identify(1, 0), 0x1000);
        assert_eq!(b[0], 0x06);
        assert_eq!(&b[4..8], &[0, 0, 0, 0]);
        assert_eq!(&b[24..32], &0x1000u64.to_le_bytes());
        assert_eq!(&b[36..40], &4096u32.to_le_bytes());
        assert_eq!(&b[40..44], &[0x01, 0, 0, 0], "CDW10.CNS = 01h");
        let b = raw_bytes(AdminCommand::identify(0, 3), 0);
        assert_eq!(&b[4..8], &[3, 0, 0, 0]);
        assert_eq!(&b[40..44], &[0, 0, 0, 0]);
    }

    #[test]
    fn get_log_page_encoding() {
        let b = raw_bytes(AdminCommand::get_log_page(0x81, NSID_ALL, 512, 0), 0);
        assert_eq!(b[0], 0x02);
        assert_eq!(&b[4..8], &[0xff; 4]);
        // CDW10: LID=81h, LSP=0, RAE=0, NUMDL = 512/4 - 1 = 127
        assert_eq!(&b[40..44], &[0x81, 0x00, 0x7f, 0x00]);
        assert_eq!(&b[44..48], &[0, 0, 0, 0], "NUMDU, LSI");
        assert_eq!(&b[36..40], &512u32.to_le_bytes());
        let c = AdminCommand::get_log_page(0x02, 1, 0x40000 * 4 + 4, 0x1_0000_0200);
        assert_eq!(c.cdw10 >> 16, 0, "NUMDL low 16 bits of 0x40000");
        assert_eq!(c.cdw11, 4, "NUMDU");
        assert_eq!((c.cdw12, c.cdw13), (0x200, 1), "LPOL, LPOU");
    }

    #[test]
    fn format_nvm_encoding() {
        let b = raw_bytes(
            AdminCommand::format_nvm(1, 0, SecureEraseSetting::UserData),
            0,
        );
        assert_eq!(b[0], 0x80);
        assert_eq!(&b[4..8], &[1, 0, 0, 0]);
        // SES in bits 11:9 → 1 << 9 = 0x200
        assert_eq!(&b[40..44], &[0x00, 0x02, 0, 0]);
        let c = AdminCommand::format_nvm(NSID_ALL, 0x13, SecureEraseSetting::Cryptographic);
        // LBAF lower = 3 (bits 3:0), SES = 2 (bits 11:9), LBAFU = 1 (bits 13:12)
        assert_eq!(c.cdw10, 0x3 | (2 << 9) | (1 << 12));
        assert_eq!(c.data_len, 0);
        assert!(c.timeout_ms >= 3600 * 1000);
    }

    #[test]
    fn sanitize_encoding() {
        let b = raw_bytes(AdminCommand::sanitize(SanitizeAction::CryptoErase, true), 0);
        assert_eq!(b[0], 0x84);
        assert_eq!(&b[4..8], &[0, 0, 0, 0]);
        // SANACT=100b, AUSE bit 3
        assert_eq!(&b[40..44], &[0x0c, 0, 0, 0]);
        let c = AdminCommand::sanitize(SanitizeAction::BlockErase, false);
        assert_eq!(c.cdw10, 0x02);
        let c = AdminCommand::sanitize(SanitizeAction::Overwrite, false);
        assert_eq!(c.cdw10, 0x03 | (1 << 4), "OWPASS = 1");
        assert_eq!(c.cdw11, 0, "overwrite pattern");
        assert_eq!(
            AdminCommand::sanitize(SanitizeAction::ExitFailureMode, false).cdw10,
            1
        );
    }

    #[test]
    fn identify_controller_decoding() {
        let mut d = vec![0u8; 4096];
        d[0..2].copy_from_slice(&0x1b36u16.to_le_bytes());
        d[4..24].copy_from_slice(b"deadbeef            ");
        d[24..64].copy_from_slice(b"QEMU NVMe Ctrl                          ");
        d[64..72].copy_from_slice(b"7.2.0   ");
        d[256..258].copy_from_slice(&0x010au16.to_le_bytes());
        d[328..332].copy_from_slice(&0x0000_0003u32.to_le_bytes());
        d[516..520].copy_from_slice(&256u32.to_le_bytes());
        d[524] = 0x04;
        d[260] = 0x03; // FRMW as QEMU sets it
        let c = IdentifyController::parse(&d).unwrap();
        assert_eq!(c.vid, 0x1b36);
        assert_eq!(c.serial, "deadbeef");
        assert_eq!(c.model, "QEMU NVMe Ctrl");
        assert_eq!(c.firmware, "7.2.0");
        assert_eq!(c.oacs, 0x10a);
        assert!(c.supports_format() && !c.supports_security_send_receive());
        assert!(c.sanitize_crypto() && c.sanitize_block() && !c.sanitize_overwrite());
        assert_eq!(c.nn, 256);
        assert!(c.crypto_erase_supported() && !c.format_applies_to_all());
        assert_eq!(c.frmw, 0x03);
        assert!(IdentifyController::parse(&d[..100]).is_none());
    }

    #[test]
    fn identify_namespace_decoding() {
        let mut d = vec![0u8; 4096];
        d[0..8].copy_from_slice(&2097152u64.to_le_bytes());
        d[25] = 1; // two formats
        d[26] = 1; // using format 1
        d[33] = 0x09; // DLFEAT: reads zeroes + bit 3
        d[128..132].copy_from_slice(&(9u32 << 16).to_le_bytes());
        d[132..136].copy_from_slice(&((12u32 << 16) | 8).to_le_bytes());
        let n = IdentifyNamespace::parse(&d).unwrap();
        assert_eq!(n.nsze, 2097152);
        assert_eq!(n.lbaf.len(), 2);
        assert_eq!(n.current_lbaf(), 1);
        assert_eq!(n.block_size(), Some(4096));
        assert_eq!(n.lbaf[1].ms, 8);
        assert_eq!(n.size_bytes(), Some(2097152 * 4096));
        assert!(n.deallocated_reads_zero());
    }

    #[test]
    fn sanitize_status_decoding() {
        let mut d = vec![0u8; 512];
        d[0..2].copy_from_slice(&0x8000u16.to_le_bytes());
        d[2..4].copy_from_slice(&(2u16 | (1 << 8)).to_le_bytes());
        d[16..20].copy_from_slice(&30u32.to_le_bytes());
        let s = SanitizeStatus::parse(&d).unwrap();
        assert_eq!(s.state, SanitizeState::InProgress);
        assert!(s.global_data_erased);
        assert_eq!(s.fraction(), 0.5);
        assert_eq!(s.est_crypto, 30);
    }

    #[test]
    fn status_errors_are_named() {
        let e = NvmeError::Status {
            what: "sanitize",
            status: 0x0001,
        };
        assert!(e.is_unsupported());
        assert_eq!(
            e.to_string(),
            "nvme sanitize: command failed with status 0x0001 (invalid command opcode)"
        );
    }

    #[test]
    fn ioctls_on_a_plain_file_fail_with_enotty() {
        let f = tempfile::tempfile().unwrap();
        let e = identify_controller(&f).unwrap_err();
        assert_eq!(e.errno(), Some(nix::Error::ENOTTY));
        assert_eq!(e.code(), "nvme_ioctl_failed");
        assert_eq!(
            namespace_id(&f).unwrap_err().errno(),
            Some(nix::Error::ENOTTY)
        );
        let e = sanitize_status(&f).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("nvme get log page sanitize status: ")
        );
    }

    #[test]
    fn short_buffer_is_refused_before_the_ioctl() {
        let f = tempfile::tempfile().unwrap();
        let mut small = [0u8; 16];
        let e = admin_command(
            f.as_fd(),
            "identify",
            AdminCommand::identify(1, 0),
            Some(&mut small),
        )
        .unwrap_err();
        assert!(matches!(e, NvmeError::Data { .. }));
    }
}
