//! The disks the controller expects (`expect`: serials or WWNs): checked before anything is
//! erased, so a disk that did not show up fails the task instead of leaving a `complete`
//! erase of a subset.
//!
//! Values are compared with the serial and WWN of [`crate::disks::enumerate`], the same
//! source the inventory reports them from, so what the controller stored matches exactly.
//! An NVMe serial names the controller, so it matches every namespace on it; each of them
//! must then be erased.

use std::collections::BTreeSet;
use std::path::Path;

use crate::disks::Disk;
use crate::safety::{self, ClearedTarget, Refusal, Skipped};

/// What is wrong with the expected disks, if anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ExpectProblem {
    /// Values that match no disk present.
    Missing(Vec<String>),
    /// Expected disks that are present but would not be erased, with why.
    NotErased(Vec<String>),
}

fn matches(d: &Disk, value: &str) -> bool {
    d.serial.as_deref() == Some(value) || d.wwn.as_deref() == Some(value)
}

/// Check `expect` against the enumerated disks and what the safety layer decided. A disk
/// the same request excludes is not a problem: the operator asked for that.
pub(super) fn check(
    root: &Path,
    all: &[Disk],
    targets: &[ClearedTarget],
    skipped: &[Skipped],
    expect: &[String],
) -> Option<ExpectProblem> {
    let values: BTreeSet<&str> = expect.iter().map(|v| v.trim()).collect();
    let mut missing = Vec::new();
    let mut not_erased = Vec::new();
    for value in values {
        let found: Vec<&Disk> = all.iter().filter(|d| matches(d, value)).collect();
        if found.is_empty() {
            missing.push(value.to_owned());
            continue;
        }
        for d in found {
            let cleared = targets
                .iter()
                .any(|t| !t.is_partition() && t.disk().name == d.name);
            if cleared {
                continue;
            }
            let refusal = skipped
                .iter()
                .find(|s| safety::device_name(root, &s.device) == d.name)
                .map(|s| &s.refusal);
            let why = match refusal {
                Some(Refusal::Excluded) => continue,
                Some(r) => format!("skipped: {r}"),
                None => "not among the devices to erase".to_owned(),
            };
            not_erased.push(format!("{value} (/dev/{}): {why}", d.name));
        }
    }
    if !missing.is_empty() {
        Some(ExpectProblem::Missing(missing))
    } else if !not_erased.is_empty() {
        Some(ExpectProblem::NotErased(not_erased))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disks::{enumerate, tests::sample};
    use crate::safety::{Authority, select_targets};

    fn run_check(
        devices: Option<&[String]>,
        exclude: &[String],
        expect: &[&str],
    ) -> Option<ExpectProblem> {
        let f = sample();
        let all = enumerate(f.root()).unwrap();
        let (t, s) = select_targets(f.root(), &all, &Authority::Ramdisk, devices, exclude);
        let expect: Vec<String> = expect.iter().map(|s| s.to_string()).collect();
        check(f.root(), &all, &t, &s, &expect)
    }

    #[test]
    fn present_and_cleared_disks_by_serial_or_wwn_pass() {
        // nvme0n1: serial deadbeef, wwid eui.0000000000000001; vda: serial vblk1.
        assert_eq!(
            run_check(None, &[], &["deadbeef", "eui.0000000000000001", " vblk1 "]),
            None
        );
        assert_eq!(run_check(None, &[], &[]), None);
    }

    #[test]
    fn a_missing_disk_is_named() {
        assert_eq!(
            run_check(
                None,
                &[],
                &["deadbeef", "S9NOTHERE", "naa.5000c500a1b2c3d4", ""]
            ),
            Some(ExpectProblem::Missing(vec![
                "".into(),
                "S9NOTHERE".into(),
                "naa.5000c500a1b2c3d4".into()
            ]))
        );
    }

    #[test]
    fn an_expected_disk_refused_by_a_safety_rule_fails() {
        // sda (serial S5Y1NX) holds the root filesystem.
        match run_check(None, &[], &["S5Y1NX", "vblk1"]) {
            Some(ExpectProblem::NotErased(v)) => {
                assert_eq!(v.len(), 1);
                assert!(v[0].starts_with("S5Y1NX (/dev/sda): skipped: "), "{v:?}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn excluded_is_fine_but_not_named_is_not() {
        assert_eq!(run_check(None, &["vda".into()], &["vblk1"]), None);
        let named = ["nvme0n1".to_string()];
        match run_check(Some(&named), &[], &["deadbeef", "vblk1"]) {
            Some(ExpectProblem::NotErased(v)) => {
                assert_eq!(v, ["vblk1 (/dev/vda): not among the devices to erase"]);
            }
            other => panic!("{other:?}"),
        }
    }
}
