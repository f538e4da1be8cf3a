//! Wire types of the `inventory` method's result: what machine the agent runs on.
//!
//! The agent fills these from sysfs, procfs, the SMBIOS tables, `/dev` and the BMC; the
//! controller stores the latest document per server and shows it. Every attribute the agent
//! could not read is `None` (or an empty list) and explained by an entry in
//! [`Inventory::notes`], so a partial inventory is still a valid document. Sizes are bytes,
//! frequencies MHz, link speeds Mbit/s.

use serde::{Deserialize, Serialize};

/// The complete hardware inventory of one machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    /// When the agent collected this document (RFC 3339, UTC).
    pub collected_at: String,
    /// Version of the `molar-agent` that collected it.
    pub agent_version: String,
    /// The running kernel.
    pub kernel: Kernel,
    /// SMBIOS type 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<System>,
    /// SMBIOS type 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bios: Option<Bios>,
    /// SMBIOS type 2 (the first one: the main board).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseboard: Option<Baseboard>,
    /// SMBIOS type 3 (the first one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chassis: Option<Chassis>,
    /// SMBIOS type 11 strings, in table order; values of secret-looking `key=value` items
    /// (tokens, passwords) are replaced by `<redacted>`.
    #[serde(default)]
    pub oem_strings: Vec<String>,
    /// Firmware boot mode.
    pub boot: Boot,
    /// Processors.
    pub cpu: Cpu,
    /// NUMA nodes, by id.
    #[serde(default)]
    pub numa_nodes: Vec<NumaNode>,
    /// Memory totals.
    pub memory: Memory,
    /// Memory device slots from SMBIOS type 17, populated or not.
    #[serde(default)]
    pub dimms: Vec<Dimm>,
    /// Whole block devices (disks), by name.
    #[serde(default)]
    pub block_devices: Vec<BlockDevice>,
    /// Network interfaces, by name.
    #[serde(default)]
    pub nics: Vec<Nic>,
    /// PCI functions, by address.
    #[serde(default)]
    pub pci_devices: Vec<PciDevice>,
    /// The PCI functions of display class (0x03), also listed in `pci_devices`.
    #[serde(default)]
    pub gpus: Vec<PciDevice>,
    /// The local BMC as seen in-band over IPMI; filled by the agent's BMC code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bmc: Option<crate::bmc::BmcInfo>,
    /// Every firmware component the agent could read a version of, across all sources
    /// (SMBIOS, ESRT, BMC, NVMe, disks, NICs, CPU microcode). Absent from documents of older
    /// agents, so it defaults to empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub firmware: Vec<FirmwareComponent>,
    /// Everything that could not be read, with why.
    #[serde(default)]
    pub notes: Vec<Note>,
}

/// One attribute or source the agent could not read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Note {
    /// The path as seen on the inspected machine (`/sys/...`), or a device name.
    pub path: String,
    /// Why it is missing, e.g. "permission denied".
    pub reason: String,
}

/// The running kernel.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Kernel {
    /// `uname -r`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    /// `uname -v` (build number and date).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// SMBIOS type 1: the system as its manufacturer names it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct System {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manufacturer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Lowercase hyphenated UUID, in the byte order of SMBIOS 2.6+ (the first three fields
    /// little-endian), as `dmidecode` and `/sys/class/dmi/id/product_uuid` show it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sku: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
}

/// SMBIOS type 0: the platform firmware.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Bios {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// As the firmware writes it, usually `MM/DD/YYYY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_date: Option<String>,
    /// System BIOS major.minor release (SMBIOS 2.4+), e.g. "1.16".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
}

/// SMBIOS type 2: the main board.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Baseboard {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manufacturer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asset_tag: Option<String>,
}

/// SMBIOS type 3: the enclosure.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Chassis {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manufacturer: Option<String>,
    /// The SMBIOS chassis type as text ("Rack Mount Chassis", "Other", ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asset_tag: Option<String>,
}

/// How the firmware booted the running kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BootMode {
    Uefi,
    Bios,
}

