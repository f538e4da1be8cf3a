//! Wire types of `decom.firmware_secure` (firmware to known-good versions, UEFI settings) and
//! [`Version`], the version order that the task and `decom.qc`'s firmware checks share.
//!
//! Params deny unknown fields: a misspelt `allow_downgrade` silently ignored would flash the
//! wrong image. The result tolerates unknown fields. A component is found by a
//! [`ComponentMatch`] over the inventory's `firmware` section; its package is fetched from an
//! http(s) URL and checked against a digest (or its line in a sums file) exactly as an image
//! is, and the URL is shown only through [`redact_url`].

use crate::image::{Checksum, SpecError, redact_url};
use crate::inventory::{FirmwareComponent, FirmwareKind, PciIds};
use crate::qc::Pattern;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;

/// Most components one task may name.
pub const MAX_COMPONENTS: usize = 64;
/// Most arguments of a payload tool, and the longest one in bytes.
pub const MAX_ARGS: usize = 64;
pub const MAX_ARG_BYTES: usize = 4096;
/// Longest payload run allowed.
pub const MAX_TIMEOUT_S: u64 = 4 * 3600;
/// Longest version string accepted.
pub const MAX_VERSION_CHARS: usize = 64;
/// Most UEFI variable writes per task, and the largest value in bytes.
pub const MAX_VAR_WRITES: usize = 32;
pub const MAX_VAR_BYTES: usize = 4096;

/// Params of `decom.firmware_secure` (without the engine's `task_id`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirmwareParams {
    /// The desired state, one entry per component (or group of identical components).
    #[serde(default)]
    pub components: Vec<ComponentSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<SettingsSpec>,
    /// Report the plan only: nothing is downloaded, written or run.
    #[serde(default)]
    pub dry_run: bool,
}

/// Which inventory firmware components an entry is about; every given attribute must match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentMatch {
    pub kind: FirmwareKind,
    /// The component's name in the inventory (`nvme0`, `bios`, `entry0`), exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Glob on the vendor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<Pattern>,
    /// Glob on the model (NVMe: Identify Controller MN, trimmed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<Pattern>,
    /// The ESRT firmware class GUID (case-insensitive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub esrt_guid: Option<String>,
    /// PCI ids of the function (NVMe controllers, NICs): `"8086:1533"`, or with the
    /// subsystem `"8086:1533:15d9:1533"`; four hex digits each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci: Option<PciMatch>,
}

/// The `pci` of a match: vendor and device, optionally subsystem vendor and device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PciMatch(pub PciIds);

impl PciMatch {
    pub fn parse(text: &str) -> Result<PciMatch, String> {
        let parts: Vec<&str> = text.split(':').collect();
        let id = |p: &str| {
            (p.len() == 4 && p.chars().all(|c| c.is_ascii_hexdigit()))
                .then(|| u16::from_str_radix(p, 16).ok())
                .flatten()
        };
        let ids: Option<Vec<u16>> = parts.iter().map(|p| id(p)).collect();
        match (parts.len(), ids) {
            (2, Some(i)) => Ok(PciMatch(PciIds {
                vendor_id: i[0],
                device_id: i[1],
                subsystem_vendor_id: None,
                subsystem_device_id: None,
            })),
            (4, Some(i)) => Ok(PciMatch(PciIds {
                vendor_id: i[0],
                device_id: i[1],
                subsystem_vendor_id: Some(i[2]),
                subsystem_device_id: Some(i[3]),
            })),
            _ => Err(format!(
                "pci {:?} must be VENDOR:DEVICE or VENDOR:DEVICE:SUBVENDOR:SUBDEVICE, four hex \
                 digits each (8086:1533)",
                short(text)
            )),
        }
    }

    /// Vendor and device equal; the subsystem too when the match names one.
    pub fn matches(&self, ids: &PciIds) -> bool {
        let m = &self.0;
        m.vendor_id == ids.vendor_id
            && m.device_id == ids.device_id
            && (m.subsystem_vendor_id.is_none()
                || (m.subsystem_vendor_id == ids.subsystem_vendor_id
                    && m.subsystem_device_id == ids.subsystem_device_id))
    }
}

