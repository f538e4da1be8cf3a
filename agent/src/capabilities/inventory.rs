//! `inventory`: the whole hardware inventory, with the BMC section when a BMC answers.

use super::Machine;
use super::bmc::Bmc;
use crate::bmc;
use crate::session::Methods;
use molar_protocol::ErrorBody;
use molar_protocol::catalogue::InventoryGet;
use molar_protocol::inventory::{Inventory, Note};
use std::path::Path;

/// The whole hardware inventory under `root`, with the BMC section when `dev` answers.
pub(super) fn collect(root: &Path, dev: &Bmc) -> Inventory {
    let mut inv = crate::inventory::collect(root, &crate::inventory::CollectOptions::default());
    match dev.run(bmc::info) {
        Ok(info) => inv.bmc = Some(info),
        Err(e) if e.code == "ipmi_no_device" => {}
        Err(e) => inv.notes.push(Note {
            path: "/dev/ipmi0".into(),
            reason: format!("BMC not inventoried: {}", e.msg),
        }),
    }
    crate::inventory::firmware::add_bmc(&mut inv);
    inv
}

/// Registers `inventory`.
pub(super) fn register(m: &mut Methods, machine: &Machine, dev: Bmc) {
    let root = machine.root.clone();
    m.hardware::<InventoryGet, _, _>(&machine.ready, move |_| {
        Ok::<_, ErrorBody>(collect(&root, &dev))
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::{Machine, methods};
    use crate::session::{Agent, AgentConfig};
    use crate::tls::Trust;
    use molar_protocol::Secret;
    use molar_protocol::codes;
    use serde_json::json;

    #[tokio::test]
    async fn inventory_of_a_fixture_tree_and_its_bad_params() {
        let fixture =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inventory/qemu-q35");
        let m = methods(&Machine::host(fixture.clone(), &[]));
        let agent = Agent::new(
            AgentConfig::new("127.0.0.1:1", Trust::Insecure, Secret::default()),
            m,
            crate::logfwd::LogBuffer::new(1),
        );
        let inv = agent
            .clone()
            .dispatch("inventory".into(), json!({}))
            .await
            .unwrap();
        assert_eq!(inv["system"]["serial"], "S123");
        assert!(inv["block_devices"].as_array().unwrap().len() >= 2);
        assert!(
            inv.get("bmc").is_none_or(|b| b.is_null()),
            "no /dev/ipmi0 in the fixture"
        );
        let err = agent
            .dispatch("inventory".into(), json!({"all": true}))
            .await
            .unwrap_err();
        assert_eq!(err.code, codes::INVALID_PARAMS);
    }
}