/// Boot mode and Secure Boot state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Boot {
    pub mode: BootMode,
    /// `None` under BIOS, or when the `SecureBoot` EFI variable is unreadable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_boot: Option<bool>,
}

/// The processors, summarised (all sockets of a server carry the same model).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Cpu {
    /// e.g. "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// e.g. "GenuineIntel", "AuthenticAMD".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_number: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stepping: Option<u32>,
    /// Microcode revision as the kernel prints it, e.g. "0xd0003a5".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub microcode: Option<String>,
    /// Physical packages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sockets: Option<u32>,
    /// Physical cores over all sockets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cores: Option<u32>,
    /// Logical processors (hardware threads) online.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<u32>,
    /// Current frequency of the first processor, as /proc/cpuinfo reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_mhz: Option<f64>,
    /// Highest frequency cpufreq knows of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_frequency_mhz: Option<f64>,
    /// Feature flags of the first processor, in kernel order.
    #[serde(default)]
    pub flags: Vec<String>,
}

/// One NUMA node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NumaNode {
    pub id: u32,
    /// Logical CPU numbers in this node.
    #[serde(default)]
    pub cpus: Vec<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
}

/// Memory totals.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Memory {
    /// `MemTotal` of /proc/meminfo: what the kernel can use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_bytes: Option<u64>,
    /// Sum of the populated DIMMs' sizes from SMBIOS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed_bytes: Option<u64>,
}

/// One SMBIOS type 17 memory device (a DIMM slot).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Dimm {
    /// Slot name, e.g. "DIMM_A1".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locator: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bank: Option<String>,
    /// False for an empty slot.
    pub populated: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// Memory type as text ("DDR4", "DDR5", ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Form factor as text ("DIMM", "SODIMM", ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub form_factor: Option<String>,
    /// Maximum speed in MT/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed_mts: Option<u32>,
    /// Configured speed in MT/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configured_speed_mts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manufacturer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part_number: Option<String>,
}

/// How a block device is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    Nvme,
    Sata,
    Sas,
    Scsi,
    Virtio,
    Usb,
    Mmc,
    Loop,
    /// Kernel-made devices without hardware: zram, device mapper, md, ram disks.
    Virtual,
    #[serde(other)]
    Other,
}

/// A filesystem, volume-manager or partition-table signature found on a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsSignature {
    /// `ext2`, `ext3`, `ext4`, `xfs`, `btrfs`, `vfat`, `ntfs`, `swap`, `LVM2_member`,
    /// `linux_raid_member`, `iso9660`, `gpt`, `dos` (the names `blkid` uses).
    pub kind: String,
    /// Byte offset of the magic on the device.
    pub offset: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Format version where the format has one (md metadata "1.2", swap "1", ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// One partition of a block device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<u32>,
    /// First byte on the parent device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    #[serde(default)]
    pub signatures: Vec<FsSignature>,
    /// Devices stacked on this partition (dm-0, md0).
    #[serde(default)]
    pub holders: Vec<String>,
    /// Mount points of this partition and of what is stacked on it.
    #[serde(default)]
    pub mounts: Vec<String>,
}

/// What an NVMe controller can do to erase its media (Identify Controller).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NvmeEraseCapabilities {
    /// Format NVM is supported (OACS bit 1).
    pub format: bool,
    /// A format applies to all namespaces at once (FNA bit 0).
    pub format_all_namespaces: bool,
    /// A secure erase by format applies to all namespaces at once (FNA bit 1).
    pub secure_erase_all_namespaces: bool,
    /// Format NVM with cryptographic erase is supported (FNA bit 2).
    pub format_crypto_erase: bool,
    /// Sanitize with crypto erase (SANICAP bit 0).
    pub sanitize_crypto_erase: bool,
    /// Sanitize with block erase (SANICAP bit 1).
    pub sanitize_block_erase: bool,
    /// Sanitize with overwrite (SANICAP bit 2).
    pub sanitize_overwrite: bool,
}

/// One NVMe namespace (Identify Namespace).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NvmeNamespace {
    pub nsid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_blocks: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u32>,
}

