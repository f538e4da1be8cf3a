//! `molar-agent` as PID 1 of the ramdisk (`/init`, or `molar-agent init`): mount the kernel
//! filesystems, attach the console, load modules for the hardware present, set the hostname,
//! configure the network, read the settings, then run the agent session the caller passes in,
//! forever. PID 1 must never exit (the kernel panics), so every step logs and carries on or
//! retries, panics of the session are caught, orphaned zombies are reaped, and the only way
//! out is [`reboot`] / [`poweroff`] (sync, then reboot(2)). Ramdisk-only code lives here and
//! nowhere else; all side effects go through [`sys::System`].

pub mod cmdline;
pub mod modules;
pub mod net;
mod netlink;
pub mod sys;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Display;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use molar_protocol::catalogue::{Method, Poweroff, Reboot};
use nix::errno::Errno;
use nix::mount::MsFlags;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::cmdline::Settings;
use self::modules::{ModuleReport, ModulesError};
use self::net::NetState;
use self::sys::{RebootMode, System};

/// How often missing or malformed settings are read again.
const SETTINGS_RETRY: Duration = Duration::from_secs(5);
/// How often /proc is swept for orphaned zombies, and how long a zombie is left for its
/// parent's own wait() before PID 1 reaps it.
const REAP_INTERVAL: Duration = Duration::from_secs(2);
const REAP_GRACE: Duration = Duration::from_secs(5);
/// Session restart backoff: from 1 s, doubling, at most 60 s; back to 1 s after a session
/// that ran for at least a minute.
const SESSION_BACKOFF_MAX: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum RamdiskError {
    #[error("creating {path}: {source}")]
    Mkdir {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("mounting {fstype} on {target}: {source}")]
    Mount {
        fstype: String,
        target: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("attaching the console {path}: {source}")]
    Console {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("setting the hostname to {name}: {source}")]
    Hostname {
        name: String,
        #[source]
        source: Errno,
    },
    #[error("{action} refused: the agent is not pid 1 of the ramdisk (pid {pid})")]
    NotInit { action: &'static str, pid: i32 },
    #[error("{action} through reboot(2): {source}")]
    Reboot {
        action: &'static str,
        #[source]
        source: Errno,
    },
    #[error(transparent)]
    Modules(#[from] ModulesError),
}

impl RamdiskError {
    pub fn code(&self) -> &'static str {
        match self {
            RamdiskError::Mkdir { .. } => "mkdir_failed",
            RamdiskError::Mount { .. } => "mount_failed",
            RamdiskError::Console { .. } => "console_failed",
            RamdiskError::Hostname { .. } => "hostname_failed",
            RamdiskError::NotInit { .. } => "not_ramdisk_init",
            RamdiskError::Reboot { .. } => "reboot_failed",
            RamdiskError::Modules(e) => e.code(),
        }
    }
}

/// One kernel filesystem PID 1 mounts, relative to the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub source: &'static str,
    pub target: &'static str,
    pub fstype: &'static str,
    pub flags: MsFlags,
    pub data: Option<&'static str>,
}

/// The mounts, in order (/dev before /dev/pts). Nothing in them needs set-uid or device nodes
/// except /dev itself; only /dev, /run and /tmp may hold executables.
pub fn mount_table() -> Vec<MountSpec> {
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    vec![
        MountSpec {
            source: "proc",
            target: "proc",
            fstype: "proc",
            flags: nosuid_nodev_noexec,
            data: None,
        },
        MountSpec {
            source: "sysfs",
            target: "sys",
            fstype: "sysfs",
            flags: nosuid_nodev_noexec,
            data: None,
        },
        MountSpec {
            source: "devtmpfs",
            target: "dev",
            fstype: "devtmpfs",
            flags: MsFlags::MS_NOSUID,
            data: Some("mode=0755"),
        },
        MountSpec {
            source: "devpts",
            target: "dev/pts",
            fstype: "devpts",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            data: Some("mode=0620,ptmxmode=0666"),
        },
        MountSpec {
            source: "tmpfs",
            target: "run",
            fstype: "tmpfs",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            data: Some("mode=0755"),
        },
        MountSpec {
            source: "tmpfs",
            target: "tmp",
            fstype: "tmpfs",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            data: Some("mode=1777"),
        },
    ]
}

