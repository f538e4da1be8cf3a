//! `molar call`, `molar task` and `molar tasks`: calls on an agent, tasks and following
//! their progress.

use super::output::{emit, format_time, json_for_terminal, print_json, sanitize, table};
use super::{
    Cli, EXIT_FAILED, EXIT_OTHER, EXIT_USAGE, Failure, TaskCommand, api_err, client, parse_params,
};
use crate::client::{Client, ClientError};
use crate::store::{TaskEvent, TaskPhase};
use molar_protocol::Method;
use molar_protocol::catalogue::{FirmwareSecure, Qc};
use molar_protocol::codes;
use molar_protocol::firmware::FirmwareResult;
use molar_protocol::qc::QcReport;
use serde_json::Value;
use std::time::Duration;

/// The rows of a `decom.qc` report, when `result` is one (of a task of `method`): the table
/// is the readable answer to "does this machine match its spec". Every cell is sanitized by
/// the table (the strings come from the agent).
fn qc_rows(method: &str, result: Option<&Value>) -> Option<Vec<Vec<String>>> {
    if method != Qc::NAME {
        return None;
    }
    let report: QcReport = serde_json::from_value(result?.clone()).ok()?;
    Some(
        report
            .checks
            .into_iter()
            .map(|c| {
                vec![
                    if c.pass { "ok" } else { "FAIL" }.to_owned(),
                    c.name,
                    c.expected,
                    c.actual,
                ]
            })
            .collect(),
    )
}

/// `molar qc SERVER --spec FILE`: the stored inventory checked against a spec by the
/// controller (the machine is not touched); exits 1 when a check fails.
pub(super) async fn qc_stored(
    cli: &Cli,
    server: &str,
    spec: &std::path::Path,
) -> Result<(), Failure> {
    let text = std::fs::read_to_string(spec).map_err(|e| {
        Failure::new(
            EXIT_USAGE,
            format!("--spec: reading {}: {e}", spec.display()),
        )
    })?;
    let spec: molar_protocol::qc::Spec = serde_json::from_str(&text)
        .map_err(|e| Failure::new(EXIT_USAGE, format!("--spec: {}: {e}", spec.display())))?;
    let c = client(cli)?;
    let report = c.qc_stored(server, spec).await.map_err(api_err(false))?;
    if cli.json {
        print_json(&report)?;
    } else {
        let value = serde_json::to_value(&report).unwrap_or_default();
        let rows = qc_rows(Qc::NAME, Some(&value)).unwrap_or_default();
        table(&["", "CHECK", "EXPECTED", "ACTUAL"], rows)?;
    }
    if report.passed {
        Ok(())
    } else {
        Err(Failure::new(
            EXIT_FAILED,
            "the stored inventory does not meet the spec",
        ))
    }
}

