//! OpenIPMI's `ipmi_sim` as the test server's BMC: its LAN interface (RMCP+) on a loopback
//! UDP port for `ipmitool`, its `VM` serial port for QEMU's `ipmi-bmc-extern`, a
//! `lan_config_program` that gives the BMC a fixed MAC and IP, and — when asked — ownership
//! of the VM's power (`startcmd`), so `chassis power on/off/cycle/reset` works end to end,
//! from the host over LAN and from the guest through /dev/ipmi0.

use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::process::ChildGuard;
use super::qemu::{Qemu, QemuConfig, shell_quote};
use super::{Lab, free_tcp_port, free_udp_port, loopback_port_open};

/// The BMC's MAC address as `lan_config_program` reports it.
pub const BMC_MAC: &str = "52:54:00:be:ef:01";

/// A BMC user line of lan.conf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BmcUser {
    pub id: u8,
    pub name: String,
    pub password: String,
    /// `user`, `operator` or `admin`.
    pub privilege: String,
}

/// What the simulated BMC looks like.
#[derive(Debug, Clone)]
pub struct IpmiSimConfig {
    pub users: Vec<BmcUser>,
    /// The BMC's own IP (reported by `lan_config_program`; nothing listens there).
    pub bmc_ip: String,
    /// The VM whose power this BMC owns; started at once unless `start_now` is false.
    pub power: Option<QemuConfig>,
    /// Whether ipmi_sim powers the VM on when it starts (`startnow`), as a server that was
    /// on; false leaves it off until a `chassis power on`.
    pub start_now: bool,
    /// Serial over LAN: the loopback TCP port ipmi_sim connects to as the host's serial
    /// port (`sol "tcp:127.0.0.1:PORT" 115200`). It connects once at start, then only every
    /// 10 s (LAB.md): whatever listens there should be listening before [`IpmiSim::start`].
    pub sol_port: Option<u16>,
}

impl Default for IpmiSimConfig {
    /// LAB.md's BMC: an anonymous user and `ipmiusr`/`test` as admin.
    fn default() -> Self {
        IpmiSimConfig {
            users: vec![
                BmcUser {
                    id: 1,
                    name: String::new(),
                    password: "test".into(),
                    privilege: "user".into(),
                },
                BmcUser {
                    id: 2,
                    name: "ipmiusr".into(),
                    password: "test".into(),
                    privilege: "admin".into(),
                },
            ],
            bmc_ip: "192.0.2.10".into(),
            power: None,
            start_now: true,
            sol_port: None,
        }
    }
}

/// `lan_config_program`: `PROG STATEFILE get NAME...` prints `NAME:VALUE` lines,
/// `PROG STATEFILE set NAME VALUE...` records a value (the last one recorded wins).
const LAN_CONTROL: &str = r#"#!/bin/sh
# lan_config_program for ipmi_sim, written by molar's lab harness.
state="$1"; op="$2"; shift 2
case "$op" in
get)
  for n in "$@"; do
    v=$(grep "^$n:" "$state" 2>/dev/null | tail -n 1 | cut -d: -f2-)
    if [ -z "$v" ]; then
      case "$n" in
        mac_addr) v=@MAC@ ;;
        ip_addr) v=@IP@ ;;
        ip_addr_src) v=static ;;
        subnet_mask) v=255.255.255.0 ;;
        default_gw_ip_addr) v=0.0.0.0 ;;
        default_gw_mac_addr|backup_gw_mac_addr) v=00:00:00:00:00:00 ;;
        backup_gw_ip_addr) v=0.0.0.0 ;;
      esac
    fi
    echo "$n:$v"
  done ;;
set)
  n="$1"; shift
  echo "$n:$*" >> "$state" ;;
esac
exit 0
"#;

/// A running `ipmi_sim`.
#[derive(Debug)]
pub struct IpmiSim {
    lan_port: u16,
    vm_port: u16,
    vm: Option<Qemu>,
    child: ChildGuard,
}