/// Mounts [`mount_table`] under `root`, creating the mount points. Returns every failure;
/// one failed mount does not stop the others (an already mounted filesystem is not a failure).
pub fn mount_filesystems(sys: &dyn System, root: &Path) -> Vec<RamdiskError> {
    let mut errors = Vec::new();
    for m in mount_table() {
        let target = root.join(m.target);
        match sys.mkdir(&target, 0o755) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(source) => errors.push(RamdiskError::Mkdir {
                path: target.clone(),
                source,
            }),
        }
        match sys.mount(m.source, &target, m.fstype, m.flags, m.data) {
            Ok(()) | Err(Errno::EBUSY) => {}
            Err(source) => errors.push(RamdiskError::Mount {
                fstype: m.fstype.to_string(),
                target,
                source,
            }),
        }
    }
    // The /dev/fd family that shells and some tools expect; devtmpfs does not make them.
    for (target, link) in [
        ("/proc/self/fd", "dev/fd"),
        ("/proc/self/fd/0", "dev/stdin"),
        ("/proc/self/fd/1", "dev/stdout"),
        ("/proc/self/fd/2", "dev/stderr"),
    ] {
        let _ = sys.symlink(Path::new(target), &root.join(link));
    }
    errors
}

/// Makes `ROOT/dev/console` stdin, stdout and stderr.
pub fn attach_console(sys: &dyn System, root: &Path) -> Result<(), RamdiskError> {
    let path = root.join("dev/console");
    sys.attach_console(&path)
        .map_err(|source| RamdiskError::Console { path, source })
}

/// True when this process was started as the ramdisk's `/init`. Being PID 1 alone is not
/// enough: `molar-agent run` as PID 1 of a container must stay an ordinary agent, not mount,
/// load modules or configure the host's network. (`init_main` still refuses unless PID 1.)
pub fn is_init_invocation(argv0: &std::ffi::OsStr) -> bool {
    Path::new(argv0) == Path::new("/init")
}

/// Whether the agent may do this is not decided here but by its authority
/// ([`crate::authority`]), from how it was started: a host agent given `--allow-host-power`
/// reboots its host although it is not PID 1.
fn shutdown(sys: &dyn System, mode: RebootMode) -> Result<(), RamdiskError> {
    let action = match mode {
        RebootMode::Restart => Reboot::NAME,
        RebootMode::PowerOff => Poweroff::NAME,
    };
    tracing::warn!(action, "syncing and calling reboot(2)");
    sys.sync();
    sys.reboot(mode)
        .map_err(|source| RamdiskError::Reboot { action, source })
}

/// Syncs and restarts the machine. Answer the controller before calling: on success this
/// does not return on a real system.
pub fn reboot(sys: &dyn System) -> Result<(), RamdiskError> {
    shutdown(sys, RebootMode::Restart)
}

/// Syncs and powers the machine off.
pub fn poweroff(sys: &dyn System) -> Result<(), RamdiskError> {
    shutdown(sys, RebootMode::PowerOff)
}

/// The zombies (state `Z`) under `ROOT/proc` whose parent is `parent`.
pub fn zombies(root: &Path, parent: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(root.join("proc")) else {
        return out;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "PID (COMM) STATE PPID ...": COMM may hold spaces and parentheses.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let (Some(state), Some(ppid)) = (fields.next(), fields.next()) else {
            continue;
        };
        if state == "Z" && ppid.parse::<i32>().ok() == Some(parent) {
            out.push(pid);
        }
    }
    out.sort_unstable();
    out
}

/// Reaps orphaned zombies. A child exits to PID 1's care either because it was ours (the
/// session's `tokio::process`/`std::process` children, which their owner waits for) or because
/// its parent died. waitpid(-1) would steal the exit status of the first kind and make the
/// owner's wait() fail with ECHILD, so only zombies left unwaited for [`REAP_GRACE`] are reaped.
#[derive(Debug, Default)]
pub struct Reaper {
    seen: BTreeMap<i32, Duration>,
}

impl Reaper {
    /// One sweep at monotonic time `now`; returns the pids reaped.
    pub fn sweep(&mut self, sys: &dyn System, root: &Path, now: Duration) -> Vec<i32> {
        let current = zombies(root, sys.pid());
        self.seen.retain(|pid, _| current.contains(pid));
        let mut reaped = Vec::new();
        for pid in current {
            let first = *self.seen.entry(pid).or_insert(now);
            if now.saturating_sub(first) >= REAP_GRACE {
                if let Ok(true) = sys.reap(pid) {
                    reaped.push(pid);
                }
                self.seen.remove(&pid);
            }
        }
        reaped
    }
}

