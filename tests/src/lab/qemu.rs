//! A QEMU test server: LAB.md's command line as a typed config, started either as a child
//! of the test or by `ipmi_sim` (which then owns its power), with the serial console in a log
//! file that tests wait on.
//!
//! Network isolation is not optional: `-nodefaults` and `restrict=on` are always on, so the
//! guest reaches nothing but the forwarded loopback ports.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::Lab;
use super::process::{ChildGuard, kill_pidfile, live_pid_from_file, pid_alive};

/// The address the guest dials for forwarded host ports.
pub const GUEST_FORWARD_ADDR: &str = "10.0.2.100";

/// Accelerator. KVM is opt-in (`MOLAR_LAB_ACCEL=kvm`): on the machines measured, `/dev/kvm`
/// opens but a stock kernel never prints a line under it, so "KVM opens" is no proof that it
/// works and TCG is the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Tcg,
    Kvm,
}

impl Accel {
    pub fn from_env() -> Accel {
        match std::env::var("MOLAR_LAB_ACCEL").as_deref() {
            Ok("kvm") => Accel::Kvm,
            _ => Accel::Tcg,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Machine {
    /// The default server.
    Q35,
    /// i440fx: what iPXE's option ROM boots from (q35 did not start iPXE here).
    Pc,
}

/// How the VM boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boot {
    /// `-kernel/-initrd/-append`; the command line is `QemuConfig::append`.
    Kernel { kernel: PathBuf, initrd: PathBuf },
    /// Real PXE: the NIC's iPXE ROM, slirp's DHCP and TFTP serving `dir`, booting `bootfile`.
    Pxe { tftp_dir: PathBuf, bootfile: String },
    /// An ISO image in a SATA CD-ROM drive, first in the boot order (virtual media as a BMC
    /// presents it).
    Cdrom { iso: PathBuf },
    /// An image as a read-only USB stick (xHCI), first in the boot order: virtual media a BMC
    /// presents as a removable disk, or an ISO written to a stick.
    UsbDisk { image: PathBuf },
}

/// The platform firmware.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// QEMU's default SeaBIOS.
    Bios,
    /// Debian's OVMF (`ovmf` package): UEFI with efivarfs in the guest. The variable store
    /// is a copy of `OVMF_VARS_4M.fd` per VM (`NAME-vars.fd`), kept across its restarts.
    Uefi,
}

/// OVMF's code and its pristine variable store.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// The VM's one NIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    /// `virtio-net-pci`, `e1000`, ...
    pub model: String,
    pub mac: String,
    /// `None`: `romfile=` (no option ROM, as for `-kernel` boots).
    pub romfile: Option<PathBuf>,
    pub bootindex: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskKind {
    Nvme { serial: String },
    VirtioBlk { serial: Option<String> },
}

/// A raw disk image file created (sparse) in the lab directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    pub kind: DiskKind,
    pub size_bytes: u64,
}

/// SMBIOS type 1 identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Smbios {
    pub manufacturer: String,
    pub product: String,
    pub serial: String,
    pub uuid: String,
}

/// Everything on the QEMU command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuConfig {
    /// Names the console log (`NAME-console.log`), pidfile and disk images.
    pub name: String,
    pub machine: Machine,
    pub accel: Accel,
    pub memory_mib: u32,
    pub smp: u32,
    pub firmware: Firmware,
    pub boot: Boot,
    /// Kernel command line for `Boot::Kernel`.
    pub append: Vec<String>,
    pub nic: Nic,
    /// `(guest_port, host_port)`: the guest's `10.0.2.100:guest_port` reaches
    /// `127.0.0.1:host_port` through `busybox nc`.
    pub forwards: Vec<(u16, u16)>,
    pub disks: Vec<Disk>,
    /// The `ipmi_sim` serial (`VM` codec) port; `IpmiSim::start` fills it in.
    pub ipmi_port: Option<u16>,
    pub smbios: Option<Smbios>,
    /// SMBIOS type 11 OEM strings (`-smbios type=11,value=...`): how the lab hands the agent
    /// its token and CA pin without putting them on the kernel command line, which the
    /// kernel prints on the console.
    pub oem_strings: Vec<String>,
    /// `-no-reboot`: a guest reset ends QEMU instead of rebooting.
    pub no_reboot: bool,
    /// The serial console as a client socket to `127.0.0.1:PORT` (reconnecting each second),
    /// e.g. a [`super::SerialRelay`] to the BMC's Serial over LAN; the console log keeps
    /// everything either way.
    pub serial_port: Option<u16>,
}