impl TryFrom<String> for PciMatch {
    type Error = String;
    fn try_from(s: String) -> Result<PciMatch, String> {
        PciMatch::parse(&s)
    }
}

impl From<PciMatch> for String {
    fn from(p: PciMatch) -> String {
        p.0.to_string()
    }
}

impl ComponentMatch {
    pub fn matches(&self, c: &FirmwareComponent) -> bool {
        let text = |p: &Option<Pattern>, v: &Option<String>| {
            p.as_ref()
                .is_none_or(|p| v.as_deref().is_some_and(|v| p.matches(v.trim())))
        };
        self.kind == c.kind
            && self.name.as_ref().is_none_or(|n| *n == c.name)
            && text(&self.vendor, &c.vendor)
            && text(&self.model, &c.model)
            && self.esrt_guid.as_ref().is_none_or(|g| {
                c.esrt
                    .as_ref()
                    .is_some_and(|e| e.guid.eq_ignore_ascii_case(g.trim()))
            })
            && self
                .pci
                .as_ref()
                .is_none_or(|p| c.pci.as_ref().is_some_and(|ids| p.matches(ids)))
    }
}

impl std::fmt::Display for ComponentMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = serde_json::to_value(self.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| "?".into());
        f.write_str(&kind)?;
        if let Some(n) = &self.name {
            write!(f, " {n}")?;
        }
        if let Some(v) = &self.vendor {
            write!(f, " vendor {:?}", v.as_str())?;
        }
        if let Some(m) = &self.model {
            write!(f, " model {:?}", m.as_str())?;
        }
        if let Some(g) = &self.esrt_guid {
            write!(f, " guid {g}")?;
        }
        if let Some(p) = &self.pci {
            write!(f, " pci {}", p.0)?;
        }
        Ok(())
    }
}

/// One component's desired state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentSpec {
    #[serde(rename = "match")]
    pub matches: ComponentMatch,
    /// The version the component must run.
    pub version: String,
    /// Where the update comes from; without one, a component not at `version` fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<Package>,
    /// How the package is applied; required with a package.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<UpdateMethod>,
    /// NVMe: slot and commit action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nvme: Option<NvmeUpdate>,
    /// Payload: the tool, its arguments and time limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<PayloadUpdate>,
    /// A component newer than `version` is taken back only with this (and only when the ESRT's
    /// lowest supported version allows it).
    #[serde(default)]
    pub allow_downgrade: bool,
}