async fn reap_forever(sys: Arc<dyn System>, root: PathBuf) {
    let start = Instant::now();
    let mut reaper = Reaper::default();
    let mut tick = tokio::time::interval(REAP_INTERVAL);
    loop {
        tick.tick().await;
        for pid in reaper.sweep(sys.as_ref(), &root, start.elapsed()) {
            tracing::debug!(pid, "reaped an orphaned zombie");
        }
    }
}

/// What the agent session is started with.
#[derive(Debug, Clone)]
pub struct Boot {
    pub settings: Settings,
    pub hostname: String,
    /// What coldplug loaded: `None` while modules are still loading. The session starts as
    /// soon as the network is up (the controller hears from the machine sooner); whatever needs
    /// the hardware waits for this.
    pub modules: watch::Receiver<Option<ModuleReport>>,
    /// The configured network; changes when the lease is renewed with new parameters or lost.
    pub network: watch::Receiver<Option<NetState>>,
    /// When PID 1 started.
    pub started: Instant,
}

/// The synchronous first step, before any runtime or log subscriber exists: mount the kernel
/// filesystems and make /dev/console stdin/stdout/stderr. When the console cannot be opened,
/// closed standard descriptors are pointed at /dev/null instead, because the kernel starts init
/// without them when the initramfs has no /dev/console, and the runtime's epoll and event
/// descriptors would otherwise become "stderr". Returns the problems for logging later.
///
/// Refused (nothing is mounted) unless this process is PID 1: `molar-agent init` typed on a
/// developer's machine must not mount over its /proc or /dev.
pub fn early_init(sys: &dyn System, root: &Path) -> Vec<RamdiskError> {
    let pid = sys.pid();
    if pid != 1 {
        return vec![RamdiskError::NotInit {
            action: "init",
            pid,
        }];
    }
    let mut problems = mount_filesystems(sys, root);
    if let Err(e) = attach_console(sys, root) {
        problems.push(e);
        let _ = sys.fill_std_fds(&root.join("dev/null"));
    }
    problems
}

/// Module coldplug running in the background; [`ModulesLoading::report`] waits for it.
#[derive(Debug)]
pub struct ModulesLoading {
    task: tokio::task::JoinHandle<Result<ModuleReport, ModulesError>>,
    started: Instant,
}

impl ModulesLoading {
    /// Waits for coldplug to finish and logs what it did. Never fails: a coldplug that could
    /// not run is logged and reported as nothing loaded.
    pub async fn report(self) -> ModuleReport {
        let report = match self.task.await {
            Ok(Ok(report)) => report,
            Ok(Err(e)) => {
                tracing::error!(error = %e, code = e.code(), "module coldplug failed");
                ModuleReport::default()
            }
            Err(e) => {
                tracing::error!(error = %e, "module coldplug panicked");
                ModuleReport::default()
            }
        };
        tracing::info!(
            elapsed_ms = self.started.elapsed().as_millis() as u64,
            loaded = report.loaded.len(),
            failed = report.failed.len(),
            unmatched_aliases = report.unmatched_aliases,
            "modules loaded"
        );
        for (module, reason) in &report.failed {
            tracing::warn!(module, reason, "module not loaded");
        }
        report
    }
}

/// Everything after [`early_init`] and before the network: starts module coldplug in the
/// background and returns once the network drivers are loaded (the rest keeps loading while
/// DHCP runs), after setting the hostname. Never fails: problems are logged and the boot
/// goes on.
pub async fn prepare(sys: Arc<dyn System>, root: &Path) -> (ModulesLoading, String) {
    let started = Instant::now();
    let early = cmdline::read_early(root);
    let mut extras: Vec<String> = modules::DEFAULT_EXTRAS
        .iter()
        .map(|m| m.to_string())
        .collect();
    // The capsule loader has no modalias; on a UEFI boot `decom.firmware_secure` may need it.
    if root.join("sys/firmware/efi").exists() {
        extras.extend(modules::UEFI_EXTRAS.iter().map(|m| m.to_string()));
    }
    extras.extend(early.modules.iter().cloned());
    let (network_ready, network_loaded) = tokio::sync::oneshot::channel();
    let task = {
        let (sys, root) = (sys.clone(), root.to_path_buf());
        tokio::task::spawn_blocking(move || {
            modules::coldplug_network_first(
                sys.as_ref(),
                &root,
                &extras,
                modules::COLDPLUG_THREADS,
                move || {
                    let _ = network_ready.send(());
                },
            )
        })
    };
    // An error means coldplug ended without reaching that point; go on regardless.
    let _ = network_loaded.await;
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "network drivers loaded"
    );

    let hostname = early
        .hostname
        .unwrap_or_else(|| net::derive_hostname(&net::list_links(root)));
    if let Err(source) = sys.sethostname(&hostname) {
        let e = RamdiskError::Hostname {
            name: hostname.clone(),
            source,
        };
        tracing::error!(error = %e, "hostname not set");
    }
    (ModulesLoading { task, started }, hostname)
}

