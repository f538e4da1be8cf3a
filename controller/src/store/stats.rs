//! Counts the metrics endpoint reports at scrape time: servers by lifecycle state, tasks by
//! method and state. Grouped in SQL, so a scrape costs two indexed aggregate queries however
//! large the fleet.

use super::{Db, Result, Store, q};

/// How many rows share a label set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counted {
    pub labels: Vec<String>,
    pub count: u64,
}

impl Db {
    fn grouped(&self, sql: &str, what: &'static str) -> Result<Vec<Counted>> {
        let mut stmt = self.conn.prepare(sql).map_err(q(what))?;
        let rows = stmt
            .query_map([], |r| {
                let n = r.as_ref().column_count();
                let mut labels = Vec::with_capacity(n - 1);
                for i in 0..n - 1 {
                    labels.push(r.get::<_, String>(i)?);
                }
                let count: i64 = r.get(n - 1)?;
                Ok(Counted {
                    labels,
                    count: count.max(0) as u64,
                })
            })
            .map_err(q(what))?;
        rows.collect::<std::result::Result<_, _>>().map_err(q(what))
    }

    pub fn servers_by_state(&self) -> Result<Vec<Counted>> {
        self.grouped(
            "SELECT state, COUNT(*) FROM servers GROUP BY state",
            "counting servers",
        )
    }

    pub fn tasks_by_method_and_state(&self) -> Result<Vec<Counted>> {
        self.grouped(
            "SELECT method, state, COUNT(*) FROM tasks GROUP BY method, state",
            "counting tasks",
        )
    }
}

impl Store {
    /// Servers by state and tasks by method and state, read together.
    pub async fn stats(&self) -> Result<(Vec<Counted>, Vec<Counted>)> {
        self.read(|db| Ok((db.servers_by_state()?, db.tasks_by_method_and_state()?)))
            .await
    }
}
