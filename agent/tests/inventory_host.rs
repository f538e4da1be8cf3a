//! The inventory of the machine the tests run on: `collect("/")` must produce a complete,
//! valid document without root-only failures crashing it, and survive a JSON round trip.

use std::path::Path;
use std::time::Instant;

use molar_agent::inventory::{CollectOptions, collect};
use molar_protocol::inventory::Inventory;

#[test]
fn live_machine_inventory_is_complete_and_round_trips() {
    let started = Instant::now();
    let inv = collect(Path::new("/"), &CollectOptions::default());
    let took = started.elapsed();

    // What every Linux machine has, root or not.
    assert!(
        inv.kernel.release.is_some(),
        "kernel release: {:?}",
        inv.notes
    );
    assert!(
        inv.cpu.threads.unwrap_or(0) >= 1,
        "cpu threads: {:?}",
        inv.cpu
    );
    assert!(
        inv.cpu.model.is_some() || inv.cpu.vendor.is_some(),
        "cpu: {:?}",
        inv.cpu
    );
    assert!(
        inv.memory.total_bytes.unwrap_or(0) > 0,
        "memory: {:?}",
        inv.memory
    );
    assert!(
        inv.nics.iter().any(|n| n.name == "lo"),
        "nics: {:?}",
        inv.nics
    );
    assert!(!inv.agent_version.is_empty());
    assert!(inv.collected_at.ends_with('Z'));
    for note in &inv.notes {
        // A note names a file as the machine sees it (`/sys/...`) or a facility (`ethtool`).
        assert!(!note.path.is_empty(), "{note:?}");
        assert!(
            !note.path.contains('/') || note.path.starts_with('/'),
            "a file path must be absolute: {note:?}"
        );
        assert!(!note.reason.is_empty(), "{note:?}");
    }

    let json = serde_json::to_string_pretty(&inv).expect("serialize");
    let back: Inventory = serde_json::from_str(&json).expect("deserialize");
    assert_eq!(back, inv);
    let value: serde_json::Value = serde_json::from_str(&json).expect("valid json");
    assert!(value.is_object());
    eprintln!(
        "inventory of this machine: {} bytes of JSON, {} block devices, {} nics, {} pci \
         devices, {} notes, collected in {:?}",
        json.len(),
        inv.block_devices.len(),
        inv.nics.len(),
        inv.pci_devices.len(),
        inv.notes.len(),
        took
    );
}
