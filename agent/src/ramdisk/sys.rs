//! The narrow side-effect interface of PID 1: every mount, module load, hostname change,
//! link/address/route change, console redirection, zombie reap and reboot(2) the ramdisk init
//! performs goes through [`System`]. [`LinuxSystem`] does it for real; `RecordingSystem`
//! (unit tests only, not in the product) records each call with its exact arguments so the init
//! sequence is unit-tested without root (the shape of youki's `syscall/{linux,test}.rs`). Reads of /proc, /sys and /lib/modules are
//! not here: they take a root path like the rest of the agent, so tests use fixture trees.

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::Path;
#[cfg(test)]
use std::path::PathBuf;
#[cfg(test)]
use std::sync::Mutex;

use nix::errno::Errno;
use nix::mount::MsFlags;

/// What reboot(2) should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebootMode {
    Restart,
    PowerOff,
}

/// Side effects of the ramdisk init. Implementations must be usable from several tasks at once.
pub trait System: Send + Sync {
    /// mount(2) `source` of type `fstype` on `target` with `flags` and filesystem `data`.
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), Errno>;
    /// mkdir(2); an existing directory is reported as `EEXIST` (the caller decides).
    fn mkdir(&self, path: &Path, mode: u32) -> Result<(), Errno>;
    /// symlink(2): `link` points to `target`.
    fn symlink(&self, target: &Path, link: &Path) -> Result<(), Errno>;
    /// Opens `path` read-write and makes it stdin, stdout and stderr.
    fn attach_console(&self, path: &Path) -> Result<(), Errno>;
    /// Points each of stdin, stdout and stderr that is closed at `path` (opened read-write), so
    /// that files opened later cannot take descriptors 0-2 and receive log lines.
    fn fill_std_fds(&self, path: &Path) -> Result<(), Errno>;
    /// sethostname(2).
    fn sethostname(&self, name: &str) -> Result<(), Errno>;
    /// The running kernel's release (`uname -r`), naming the `/lib/modules` directory.
    fn kernel_release(&self) -> Result<String, Errno>;
    /// finit_module(2) of the module file at `path` with module parameters `params`.
    fn load_module(&self, path: &Path, params: &str) -> Result<(), Errno>;
    /// sync(2).
    fn sync(&self);
    /// reboot(2). Returns only on failure (or in a fake).
    fn reboot(&self, mode: RebootMode) -> Result<(), Errno>;
    /// The process id of this process (1 when it is the ramdisk's init).
    fn pid(&self) -> i32;
    /// waitpid(`pid`, WNOHANG): `true` when a zombie was reaped.
    fn reap(&self, pid: i32) -> Result<bool, Errno>;
    /// Sets the link with index `ifindex` administratively up (RTM_NEWLINK, IFF_UP).
    fn link_up(&self, ifindex: u32) -> Result<(), Errno>;
    /// Adds (or replaces) `addr/prefix_len` on link `ifindex`.
    fn addr_add(&self, ifindex: u32, addr: Ipv4Addr, prefix_len: u8) -> Result<(), Errno>;
    /// Removes `addr/prefix_len` from link `ifindex`.
    fn addr_del(&self, ifindex: u32, addr: Ipv4Addr, prefix_len: u8) -> Result<(), Errno>;
    /// Adds (or replaces) the IPv4 default route through `gateway` on link `ifindex`.
    fn default_route_add(&self, ifindex: u32, gateway: Ipv4Addr) -> Result<(), Errno>;
}

/// The real thing, for the ramdisk (and for nothing else: it mounts and reboots).
#[derive(Debug, Default)]
pub struct LinuxSystem;

