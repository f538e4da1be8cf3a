//! `standbye.run_image`: start the image `standbye.prepare_image` wrote. In order, as task
//! steps: check the device (the safety gate, and that it holds `image_id`) and that the
//! authority allows the jump; write the config drive; mount the image read only and find its
//! kernel ([`crate::boot`]); on UEFI, create or update the `Boot####` entry of its ESP loader
//! and put it first in `BootOrder`; next boot from disk through the local BMC; load the
//! kernel with `kexec_file_load` when kexec is viable and asked for, else plan a reboot with
//! the reason. The task then completes, and only once the controller acknowledged that
//! terminal status (bounded by [`ACK_WAIT`]) does the machine jump, through the authority.

use super::HardwareReady;
use crate::authority::{Action, Authority};
use crate::boot::sys::{BootSystem, Jump, SysError};
use crate::boot::{self, efi};
use crate::disks;
use crate::safety;
use crate::tasks::{Task, TaskContext, TaskFailure};
use molar_protocol::codes;
use molar_protocol::configdrive::MAX_CONFIG_DRIVE_BYTES;
use molar_protocol::run_image::{
    BootEntryReport, BootMethod, BootMode, RunImageParams, RunImageResult,
};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Longest the machine waits for the controller to acknowledge the final status before it
/// jumps anyway: the image is on the disk and set up, and a ramdisk waiting forever for a
/// controller that went away helps nobody; the controller learns the rest from the booted
/// system (or from the task it then never hears of again).
pub const ACK_WAIT: Duration = Duration::from_secs(10);

/// A marker the firmware capability leaves after staging a UEFI capsule: the kernel must
/// then reset through the firmware (LAB.md), so kexec is not viable.
pub const CAPSULE_MARKER: &str = "run/molar/capsule-pending";

/// The `{url, checksum}` form of `config_drive`: the ready image, at most
/// [`MAX_CONFIG_DRIVE_BYTES`] (it may be gzipped), fetched with the image fetcher's client in
/// one Range request and checked against its digest (or its line in a sums file) before a
/// byte of it reaches the disk. `options` are the image tasks' (timeouts), with the
/// config drive's own `ca_pem`, as `standbye.prepare_image` takes an image's.
pub fn fetch_config_drive(
    url: &str,
    checksum: &str,
    options: &crate::image::FetchOptions,
) -> Result<Vec<u8>, SysError> {
    use crate::image::checksum::{self, Hasher};
    use crate::image::fetch::Http;
    use molar_protocol::image::Checksum;
    let fetch_err = |e: crate::image::fetch::FetchError| {
        SysError::new(e.code(), format!("config_drive url: {e}"))
    };
    let want = Checksum::parse(checksum)
        .map_err(|e| SysError::new(codes::INVALID_PARAMS, format!("config_drive checksum: {e}")))?;
    let http = Http::new(options).map_err(fetch_err)?;
    let want = match want {
        Checksum::Digest(d) => d,
        Checksum::SumsUrl(sums) => {
            let name = checksum::file_name(url).unwrap_or(url);
            let text = http.text(&sums).map_err(fetch_err)?;
            checksum::lookup(&text, name, &sums)
                .map_err(|e| SysError::new("checksum_mismatch", format!("config_drive: {e}")))?
        }
    };
    let (url, len, ranges) = http.probe(&[url.to_owned()]).map_err(fetch_err)?;
    let shown = molar_protocol::image::redact_url(&url);
    let len = match (len, ranges) {
        (Some(len), true) if len <= MAX_CONFIG_DRIVE_BYTES && len > 0 => len,
        (Some(len), true) => {
            return Err(SysError::new(
                "config_drive_too_large",
                format!(
                    "config_drive url: {shown} is {len} bytes, at most {MAX_CONFIG_DRIVE_BYTES}"
                ),
            ));
        }
        _ => {
            return Err(SysError::new(
                codes::UNSUPPORTED,
                format!("config_drive url: {shown} serves no byte ranges with a length"),
            ));
        }
    };
    let bytes = http.range(&url, 0, len as usize).map_err(fetch_err)?;
    let mut h = Hasher::new(want.algo);
    h.update(&bytes);
    let got = h.finish();
    if got != want {
        return Err(SysError::new(
            "checksum_mismatch",
            format!("config_drive url: {shown} has {got}, expected {want}"),
        ));
    }
    Ok(bytes)
}

