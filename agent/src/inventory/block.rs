//! Block devices in the inventory: the disk list of [`crate::disks`] (the one description of
//! disks the erase safety layer also uses) converted to wire types, plus what only the
//! inventory wants: filesystem signatures read from `ROOT/dev/NAME` and NVMe controller
//! details from Identify.
//!
//! Work per disk is constant (a few reads per device node, one Identify per controller), so
//! a thousand disks cost a thousand times one disk, never more.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;

use molar_protocol::inventory::{BlockDevice, FsSignature, NvmeController, Partition, Transport};

use super::{CollectOptions, Ctx, InventoryError, fssig, natural_cmp, nvme};
use crate::disks::{self, Disk};

fn transport(t: disks::Transport) -> Transport {
    match t {
        disks::Transport::Nvme => Transport::Nvme,
        disks::Transport::Sata => Transport::Sata,
        disks::Transport::Sas => Transport::Sas,
        disks::Transport::Scsi => Transport::Scsi,
        disks::Transport::Virtio => Transport::Virtio,
        disks::Transport::Usb => Transport::Usb,
        disks::Transport::Mmc => Transport::Mmc,
        disks::Transport::Loop => Transport::Loop,
        disks::Transport::Virtual => Transport::Virtual,
        disks::Transport::Other => Transport::Other,
    }
}

/// Opens a device node for reading signatures: read-only, and non-blocking so an empty
/// optical drive answers at once instead of waiting for media.
fn open_read_only(ctx: &Ctx, name: &str) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(ctx.path(&format!("/dev/{name}")))
}

/// Signatures on one device node; devices without media (size 0) are not opened.
fn signatures(ctx: &mut Ctx, opts: &CollectOptions, name: &str, size: u64) -> Vec<FsSignature> {
    if !opts.filesystem_signatures || size == 0 {
        return Vec::new();
    }
    let path = format!("/dev/{name}");
    let result = open_read_only(ctx, name).and_then(|mut f| fssig::probe(&mut f, size));
    match result {
        Ok(sigs) => sigs.into_iter().map(FsSignature::from).collect(),
        Err(source) => {
            ctx.error(InventoryError::Signature { path, source });
            Vec::new()
        }
    }
}

fn mount_points(mounts: &[disks::Mount]) -> Vec<String> {
    let mut v: Vec<String> = mounts.iter().map(|m| m.mount_point.clone()).collect();
    v.sort();
    v.dedup();
    v
}

fn convert(
    ctx: &mut Ctx,
    opts: &CollectOptions,
    d: Disk,
    controllers: &mut HashMap<String, NvmeController>,
) -> BlockDevice {
    let partitions = d
        .partitions
        .iter()
        .map(|p| Partition {
            name: p.name.clone(),
            number: p.number,
            start_bytes: p.start_bytes,
            size_bytes: Some(p.size_bytes),
            signatures: signatures(ctx, opts, &p.name, p.size_bytes),
            holders: p.holders.clone(),
            mounts: mount_points(&p.mounts),
        })
        .collect();
    let nvme = d.nvme_controller.as_ref().map(|controller| {
        // One Identify Controller per controller, however many namespaces it has.
        let mut c = controllers
            .entry(controller.clone())
            .or_insert_with(|| nvme::controller(ctx, opts, controller))
            .clone();
        if let Some(nsid) = d.nsid {
            c.namespaces = vec![nvme::namespace(ctx, opts, controller, &d.name, nsid)];
        }
        c
    });
    let mounts = mount_points(&d.mounts);
    BlockDevice {
        path: format!("/dev/{}", d.name),
        size_bytes: Some(d.size_bytes),
        logical_sector_size: d.logical_block_size,
        physical_sector_size: d.physical_block_size,
        rotational: d.rotational,
        removable: d.removable,
        read_only: d.read_only,
        model: d.model,
        vendor: d.vendor,
        serial: d.serial,
        wwn: d.wwn,
        firmware: d.firmware_rev,
        transport: transport(d.transport),
        by_path: d.by_path,
        signatures: signatures(ctx, opts, &d.name, d.size_bytes),
        partitions,
        holders: d.holders,
        mounted: !mounts.is_empty(),
        mounts,
        boot_device: d.boot_device,
        nvme,
        name: d.name,
    }
}

pub(crate) fn collect(ctx: &mut Ctx, opts: &CollectOptions) -> Vec<BlockDevice> {
    let mut list = match disks::enumerate(ctx.path("/").as_path()) {
        Ok(list) => list,
        Err(e) => {
            ctx.error(InventoryError::BlockDevices {
                path: "/sys/block".to_string(),
                reason: e.to_string(),
            });
            return Vec::new();
        }
    };
    list.sort_by(|a, b| natural_cmp(&a.name, &b.name));
    let mut controllers = HashMap::new();
    list.into_iter()
        .map(|d| convert(ctx, opts, d, &mut controllers))
        .collect()
}