impl System for LinuxSystem {
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), Errno> {
        nix::mount::mount(Some(source), target, Some(fstype), flags, data)
    }

    fn mkdir(&self, path: &Path, mode: u32) -> Result<(), Errno> {
        nix::unistd::mkdir(path, nix::sys::stat::Mode::from_bits_truncate(mode))
    }

    fn symlink(&self, target: &Path, link: &Path) -> Result<(), Errno> {
        nix::unistd::symlinkat(target, nix::fcntl::AT_FDCWD, link)
    }

    fn attach_console(&self, path: &Path) -> Result<(), Errno> {
        let console = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
        // No controlling terminal on purpose: a ^C typed on the serial console must not
        // signal PID 1.
        nix::unistd::dup2_stdin(&console)?;
        nix::unistd::dup2_stdout(&console)?;
        nix::unistd::dup2_stderr(&console)
    }

    fn fill_std_fds(&self, path: &Path) -> Result<(), Errno> {
        use std::os::fd::AsFd;
        let closed = |fd: std::os::fd::BorrowedFd<'_>| {
            nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD) == Err(Errno::EBADF)
        };
        let (stdin, stdout, stderr) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
        let (c0, c1, c2) = (
            closed(stdin.as_fd()),
            closed(stdout.as_fd()),
            closed(stderr.as_fd()),
        );
        if !(c0 || c1 || c2) {
            return Ok(());
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
        if c0 {
            nix::unistd::dup2_stdin(&file)?;
        }
        if c1 {
            nix::unistd::dup2_stdout(&file)?;
        }
        if c2 {
            nix::unistd::dup2_stderr(&file)?;
        }
        Ok(())
    }

    fn sethostname(&self, name: &str) -> Result<(), Errno> {
        nix::unistd::sethostname(name)
    }

    fn kernel_release(&self) -> Result<String, Errno> {
        let uts = nix::sys::utsname::uname()?;
        Ok(uts.release().to_string_lossy().into_owned())
    }

    fn load_module(&self, path: &Path, params: &str) -> Result<(), Errno> {
        let file =
            File::open(path).map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
        let params = std::ffi::CString::new(params).map_err(|_| Errno::EINVAL)?;
        nix::kmod::finit_module(&file, &params, nix::kmod::ModuleInitFlags::empty())
    }

    fn sync(&self) {
        nix::unistd::sync();
    }

    fn reboot(&self, mode: RebootMode) -> Result<(), Errno> {
        let how = match mode {
            RebootMode::Restart => nix::sys::reboot::RebootMode::RB_AUTOBOOT,
            RebootMode::PowerOff => nix::sys::reboot::RebootMode::RB_POWER_OFF,
        };
        match nix::sys::reboot::reboot(how) {
            Ok(never) => match never {},
            Err(e) => Err(e),
        }
    }

    fn pid(&self) -> i32 {
        nix::unistd::getpid().as_raw()
    }

    fn reap(&self, pid: i32) -> Result<bool, Errno> {
        use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
        match waitpid(nix::unistd::Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG))? {
            WaitStatus::StillAlive => Ok(false),
            _ => Ok(true),
        }
    }

    fn link_up(&self, ifindex: u32) -> Result<(), Errno> {
        super::netlink::link_up(ifindex)
    }

    fn addr_add(&self, ifindex: u32, addr: Ipv4Addr, prefix_len: u8) -> Result<(), Errno> {
        super::netlink::addr_change(true, ifindex, addr, prefix_len)
    }

    fn addr_del(&self, ifindex: u32, addr: Ipv4Addr, prefix_len: u8) -> Result<(), Errno> {
        super::netlink::addr_change(false, ifindex, addr, prefix_len)
    }

    fn default_route_add(&self, ifindex: u32, gateway: Ipv4Addr) -> Result<(), Errno> {
        super::netlink::default_route_add(ifindex, gateway)
    }
}

/// One side effect as [`RecordingSystem`] saw it.
#[cfg(test)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Mount {
        source: String,
        target: PathBuf,
        fstype: String,
        flags: MsFlags,
        data: Option<String>,
    },
    Mkdir {
        path: PathBuf,
        mode: u32,
    },
    Symlink {
        target: PathBuf,
        link: PathBuf,
    },
    AttachConsole(PathBuf),
    FillStdFds(PathBuf),
    Sethostname(String),
    LoadModule {
        path: PathBuf,
        params: String,
    },
    Sync,
    Reboot(RebootMode),
    Reap(i32),
    LinkUp(u32),
    AddrAdd {
        ifindex: u32,
        addr: Ipv4Addr,
        prefix_len: u8,
    },
    AddrDel {
        ifindex: u32,
        addr: Ipv4Addr,
        prefix_len: u8,
    },
    DefaultRouteAdd {
        ifindex: u32,
        gateway: Ipv4Addr,
    },
}

/// A fake [`System`] that records every call and answers from a small script: a pid, a kernel
/// release, and errnos to return for chosen module files or mount targets.
#[cfg(test)]
#[derive(Debug)]
pub struct RecordingSystem {
    /// The record; read it with [`RecordingSystem::calls`].
    pub calls: Mutex<Vec<Call>>,
    pub pid: i32,
    pub release: String,
    /// `(file name of a module, errno)` for modules whose load fails.
    pub module_errors: Vec<(String, Errno)>,
    /// `(file name of a module, time)` for modules whose load takes that long (a driver that
    /// probes slow hardware), recorded when the load ends.
    pub module_delays: Vec<(String, std::time::Duration)>,
    /// `(mount target, errno)` for mounts that fail.
    pub mount_errors: Vec<(PathBuf, Errno)>,
    /// Makes `attach_console` fail with this errno.
    pub console_error: Option<Errno>,
    /// Pids that `reap` reaps; other pids answer `ECHILD`.
    pub zombies: Vec<i32>,
}