/// `standbye.run_image`.
pub struct RunImage {
    pub root: PathBuf,
    pub authority: Authority,
    pub ready: HardwareReady,
    pub sys: Arc<dyn BootSystem>,
    /// Where the image's filesystems are mounted while it is inspected.
    pub scratch: PathBuf,
    /// One run at a time: two would mount into the same scratch directory and race for the
    /// jump.
    pub running: Arc<std::sync::Mutex<()>>,
}

fn fail(code: &str, msg: impl Into<String>) -> TaskFailure {
    TaskFailure::new(code, msg)
}

/// What the blocking part decided: the result to report, and how to leave.
struct Prepared {
    result: RunImageResult,
    jump: Jump,
}

/// Why kexec cannot be tried at all on this machine now, before looking at the image.
fn kexec_blocker(root: &Path) -> Option<String> {
    if root.join(CAPSULE_MARKER).exists() {
        return Some("a firmware capsule is staged: the firmware must run it at reset".into());
    }
    let disabled = std::fs::read_to_string(root.join("proc/sys/kernel/kexec_load_disabled"));
    if disabled.is_ok_and(|v| v.trim() == "1") {
        return Some("kexec is disabled (kernel.kexec_load_disabled=1)".into());
    }
    None
}

impl RunImage {
    /// Everything up to the jump; blocking.
    fn prepare(&self, p: &RunImageParams, ctx: &TaskContext) -> Result<Prepared, TaskFailure> {
        let _one = match self.running.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                return Err(fail(
                    codes::BUSY,
                    format!(
                        "another {} is in progress",
                        <molar_protocol::catalogue::RunImage as molar_protocol::Method>::NAME
                    ),
                ));
            }
        };
        let mode = p.boot.unwrap_or_default();
        // The way out first, and the boot entries that make it boot the image: nothing is
        // written when the machine may not leave.
        let actions: &[Action<'_>] = match mode {
            BootMode::Kexec => &[Action::Kexec, Action::SetBootEntry],
            BootMode::Reboot => &[Action::Reboot, Action::SetBootEntry],
            BootMode::Auto => &[Action::Kexec, Action::Reboot, Action::SetBootEntry],
        };
        for a in actions {
            self.authority
                .decide(a)
                .map_err(|e| fail(codes::REFUSED, e.to_string()))?;
        }

        ctx.set_message("checking the device");
        let all = disks::enumerate(&self.root).map_err(|e| fail(e.code(), e.to_string()))?;
        #[allow(clippy::redundant_closure)] // see safety::DeviceAction
        let (cleared, skipped) = safety::select_targets_for(
            &self.root,
            &all,
            &self.authority,
            |d| Action::EditPartitions(d),
            Some(std::slice::from_ref(&p.device)),
            &[],
        );
        if let Some(s) = skipped.first() {
            return Err(fail(
                s.refusal.code(),
                format!("{}: {}", s.device, s.refusal),
            ));
        }
        let Some(target) = cleared.into_iter().next() else {
            return Err(fail(
                codes::NOT_FOUND,
                format!("{}: no such block device", p.device),
            ));
        };
        if target.is_partition() {
            return Err(fail(
                codes::INVALID_PARAMS,
                format!(
                    "{}: a partition; name the whole disk the image was written to",
                    p.device
                ),
            ));
        }
        let dev = target.dev_path().to_path_buf();
        match self.sys.image_written_on(&dev) {
            Some(id) if id == p.image_id => {}
            Some(id) => {
                return Err(fail(
                    "image_mismatch",
                    format!("{} holds image {id}, not {}", dev.display(), p.image_id),
                ));
            }
            None => {
                return Err(fail(
                    "image_mismatch",
                    format!(
                        "{} holds no image this agent wrote (run standbye.prepare_image first)",
                        dev.display()
                    ),
                ));
            }
        }

        let mut notes = Vec::new();
        let config_drive = match &p.config_drive {
            None => None,
            Some(spec) => {
                if ctx.is_cancelled() {
                    return Err(TaskFailure::cancelled());
                }
                ctx.set_progress(10.0, None);
                ctx.set_message("writing the config drive");
                let format = p.config_drive_format.unwrap_or_default();
                let outcome = self
                    .sys
                    .write_config_drive(&dev, spec, format)
                    .map_err(|e| fail(&e.code, e.msg))?;
                Some(outcome)
            }
        };

        if ctx.is_cancelled() {
            return Err(TaskFailure::cancelled());
        }
        ctx.set_progress(30.0, None);
        ctx.set_message("finding the kernel");
        let mut inspection = boot::inspect(
            self.sys.as_ref(),
            &self.root,
            target.name(),
            &dev,
            target.size_bytes(),
            &self.scratch,
            p.kernel_args.as_deref(),
        )
        .map_err(|e| fail(e.code(), e.to_string()))?;
        let outcome = self.boot_setup_and_load(p, mode, &inspection, &mut notes);
        inspection.release(self.sys.as_ref());
        notes.append(&mut inspection.notes);
        let (jump, reason, boot_entry, bmc_next_boot) = outcome?;
        let entry = inspection.entry.as_ref().ok();
        Ok(Prepared {
            jump,
            result: RunImageResult {
                image_id: p.image_id.clone(),
                device: dev.display().to_string(),
                boot: match jump {
                    Jump::Kexec => BootMethod::Kexec,
                    Jump::Reboot => BootMethod::Reboot,
                },
                reason,
                kernel: entry.map(|e| e.kernel.to_string()),
                initrd: entry.map(|e| e.initrds.iter().map(|i| i.to_string()).collect()),
                cmdline: entry.map(|e| e.cmdline.clone()),
                entry_source: entry.map(|e| e.source.as_str().to_owned()),
                config_drive,
                boot_entry,
                bmc_next_boot,
                notes,
            },
        })
    }

    /// The boot entry, the BMC's next boot device, and the kexec load (while the image is
    /// mounted). Returns how to leave and why not kexec.
    #[allow(clippy::type_complexity)]
    fn boot_setup_and_load(
        &self,
        p: &RunImageParams,
        mode: BootMode,
        inspection: &boot::Inspection,
        notes: &mut Vec<String>,
    ) -> Result<
        (
            Jump,
            Option<String>,
            Option<BootEntryReport>,
            Option<molar_protocol::bmc::BootDeviceResult>,
        ),
        TaskFailure,
    > {
        let uefi = self.root.join("sys/firmware/efi").is_dir();
        // Decided before the task wrote anything ([`Self::prepare`]); asked again here, where
        // the variables and the BMC are changed, so no path reaches them without it.
        self.authority
            .decide(&Action::SetBootEntry)
            .map_err(|e| fail(codes::REFUSED, e.to_string()))?;
        let boot_entry = if uefi {
            match self.uefi_entry(p, inspection) {
                Ok(r) => Some(r),
                Err(e) => {
                    notes.push(format!("UEFI boot entry not set: {e}"));
                    None
                }
            }
        } else {
            None
        };
        let bmc_next_boot = match self.sys.bmc_boot_from_disk(uefi) {
            Ok(r) => r,
            Err(e) => {
                notes.push(format!("next boot device not set through the BMC: {e}"));
                None
            }
        };

        let why_not = match (mode, &inspection.entry) {
            (BootMode::Reboot, _) => Some("reboot requested".to_owned()),
            (_, Err(not_found)) => Some(not_found.to_string()),
            (_, Ok(entry)) => match kexec_blocker(&self.root) {
                Some(b) => Some(b),
                None => {
                    let initrds: Vec<PathBuf> =
                        entry.initrds.iter().map(|i| i.host.clone()).collect();
                    match self
                        .sys
                        .kexec_load(&entry.kernel.host, &initrds, &entry.cmdline)
                    {
                        Ok(()) => None,
                        Err(e) => Some(e.to_string()),
                    }
                }
            },
        };
        match (why_not, mode) {
            (None, _) => Ok((Jump::Kexec, None, boot_entry, bmc_next_boot)),
            (Some(why), BootMode::Kexec) => Err(fail(
                "kexec_not_viable",
                format!("kexec asked for but not viable: {why}"),
            )
            .with_details(serde_json::json!({"notes": notes}))),
            (Some(why), _) => Ok((Jump::Reboot, Some(why), boot_entry, bmc_next_boot)),
        }
    }

    fn uefi_entry(
        &self,
        p: &RunImageParams,
        inspection: &boot::Inspection,
    ) -> Result<BootEntryReport, String> {
        let (esp_number, esp_dir) = inspection
            .esp
            .as_ref()
            .ok_or("the image has no EFI system partition the agent could mount")?;
        let (loader, vendor) =
            efi::find_loader(esp_dir, efi::arch_suffix()).map_err(|e| e.to_string())?;
        let efivars = self.root.join("sys/firmware/efi/efivars");
        let empty = std::fs::read_dir(&efivars)
            .map(|mut d| d.next().is_none())
            .unwrap_or(true);
        if empty {
            self.sys
                .mount_efivarfs(&efivars)
                .map_err(|e| e.to_string())?;
        }
        let hd = efi::hard_drive_node(&inspection.table, *esp_number)
            .ok_or("the ESP has no partition GUID")?;
        let description = if vendor == "UEFI OS" {
            p.image_id.clone()
        } else {
            vendor
        };
        let option = efi::LoadOption {
            attributes: efi::LOAD_OPTION_ACTIVE,
            description: description.clone(),
            path: vec![hd, efi::DevicePathNode::FilePath(loader.clone())],
            optional_data: Vec::new(),
        };
        let installed = efi::install(&efivars, &option).map_err(|e| e.to_string())?;
        Ok(BootEntryReport {
            name: format!("Boot{:04X}", installed.number),
            description,
            loader,
            partition: *esp_number,
            updated: installed.updated,
            boot_order: installed
                .boot_order
                .iter()
                .map(|n| format!("{n:04X}"))
                .collect(),
        })
    }
}

