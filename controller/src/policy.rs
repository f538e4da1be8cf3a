//! The fleet policy: one TOML file (`molar serve --policy FILE`, `molar policy check FILE`)
//! with the chassis models (matched from a server's stored inventory) and what each gets —
//! its QC spec, firmware baseline and erase policy — the image catalogue `molar claim
//! --image ID` takes images from, and the defaults for servers no model matches.
//!
//! ```toml
//! [defaults]
//! erase = { method = "auto" }
//!
//! [[chassis]]
//! name = "r650"
//! match = { manufacturer = "Dell*", product = "PowerEdge R650" }
//! erase = { method = "metadata", preserve = ["serial:S3EVNX0M"] }
//! qc = { cpu = { sockets = 2 } }
//!
//! [[image]]
//! id = "debian-13"
//! urls = ["https://images.example/debian-13.qcow2"]
//! checksum = "sha256:..."
//! ```
//!
//! Everything is checked when the file is read, with errors that name the line: the parser's
//! own (unknown keys, wrong types, bad QC specs and image specs, which their types refuse),
//! and the policy's (duplicate names and ids, a model that matches everything, an erase
//! policy whose passes or preserved disks cannot be right).

use molar_protocol::erase::{DiskEraseParams, EraseMethod};
use molar_protocol::firmware::FirmwareParams;
use molar_protocol::image::ImageSpec;
use molar_protocol::inventory::Inventory;
use molar_protocol::qc::{Pattern, Spec};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The whole policy file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub defaults: Defaults,
    #[serde(default)]
    pub discovery: DiscoveryPolicy,
    #[serde(default, rename = "chassis", skip_serializing_if = "Vec::is_empty")]
    pub chassis: Vec<ChassisModel>,
    #[serde(default, rename = "image", skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<ImageSpec>,
}

/// What a server no chassis model matches gets.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erase: Option<ErasePolicy>,
}

/// What discovery does besides storing the inventory (and the chassis model's QC spec and
/// firmware baseline, which it runs when the model has them).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryPolicy {
    /// Reset the BMC's credentials in-band (`bmc.set_credentials`, a generated password
    /// stored in the BMC table) unless the operator's stored credentials were verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bmc_credentials: Option<BmcCredentialPolicy>,
    /// A server enrolled by its BMC is set to boot from the network once and powered on at
    /// once, so it walks initial → discovery → available on its own.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub power_on_enrolled: bool,
}

/// The BMC user discovery makes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BmcCredentialPolicy {
    /// 1 to 16 printable ASCII characters.
    pub username: String,
}

/// A chassis model: which servers it is, and what they get.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChassisModel {
    pub name: String,
    #[serde(rename = "match")]
    pub matches: ChassisMatch,
    /// The `decom.qc` spec discovery and cleaning check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qc: Option<Spec>,
    /// The `decom.firmware_secure` baseline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<FirmwareParams>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erase: Option<ErasePolicy>,
}

/// Globs (case-insensitive, `*` and `?`) on the inventory's SMBIOS system fields; every
/// given one must match.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChassisMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manufacturer: Option<Pattern>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product: Option<Pattern>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sku: Option<Pattern>,
}

/// How a server's disks are cleaned.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErasePolicy {
    /// `metadata` (express), `auto` (the strongest each disk offers: the default),
    /// `overwrite` (with `passes`), or one method for every disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<EraseMethod>,
    /// With `overwrite`: passes, 1 to [`PASSES_MAX`] (the last writes zeros).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passes: Option<u32>,
    /// Disks never erased, as `serial:S`, `wwn:W` or `device:NAME` (data disks a cleaning
    /// must not touch).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preserve: Vec<String>,
}

/// Most overwrite passes a policy may ask for.
pub const PASSES_MAX: u32 = 35;

/// A policy that cannot be used, naming where.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// The parser's message names the line and column.
    #[error("{path}: {msg}")]
    Parse { path: String, msg: String },
    #[error("{path}{line}: {msg}")]
    Invalid {
        path: String,
        line: String,
        msg: String,
    },
}