/// The MAC of the lab server's NIC.
pub const SERVER_MAC: &str = "52:54:00:12:34:56";

impl QemuConfig {
    /// LAB.md's full test server booting the lab's images with `-kernel` (the PVH `vmlinux`
    /// when the images have one, else `vmlinuz`): q35, virtio-net,
    /// an NVMe disk (serial `deadbeef`) and a virtio-blk disk of 64 MiB each, SMBIOS identity.
    pub fn server(lab: &Lab) -> QemuConfig {
        let images = lab.images();
        QemuConfig {
            name: "server".into(),
            machine: Machine::Q35,
            accel: Accel::from_env(),
            memory_mib: 1024,
            smp: 2,
            firmware: Firmware::Bios,
            boot: Boot::Kernel {
                kernel: images.direct_boot_kernel().to_path_buf(),
                initrd: images.initramfs.clone(),
            },
            append: vec!["console=ttyS0".into()],
            nic: Nic {
                model: "virtio-net-pci".into(),
                mac: SERVER_MAC.into(),
                romfile: None,
                bootindex: None,
            },
            forwards: Vec::new(),
            disks: vec![
                Disk {
                    kind: DiskKind::Nvme {
                        serial: "deadbeef".into(),
                    },
                    size_bytes: 64 << 20,
                },
                Disk {
                    kind: DiskKind::VirtioBlk { serial: None },
                    size_bytes: 64 << 20,
                },
            ],
            ipmi_port: None,
            smbios: Some(Smbios {
                manufacturer: "Acme".into(),
                product: "X1".into(),
                serial: "S123".into(),
                uuid: "5e1f6c2a-8d3b-4b8e-9a51-0c2d3e4f5a6b".into(),
            }),
            oem_strings: Vec::new(),
            no_reboot: false,
            serial_port: None,
        }
    }

    /// Real PXE as LAB.md measured it: `-machine pc`, an e1000 with Debian's iPXE ROM as
    /// first boot device, slirp's TFTP serving `tftp_dir` and its DHCP naming `bootfile`.
    pub fn pxe(lab: &Lab, tftp_dir: &Path, bootfile: &str) -> QemuConfig {
        QemuConfig {
            name: "pxe".into(),
            machine: Machine::Pc,
            boot: Boot::Pxe {
                tftp_dir: tftp_dir.to_path_buf(),
                bootfile: bootfile.into(),
            },
            append: Vec::new(),
            nic: Nic {
                model: "e1000".into(),
                mac: SERVER_MAC.into(),
                romfile: Some("/usr/lib/ipxe/qemu/pxe-e1000.rom".into()),
                bootindex: Some(1),
            },
            disks: Vec::new(),
            ..QemuConfig::server(lab)
        }
    }

    /// Forwards the guest's `10.0.2.100:port` to `127.0.0.1:port`.
    pub fn forward(&mut self, port: u16) -> &mut Self {
        self.forwards.push((port, port));
        self
    }

    /// Forwards the guest's `10.0.2.100:guest_port` to `127.0.0.1:host_port` (the images
    /// dial the controller at `10.0.2.100:9000`; the lab's controller listens anywhere).
    pub fn forward_as(&mut self, guest_port: u16, host_port: u16) -> &mut Self {
        self.forwards.push((guest_port, host_port));
        self
    }

