//! `decom.firmware_secure`: the inventory's firmware components planned against the desired
//! state ([`crate::firmware::plan`]), each update done by its method, the versions read back,
//! the UEFI settings reported (and written). "Secure": a component that is not (in a dry
//! run: would not be) at its required version fails the task, with the whole result as
//! details. Nothing is changed before [`Authority::decide`] allowed
//! [`Action::FirmwareUpdate`]; a dry run changes nothing and asks nothing.

use super::HardwareReady;
use super::bmc::Bmc;
use crate::authority::{Action, Authority};
use crate::firmware::plan::{self, Decision, Step};
use crate::firmware::{Applied, UpdateError, capsule, nvme, package, payload, settings};
use crate::image::FetchOptions;
use crate::tasks::{Task, TaskContext, TaskFailure};
use molar_protocol::codes;
use molar_protocol::firmware::{
    Activation, ComponentAction, ComponentSpec, FirmwareParams, FirmwareResult, UpdateMethod,
    Version,
};
use molar_protocol::inventory::Inventory;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Code of a task that left (or would leave) a component off its required version.
pub const FIRMWARE_NOT_SECURE: &str = "firmware_not_secure";

pub struct FirmwareSecure {
    pub(super) root: PathBuf,
    pub(super) authority: Authority,
    pub(super) dev: Bmc,
    pub(super) ready: HardwareReady,
    pub(super) fetch: FetchOptions,
    /// Loads efivarfs and mounts it when the ramdisk has not (run_image shares it).
    pub(super) boot: Arc<dyn crate::boot::sys::BootSystem>,
    /// One run at a time: two would flash the same controller.
    pub(super) running: Arc<tokio::sync::Mutex<()>>,
}

fn internal(e: impl std::fmt::Display) -> TaskFailure {
    TaskFailure::new(codes::INTERNAL, e.to_string())
}

impl FirmwareSecure {
    /// Mounts efivarfs in the ramdisk when its `efivars` directory is empty (the ramdisk
    /// mounts it only when something needs it), so OsIndicationsSupported, the settings and
    /// OsIndications are there. A failure is logged: the report then says what is missing.
    /// Never under another root (a test's fixture tree must not get the machine's variables)
    /// nor on a host, whose own efivarfs is the operator's.
    async fn efivars(&self) {
        if self.root != Path::new("/") || self.authority != Authority::Ramdisk {
            return;
        }
        let (root, boot) = (self.root.clone(), self.boot.clone());
        let _ = tokio::task::spawn_blocking(move || {
            let dir = settings::efivars(&root);
            let empty = std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_none());
            if !empty {
                return;
            }
            for problem in boot.load_modules(&["efivarfs"]) {
                tracing::warn!("efivarfs module: {problem}");
            }
            match boot.mount_efivarfs(&dir) {
                Ok(()) => tracing::info!(path = %dir.display(), "efivarfs mounted"),
                Err(e) => tracing::warn!("efivarfs not mounted: {e}"),
            }
        })
        .await;
    }

    async fn inventory(&self) -> Result<Inventory, TaskFailure> {
        let (root, dev) = (self.root.clone(), self.dev.clone());
        tokio::task::spawn_blocking(move || super::inventory::collect(&root, &dev))
            .await
            .map_err(internal)
    }
}

/// The result as the task's outcome.
pub fn firmware_outcome(result: &FirmwareResult) -> Result<Value, TaskFailure> {
    let value = serde_json::to_value(result).map_err(internal)?;
    if result.failures.is_empty() {
        Ok(value)
    } else {
        let msg = format!(
            "{} component(s) not at the required version: {}",
            result.failures.len(),
            result.failures.join("; ")
        );
        Err(TaskFailure::new(FIRMWARE_NOT_SECURE, msg).with_details(value))
    }
}

/// The failure lines and reboot flags of a finished list of outcomes.
pub fn summarise(result: &mut FirmwareResult) {
    result.failures = result
        .components
        .iter()
        .filter(|c| !c.action.is_secure())
        .map(|c| {
            format!(
                "components[{}] {}: {}{}",
                c.index,
                c.name.as_deref().unwrap_or("-"),
                c.action.as_str(),
                c.message
                    .as_ref()
                    .map(|m| format!(" ({m})"))
                    .unwrap_or_default()
            )
        })
        .collect();
    result.reboot_required = result.components.iter().any(|c| c.reboot);
    result.power_cycle_required = result.components.iter().any(|c| c.power_cycle);
}

/// A directory only the agent can enter (mode 0700), removed with everything in it on drop.
struct PrivateDir(PathBuf);

