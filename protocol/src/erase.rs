//! Wire types of `decom.disk_erase`: its params and the task result.
//!
//! The task engine strips `task_id` before the params reach [`DiskEraseParams`], which
//! therefore rejects every field it does not know (hostile or mistyped params fail loudly
//! rather than erasing with defaults). The result types tolerate unknown fields: a controller
//! must understand the report of an agent one release newer.

use serde::{Deserialize, Serialize};

/// Params of `decom.disk_erase` (without the engine's `task_id`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskEraseParams {
    /// Devices to erase (`/dev/sda`, `sda`, `nvme0n1p1` …). Absent: every whole disk.
    /// Partitions are erased only when named here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<String>>,
    /// Disks that must be present, by serial or WWN (as the inventory reports them): when one
    /// is missing the task fails and erases nothing. The controller fills it from the stored
    /// inventory when the operator names no devices, so "every disk" means every disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<Vec<String>>,
    /// Devices to leave alone (reported as skipped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude: Option<Vec<String>>,
    /// Erase method; absent means `auto`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<EraseMethod>,
    /// Read back and check zeroes afterwards; absent means true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<bool>,
    /// Devices erased at once; absent or 0 means all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// For `overwrite`: total passes; all but the last write random data, the last zeros.
    /// Absent means 1 (zeros only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passes: Option<u32>,
}

/// Requested erase method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EraseMethod {
    /// The strongest method each device supports.
    #[default]
    Auto,
    NvmeSanitize,
    NvmeFormat,
    AtaSecureErase,
    Discard,
    Overwrite,
    /// Express: wipe partition tables and filesystem/RAID/LVM signatures only.
    Metadata,
}

impl EraseMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            EraseMethod::Auto => "auto",
            EraseMethod::NvmeSanitize => "nvme_sanitize",
            EraseMethod::NvmeFormat => "nvme_format",
            EraseMethod::AtaSecureErase => "ata_secure_erase",
            EraseMethod::Discard => "discard",
            EraseMethod::Overwrite => "overwrite",
            EraseMethod::Metadata => "metadata",
        }
    }
}

impl std::str::FromStr for EraseMethod {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "auto" => EraseMethod::Auto,
            "nvme_sanitize" => EraseMethod::NvmeSanitize,
            "nvme_format" => EraseMethod::NvmeFormat,
            "ata_secure_erase" => EraseMethod::AtaSecureErase,
            "discard" => EraseMethod::Discard,
            "overwrite" => EraseMethod::Overwrite,
            "metadata" => EraseMethod::Metadata,
            other => {
                return Err(format!(
                    "unknown erase method {other:?} (auto, nvme_sanitize, nvme_format, \
                     ata_secure_erase, discard, overwrite, metadata)"
                ));
            }
        })
    }
}

/// The concrete method a device was erased with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErasedWith {
    NvmeSanitizeCrypto,
    NvmeSanitizeBlock,
    NvmeFormatCrypto,
    NvmeFormatUserData,
    AtaSecureEraseEnhanced,
    AtaSecureErase,
    SecureDiscard,
    Discard,
    ZeroOut,
    Overwrite,
    Metadata,
}

/// Final state of one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceOutcome {
    Erased,
    Failed,
    Cancelled,
}

/// What the read-back found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    pub passed: bool,
    /// Number of blocks read back.
    pub blocks_checked: u64,
    pub bytes_checked: u64,
    /// First offset (bytes) that did not read as zero.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonzero_offset: Option<u64>,
}

/// An error with a stable code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EraseErrorInfo {
    pub code: String,
    pub msg: String,
}

/// Result for one device that was attempted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceEraseResult {
    /// Device node, e.g. `/dev/sda`.
    pub device: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    pub outcome: DeviceOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<ErasedWith>,
    pub size_bytes: u64,
    /// Bytes erased (or the erase's progress when it stopped).
    pub bytes_done: u64,
    pub seconds: f64,
    /// Bytes per second over the erase (not the verification).
    pub throughput: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<EraseErrorInfo>,
    /// Why a weaker method than requested was used, frozen drives, etc.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// A device that was not touched, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedDevice {
    pub device: String,
    /// Stable snake_case reason (`mounted`, `has_holders`, `boot_device`, …).
    pub code: String,
    /// "skipped: <reason>" for people.
    pub reason: String,
}

/// Result of `decom.disk_erase`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskEraseResult {
    pub devices: Vec<DeviceEraseResult>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<SkippedDevice>,
    pub erased: u32,
    pub failed: u32,
    pub cancelled: bool,
    pub bytes: u64,
    pub seconds: f64,
}

impl DiskEraseResult {
    /// True when every attempted device was erased (and verified when asked).
    pub fn all_erased(&self) -> bool {
        self.devices
            .iter()
            .all(|d| d.outcome == DeviceOutcome::Erased)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_reject_unknown_fields_and_task_id() {
        let p: DiskEraseParams =
            serde_json::from_str(r#"{"devices":["/dev/sda"],"method":"overwrite","passes":3}"#)
                .unwrap();
        assert_eq!(p.method, Some(EraseMethod::Overwrite));
        assert_eq!(p.passes, Some(3));
        assert!(serde_json::from_str::<DiskEraseParams>(r#"{"task_id":"t1"}"#).is_err());
        assert!(serde_json::from_str::<DiskEraseParams>(r#"{"method":"shred"}"#).is_err());
        let empty: DiskEraseParams = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, DiskEraseParams::default());
        assert_eq!(serde_json::to_string(&empty).unwrap(), "{}");
    }

    #[test]
    fn methods_round_trip_by_name() {
        for m in [
            EraseMethod::Auto,
            EraseMethod::NvmeSanitize,
            EraseMethod::NvmeFormat,
            EraseMethod::AtaSecureErase,
            EraseMethod::Discard,
            EraseMethod::Overwrite,
            EraseMethod::Metadata,
        ] {
            assert_eq!(m.as_str().parse::<EraseMethod>().unwrap(), m);
            assert_eq!(
                serde_json::to_string(&m).unwrap(),
                format!("\"{}\"", m.as_str())
            );
        }
        assert!("x".parse::<EraseMethod>().is_err());
    }

    #[test]
    fn result_serializes_snake_case() {
        let r = DiskEraseResult {
            devices: vec![DeviceEraseResult {
                device: "/dev/nvme0n1".into(),
                model: None,
                serial: Some("S1".into()),
                outcome: DeviceOutcome::Erased,
                method: Some(ErasedWith::NvmeFormatUserData),
                size_bytes: 1024,
                bytes_done: 1024,
                seconds: 1.0,
                throughput: 1024.0,
                verification: Some(Verification {
                    passed: true,
                    blocks_checked: 3,
                    bytes_checked: 3072,
                    nonzero_offset: None,
                }),
                error: None,
                notes: vec![],
            }],
            skipped: vec![SkippedDevice {
                device: "/dev/sda".into(),
                code: "mounted".into(),
                reason: "skipped: mounted at /".into(),
            }],
            erased: 1,
            failed: 0,
            cancelled: false,
            bytes: 1024,
            seconds: 1.0,
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["devices"][0]["method"], "nvme_format_user_data");
        assert_eq!(v["devices"][0]["outcome"], "erased");
        assert_eq!(v["skipped"][0]["code"], "mounted");
        let back: DiskEraseResult = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
        assert!(r.all_erased());
    }
}
