//! Method selection: which erase steps to try on a device, in which order, as a pure
//! function of its probed [`Capabilities`]; and the byte ranges a metadata wipe zeroes.

use std::time::Duration;

use super::{EraseMethod, ErasedWith, MIB};
use crate::hw::nvme;

/// NVMe capabilities that matter for erasing one namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NvmeCaps {
    pub sanitize_crypto: bool,
    pub sanitize_block: bool,
    pub format: bool,
    /// FNA bit 2.
    pub format_crypto: bool,
    /// FNA bit 0 or 1: a (secure) format touches every namespace.
    pub format_scope_all: bool,
    /// Every namespace of the controller is being erased too.
    pub owns_controller: bool,
    pub nsid: u32,
    pub lbaf: u8,
}

/// ATA security state that matters for secure erase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AtaCaps {
    pub supported: bool,
    pub enabled: bool,
    pub locked: bool,
    pub frozen: bool,
    pub count_expired: bool,
    pub enhanced: bool,
    pub erase_time: Option<Duration>,
    pub enhanced_erase_time: Option<Duration>,
}

/// Everything method selection looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub nvme: Option<NvmeCaps>,
    pub ata: Option<AtaCaps>,
    pub is_partition: bool,
    /// The device accepts discard at all.
    pub discard: bool,
    /// Discarded blocks are guaranteed to read back as zeroes.
    pub discard_zeroes: bool,
    /// The device offloads write-zeroes (WRITE ZEROES / WRITE SAME).
    pub write_zeroes_offload: bool,
}

/// One way of erasing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    NvmeSanitize(nvme::SanitizeAction),
    NvmeFormat(nvme::SecureEraseSetting),
    AtaSecureErase { enhanced: bool },
    SecureDiscard,
    Discard,
    ZeroOut,
    Overwrite,
    Metadata,
}

impl Step {
    pub fn erased_with(self) -> ErasedWith {
        match self {
            Step::NvmeSanitize(nvme::SanitizeAction::CryptoErase) => ErasedWith::NvmeSanitizeCrypto,
            Step::NvmeSanitize(_) => ErasedWith::NvmeSanitizeBlock,
            Step::NvmeFormat(nvme::SecureEraseSetting::Cryptographic) => {
                ErasedWith::NvmeFormatCrypto
            }
            Step::NvmeFormat(_) => ErasedWith::NvmeFormatUserData,
            Step::AtaSecureErase { enhanced: true } => ErasedWith::AtaSecureEraseEnhanced,
            Step::AtaSecureErase { enhanced: false } => ErasedWith::AtaSecureErase,
            Step::SecureDiscard => ErasedWith::SecureDiscard,
            Step::Discard => ErasedWith::Discard,
            Step::ZeroOut => ErasedWith::ZeroOut,
            Step::Overwrite => ErasedWith::Overwrite,
            Step::Metadata => ErasedWith::Metadata,
        }
    }
    pub(super) fn name(self) -> &'static str {
        match self {
            Step::NvmeSanitize(nvme::SanitizeAction::CryptoErase) => "nvme sanitize crypto erase",
            Step::NvmeSanitize(_) => "nvme sanitize block erase",
            Step::NvmeFormat(nvme::SecureEraseSetting::Cryptographic) => "nvme format (crypto)",
            Step::NvmeFormat(_) => "nvme format (user data erase)",
            Step::AtaSecureErase { enhanced: true } => "ata enhanced security erase",
            Step::AtaSecureErase { enhanced: false } => "ata security erase",
            Step::SecureDiscard => "secure discard",
            Step::Discard => "discard",
            Step::ZeroOut => "zero-out",
            Step::Overwrite => "overwrite",
            Step::Metadata => "metadata wipe",
        }
    }
}

/// The steps to try in order (the first that succeeds wins), and notes on what was ruled
/// out and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub notes: Vec<String>,
}

/// Why an explicit method cannot run on a device (before touching it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanError {
    Unsupported { method: &'static str, why: String },
    AtaFrozen,
    AtaLocked,
    AtaCountExpired,
}

const FROZEN_NOTE: &str = "ata security erase skipped: the drive is frozen; suspend/resume the \
    machine or hot-plug the drive to unfreeze it for a hardware erase";