/// An update package: an http(s) URL and the checksum its bytes must have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "PackageWire", into = "PackageWire")]
pub struct Package {
    pub url: String,
    pub checksum: Checksum,
    /// PEM of a CA trusted (besides the public roots) for this package's https URL.
    pub ca_pem: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageWire {
    pub url: String,
    /// `sha256:HEX`, `sha512:HEX` or the http(s) URL of a sums file; there is no waiver.
    pub checksum: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
}

impl TryFrom<PackageWire> for Package {
    type Error = SpecError;
    fn try_from(w: PackageWire) -> Result<Package, SpecError> {
        crate::image::check_url("package.url", &w.url)?;
        if w.ca_pem
            .as_ref()
            .is_some_and(|c| c.len() > crate::image::MAX_CA_PEM)
        {
            return Err(SpecError::LongCa);
        }
        Ok(Package {
            checksum: Checksum::parse(&w.checksum)?,
            url: w.url,
            ca_pem: w.ca_pem,
        })
    }
}

impl From<Package> for PackageWire {
    fn from(p: Package) -> PackageWire {
        PackageWire {
            url: p.url,
            checksum: p.checksum.to_string(),
            ca_pem: p.ca_pem,
        }
    }
}

impl Package {
    /// The URL as it may be shown.
    pub fn shown_url(&self) -> String {
        redact_url(&self.url)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateMethod {
    /// NVMe Firmware Image Download and Firmware Commit.
    Nvme,
    /// A UEFI capsule staged for the firmware to apply at the next reset.
    UefiCapsule,
    /// A vendor archive with a static tool that the agent runs.
    Payload,
}

/// Firmware Commit Action (CDW10 bits 5:3) as the task offers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommitAction {
    /// CA 001b: replace the slot's image and activate it at the next reset.
    #[default]
    ReplaceActivateReset,
    /// CA 011b: replace and activate now (only when FRMW allows activation without reset).
    ReplaceActivateNow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NvmeUpdate {
    /// Firmware slot 1..7; absent means 0 (the controller chooses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u8>,
    #[serde(default)]
    pub action: CommitAction,
}

/// What a payload's update needs before the new version runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// Runs as soon as the tool exits: the version read afterwards must be the required one.
    #[default]
    Immediate,
    Reboot,
    PowerCycle,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadUpdate {
    /// The program to run, relative to the unpacked archive (no `..`, not absolute).
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    /// Killed (its whole process group) after this long; at most [`MAX_TIMEOUT_S`].
    #[serde(default = "default_timeout")]
    pub timeout_s: u64,
    #[serde(default)]
    pub activation: Activation,
}

fn default_timeout() -> u64 {
    600
}

/// UEFI settings: always reported; these writes applied through efivarfs.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsSpec {
    #[serde(default)]
    pub write: Vec<VariableWrite>,
}

/// One UEFI variable to set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariableWrite {
    /// `BootOrder`, `Timeout`, ...: letters, digits, `_` and `-`.
    pub name: String,
    /// Vendor GUID; absent means the EFI global variable GUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guid: Option<String>,
    /// The value's bytes as hex.
    pub data_hex: String,
    /// Attributes; absent means non-volatile, boot-service and runtime access (7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<u32>,
}

/// The EFI global variable vendor GUID.
pub const EFI_GLOBAL_GUID: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";

impl VariableWrite {
    pub fn guid(&self) -> &str {
        self.guid.as_deref().unwrap_or(EFI_GLOBAL_GUID)
    }
}

/// Why params were refused; each names the component by its index.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamsError {
    #[error("nothing to do: give components or settings")]
    Empty,
    #[error("more than {MAX_COMPONENTS} components")]
    TooMany,
    #[error("components[{0}]: {1}")]
    Component(usize, String),
    #[error("settings.write[{0}]: {1}")]
    Variable(usize, String),
}

impl FirmwareParams {
    /// Everything serde cannot check: method and its details agree, bounded strings, names.
    pub fn validate(&self) -> Result<(), ParamsError> {
        if self.components.is_empty() && self.settings.is_none() {
            return Err(ParamsError::Empty);
        }
        if self.components.len() > MAX_COMPONENTS {
            return Err(ParamsError::TooMany);
        }
        for (i, c) in self.components.iter().enumerate() {
            c.validate().map_err(|e| ParamsError::Component(i, e))?;
        }
        let writes = self.settings.as_ref().map_or(&[][..], |s| &s.write[..]);
        if writes.len() > MAX_VAR_WRITES {
            return Err(ParamsError::Variable(
                MAX_VAR_WRITES,
                format!("more than {MAX_VAR_WRITES} writes"),
            ));
        }
        for (i, w) in writes.iter().enumerate() {
            w.validate().map_err(|e| ParamsError::Variable(i, e))?;
        }
        Ok(())
    }
}