    /// The files a running VM uses, under `dir`.
    pub fn console_log(&self, dir: &Path) -> PathBuf {
        dir.join(format!("{}-console.log", self.name))
    }

    pub fn pidfile(&self, dir: &Path) -> PathBuf {
        dir.join(format!("{}.pid", self.name))
    }

    /// The VM's own UEFI variable store (`Firmware::Uefi`).
    pub fn vars_path(&self, dir: &Path) -> PathBuf {
        dir.join(format!("{}-vars.fd", self.name))
    }

    /// Copies OVMF's pristine variable store for a UEFI VM unless it already has one (a
    /// restarted VM keeps its variables, as a real machine's NVRAM does).
    pub fn create_vars(&self, dir: &Path) -> Result<()> {
        if self.firmware != Firmware::Uefi {
            return Ok(());
        }
        let vars = self.vars_path(dir);
        if !vars.exists() {
            fs::copy(OVMF_VARS, &vars).with_context(|| {
                format!(
                    "copying {OVMF_VARS} to {} (is Debian's ovmf installed?)",
                    vars.display()
                )
            })?;
        }
        Ok(())
    }

    /// The image file of disk `i` (`NAME-diskI.img`).
    pub fn disk_path(&self, dir: &Path, i: usize) -> PathBuf {
        dir.join(format!("{}-disk{i}.img", self.name))
    }

