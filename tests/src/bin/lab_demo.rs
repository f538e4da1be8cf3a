//! `molar-lab-demo`: the main job, end to end, as an operator would watch it: one server walks
//! the whole lifecycle (issue #15), the controller's workflows do the work and the operator
//! only runs lifecycle commands. `scripts/demo` builds the binaries and the ramdisk, then runs
//! this (`tests/tests/lab_lifecycle.rs` is the tested recipe it follows):
//!
//! 1. an OS image built here (`molar_tests::lab::guest`: GPT, ext4 root with the Debian kernel
//!    and a small init), compressed qcow2, served over HTTP on loopback; a policy file
//!    (`[discovery] power_on_enrolled`, BMC credentials, the image catalogue) checked with
//!    `molar policy check`; `molar serve --policy` on loopback (its certificate also names
//!    10.0.2.100, the address the VM dials), `molar token create`;
//! 2. `ipmi_sim` as the server's BMC, owning a QEMU server that is off; the operator enrols the
//!    server by its BMC only (`molar server add`) and the controller's discovery powers it on
//!    over IPMI LAN, the ramdisk boots over PXE, stores its inventory and checks the BMC
//!    credentials (proven from the host with `ipmitool -I lanplus`) → available; `molar bmc
//!    rotate` sets a new BMC password in-band, proven over LAN (the old one refused);
//! 3. `molar claim --image guest`: the controller writes the image to the NVMe disk (its root
//!    partition checked byte for byte on the host) and kexecs into it with a config drive; the deployed system
//!    prints its boot id and meta data on the console → reserved, then powers the server off;
//! 4. `molar release`: the controller boots it into the ramdisk over the BMC and erases every
//!    disk (overwrite, one pass of zeros, checked on the host's disk images) → available;
//! 5. `molar console NAME --log`, `molar requests NAME`, `molar power NAME off`.
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

    /// The result of the server's latest task of `method`.
    fn task_result(&self, id: &str, method: &str) -> Result<serde_json::Value> {
        let tasks = self.json(&["tasks", id])?;
        tasks
            .as_array()
            .and_then(|t| t.iter().rev().find(|t| t["method"] == method))
            .map(|t| t["result"].clone())
            .with_context(|| format!("the {method} task"))
    }

    /// Waits for the server to be in `want`; on `error` prints its workflows and fails with
    /// the failed step's message.
    fn reach(&self, want: &str, secs: u64) -> Result<()> {
        let mut failed = None;
        wait_until(&format!("{NAME} to be {want}"), secs, || {
            let v = self.json(&["server", NAME]).ok()?;
            if v["state"] == "error" {
                failed = Some(self.failure());
                return Some(());
            }
            (v["state"] == want).then_some(())
        })?;
        if let Some(why) = failed {
            if let Ok(out) = self.run(&["workflows", NAME]) {
                print!("{out}");
            }
            bail!("{NAME} went to error instead of {want}: {why}");
        }
        Ok(())
    }

    /// [`Molar::reach`], then prints how long `what` took since `since`.
    fn reach_timed(&self, what: &str, want: &str, secs: u64, since: Instant) -> Result<()> {
        self.reach(want, secs)?;
        println!("{what} -> {want} in {:.1} s", since.elapsed().as_secs_f64());
        Ok(())
    }

    /// The failed step's (or workflow's) message of the server's newest workflow.
    fn failure(&self) -> String {
        let wfs = self.json(&["workflows", NAME]).unwrap_or_default();
        let newest = wfs
            .as_array()
            .and_then(|w| w.iter().max_by_key(|w| w["id"].as_i64()));
        let Some(wf) = newest else {
            return "no workflow".to_owned();
        };
        wf["steps"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["state"] == "failed"))
            .map(|s| {
                format!(
                    "step {}: {}",
                    s["name"].as_str().unwrap_or("?"),
                    s["message"].as_str().unwrap_or("no message")
                )
            })
            .or_else(|| wf["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "no message".to_owned())
    }

    /// `molar --json ARGS` for commands that print one JSON object a line (`history`).
    fn json_lines(&self, args: &[&str]) -> Result<Vec<serde_json::Value>> {
        let out = Command::new(&self.bin)
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--json")
            .args(args)
            .output()
            .context("running molar")?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).context("molar --json output"))
            .collect()
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