impl ComponentSpec {
    fn validate(&self) -> Result<(), String> {
        let v = self.version.trim();
        if v.is_empty() || v.chars().count() > MAX_VERSION_CHARS {
            return Err(format!(
                "version must be 1 to {MAX_VERSION_CHARS} characters"
            ));
        }
        if v.chars().any(char::is_control) {
            return Err("version contains a control character".into());
        }
        match (&self.package, self.method) {
            (Some(_), None) => return Err("a package needs a method".into()),
            (None, Some(_)) => return Err("a method needs a package".into()),
            _ => {}
        }
        if self.nvme.is_some() && self.method != Some(UpdateMethod::Nvme) {
            return Err("nvme settings are for method nvme".into());
        }
        if self.payload.is_some() && self.method != Some(UpdateMethod::Payload) {
            return Err("payload settings are for method payload".into());
        }
        match self.method {
            Some(UpdateMethod::Nvme) if self.matches.kind != FirmwareKind::Nvme => {
                return Err("method nvme updates only components of kind nvme".into());
            }
            Some(UpdateMethod::Payload) if self.payload.is_none() => {
                return Err("method payload needs payload {command, args?, timeout_s?}".into());
            }
            _ => {}
        }
        if let Some(n) = &self.nvme
            && n.slot.is_some_and(|s| !(1..=7).contains(&s))
        {
            return Err("nvme.slot must be 1 to 7".into());
        }
        if let Some(p) = &self.payload {
            let cmd = std::path::Path::new(&p.command);
            if p.command.is_empty()
                || cmd.is_absolute()
                || cmd
                    .components()
                    .any(|c| !matches!(c, std::path::Component::Normal(_)))
            {
                return Err(format!(
                    "payload.command {:?} must be a relative path inside the archive",
                    short(&p.command)
                ));
            }
            if p.args.len() > MAX_ARGS || p.args.iter().any(|a| a.len() > MAX_ARG_BYTES) {
                return Err(format!(
                    "payload.args: at most {MAX_ARGS} of at most {MAX_ARG_BYTES} bytes"
                ));
            }
            if p.args.iter().chain([&p.command]).any(|a| a.contains('\0')) {
                return Err("payload command and args may not contain NUL".into());
            }
            if p.timeout_s == 0 || p.timeout_s > MAX_TIMEOUT_S {
                return Err(format!("payload.timeout_s must be 1 to {MAX_TIMEOUT_S}"));
            }
        }
        Ok(())
    }
}

impl VariableWrite {
    fn validate(&self) -> Result<(), String> {
        if self.name.is_empty()
            || self.name.len() > 128
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(format!(
                "name {:?} must be 1 to 128 letters, digits, _ or -",
                short(&self.name)
            ));
        }
        if !is_guid(self.guid()) {
            return Err(format!("guid {:?} is not a GUID", short(self.guid())));
        }
        let bytes = hex::decode(self.data_hex.trim())
            .map_err(|_| "data_hex is not hexadecimal".to_owned())?;
        if bytes.is_empty() || bytes.len() > MAX_VAR_BYTES {
            return Err(format!("data_hex must be 1 to {MAX_VAR_BYTES} bytes"));
        }
        Ok(())
    }

    /// The value's bytes (valid after [`FirmwareParams::validate`]).
    pub fn data(&self) -> Vec<u8> {
        hex::decode(self.data_hex.trim()).unwrap_or_default()
    }
}

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` in hex.
pub fn is_guid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.chars().all(|c| c.is_ascii_hexdigit()))
}

fn short(s: &str) -> String {
    s.chars().take(64).collect()
}

/// What happened to one matched component (or, for `not_found`, to a spec entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComponentAction {
    /// Already at the required version.
    SkippedCurrent,
    /// Updated (see `reboot`/`power_cycle` for whether it runs yet).
    Updated,
    /// Dry run: it would be updated.
    WouldUpdate,
    /// Newer than required and a downgrade was not asked for or not allowed.
    DowngradeRefused,
    /// No inventory component matched the entry.
    NotFound,
    /// Not at the required version and no package given.
    NoPackage,
    /// The update was tried and failed (see `message`).
    Failed,
    /// An action a newer peer knows of.
    #[serde(other)]
    Other,
}

impl ComponentAction {
    /// Whether the component ends (or, in a dry run, would end) at the required version.
    pub fn is_secure(self) -> bool {
        matches!(
            self,
            ComponentAction::SkippedCurrent
                | ComponentAction::Updated
                | ComponentAction::WouldUpdate
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ComponentAction::SkippedCurrent => "skipped_current",
            ComponentAction::Updated => "updated",
            ComponentAction::WouldUpdate => "would_update",
            ComponentAction::DowngradeRefused => "downgrade_refused",
            ComponentAction::NotFound => "not_found",
            ComponentAction::NoPackage => "no_package",
            ComponentAction::Failed => "failed",
            ComponentAction::Other => "other",
        }
    }
}

/// One line of the result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentOutcome {
    /// Index of the entry in `components`.
    pub index: usize,
    pub kind: FirmwareKind,
    /// The inventory component's name; `None` for `not_found`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub required: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    pub action: ComponentAction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<UpdateMethod>,
    /// The new version runs only after a reboot.
    #[serde(default)]
    pub reboot: bool,
    /// The new version runs only after a power cycle.
    #[serde(default)]
    pub power_cycle: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The result of `decom.firmware_secure`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FirmwareResult {
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub components: Vec<ComponentOutcome>,
    /// Some update (or a staged capsule) runs only after a reboot.
    #[serde(default)]
    pub reboot_required: bool,
    #[serde(default)]
    pub power_cycle_required: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<SettingsReport>,
    /// One line per component that is not (or would not be) at its required version.
    #[serde(default)]
    pub failures: Vec<String>,
}

/// UEFI settings as read from efivarfs.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SettingsReport {
    /// The machine booted through UEFI and efivarfs is readable.
    #[serde(default)]
    pub uefi: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_boot: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup_mode: Option<bool>,
    /// `Boot####` names in BootOrder order.
    #[serde(default)]
    pub boot_order: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_current: Option<String>,
    /// OsIndicationsSupported has the capsule-on-disk bit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capsule_on_disk_supported: Option<bool>,
    /// Every variable efivarfs lists (bounded), as `Name-guid`.
    #[serde(default)]
    pub variables: Vec<String>,
    /// Variables written by this task, as `Name-guid`.
    #[serde(default)]
    pub written: Vec<String>,
    #[serde(default)]
    pub notes: Vec<String>,
}

