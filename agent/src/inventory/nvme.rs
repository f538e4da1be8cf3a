//! NVMe controllers and namespaces in the inventory: model, serial and firmware from
//! `/sys/class/nvme/NAME` (readable without root), erase capabilities from Identify
//! Controller, namespace geometry from Identify Namespace, falling back to sysfs sizes.

use molar_protocol::inventory::{NvmeController, NvmeNamespace};

use super::{CollectOptions, Ctx};

const NVME_CLASS: &str = "/sys/class/nvme";

pub(crate) fn controller(ctx: &mut Ctx, opts: &CollectOptions, name: &str) -> NvmeController {
    let dir = format!("{NVME_CLASS}/{name}");
    let mut c = NvmeController {
        name: name.to_string(),
        model: ctx.read_attr(&format!("{dir}/model")),
        serial: ctx.read_attr(&format!("{dir}/serial")),
        firmware: ctx.read_attr(&format!("{dir}/firmware_rev")),
        capabilities: None,
        namespaces: Vec::new(),
    };
    if opts.nvme_identify {
        identify::controller(ctx, name, &mut c);
    }
    c
}

/// Namespace `nsid` of `controller`, exposed as block device `disk`.
pub(crate) fn namespace(
    ctx: &mut Ctx,
    opts: &CollectOptions,
    controller: &str,
    disk: &str,
    nsid: u32,
) -> NvmeNamespace {
    let dir = format!("/sys/block/{disk}");
    let sectors: Option<u64> = ctx.parse_attr(&format!("{dir}/size"));
    let block_size: Option<u32> = ctx.parse_attr(&format!("{dir}/queue/logical_block_size"));
    let mut ns = NvmeNamespace {
        nsid,
        size_blocks: match (sectors, block_size) {
            (Some(s), Some(b)) if b > 0 => Some(s.saturating_mul(512) / u64::from(b)),
            _ => None,
        },
        block_size,
    };
    if opts.nvme_identify {
        identify::namespace(ctx, controller, &mut ns);
    }
    ns
}

/// Identify through the hardware layer: needs the controller's character device and, on a
/// live machine, root. Model, serial and firmware from Identify win over sysfs (they are the
/// same strings, but sysfs may be missing in a minimal ramdisk).
mod identify {
    use std::fs::File;

    use molar_protocol::inventory::{NvmeController, NvmeEraseCapabilities, NvmeNamespace};

    use super::super::{Ctx, InventoryError, io_reason};
    use crate::hw::nvme;

    fn open(ctx: &mut Ctx, controller: &str) -> Option<File> {
        let path = format!("/dev/{controller}");
        match File::open(ctx.path(&path)) {
            Ok(f) => Some(f),
            Err(e) => {
                ctx.error(InventoryError::NvmeIdentify {
                    path,
                    reason: io_reason(&e),
                });
                None
            }
        }
    }

    fn failed(ctx: &mut Ctx, controller: &str, e: nvme::NvmeError) {
        ctx.error(InventoryError::NvmeIdentify {
            path: format!("/dev/{controller}"),
            reason: e.to_string(),
        });
    }

    fn text(s: &str) -> Option<String> {
        let t = s.trim();
        (!t.is_empty()).then(|| t.to_string())
    }

    pub(super) fn controller(ctx: &mut Ctx, name: &str, c: &mut NvmeController) {
        let Some(file) = open(ctx, name) else {
            return;
        };
        match nvme::identify_controller(&file) {
            Ok(id) => {
                c.model = text(&id.model).or(c.model.take());
                c.serial = text(&id.serial).or(c.serial.take());
                c.firmware = text(&id.firmware).or(c.firmware.take());
                c.capabilities = Some(NvmeEraseCapabilities {
                    format: id.supports_format(),
                    format_all_namespaces: id.format_applies_to_all(),
                    secure_erase_all_namespaces: id.secure_erase_applies_to_all(),
                    format_crypto_erase: id.crypto_erase_supported(),
                    sanitize_crypto_erase: id.sanitize_crypto(),
                    sanitize_block_erase: id.sanitize_block(),
                    sanitize_overwrite: id.sanitize_overwrite(),
                });
            }
            Err(e) => failed(ctx, name, e),
        }
    }

    /// Identify Namespace through the controller; silent when the controller could not be
    /// opened (already noted once for the controller).
    pub(super) fn namespace(ctx: &mut Ctx, controller: &str, ns: &mut NvmeNamespace) {
        let Ok(file) = File::open(ctx.path(&format!("/dev/{controller}"))) else {
            return;
        };
        match nvme::identify_namespace(&file, ns.nsid) {
            Ok(id) => {
                ns.size_blocks = Some(id.nsze);
                ns.block_size = id
                    .block_size()
                    .and_then(|b| u32::try_from(b).ok())
                    .or(ns.block_size);
            }
            Err(e) => failed(ctx, controller, e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn write(root: &std::path::Path, rel: &str, value: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(p, value).expect("write");
    }

    #[test]
    fn sysfs_details_when_identify_cannot_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        write(
            root,
            "sys/class/nvme/nvme0/model",
            "QEMU NVMe Ctrl                          \n",
        );
        write(
            root,
            "sys/class/nvme/nvme0/serial",
            "deadbeef            \n",
        );
        write(root, "sys/class/nvme/nvme0/firmware_rev", "7.2.22  \n");
        write(root, "sys/block/nvme0n1/size", "2097152\n");
        write(root, "sys/block/nvme0n1/queue/logical_block_size", "4096\n");
        // A regular file where the controller's character device belongs: the Identify
        // ioctl fails with ENOTTY, which must be a note and nothing worse.
        write(root, "dev/nvme0", "");

        let mut ctx = Ctx::new(root);
        let opts = CollectOptions::default();
        let c = controller(&mut ctx, &opts, "nvme0");
        assert_eq!(c.model.as_deref(), Some("QEMU NVMe Ctrl"));
        assert_eq!(c.serial.as_deref(), Some("deadbeef"));
        assert_eq!(c.firmware.as_deref(), Some("7.2.22"));
        assert_eq!(c.capabilities, None);
        let ns = namespace(&mut ctx, &opts, "nvme0", "nvme0n1", 1);
        assert_eq!(
            ns,
            NvmeNamespace {
                nsid: 1,
                size_blocks: Some(262_144),
                block_size: Some(4096)
            }
        );
        assert_eq!(ctx.notes.len(), 2, "{:?}", ctx.notes);
        assert!(ctx.notes.iter().all(|n| n.path == "/dev/nvme0"));
        assert!(
            ctx.notes[0].reason.contains("identify controller"),
            "{:?}",
            ctx.notes
        );

        // Without the device node: one note for the controller, the namespace stays quiet.
        fs::remove_file(root.join("dev/nvme0")).expect("rm");
        let mut ctx = Ctx::new(root);
        controller(&mut ctx, &opts, "nvme0");
        namespace(&mut ctx, &opts, "nvme0", "nvme0n1", 1);
        assert_eq!(ctx.notes.len(), 1, "{:?}", ctx.notes);
        assert_eq!(ctx.notes[0].reason, "no such file or directory");

        // Identify switched off: no device access, no notes.
        let mut ctx = Ctx::new(root);
        let quiet = CollectOptions {
            nvme_identify: false,
            ..CollectOptions::default()
        };
        controller(&mut ctx, &quiet, "nvme0");
        assert!(ctx.notes.is_empty());
    }
}
