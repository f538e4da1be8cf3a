//! `molar-lab-demo`: the main job, end to end, as an operator would watch it. `scripts/demo`
//! builds the binaries and the ramdisk, then runs this:
//!
//! 1. `molar serve` on loopback (its certificate also names 10.0.2.100, the address the VM
//!    dials), `molar token create`;
//! 2. `ipmi_sim` as the server's BMC, owning a QEMU server that is off and boots the ramdisk
//!    with the controller address on its kernel command line; the operator enrols the server
//!    by its BMC (`molar server add`, verified by a session) and powers it on over IPMI LAN
//!    (`molar power NAME on --wait`), its serial console on the BMC's Serial over LAN;
//! 3. the server registers as the enrolled server, discovery stores its inventory (`molar
//!    servers`, `molar server NAME --inventory`);
//! 4. `bmc.set_credentials` in-band, proven out-of-band with `ipmitool -I lanplus`;
//! 5. `decom.disk_erase` with a progress bar (`molar task start ... --wait`), checked on the
//!    host's disk images;
//! 6. an OS image built here (`molar_tests::lab::guest`: GPT, ext4 root with the Debian kernel
//!    and a small init), compressed qcow2, served over HTTP on loopback;
//! 7. `standbye.cache_images` on the virtio disk, `standbye.prepare_image` on the NVMe disk
//!    (checked byte for byte on the host), `standbye.run_image` with a config drive: the agent
//!    kexecs into the written system, which prints its boot id and the config drive's meta
//!    data on the console, then powers the server off;
//! 8. out-of-band again: `molar power NAME on` over IPMI LAN with the credentials the agent
//!    set, the ramdisk registers with a new boot, `molar console NAME --log` shows the boot
//!    the BMC's console captured, `molar requests NAME`, `molar power NAME off`.
//!
//! Everything is torn down at the end or on failure; logs stay in the lab directory.

use anyhow::{Context, Result, bail, ensure};
use molar_tests::lab::guest::{self, DiskSpec, GuestKit, GuestReport};
use molar_tests::lab::{HttpFiles, IpmiSimConfig, Lab, QemuConfig, SerialRelay};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The guest's port for the image server (QEMU guestfwd to the host's `HttpFiles`).
const IMAGES_PORT: u16 = 8080;

/// The operator's name for the server.
const NAME: &str = "lab1";

fn bin(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("the demo's own directory")?;
    let p = dir.join(name);
    ensure!(p.exists(), "{} is not built: run scripts/demo", p.display());
    Ok(p)
}

fn step(n: u32, what: &str) {
    println!("\n\x1b[1m== {n}. {what}\x1b[0m");
}

struct Molar {
    bin: PathBuf,
    state: PathBuf,
}

impl Molar {
    /// Runs `molar --state-dir STATE ARGS`, echoing the command and its output.
    fn run(&self, args: &[&str]) -> Result<String> {
        println!("$ molar {}", args.join(" "));
        let out = Command::new(&self.bin)
            .arg("--state-dir")
            .arg(&self.state)
            .args(args)
            .stderr(Stdio::inherit())
            .output()
            .context("running molar")?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!("molar {} failed ({}): {stdout}", args.join(" "), out.status);
        }
        Ok(stdout)
    }

    /// Like [`run`], with the terminal attached (progress bars).
    fn run_live(&self, args: &[&str]) -> Result<()> {
        println!("$ molar {}", args.join(" "));
        let status = Command::new(&self.bin)
            .arg("--state-dir")
            .arg(&self.state)
            .args(args)
            .status()
            .context("running molar")?;
        ensure!(
            status.success(),
            "molar {} failed ({status})",
            args.join(" ")
        );
        Ok(())
    }

    /// The result of the server's latest task of `method`.
    fn task_result(&self, id: &str, method: &str) -> Result<serde_json::Value> {
        let tasks = self.json(&["tasks", id])?;
        tasks
            .as_array()
            .and_then(|t| t.iter().rev().find(|t| t["method"] == method))
            .map(|t| t["result"].clone())
            .with_context(|| format!("the {method} task"))
    }

    fn json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let out = Command::new(&self.bin)
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--json")
            .args(args)
            .output()
            .context("running molar")?;
        serde_json::from_slice(&out.stdout).context("molar --json output")
    }
}