/// A firmware version, compared segment by segment.
///
/// The text is split at `.`, `-`, `_`, `,`, spaces and at every change between digits and
/// letters (`1.2a3` is `1 . 2 . a . 3`). A segment of digits is a number (leading zeros do not
/// count; any length); a segment `0x…` of hex digits is a number in hex; anything else is
/// text, compared case-insensitively. A number is newer than text in the same place
/// (`1.0.1` > `1.0.beta`). Trailing zero segments do not count (`1.0` == `1.0.0`); otherwise
/// the longer version is newer.
#[derive(Debug, Clone)]
pub struct Version {
    text: String,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// Digits without leading zeros (empty for 0), compared by length then lexically.
    Num(String),
    /// Text, and whether it follows digits without a separator (`1.2a`: a revision after
    /// 1.2; `1.2-rc1`: a release candidate before it).
    Text(String, bool),
}

impl Segment {
    fn is_zero(&self) -> bool {
        matches!(self, Segment::Num(d) if d.is_empty())
    }
}

impl Ord for Segment {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Segment::Num(a), Segment::Num(b)) => a.len().cmp(&b.len()).then_with(|| a.cmp(b)),
            (Segment::Text(a, _), Segment::Text(b, _)) => a.cmp(b),
            (Segment::Num(_), Segment::Text(..)) => Ordering::Greater,
            (Segment::Text(..), Segment::Num(_)) => Ordering::Less,
        }
    }
}

