//! Retention of the two tables that grow with time: logs and task events.
//!
//! Logs are pruned by age (when the controller received them) and by count per server; task
//! events by age and by count per task. A task's latest event and its terminal event are
//! never pruned: they are what its state was made from and what a watcher replays last.
//! Pruning runs in bounded batches, each its own store job, so the writer thread serves
//! agents between batches; counts are checked only for the servers and tasks that got new
//! rows since the last pass (all of them on the first pass after a start).

use super::{Db, Result, Store, now_ms, q};
use rusqlite::{OptionalExtension, params};
use std::collections::HashSet;
use std::time::Duration;

/// How much of the logs and task events is kept. `None` keeps without that limit.
#[derive(Debug, Clone, PartialEq)]
pub struct Retention {
    /// Logs received longer ago than this are deleted.
    pub logs_max_age: Option<Duration>,
    /// Most log records kept per server (the newest).
    pub logs_per_server: Option<u64>,
    /// Task events older than this are deleted (not a task's latest or terminal one).
    pub task_events_max_age: Option<Duration>,
    /// Most events kept per task (the newest; the terminal one always).
    pub task_events_per_task: Option<u64>,
    /// Time between two pruning passes.
    pub interval: Duration,
    /// Rows deleted by one statement; the writer serves others between batches.
    pub batch: u32,
}

const DAY: Duration = Duration::from_secs(86_400);

impl Default for Retention {
    /// 30 days of both, at most 100,000 log records per server and 10,000 events per task
    /// (a day-long erase reporting every 10 s), pruned every 10 minutes in batches of 5,000.
    fn default() -> Self {
        Retention {
            logs_max_age: Some(30 * DAY),
            logs_per_server: Some(100_000),
            task_events_max_age: Some(30 * DAY),
            task_events_per_task: Some(10_000),
            interval: Duration::from_secs(600),
            batch: 5000,
        }
    }
}

impl Retention {
    /// A limit in days from the command line: 0 keeps forever.
    pub fn days(days: u64) -> Option<Duration> {
        (days > 0).then(|| DAY * u32::try_from(days).unwrap_or(u32::MAX))
    }

    /// A count limit from the command line: 0 keeps without limit.
    pub fn count(n: u64) -> Option<u64> {
        (n > 0).then_some(n)
    }
}

/// What one pruning pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub logs: u64,
    pub task_events: u64,
}

/// Servers and tasks that got rows since the last pass.
#[derive(Debug)]
pub(super) struct Touched {
    /// Nothing is known yet (a fresh start): look at every server and task.
    all: bool,
    servers: HashSet<String>,
    tasks: HashSet<String>,
}

impl Default for Touched {
    fn default() -> Self {
        Touched {
            all: true,
            servers: HashSet::new(),
            tasks: HashSet::new(),
        }
    }
}

impl Touched {
    pub(super) fn server(&mut self, id: &str) {
        if !self.all && !self.servers.contains(id) {
            self.servers.insert(id.to_owned());
        }
    }

    pub(super) fn task(&mut self, id: &str) {
        if !self.all && !self.tasks.contains(id) {
            self.tasks.insert(id.to_owned());
        }
    }
}

fn cutoff(age: Duration) -> i64 {
    now_ms().saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX))
}