/// The NVMe controller behind a namespace block device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NvmeController {
    /// Kernel name, e.g. "nvme0".
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<String>,
    /// Absent when Identify could not be issued (not root, not a real device).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<NvmeEraseCapabilities>,
    /// The namespace(s) the kernel exposes for this block device.
    #[serde(default)]
    pub namespaces: Vec<NvmeNamespace>,
}

/// A whole block device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockDevice {
    /// Kernel name, e.g. "nvme0n1", "sda".
    pub name: String,
    /// Device node, e.g. "/dev/sda".
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logical_sector_size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub physical_sector_size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotational: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removable: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wwn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<String>,
    pub transport: Transport,
    /// Stable `/dev/disk/by-path` style name, e.g. "pci-0000:00:04.0-nvme-1".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by_path: Option<String>,
    /// Signatures on the whole device (partition tables, whole-disk filesystems).
    #[serde(default)]
    pub signatures: Vec<FsSignature>,
    #[serde(default)]
    pub partitions: Vec<Partition>,
    /// Devices stacked on the whole device.
    #[serde(default)]
    pub holders: Vec<String>,
    /// Mount points of the device, its partitions and everything stacked on them.
    #[serde(default)]
    pub mounts: Vec<String>,
    /// True when the device or any of its partitions is mounted.
    pub mounted: bool,
    /// True when the running system booted from this device (it holds `/`, `/boot`, the
    /// kernel's `root=`, or live boot media).
    #[serde(default)]
    pub boot_device: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nvme: Option<NvmeController>,
}

/// One IP address of an interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpAddress {
    /// Textual address, e.g. "10.0.2.15" or "fe80::5054:ff:fe12:3456".
    pub address: String,
    pub prefix_len: u8,
}

/// A network interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nic {
    pub name: String,
    /// Lowercase colon-separated hardware address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware_version: Option<String>,
    /// The PCI function the interface sits on, e.g. "0000:00:03.0".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci_address: Option<String>,
    /// Link speed in Mbit/s; absent while the link is down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed_mbps: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carrier: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// `up`, `down`, `unknown`, ... as the kernel reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operstate: Option<String>,
    /// Software-only interface (loopback, bridge, bond, veth, ...).
    pub virtual_device: bool,
    #[serde(default)]
    pub addresses: Vec<IpAddress>,
}

/// One PCI function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciDevice {
    /// Domain:bus:device.function, e.g. "0000:3b:00.0".
    pub address: String,
    /// 24-bit class code (base class, subclass, programming interface).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<u32>,
    /// Name of the base class, e.g. "display controller".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor_id: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subsystem_vendor_id: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subsystem_device_id: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numa_node: Option<u32>,
}

/// What kind of firmware a [`FirmwareComponent`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FirmwareKind {
    /// The platform firmware as SMBIOS type 0 names it.
    Bios,
    /// One entry of the EFI System Resource Table.
    UefiEsrt,
    /// The baseboard management controller (IPMI Get Device ID).
    Bmc,
    /// An NVMe controller.
    Nvme,
    /// A SATA/SAS/SCSI disk.
    Disk,
    /// A network interface's adapter.
    Nic,
    /// The processors' microcode.
    CpuMicrocode,
    /// A kind a newer peer knows of.
    #[serde(other)]
    Other,
}

/// One firmware component and its version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirmwareComponent {
    pub kind: FirmwareKind,
    /// Which one: a device name ("nvme0", "sda", "eth0"), an ESRT entry ("entry0"), or the
    /// kind itself for singletons ("bios", "bmc", "cpu").
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The version as the component reports it (for ESRT entries, `fw_version` in decimal).
    pub version: String,
    /// SMBIOS release date of the BIOS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_date: Option<String>,
    /// The BMC's auxiliary firmware revision, four bytes as hex ("00000000").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aux_revision: Option<String>,
    /// The NIC driver the firmware version came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub esrt: Option<EsrtEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nvme: Option<NvmeFirmware>,
    /// The PCI function the firmware runs on (NVMe controllers, NICs), from sysfs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci: Option<PciIds>,
}