    /// Creates the disk image files (sparse, zero-filled) that `args` refers to. A file the
    /// test already put at a disk's path (a prepared image) is kept, and grown to the
    /// disk's size if it is smaller.
    pub fn create_disks(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        let mut paths = Vec::new();
        for (i, d) in self.disks.iter().enumerate() {
            let p = self.disk_path(dir, i);
            let f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&p)
                .with_context(|| format!("creating {}", p.display()))?;
            if f.metadata()?.len() < d.size_bytes {
                f.set_len(d.size_bytes)
                    .with_context(|| format!("sizing {}", p.display()))?;
            }
            paths.push(p);
        }
        Ok(paths)
    }

    /// The full argument list (program excluded) for a VM whose files live in `dir`.
    pub fn args(&self, dir: &Path) -> Result<Vec<String>> {
        let opt = |s: &Path| -> Result<String> {
            // QEMU option values use ',' as separator; refuse rather than escape.
            let s = s.display().to_string();
            if s.contains(',') {
                bail!("path {s} contains a comma, which QEMU options cannot take");
            }
            Ok(s)
        };
        let mut a: Vec<String> = Vec::new();
        let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
        push(&[
            "-machine",
            match self.machine {
                Machine::Q35 => "q35",
                Machine::Pc => "pc",
            },
            "-accel",
            match self.accel {
                Accel::Tcg => "tcg",
                Accel::Kvm => "kvm",
            },
            "-cpu",
            "max",
        ]);
        push(&[
            "-m",
            &self.memory_mib.to_string(),
            "-smp",
            &self.smp.to_string(),
        ]);
        push(&["-display", "none", "-nodefaults", "-no-user-config"]);
        if self.firmware == Firmware::Uefi {
            let vars = opt(&self.vars_path(dir))?;
            push(&[
                "-drive",
                &format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"),
                "-drive",
                &format!("if=pflash,format=raw,unit=1,file={vars}"),
            ]);
        }
        if self.no_reboot {
            push(&["-no-reboot"]);
        }
        let pidfile = opt(&self.pidfile(dir))?;
        push(&["-pidfile", &pidfile]);
        let log = opt(&self.console_log(dir))?;
        let console = match self.serial_port {
            Some(port) => format!(
                "socket,id=con0,host=127.0.0.1,port={port},reconnect=1,logfile={log},logappend=on"
            ),
            None => format!("null,id=con0,logfile={log},logappend=on"),
        };
        push(&["-chardev", &console, "-serial", "chardev:con0"]);

        let mut netdev = String::from("user,id=n0,restrict=on");
        for (guest, host) in &self.forwards {
            netdev.push_str(&format!(
                ",guestfwd=tcp:{GUEST_FORWARD_ADDR}:{guest}-cmd:busybox nc 127.0.0.1 {host}"
            ));
        }
        if let Boot::Pxe { tftp_dir, bootfile } = &self.boot {
            netdev.push_str(&format!(",tftp={},bootfile={bootfile}", opt(tftp_dir)?));
        }
        let mut nic = format!("{},netdev=n0,mac={}", self.nic.model, self.nic.mac);
        match &self.nic.romfile {
            Some(rom) => nic.push_str(&format!(",romfile={}", opt(rom)?)),
            None => nic.push_str(",romfile="),
        }
        if let Some(i) = self.nic.bootindex {
            nic.push_str(&format!(",bootindex={i}"));
        }
        push(&["-netdev", &netdev, "-device", &nic]);

        for (i, d) in self.disks.iter().enumerate() {
            let file = opt(&self.disk_path(dir, i))?;
            push(&[
                "-drive",
                &format!("file={file},if=none,id=d{i},format=raw,discard=unmap"),
            ]);
            let dev = match &d.kind {
                DiskKind::Nvme { serial } => format!("nvme,serial={serial},drive=d{i}"),
                DiskKind::VirtioBlk { serial: Some(s) } => {
                    format!("virtio-blk-pci,drive=d{i},serial={s}")
                }
                DiskKind::VirtioBlk { serial: None } => format!("virtio-blk-pci,drive=d{i}"),
            };
            push(&["-device", &dev]);
        }
        if let Some(port) = self.ipmi_port {
            push(&[
                "-chardev",
                &format!("socket,id=ipmi0,host=127.0.0.1,port={port},reconnect=10"),
                "-device",
                "ipmi-bmc-extern,chardev=ipmi0,id=bmc0",
                "-device",
                "isa-ipmi-kcs,bmc=bmc0",
            ]);
        }
        if let Some(s) = &self.smbios {
            push(&[
                "-smbios",
                &format!(
                    "type=1,manufacturer={},product={},serial={},uuid={}",
                    s.manufacturer, s.product, s.serial, s.uuid
                ),
            ]);
        }
        for v in &self.oem_strings {
            if v.contains(',') {
                bail!("OEM string {v:?} contains a comma, which QEMU's -smbios cannot take");
            }
            push(&["-smbios", &format!("type=11,value={v}")]);
        }
        match &self.boot {
            Boot::Kernel { kernel, initrd } => {
                push(&["-kernel", &opt(kernel)?, "-initrd", &opt(initrd)?]);
                push(&["-append", &self.append.join(" ")]);
            }
            Boot::Pxe { .. } => {}
            Boot::Cdrom { iso } => {
                let iso = opt(iso)?;
                push(&[
                    "-drive",
                    &format!("file={iso},if=none,id=cd0,media=cdrom,readonly=on"),
                    "-device",
                    "ahci,id=ahci0",
                    "-device",
                    "ide-cd,drive=cd0,bus=ahci0.0,bootindex=0",
                ]);
            }
            Boot::UsbDisk { image } => {
                let image = opt(image)?;
                push(&[
                    "-drive",
                    &format!("file={image},if=none,id=usb0,format=raw,readonly=on"),
                    "-device",
                    "qemu-xhci,id=xhci0",
                    "-device",
                    "usb-storage,drive=usb0,bus=xhci0.0,bootindex=0",
                ]);
            }
        }
        Ok(a)
    }
}

/// Single-quotes `s` for /bin/sh.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A running (or powered-off) test server.
#[derive(Debug)]
pub struct Qemu {
    log: PathBuf,
    pidfile: PathBuf,
    /// Set when the test started QEMU itself; `None` when `ipmi_sim` did.
    child: Option<ChildGuard>,
}

