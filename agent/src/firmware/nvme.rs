//! NVMe firmware update: Firmware Image Download (opcode 11h) in chunks of the controller's
//! update granularity, Firmware Commit (10h) to the requested slot and action, then the
//! Firmware Slot Information log read back to verify. Commands are built here and sent
//! through [`crate::hw::nvme::admin_command`].

use super::{Applied, UpdateError};
use crate::hw::nvme::{self, AdminCommand, NvmeError};
use molar_protocol::firmware::{CommitAction, NvmeUpdate, Version};
use std::os::fd::AsFd;
use std::path::Path;

pub const OP_FIRMWARE_COMMIT: u8 = 0x10;
pub const OP_FIRMWARE_DOWNLOAD: u8 = 0x11;
/// The granularity assumed when FWUG gives none.
pub const DEFAULT_CHUNK: usize = 4096;
/// Largest image accepted (controller images are a few MiB).
pub const MAX_IMAGE: usize = 64 << 20;

/// Firmware Image Download of `len` bytes at byte `offset` (both multiples of 4):
/// CDW10 = NUMD (dwords − 1), CDW11 = OFST in dwords.
pub fn download_command(offset: usize, len: usize) -> AdminCommand {
    AdminCommand {
        opcode: OP_FIRMWARE_DOWNLOAD,
        cdw10: (len / 4).saturating_sub(1) as u32,
        cdw11: (offset / 4) as u32,
        data_len: len as u32,
        ..Default::default()
    }
}

/// Commit Action codes (CDW10 bits 5:3).
fn commit_action_code(a: CommitAction) -> u32 {
    match a {
        CommitAction::ReplaceActivateReset => 0b001,
        CommitAction::ReplaceActivateNow => 0b011,
    }
}

/// Firmware Commit: CDW10 = BPID << 31 | CA << 3 | FS (slot 0: the controller chooses).
pub fn commit_command(slot: u8, action: CommitAction, boot_partition: bool) -> AdminCommand {
    AdminCommand {
        opcode: OP_FIRMWARE_COMMIT,
        cdw10: ((boot_partition as u32) << 31)
            | (commit_action_code(action) << 3)
            | (slot as u32 & 0x7),
        // Activation can take the controller a while.
        timeout_ms: 120_000,
        ..Default::default()
    }
}

/// Bytes per download command: FWUG × 4 KiB, 4 KiB when FWUG is 0 or 0xff.
pub fn chunk_size(fwug: u8) -> usize {
    match fwug {
        0 | 0xff => DEFAULT_CHUNK,
        n => n as usize * 4096,
    }
}

/// What a Firmware Commit's completion status means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitStatus {
    /// Committed; for "activate at reset", the image runs after the next reset.
    Done,
    /// Committed, but activation needs this kind of reset (command specific status 0Bh, 10h,
    /// 11h): success, with a reboot.
    ResetRequired(&'static str),
}

/// Classifies a commit's status: 0, or one of the "reset required" statuses; anything else
/// is an error naming the status.
pub fn commit_status(status: u16) -> Result<CommitStatus, String> {
    let sct = (status >> 8) & 0x7;
    let sc = status & 0xff;
    match (sct, sc) {
        (0, 0) => Ok(CommitStatus::Done),
        (1, 0x0b) => Ok(CommitStatus::ResetRequired("conventional reset")),
        (1, 0x10) => Ok(CommitStatus::ResetRequired("NVM subsystem reset")),
        (1, 0x11) => Ok(CommitStatus::ResetRequired("controller level reset")),
        (1, 0x06) => Err("invalid firmware slot".into()),
        (1, 0x07) => Err("invalid firmware image".into()),
        (1, 0x12) => Err("activation requires maximum time violation".into()),
        (1, 0x13) => Err("firmware activation prohibited".into()),
        (1, 0x14) => Err("overlapping firmware range".into()),
        _ => Err(format!("status {status:#06x}")),
    }
}

