//! The `uefi_capsule` method: a verified capsule file checked ([`header`]), then handed to the
//! firmware for the next reset by one of two deliveries ([`choose`]):
//! - capsule on disk (UEFI 8.5.5) when OsIndicationsSupported has
//!   `EFI_OS_INDICATIONS_FILE_CAPSULE_DELIVERY_SUPPORTED` and a disk carries an ESP: the file
//!   written to `\EFI\UpdateCapsule\` of every ESP in user space ([`esp`]), then that bit set
//!   in OsIndications (read-modify-write through efivarfs, [`settings::request_os_indications`]);
//! - else the kernel's capsule loader, `/dev/efi_capsule_loader` (module `capsule_loader`),
//!   which passes the capsule to UpdateCapsule and keeps it in memory across a warm reset.
//!
//! Either way the next start must be a firmware reset: [`CAPSULE_MARKER`] is written so
//! `standbye.run_image` refuses kexec, and the component reports `reboot`.

pub mod esp;
pub mod header;

use super::{Applied, UpdateError, settings};
use crate::authority::Authority;
use crate::capabilities::run_image::CAPSULE_MARKER;
use molar_protocol::inventory::FirmwareComponent;
use std::io::Write;
use std::os::fd::IntoRawFd;
use std::path::Path;

/// The kernel's capsule loader device, under the root.
pub const LOADER: &str = "dev/efi_capsule_loader";
/// Largest capsule accepted (the loader keeps it in kernel memory).
pub const MAX_CAPSULE: u64 = 512 << 20;

/// How a capsule reaches the firmware.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    OnDisk,
    Loader,
}

impl Delivery {
    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::OnDisk => "capsule_on_disk",
            Delivery::Loader => "capsule_loader",
        }
    }
}

/// What the machine offers, as probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offer {
    /// OsIndicationsSupported, when the variable is readable.
    pub supported: Option<u64>,
    /// ESPs found on disks the agent may write.
    pub esps: usize,
    /// `/dev/efi_capsule_loader` exists.
    pub loader: bool,
}

/// The delivery for `offer` and why; `Err` is why there is none. Pure.
pub fn choose(offer: Offer) -> Result<(Delivery, String), String> {
    let on_disk = offer
        .supported
        .is_some_and(|s| s & settings::FILE_CAPSULE_DELIVERY != 0);
    let supported = match offer.supported {
        Some(s) => format!("OsIndicationsSupported is {s:#x}"),
        None => "OsIndicationsSupported is not readable".to_owned(),
    };
    match (on_disk, offer.esps, offer.loader) {
        (true, n, _) if n > 0 => Ok((
            Delivery::OnDisk,
            format!("{supported} (file capsule delivery supported) and {n} ESP(s) found"),
        )),
        (true, _, true) => Ok((
            Delivery::Loader,
            format!("{supported} allows capsule on disk but no ESP was found; /{LOADER} exists"),
        )),
        (false, _, true) => Ok((
            Delivery::Loader,
            format!("{supported} (no file capsule delivery); /{LOADER} exists"),
        )),
        (true, _, false) => Err(format!(
            "{supported} allows capsule on disk but no writable ESP was found, and there is \
             no /{LOADER}"
        )),
        (false, _, false) => Err(format!(
            "{supported} (no file capsule delivery) and there is no /{LOADER} (module \
             capsule_loader not loaded, or no UEFI runtime services)"
        )),
    }
}

/// Probes what the machine offers (reads only).
pub fn offer(root: &Path, authority: &Authority) -> (Offer, Vec<String>) {
    let (esps, notes) = esp::find(root, authority);
    (
        Offer {
            supported: settings::os_indications_supported(root),
            esps: esps.len(),
            loader: root.join(LOADER).exists(),
        },
        notes,
    )
}

/// What a dry run reports for a capsule component: whether a delivery is possible, and
/// which and why.
pub fn plan_message(root: &Path, authority: &Authority) -> (bool, String) {
    let (o, notes) = offer(root, authority);
    let (ok, mut m) = match choose(o) {
        Ok((d, why)) => (true, format!("would stage by {}: {why}", d.as_str())),
        Err(why) => (false, format!("no capsule delivery: {why}")),
    };
    for n in notes {
        m.push_str("; ");
        m.push_str(&n);
    }
    (ok, m)
}

