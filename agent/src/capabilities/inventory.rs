//! `inventory`: the whole hardware inventory, with the BMC section when a BMC answers.

use super::bmc::Bmc;
use super::{HardwareReady, Machine, blocking};
use crate::bmc;
use crate::session::Methods;
use molar_protocol::ErrorBody;
use molar_protocol::methods::{Empty, parse_params};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// The whole hardware inventory, with the BMC section when a BMC answers.
pub fn inventory(root: &Path, bmc_lock: &Arc<Mutex<()>>) -> molar_protocol::inventory::Inventory {
    let mut inv = crate::inventory::collect(root, &crate::inventory::CollectOptions::default());
    let dev = Bmc {
        root: root.to_owned(),
        lock: bmc_lock.clone(),
        ready: HardwareReady::default(),
        power_allowed: false,
    };
    match dev.run(bmc::info) {
        Ok(info) => inv.bmc = Some(info),
        Err(e) if e.code == "ipmi_no_device" => {}
        Err(e) => inv.notes.push(molar_protocol::inventory::Note {
            path: "/dev/ipmi0".into(),
            reason: format!("BMC not inventoried: {}", e.msg),
        }),
    }
    inv
}

/// Registers `inventory`.
pub(super) fn register(m: &mut Methods, machine: &Machine, bmc_lock: Arc<Mutex<()>>) {
    let root = machine.root.clone();
    let ready = machine.ready.clone();
    m.call("inventory", move |params| {
        let root = root.clone();
        let lock = bmc_lock.clone();
        let ready = ready.clone();
        async move {
            parse_params::<Empty>("inventory", params)?;
            ready.wait().await;
            blocking(move || Ok::<_, ErrorBody>(inventory(&root, &lock))).await
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::{HardwareReady, Machine, methods};
    use crate::safety::Authority;
    use crate::session::{Agent, AgentConfig};
    use crate::tls::Trust;
    use molar_protocol::Secret;
    use molar_protocol::codes;
    use serde_json::json;

    #[tokio::test]
    async fn inventory_of_a_fixture_tree_and_its_bad_params() {
        let fixture =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inventory/qemu-q35");
        let m = methods(&Machine {
            root: fixture.clone(),
            authority: Authority::Host { allowed: vec![] },
            power_allowed: false,
            ready: HardwareReady::default(),
        });
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