fn wait_until<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {secs} s waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn main() -> Result<()> {
    let Some(mut lab) = Lab::require("molar-lab-demo") else {
        bail!("the lab's prerequisites are missing (see above); scripts/demo installs them");
    };
    lab.keep_logs();
    let state = lab.dir().join("controller");
    let molar = Molar {
        bin: bin("molar")?,
        state: state.clone(),
    };
    let Some(kit) = GuestKit::require(&lab) else {
        bail!("the guest image's prerequisites are missing (see above); scripts/demo builds them");
    };
    let www = lab.dir().join("www");
    std::fs::create_dir_all(&www)?;
    let http = HttpFiles::serve(&www)?;
    let agent_port = molar_tests::inproc::free_port();
    let api_port = molar_tests::inproc::free_port();

    step(1, "a controller on this machine");
    println!(
        "$ molar serve --listen 127.0.0.1:{agent_port} --api 127.0.0.1:{api_port} --state-dir {} --san 10.0.2.100",
        state.display()
    );
    let serve_log = std::fs::File::create(lab.dir().join("controller.log"))?;
    let mut serve = molar_tests::bins::Proc::spawn(
        {
            let mut c = Command::new(&molar.bin);
            c.args(["serve", "--listen", &format!("127.0.0.1:{agent_port}")])
                .args(["--api", &format!("127.0.0.1:{api_port}")])
                .arg("--state-dir")
                .arg(&state)
                .args(["--san", "10.0.2.100"])
                .stdout(Stdio::piped())
                .stderr(serve_log);
            c
        },
        "molar serve",
    );
    wait_until("the controller's API", 30, || {
        molar.json(&["servers"]).ok().map(|_| ())
    })?;
    let fingerprint = std::fs::read_to_string(state.join("ca.sha256"))?
        .trim()
        .to_owned();
    println!("CA fingerprint: {fingerprint}");
    let token = molar.run(&["token", "create", "lab"])?.trim().to_owned();
    println!("agent token created (not shown)");

    step(
        2,
        "a BMC (ipmi_sim) with a QEMU server behind it, off; enrolled by its BMC, powered on",
    );
    let mut server = QemuConfig::server(&lab);
    // The NVMe disk takes the OS image and its config drive; the virtio disk the image cache.
    server.disks[0].size_bytes = 256 << 20;
    server.disks[1].size_bytes = 128 << 20;
    server.forward_as(9000, agent_port);
    server.forward_as(IMAGES_PORT, http.port());
    // Secrets travel as SMBIOS OEM strings: the kernel prints its command line on the console.
    server
        .append
        .push("molar.controller=10.0.2.100:9000".to_owned());
    server.oem_strings = vec![
        format!("molar.token={token}"),
        format!("molar.ca={fingerprint}"),
    ];
    // The serial console reaches the BMC's Serial over LAN through LAB.md's relay.
    let relay = SerialRelay::start()?;
    server.serial_port = Some(relay.vm_port());
    let sim = lab.start_ipmi_sim(IpmiSimConfig {
        power: Some(server),
        start_now: false,
        sol_port: Some(relay.bmc_port()),
        ..IpmiSimConfig::default()
    })?;
    let bmc_password = lab.dir().join("bmc-password");
    std::fs::write(&bmc_password, "test\n")?;
    print!(
        "{}",
        molar.run(&[
            "server",
            "add",
            NAME,
            "--bmc",
            &format!("127.0.0.1:{}", sim.lan_port()),
            "--bmc-user",
            "ipmiusr",
            "--bmc-password-file",
            &bmc_password.display().to_string(),
        ])?
    );
    print!("{}", molar.run(&["power", NAME, "status", "--wait"])?);
    let started = Instant::now();
    print!("{}", molar.run(&["power", NAME, "on", "--wait"])?);
    let images: Vec<PathBuf> = (0..2)
        .map(|i| lab.dir().join(format!("server-disk{i}.img")))
        .collect();
    for img in &images {
        // Data for the erase to destroy, written in place: QEMU may be opening the image.
        molar_tests::privileged::fill_pattern(img)
            .with_context(|| format!("writing {}", img.display()))?;
    }
    println!(
        "console log: {}",
        sim.vm().context("the BMC's VM")?.console_log().display()
    );

    step(
        3,
        "the server registers as the enrolled one and discovery stores its inventory",
    );
    let id = wait_until("the server to register", 180, || {
        let v = molar.json(&["server", NAME]).ok()?;
        (v["serial"] == "S123" && v["connected"] == true)
            .then(|| v["id"].as_str().map(str::to_owned))
            .flatten()
    })?;
    println!(
        "registered {:.1} s after QEMU started",
        started.elapsed().as_secs_f64()
    );
    wait_until("discovery", 120, || {
        let v = molar.json(&["server", &id]).ok()?;
        (v["state"] == "available").then_some(())
    })?;
    print!("{}", molar.run(&["servers"])?);
    let inv = molar.json(&["server", &id, "--inventory"])?;
    let inv = &inv["inventory"];
    println!(
        "inventory: {} {} serial {}, {} CPU(s), {} MiB, disks {}, NICs {}, BMC {}",
        inv["system"]["manufacturer"].as_str().unwrap_or("?"),
        inv["system"]["product"].as_str().unwrap_or("?"),
        inv["system"]["serial"].as_str().unwrap_or("?"),
        inv["cpu"]["threads"],
        inv["memory"]["total_bytes"].as_u64().unwrap_or(0) >> 20,
        inv["block_devices"]
            .as_array()
            .map(|d| d
                .iter()
                .filter_map(|d| d["name"].as_str())
                .collect::<Vec<_>>()
                .join(","))
            .unwrap_or_default(),
        inv["nics"]
            .as_array()
            .map(|d| d
                .iter()
                .filter_map(|d| d["mac"].as_str())
                .collect::<Vec<_>>()
                .join(","))
            .unwrap_or_default(),
        inv["bmc"]["lan_channels"][0]["mac"].as_str().unwrap_or("?"),
    );

    step(4, "BMC credentials set in-band, used out-of-band");
    let creds = molar.json(&[
        "call",
        &id,
        "bmc.set_credentials",
        r#"{"username":"molar","privilege":"administrator"}"#,
    ])?;
    let password = creds["password"].as_str().context("a password")?.to_owned();
    println!(
        "user {} (id {}) created; password returned to the controller only",
        creds["username"], creds["user_id"]
    );
    println!(
        "$ ipmitool -I lanplus -C 3 -H 127.0.0.1 -p {} -U molar -P *** chassis power status",
        sim.lan_port()
    );
    print!(
        "{}",
        sim.ipmitool_ok("molar", &password, &["chassis", "power", "status"])?
    );

    step(5, "decommission: erase every disk, verified");
    molar.run_live(&[
        "task",
        "start",
        &id,
        "decom.disk_erase",
        r#"{"method":"auto"}"#,
        "--wait",
    ])?;
    let erase = molar.task_result(&id, "decom.disk_erase")?;
    for d in erase["devices"].as_array().into_iter().flatten() {
        println!(
            "{}: {} in {:.1} s, verified: {}",
            d["device"].as_str().unwrap_or("?"),
            d["method"].as_str().unwrap_or("?"),
            d["seconds"].as_f64().unwrap_or(0.0),
            d["verification"]["passed"]
        );
    }
    for img in &images {
        ensure!(
            molar_tests::privileged::is_all_zero(img),
            "{} still holds data",
            img.display()
        );
        println!("host image {} reads all zeros", img.display());
    }

    step(
        6,
        "an OS image: GPT, ext4 root with the Debian kernel, compressed qcow2 over HTTP",
    );
    let disk = guest::build_disk(
        &kit,
        &DiskSpec {
            size_bytes: 64 << 20,
            kernel: true,
            config_drive: None,
        },
        lab.dir(),
        "guest",
    )?;
    let qcow2 = guest::publish_qcow2(&disk.raw, &www, "guest")?;
    let url = format!("http://10.0.2.100:{IMAGES_PORT}/{}", qcow2.url_path);
    println!(
        "{url}: {:.1} MiB qcow2 of a 64 MiB disk, {}",
        qcow2.size as f64 / (1 << 20) as f64,
        qcow2.checksum
    );

    step(
        7,
        "deploy: cache, write and run the image; the server kexecs into it",
    );
    let spec = serde_json::json!({
        "id": "guest", "url": url, "checksum": qcow2.checksum, "format": "qcow2",
    });
    molar.run_live(&[
        "task",
        "start",
        &id,
        "standbye.cache_images",
        &serde_json::json!({"images": [spec], "device": "vda"}).to_string(),
        "--wait",
    ])?;
    let cache = molar.task_result(&id, "standbye.cache_images")?;
    for c in cache["cached"].as_array().into_iter().flatten() {
        println!(
            "cached {} ({} bytes) on {}",
            c["id"].as_str().unwrap_or("?"),
            c["bytes"],
            c["device"].as_str().unwrap_or("memory")
        );
    }
    molar.run_live(&[
        "task",
        "start",
        &id,
        "standbye.prepare_image",
        r#"{"image_id":"guest","device":"nvme0n1"}"#,
        "--wait",
    ])?;
    let prep = molar.task_result(&id, "standbye.prepare_image")?;
    println!(
        "wrote {} bytes of {} to {} in {:.1} s, checksum {}",
        prep["bytes_written"],
        prep["format"].as_str().unwrap_or("?"),
        prep["device"].as_str().unwrap_or("?"),
        prep["seconds"].as_f64().unwrap_or(0.0),
        prep["checksum"].as_str().unwrap_or("?")
    );
    let written = guest::sha256_prefix(&images[0], std::fs::metadata(&disk.raw)?.len())?;
    ensure!(
        written == guest::sha256_file(&disk.raw)?,
        "the NVMe disk does not hold the image"
    );
    println!(
        "host image {} holds the OS image byte for byte",
        images[0].display()
    );
    let meta = serde_json::json!({
        "uuid": "3c9ad4c4-5a8e-4d0b-9b43-1f0e5b7d2c61",
        "hostname": "deployed-by-molar",
        "name": "deployed-by-molar",
    });
    let vm = sim.vm().context("the BMC's VM")?;
    let console_from = vm.console().len();
    molar.run_live(&[
        "task",
        "start",
        &id,
        "standbye.run_image",
        &serde_json::json!({
            "image_id": "guest",
            "device": "nvme0n1",
            "config_drive": {"meta_data": meta},
            "kernel_args": "console=ttyS0 panic=-1",
        })
        .to_string(),
        "--wait",
    ])?;
    let run = molar.task_result(&id, "standbye.run_image")?;
    println!(
        "boot: {} {} ({} entry), command line {:?}; config drive: partition {}",
        run["boot"].as_str().unwrap_or("?"),
        run["kernel"].as_str().unwrap_or("?"),
        run["entry_source"].as_str().unwrap_or("?"),
        run["cmdline"].as_str().unwrap_or("?"),
        run["config_drive"]["partition_number"]
    );
    ensure!(
        run["boot"] == "kexec",
        "run_image did not kexec: {}",
        run["reason"].as_str().unwrap_or("no reason given")
    );
    vm.wait_for_console_from(console_from, guest::POWEROFF, Duration::from_secs(180))?;
    let console = vm.console();
    let report = GuestReport::parse(console.get(console_from..).unwrap_or(""));
    for line in console.get(console_from..).unwrap_or("").lines() {
        if line.contains("MOLAR-GUEST-") {
            println!("console: {}", line.trim_end());
        }
    }
    ensure!(
        report.boot_ids.len() == 1 && report.errors.is_empty(),
        "the deployed system did not come up cleanly: {report:?}"
    );
    ensure!(
        report
            .meta_data
            .first()
            .is_some_and(|m| m["uuid"] == meta["uuid"]),
        "the deployed system did not read its config drive: {report:?}"
    );
    println!(
        "the deployed system runs (boot id {}) with its config drive; it powers the server off",
        report.boot_ids[0]
    );
    wait_until("QEMU to end", 60, || vm.pid().is_none().then_some(()))?;
    println!(
        "server powered off by the deployed system; {:.1} s so far",
        started.elapsed().as_secs_f64()
    );

    step(
        8,
        "out-of-band: powered on over IPMI LAN, the ramdisk registers again, its console",
    );
    let boot = molar.json(&["server", NAME])?["boot_id"].clone();
    print!("{}", molar.run(&["power", NAME, "status", "--wait"])?);
    print!("{}", molar.run(&["power", NAME, "on", "--wait"])?);
    wait_until("the ramdisk to register again", 180, || {
        let v = molar.json(&["server", NAME]).ok()?;
        (v["connected"] == true && v["boot_id"] != boot).then_some(())
    })?;
    println!("registered again with a new boot id");
    let log = molar.run(&["console", NAME, "--log"])?;
    let banner: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Linux version") || l.contains("molar init starting"))
        .take(3)
        .collect();
    ensure!(
        !banner.is_empty(),
        "the console log shows no boot: {} bytes",
        log.len()
    );
    for line in banner {
        println!("console log: {}", line.trim_end());
    }
    print!("{}", molar.run(&["requests", NAME])?);
    print!("{}", molar.run(&["power", NAME, "off", "--wait"])?);
    wait_until("QEMU to end", 60, || vm.pid().is_none().then_some(()))?;
    println!(
        "server powered off over IPMI LAN; total {:.1} s",
        started.elapsed().as_secs_f64()
    );
    drop(sim);
    drop(http);
    serve.terminate();
    Ok(())
}
