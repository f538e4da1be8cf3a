//! `molar policy check FILE`: the fleet policy read and checked as `molar serve` would.

use super::output::{emit, print_json, sanitize};
use super::{Cli, EXIT_USAGE, Failure};
use std::path::Path;

/// `molar policy check FILE`: the policy read and checked as `molar serve --policy` would.
pub(super) fn check(cli: &Cli, path: &Path) -> Result<(), Failure> {
    let p =
        crate::policy::Policy::load(path).map_err(|e| Failure::new(EXIT_USAGE, e.to_string()))?;
    if cli.json {
        return print_json(&p);
    }
    emit(&format!(
        "{}: {} chassis model(s), {} image(s), default erase {}",
        path.display(),
        p.chassis.len(),
        p.images.len(),
        p.defaults
            .erase
            .as_ref()
            .and_then(|e| e.method)
            .map_or("auto".to_owned(), |m| serde_json::to_value(m)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default())
    ))?;
    for c in &p.chassis {
        let mut gets = Vec::new();
        if c.qc.is_some() {
            gets.push("qc");
        }
        if c.firmware.is_some() {
            gets.push("firmware");
        }
        if c.erase.is_some() {
            gets.push("erase");
        }
        emit(&format!(
            "  chassis {}: {}",
            sanitize(&c.name),
            if gets.is_empty() {
                "-".to_owned()
            } else {
                gets.join(", ")
            }
        ))?;
    }
    for i in &p.images {
        emit(&format!("  image {}", sanitize(&i.id)))?;
    }
    Ok(())
}