fn limit(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Db {
    /// The servers and tasks whose counts must be checked, forgetting them.
    pub fn take_touched(&mut self) -> Result<(Vec<String>, Vec<String>)> {
        if std::mem::replace(&mut self.touched.all, false) {
            let ids = |sql: &str| -> Result<Vec<String>> {
                let mut st = self.conn.prepare(sql).map_err(q("listing for pruning"))?;
                let rows = st
                    .query_map([], |r| r.get(0))
                    .map_err(q("listing for pruning"))?;
                rows.collect::<rusqlite::Result<_>>()
                    .map_err(q("listing for pruning"))
            };
            return Ok((
                ids("SELECT id FROM servers")?,
                ids("SELECT task_id FROM tasks")?,
            ));
        }
        Ok((
            self.touched.servers.drain().collect(),
            self.touched.tasks.drain().collect(),
        ))
    }

    /// Deletes up to `batch` log records received before `before_ms`; returns how many.
    pub fn prune_old_logs(&mut self, before_ms: i64, batch: u32) -> Result<u64> {
        let n = self
            .conn
            .execute(
                "DELETE FROM logs WHERE id IN (
                    SELECT id FROM logs WHERE received_ms < ?1 ORDER BY received_ms LIMIT ?2)",
                params![before_ms, batch],
            )
            .map_err(q("pruning old logs"))?;
        Ok(n as u64)
    }

    /// Deletes up to `batch` of the server's oldest log records beyond its newest `keep`.
    pub fn prune_server_logs(&mut self, server_id: &str, keep: u64, batch: u32) -> Result<u64> {
        let newest_gone: Option<i64> = self
            .conn
            .query_row(
                "SELECT id FROM logs WHERE server_id = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2",
                params![server_id, limit(keep)],
                |r| r.get(0),
            )
            .optional()
            .map_err(q("pruning a server's logs"))?;
        let Some(newest_gone) = newest_gone else {
            return Ok(0);
        };
        let n = self
            .conn
            .execute(
                "DELETE FROM logs WHERE id IN (
                    SELECT id FROM logs WHERE server_id = ?1 AND id <= ?2 ORDER BY id LIMIT ?3)",
                params![server_id, newest_gone, batch],
            )
            .map_err(q("pruning a server's logs"))?;
        Ok(n as u64)
    }

    /// Deletes up to `batch` task events from before `before_ms`, never a task's latest or
    /// terminal one.
    pub fn prune_old_task_events(&mut self, before_ms: i64, batch: u32) -> Result<u64> {
        let n = self
            .conn
            .execute(
                "DELETE FROM task_events WHERE id IN (
                    SELECT e.id FROM task_events e
                    WHERE e.at_ms < ?1 AND e.state NOT IN ('complete', 'error')
                      AND e.id < (SELECT MAX(x.id) FROM task_events x WHERE x.task_id = e.task_id)
                    ORDER BY e.at_ms LIMIT ?2)",
                params![before_ms, batch],
            )
            .map_err(q("pruning old task events"))?;
        Ok(n as u64)
    }

    /// Deletes up to `batch` of the task's oldest events beyond its newest `keep` (at least
    /// one is kept), never its terminal one.
    pub fn prune_task_events_of(&mut self, task_id: &str, keep: u64, batch: u32) -> Result<u64> {
        let newest_gone: Option<i64> = self
            .conn
            .query_row(
                "SELECT id FROM task_events WHERE task_id = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2",
                params![task_id, limit(keep.max(1))],
                |r| r.get(0),
            )
            .optional()
            .map_err(q("pruning a task's events"))?;
        let Some(newest_gone) = newest_gone else {
            return Ok(0);
        };
        let n = self
            .conn
            .execute(
                "DELETE FROM task_events WHERE id IN (
                    SELECT id FROM task_events WHERE task_id = ?1 AND id <= ?2
                      AND state NOT IN ('complete', 'error')
                    ORDER BY id LIMIT ?3)",
                params![task_id, newest_gone, batch],
            )
            .map_err(q("pruning a task's events"))?;
        Ok(n as u64)
    }
}

impl Store {
    /// Runs `step` on the writer until a batch deletes less than a full one; the total.
    async fn prune_all(
        &self,
        batch: u32,
        step: impl Fn(&mut Db, u32) -> Result<u64> + Send + Sync + Clone + 'static,
    ) -> Result<u64> {
        let batch = batch.max(1);
        let mut total = 0;
        loop {
            let step = step.clone();
            let n = self.write(move |db| step(db, batch)).await?;
            total += n;
            if n < u64::from(batch) {
                return Ok(total);
            }
        }
    }

