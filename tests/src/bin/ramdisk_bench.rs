//! `ramdisk-bench`: the ramdisk's size, boot and memory figures against DESIGN.md's targets.
//!
//! Reads the images `scripts/lab-images` built (`target/lab/images`, or `$MOLAR_LAB_OUT`) for
//! the static agent's and the initramfs's sizes, then boots the lab server `--boots N` times
//! (default 3) against an in-process controller and measures, per boot:
//! - QEMU start → handshake (wall clock, as the controller sees it);
//! - PID 1 start → handshake: the kernel's "Run /init" console timestamp against the uptime the
//!   agent logs when connected (both on the kernel's monotonic clock);
//! - agent RSS after 5 s idle (the `status` method's `rss_bytes`).

use anyhow::{Context, Result, bail};
use molar_tests::inproc::{Controller, eventually};
use molar_tests::lab::{Images, Lab, QemuConfig};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const MIB: f64 = 1024.0 * 1024.0;

/// Seconds from a console line like `[    3.512345] Run /init as init process`.
fn kernel_stamp(console: &str, needle: &str) -> Option<f64> {
    let line = console.lines().find(|l| l.contains(needle))?;
    let inner = line.trim_start().strip_prefix('[')?.split(']').next()?;
    inner.trim().parse().ok()
}

/// `uptime_ms=N` from the agent's "connected to the controller" line.
fn connected_uptime_ms(console: &str) -> Option<f64> {
    let line = console
        .lines()
        .find(|l| l.contains("connected to the controller"))?;
    let rest = line.split("uptime_ms=").nth(1)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn stats(v: &[f64]) -> String {
    let min = v.iter().cloned().fold(f64::INFINITY, f64::min);
    let max = v.iter().cloned().fold(0.0, f64::max);
    let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
    format!("mean {mean:.2}  min {min:.2}  max {max:.2}")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let boots: usize = match std::env::args().skip_while(|a| a != "--boots").nth(1) {
        Some(n) => n.parse().context("--boots N")?,
        None => 3,
    };
    let images = Images::in_dir(&Images::default_dir());
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(images.dir.join("manifest.json"))
            .context("no manifest.json: run scripts/lab-images first")?,
    )?;
    let agent_bytes = manifest["agent"]["size"].as_f64().unwrap_or(0.0);
    let initrd_bytes = std::fs::metadata(&images.initramfs)?.len() as f64;
    println!(
        "ramdisk-bench ({boots} boots under {})",
        std::env::var("MOLAR_LAB_ACCEL").unwrap_or_else(|_| "tcg".into())
    );
    println!(
        "  static agent (stripped)   {:6.2} MiB   target <= 8 MiB    ({:.0}% of target)",
        agent_bytes / MIB,
        agent_bytes / (8.0 * MIB) * 100.0
    );
    println!(
        "  initramfs ({})   {:6.2} MiB   target <= 25 MiB   ({:.0}% of target; the Python ramdisk is ~340 MB: {:.0}x smaller)",
        manifest["compression"]["kind"]
            .as_str()
            .or(manifest["compression"].as_str())
            .unwrap_or("compressed"),
        initrd_bytes / MIB,
        initrd_bytes / (25.0 * MIB) * 100.0,
        340e6 / initrd_bytes
    );

    let mut to_handshake = Vec::new();
    let mut pid1_to_handshake = Vec::new();
    let mut rss = Vec::new();
    for i in 0..boots {
        let Some(lab) = Lab::require("ramdisk-bench") else {
            bail!("the lab's prerequisites are missing");
        };
        let ctl = Controller::start_with_sans(vec!["10.0.2.100".into()]).await;
        let client = ctl.client();
        let token = ctl.agent_token().await;
        let port: u16 = ctl
            .agent_addr()
            .rsplit_once(':')
            .context("port")?
            .1
            .parse()?;
        let mut cfg = QemuConfig::server(&lab);
        cfg.name = format!("bench{i}");
        cfg.forward_as(9000, port);
        cfg.append
            .push("molar.controller=10.0.2.100:9000".to_owned());
        cfg.oem_strings = vec![
            format!("molar.token={}", token.expose()),
            format!("molar.ca={}", ctl.running().ca_fingerprint),
        ];
        let started = Instant::now();
        let vm = lab.spawn_qemu(&cfg)?;
        let id = eventually(180, "the server to register", || async {
            let s = client.servers().await.ok()?;
            s.into_iter()
                .find(|s| s.server.connected)
                .map(|s| s.server.id)
        })
        .await;
        let wall = started.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let status = client.call(&id, "status", json!({}), None).await?;
        let console = vm.console();
        let init_at = kernel_stamp(&console, "Run /init as init process");
        let connected = connected_uptime_ms(&console);
        let pid1 = match (init_at, connected) {
            (Some(a), Some(b)) => Some(b / 1000.0 - a),
            _ => None,
        };
        let rss_mib = status["rss_bytes"].as_f64().unwrap_or(0.0) / MIB;
        println!(
            "  boot {}: QEMU start -> handshake {wall:.2} s; PID 1 start -> handshake {}; agent RSS idle {rss_mib:.1} MiB",
            i + 1,
            pid1.map_or("?".into(), |p| format!("{p:.2} s")),
        );
        to_handshake.push(wall);
        if let Some(p) = pid1 {
            pid1_to_handshake.push(p);
        }
        rss.push(rss_mib);
        let _ = client.call(&id, "poweroff", json!({}), None).await;
        drop(vm);
    }
    println!("  QEMU start -> handshake (s)    {}", stats(&to_handshake));
    println!(
        "  PID 1 start -> handshake (s)   {}   target <= 1 s (DHCP excluded; measured with DHCP included, under TCG)",
        stats(&pid1_to_handshake)
    );
    println!(
        "  agent RSS idle (MiB)           {}   target <= 16 MiB",
        stats(&rss)
    );
    Ok(())
}