/// The inventory summary line of `molar server NAME --inventory`.
fn inventory_line(inv: &serde_json::Value) -> String {
    let names = |list: &serde_json::Value, key: &str| {
        list.as_array()
            .map(|d| {
                d.iter()
                    .filter_map(|d| d[key].as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default()
    };
    format!(
        "inventory: {} {} serial {}, {} CPU(s), {} MiB, disks {}, NICs {}, BMC {}",
        inv["system"]["manufacturer"].as_str().unwrap_or("?"),
        inv["system"]["product"].as_str().unwrap_or("?"),
        inv["system"]["serial"].as_str().unwrap_or("?"),
        inv["cpu"]["threads"],
        inv["memory"]["total_bytes"].as_u64().unwrap_or(0) >> 20,
        names(&inv["block_devices"], "name"),
        names(&inv["nics"], "mac"),
        inv["bmc"]["lan_channels"][0]["mac"].as_str().unwrap_or("?"),
    )
}

/// `len` bytes of `path` from `offset`.
fn range(path: &std::path::Path, offset: u64, len: u64) -> Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0; usize::try_from(len)?];
    f.read_exact(&mut buf)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(buf)
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

    step(
        1,
        "an OS image, a policy naming it, and a controller serving that policy",
    );
    // Built and published first: the policy's catalogue carries its checksum.
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
        "{url}: {:.1} MiB qcow2 of a 64 MiB disk (GPT, ext4 root with the Debian kernel), {}",
        qcow2.size as f64 / (1 << 20) as f64,
        qcow2.checksum
    );
    let policy = lab.dir().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            r#"[discovery]
power_on_enrolled = true
bmc_credentials = {{ username = "molar" }}

[[image]]
id = "guest"
urls = ["{url}"]
checksum = "{}"
format = "qcow2"
"#,
            qcow2.checksum
        ),
    )?;
    println!("$ cat {}", policy.display());
    print!("{}", std::fs::read_to_string(&policy)?);
    let policy_arg = policy.display().to_string();
    print!("{}", molar.run(&["policy", "check", &policy_arg])?);
    println!(
        "$ molar serve --listen 127.0.0.1:{agent_port} --api 127.0.0.1:{api_port} --state-dir {} --san 10.0.2.100 --policy {policy_arg}",
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
                .args(["--policy", &policy_arg])
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
        "a BMC (ipmi_sim) with a QEMU server behind it, off; enrolled by its BMC only",
    );
    let mut server = QemuConfig::server(&lab);
    // The NVMe disk takes the OS image and its config drive.
    server.disks[0].size_bytes = 256 << 20;
    server.disks[1].size_bytes = 64 << 20;
    server.forward_as(9000, agent_port);
    server.forward_as(IMAGES_PORT, http.port());
    // Secrets travel as SMBIOS OEM strings: the kernel prints its command line on the console.
    server.append.extend([
        "molar.controller=10.0.2.100:9000".to_owned(),
        "panic=10".to_owned(),
    ]);
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
    let vm = sim.vm().context("the BMC's VM")?;
    ensure!(!vm.is_running(), "the server should start off");
    let bmc_password = lab.dir().join("bmc-password");
    std::fs::write(&bmc_password, "test\n")?;
    let started = Instant::now();
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
    println!("the policy powers enrolled servers on: discovery runs on its own");
    let images: Vec<PathBuf> = (0..2)
        .map(|i| lab.dir().join(format!("server-disk{i}.img")))
        .collect();
    // Data for the erase to destroy, written in place as soon as QEMU is started, before the
    // ramdisk can write anything.
    wait_until("the controller to power the server on", 120, || {
        vm.is_running().then_some(())
    })?;
    for img in &images {
        molar_tests::privileged::fill_pattern(img)
            .with_context(|| format!("writing {}", img.display()))?;
    }
    println!(
        "powered on over IPMI LAN {:.1} s after server add; console log: {}",
        started.elapsed().as_secs_f64(),
        vm.console_log().display()
    );
    molar.reach_timed("server add", "available", 240, started)?;
    print!("{}", molar.run(&["servers"])?);
    print!("{}", molar.run(&["workflows", NAME])?);
    print!("{}", molar.run(&["history", NAME])?);
    print!("{}", molar.run(&["bmc", "show", NAME])?);
    let inv = molar.json(&["server", NAME, "--inventory"])?;
    println!("{}", inventory_line(&inv["inventory"]));
    // The operator's credentials worked, so discovery kept them: the BMC entry says whose.
    let entry = molar.json(&["bmc", "show", NAME])?;
    let user = entry["username"]
        .as_str()
        .context("the BMC entry's username")?
        .to_owned();
    println!(
        "$ ipmitool -I lanplus -C 3 -H 127.0.0.1 -p {} -U {user} -P *** chassis power status",
        sim.lan_port()
    );
    let status = sim.ipmitool_ok(&user, "test", &["chassis", "power", "status"])?;
    print!("{status}");
    ensure!(
        status.contains("Chassis Power is on"),
        "the stored BMC credentials do not show the server on: {status}"
    );
    // A new password, set in-band while the ramdisk runs and proven over LAN before it is
    // stored; the old one stops working. Never printed: the operator would `--reveal` it.
    print!("{}", molar.run(&["bmc", "rotate", NAME])?);
    let revealed = molar.json(&["bmc", "show", NAME, "--reveal"])?;
    let rotated = revealed["credentials"]["password"]
        .as_str()
        .context("the revealed password")?
        .to_owned();
    ensure!(rotated != "test", "the password did not change");
    sim.ipmitool_ok(&user, &rotated, &["chassis", "power", "status"])
        .context("the rotated password does not open a session")?;
    ensure!(
        !sim.ipmitool(&user, "test", &["chassis", "power", "status"])?
            .status
            .success(),
        "the old BMC password still works after the rotation"
    );
    println!("rotated: the new password opens a session from this host, the old one is refused");

    step(
        3,
        "claim: the controller writes the image and kexecs into it",
    );
    let meta = serde_json::json!({
        "uuid": "3c9ad4c4-5a8e-4d0b-9b43-1f0e5b7d2c61",
        "hostname": "deployed-by-molar",
        "name": "deployed-by-molar",
    });
    let config_drive = lab.dir().join("config-drive.json");
    std::fs::write(
        &config_drive,
        serde_json::json!({ "meta_data": meta }).to_string(),
    )?;
    let console_from = vm.console().len();
    let claimed = Instant::now();
    print!(
        "{}",
        molar.run(&[
            "claim",
            NAME,
            "--image",
            "guest",
            "--device",
            "nvme0n1",
            "--config-drive",
            &config_drive.display().to_string(),
            "--kernel-args",
            "console=ttyS0 panic=-1",
        ])?
    );
    molar.reach_timed("claim", "reserved", 300, claimed)?;
    print!("{}", molar.run(&["workflows", NAME])?);
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
        "the deployed system runs (boot id {}) with its meta data {}; it powers the server off",
        report.boot_ids[0], report.meta_data[0]
    );
    wait_until("QEMU to end", 60, || vm.pid().is_none().then_some(()))?;
    println!(
        "claim -> the deployed system ran and powered off in {:.1} s",
        claimed.elapsed().as_secs_f64()
    );
    // Checked with QEMU gone: nothing writes to the disk any more. The root partition, byte
    // for byte: run_image's config drive rewrote the GPT and added a partition after it.
    let (offset, len) = disk.root;
    ensure!(
        range(&images[0], offset, len)? == range(&disk.raw, offset, len)?,
        "the NVMe disk's root partition does not hold the image's"
    );
    println!(
        "host image {} holds the OS image's root partition byte for byte ({} MiB at {} MiB)",
        images[0].display(),
        len >> 20,
        offset >> 20
    );

    step(
        4,
        "release: the controller boots the ramdisk over the BMC and erases every disk",
    );
    // One overwrite pass writes zeros, which the host checks; `metadata` would leave data.
    let released = Instant::now();
    print!(
        "{}",
        molar.run(&[
            "release",
            NAME,
            "--erase-method",
            "overwrite",
            "--passes",
            "1"
        ])?
    );
    molar.reach_timed("release", "available", 300, released)?;
    print!("{}", molar.run(&["workflows", NAME])?);
    let id = molar.json(&["server", NAME])?["id"]
        .as_str()
        .context("the server's id")?
        .to_owned();
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
    let history = molar.run(&["history", NAME])?;
    print!("{history}");
    let walk: Vec<String> = molar
        .json_lines(&["history", NAME])?
        .iter()
        .filter_map(|t| t["to"].as_str().map(str::to_owned))
        .collect();
    ensure!(
        walk == [
            "initial",
            "discovery",
            "available",
            "reserved",
            "cleanup",
            "available"
        ],
        "the server's walk is {walk:?}"
    );
    println!("walked {}", walk.join(" -> "));

    step(5, "its console log, its requests, powered off");
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