#[cfg(test)]
impl Default for RecordingSystem {
    fn default() -> Self {
        Self {
            calls: Mutex::new(Vec::new()),
            pid: 1,
            release: "6.1.0-test".to_string(),
            module_errors: Vec::new(),
            module_delays: Vec::new(),
            mount_errors: Vec::new(),
            console_error: None,
            zombies: Vec::new(),
        }
    }
}

#[cfg(test)]
impl RecordingSystem {
    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// The file names of the modules loaded so far, in order.
    pub fn loaded_modules(&self) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::LoadModule { path, .. } => {
                    path.file_name().map(|n| n.to_string_lossy().into_owned())
                }
                _ => None,
            })
            .collect()
    }

    fn record(&self, call: Call) {
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(call);
        }
    }
}

#[cfg(test)]
impl System for RecordingSystem {
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), Errno> {
        self.record(Call::Mount {
            source: source.to_string(),
            target: target.to_path_buf(),
            fstype: fstype.to_string(),
            flags,
            data: data.map(str::to_string),
        });
        match self.mount_errors.iter().find(|(t, _)| t == target) {
            Some((_, e)) => Err(*e),
            None => Ok(()),
        }
    }

    fn mkdir(&self, path: &Path, mode: u32) -> Result<(), Errno> {
        self.record(Call::Mkdir {
            path: path.to_path_buf(),
            mode,
        });
        Ok(())
    }

    fn symlink(&self, target: &Path, link: &Path) -> Result<(), Errno> {
        self.record(Call::Symlink {
            target: target.to_path_buf(),
            link: link.to_path_buf(),
        });
        Ok(())
    }

    fn attach_console(&self, path: &Path) -> Result<(), Errno> {
        self.record(Call::AttachConsole(path.to_path_buf()));
        self.console_error.map_or(Ok(()), Err)
    }

    fn fill_std_fds(&self, path: &Path) -> Result<(), Errno> {
        self.record(Call::FillStdFds(path.to_path_buf()));
        Ok(())
    }

    fn sethostname(&self, name: &str) -> Result<(), Errno> {
        self.record(Call::Sethostname(name.to_string()));
        Ok(())
    }

    fn kernel_release(&self) -> Result<String, Errno> {
        Ok(self.release.clone())
    }

    fn load_module(&self, path: &Path, params: &str) -> Result<(), Errno> {
        let file = path.file_name().map(|n| n.to_string_lossy().into_owned());
        if let Some((_, delay)) = self
            .module_delays
            .iter()
            .find(|(m, _)| Some(m) == file.as_ref())
        {
            std::thread::sleep(*delay);
        }
        self.record(Call::LoadModule {
            path: path.to_path_buf(),
            params: params.to_string(),
        });
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match self.module_errors.iter().find(|(m, _)| *m == name) {
            Some((_, e)) => Err(*e),
            None => Ok(()),
        }
    }

    fn sync(&self) {
        self.record(Call::Sync);
    }

    fn reboot(&self, mode: RebootMode) -> Result<(), Errno> {
        self.record(Call::Reboot(mode));
        Ok(())
    }

    fn pid(&self) -> i32 {
        self.pid
    }

    fn reap(&self, pid: i32) -> Result<bool, Errno> {
        self.record(Call::Reap(pid));
        if self.zombies.contains(&pid) {
            Ok(true)
        } else {
            Err(Errno::ECHILD)
        }
    }

    fn link_up(&self, ifindex: u32) -> Result<(), Errno> {
        self.record(Call::LinkUp(ifindex));
        Ok(())
    }

    fn addr_add(&self, ifindex: u32, addr: Ipv4Addr, prefix_len: u8) -> Result<(), Errno> {
        self.record(Call::AddrAdd {
            ifindex,
            addr,
            prefix_len,
        });
        Ok(())
    }

    fn addr_del(&self, ifindex: u32, addr: Ipv4Addr, prefix_len: u8) -> Result<(), Errno> {
        self.record(Call::AddrDel {
            ifindex,
            addr,
            prefix_len,
        });
        Ok(())
    }

    fn default_route_add(&self, ifindex: u32, gateway: Ipv4Addr) -> Result<(), Errno> {
        self.record(Call::DefaultRouteAdd { ifindex, gateway });
        Ok(())
    }
}