impl PrivateDir {
    fn new(task_id: &str, index: usize) -> Result<PrivateDir, UpdateError> {
        use std::os::unix::fs::DirBuilderExt;
        let safe: String = task_id
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .take(64)
            .collect();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "molar-firmware-{safe}-{index}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| {
                UpdateError::new("write_failed", format!("creating {}: {e}", path.display()))
            })?;
        Ok(PrivateDir(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One update, on the blocking pool: package fetched and verified into a private directory,
/// then the method.
fn apply(
    root: &Path,
    authority: &Authority,
    step: &Step,
    spec: &ComponentSpec,
    fetch: &FetchOptions,
    cancel: &CancellationToken,
    task_id: &str,
) -> Result<Applied, UpdateError> {
    let (Some(c), Some(pkg), Some(method)) = (&step.component, &spec.package, spec.method) else {
        return Err(UpdateError::new(
            codes::INTERNAL,
            "update without a package",
        ));
    };
    let dir = PrivateDir::new(task_id, step.index)?;
    let file = dir.path().join("package");
    let size = package::fetch_verified(pkg, fetch, &file, cancel)?;
    tracing::info!(task_id, component = %c.name, url = %pkg.shown_url(), size, "package verified");
    match method {
        UpdateMethod::Nvme => {
            let image = std::fs::read(&file).map_err(|e| {
                UpdateError::new("write_failed", format!("reading the package: {e}"))
            })?;
            nvme::update(
                root,
                &c.name,
                &image,
                spec.nvme.unwrap_or_default(),
                &spec.version,
            )
        }
        UpdateMethod::Payload => {
            let p = spec
                .payload
                .as_ref()
                .ok_or_else(|| UpdateError::new(codes::INTERNAL, "payload without settings"))?;
            let work = dir.path().join("root");
            std::fs::create_dir(&work)
                .map_err(|e| UpdateError::new("write_failed", format!("private directory: {e}")))?;
            payload::unpack(&file, &work)?;
            let name = c.name.clone();
            let f = payload::run(
                &work,
                &p.command,
                &p.args,
                Duration::from_secs(p.timeout_s),
                cancel,
                |stream, line| match stream {
                    payload::Stream::Stdout => {
                        tracing::info!(task_id, component = %name, stream = "stdout", "{line}")
                    }
                    payload::Stream::Stderr => {
                        tracing::warn!(task_id, component = %name, stream = "stderr", "{line}")
                    }
                },
            )?;
            tracing::info!(task_id, component = %c.name, lines = f.lines,
                secs = f.elapsed.as_secs_f64(), "payload tool exited 0");
            Ok(Applied {
                reboot: p.activation == Activation::Reboot,
                power_cycle: p.activation == Activation::PowerCycle,
                ..Applied::default()
            })
        }
        UpdateMethod::UefiCapsule => {
            capsule::stage(root, authority, c, &file, &capsule_file_name(&c.name))
        }
    }
}

/// The capsule's name on the ESP: the component's name in letters, digits, `-` and `_`.
fn capsule_file_name(component: &str) -> String {
    let safe: String = component
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    format!("molar-{safe}.cap")
}

/// The version of the component named `name` of `kind` in a fresh inventory.
fn reread(inv: &Inventory, step: &Step) -> Option<String> {
    let c = step.component.as_ref()?;
    inv.firmware
        .iter()
        .find(|f| f.kind == c.kind && f.name == c.name)
        .map(|f| f.version.trim().to_owned())
}

impl Task for FirmwareSecure {
    type Params = FirmwareParams;

    async fn run(&self, params: FirmwareParams, ctx: TaskContext) -> Result<Value, TaskFailure> {
        params
            .validate()
            .map_err(|e| TaskFailure::new(codes::INVALID_PARAMS, e.to_string()))?;
        let _one = self.running.lock().await;
        ctx.set_message("waiting for hardware");
        self.ready
            .wait()
            .await
            .map_err(|e| TaskFailure::new(&e.code, e.msg))?;
        self.efivars().await;
        ctx.set_message("collecting the firmware inventory");
        let inv = self.inventory().await?;
        let steps = plan::plan(&params, &inv.firmware);
        let updates = steps
            .iter()
            .filter(|s| s.decision == Decision::Update)
            .count();
        let writes = params.settings.as_ref().map_or(0, |s| s.write.len());
        if !params.dry_run && updates + writes > 0 {
            self.authority
                .decide(&Action::FirmwareUpdate)
                .map_err(|e| TaskFailure::new(codes::REFUSED, e.to_string()))?;
        }
        ctx.set_progress(5.0, None);
        let mut result = FirmwareResult {
            dry_run: params.dry_run,
            ..FirmwareResult::default()
        };
        let mut done = 0usize;
        for step in &steps {
            let spec = &params.components[step.index];
            let mut out = plan::outcome(step, spec, params.dry_run);
            if step.decision == Decision::Update
                && params.dry_run
                && spec.method == Some(UpdateMethod::UefiCapsule)
            {
                let (root, authority) = (self.root.clone(), self.authority.clone());
                let (deliverable, plan) =
                    tokio::task::spawn_blocking(move || capsule::plan_message(&root, &authority))
                        .await
                        .map_err(internal)?;
                // "Secure": a capsule that could not be delivered would leave it off its version.
                if !deliverable {
                    out.action = ComponentAction::Failed;
                }
                out.message = Some(plan);
            }
            if step.decision == Decision::Update && !params.dry_run {
                if ctx.is_cancelled() {
                    return Err(TaskFailure::new(codes::CANCELLED, "cancelled")
                        .with_details(serde_json::to_value(&result).unwrap_or(Value::Null)));
                }
                let name = out.name.clone().unwrap_or_default();
                ctx.set_message(format!("updating {name} to {}", spec.version));
                let (root, authority, step2, spec2, fetch) = (
                    self.root.clone(),
                    self.authority.clone(),
                    step.clone(),
                    spec.clone(),
                    self.fetch.clone(),
                );
                let (cancel, id) = (ctx.cancel_token().clone(), ctx.task_id().to_owned());
                let applied = tokio::task::spawn_blocking(move || {
                    apply(&root, &authority, &step2, &spec2, &fetch, &cancel, &id)
                })
                .await
                .map_err(internal)?;
                match applied {
                    Ok(a) => {
                        out.reboot = a.reboot;
                        out.power_cycle = a.power_cycle;
                        out.message = a.message;
                        out.after = match a.after {
                            Some(v) => Some(v),
                            None => reread(&self.inventory().await?, step),
                        };
                        let at = out
                            .after
                            .as_deref()
                            .is_some_and(|v| Version::parse(v) == Version::parse(&spec.version));
                        // An update that runs at once must show the new version now.
                        if !at && !out.reboot && !out.power_cycle {
                            out.action = ComponentAction::Failed;
                            out.message = Some(format!(
                                "after the update {name} runs {}, expected {}",
                                out.after.as_deref().unwrap_or("an unreadable version"),
                                spec.version
                            ));
                        }
                    }
                    Err(e) => {
                        tracing::warn!(task_id = ctx.task_id(), component = %name, code = e.code, "update failed: {e}");
                        out.action = ComponentAction::Failed;
                        out.message = Some(format!("{}: {}", e.code, e.msg));
                    }
                }
                done += 1;
                ctx.set_progress(5.0 + 85.0 * done as f64 / updates.max(1) as f64, None);
            }
            result.components.push(out);
        }
        ctx.set_message("reading the UEFI settings");
        let root = self.root.clone();
        let writes_list = match (&params.settings, params.dry_run) {
            (Some(s), false) => s.write.clone(),
            _ => Vec::new(),
        };
        let (report, write_errors) = tokio::task::spawn_blocking(move || {
            let mut errors = Vec::new();
            let mut written = Vec::new();
            for w in &writes_list {
                match settings::write(&root, w) {
                    Ok(n) => written.push(n),
                    Err(e) => errors.push(e.msg),
                }
            }
            let mut r = settings::report(&root);
            r.written = written;
            (r, errors)
        })
        .await
        .map_err(internal)?;
        result.settings = Some(report);
        summarise(&mut result);
        result
            .failures
            .extend(write_errors.into_iter().map(|e| format!("settings: {e}")));
        ctx.set_progress(100.0, None);
        firmware_outcome(&result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use molar_protocol::firmware::ComponentOutcome;
    use molar_protocol::inventory::FirmwareKind;

    fn line(action: ComponentAction, reboot: bool) -> ComponentOutcome {
        ComponentOutcome {
            index: 0,
            kind: FirmwareKind::Nvme,
            name: Some("nvme0".into()),
            required: "1.1".into(),
            before: Some("1.0".into()),
            after: None,
            action,
            method: Some(UpdateMethod::Nvme),
            reboot,
            power_cycle: false,
            message: Some("why".into()),
        }
    }

    #[test]
    fn any_component_off_its_version_fails_the_task_with_the_result() {
        let mut r = FirmwareResult {
            components: vec![
                line(ComponentAction::Updated, true),
                line(ComponentAction::SkippedCurrent, false),
            ],
            ..FirmwareResult::default()
        };
        summarise(&mut r);
        assert!(r.reboot_required && !r.power_cycle_required);
        assert!(firmware_outcome(&r).is_ok());
        r.components
            .push(line(ComponentAction::DowngradeRefused, false));
        summarise(&mut r);
        let f = firmware_outcome(&r).unwrap_err();
        assert_eq!(f.code, FIRMWARE_NOT_SECURE);
        assert_eq!(
            f.msg,
            "1 component(s) not at the required version: components[0] nvme0: downgrade_refused (why)"
        );
        assert_eq!(
            f.details.unwrap()["components"][2]["action"],
            "downgrade_refused"
        );
    }
}