impl Policy {
    /// Reads and checks a policy file.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and checks policy text (`origin` names it in errors).
    pub fn parse(text: &str, origin: &str) -> Result<Policy, PolicyError> {
        let p: Policy = toml::from_str(text).map_err(|e| PolicyError::Parse {
            path: origin.to_owned(),
            msg: e.to_string().trim_end().to_owned(),
        })?;
        let invalid = |needle: &str, msg: String| PolicyError::Invalid {
            path: origin.to_owned(),
            line: line_of(text, needle)
                .map(|n| format!(" (line {n})"))
                .unwrap_or_default(),
            msg,
        };
        for (i, c) in p.chassis.iter().enumerate() {
            let at = format!("name = {:?}", c.name);
            if c.name.trim().is_empty() || c.name.len() > 128 {
                return Err(invalid(
                    &at,
                    format!("chassis {}: name must be 1 to 128 characters", i + 1),
                ));
            }
            if p.chassis[..i].iter().any(|o| o.name == c.name) {
                return Err(invalid(
                    &at,
                    format!("chassis {:?} is defined twice", c.name),
                ));
            }
            let m = &c.matches;
            if m.manufacturer.is_none() && m.product.is_none() && m.sku.is_none() {
                return Err(invalid(
                    &at,
                    format!(
                        "chassis {:?}: match names none of manufacturer, product, sku (it would match every server)",
                        c.name
                    ),
                ));
            }
            if let Some(e) = &c.erase {
                e.check()
                    .map_err(|m| invalid(&at, format!("chassis {:?}: erase: {m}", c.name)))?;
            }
            if c.qc.as_ref().is_some_and(Spec::is_empty) {
                return Err(invalid(
                    &at,
                    format!("chassis {:?}: qc checks nothing", c.name),
                ));
            }
        }
        if let Some(b) = &p.discovery.bmc_credentials
            && (b.username.is_empty()
                || b.username.len() > 16
                || !b.username.bytes().all(|c| c.is_ascii_graphic()))
        {
            return Err(invalid(
                "username",
                "discovery: bmc_credentials: username must be 1 to 16 printable ASCII characters"
                    .into(),
            ));
        }
        if let Some(e) = &p.defaults.erase {
            e.check()
                .map_err(|m| invalid("[defaults]", format!("defaults: erase: {m}")))?;
        }
        for (i, img) in p.images.iter().enumerate() {
            if p.images[..i].iter().any(|o| o.id == img.id) {
                return Err(invalid(
                    &format!("id = {:?}", img.id),
                    format!("image {:?} is defined twice", img.id),
                ));
            }
        }
        Ok(p)
    }

    /// The first chassis model whose match the inventory meets.
    pub fn chassis_of(&self, inv: &Inventory) -> Option<&ChassisModel> {
        let sys = inv.system.as_ref()?;
        let meets = |p: &Option<Pattern>, v: &Option<String>| match p {
            None => true,
            Some(p) => v.as_deref().is_some_and(|v| p.matches(v)),
        };
        self.chassis.iter().find(|c| {
            meets(&c.matches.manufacturer, &sys.manufacturer)
                && meets(&c.matches.product, &sys.product)
                && meets(&c.matches.sku, &sys.sku)
        })
    }

    /// A catalogue image by id.
    pub fn image(&self, id: &str) -> Option<&ImageSpec> {
        self.images.iter().find(|i| i.id == id)
    }

    /// The erase a server gets: its chassis model's policy, else the defaults, else `auto`;
    /// preserved disks resolved against the inventory into `exclude`.
    pub fn erase_for(&self, inv: Option<&Inventory>) -> Result<DiskEraseParams, String> {
        let policy = inv
            .and_then(|i| self.chassis_of(i))
            .and_then(|c| c.erase.as_ref())
            .or(self.defaults.erase.as_ref());
        let Some(policy) = policy else {
            return Ok(DiskEraseParams::default());
        };
        let mut exclude = Vec::new();
        for p in &policy.preserve {
            let (kind, value) = p.split_once(':').unwrap_or(("", p));
            if kind == "device" {
                exclude.push(value.to_owned());
                continue;
            }
            let Some(inv) = inv else {
                return Err(format!(
                    "preserve {p:?}: no stored inventory to find the disk in (refusing to erase without it)"
                ));
            };
            let found: Vec<_> = inv
                .block_devices
                .iter()
                .filter(|d| {
                    let v = if kind == "serial" { &d.serial } else { &d.wwn };
                    v.as_deref()
                        .is_some_and(|v| v.trim().eq_ignore_ascii_case(value))
                })
                .map(|d| d.name.clone())
                .collect();
            // A preserved disk that is not in the inventory may be a disk the ramdisk will
            // see under another name: nothing to exclude now, but refuse rather than guess.
            if found.is_empty() {
                return Err(format!(
                    "preserve {p:?}: no disk in the stored inventory has it (refusing to erase: the disk may show up)"
                ));
            }
            exclude.extend(found);
        }
        Ok(DiskEraseParams {
            method: policy.method,
            passes: policy.passes,
            exclude: (!exclude.is_empty()).then_some(exclude),
            ..Default::default()
        })
    }
}