/// Reads the settings until they are complete and well-formed, naming every problem on the
/// console (never a token's value) each time the set of problems changes, and every minute.
pub async fn wait_for_settings(root: &Path, retry: Duration) -> Settings {
    let mut last: Option<Vec<cmdline::SettingError>> = None;
    let mut last_report = Instant::now();
    loop {
        match cmdline::read_settings(root) {
            Ok(settings) => return settings,
            Err(errors) => {
                if last.as_ref() != Some(&errors)
                    || last_report.elapsed() >= Duration::from_secs(60)
                {
                    for e in &errors {
                        tracing::error!(problem = %e, "settings incomplete; retrying every {}s", retry.as_secs());
                    }
                    last = Some(errors);
                    last_report = Instant::now();
                }
            }
        }
        tokio::time::sleep(retry).await;
    }
}

pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// Runs `session` again and again: a session that returns, fails or panics is logged and
/// restarted after a backoff. Stops only after `limit` runs (tests); `None` is forever.
pub async fn supervise<F, Fut, E>(boot: Boot, mut session: F, limit: Option<usize>)
where
    F: FnMut(Boot) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    let mut backoff = Duration::from_secs(1);
    let mut runs = 0;
    loop {
        let started = Instant::now();
        match AssertUnwindSafe(session(boot.clone())).catch_unwind().await {
            Ok(Ok(())) => tracing::warn!("agent session ended; restarting"),
            Ok(Err(e)) => tracing::error!(error = %e, "agent session failed; restarting"),
            Err(panic) => {
                tracing::error!(panic = %panic_message(panic.as_ref()), "agent session panicked; restarting")
            }
        }
        runs += 1;
        if limit.is_some_and(|l| runs >= l) {
            return;
        }
        if started.elapsed() >= SESSION_BACKOFF_MAX {
            backoff = Duration::from_secs(1);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(SESSION_BACKOFF_MAX);
    }
}

