//! Guest-side probe of the QEMU erase lab (`agent/tests/erase-lab-qemu.sh`): prints the NVMe
//! and ATA identify data molar decodes, then erases every disk with method `auto` under ramdisk
//! authority — it only ever runs as the init of a throwaway VM — excluding the devices named
//! as arguments, and prints the JSON report between `BEGIN-REPORT` and `END-REPORT` lines.
//!
//! Build it static: `cargo build -p molar-agent --example erase_probe --target
//! x86_64-unknown-linux-musl`.

use std::time::Duration;

use molar_agent::erase::{self, EraseEnv, EraseRequest};
use molar_agent::hw::{ata, nvme};
use molar_agent::safety::Authority;
use tokio_util::sync::CancellationToken;

fn print_nvme(dev: &str) {
    let Ok(f) = std::fs::File::open(dev) else {
        return;
    };
    match nvme::identify_controller(&f) {
        Ok(c) => println!(
            "{dev}: controller model={:?} serial={:?} firmware={:?} oacs={:#x} fna={:#x} \
             sanicap={:#x} nn={}",
            c.model, c.serial, c.firmware, c.oacs, c.fna, c.sanicap, c.nn
        ),
        Err(e) => println!("{dev}: identify controller: {e}"),
    }
    match nvme::namespace_id(&f).and_then(|n| nvme::identify_namespace(&f, n).map(|ns| (n, ns))) {
        Ok((n, ns)) => println!(
            "{dev}: nsid={n} nsze={} flbas={} block_size={:?} dlfeat={:#x}",
            ns.nsze,
            ns.flbas,
            ns.block_size(),
            ns.dlfeat
        ),
        Err(e) => println!("{dev}: identify namespace: {e}"),
    }
    println!("{dev}: active namespaces {:?}", nvme::active_namespaces(&f));
    println!("{dev}: sanitize status {:?}", nvme::sanitize_status(&f));
}

fn print_ata(dev: &str) {
    let Ok(f) = std::fs::File::open(dev) else {
        return;
    };
    match ata::identify(&f) {
        Ok(id) => println!(
            "{dev}: ata model={:?} serial={:?} firmware={:?} sectors={} security: supported={} \
             enabled={} locked={} frozen={} enhanced={} erase_time={:?}",
            id.model,
            id.serial,
            id.firmware,
            id.sectors,
            id.security_supported,
            id.security_enabled,
            id.security_locked,
            id.security_frozen,
            id.enhanced_erase_supported,
            id.erase_time
        ),
        Err(e) => println!("{dev}: ata identify: {e}"),
    }
}

fn main() {
    for dev in ["/dev/nvme0n1", "/dev/nvme0n2"] {
        print_nvme(dev);
    }
    print_ata("/dev/sda");
    let mut env = EraseEnv::new("/", Authority::Ramdisk);
    env.progress_interval = Duration::from_secs(1);
    let req = EraseRequest {
        exclude: std::env::args().skip(1).collect(),
        ..Default::default()
    };
    let report = erase::run(
        &req,
        &env,
        &|p| {
            eprintln!(
                "progress {:.1}% eta {:?} {}",
                p.percent(),
                p.eta(),
                p.message()
            )
        },
        &CancellationToken::new(),
    );
    match report.map(|r| serde_json::to_string_pretty(&r)) {
        Ok(Ok(json)) => println!("BEGIN-REPORT\n{json}\nEND-REPORT"),
        Ok(Err(e)) => println!("erase-probe: serializing the report: {e}"),
        Err(e) => println!("erase-probe: {e}"),
    }
}