impl PartialOrd for Segment {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

fn number(digits: &str, radix: u32) -> Segment {
    if radix == 10 {
        return Segment::Num(digits.trim_start_matches('0').to_owned());
    }
    // Hex to decimal digits, by long multiplication: any length, no overflow.
    let mut dec: Vec<u8> = Vec::new(); // little-endian decimal digits
    for c in digits.chars() {
        let mut carry = c.to_digit(16).unwrap_or(0);
        for d in dec.iter_mut() {
            let v = *d as u32 * 16 + carry;
            *d = (v % 10) as u8;
            carry = v / 10;
        }
        while carry > 0 {
            dec.push((carry % 10) as u8);
            carry /= 10;
        }
    }
    Segment::Num(dec.iter().rev().map(|d| char::from(b'0' + d)).collect())
}

impl Version {
    pub fn parse(text: &str) -> Version {
        let mut segments = Vec::new();
        for part in text
            .trim()
            .split(['.', '-', '_', ',', ' '])
            .filter(|p| !p.is_empty())
        {
            let lower = part.to_ascii_lowercase();
            if let Some(hex) = lower.strip_prefix("0x")
                && !hex.is_empty()
                && hex.chars().all(|c| c.is_ascii_hexdigit())
            {
                segments.push(number(hex, 16));
                continue;
            }
            let mut cur = String::new();
            let mut digits = false;
            // Whether the current run follows digits of the same part.
            let mut attached = false;
            for c in lower.chars() {
                let d = c.is_ascii_digit();
                if !cur.is_empty() && d != digits {
                    segments.push(if digits {
                        number(&cur, 10)
                    } else {
                        Segment::Text(std::mem::take(&mut cur), attached)
                    });
                    cur.clear();
                    attached = digits;
                }
                digits = d;
                cur.push(c);
            }
            if !cur.is_empty() {
                segments.push(if digits {
                    number(&cur, 10)
                } else {
                    Segment::Text(cur, attached)
                });
            }
        }
        while segments.last().is_some_and(Segment::is_zero) {
            segments.pop();
        }
        Version {
            text: text.trim().to_owned(),
            segments,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        let (a, b) = (&self.segments, &other.segments);
        for (x, y) in a.iter().zip(b) {
            match x.cmp(y) {
                Ordering::Equal => {}
                o => return o,
            }
        }
        // One is a prefix of the other: what the longer goes on with decides. Zeros are
        // nothing (`1.0` == `1.0.0`, trailing ones were trimmed), a number or an attached
        // suffix is newer (`1.0.1`, `1.2a`), a separated word is a pre-release (`1.0-rc1`).
        let tail = |longer: &[Segment]| match longer.iter().find(|s| !s.is_zero()) {
            None => Ordering::Equal,
            Some(Segment::Num(_)) | Some(Segment::Text(_, true)) => Ordering::Greater,
            Some(Segment::Text(_, false)) => Ordering::Less,
        };
        match a.len().cmp(&b.len()) {
            Ordering::Equal => Ordering::Equal,
            Ordering::Greater => tail(&a[b.len()..]),
            Ordering::Less => tail(&b[a.len()..]).reverse(),
        }
    }
}
impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Version {}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pci_matches_parse_strictly_and_match_vendor_device_and_subsystem() {
        let m: ComponentMatch =
            serde_json::from_value(json!({"kind": "nic", "pci": "8086:1533"})).unwrap();
        assert_eq!(m.to_string(), "nic pci 8086:1533");
        let sub: ComponentMatch =
            serde_json::from_value(json!({"kind": "nic", "pci": "8086:1533:15D9:1533"})).unwrap();
        assert_eq!(
            serde_json::to_value(&sub).unwrap()["pci"],
            "8086:1533:15d9:1533"
        );
        for bad in [
            "8086",
            "8086:",
            "8086:1533:15d9",
            "8086:1533:15d9:1533:0",
            "808:1533",
            "80866:1533",
            "0x86:1533",
            "8086:15g3",
            "8086;1533",
            " 8086:1533",
            "+086:1533",
            "",
        ] {
            let e = serde_json::from_value::<ComponentMatch>(json!({"kind": "nic", "pci": bad}))
                .unwrap_err()
                .to_string();
            assert!(e.contains("four hex digits"), "{bad:?}: {e}");
        }
        assert!(
            serde_json::from_value::<ComponentMatch>(json!({"kind": "nic", "pci_id": "8086:1533"}))
                .is_err(),
            "unknown fields are refused"
        );
        let comp = |pci: Option<PciIds>| -> FirmwareComponent {
            let mut c: FirmwareComponent =
                serde_json::from_value(json!({"kind": "nic", "name": "eth0", "version": "1"}))
                    .unwrap();
            c.pci = pci;
            c
        };
        let ids = |v, d, sv, sd| PciIds {
            vendor_id: v,
            device_id: d,
            subsystem_vendor_id: sv,
            subsystem_device_id: sd,
        };
        let i210 = comp(Some(ids(0x8086, 0x1533, Some(0x15d9), Some(0x1533))));
        assert!(m.matches(&i210) && sub.matches(&i210));
        let other_board = comp(Some(ids(0x8086, 0x1533, Some(0x8086), Some(0x0001))));
        assert!(m.matches(&other_board) && !sub.matches(&other_board));
        let no_subsystem = comp(Some(ids(0x8086, 0x1533, None, None)));
        assert!(m.matches(&no_subsystem) && !sub.matches(&no_subsystem));
        assert!(!m.matches(&comp(Some(ids(0x8086, 0x1534, None, None)))));
        assert!(!m.matches(&comp(None)), "no PCI ids, no match");
        let mut nvme = i210.clone();
        nvme.kind = FirmwareKind::Nvme;
        assert!(!m.matches(&nvme), "the kind still has to match");
    }