/// PID 1's life after [`early_init`]: [`prepare`], network, settings, then the agent session
/// forever. `root` is `/` in the ramdisk. Returns only the refusal when this process is not
/// PID 1 (module loading, hostname and addresses are the machine's, not a developer's).
pub async fn run_init<F, Fut, E>(
    sys: Arc<dyn System>,
    root: PathBuf,
    session: F,
) -> Result<Infallible, RamdiskError>
where
    F: FnMut(Boot) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    let pid = sys.pid();
    if pid != 1 {
        return Err(RamdiskError::NotInit {
            action: "init",
            pid,
        });
    }
    let started = Instant::now();
    tracing::info!(pid = sys.pid(), "molar init starting");
    let (modules_loading, hostname) = prepare(sys.clone(), &root).await;
    let (reap_sys, reap_root) = (sys.clone(), root.clone());
    tokio::spawn(async move {
        loop {
            let run = reap_forever(reap_sys.clone(), reap_root.clone());
            if let Err(panic) = AssertUnwindSafe(run).catch_unwind().await {
                tracing::error!(panic = %panic_message(panic.as_ref()), "reaper panicked; restarting");
                tokio::time::sleep(REAP_INTERVAL).await;
            }
        }
    });

    let mut network = net::start(
        sys.clone(),
        root.clone(),
        Some(hostname.clone()),
        CancellationToken::new(),
    );
    // Only a closed channel ends this wait, and the network task runs forever.
    let _ = network.wait_for(Option::is_some).await;
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "network configured"
    );
    let (modules_done, modules) = watch::channel(None);
    tokio::spawn(async move {
        let report = modules_loading.report().await;
        let _ = modules_done.send(Some(report));
    });

    let settings = wait_for_settings(&root, SETTINGS_RETRY).await;
    tracing::info!(
        controller = %settings.controller,
        insecure = settings.insecure,
        ca_pinned = settings.ca_sha256.is_some(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "settings read; starting the agent session"
    );
    let boot = Boot {
        settings,
        hostname,
        modules,
        network,
        started,
    };
    supervise(boot, session, None).await;
    // supervise without a limit never returns; should it ever, PID 1 still must not exit.
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

/// The whole of `/init` (and `molar-agent init`), for `main` to call first thing: [`early_init`]
/// before the process opens any file or starts a runtime, then `install_logging` with the
/// `molar.log=` level (if given; logs go to stderr, now the console), then a tokio runtime
/// running [`run_init`] with `session`, forever. Should PID 1 itself panic outside the
/// session, it logs and starts over (modules load again as EEXIST, addresses are replaced),
/// because a returning init panics the kernel. Returns only the refusal when this process is
/// not PID 1, having done nothing.
pub fn init_main<L, F, Fut, E>(install_logging: L, mut session: F) -> RamdiskError
where
    L: FnOnce(Option<&str>),
    F: FnMut(Boot) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    let sys: Arc<dyn System> = Arc::new(sys::LinuxSystem);
    let root = PathBuf::from("/");
    let mut problems = early_init(sys.as_ref(), &root);
    if let Some(pos) = problems
        .iter()
        .position(|p| matches!(p, RamdiskError::NotInit { .. }))
    {
        return problems.swap_remove(pos);
    }
    install_logging(cmdline::read_early(&root).log.as_deref());
    for p in &problems {
        tracing::error!(error = %p, code = p.code(), "early init problem");
    }
    loop {
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => {
                tracing::error!(error = %e, "starting the async runtime failed; retrying");
                std::thread::sleep(Duration::from_secs(5));
                continue;
            }
        };
        let run = std::panic::catch_unwind(AssertUnwindSafe(|| {
            runtime.block_on(run_init(sys.clone(), root.clone(), &mut session))
        }));
        match run {
            Ok(Ok(never)) => match never {},
            Ok(Err(refused)) => return refused,
            Err(panic) => {
                tracing::error!(panic = %panic_message(panic.as_ref()), "pid 1 panicked; starting over");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ramdisk::sys::{Call, RecordingSystem};
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn mounts_with_exact_flags() {
        let sys = RecordingSystem::default();
        let root = Path::new("/R");
        assert!(mount_filesystems(&sys, root).is_empty());
        let mounts: Vec<_> = sys
            .calls()
            .into_iter()
            .filter(|c| matches!(c, Call::Mount { .. }))
            .collect();
        let m = |source: &str, target: &str, fstype: &str, flags: MsFlags, data: Option<&str>| {
            Call::Mount {
                source: source.into(),
                target: PathBuf::from(target),
                fstype: fstype.into(),
                flags,
                data: data.map(Into::into),
            }
        };
        let nne = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        assert_eq!(
            mounts,
            vec![
                m("proc", "/R/proc", "proc", nne, None),
                m("sysfs", "/R/sys", "sysfs", nne, None),
                m(
                    "devtmpfs",
                    "/R/dev",
                    "devtmpfs",
                    MsFlags::MS_NOSUID,
                    Some("mode=0755")
                ),
                m(
                    "devpts",
                    "/R/dev/pts",
                    "devpts",
                    MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
                    Some("mode=0620,ptmxmode=0666")
                ),
                m(
                    "tmpfs",
                    "/R/run",
                    "tmpfs",
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                    Some("mode=0755")
                ),
                m(
                    "tmpfs",
                    "/R/tmp",
                    "tmpfs",
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                    Some("mode=1777")
                ),
            ]
        );
        // Each mount point is created right before its mount.
        let calls = sys.calls();
        assert_eq!(
            calls[0],
            Call::Mkdir {
                path: "/R/proc".into(),
                mode: 0o755
            }
        );
        assert!(matches!(&calls[1], Call::Mount { fstype, .. } if fstype == "proc"));
        assert!(calls.contains(&Call::Symlink {
            target: "/proc/self/fd".into(),
            link: "/R/dev/fd".into()
        }));
    }

    #[test]
    fn failed_and_busy_mounts() {
        let sys = RecordingSystem {
            mount_errors: vec![
                ("/R/sys".into(), Errno::ENODEV),
                ("/R/dev".into(), Errno::EBUSY),
            ],
            ..Default::default()
        };
        let errors = mount_filesystems(&sys, Path::new("/R"));
        assert_eq!(errors.len(), 1, "EBUSY means already mounted");
        assert_eq!(
            errors[0].to_string(),
            "mounting sysfs on /R/sys: ENODEV: No such device"
        );
        assert_eq!(errors[0].code(), "mount_failed");
        // The rest was still mounted.
        assert_eq!(
            sys.calls()
                .iter()
                .filter(|c| matches!(c, Call::Mount { .. }))
                .count(),
            6
        );
    }

    /// No pid check here: the authority decided before (a host with --allow-host-power may).
    /// The real system is never called from a test: the tests run as root.
    #[test]
    fn reboot_and_poweroff_sync_first() {
        let sys = RecordingSystem::default();
        reboot(&sys).unwrap();
        poweroff(&sys).unwrap();
        assert_eq!(
            sys.calls(),
            vec![
                Call::Sync,
                Call::Reboot(RebootMode::Restart),
                Call::Sync,
                Call::Reboot(RebootMode::PowerOff)
            ]
        );
        let host = RecordingSystem {
            pid: 4242,
            ..Default::default()
        };
        poweroff(&host).unwrap();
        assert_eq!(
            host.calls(),
            vec![Call::Sync, Call::Reboot(RebootMode::PowerOff)]
        );
    }

    #[tokio::test]
    async fn init_refuses_outside_pid_1() {
        let sys = Arc::new(RecordingSystem {
            pid: 777,
            ..Default::default()
        });
        let problems = early_init(sys.as_ref(), Path::new("/"));
        assert_eq!(problems.len(), 1);
        assert_eq!(
            problems[0].to_string(),
            "init refused: the agent is not pid 1 of the ramdisk (pid 777)"
        );
        let session = |_: Boot| async { Ok::<(), String>(()) };
        let refused = run_init(sys.clone(), "/".into(), session).await;
        assert!(matches!(
            refused,
            Err(RamdiskError::NotInit { pid: 777, .. })
        ));
        assert!(
            sys.calls().is_empty(),
            "nothing mounted, loaded or configured"
        );
    }

    #[test]
    fn init_main_does_nothing_outside_pid_1() {
        assert_ne!(std::process::id(), 1, "tests do not run as init");
        let refused = init_main(
            |_| panic!("no logging is installed outside pid 1"),
            |_: Boot| async { Ok::<(), String>(()) },
        );
        assert_eq!(refused.code(), "not_ramdisk_init");
    }

    #[test]
    fn init_invocation() {
        assert!(is_init_invocation("/init".as_ref()));
        assert!(
            !is_init_invocation("molar-agent".as_ref()),
            "PID 1 of a container is not init"
        );
        assert!(!is_init_invocation("/usr/bin/molar-agent".as_ref()));
    }

    fn proc_entry(root: &Path, pid: i32, stat: &str) {
        let d = root.join("proc").join(pid.to_string());
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("stat"), stat).unwrap();
    }

    #[test]
    fn reaps_only_zombies_left_unwaited() {
        let root = tempfile::tempdir().unwrap();
        proc_entry(root.path(), 1, "1 (molar-agent) S 0 1 1 0");
        proc_entry(root.path(), 50, "50 (sh) Z 1 50 50 0");
        proc_entry(root.path(), 51, "51 (weird) name)) Z 1 51 51 0");
        proc_entry(root.path(), 52, "52 (sleep) S 1 52 52 0");
        proc_entry(root.path(), 53, "53 (child) Z 52 53 53 0");
        assert_eq!(zombies(root.path(), 1), vec![50, 51]);
        let sys = RecordingSystem {
            zombies: vec![50, 51],
            ..Default::default()
        };
        let mut reaper = Reaper::default();
        assert!(
            reaper
                .sweep(&sys, root.path(), Duration::from_secs(0))
                .is_empty()
        );
        // 51's owner waits for it meanwhile.
        std::fs::remove_dir_all(root.path().join("proc/51")).unwrap();
        assert!(
            reaper
                .sweep(&sys, root.path(), Duration::from_secs(2))
                .is_empty()
        );
        assert_eq!(
            reaper.sweep(&sys, root.path(), Duration::from_secs(5)),
            vec![50]
        );
        assert_eq!(sys.calls(), vec![Call::Reap(50)]);
    }

    #[test]
    fn real_zombie_is_found_in_proc_and_reaped() {
        // A child of this test process that exits and is not waited for is a zombie whose
        // parent is us, exactly like an orphan under PID 1.
        let child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        let me = std::process::id() as i32;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !zombies(Path::new("/"), me).contains(&pid) {
            assert!(
                std::time::Instant::now() < deadline,
                "child {pid} never became a zombie"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let sys = sys::LinuxSystem;
        assert_eq!(sys.reap(pid), Ok(true));
        assert!(!zombies(Path::new("/"), me).contains(&pid));
        assert_eq!(sys.reap(pid), Err(Errno::ECHILD));
        drop(child);
    }

    #[tokio::test(start_paused = true)]
    async fn settings_are_retried_until_valid() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("proc")).unwrap();
        std::fs::write(
            root.path().join("proc/cmdline"),
            "console=ttyS0 molar.controller=bad\n",
        )
        .unwrap();
        let path = root.path().to_path_buf();
        let waiter =
            tokio::spawn(async move { wait_for_settings(&path, Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_secs(12)).await;
        assert!(!waiter.is_finished());
        std::fs::write(
            root.path().join("proc/cmdline"),
            "molar.controller=c:9 molar.token=t\n",
        )
        .unwrap();
        let settings = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(settings.controller.port, 9);
    }

    fn boot() -> Boot {
        let settings = cmdline::parse_settings(
            &cmdline::molar_params(cmdline::split_cmdline("molar.controller=c:1 molar.token=t")),
            &Default::default(),
        )
        .unwrap();
        Boot {
            settings,
            hostname: "h".into(),
            modules: watch::channel(Some(ModuleReport::default())).1,
            network: watch::channel(None).1,
            started: Instant::now(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn session_panics_and_errors_are_survived_with_backoff() {
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        let t0 = Instant::now();
        supervise(
            boot(),
            move |b: Boot| {
                let n = r.fetch_add(1, Ordering::SeqCst);
                async move {
                    assert_eq!(b.settings.token.expose(), "t");
                    match n {
                        0 => panic!("session bug"),
                        1 => Err("connection refused".to_string()),
                        _ => Ok(()),
                    }
                }
            },
            Some(4),
        )
        .await;
        assert_eq!(runs.load(Ordering::SeqCst), 4);
        // Backoff 1 + 2 + 4 s between the four runs.
        assert_eq!(t0.elapsed().as_secs(), 7);
    }

    #[tokio::test]
    async fn early_init_and_prepare_mount_load_and_name_the_host() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("proc")).unwrap();
        std::fs::write(
            root.path().join("proc/cmdline"),
            "molar.modules=extra_one\n",
        )
        .unwrap();
        let m = root.path().join("lib/modules/6.1.0-test");
        std::fs::create_dir_all(&m).unwrap();
        std::fs::write(
            m.join("modules.dep"),
            "kernel/ipmi_msghandler.ko:\nkernel/ipmi_devintf.ko: kernel/ipmi_msghandler.ko\n\
             kernel/ipmi_si.ko: kernel/ipmi_msghandler.ko\nkernel/extra_one.ko:\n",
        )
        .unwrap();
        let d = root.path().join("sys/class/net/eth0");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("type"), "1\n").unwrap();
        std::fs::write(d.join("ifindex"), "2\n").unwrap();
        std::fs::write(d.join("address"), "52:54:00:12:34:56\n").unwrap();
        let sys = Arc::new(RecordingSystem {
            console_error: Some(Errno::ENOENT),
            ..Default::default()
        });
        let problems = early_init(sys.as_ref(), root.path());
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].code(), "console_failed");
        let (loading, hostname) = prepare(sys.clone(), root.path()).await;
        let report = loading.report().await;
        assert_eq!(hostname, "molar-525400123456");
        assert_eq!(
            report.loaded,
            vec!["ipmi_msghandler", "ipmi_devintf", "ipmi_si", "extra_one"]
        );
        let calls = sys.calls();
        let console = calls
            .iter()
            .position(|c| *c == Call::AttachConsole(root.path().join("dev/console")));
        let fallback = calls
            .iter()
            .position(|c| *c == Call::FillStdFds(root.path().join("dev/null")));
        assert!(console.is_some());
        assert_eq!(
            fallback,
            console.map(|c| c + 1),
            "no console: /dev/null instead"
        );
        assert!(calls.contains(&Call::Sethostname("molar-525400123456".into())));
    }
}
