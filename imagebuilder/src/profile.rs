//! Module profiles: which drivers a ramdisk carries. Dependencies are not listed here; they
//! are resolved from the modules themselves (see `kmod`).

use thiserror::Error;

/// An unknown profile name.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("unknown profile {0:?} (known: {known})", known = PROFILES.iter().map(|p| p.name).collect::<Vec<_>>().join(", "))]
pub struct UnknownProfile(pub String);

impl UnknownProfile {
    /// Stable snake_case code for programs.
    pub fn code(&self) -> &'static str {
        "unknown_profile"
    }
}

/// A named list of modules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Profile {
    pub name: &'static str,
    pub modules: &'static [&'static str],
}

/// Real servers' storage, NICs and BMC interfaces, the filesystems kexec targets are read
/// from, and what the QEMU lab's machine needs (LAB.md).
pub const DEFAULT: Profile = Profile {
    name: "default",
    modules: &[
        // storage
        "nvme",
        "ahci",
        "sd_mod",
        "virtio_blk",
        "megaraid_sas",
        "mpt3sas",
        // network
        "virtio_net",
        "e1000",
        "e1000e",
        "igb",
        "ixgbe",
        "i40e",
        "ice",
        "bnxt_en",
        "mlx5_core",
        // BMC
        "ipmi_si",
        "ipmi_devintf",
        "ipmi_ssif",
        // filesystems for kexec, with the code pages vfat mounts with by default
        "ext4",
        "xfs",
        "vfat",
        "nls_cp437",
        "nls_ascii",
        "nls_utf8",
        "nls_iso8859_1",
        // UEFI variables, for the boot entry run_image writes
        "efivarfs",
        // /dev/efi_capsule_loader, for uefi_capsule firmware updates without capsule on disk
        "capsule_loader",
        // block devices over files (run_image mounts partitions through loop windows when
        // devtmpfs has no node for them); the PCI transport of every virtio device
        "loop",
        "virtio_pci",
        // crypto providers that nvme's t10-pi and ext4/xfs pick by alias, not by dependency
        "crct10dif_pclmul",
        "crct10dif_generic",
        "crc32c_generic",
        "crc32c_intel",
    ],
};

/// Every profile this builder knows.
pub const PROFILES: &[Profile] = &[DEFAULT];

impl Profile {
    pub fn by_name(name: &str) -> Result<Profile, UnknownProfile> {
        PROFILES
            .iter()
            .find(|p| p.name == name)
            .copied()
            .ok_or_else(|| UnknownProfile(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_default_profile_and_names_unknown_ones() {
        assert_eq!(Profile::by_name("default"), Ok(DEFAULT));
        let e = Profile::by_name("tiny").unwrap_err();
        assert_eq!(e.to_string(), "unknown profile \"tiny\" (known: default)");
    }
}