impl Qemu {
    /// Starts QEMU as a child of the test.
    pub fn spawn(lab: &Lab, cfg: &QemuConfig) -> Result<Qemu> {
        let dir = lab.dir();
        cfg.create_disks(dir)?;
        cfg.create_vars(dir)?;
        let args = cfg.args(dir)?;
        let out = dir.join(format!("{}-qemu.out", cfg.name));
        let out_file = File::create(&out).with_context(|| format!("creating {}", out.display()))?;
        let child = Command::new("qemu-system-x86_64")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(out_file.try_clone()?)
            .stderr(out_file)
            .spawn()
            .context("starting qemu-system-x86_64")?;
        Ok(Qemu {
            log: cfg.console_log(dir),
            pidfile: cfg.pidfile(dir),
            child: Some(ChildGuard::new("qemu", child)),
        })
    }

    /// A handle on the VM that `ipmi_sim` starts from `cfg`.
    pub(crate) fn owned_by_bmc(dir: &Path, cfg: &QemuConfig) -> Qemu {
        Qemu {
            log: cfg.console_log(dir),
            pidfile: cfg.pidfile(dir),
            child: None,
        }
    }

    /// The serial console log (appended across power cycles).
    pub fn console_log(&self) -> &Path {
        &self.log
    }

    /// Everything the console printed so far.
    pub fn console(&self) -> String {
        fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    fn marker(&self) -> String {
        self.pidfile.display().to_string()
    }

    /// The QEMU process's PID while it runs.
    pub fn pid(&self) -> Option<i32> {
        live_pid_from_file(&self.pidfile, &self.marker())
    }

    pub fn is_running(&self) -> bool {
        match &self.child {
            Some(c) => c.id().is_some_and(pid_alive),
            None => self.pid().is_some(),
        }
    }

    /// Waits until the console shows `pattern` at or after byte `from` of the log; returns
    /// the line holding it. Fails early when QEMU exits, with the console's tail.
    pub fn wait_for_console_from(
        &self,
        from: usize,
        pattern: &str,
        timeout: Duration,
    ) -> Result<String> {
        self.wait_for_any_from(from, &[pattern], timeout)
    }

    /// Waits until the console shows `pattern`; returns the line holding it.
    pub fn wait_for_console(&self, pattern: &str, timeout: Duration) -> Result<String> {
        self.wait_for_any_from(0, &[pattern], timeout)
    }

    /// Waits until the console shows any of `patterns` after byte `from`.
    pub fn wait_for_any_from(
        &self,
        from: usize,
        patterns: &[&str],
        timeout: Duration,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let mut exited_at: Option<Instant> = None;
        loop {
            let text = self.console();
            let tail = text.get(from..).unwrap_or("");
            for line in tail.lines() {
                if patterns.iter().any(|p| line.contains(p)) {
                    return Ok(line.to_string());
                }
            }
            // When the test's own QEMU is gone, give its last output a moment to land, then
            // stop. (A BMC-owned VM may be between power cycles: only the deadline counts.)
            if exited_at.is_none() && self.child.is_some() && !self.is_running() {
                exited_at = Some(Instant::now());
            }
            let gone = exited_at.is_some_and(|t| t.elapsed() > Duration::from_millis(500));
            if gone || Instant::now() >= deadline {
                let why = if gone { "QEMU exited" } else { "timed out" };
                bail!(
                    "{why} after {:?} waiting for {patterns:?} on the console ({}); last lines:\n{}",
                    timeout.saturating_sub(deadline.saturating_duration_since(Instant::now())),
                    self.log.display(),
                    last_lines(&text, 25)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits up to `timeout` for QEMU to end (e.g. after `-no-reboot` and a guest reset).
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        if let Some(c) = &mut self.child {
            return c.wait_timeout(timeout).is_some();
        }
        let deadline = Instant::now() + timeout;
        while self.pid().is_some() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }

    /// Kills QEMU now.
    pub fn kill(&mut self) {
        if let Some(c) = &mut self.child {
            c.kill();
        }
        kill_pidfile(&self.pidfile, &self.marker(), Duration::from_secs(5));
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        self.kill();
    }
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_labs_command_line() {
        let lab = Lab::new("qemu_args", super::super::Images::in_dir(Path::new("/img"))).unwrap();
        let mut cfg = QemuConfig::server(&lab);
        cfg.accel = Accel::Tcg;
        cfg.forward(9000).forward_as(8080, 41234);
        cfg.ipmi_port = Some(9002);
        let args = cfg.args(Path::new("/lab")).unwrap().join(" ");
        for want in [
            "-machine q35 -accel tcg -cpu max -m 1024 -smp 2 -display none -nodefaults",
            "-netdev user,id=n0,restrict=on,guestfwd=tcp:10.0.2.100:9000-cmd:busybox nc 127.0.0.1 9000,guestfwd=tcp:10.0.2.100:8080-cmd:busybox nc 127.0.0.1 41234",
            "-device virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56,romfile=",
            "-drive file=/lab/server-disk0.img,if=none,id=d0,format=raw,discard=unmap -device nvme,serial=deadbeef,drive=d0",
            "-device virtio-blk-pci,drive=d1",
            "-chardev socket,id=ipmi0,host=127.0.0.1,port=9002,reconnect=10 -device ipmi-bmc-extern,chardev=ipmi0,id=bmc0 -device isa-ipmi-kcs,bmc=bmc0",
            "-smbios type=1,manufacturer=Acme,product=X1,serial=S123,uuid=5e1f6c2a-8d3b-4b8e-9a51-0c2d3e4f5a6b",
            "-chardev null,id=con0,logfile=/lab/server-console.log,logappend=on -serial chardev:con0",
            "-kernel /img/vmlinuz -initrd /img/initramfs.img -append console=ttyS0",
        ] {
            assert!(args.contains(want), "missing {want:?} in {args}");
        }

        let pxe = QemuConfig::pxe(&lab, Path::new("/img"), "boot.ipxe");
        let args = pxe.args(Path::new("/lab")).unwrap().join(" ");
        assert!(args.contains("-machine pc "));
        assert!(args.contains("-netdev user,id=n0,restrict=on,tftp=/img,bootfile=boot.ipxe"));
        assert!(args.contains(
            "-device e1000,netdev=n0,mac=52:54:00:12:34:56,romfile=/usr/lib/ipxe/qemu/pxe-e1000.rom,bootindex=1"
        ));
        assert!(!args.contains("-kernel"));
        assert!(QemuConfig::server(&lab).args(Path::new("/a,b")).is_err());

        let mut uefi = QemuConfig::server(&lab);
        uefi.firmware = Firmware::Uefi;
        uefi.boot = Boot::Cdrom {
            iso: "/img/molar.iso".into(),
        };
        let args = uefi.args(Path::new("/lab")).unwrap().join(" ");
        for want in [
            "-drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd -drive if=pflash,format=raw,unit=1,file=/lab/server-vars.fd",
            "-drive file=/img/molar.iso,if=none,id=cd0,media=cdrom,readonly=on -device ahci,id=ahci0 -device ide-cd,drive=cd0,bus=ahci0.0,bootindex=0",
        ] {
            assert!(args.contains(want), "missing {want:?} in {args}");
        }
        assert!(!args.contains("-kernel"));
        uefi.boot = Boot::UsbDisk {
            image: "/img/molar.iso".into(),
        };
        let args = uefi.args(Path::new("/lab")).unwrap().join(" ");
        let want = "-drive file=/img/molar.iso,if=none,id=usb0,format=raw,readonly=on -device qemu-xhci,id=xhci0 -device usb-storage,drive=usb0,bus=xhci0.0,bootindex=0";
        assert!(args.contains(want), "missing {want:?} in {args}");
        assert!(!args.contains("-kernel"));
    }

    #[test]
    fn quotes_for_the_shell() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
