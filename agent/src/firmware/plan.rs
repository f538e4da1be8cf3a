//! The plan: which inventory components an entry of `components` names, and for each whether
//! it is current, to be updated, or refused (a downgrade not asked for or below the ESRT's
//! lowest supported version, no package). Pure, so every decision is unit-tested.

use molar_protocol::firmware::{
    ComponentAction, ComponentOutcome, ComponentSpec, FirmwareParams, Version,
};
use molar_protocol::inventory::FirmwareComponent;

/// One decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Index into `params.components`.
    pub index: usize,
    /// The matched component; `None` when nothing matched.
    pub component: Option<FirmwareComponent>,
    pub decision: Decision,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Current,
    Update,
    DowngradeRefused,
    NotFound,
    NoPackage,
}

/// Decides every entry against the inventory's firmware components, in entry order.
pub fn plan(params: &FirmwareParams, firmware: &[FirmwareComponent]) -> Vec<Step> {
    let mut steps = Vec::new();
    for (index, spec) in params.components.iter().enumerate() {
        let found: Vec<&FirmwareComponent> = firmware
            .iter()
            .filter(|c| spec.matches.matches(c))
            .collect();
        if found.is_empty() {
            steps.push(Step {
                index,
                component: None,
                decision: Decision::NotFound,
                reason: Some(format!("no firmware component matches {}", spec.matches)),
            });
        }
        for c in found {
            let (decision, reason) = decide(spec, c);
            steps.push(Step {
                index,
                component: Some(c.clone()),
                decision,
                reason,
            });
        }
    }
    steps
}

fn decide(spec: &ComponentSpec, c: &FirmwareComponent) -> (Decision, Option<String>) {
    let have = Version::parse(&c.version);
    let want = Version::parse(&spec.version);
    if have == want {
        return (Decision::Current, None);
    }
    if have > want {
        if !spec.allow_downgrade {
            return (
                Decision::DowngradeRefused,
                Some(format!(
                    "{} runs {}, newer than {}; set allow_downgrade to take it back",
                    c.name, have, want
                )),
            );
        }
        // The ESRT's lowest supported version is a u32 the firmware will refuse to go below.
        let lowest = c.esrt.as_ref().and_then(|e| e.lowest_supported_fw_version);
        if let Some(lowest) = lowest
            && want < Version::parse(&lowest.to_string())
        {
            return (
                Decision::DowngradeRefused,
                Some(format!(
                    "{}: {} is below the lowest supported version {lowest}",
                    c.name, want
                )),
            );
        }
    }
    if spec.package.is_none() {
        return (
            Decision::NoPackage,
            Some(format!(
                "{} runs {}, {} is required and no package was given",
                c.name, have, want
            )),
        );
    }
    (Decision::Update, None)
}

/// The result line of a step that needs no update work (or of a dry run's update).
pub fn outcome(step: &Step, spec: &ComponentSpec, dry_run: bool) -> ComponentOutcome {
    let action = match step.decision {
        Decision::Current => ComponentAction::SkippedCurrent,
        Decision::Update if dry_run => ComponentAction::WouldUpdate,
        Decision::Update => ComponentAction::Updated,
        Decision::DowngradeRefused => ComponentAction::DowngradeRefused,
        Decision::NotFound => ComponentAction::NotFound,
        Decision::NoPackage => ComponentAction::NoPackage,
    };
    let c = step.component.as_ref();
    ComponentOutcome {
        index: step.index,
        kind: spec.matches.kind,
        name: c.map(|c| c.name.clone()),
        required: spec.version.clone(),
        before: c.map(|c| c.version.trim().to_owned()),
        after: match step.decision {
            Decision::Current => c.map(|c| c.version.trim().to_owned()),
            _ => None,
        },
        action,
        method: spec.method,
        reboot: false,
        power_cycle: false,
        message: step.reason.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn inventory() -> Vec<FirmwareComponent> {
        serde_json::from_value(json!([
            {"kind": "nvme", "name": "nvme0", "model": "QEMU NVMe Ctrl", "version": "1.0     "},
            {"kind": "nvme", "name": "nvme1", "model": "QEMU NVMe Ctrl", "version": "2.0"},
            {"kind": "uefi_esrt", "name": "entry0", "version": "300",
             "esrt": {"guid": "aabbccdd-0000-1111-2222-333344445555",
                      "lowest_supported_fw_version": 200}},
            {"kind": "bios", "name": "bios", "version": "1.2"}]))
        .unwrap()
    }

    const PKG: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

    fn params(components: serde_json::Value) -> FirmwareParams {
        let p: FirmwareParams = serde_json::from_value(json!({"components": components})).unwrap();
        p.validate().unwrap();
        p
    }

    fn decisions(p: &FirmwareParams) -> Vec<(usize, Option<String>, Decision)> {
        plan(p, &inventory())
            .into_iter()
            .map(|s| (s.index, s.component.map(|c| c.name), s.decision))
            .collect()
    }

    #[test]
    fn current_update_downgrade_and_missing() {
        let pkg = json!({"url": "http://127.0.0.1/x", "checksum": PKG});
        let p = params(json!([
            {"match": {"kind": "nvme"}, "version": "1.0", "package": pkg, "method": "payload",
             "payload": {"command": "u"}},
            {"match": {"kind": "bios"}, "version": "1.3"},
            {"match": {"kind": "bmc"}, "version": "1"},
            {"match": {"kind": "uefi_esrt"}, "version": "250", "allow_downgrade": true,
             "package": pkg, "method": "uefi_capsule"},
            {"match": {"kind": "uefi_esrt"}, "version": "100", "allow_downgrade": true,
             "package": pkg, "method": "uefi_capsule"},
        ]));
        let n = |s: &str| Some(s.to_owned());
        assert_eq!(
            decisions(&p),
            [
                (0, n("nvme0"), Decision::Current),
                (0, n("nvme1"), Decision::DowngradeRefused),
                (1, n("bios"), Decision::NoPackage),
                (2, None, Decision::NotFound),
                (3, n("entry0"), Decision::Update),
                (4, n("entry0"), Decision::DowngradeRefused),
            ]
        );
        let steps = plan(&p, &inventory());
        assert!(
            steps[1]
                .reason
                .as_ref()
                .unwrap()
                .contains("allow_downgrade")
        );
        assert!(
            steps[5]
                .reason
                .as_ref()
                .unwrap()
                .contains("lowest supported version 200")
        );
        assert_eq!(
            steps[3].reason.as_deref(),
            Some("no firmware component matches bmc")
        );
        let o = outcome(&steps[0], &p.components[0], false);
        assert_eq!(o.action, ComponentAction::SkippedCurrent);
        assert_eq!(
            (o.before.as_deref(), o.after.as_deref()),
            (Some("1.0"), Some("1.0"))
        );
        let o = outcome(&steps[4], &p.components[3], true);
        assert_eq!(o.action, ComponentAction::WouldUpdate);
        assert_eq!(o.after, None);
    }

    #[test]
    fn newer_required_version_is_an_update() {
        let p = params(
            json!([{"match": {"kind": "nvme", "name": "nvme0"}, "version": "1.1",
            "package": {"url": "http://127.0.0.1/x", "checksum": PKG}, "method": "nvme"}]),
        );
        assert_eq!(
            decisions(&p),
            [(0, Some("nvme0".to_owned()), Decision::Update)]
        );
    }
}