impl Task for RunImage {
    type Params = RunImageParams;

    async fn run(&self, params: RunImageParams, ctx: TaskContext) -> Result<Value, TaskFailure> {
        self.ready
            .wait()
            .await
            .map_err(|e| TaskFailure::new(&e.code, e.msg))?;
        let this = RunImage {
            root: self.root.clone(),
            authority: self.authority.clone(),
            ready: self.ready.clone(),
            sys: self.sys.clone(),
            scratch: self.scratch.clone(),
            running: self.running.clone(),
        };
        let task_ctx = ctx.clone();
        let prepared = tokio::task::spawn_blocking(move || this.prepare(&params, &task_ctx))
            .await
            .map_err(|e| fail(codes::INTERNAL, format!("run_image thread: {e}")))??;
        let value = serde_json::to_value(&prepared.result)
            .map_err(|e| fail(codes::INTERNAL, format!("encoding the result: {e}")))?;
        if ctx.is_cancelled() {
            if prepared.jump == Jump::Kexec {
                let _ = self.sys.kexec_unload();
            }
            return Err(TaskFailure::cancelled());
        }
        // The jump waits for the controller to hold this result.
        let acked = ctx.terminal_acknowledged(ACK_WAIT);
        let (sys, authority, jump) = (self.sys.clone(), self.authority.clone(), prepared.jump);
        tokio::spawn(async move {
            if !acked.await {
                tracing::warn!(
                    wait_s = ACK_WAIT.as_secs(),
                    "the controller did not acknowledge the run_image result; leaving anyway"
                );
            }
            let _ =
                tokio::task::spawn_blocking(move || leave(sys.as_ref(), &authority, jump)).await;
        });
        Ok(value)
    }
}

/// Jumps through the authority; a kexec that fails falls back to a reboot.
fn leave(sys: &dyn BootSystem, authority: &Authority, jump: Jump) {
    let action = match jump {
        Jump::Kexec => Action::Kexec,
        Jump::Reboot => Action::Reboot,
    };
    if let Err(e) = authority.decide(&action) {
        tracing::error!(error = %e, "not leaving");
        if jump == Jump::Kexec {
            let _ = sys.kexec_unload();
        }
        return;
    }
    tracing::warn!(action = %action, "leaving the ramdisk for the written image");
    if let Err(e) = sys.jump(jump) {
        tracing::error!(error = %e, action = %action, "the jump failed");
        if jump == Jump::Kexec && authority.decide(&Action::Reboot).is_ok() {
            let _ = sys.kexec_unload();
            if let Err(e) = sys.jump(Jump::Reboot) {
                tracing::error!(error = %e, "the reboot failed too");
            }
        }
    }
}

#[cfg(test)]
mod tests;