impl ErasePolicy {
    fn check(&self) -> Result<(), String> {
        if let Some(n) = self.passes {
            if self.method != Some(EraseMethod::Overwrite) {
                return Err("passes go with method = \"overwrite\"".into());
            }
            if n == 0 || n > PASSES_MAX {
                return Err(format!("passes must be 1 to {PASSES_MAX}, not {n}"));
            }
        }
        for p in &self.preserve {
            match p.split_once(':') {
                Some(("serial" | "wwn" | "device", v))
                    if !v.trim().is_empty()
                        && v.len() <= 128
                        && !v.chars().any(char::is_control) => {}
                _ => {
                    return Err(format!(
                        "preserve {p:?}: expected serial:S, wwn:W or device:NAME"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The 1-based line of the first occurrence of `needle`.
fn line_of(text: &str, needle: &str) -> Option<usize> {
    text.lines().position(|l| l.contains(needle)).map(|n| n + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[defaults]
erase = { method = "auto" }

[[chassis]]
name = "r650"
match = { manufacturer = "Dell*", product = "PowerEdge R650" }
erase = { method = "overwrite", passes = 3, preserve = ["serial:DATA-1", "device:sdz"] }
qc = { cpu = { sockets = 2 } }

[[chassis]]
name = "qemu"
match = { manufacturer = "QEMU" }

[[image]]
id = "debian-13"
urls = ["https://images.example/debian-13.qcow2"]
checksum = "sha256:0000000000000000000000000000000000000000000000000000000000000000"
"#;

    fn err(text: &str) -> String {
        Policy::parse(text, "p.toml").unwrap_err().to_string()
    }

    #[test]
    fn a_policy_parses_and_matches_servers_by_their_inventory() {
        let p = Policy::parse(GOOD, "p.toml").unwrap();
        assert_eq!(p.chassis.len(), 2);
        assert!(p.image("debian-13").is_some());
        assert!(p.image("nope").is_none());
        let mut inv: Inventory = serde_json::from_str(include_str!(
            "../../protocol/tests/data/inventory-qemu-q35.json"
        ))
        .unwrap();
        let sys = inv.system.as_mut().unwrap();
        sys.manufacturer = Some("Dell Inc.".into());
        sys.product = Some("PowerEdge R650".into());
        inv.block_devices[2].serial = Some("DATA-1".into());
        assert_eq!(p.chassis_of(&inv).unwrap().name, "r650");
        let e = p.erase_for(Some(&inv)).unwrap();
        assert_eq!(e.method, Some(EraseMethod::Overwrite));
        assert_eq!(e.passes, Some(3));
        assert_eq!(e.exclude, Some(vec!["vda".to_owned(), "sdz".to_owned()]));
        inv.system.as_mut().unwrap().manufacturer = Some("QEMU".into());
        assert_eq!(p.chassis_of(&inv).unwrap().name, "qemu");
        // No erase of its own: the defaults.
        assert_eq!(
            p.erase_for(Some(&inv)).unwrap().method,
            Some(EraseMethod::Auto)
        );
        inv.system = None;
        assert!(p.chassis_of(&inv).is_none());
        // A preserved serial the inventory lacks refuses the erase rather than guessing.
        let p = Policy::parse(
            "[defaults]\nerase = { preserve = [\"wwn:0x5000\"] }\n",
            "p.toml",
        )
        .unwrap();
        assert!(p.erase_for(Some(&inv)).unwrap_err().contains("wwn:0x5000"));
        assert!(p.erase_for(None).is_err());
        assert_eq!(
            Policy::default().erase_for(None).unwrap(),
            DiskEraseParams::default()
        );
    }

    #[test]
    fn bad_policies_are_refused_naming_the_line() {
        let e = err("[[chassis]]\nname = \"a\"\nmatch = { vendor = \"x\" }\n");
        assert!(e.contains("line 3") && e.contains("vendor"), "{e}");
        let e = err("[defaults]\nerase = { method = \"shred\" }\n");
        assert!(e.contains("line 2") && e.contains("shred"), "{e}");
        let e = err(
            "[[chassis]]\nname = \"a\"\nmatch = { product = \"x\" }\n\n[[chassis]]\nname = \"a\"\nmatch = { product = \"y\" }\n",
        );
        assert!(e.contains("line 2") && e.contains("defined twice"), "{e}");
        let e = err("[[chassis]]\nname = \"any\"\nmatch = {}\n");
        assert!(e.contains("every server"), "{e}");
        let e = err(
            "[[chassis]]\nname = \"a\"\nmatch = { product = \"x\" }\nerase = { method = \"auto\", passes = 3 }\n",
        );
        assert!(e.contains("passes go with"), "{e}");
        let e = err(
            "[[chassis]]\nname = \"a\"\nmatch = { product = \"x\" }\nerase = { method = \"overwrite\", passes = 99 }\n",
        );
        assert!(e.contains("1 to 35"), "{e}");
        let e = err("[defaults]\nerase = { preserve = [\"label\"] }\n");
        assert!(e.contains("serial:S"), "{e}");
        let e = err("[[image]]\nid = \"x\"\nurls = []\n");
        assert!(e.contains("line 1") || e.contains("url"), "{e}");
        let e = err(
            "[[chassis]]\nname = \"a\"\nmatch = { product = \"x\" }\nqc = { cpu = { socket = 2 } }\n",
        );
        assert!(e.contains("socket"), "{e}");
        let e = err("colour = \"blue\"\n");
        assert!(e.contains("colour"), "{e}");
    }
}