fn nvme_steps(n: &NvmeCaps, is_partition: bool, notes: &mut Vec<String>) -> Vec<Step> {
    use nvme::{SanitizeAction as A, SecureEraseSetting as S};
    let mut steps = Vec::new();
    if is_partition {
        return steps;
    }
    if n.sanitize_crypto || n.sanitize_block {
        if n.owns_controller {
            if n.sanitize_crypto {
                steps.push(Step::NvmeSanitize(A::CryptoErase));
            }
            if n.sanitize_block {
                steps.push(Step::NvmeSanitize(A::BlockErase));
            }
        } else {
            notes.push(
                "nvme sanitize skipped: it erases the whole controller and other namespaces \
                 are not being erased"
                    .into(),
            );
        }
    }
    if n.format {
        if !n.format_scope_all || n.owns_controller {
            if n.format_crypto {
                steps.push(Step::NvmeFormat(S::Cryptographic));
            }
            steps.push(Step::NvmeFormat(S::UserData));
        } else {
            notes.push(
                "nvme format skipped: the controller formats all namespaces at once and \
                 other namespaces are not being erased"
                    .into(),
            );
        }
    }
    steps
}

/// Choose the steps for `method` on a device with `caps`.
pub fn plan(method: EraseMethod, caps: &Capabilities) -> Result<Plan, PlanError> {
    let mut notes = Vec::new();
    let steps = match method {
        EraseMethod::Auto => {
            let mut steps = Vec::new();
            if let Some(n) = &caps.nvme {
                steps.extend(nvme_steps(n, caps.is_partition, &mut notes));
            }
            if let Some(a) = &caps.ata
                && a.supported
                && !caps.is_partition
            {
                if a.frozen {
                    notes.push(FROZEN_NOTE.into());
                } else if a.locked || a.enabled {
                    notes.push(
                        "ata security erase skipped: security is enabled with an unknown password"
                            .into(),
                    );
                } else if a.count_expired {
                    notes.push("ata security erase skipped: attempt counter expired".into());
                } else {
                    if a.enhanced {
                        steps.push(Step::AtaSecureErase { enhanced: true });
                    }
                    steps.push(Step::AtaSecureErase { enhanced: false });
                }
            }
            if caps.discard {
                steps.push(Step::SecureDiscard);
                if caps.discard_zeroes {
                    steps.push(Step::Discard);
                }
            }
            if caps.write_zeroes_offload {
                steps.push(Step::ZeroOut);
            }
            steps.push(Step::Overwrite);
            steps
        }
        EraseMethod::NvmeSanitize | EraseMethod::NvmeFormat => {
            let name = method.as_str();
            let Some(n) = &caps.nvme else {
                return Err(PlanError::Unsupported {
                    method: name,
                    why: "not an nvme namespace".into(),
                });
            };
            if caps.is_partition {
                return Err(PlanError::Unsupported {
                    method: name,
                    why: "it acts on whole namespaces, not partitions".into(),
                });
            }
            let all = nvme_steps(n, false, &mut notes);
            let steps: Vec<Step> = all
                .into_iter()
                .filter(|s| {
                    matches!(
                        (method, s),
                        (EraseMethod::NvmeSanitize, Step::NvmeSanitize(_))
                            | (EraseMethod::NvmeFormat, Step::NvmeFormat(_))
                    )
                })
                .collect();
            if steps.is_empty() {
                let why = notes.pop().unwrap_or_else(|| {
                    if method == EraseMethod::NvmeSanitize {
                        "the controller reports no sanitize capability (SANICAP)".into()
                    } else {
                        "the controller does not support Format NVM (OACS)".into()
                    }
                });
                return Err(PlanError::Unsupported { method: name, why });
            }
            steps
        }
        EraseMethod::AtaSecureErase => {
            let name = method.as_str();
            let a = match &caps.ata {
                Some(a) if a.supported && !caps.is_partition => a,
                _ => {
                    return Err(PlanError::Unsupported {
                        method: name,
                        why: "not an ata drive with the security feature set".into(),
                    });
                }
            };
            if a.frozen {
                return Err(PlanError::AtaFrozen);
            }
            if a.locked || a.enabled {
                return Err(PlanError::AtaLocked);
            }
            if a.count_expired {
                return Err(PlanError::AtaCountExpired);
            }
            let mut steps = Vec::new();
            if a.enhanced {
                steps.push(Step::AtaSecureErase { enhanced: true });
            }
            steps.push(Step::AtaSecureErase { enhanced: false });
            steps
        }
        EraseMethod::Discard => vec![Step::Discard],
        EraseMethod::Overwrite => vec![Step::Overwrite],
        EraseMethod::Metadata => vec![Step::Metadata],
    };
    Ok(Plan { steps, notes })
}