/// Downloads `image` to `/dev/<name>` under `root`, commits it, and reads the slot log back.
pub fn update(
    root: &Path,
    name: &str,
    image: &[u8],
    spec: NvmeUpdate,
    required: &str,
) -> Result<Applied, UpdateError> {
    let fail = |code: &'static str, msg: String| UpdateError::new(code, format!("{name}: {msg}"));
    let nvme_err = |e: NvmeError| fail(e.code(), e.to_string());
    if image.is_empty() || !image.len().is_multiple_of(4) || image.len() > MAX_IMAGE {
        return Err(fail(
            "bad_image",
            format!(
                "the image is {} bytes; it must be a non-empty multiple of 4 of at most {MAX_IMAGE}",
                image.len()
            ),
        ));
    }
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(fail("bad_device", "not an nvme controller name".into()));
    }
    let path = root.join("dev").join(name);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| fail("open_failed", format!("opening {}: {e}", path.display())))?;
    let id = nvme::identify_controller(&file).map_err(nvme_err)?;
    let frmw = nvme::Frmw::decode(id.frmw);
    if spec.action == CommitAction::ReplaceActivateNow && !frmw.activation_without_reset {
        return Err(fail(
            "unsupported",
            "the controller cannot activate firmware without a reset (FRMW bit 4); use \
             replace_activate_reset"
                .into(),
        ));
    }
    let slot = spec.slot.unwrap_or(0);
    if slot > frmw.slots.max(1) {
        return Err(fail(
            "invalid_params",
            format!("slot {slot}: the controller has {} slot(s)", frmw.slots),
        ));
    }
    if slot == 1 && frmw.slot1_read_only {
        return Err(fail("invalid_params", "slot 1 is read-only".into()));
    }
    let chunk = chunk_size(id.fwug);
    let mut buf = vec![0u8; chunk];
    for (i, piece) in image.chunks(chunk).enumerate() {
        buf[..piece.len()].copy_from_slice(piece);
        nvme::admin_command(
            file.as_fd(),
            "firmware image download",
            download_command(i * chunk, piece.len()),
            Some(&mut buf[..piece.len()]),
        )
        .map_err(nvme_err)?;
    }
    let status = match nvme::admin_command(
        file.as_fd(),
        "firmware commit",
        commit_command(slot, spec.action, false),
        None,
    ) {
        Ok(_) => CommitStatus::Done,
        Err(NvmeError::Status { status, .. }) => commit_status(status)
            .map_err(|why| fail("nvme_command_failed", format!("firmware commit: {why}")))?,
        Err(e) => return Err(nvme_err(e)),
    };
    let log = nvme::firmware_slot_log(&file).map_err(nvme_err)?;
    let want = Version::parse(required);
    let now = spec.action == CommitAction::ReplaceActivateNow && status == CommitStatus::Done;
    let running = nvme::identify_controller(&file)
        .map(|c| c.firmware)
        .unwrap_or(id.firmware);
    // The slot that will run: the active one after an immediate activation, otherwise the
    // one armed for the next reset.
    let target = if now {
        log.active_slot
    } else {
        log.next_reset_slot
            .unwrap_or(if slot == 0 { log.active_slot } else { slot })
    };
    let staged = target
        .checked_sub(1)
        .and_then(|i| log.revisions.get(i as usize).cloned().flatten());
    match &staged {
        Some(r) if Version::parse(r) == want => {}
        other => {
            return Err(fail(
                "verify_failed",
                format!(
                    "slot {target} holds {} after the commit, expected {required}",
                    other.as_deref().unwrap_or("nothing")
                ),
            ));
        }
    }
    let reboot = !now;
    let message = match status {
        CommitStatus::ResetRequired(kind) => Some(format!("activation needs a {kind}")),
        CommitStatus::Done if reboot => Some(format!("slot {target} activates at the next reset")),
        CommitStatus::Done => None,
    };
    Ok(Applied {
        after: Some(if now {
            running
        } else {
            staged.unwrap_or_default()
        }),
        reboot,
        power_cycle: false,
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn download_commands_byte_by_byte() {
        // 8 KiB at 12 KiB: NUMD 2047 (0x7ff), OFST 3072 dwords (0xc00).
        let b = download_command(12 * 1024, 8 * 1024).to_bytes(0x1122_3344_5566_7788);
        let mut want = [0u8; 72];
        want[0] = 0x11;
        want[24..32].copy_from_slice(&[0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11]);
        want[36..40].copy_from_slice(&[0x00, 0x20, 0x00, 0x00]); // data_len 8192
        want[40..44].copy_from_slice(&[0xff, 0x07, 0x00, 0x00]); // cdw10
        want[44..48].copy_from_slice(&[0x00, 0x0c, 0x00, 0x00]); // cdw11
        assert_eq!(b, want);
        // The last, short piece of 4 bytes: NUMD 0.
        let c = download_command(4096, 4);
        assert_eq!((c.cdw10, c.cdw11, c.data_len), (0, 1024, 4));
    }

    #[test]
    fn commit_commands_byte_by_byte() {
        let b = commit_command(2, CommitAction::ReplaceActivateReset, false).to_bytes(0);
        let mut want = [0u8; 72];
        want[0] = 0x10;
        want[40..44].copy_from_slice(&[0x0a, 0x00, 0x00, 0x00]); // CA 1 << 3 | FS 2
        want[64..68].copy_from_slice(&120_000u32.to_le_bytes());
        assert_eq!(b, want);
        let c = commit_command(0, CommitAction::ReplaceActivateNow, false);
        assert_eq!(c.cdw10, 0x18); // CA 3 << 3, FS 0
        let c = commit_command(7, CommitAction::ReplaceActivateNow, true);
        assert_eq!(c.cdw10, 0x8000_001f);
        assert_eq!((c.nsid, c.data_len), (0, 0));
    }

    #[test]
    fn chunks_follow_fwug() {
        assert_eq!(chunk_size(0), 4096);
        assert_eq!(chunk_size(0xff), 4096);
        assert_eq!(chunk_size(1), 4096);
        assert_eq!(chunk_size(8), 32 * 1024);
    }

    #[test]
    fn reset_required_statuses_are_success_with_a_reboot() {
        assert_eq!(commit_status(0), Ok(CommitStatus::Done));
        assert_eq!(
            commit_status(0x10b),
            Ok(CommitStatus::ResetRequired("conventional reset"))
        );
        assert!(matches!(
            commit_status(0x110),
            Ok(CommitStatus::ResetRequired(_))
        ));
        assert!(matches!(
            commit_status(0x111),
            Ok(CommitStatus::ResetRequired(_))
        ));
        assert_eq!(commit_status(0x107), Err("invalid firmware image".into()));
        assert_eq!(
            commit_status(0x113),
            Err("firmware activation prohibited".into())
        );
        assert_eq!(commit_status(0x002), Err("status 0x0002".into()));
    }

    #[test]
    fn refuses_bad_images_and_names_before_touching_a_device() {
        let root = tempfile::tempdir().unwrap();
        let e = update(root.path(), "nvme0", &[1, 2, 3], NvmeUpdate::default(), "1").unwrap_err();
        assert_eq!(e.code, "bad_image");
        let e = update(root.path(), "../sda", &[0; 4], NvmeUpdate::default(), "1").unwrap_err();
        assert_eq!(e.code, "bad_device");
        let e = update(root.path(), "nvme0", &[0; 4], NvmeUpdate::default(), "1").unwrap_err();
        assert_eq!(e.code, "open_failed");
        // A plain file is not a controller: the ioctl fails with its errno.
        std::fs::create_dir(root.path().join("dev")).unwrap();
        std::fs::write(root.path().join("dev/nvme0"), b"").unwrap();
        let e = update(root.path(), "nvme0", &[0; 4], NvmeUpdate::default(), "1").unwrap_err();
        assert_eq!(e.code, "nvme_ioctl_failed", "{}", e.msg);
    }
}