/// A PCI function's identity: vendor and device id, and the subsystem ids when it has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciIds {
    pub vendor_id: u16,
    pub device_id: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subsystem_vendor_id: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subsystem_device_id: Option<u16>,
}

impl std::fmt::Display for PciIds {
    /// `8086:1533`, or `8086:1533:15d9:1533` with the subsystem.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04x}:{:04x}", self.vendor_id, self.device_id)?;
        if let (Some(v), Some(d)) = (self.subsystem_vendor_id, self.subsystem_device_id) {
            write!(f, ":{v:04x}:{d:04x}")?;
        }
        Ok(())
    }
}

/// One EFI System Resource Table entry (UEFI 2.x, 23.4), as the kernel exposes it under
/// `/sys/firmware/efi/esrt/entries/entryN/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EsrtEntry {
    /// The firmware class GUID, lowercase hyphenated.
    pub guid: String,
    /// 0 unknown, 1 system firmware, 2 device firmware, 3 UEFI driver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fw_type: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fw_version: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lowest_supported_fw_version: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capsule_flags: Option<u32>,
    /// 0 success; 1 unsuccessful, 2 insufficient resources, 3 incorrect version, 4 invalid
    /// format, 5 authentication error, 6 power event AC, 7 power event battery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt_status: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt_version: Option<u32>,
}

/// Firmware details of an NVMe controller: FRMW from Identify Controller and the Firmware
/// Slot Information log page (0x03).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NvmeFirmware {
    /// Number of firmware slots (FRMW bits 3:1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<u8>,
    /// Slot 1 is read-only (FRMW bit 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot1_read_only: Option<bool>,
    /// A new image can be activated without a reset (FRMW bit 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation_without_reset: Option<bool>,
    /// The slot the running firmware came from (AFI bits 2:0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_slot: Option<u8>,
    /// The slot activated at the next reset, when one is set (AFI bits 6:4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_reset_slot: Option<u8>,
    /// Each occupied slot and its revision, by slot number.
    #[serde(default)]
    pub slot_revisions: Vec<NvmeFirmwareSlot>,
}

/// One occupied NVMe firmware slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NvmeFirmwareSlot {
    /// 1 to 7.
    pub slot: u8,
    pub revision: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn firmware_section_is_optional_and_tolerant() {
        // A document from an agent that predates the firmware section still parses.
        let old: Inventory =
            serde_json::from_str(include_str!("../tests/data/inventory-qemu-q35.json"))
                .expect("old document");
        assert!(old.firmware.is_empty());
        // And an empty section is left out, so older controllers see the document they know.
        let v = serde_json::to_value(&old).expect("serialise");
        assert!(v.get("firmware").is_none());

        // A kind from a newer peer, and fields nobody knows of yet, are accepted.
        let c: FirmwareComponent = serde_json::from_value(json!({
            "kind": "gpu_vbios", "name": "card0", "version": "94.02", "future": 1
        }))
        .expect("newer component");
        assert_eq!(c.kind, FirmwareKind::Other);

        let nvme = FirmwareComponent {
            kind: FirmwareKind::Nvme,
            name: "nvme0".into(),
            vendor: None,
            model: Some("QEMU NVMe Ctrl".into()),
            version: "1.0".into(),
            release_date: None,
            aux_revision: None,
            driver: None,
            esrt: None,
            pci: None,
            nvme: Some(NvmeFirmware {
                slots: Some(1),
                slot1_read_only: Some(false),
                activation_without_reset: Some(true),
                active_slot: Some(1),
                next_reset_slot: None,
                slot_revisions: vec![NvmeFirmwareSlot {
                    slot: 1,
                    revision: "1.0".into(),
                }],
            }),
        };
        let v = serde_json::to_value(&nvme).expect("serialise");
        assert_eq!(v["kind"], "nvme");
        assert_eq!(v["nvme"]["slot_revisions"][0]["revision"], "1.0");
        let back: FirmwareComponent = serde_json::from_value(v).expect("round trip");
        assert_eq!(back, nvme);
    }
}
