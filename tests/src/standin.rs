//! Stand-ins for the deploy, erase and chassis methods of an agent, for tests and benchmarks
//! of the controller's workflows (the real methods are tested on loop devices and in the
//! QEMU lab): each records what it was asked, the erase waits at a gate the test opens, and
//! can be told to fail.

use crate::inproc::{Controller, TestAgent};
use molar_agent::logfwd::LogBuffer;
use molar_agent::session::Methods;
use molar_agent::tasks::{Task, TaskContext, TaskFailure};
use molar_agent::tls::Trust;
use molar_protocol::catalogue::{
    ChassisBootDevice, ChassisPower, DiskErase, FirmwareSecure, PrepareImage, Qc, RunImage,
};
use molar_protocol::{Method, Secret, codes};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;

/// What the stand-in methods were asked, in order, and the gate the erase waits at.
#[derive(Clone)]
pub struct Machine {
    pub calls: Arc<Mutex<Vec<(String, Value)>>>,
    pub erase_gate: Arc<Semaphore>,
    pub fail_erase: Arc<std::sync::atomic::AtomicBool>,
    /// A chassis method that, once asked, answers only when `held` gets a permit.
    pub hold: Arc<Mutex<Option<&'static str>>>,
    pub held: Arc<Semaphore>,
}

impl Default for Machine {
    fn default() -> Self {
        Machine {
            calls: Arc::default(),
            erase_gate: Arc::new(Semaphore::new(0)),
            fail_erase: Arc::default(),
            hold: Arc::default(),
            held: Arc::new(Semaphore::new(0)),
        }
    }
}

impl Machine {
    pub fn calls(&self, method: &str) -> Vec<Value> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(m, _)| m == method)
            .map(|(_, p)| p.clone())
            .collect()
    }
    /// Records a chassis call, then waits while that method is held.
    async fn chassis(&self, method: &'static str, p: &Value) {
        self.record(method, p);
        let held = *self.hold.lock().unwrap() == Some(method);
        if held && let Ok(permit) = self.held.acquire().await {
            permit.forget();
        }
    }

    fn record(&self, method: &str, p: &Value) {
        self.calls
            .lock()
            .unwrap()
            .push((method.to_owned(), p.clone()));
    }
}

struct Stand {
    method: &'static str,
    m: Machine,
}

impl Task for Stand {
    type Params = Value;
    async fn run(&self, p: Value, ctx: TaskContext) -> Result<Value, TaskFailure> {
        self.m.record(self.method, &p);
        if self.method == DiskErase::NAME {
            tokio::select! {
                permit = self.m.erase_gate.acquire() => permit.unwrap().forget(),
                _ = ctx.cancel_token().cancelled() => return Err(TaskFailure::cancelled()),
            }
            if self.m.fail_erase.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(TaskFailure::new(codes::IO, "disk serial D-2 vanished"));
            }
        }
        if self.method == Qc::NAME && p["spec"]["cpu"]["sockets"] == 8 {
            return Err(TaskFailure::new(
                "qc_failed",
                "cpu.sockets: expected 8, found 1",
            ));
        }
        Ok(json!({}))
    }
}

pub fn methods(root: &std::path::Path, m: &Machine) -> Methods {
    let mut methods = TestAgent::methods(root);
    for method in [
        PrepareImage::NAME,
        RunImage::NAME,
        DiskErase::NAME,
        Qc::NAME,
        FirmwareSecure::NAME,
    ] {
        methods.task(
            method,
            Stand {
                method,
                m: m.clone(),
            },
        );
    }
    let mm = m.clone();
    methods.call(ChassisPower::NAME, move |p| {
        let mm = mm.clone();
        async move {
            mm.chassis(ChassisPower::NAME, &p).await;
            Ok(json!({"action": p["action"], "status": {"power_on": true,
                "power_overload": false, "power_interlock": false, "power_fault": false,
                "power_control_fault": false, "restore_policy": "previous", "intrusion": false,
                "drive_fault": false, "cooling_fault": false}}))
        }
    });
    let mm = m.clone();
    methods.call(ChassisBootDevice::NAME, move |p| {
        let mm = mm.clone();
        async move {
            mm.chassis(ChassisBootDevice::NAME, &p).await;
            Ok(json!({"device": p["device"], "persistent": false, "efi": false}))
        }
    });
    methods
}

pub fn start_agent(
    ctl: &Controller,
    token: &Secret,
    root: tempfile::TempDir,
    m: &Machine,
) -> TestAgent {
    let cfg = TestAgent::config(
        &ctl.agent_addr(),
        Trust::CaFile(ctl.ca_pem()),
        token.clone(),
        root.path(),
    );
    let methods = methods(root.path(), m);
    TestAgent::start_with_methods(cfg, root, LogBuffer::new(100), methods)
}