    fn v(s: &str) -> Version {
        Version::parse(s)
    }

    #[test]
    fn versions_compare_by_segment() {
        let ordered = [
            "0.9", "1.0.beta", "1.0", "1.0.1", "1.2", "1.2a", "1.2a3", "1.2a10", "1.2b", "1.10",
            "2", "0x10", // 16
            "100",
        ];
        for w in ordered.windows(2) {
            assert!(v(w[0]) < v(w[1]), "{} < {}", w[0], w[1]);
            assert!(v(w[1]) > v(w[0]), "{} > {}", w[1], w[0]);
        }
        for (a, b) in [
            ("1.0", "1.0.0"),
            ("1.00", "1.0"),
            ("01.2", "1.2"),
            ("1.0", "  1.0 "),
            ("A2", "a2"),
            ("0x1A", "26"),
            ("0x1a", "0X1A"),
            ("1-2_3", "1.2.3"),
            ("", "0"),
            ("1.0     ", "1.0"), // NVMe FR is space-padded
        ] {
            assert_eq!(v(a), v(b), "{a} == {b}");
        }
        assert_ne!(v("1.0"), v("1.0a"));
        // Numbers of any length, in decimal and hex, without overflow.
        assert!(v("99999999999999999999999999999") < v("100000000000000000000000000000"));
        assert!(v("0xffffffffffffffffffffffffffffffff") > v("0xfffffffffffffffffffffffffffffff"));
        assert_eq!(v("0x100000000000000000000"), v("1208925819614629174706176"));
        // Not hex without digits, or with non-hex ones: text.
        assert!(v("0x") < v("1"));
        assert!(v("0xzz") < v("1"));
        // Real-world spellings.
        assert!(v("GDC5302Q") < v("GDC5602Q"));
        assert!(v("2.16.0-rc1") < v("2.16.0"));
        assert!(v("U46 v2.90 (05/15/2024)") > v("U46 v2.80 (01/10/2023)"));
        assert!(v("1.0") > v("1.0.rc1"));
        assert_eq!(v(" 1.0 ").to_string(), "1.0");
    }

    fn spec(j: serde_json::Value) -> Result<FirmwareParams, String> {
        let p: FirmwareParams = serde_json::from_value(j).map_err(|e| e.to_string())?;
        p.validate().map_err(|e| e.to_string())?;
        Ok(p)
    }

    const SHA: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

