//! Security events: every refused handshake (and what else an operator must be able to
//! audit: superseded sessions, revoked tokens closing sessions, re-enrolments), one row each.
//!
//! An event names the server (when known), the token by its id and the peer address, never
//! a secret. Rows are not deleted with their server (they are the audit trail), and the
//! table keeps the newest [`EVENTS_KEPT`] rows: an attacker refused a million times cannot
//! grow it without bound.

use super::{Db, Result, Store, now_ms, q};
use rusqlite::params;
use serde::{Deserialize, Serialize};

/// Most events kept (the newest).
pub const EVENTS_KEPT: i64 = 100_000;

/// Every how many inserts the oldest rows past [`EVENTS_KEPT`] are deleted.
const TRIM_EVERY: i64 = 256;

/// An event to record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NewEvent {
    /// A stable snake_case word: `handshake_refused`, `session_superseded`, ...
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_addr: Option<String>,
    /// For people; never a secret.
    pub msg: String,
}

/// A stored event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    pub id: i64,
    pub at_ms: i64,
    #[serde(flatten)]
    pub event: NewEvent,
}

impl Db {
    /// Stores an event; returns its id.
    pub fn append_event(&self, ev: &NewEvent) -> Result<i64> {
        let conn = &self.conn;
        conn.prepare_cached(
            "INSERT INTO events (at_ms, kind, server_id, token_id, peer_addr, msg)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .and_then(|mut st| {
            st.execute(params![
                now_ms(),
                ev.kind,
                ev.server_id,
                ev.token_id,
                ev.peer_addr,
                ev.msg
            ])
        })
        .map_err(q("storing an event"))?;
        let id = conn.last_insert_rowid();
        if id % TRIM_EVERY == 0 {
            conn.execute("DELETE FROM events WHERE id <= ?1", [id - EVENTS_KEPT])
                .map_err(q("trimming events"))?;
        }
        Ok(id)
    }

    /// Events with an id greater than `after`, oldest first, of one server if given.
    pub fn events(
        &self,
        server_id: Option<&str>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<EventRecord>> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT id, at_ms, kind, server_id, token_id, peer_addr, msg FROM events
                 WHERE id > ?1 AND (?2 IS NULL OR server_id = ?2) ORDER BY id LIMIT ?3",
            )
            .map_err(q("reading events"))?;
        let rows = st
            .query_map(params![after, server_id, limit], |r| {
                Ok(EventRecord {
                    id: r.get(0)?,
                    at_ms: r.get(1)?,
                    event: NewEvent {
                        kind: r.get(2)?,
                        server_id: r.get(3)?,
                        token_id: r.get(4)?,
                        peer_addr: r.get(5)?,
                        msg: r.get(6)?,
                    },
                })
            })
            .map_err(q("reading events"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(q("reading events"))
    }
}

impl Store {
    /// [`Db::append_event`].
    pub async fn append_event(&self, ev: NewEvent) -> Result<i64> {
        self.write(move |db| db.append_event(&ev)).await
    }

    /// [`Db::events`].
    pub async fn events(
        &self,
        server_id: Option<&str>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<EventRecord>> {
        let server_id = server_id.map(str::to_owned);
        self.read(move |db| db.events(server_id.as_deref(), after, limit))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_paged_filtered_and_trimmed_to_the_newest() {
        let db = Db::open_in_memory().unwrap();
        for i in 0..3 {
            db.append_event(&NewEvent {
                kind: "handshake_refused".into(),
                server_id: (i != 1).then(|| "srv-1".into()),
                msg: format!("refusal {i}"),
                ..NewEvent::default()
            })
            .unwrap();
        }
        let all = db.events(None, 0, 10).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(db.events(Some("srv-1"), 0, 10).unwrap().len(), 2);
        assert_eq!(
            db.events(None, all[1].id, 10).unwrap()[0].event.msg,
            "refusal 2"
        );
        // Past the cap the oldest go.
        db.conn
            .execute(
                "UPDATE sqlite_sequence SET seq = ?1 WHERE name = 'events'",
                [TRIM_EVERY * 1000 - 1],
            )
            .unwrap();
        let id = db
            .append_event(&NewEvent {
                kind: "k".into(),
                msg: "new".into(),
                ..NewEvent::default()
            })
            .unwrap();
        assert_eq!(id % TRIM_EVERY, 0);
        let left = db.events(None, 0, 10).unwrap();
        assert_eq!(left.len(), 1, "{left:?}");
        assert_eq!(left[0].event.msg, "new");
    }
}