/// The rows of a `decom.firmware_secure` result: one per component, what it ran before and
/// after, what was done and whether it waits for a reboot or power cycle.
fn firmware_rows(method: &str, result: Option<&Value>) -> Option<Vec<Vec<String>>> {
    if method != FirmwareSecure::NAME {
        return None;
    }
    let r: FirmwareResult = serde_json::from_value(result?.clone()).ok()?;
    let dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    Some(
        r.components
            .into_iter()
            .map(|c| {
                let kind = serde_json::to_value(c.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                let next = match (c.power_cycle, c.reboot) {
                    (true, _) => "power cycle",
                    (false, true) => "warm reboot",
                    _ => "",
                };
                vec![
                    if c.action.is_secure() { "ok" } else { "FAIL" }.to_owned(),
                    format!("{kind} {}", dash(c.name)),
                    dash(c.before),
                    c.required,
                    dash(c.after),
                    c.action.as_str().to_owned(),
                    next.to_owned(),
                    dash(c.message),
                ]
            })
            .collect(),
    )
}

/// Prints the table of a `decom.qc` or `decom.firmware_secure` result, if it is one; true
/// when it was.
fn print_qc(method: &str, result: Option<&Value>) -> Result<bool, Failure> {
    if let Some(rows) = firmware_rows(method, result) {
        table(
            &[
                "",
                "COMPONENT",
                "BEFORE",
                "REQUIRED",
                "AFTER",
                "ACTION",
                "NEEDS",
                "NOTE",
            ],
            rows,
        )?;
        return Ok(true);
    }
    let Some(rows) = qc_rows(method, result) else {
        return Ok(false);
    };
    table(&["", "CHECK", "EXPECTED", "ACTUAL"], rows)?;
    Ok(true)
}

/// `molar call ID METHOD [PARAMS] [--timeout S]`.
pub(super) async fn call(
    cli: &Cli,
    id: &str,
    method: &str,
    params: Option<&str>,
    timeout: Option<f64>,
) -> Result<(), Failure> {
    let params = parse_params(params)?;
    let timeout = match timeout {
        Some(t) if t.is_finite() && t > 0.0 => Some(Duration::from_secs_f64(t.min(86_400.0))),
        Some(t) => {
            return Err(Failure::new(
                EXIT_USAGE,
                format!("--timeout must be a positive number of seconds, not {t}"),
            ));
        }
        None => None,
    };
    let c = client(cli)?;
    let result = c
        .call(id, method, params, timeout)
        .await
        .map_err(api_err(true))?;
    if cli.json {
        print_json(&result)?;
    } else {
        emit(&json_for_terminal(&result.to_string()))?;
    }
    Ok(())
}

/// `molar task ...`.
pub(super) async fn run(cli: &Cli, command: &TaskCommand) -> Result<(), Failure> {
    match command {
        TaskCommand::Start {
            id,
            method,
            params,
            wait,
        } => {
            let params = parse_params(params.as_deref())?;
            let c = client(cli)?;
            let started = c
                .start_task(id, method, params)
                .await
                .map_err(api_err(true))?;
            if !*wait {
                if cli.json {
                    print_json(&started)?;
                } else {
                    outln!("{}", sanitize(&started.task_id))?;
                }
                return Ok(());
            }
            follow_task(&c, &started.task_id, cli.json).await
        }
        TaskCommand::Show { task } => {
            let c = client(cli)?;
            let t = c.task(task).await.map_err(api_err(false))?;
            if cli.json {
                print_json(&t)?;
                return Ok(());
            }
            outln!("task:     {}", sanitize(&t.task_id))?;
            outln!("server:   {}", sanitize(&t.server_id))?;
            outln!("method:   {}", sanitize(&t.method))?;
            outln!("state:    {}", t.state.as_str())?;
            if let Some(p) = t.percent {
                outln!("percent:  {p:.1}")?;
            }
            if let Some(e) = t.eta {
                outln!("eta:      {e} s")?;
            }
            if let Some(m) = &t.msg {
                outln!("msg:      {}", sanitize(m))?;
            }
            if let Some(code) = &t.code {
                outln!("code:     {}", sanitize(code))?;
            }
            outln!("created:  {}", format_time(t.created_ms))?;
            if let Some(f) = t.finished_ms {
                outln!("finished: {}", format_time(f))?;
            }
            if let Some(r) = &t.result {
                outln!("result:   {}", sanitize(&r.to_string()))?;
            }
            print_qc(&t.method, t.result.as_ref())?;
            Ok(())
        }
    }
}

/// `molar tasks ID`.
pub(super) async fn list(cli: &Cli, id: &str) -> Result<(), Failure> {
    let c = client(cli)?;
    let tasks = c.server_tasks(id).await.map_err(api_err(false))?;
    if cli.json {
        print_json(&tasks)?;
    } else {
        let rows = tasks
            .into_iter()
            .map(|t| {
                vec![
                    t.task_id,
                    t.method,
                    t.state.as_str().into(),
                    t.percent.map_or("-".into(), |p| format!("{p:.0}%")),
                    format_time(t.created_ms),
                    t.msg.unwrap_or_default(),
                ]
            })
            .collect();
        table(
            &["TASK", "METHOD", "STATE", "PERCENT", "CREATED", "MSG"],
            rows,
        )?;
    }
    Ok(())
}

/// Consecutive failed attempts to follow a task's events before `--wait` gives up (about a
/// minute: long enough for a controller restart).
const FOLLOW_RETRIES: u32 = 60;

async fn follow_task(c: &Client, task_id: &str, json: bool) -> Result<(), Failure> {
    let bar = indicatif::ProgressBar::new(100);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{bar:40}] {pos:>3}% {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(task_id.to_owned());
    bar.enable_steady_tick(Duration::from_millis(200));
    let mut last: Option<TaskEvent> = None;
    // The stream replays stored events, so after a lost connection (e.g. the controller
    // restarting mid-task) following again from the start loses nothing.
    let mut failures = 0;
    'follow: loop {
        let opened = c.task_events(task_id).await;
        let mut events = match opened {
            Ok(ev) => ev,
            Err(e) if matches!(e, ClientError::Api(_)) => return Err(api_err(false)(e)),
            Err(e) => {
                failures += 1;
                if failures > FOLLOW_RETRIES {
                    return Err(api_err(false)(e));
                }
                bar.set_message(format!(
                    "{task_id} (reconnecting: {})",
                    sanitize(&e.to_string())
                ));
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(ev) = events.next().await {
            let Ok(ev) = ev else { break };
            failures = 0;
            if let Some(p) = ev.percent {
                bar.set_position(p.clamp(0.0, 100.0) as u64);
            }
            let eta = ev.eta.map(|e| format!("eta {e} s")).unwrap_or_default();
            bar.set_message(format!("{task_id} {eta}"));
            let terminal = ev.state.is_terminal();
            last = Some(ev);
            if terminal {
                break 'follow;
            }
        }
        if c.task(task_id).await.is_ok_and(|t| t.state.is_terminal()) {
            break;
        }
        failures += 1;
        if failures > FOLLOW_RETRIES {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    bar.finish_and_clear();
    let task = c.task(task_id).await.map_err(api_err(false))?;
    if json {
        print_json(&task)?;
    }
    let finished = last
        .as_ref()
        .filter(|e| e.state.is_terminal())
        .map(|e| e.at_ms)
        .or(task.finished_ms);
    let took = finished
        .map(|f| (f - task.created_ms).max(0) as f64 / 1000.0)
        .unwrap_or(0.0);
    if !json {
        // A failed check is an error of the task, and its report is still the answer.
        print_qc(&task.method, task.result.as_ref())?;
    }
    match task.state {
        TaskPhase::Complete => {
            if !json {
                outln!("task {task_id} complete in {took:.1} s")?;
            }
            Ok(())
        }
        TaskPhase::Error => {
            let msg = task.msg.unwrap_or_else(|| "no message".into());
            let code = task.code.unwrap_or_else(|| codes::INTERNAL.into());
            let (msg, code) = (sanitize(&msg), sanitize(&code));
            if !json {
                // The task's failure decides the exit code, even if stdout is gone.
                let _ = outln!("task {task_id} failed: {msg} ({code})");
            }
            Err(Failure::new(
                EXIT_FAILED,
                format!("task {task_id} failed: {msg} ({code})"),
            ))
        }
        other => Err(Failure::new(
            EXIT_OTHER,
            format!(
                "the event stream of task {task_id} ended while it is {}",
                other.as_str()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::output::render_table;
    use serde_json::json;

    #[test]
    fn a_qc_result_becomes_a_sanitized_table() {
        let result = json!({"passed": false, "failures": ["cpu.cores: x"], "checks": [
            {"name": "cpu.cores", "expected": "64", "actual": "32", "pass": false},
            {"name": "cpu.model", "expected": "matches \"*\"", "actual": "\u{1b}[2Jevil",
             "pass": true}]});
        let rows = qc_rows(Qc::NAME, Some(&result)).unwrap();
        let lines = render_table(&["", "CHECK", "EXPECTED", "ACTUAL"], rows);
        assert_eq!(lines.len(), 3);
        assert!(lines[1].starts_with("FAIL  cpu.cores"), "{lines:?}");
        assert!(lines[2].starts_with("ok    cpu.model"), "{lines:?}");
        assert!(!lines.iter().any(|l| l.contains('\u{1b}')), "{lines:?}");
        // Other methods, and results that are no report, print no table.
        assert!(qc_rows("decom.disk_erase", Some(&result)).is_none());
        assert!(qc_rows(Qc::NAME, Some(&json!({"steps": 3}))).is_none());
        assert!(qc_rows(Qc::NAME, None).is_none());
    }

    #[test]
    fn burn_in_checks_are_rows_of_the_table_too() {
        let result = json!({"passed": false, "failures": ["burnin.disks[sda]: x"], "checks": [
            {"name": "cpu.cores", "expected": "2", "actual": "2", "pass": true},
            {"name": "burnin.cpu", "expected": "every CPU computes right",
             "actual": "0 wrong of 900 work units on 2 CPUs in 2.0 s", "pass": true},
            {"name": "burnin.disks[sda]", "expected": "read without error, at least 500 MB/s",
             "actual": "120.5 MB/s over 241.0 MiB in 2.0 s", "pass": false}],
            "burnin": {"cpu": {"threads": 2, "seconds": 2.0, "rounds": 900,
                "wrong_results": 0}, "disks": [{"name": "sda", "bytes_read": 252706816,
                "seconds": 2.0, "mb_s": 120.5}], "notes": ["cpu: no MCE line"]}});
        let rows = qc_rows(Qc::NAME, Some(&result)).unwrap();
        let lines = render_table(&["", "CHECK", "EXPECTED", "ACTUAL"], rows);
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert!(lines[2].starts_with("ok    burnin.cpu "), "{lines:?}");
        assert!(lines[3].starts_with("FAIL  burnin.disks[sda]"), "{lines:?}");
        assert!(
            lines[3].ends_with("120.5 MB/s over 241.0 MiB in 2.0 s"),
            "{lines:?}"
        );
    }

    #[test]
    fn a_firmware_result_becomes_a_table_per_component() {
        let result = json!({"dry_run": false, "reboot_required": true, "components": [
            {"index": 0, "kind": "nvme", "name": "nvme0", "required": "1.1", "before": "1.0",
             "after": "1.1", "action": "updated", "method": "nvme", "reboot": true},
            {"index": 1, "kind": "bios", "name": "bios", "required": "2", "before": "3",
             "action": "downgrade_refused", "message": "bios runs 3\u{1b}[2J"},
            {"index": 2, "kind": "bmc", "required": "1", "action": "not_found"}]});
        let rows = firmware_rows(FirmwareSecure::NAME, Some(&result)).unwrap();
        let lines = render_table(
            &[
                "",
                "COMPONENT",
                "BEFORE",
                "REQUIRED",
                "AFTER",
                "ACTION",
                "NEEDS",
                "NOTE",
            ],
            rows,
        );
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert!(lines[1].starts_with("ok    nvme nvme0  1.0"), "{lines:?}");
        assert!(
            lines[1].contains("updated") && lines[1].contains("reboot"),
            "{lines:?}"
        );
        assert!(lines[2].starts_with("FAIL  bios bios") && lines[2].contains("downgrade_refused"));
        assert!(
            lines[3].contains("bmc -") && lines[3].contains("not_found"),
            "{lines:?}"
        );
        assert!(!lines.iter().any(|l| l.contains('\u{1b}')), "{lines:?}");
        assert!(firmware_rows(Qc::NAME, Some(&result)).is_none());
    }
}