fn check_conf_word(what: &str, s: &str) -> Result<()> {
    if s.contains(['"', '\'', '\n', '\\']) {
        bail!("{what} {s:?} cannot go into lan.conf (no quotes, backslashes or newlines)");
    }
    Ok(())
}

impl IpmiSim {
    /// Writes lan.conf, bmc.emu and the lan control script into the lab directory, starts
    /// `ipmi_sim` on free loopback ports and waits until both ports are open. With
    /// `cfg.power`, ipmi_sim starts that VM at once and owns its power.
    pub fn start(lab: &Lab, mut cfg: IpmiSimConfig) -> Result<IpmiSim> {
        let dir = lab.dir();
        let lan_port = free_udp_port()?;
        let vm_port = free_tcp_port()?;
        let state = dir.join("bmc-state");
        fs::create_dir_all(&state).context("creating the BMC state directory")?;

        let lancontrol = dir.join("lancontrol");
        check_conf_word("BMC IP", &cfg.bmc_ip)?;
        fs::write(
            &lancontrol,
            LAN_CONTROL
                .replace("@MAC@", BMC_MAC)
                .replace("@IP@", &cfg.bmc_ip),
        )
        .context("writing the lan control script")?;
        fs::set_permissions(&lancontrol, fs::Permissions::from_mode(0o755))?;

        let mut conf = String::new();
        conf.push_str("name \"molarbmc\"\nset_working_mc 0x20\n  startlan 1\n");
        conf.push_str(&format!(
            "    addr 127.0.0.1 {lan_port}\n    priv_limit admin\n"
        ));
        for level in ["callback", "user", "operator", "admin"] {
            conf.push_str(&format!(
                "    allowed_auths_{level} none md2 md5 straight\n"
            ));
        }
        // Get System GUID answers the VM's SMBIOS UUID, as a real BMC answers its system's.
        let guid = cfg
            .power
            .as_ref()
            .and_then(|q| q.smbios.as_ref())
            .map(|s| s.uuid.replace('-', ""))
            .filter(|g| g.len() == 32 && g.chars().all(|c| c.is_ascii_hexdigit()))
            .unwrap_or_else(|| "a123456789abcdefa123456789abcdef".into());
        conf.push_str(&format!("    guid {guid}\n"));
        conf.push_str(&format!(
            "    lan_config_program \"{} {}\"\n  endlan\n",
            lancontrol.display(),
            dir.join("lan-state").display()
        ));
        conf.push_str(&format!("  serial 15 127.0.0.1 {vm_port} codec VM\n"));
        if let Some(port) = cfg.sol_port {
            conf.push_str(&format!("  sol \"tcp:127.0.0.1:{port}\" 115200\n"));
        }

        let vm = match cfg.power.as_mut() {
            Some(qemu) => {
                qemu.ipmi_port = Some(vm_port);
                qemu.create_disks(dir)?;
                qemu.create_vars(dir)?;
                let args = qemu.args(dir)?;
                let out = dir.join(format!("{}-qemu.out", qemu.name));
                let script = dir.join(format!("start-{}.sh", qemu.name));
                let mut body = String::from(
                    "#!/bin/sh\n# started by ipmi_sim on power on\nexec qemu-system-x86_64",
                );
                for a in &args {
                    body.push(' ');
                    body.push_str(&shell_quote(a));
                }
                body.push_str(&format!(
                    " >>{} 2>&1\n",
                    shell_quote(&out.display().to_string())
                ));
                fs::write(&script, body).context("writing the VM start script")?;
                fs::set_permissions(&script, fs::Permissions::from_mode(0o755))?;
                check_conf_word("VM start script path", &script.display().to_string())?;
                conf.push_str(&format!("  startcmd '{}'\n", script.display()));
                conf.push_str(&format!(
                    "  startnow {}\n  poweroff_wait 2\n  kill_wait 2\n",
                    cfg.start_now
                ));
                Some(Qemu::owned_by_bmc(dir, qemu))
            }
            None => {
                conf.push_str("  startnow false\n");
                None
            }
        };
        for u in &cfg.users {
            check_conf_word("BMC user", &u.name)?;
            check_conf_word("BMC password", &u.password)?;
            conf.push_str(&format!(
                "  user {} true \"{}\" \"{}\" {} 10 none md2 md5 straight\n",
                u.id, u.name, u.password, u.privilege
            ));
        }
        let lan_conf = dir.join("lan.conf");
        fs::write(&lan_conf, conf).context("writing lan.conf")?;
        let emu = dir.join("bmc.emu");
        fs::write(
            &emu,
            "mc_setbmc 0x20\n\
             mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\n\
             sel_enable 0x20 1000 0x0a\n\
             mc_enable 0x20\n",
        )
        .context("writing bmc.emu")?;

        let out = dir.join("ipmi_sim.out");
        let out_file = File::create(&out)?;
        let child = Command::new("ipmi_sim")
            .arg("-c")
            .arg(&lan_conf)
            .arg("-f")
            .arg(&emu)
            .arg("-s")
            .arg(&state)
            .arg("-n")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out_file.try_clone()?)
            .stderr(out_file)
            .spawn()
            .context("starting ipmi_sim")?;
        let mut sim = IpmiSim {
            lan_port,
            vm_port,
            vm,
            child: ChildGuard::new("ipmi_sim", child),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(loopback_port_open("udp", lan_port) && loopback_port_open("tcp", vm_port)) {
            if let Some(status) = sim.child.try_wait() {
                bail!(
                    "ipmi_sim exited ({status}) before listening: {}",
                    fs::read_to_string(&out).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "ipmi_sim did not open 127.0.0.1:{lan_port}/udp and :{vm_port}/tcp within 10 s"
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(sim)
    }

    /// The `ipmi_sim` process's PID while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The RMCP+ LAN port (UDP, 127.0.0.1).
    pub fn lan_port(&self) -> u16 {
        self.lan_port
    }

    /// The serial `VM` port QEMU's `ipmi-bmc-extern` connects to.
    pub fn vm_port(&self) -> u16 {
        self.vm_port
    }

    /// The VM whose power this BMC owns.
    pub fn vm(&self) -> Option<&Qemu> {
        self.vm.as_ref()
    }

    pub fn vm_mut(&mut self) -> Option<&mut Qemu> {
        self.vm.as_mut()
    }

    /// `ipmitool -I lanplus -C 3 -H 127.0.0.1 -p PORT -U user ARGS` with the password passed
    /// through the environment (`-E`), so it shows in no process list.
    pub fn ipmitool(&self, user: &str, password: &str, args: &[&str]) -> Result<Output> {
        Command::new("ipmitool")
            .args([
                "-I",
                "lanplus",
                "-C",
                "3",
                "-H",
                "127.0.0.1",
                "-N",
                "1",
                "-R",
                "3",
            ])
            .arg("-p")
            .arg(self.lan_port.to_string())
            .arg("-U")
            .arg(user)
            .arg("-E")
            .args(args)
            .env("IPMI_PASSWORD", password)
            .stdin(Stdio::null())
            .output()
            .context("running ipmitool")
    }

    /// Like [`IpmiSim::ipmitool`], failing unless it succeeds; returns its stdout.
    pub fn ipmitool_ok(&self, user: &str, password: &str, args: &[&str]) -> Result<String> {
        let out = self.ipmitool(user, password, args)?;
        if !out.status.success() {
            bail!(
                "ipmitool {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The state directory (users set in-band persist there).
    pub fn state_dir(lab: &Lab) -> PathBuf {
        lab.dir().join("bmc-state")
    }
}

impl Drop for IpmiSim {
    fn drop(&mut self) {
        // QEMU first, by its pidfile: killing ipmi_sim alone would orphan it.
        if let Some(vm) = &mut self.vm {
            vm.kill();
        }
        self.child.kill();
    }
}
