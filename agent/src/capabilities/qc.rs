//! `decom.qc`: the machine's inventory checked against a spec ([`molar_protocol::qc::check`],
//! the same function the controller runs on a stored inventory), then the burn-in when asked
//! ([`crate::burnin`]); its checks join the report's, so one failure list holds both.

use super::HardwareReady;
use super::bmc::Bmc;
use crate::authority::Authority;
use crate::burnin;
use crate::tasks::{Task, TaskContext, TaskFailure};
use molar_protocol::burnin::Burnin;
use molar_protocol::codes;
use molar_protocol::inventory::Inventory;
use molar_protocol::qc::{self, QcParams, QcReport};
use serde_json::Value;
use std::path::PathBuf;

/// Code of a task that ran every check and found at least one failing.
pub const QC_FAILED: &str = "qc_failed";

/// `decom.qc`: inventory, check, report.
pub struct Qc {
    pub(super) root: PathBuf,
    pub(super) dev: Bmc,
    pub(super) ready: HardwareReady,
    pub(super) authority: Authority,
}

/// Refuses what the task cannot honestly check: a spec that checks nothing (it would pass
/// any machine, which is never what an operator meant) and burn-in settings out of bounds.
pub fn refusal(params: &QcParams) -> Option<String> {
    if params.spec.is_empty() {
        return Some("the spec checks nothing".into());
    }
    if let Some(b) = &params.burnin
        && let Err(e) = b.validate()
    {
        return Some(e.to_string());
    }
    None
}

/// Runs the burn-in on the blocking pool and adds it to `report`. Progress maps onto
/// `from..100` percent of the task.
pub async fn run_burnin(
    root: std::path::PathBuf,
    authority: Authority,
    inv: Inventory,
    b: Burnin,
    report: &mut QcReport,
    from: f64,
    ctx: &TaskContext,
) -> Result<(), TaskFailure> {
    let cancel = ctx.cancel_token().clone();
    let pctx = ctx.clone();
    let out = tokio::task::spawn_blocking(move || {
        let last = std::sync::Mutex::new(String::new());
        let progress = |f: f64, eta: Option<u64>, what: &str| {
            pctx.set_progress(from + (100.0 - from) * f, eta);
            let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
            if *last != what {
                what.clone_into(&mut last);
                pctx.set_message(what);
            }
        };
        let env = burnin::Env {
            root: &root,
            authority: &authority,
            inv: &inv,
        };
        burnin::run(&env, &b, &cancel, &progress)
    })
    .await
    .map_err(|e| TaskFailure::new(codes::INTERNAL, format!("burn-in thread: {e}")))?;
    let (checks, numbers) = out.map_err(|_| TaskFailure::cancelled())?;
    report.add_burnin(checks, numbers);
    Ok(())
}

/// The report as the task's outcome: complete when every check passed, otherwise a failure
/// naming every failed check and carrying the whole report.
pub fn qc_outcome(report: &QcReport) -> Result<Value, TaskFailure> {
    let value = serde_json::to_value(report)
        .map_err(|e| TaskFailure::new(codes::INTERNAL, format!("encoding the qc report: {e}")))?;
    if report.passed {
        Ok(value)
    } else {
        let msg = format!(
            "{} of {} checks failed: {}",
            report.failures.len(),
            report.checks.len(),
            report.failures.join("; ")
        );
        Err(TaskFailure::new(QC_FAILED, msg).with_details(value))
    }
}

impl Task for Qc {
    type Params = QcParams;

    async fn run(&self, params: QcParams, ctx: TaskContext) -> Result<Value, TaskFailure> {
        if let Some(why) = refusal(&params) {
            return Err(TaskFailure::new(codes::REFUSED, why));
        }
        // Disks and NICs must have their drivers loaded before they can be counted.
        ctx.set_message("waiting for hardware");
        self.ready
            .wait()
            .await
            .map_err(|e| TaskFailure::new(&e.code, e.msg))?;
        ctx.set_progress(10.0, None);
        ctx.set_message("collecting the inventory");
        let (root, dev) = (self.root.clone(), self.dev.clone());
        let inv = tokio::task::spawn_blocking(move || super::inventory::collect(&root, &dev))
            .await
            .map_err(|e| TaskFailure::new(codes::INTERNAL, format!("inventory thread: {e}")))?;
        ctx.set_progress(8.0, None);
        ctx.set_message("checking the spec");
        let mut report = qc::check(&params.spec, &inv);
        if let Some(b) = params.burnin {
            let (root, authority) = (self.root.clone(), self.authority.clone());
            run_burnin(root, authority, inv, b, &mut report, 10.0, &ctx).await?;
        }
        ctx.set_progress(100.0, None);
        qc_outcome(&report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::Path;

    fn fixture_inventory() -> molar_protocol::inventory::Inventory {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inventory/qemu-q35");
        super::super::inventory::collect(&root, &Bmc::new(root.clone()))
    }

    #[test]
    fn the_fixture_machine_passes_its_template_and_fails_a_wrong_spec_naming_each_check() {
        let inv = fixture_inventory();
        let spec = qc::template(&inv);
        assert!(!spec.is_empty());
        let ok = qc_outcome(&qc::check(&spec, &inv)).unwrap();
        assert_eq!(ok["passed"], true);
        let wrong: qc::Spec = serde_json::from_value(json!({
            "cpu": {"sockets": 64}, "disks": [{"count": 99}], "bmc": {"present": true}}))
        .unwrap();
        let f = qc_outcome(&qc::check(&wrong, &inv)).unwrap_err();
        assert_eq!(f.code, QC_FAILED);
        for name in ["cpu.sockets", "disks[0]", "bmc.present"] {
            assert!(f.msg.contains(name), "{}", f.msg);
        }
        assert!(f.msg.starts_with("3 of 3 checks failed"), "{}", f.msg);
        assert_eq!(f.details.as_ref().unwrap()["passed"], false);
    }

    #[test]
    fn empty_specs_and_out_of_bounds_burnin_are_refused() {
        let p: QcParams =
            serde_json::from_value(json!({"spec": {"bmc": {"present": false}}, "burnin": {}}))
                .unwrap();
        assert_eq!(
            refusal(&p).unwrap(),
            "burnin.*: burn-in exercises nothing; leave `burnin` out"
        );
        let p: QcParams = serde_json::from_value(
            json!({"spec": {"bmc": {"present": false}}, "burnin": {"cpu": {"seconds": 0}}}),
        )
        .unwrap();
        assert!(refusal(&p).unwrap().starts_with("burnin.cpu.seconds: 0"));
        let p: QcParams = serde_json::from_value(
            json!({"spec": {"bmc": {"present": false}}, "burnin": {"cpu": {"seconds": 1}}}),
        )
        .unwrap();
        assert!(refusal(&p).is_none());
        let p: QcParams = serde_json::from_value(json!({"spec": {}})).unwrap();
        assert_eq!(refusal(&p).unwrap(), "the spec checks nothing");
        let p: QcParams =
            serde_json::from_value(json!({"spec": {"bmc": {"present": false}}})).unwrap();
        assert!(refusal(&p).is_none());
    }
}