fn bad(msg: String) -> UpdateError {
    UpdateError::new("bad_package", format!("capsule: {msg}"))
}

/// Checks the capsule at `file` for component `c`, delivers it and leaves the marker.
/// `file_name` is the name on the ESP (`NAME.cap`).
pub fn stage(
    root: &Path,
    authority: &Authority,
    c: &FirmwareComponent,
    file: &Path,
    file_name: &str,
) -> Result<Applied, UpdateError> {
    let len = std::fs::metadata(file)
        .map_err(|e| UpdateError::new("write_failed", format!("the capsule file: {e}")))?
        .len();
    if len > MAX_CAPSULE {
        return Err(bad(format!("{len} bytes, at most {MAX_CAPSULE}")));
    }
    let bytes = std::fs::read(file)
        .map_err(|e| UpdateError::new("write_failed", format!("reading the capsule: {e}")))?;
    let capsule = header::parse(&bytes).map_err(bad)?;
    if let Some(e) = &c.esrt
        && !capsule.targets(&e.guid)
    {
        return Err(UpdateError::new(
            "capsule_mismatch",
            format!(
                "{} has ESRT firmware class {}, the package is {}",
                c.name,
                e.guid,
                capsule.addressed()
            ),
        ));
    }
    let (esps, notes) = esp::find(root, authority);
    let o = Offer {
        supported: settings::os_indications_supported(root),
        esps: esps.len(),
        loader: root.join(LOADER).exists(),
    };
    let (delivery, why) = choose(o).map_err(|why| {
        let mut msg = format!("no capsule delivery: {why}");
        for n in &notes {
            msg.push_str("; ");
            msg.push_str(n);
        }
        UpdateError::new("capsule_not_deliverable", msg)
    })?;
    tracing::info!(component = %c.name, delivery = delivery.as_str(), guid = %capsule.guid,
        size = bytes.len(), "{why}");
    let detail = match delivery {
        Delivery::OnDisk => {
            let mut on = Vec::new();
            for e in &esps {
                let path = esp::stage(e, file_name, &bytes)?;
                on.push(path);
            }
            let v = settings::request_os_indications(root, settings::FILE_CAPSULE_DELIVERY)?;
            format!("{} and OsIndications set to {v:#x}", on.join(", "))
        }
        Delivery::Loader => {
            submit(&root.join(LOADER), &bytes)?;
            format!("/{LOADER} accepted {} bytes", bytes.len())
        }
    };
    let marker = root.join(CAPSULE_MARKER);
    let mark = || -> std::io::Result<()> {
        if let Some(dir) = marker.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(
            &marker,
            format!("{} {} {}\n", delivery.as_str(), c.name, capsule.guid),
        )
    };
    mark().map_err(|e| {
        UpdateError::new(
            "write_failed",
            format!(
                "the capsule is staged ({detail}) but the marker {} could not be written: {e}; \
                 reboot through the firmware, not kexec",
                marker.display()
            ),
        )
    })?;
    Ok(Applied {
        after: None,
        reboot: true,
        power_cycle: false,
        message: Some(format!(
            "staged by {}: {detail}; the next start must be a firmware reset ({why})",
            delivery.as_str()
        )),
    })
}

/// Writes the whole capsule to the loader in one open and closes it; the kernel checks the
/// header with QueryCapsuleCapabilities on the first write and calls UpdateCapsule once the
/// last byte is in, so its errors come from a write (or from the close).
pub fn submit(dev: &Path, bytes: &[u8]) -> Result<(), UpdateError> {
    let fail = |what: &str, e: std::io::Error| {
        let hint = match e.raw_os_error() {
            Some(libc::EINVAL) => {
                " (the kernel or the firmware's QueryCapsuleCapabilities refused the header)"
            }
            Some(libc::EOPNOTSUPP) => " (the firmware does not support this capsule)",
            Some(libc::ENOMEM) => " (the firmware or kernel has no room for it)",
            _ => "",
        };
        UpdateError::new(
            "capsule_refused",
            format!("{}: {what}: {e}{hint}", dev.display()),
        )
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(dev)
        .map_err(|e| fail("opening", e))?;
    f.write_all(bytes).map_err(|e| fail("writing", e))?;
    let fd = f.into_raw_fd();
    // SAFETY: `fd` was just taken from the File and is closed exactly once here.
    if unsafe { libc::close(fd) } != 0 {
        return Err(fail("closing", std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