    /// One pruning pass under `r`, in batches.
    pub async fn prune(&self, r: &Retention) -> Result<Pruned> {
        let mut pruned = Pruned::default();
        let (servers, tasks) = self.write(|db| db.take_touched()).await?;
        if let Some(age) = r.logs_max_age {
            let before = cutoff(age);
            pruned.logs += self
                .prune_all(r.batch, move |db, b| db.prune_old_logs(before, b))
                .await?;
        }
        if let Some(keep) = r.logs_per_server {
            for id in servers {
                pruned.logs += self
                    .prune_all(r.batch, move |db, b| db.prune_server_logs(&id, keep, b))
                    .await?;
            }
        }
        if let Some(age) = r.task_events_max_age {
            let before = cutoff(age);
            pruned.task_events += self
                .prune_all(r.batch, move |db, b| db.prune_old_task_events(before, b))
                .await?;
        }
        if let Some(keep) = r.task_events_per_task {
            for id in tasks {
                pruned.task_events += self
                    .prune_all(r.batch, move |db, b| db.prune_task_events_of(&id, keep, b))
                    .await?;
            }
        }
        Ok(pruned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::*;
    use molar_protocol::methods::{LogRecord, TaskState};

    fn rec(m: &str) -> LogRecord {
        LogRecord {
            ts_ms: 1,
            level: "info".into(),
            target: "t".into(),
            msg: m.into(),
            fields: Default::default(),
        }
    }

    fn two_servers() -> Db {
        let mut db = Db::open_in_memory().unwrap();
        db.register(&reg("a"), &grant(), &mut || "srv-1".into(), "x")
            .unwrap();
        db.register(&reg("b"), &grant(), &mut || "srv-2".into(), "y")
            .unwrap();
        db
    }

    fn msgs(db: &Db, server: &str) -> Vec<String> {
        db.logs(server, 0, 1000)
            .unwrap()
            .into_iter()
            .map(|l| l.msg)
            .collect()
    }

    #[test]
    fn logs_beyond_the_count_of_a_server_go_oldest_first_in_batches() {
        let mut db = two_servers();
        let batch: Vec<LogRecord> = (0..10).map(|i| rec(&format!("m{i}"))).collect();
        db.append_logs("srv-1", &batch, 0).unwrap();
        db.append_logs("srv-2", &batch[..3], 0).unwrap();
        // A batch deletes at most its size.
        assert_eq!(db.prune_server_logs("srv-1", 4, 2).unwrap(), 2);
        assert_eq!(db.prune_server_logs("srv-1", 4, 100).unwrap(), 4);
        assert_eq!(db.prune_server_logs("srv-1", 4, 100).unwrap(), 0);
        assert_eq!(msgs(&db, "srv-1"), ["m6", "m7", "m8", "m9"]);
        // The other server's records are not counted against it.
        assert_eq!(db.prune_server_logs("srv-2", 4, 100).unwrap(), 0);
        assert_eq!(msgs(&db, "srv-2").len(), 3);
    }

    #[test]
    fn logs_age_by_when_they_were_received_not_the_agents_clock() {
        let mut db = two_servers();
        // ts_ms 1: an agent whose clock says 1970. Received now, so not old.
        db.append_logs("srv-1", &[rec("a"), rec("b")], 0).unwrap();
        assert_eq!(db.prune_old_logs(now_ms() - 60_000, 100).unwrap(), 0);
        assert_eq!(db.prune_old_logs(now_ms() + 1, 1).unwrap(), 1);
        assert_eq!(db.prune_old_logs(now_ms() + 1, 100).unwrap(), 1);
        assert!(msgs(&db, "srv-1").is_empty());
    }

    #[test]
    fn a_tasks_latest_and_terminal_events_are_never_pruned() {
        let mut db = two_servers();
        db.create_task("t-done", "srv-1", "m", &serde_json::json!({}))
            .unwrap();
        db.create_task("t-live", "srv-1", "m", &serde_json::json!({}))
            .unwrap();
        for seq in 1..=5 {
            db.apply_task_status("srv-1", &status("t-done", TaskState::Running, seq))
                .unwrap();
            db.apply_task_status("srv-1", &status("t-live", TaskState::Running, seq))
                .unwrap();
        }
        db.apply_task_status("srv-1", &status("t-done", TaskState::Complete, 6))
            .unwrap();
        // Everything is older than a cutoff in the future: only the protected ones stay.
        assert_eq!(db.prune_old_task_events(now_ms() + 1, 100).unwrap(), 9);
        let done = db.task_events("t-done", 0).unwrap();
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].state.as_str(), "complete");
        let live = db.task_events("t-live", 0).unwrap();
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].percent, Some(5.0), "the latest running event stays");
        // By count: keep 0 still keeps one, the terminal one is never counted out.
        assert_eq!(db.prune_task_events_of("t-done", 0, 100).unwrap(), 0);
        assert_eq!(db.prune_task_events_of("t-live", 0, 100).unwrap(), 0);
    }

    #[test]
    fn task_events_beyond_the_count_go_oldest_first() {
        let mut db = two_servers();
        db.create_task("t-1", "srv-1", "m", &serde_json::json!({}))
            .unwrap();
        for seq in 1..=8 {
            db.apply_task_status("srv-1", &status("t-1", TaskState::Running, seq))
                .unwrap();
        }
        db.apply_task_status("srv-1", &status("t-1", TaskState::Error, 9))
            .unwrap();
        assert_eq!(db.prune_task_events_of("t-1", 3, 100).unwrap(), 6);
        let evs = db.task_events("t-1", 0).unwrap();
        let percents: Vec<_> = evs.iter().map(|e| e.percent).collect();
        assert_eq!(percents, [Some(7.0), Some(8.0), None]);
        assert_eq!(evs[2].state.as_str(), "error");
    }

    #[tokio::test]
    async fn a_pass_prunes_what_the_limits_say_and_then_only_what_grew() {
        let store = Store::open_in_memory().unwrap();
        let r = Retention {
            logs_max_age: None,
            logs_per_server: Some(2),
            task_events_max_age: None,
            task_events_per_task: Some(2),
            interval: Duration::from_secs(1),
            batch: 1,
        };
        store
            .register(reg("a"), grant(), || "srv-1".into(), "x")
            .await
            .unwrap();
        store
            .append_logs("srv-1", (0..5).map(|i| rec(&format!("m{i}"))).collect(), 0)
            .await
            .unwrap();
        store
            .create_task("t-1", "srv-1", "m", serde_json::json!({}))
            .await
            .unwrap();
        for seq in 1..=4 {
            store
                .apply_task_status("srv-1", status("t-1", TaskState::Running, seq))
                .await
                .unwrap();
        }
        assert_eq!(
            store.prune(&r).await.unwrap(),
            Pruned {
                logs: 3,
                task_events: 2
            }
        );
        assert_eq!(store.prune(&r).await.unwrap(), Pruned::default());
        store
            .append_logs("srv-1", vec![rec("m5")], 0)
            .await
            .unwrap();
        assert_eq!(store.prune(&r).await.unwrap().logs, 1);
        let kept: Vec<String> = store
            .logs("srv-1", 0, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|l| l.msg)
            .collect();
        assert_eq!(kept, ["m4", "m5"]);
        // Defaults say something sane.
        let d = Retention::default();
        assert_eq!(d.logs_max_age, Some(30 * DAY));
        assert_eq!(Retention::days(0), None);
        assert_eq!(Retention::count(0), None);
    }
}
