//! Log records forwarded by agents.

use super::{Db, Result, Store, now_ms, parse_json, q};
use molar_protocol::methods::LogRecord;
use rusqlite::params;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A stored log record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    pub id: i64,
    pub ts_ms: i64,
    pub level: String,
    pub target: String,
    pub msg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<Value>,
}

impl Db {
    /// Appends a batch of log records of a server; `dropped` adds to its dropped counter.
    pub fn append_logs(
        &mut self,
        server_id: &str,
        records: &[LogRecord],
        dropped: u64,
    ) -> Result<()> {
        let tx = self.write_tx().map_err(q("storing logs"))?;
        {
            let now = now_ms();
            let mut st = tx
                .prepare_cached(
                    "INSERT INTO logs (server_id, ts_ms, level, target, msg, fields, received_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(q("storing logs"))?;
            for r in records {
                let fields =
                    (!r.fields.is_empty()).then(|| Value::Object(r.fields.clone()).to_string());
                st.execute(params![
                    server_id,
                    r.ts_ms.min(i64::MAX as u64) as i64,
                    r.level,
                    r.target,
                    r.msg,
                    fields,
                    now
                ])
                .map_err(q("storing logs"))?;
            }
        }
        tx.execute(
            "UPDATE servers SET logs_dropped = logs_dropped + ?2, last_seen_ms = ?3 WHERE id = ?1",
            params![server_id, dropped.min(i64::MAX as u64) as i64, now_ms()],
        )
        .map_err(q("storing logs"))?;
        tx.commit().map_err(q("storing logs"))?;
        self.touched.server(server_id);
        Ok(())
    }

    /// Log records of a server with an id greater than `after`, oldest first.
    pub fn logs(&self, server_id: &str, after: i64, limit: u32) -> Result<Vec<LogEntry>> {
        let conn = &self.conn;
        let mut st = conn
            .prepare_cached(
                "SELECT id, ts_ms, level, target, msg, fields FROM logs
                 WHERE server_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
            )
            .map_err(q("reading logs"))?;
        let rows = st
            .query_map(params![server_id, after, limit], |r| {
                Ok((
                    LogEntry {
                        id: r.get(0)?,
                        ts_ms: r.get(1)?,
                        level: r.get(2)?,
                        target: r.get(3)?,
                        msg: r.get(4)?,
                        fields: None,
                    },
                    r.get::<_, Option<String>>(5)?,
                ))
            })
            .map_err(q("reading logs"))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(q("reading logs"))?;
        rows.into_iter()
            .map(|(mut e, f)| {
                e.fields = parse_json("log fields", f)?;
                Ok(e)
            })
            .collect()
    }
}

impl Store {
    /// Appends a batch of log records of a server; `dropped` adds to its dropped counter.
    pub async fn append_logs(
        &self,
        server_id: &str,
        records: Vec<LogRecord>,
        dropped: u64,
    ) -> Result<()> {
        let id = server_id.to_owned();
        self.write(move |db| db.append_logs(&id, &records, dropped))
            .await
    }

    /// Log records of a server with an id greater than `after`, oldest first.
    pub async fn logs(&self, server_id: &str, after: i64, limit: u32) -> Result<Vec<LogEntry>> {
        let id = server_id.to_owned();
        self.read(move |db| db.logs(&id, after, limit)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::*;

    #[test]
    fn logs_page_by_id() {
        let mut s = Db::open_in_memory().unwrap();
        s.register(&reg("k"), &grant(), &mut || "srv-1".into(), "a")
            .unwrap();
        let rec = |m: &str| LogRecord {
            ts_ms: 1,
            level: "info".into(),
            target: "t".into(),
            msg: m.into(),
            fields: Default::default(),
        };
        s.append_logs("srv-1", &[rec("a"), rec("b"), rec("c")], 4)
            .unwrap();
        let first = s.logs("srv-1", 0, 2).unwrap();
        assert_eq!(first.len(), 2);
        let rest = s.logs("srv-1", first[1].id, 10).unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].msg, "c");
        assert_eq!(s.get_server("srv-1").unwrap().unwrap().logs_dropped, 4);
    }
}
