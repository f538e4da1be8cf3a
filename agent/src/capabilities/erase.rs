//! `decom.disk_erase`: the erase engine ([`crate::erase`]) as a task, and how an erase report
//! becomes the task's outcome.

use super::HardwareReady;
use crate::erase::{self, EraseEnv, EraseRequest};
use crate::tasks::{Task, TaskContext, TaskFailure};
use molar_protocol::codes;
use molar_protocol::erase::{DiskEraseParams, DiskEraseResult};
use serde_json::Value;

/// `decom.disk_erase`: the erase engine as a task.
pub struct DiskErase {
    pub env: EraseEnv,
    pub ready: HardwareReady,
}

/// Turns an erase report into the task's outcome: complete only when every attempted device
/// was erased (and verified); otherwise an error that still carries the whole report.
pub fn erase_outcome(report: &DiskEraseResult) -> Result<Value, TaskFailure> {
    let value = serde_json::to_value(report).map_err(|e| {
        TaskFailure::new(codes::INTERNAL, format!("encoding the erase report: {e}"))
    })?;
    if report.devices.is_empty() {
        let why: Vec<String> = report
            .skipped
            .iter()
            .map(|s| format!("{}: {}", s.device, s.reason))
            .collect();
        let msg = if why.is_empty() {
            "no device to erase".to_owned()
        } else {
            format!("no device was erased: {}", why.join("; "))
        };
        return Err(TaskFailure::new(codes::REFUSED, msg).with_details(value));
    }
    match erase::failure_message(report) {
        None => Ok(value),
        Some(msg) if report.cancelled => {
            Err(TaskFailure::new(codes::CANCELLED, msg).with_details(value))
        }
        Some(msg) => Err(TaskFailure::new("erase_failed", msg).with_details(value)),
    }
}

impl Task for DiskErase {
    type Params = DiskEraseParams;

    async fn run(&self, params: DiskEraseParams, ctx: TaskContext) -> Result<Value, TaskFailure> {
        // Every disk's driver must be loaded before "every disk" means anything.
        self.ready
            .wait()
            .await
            .map_err(|e| TaskFailure::new(&e.code, e.msg))?;
        let env = self.env.clone();
        let req = EraseRequest::from_params(&params);
        let cancel = ctx.cancel_token().clone();
        let progress_ctx = ctx.clone();
        let report = tokio::task::spawn_blocking(move || {
            erase::run(
                &req,
                &env,
                &|p| {
                    progress_ctx.set_progress(p.percent(), p.eta().map(|d| d.as_secs()));
                    progress_ctx.set_message(p.message());
                },
                &cancel,
            )
        })
        .await
        .map_err(|e| TaskFailure::new(codes::INTERNAL, format!("erase thread: {e}")))?
        .map_err(|e| TaskFailure::new(e.code(), e.to_string()))?;
        erase_outcome(&report)
    }
}