    #[test]
    fn params_are_strict_and_name_the_problem() {
        let ok = spec(json!({"components": [{
            "match": {"kind": "nvme", "model": "QEMU*"}, "version": "1.1",
            "package": {"url": "http://10.0.2.2/fw.bin", "checksum": SHA},
            "method": "nvme", "nvme": {"slot": 2, "action": "replace_activate_now"}}]}))
        .unwrap();
        assert_eq!(
            ok.components[0].nvme.unwrap().action,
            CommitAction::ReplaceActivateNow
        );
        let bad = |j: serde_json::Value, want: &str| {
            let e = spec(j).unwrap_err();
            assert!(e.contains(want), "{e} should contain {want}");
        };
        bad(json!({}), "nothing to do");
        bad(
            json!({"components": [], "dryrun": true}),
            "unknown field `dryrun`",
        );
        bad(
            json!({"components": [{"match": {"kind": "bios"}, "version": "1", "allow_downgrades": true}]}),
            "unknown field `allow_downgrades`",
        );
        bad(
            json!({"components": [{"match": {"kind": "bios", "modle": "x"}, "version": "1"}]}),
            "unknown field `modle`",
        );
        bad(
            json!({"components": [{"match": {"kind": "bios"}, "version": "1",
                "package": {"url": "ftp://x/y", "checksum": SHA}, "method": "payload"}]}),
            "only http:// and https://",
        );
        bad(
            json!({"components": [{"match": {"kind": "bios"}, "version": "1",
                "package": {"url": "http://x/y"}, "method": "payload"}]}),
            "missing field `checksum`",
        );
        bad(
            json!({"components": [{"match": {"kind": "bios"}, "version": "1",
                "package": {"url": "http://x/y", "checksum": "md5:00"}, "method": "payload"}]}),
            "unknown hash algorithm",
        );
        bad(
            json!({"components": [{"match": {"kind": "bios"}, "version": "1",
                "package": {"url": "http://x/y", "checksum": SHA}}]}),
            "components[0]: a package needs a method",
        );
        bad(
            json!({"components": [{"match": {"kind": "bios"}, "version": "1",
                "package": {"url": "http://x/y", "checksum": SHA}, "method": "nvme"}]}),
            "only components of kind nvme",
        );
        bad(
            json!({"components": [{"match": {"kind": "bios"}, "version": "1",
                "package": {"url": "http://x/y", "checksum": SHA}, "method": "payload"}]}),
            "method payload needs payload",
        );
        for cmd in ["/bin/sh", "../x", "a/../../x", ""] {
            bad(
                json!({"components": [{"match": {"kind": "bios"}, "version": "1",
                    "package": {"url": "http://x/y", "checksum": SHA}, "method": "payload",
                    "payload": {"command": cmd}}]}),
                "must be a relative path inside the archive",
            );
        }
        bad(
            json!({"components": [{"match": {"kind": "bios"}, "version": "1",
                "package": {"url": "http://x/y", "checksum": SHA}, "method": "payload",
                "payload": {"command": "x", "timeout_s": 0}}]}),
            "timeout_s must be 1 to",
        );
        bad(
            json!({"components": [{"match": {"kind": "nvme"}, "version": "1",
                "package": {"url": "http://x/y", "checksum": SHA}, "method": "nvme",
                "nvme": {"slot": 8}}]}),
            "nvme.slot must be 1 to 7",
        );
        bad(
            json!({"components": [{"match": {"kind": "nvme"}, "version": ""}]}),
            "version must be 1 to",
        );
        bad(
            json!({"settings": {"write": [{"name": "Boot Order", "data_hex": "0100"}]}}),
            "settings.write[0]: name",
        );
        bad(
            json!({"settings": {"write": [{"name": "BootOrder", "data_hex": "01x0"}]}}),
            "not hexadecimal",
        );
        bad(
            json!({"settings": {"write": [{"name": "BootOrder", "guid": "nope", "data_hex": "00"}]}}),
            "is not a GUID",
        );
    }

    #[test]
    fn package_urls_are_shown_redacted_and_round_trip() {
        let p: Package = serde_json::from_value(json!({
            "url": "https://user:pw@mirror/fw.tar.gz?sig=abc", "checksum": SHA}))
        .unwrap();
        assert_eq!(p.shown_url(), "https://mirror/fw.tar.gz?…");
        let back: Package = serde_json::from_value(serde_json::to_value(&p).unwrap()).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn matching_uses_every_given_attribute() {
        let c: FirmwareComponent = serde_json::from_value(json!({
            "kind": "uefi_esrt", "name": "entry0", "version": "65536", "vendor": "ACME",
            "esrt": {"guid": "aabbccdd-0000-1111-2222-333344445555"}}))
        .unwrap();
        let m = |j: serde_json::Value| serde_json::from_value::<ComponentMatch>(j).unwrap();
        assert!(m(json!({"kind": "uefi_esrt"})).matches(&c));
        assert!(
            m(json!({"kind": "uefi_esrt", "esrt_guid": "AABBCCDD-0000-1111-2222-333344445555"}))
                .matches(&c)
        );
        assert!(
            !m(json!({"kind": "uefi_esrt", "esrt_guid": "aabbccdd-0000-1111-2222-333344445556"}))
                .matches(&c)
        );
        assert!(m(json!({"kind": "uefi_esrt", "vendor": "ac*", "name": "entry0"})).matches(&c));
        assert!(!m(json!({"kind": "uefi_esrt", "model": "*"})).matches(&c));
        assert!(!m(json!({"kind": "bios"})).matches(&c));
    }

    #[test]
    fn results_tolerate_unknown_fields_and_actions() {
        let r: FirmwareResult = serde_json::from_value(json!({
            "components": [{"index": 0, "kind": "nvme", "required": "1", "action": "staged_new", "x": 1}],
            "reboot_required": true, "future": {}}))
        .unwrap();
        assert_eq!(r.components[0].action, ComponentAction::Other);
        assert!(!r.components[0].action.is_secure());
    }
}