/// Byte ranges (offset, length) the metadata wipe zeroes on a device of `size` bytes with
/// the given partitions (offset, length): the first 16 MiB and last 2 MiB of the disk and
/// of each partition, and the btrfs superblock mirrors. That covers MBR and both GPT copies,
/// ext2/3/4, xfs, btrfs, vfat, swap, LVM2, mdraid 0.90/1.0/1.1/1.2, bcache, LUKS1/2
/// headers and key slots, and the four ZFS labels. Ranges are aligned to `align`, merged and
/// sorted.
pub fn metadata_regions(size: u64, align: u64, partitions: &[(u64, u64)]) -> Vec<(u64, u64)> {
    const HEAD: u64 = 16 * MIB;
    const TAIL: u64 = 2 * MIB;
    const BTRFS_MIRRORS: [u64; 3] = [64 * MIB, 256 << 30, 1 << 50];
    let align = align.max(512);
    let mut r: Vec<(u64, u64)> = Vec::new();
    let mut add_area = |start: u64, len: u64| {
        let end = start.saturating_add(len).min(size);
        if start >= end {
            return;
        }
        let len = end - start;
        r.push((start, start + len.min(HEAD)));
        r.push((end - len.min(TAIL), end));
        for m in BTRFS_MIRRORS {
            if m + 64 * 1024 <= len {
                r.push((start + m, start + m + 64 * 1024));
            }
        }
    };
    add_area(0, size);
    for (s, l) in partitions {
        add_area(*s, *l);
    }
    let mut r: Vec<(u64, u64)> = r
        .into_iter()
        .map(|(s, e)| {
            let s = s / align * align;
            let e = e.div_ceil(align).saturating_mul(align).min(size);
            (s, e)
        })
        .filter(|(s, e)| s < e)
        .collect();
    r.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (s, e) in r {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out.into_iter().map(|(s, e)| (s, e - s)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::erase::EraseError;
    use nvme::{SanitizeAction as A, SecureEraseSetting as S};

    fn nvme_caps() -> NvmeCaps {
        NvmeCaps {
            format: true,
            owns_controller: true,
            nsid: 1,
            ..Default::default()
        }
    }

    fn steps(method: EraseMethod, caps: &Capabilities) -> Vec<Step> {
        plan(method, caps).unwrap().steps
    }

    #[test]
    fn auto_on_qemu_nvme_uses_format_user_data() {
        // QEMU 7.2: oacs=0x10a (format), fna=0, sanicap=0.
        let caps = Capabilities {
            nvme: Some(nvme_caps()),
            ..Default::default()
        };
        assert_eq!(
            steps(EraseMethod::Auto, &caps),
            [Step::NvmeFormat(S::UserData), Step::Overwrite]
        );
    }

    #[test]
    fn auto_on_nvme_prefers_sanitize_crypto_then_block_then_format_crypto() {
        let caps = Capabilities {
            nvme: Some(NvmeCaps {
                sanitize_crypto: true,
                sanitize_block: true,
                format_crypto: true,
                ..nvme_caps()
            }),
            discard: true,
            discard_zeroes: true,
            ..Default::default()
        };
        assert_eq!(
            steps(EraseMethod::Auto, &caps),
            [
                Step::NvmeSanitize(A::CryptoErase),
                Step::NvmeSanitize(A::BlockErase),
                Step::NvmeFormat(S::Cryptographic),
                Step::NvmeFormat(S::UserData),
                Step::SecureDiscard,
                Step::Discard,
                Step::Overwrite
            ]
        );
        assert_eq!(
            steps(EraseMethod::NvmeSanitize, &caps),
            [
                Step::NvmeSanitize(A::CryptoErase),
                Step::NvmeSanitize(A::BlockErase)
            ]
        );
        assert_eq!(
            steps(EraseMethod::NvmeFormat, &caps),
            [
                Step::NvmeFormat(S::Cryptographic),
                Step::NvmeFormat(S::UserData)
            ]
        );
    }

    #[test]
    fn controller_wide_operations_need_every_namespace() {
        let caps = Capabilities {
            nvme: Some(NvmeCaps {
                sanitize_crypto: true,
                format_scope_all: true,
                owns_controller: false,
                ..nvme_caps()
            }),
            ..Default::default()
        };
        let p = plan(EraseMethod::Auto, &caps).unwrap();
        assert_eq!(p.steps, [Step::Overwrite]);
        assert_eq!(p.notes.len(), 2);
        match plan(EraseMethod::NvmeSanitize, &caps) {
            Err(PlanError::Unsupported { why, .. }) => assert!(why.contains("other namespaces")),
            other => panic!("{other:?}"),
        }
        // Per-namespace format is fine without owning the controller.
        let caps = Capabilities {
            nvme: Some(NvmeCaps {
                owns_controller: false,
                ..nvme_caps()
            }),
            ..Default::default()
        };
        assert_eq!(
            steps(EraseMethod::NvmeFormat, &caps),
            [Step::NvmeFormat(S::UserData)]
        );
        let none = Capabilities {
            nvme: Some(NvmeCaps {
                format: false,
                ..nvme_caps()
            }),
            ..Default::default()
        };
        assert!(matches!(
            plan(EraseMethod::NvmeSanitize, &none),
            Err(PlanError::Unsupported { .. })
        ));
        assert!(matches!(
            plan(EraseMethod::NvmeFormat, &Capabilities::default()),
            Err(PlanError::Unsupported { .. })
        ));
    }

    #[test]
    fn ata_selection_and_frozen_drives() {
        let ok = AtaCaps {
            supported: true,
            enhanced: true,
            ..Default::default()
        };
        let caps = Capabilities {
            ata: Some(ok),
            discard: true,
            ..Default::default()
        };
        assert_eq!(
            steps(EraseMethod::Auto, &caps),
            [
                Step::AtaSecureErase { enhanced: true },
                Step::AtaSecureErase { enhanced: false },
                Step::SecureDiscard,
                Step::Overwrite
            ]
        );
        let frozen = Capabilities {
            ata: Some(AtaCaps { frozen: true, ..ok }),
            ..Default::default()
        };
        let p = plan(EraseMethod::Auto, &frozen).unwrap();
        assert_eq!(p.steps, [Step::Overwrite]);
        assert!(p.notes[0].contains("frozen") && p.notes[0].contains("suspend/resume"));
        assert_eq!(
            plan(EraseMethod::AtaSecureErase, &frozen),
            Err(PlanError::AtaFrozen)
        );
        let e = EraseError::AtaFrozen {
            device: "/dev/sda".into(),
        };
        assert_eq!(e.code(), "ata_frozen");
        assert!(e.to_string().contains("suspend and resume"));
        let locked = Capabilities {
            ata: Some(AtaCaps { locked: true, ..ok }),
            ..Default::default()
        };
        assert_eq!(
            plan(EraseMethod::AtaSecureErase, &locked),
            Err(PlanError::AtaLocked)
        );
        assert!(matches!(
            plan(EraseMethod::AtaSecureErase, &Capabilities::default()),
            Err(PlanError::Unsupported { .. })
        ));
    }

    #[test]
    fn generic_devices_and_partitions() {
        // A loop device: discard without a zero guarantee, no write-zeroes offload.
        let lp = Capabilities {
            discard: true,
            ..Default::default()
        };
        assert_eq!(
            steps(EraseMethod::Auto, &lp),
            [Step::SecureDiscard, Step::Overwrite]
        );
        let zeroing = Capabilities {
            discard: true,
            discard_zeroes: true,
            write_zeroes_offload: true,
            ..Default::default()
        };
        assert_eq!(
            steps(EraseMethod::Auto, &zeroing),
            [
                Step::SecureDiscard,
                Step::Discard,
                Step::ZeroOut,
                Step::Overwrite
            ]
        );
        // Partitions never get whole-device hardware erases.
        let part = Capabilities {
            nvme: Some(NvmeCaps {
                sanitize_crypto: true,
                ..nvme_caps()
            }),
            is_partition: true,
            ..Default::default()
        };
        assert_eq!(steps(EraseMethod::Auto, &part), [Step::Overwrite]);
        assert!(plan(EraseMethod::NvmeFormat, &part).is_err());
        for (m, s) in [
            (EraseMethod::Discard, Step::Discard),
            (EraseMethod::Overwrite, Step::Overwrite),
            (EraseMethod::Metadata, Step::Metadata),
        ] {
            assert_eq!(steps(m, &part), [s]);
        }
    }

    #[test]
    fn metadata_regions_cover_both_ends_partitions_and_btrfs_mirrors() {
        let g = 1u64 << 30;
        let r = metadata_regions(
            10 * g,
            512,
            &[(MIB, 100 * MIB), (101 * MIB, 10 * g - 102 * MIB)],
        );
        // Disk head (16 MiB, swallowing the first partition's head), p1 tail, p1 btrfs
        // mirror at +64 MiB, disk btrfs mirror at 64 MiB, ...
        assert_eq!(r[0], (0, 17 * MIB));
        assert!(r.contains(&(64 * MIB, 64 * 1024)));
        assert!(r.contains(&(65 * MIB, 64 * 1024)));
        assert!(r.contains(&(99 * MIB, 18 * MIB)), "{r:?}");
        let last = r.last().unwrap();
        assert_eq!(last.0 + last.1, 10 * g);
        assert!(last.1 >= 2 * MIB);
        // Sorted, non-overlapping, aligned.
        for w in r.windows(2) {
            assert!(w[0].0 + w[0].1 < w[1].0);
        }
        assert!(r.iter().all(|(s, l)| s % 512 == 0 && l % 512 == 0));
        // A tiny device is covered whole.
        assert_eq!(metadata_regions(3 * MIB, 4096, &[]), [(0, 3 * MIB)]);
        assert!(metadata_regions(0, 512, &[]).is_empty());
        // Past 256 GiB the second btrfs mirror appears.
        let r = metadata_regions(300 * g, 4096, &[]);
        assert!(r.contains(&(256 * g, 64 * 1024)));
    }
}
