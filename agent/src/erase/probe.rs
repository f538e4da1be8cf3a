//! Probing a device: what it can do (NVMe sanitize/format, ATA security, discard, write
//! zeroes), read from sysfs and the drive's own identify data.

use std::fs::File;

use super::plan::{AtaCaps, Capabilities, NvmeCaps};
use crate::disks::Transport;
use crate::hw::{ata, block, nvme};
use crate::safety::ClearedTarget;

/// Probe what the device can do.
pub(super) fn probe(t: &ClearedTarget, file: &File) -> (Capabilities, Vec<String>) {
    let d = t.disk();
    let mut notes = Vec::new();
    let mut caps = Capabilities {
        is_partition: t.is_partition(),
        discard: d.discard_max_bytes.unwrap_or(0) > 0,
        discard_zeroes: d.discard_zeroes_data == Some(true)
            || block::discard_zeroes_data(file).unwrap_or(false),
        write_zeroes_offload: d.write_zeroes_max_bytes.unwrap_or(0) > 0,
        ..Default::default()
    };
    if d.transport == Transport::Nvme && !t.is_partition() {
        match nvme::identify_controller(file) {
            Ok(c) => {
                let nsid = d
                    .nsid
                    .or_else(|| nvme::namespace_id(file).ok())
                    .unwrap_or(1);
                let ns = nvme::identify_namespace(file, nsid);
                if let Ok(ns) = &ns
                    && ns.deallocated_reads_zero()
                {
                    caps.discard_zeroes = true;
                }
                caps.nvme = Some(NvmeCaps {
                    sanitize_crypto: c.sanitize_crypto(),
                    sanitize_block: c.sanitize_block(),
                    format: c.supports_format() && ns.is_ok(),
                    format_crypto: c.crypto_erase_supported(),
                    format_scope_all: c.format_applies_to_all() || c.secure_erase_applies_to_all(),
                    owns_controller: t.owns_nvme_controller(),
                    nsid,
                    lbaf: ns.as_ref().map_or(0, |n| n.current_lbaf()),
                });
            }
            Err(e) => notes.push(format!("nvme identify failed, using generic methods: {e}")),
        }
    }
    let ata_like = d.transport == Transport::Sata
        || (matches!(d.transport, Transport::Sas | Transport::Scsi)
            && d.vendor.as_deref() == Some("ATA"));
    if ata_like && !t.is_partition() {
        match ata::identify(file) {
            Ok(id) => {
                caps.ata = Some(AtaCaps {
                    supported: id.security_supported,
                    enabled: id.security_enabled,
                    locked: id.security_locked,
                    frozen: id.security_frozen,
                    count_expired: id.security_count_expired,
                    enhanced: id.enhanced_erase_supported,
                    erase_time: id.erase_time,
                    enhanced_erase_time: id.enhanced_erase_time,
                })
            }
            Err(e) => notes.push(format!("ata identify failed, using generic methods: {e}")),
        }
    }
    (caps, notes)
}
