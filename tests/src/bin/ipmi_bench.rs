//! `ipmi-bench`: molar's IPMI-over-LAN client against `ipmitool -I lanplus`, side by side in
//! one run, on a real `ipmi_sim` on loopback (cipher suite 3, what ipmi_sim speaks):
//! - one operation per session, what `molar power SERVER status` and an `ipmitool chassis
//!   power status` invocation each do: log in (auth capabilities, open session, RAKP 1–4),
//!   Get Chassis Status, close;
//! - many commands in one session (the console and the request queue keep one open):
//!   molar's `LanSession` against `ipmitool` reading commands from a file (`exec`).
//!
//! `--ops N` (default 50). Prints the times and molar's speed-up (ipmitool time / molar time).

use anyhow::{Context, Result, bail, ensure};
use molar_controller::oob::{self, BmcTarget, LanOptions, LanSession, OobAction};
use molar_protocol::Secret;
use molar_tests::lab::{Images, IpmiSimConfig, Lab, which};
use std::process::Command;
use std::time::Instant;

fn main() -> Result<()> {
    let ops: usize = match std::env::args().skip_while(|a| a != "--ops").nth(1) {
        Some(n) => n.parse().context("--ops N")?,
        None => 50,
    };
    for tool in ["ipmi_sim", "ipmitool"] {
        if which(tool).is_none() {
            bail!("{tool} is not in PATH (scripts/install-deps installs it)");
        }
    }
    let lab = Lab::new("ipmi-bench", Images::in_dir(&Images::default_dir()))?;
    let sim = lab.start_ipmi_sim(IpmiSimConfig::default())?;
    let target = BmcTarget {
        host: "127.0.0.1".into(),
        port: sim.lan_port(),
        username: "ipmiusr".into(),
        password: Secret::new("test"),
        allow_ipmi15: false,
        protocol: Default::default(),
        trust: None,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let port = sim.lan_port().to_string();
    let ipmitool = |args: &[&str]| -> Result<()> {
        let out = Command::new("ipmitool")
            .args(["-I", "lanplus", "-C", "3", "-H", "127.0.0.1", "-p", &port])
            .args(["-U", "ipmiusr", "-P", "test"])
            .args(args)
            .output()
            .context("running ipmitool")?;
        ensure!(
            out.status.success(),
            "ipmitool {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };

    // Warm both up once (page cache, ipmi_sim's first session).
    rt.block_on(oob::perform(&target, &OobAction::PowerStatus))?;
    ipmitool(&["chassis", "power", "status"])?;

    let t = Instant::now();
    for _ in 0..ops {
        rt.block_on(oob::perform(&target, &OobAction::PowerStatus))?;
    }
    let molar_each = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for _ in 0..ops {
        ipmitool(&["chassis", "power", "status"])?;
    }
    let tool_each = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let mut s = LanSession::open(&target, LanOptions::default())?;
    for _ in 0..ops {
        molar_ipmi::chassis::get_chassis_status(&mut s)?;
    }
    s.close()?;
    let molar_one = t.elapsed().as_secs_f64();
    let script = lab.dir().join("ipmitool-commands");
    std::fs::write(&script, "chassis power status\n".repeat(ops))?;
    let t = Instant::now();
    ipmitool(&["exec", &script.display().to_string()])?;
    let tool_one = t.elapsed().as_secs_f64();

    println!("ipmi-bench: {ops} power status reads against ipmi_sim on loopback (suite 3)");
    println!(
        "  a session per read: molar {:.1} ms/op, ipmitool {:.1} ms/op: molar {:.1}x faster",
        molar_each * 1e3 / ops as f64,
        tool_each * 1e3 / ops as f64,
        tool_each / molar_each
    );
    println!(
        "  one session:        molar {:.2} ms/op, ipmitool {:.2} ms/op: molar {:.1}x faster",
        molar_one * 1e3 / ops as f64,
        tool_one * 1e3 / ops as f64,
        tool_one / molar_one
    );
    Ok(())
}
