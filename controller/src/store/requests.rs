//! The `requests` table: queued control requests (power, boot device, BMC reset, identify)
//! with their state, the path they took and their message. The queue itself is this table:
//! a server's pending requests run in id order ([`crate::requests`]).

use super::{Db, Result, Store, StoreError, now_ms, q};
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

/// Where a request is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestState {
    Pending,
    Active,
    Succeeded,
    Failed,
}

impl RequestState {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestState::Pending => "pending",
            RequestState::Active => "active",
            RequestState::Succeeded => "succeeded",
            RequestState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<RequestState> {
        Some(match s {
            "pending" => RequestState::Pending,
            "active" => RequestState::Active,
            "succeeded" => RequestState::Succeeded,
            "failed" => RequestState::Failed,
            _ => return None,
        })
    }

    /// Succeeded or failed: nothing more happens to the request.
    pub fn is_final(self) -> bool {
        matches!(self, RequestState::Succeeded | RequestState::Failed)
    }
}

/// How a request reached the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestPath {
    /// Through the server's connected agent (its local BMC interface).
    InBand,
    /// Through the BMC over the network (IPMI over LAN).
    OutOfBand,
}

impl RequestPath {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestPath::InBand => "in_band",
            RequestPath::OutOfBand => "out_of_band",
        }
    }

    fn parse(s: &str) -> Option<RequestPath> {
        match s {
            "in_band" => Some(RequestPath::InBand),
            "out_of_band" => Some(RequestPath::OutOfBand),
            _ => None,
        }
    }
}

/// A request to store: what to do, already validated ([`crate::requests::ControlAction`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRequest {
    pub action: String,
    pub parameter: Option<String>,
    pub persistent: bool,
    pub efi: bool,
    /// Which API shape queued it: `api` (`/control`) or `condition` (seed 000's).
    pub source: String,
}

/// A stored request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    pub id: i64,
    pub server_id: String,
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameter: Option<String>,
    pub persistent: bool,
    pub efi: bool,
    pub state: RequestState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<RequestPath>,
    pub source: String,
    pub created_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<i64>,
}

/// Most requests one listing returns.
pub const REQUESTS_LISTED_MAX: u32 = 1000;

const COLS: &str = "id, server_id, action, parameter, persistent, efi, state, message, path, \
                    source, created_ms, started_ms, finished_ms";

type Row = (
    RequestRecord,
    String,         // state
    Option<String>, // path
);

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok((
        RequestRecord {
            id: r.get(0)?,
            server_id: r.get(1)?,
            action: r.get(2)?,
            parameter: r.get(3)?,
            persistent: r.get(4)?,
            efi: r.get(5)?,
            state: RequestState::Pending,
            message: r.get(7)?,
            path: None,
            source: r.get(9)?,
            created_ms: r.get(10)?,
            started_ms: r.get(11)?,
            finished_ms: r.get(12)?,
        },
        r.get(6)?,
        r.get(8)?,
    ))
}

fn finish((mut rec, state, path): Row) -> Result<RequestRecord> {
    rec.state = RequestState::parse(&state).ok_or_else(|| StoreError::Corrupt {
        what: "request state",
        msg: format!("unknown state {state:?}"),
    })?;
    rec.path = match path {
        None => None,
        Some(p) => Some(RequestPath::parse(&p).ok_or_else(|| StoreError::Corrupt {
            what: "request path",
            msg: format!("unknown path {p:?}"),
        })?),
    };
    Ok(rec)
}

impl Db {
    /// Queues a request for `server_id` (which must exist) as `pending`.
    pub fn add_request(&self, server_id: &str, r: &NewRequest) -> Result<RequestRecord> {
        let what = "queueing a request";
        self.conn
            .execute(
                "INSERT INTO requests (server_id, action, parameter, persistent, efi, state,
                   source, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6, ?7)",
                params![
                    server_id,
                    r.action,
                    r.parameter,
                    r.persistent,
                    r.efi,
                    r.source,
                    now_ms()
                ],
            )
            .map_err(q(what))?;
        let id = self.conn.last_insert_rowid();
        self.request(id)?.ok_or(StoreError::Corrupt {
            what: "request",
            msg: format!("request {id} vanished after its insert"),
        })
    }

    pub fn request(&self, id: i64) -> Result<Option<RequestRecord>> {
        self.conn
            .query_row(
                &format!("SELECT {COLS} FROM requests WHERE id = ?1"),
                [id],
                row,
            )
            .optional()
            .map_err(q("reading a request"))?
            .map(finish)
            .transpose()
    }

    /// A server's requests, newest first, at most `limit` (capped at
    /// [`REQUESTS_LISTED_MAX`]).
    pub fn server_requests(&self, server_id: &str, limit: u32) -> Result<Vec<RequestRecord>> {
        let what = "listing requests";
        let mut st = self
            .conn
            .prepare(&format!(
                "SELECT {COLS} FROM requests WHERE server_id = ?1 ORDER BY id DESC LIMIT ?2"
            ))
            .map_err(q(what))?;
        let rows = st
            .query_map(params![server_id, limit.min(REQUESTS_LISTED_MAX)], row)
            .map_err(q(what))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(q(what))?;
        rows.into_iter().map(finish).collect()
    }

    /// Requests not finished yet (pending or active), oldest first.
    pub fn open_requests(&self) -> Result<Vec<RequestRecord>> {
        let what = "listing open requests";
        let mut st = self
            .conn
            .prepare(&format!(
                "SELECT {COLS} FROM requests WHERE state IN ('pending','active') ORDER BY id"
            ))
            .map_err(q(what))?;
        let rows = st
            .query_map([], row)
            .map_err(q(what))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(q(what))?;
        rows.into_iter().map(finish).collect()
    }

    /// How many of the server's requests are pending or active.
    pub fn open_request_count(&self, server_id: &str) -> Result<u64> {
        self.conn
            .query_row(
                "SELECT COUNT(*) FROM requests WHERE server_id = ?1 AND state IN ('pending','active')",
                [server_id],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n.max(0) as u64)
            .map_err(q("counting open requests"))
    }

    /// Takes the server's oldest pending request and marks it `active` with its path, unless
    /// one of its requests is active already (one at a time per server).
    pub fn next_request(&mut self, server_id: &str) -> Result<Option<RequestRecord>> {
        let what = "taking the next request";
        let tx = self.write_tx().map_err(q(what))?;
        let active: i64 = tx
            .query_row(
                "SELECT COUNT(*) FROM requests WHERE server_id = ?1 AND state = 'active'",
                [server_id],
                |r| r.get(0),
            )
            .map_err(q(what))?;
        if active > 0 {
            return Ok(None);
        }
        let id: Option<i64> = tx
            .query_row(
                "SELECT id FROM requests WHERE server_id = ?1 AND state = 'pending'
                 ORDER BY id LIMIT 1",
                [server_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(q(what))?;
        let Some(id) = id else { return Ok(None) };
        tx.execute(
            "UPDATE requests SET state = 'active', started_ms = ?2 WHERE id = ?1",
            params![id, now_ms()],
        )
        .map_err(q(what))?;
        tx.commit().map_err(q(what))?;
        self.request(id)
    }

    /// Records the path an active request takes.
    pub fn set_request_path(&self, id: i64, path: RequestPath) -> Result<()> {
        self.conn
            .execute(
                "UPDATE requests SET path = ?2 WHERE id = ?1",
                params![id, path.as_str()],
            )
            .map_err(q("recording a request's path"))?;
        Ok(())
    }

    /// Ends a request: `succeeded` or `failed` with its message. Only an open request changes.
    pub fn finish_request(&self, id: i64, state: RequestState, message: &str) -> Result<bool> {
        debug_assert!(state.is_final());
        let n = self
            .conn
            .execute(
                "UPDATE requests SET state = ?2, message = ?3, finished_ms = ?4
                 WHERE id = ?1 AND state IN ('pending','active')",
                params![id, state.as_str(), message, now_ms()],
            )
            .map_err(q("finishing a request"))?;
        Ok(n > 0)
    }

    /// Puts an active request back in the queue (to run again: a read is safe to repeat),
    /// noting why in its message.
    pub fn requeue_request(&self, id: i64, why: &str) -> Result<bool> {
        let n = self
            .conn
            .execute(
                "UPDATE requests SET state = 'pending', started_ms = NULL, path = NULL,
                   message = ?2 WHERE id = ?1 AND state = 'active'",
                params![id, why],
            )
            .map_err(q("requeueing a request"))?;
        Ok(n > 0)
    }
}

impl Store {
    /// See [`Db::add_request`].
    pub async fn add_request(&self, server_id: &str, r: NewRequest) -> Result<RequestRecord> {
        let id = server_id.to_owned();
        self.write(move |db| db.add_request(&id, &r)).await
    }

    /// See [`Db::request`].
    pub async fn request(&self, id: i64) -> Result<Option<RequestRecord>> {
        self.read(move |db| db.request(id)).await
    }

    /// See [`Db::server_requests`].
    pub async fn server_requests(&self, server_id: &str, limit: u32) -> Result<Vec<RequestRecord>> {
        let id = server_id.to_owned();
        self.read(move |db| db.server_requests(&id, limit)).await
    }

    /// See [`Db::open_requests`].
    pub async fn open_requests(&self) -> Result<Vec<RequestRecord>> {
        self.read(|db| db.open_requests()).await
    }

    /// See [`Db::open_request_count`].
    pub async fn open_request_count(&self, server_id: &str) -> Result<u64> {
        let id = server_id.to_owned();
        self.read(move |db| db.open_request_count(&id)).await
    }

    /// See [`Db::next_request`].
    pub async fn next_request(&self, server_id: &str) -> Result<Option<RequestRecord>> {
        let id = server_id.to_owned();
        self.write(move |db| db.next_request(&id)).await
    }

    /// See [`Db::set_request_path`].
    pub async fn set_request_path(&self, id: i64, path: RequestPath) -> Result<()> {
        self.write(move |db| db.set_request_path(id, path)).await
    }

    /// See [`Db::finish_request`].
    pub async fn finish_request(
        &self,
        id: i64,
        state: RequestState,
        message: &str,
    ) -> Result<bool> {
        let message = message.to_owned();
        self.write(move |db| db.finish_request(id, state, &message))
            .await
    }

    /// See [`Db::requeue_request`].
    pub async fn requeue_request(&self, id: i64, why: &str) -> Result<bool> {
        let why = why.to_owned();
        self.write(move |db| db.requeue_request(id, &why)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::*;

    fn new(action: &str, parameter: &str) -> NewRequest {
        NewRequest {
            action: action.into(),
            parameter: Some(parameter.into()),
            persistent: false,
            efi: false,
            source: "api".into(),
        }
    }

    #[test]
    fn requests_run_one_at_a_time_in_order_and_keep_their_outcome() {
        let mut s = Db::open_in_memory().unwrap();
        for key in ["uuid:a", "uuid:b"] {
            let id = key.trim_start_matches("uuid:").to_owned();
            s.register(
                &reg(key),
                &grant(),
                &mut || format!("srv-{id}"),
                "127.0.0.1:1",
            )
            .unwrap();
        }
        let r1 = s
            .add_request("srv-a", &new("set_power_state", "off"))
            .unwrap();
        let r2 = s
            .add_request("srv-a", &new("set_power_state", "on"))
            .unwrap();
        let r3 = s.add_request("srv-b", &new("bmc_reset", "cold")).unwrap();
        assert_eq!(r1.state, RequestState::Pending);
        assert!(r1.id < r2.id);

        let a = s.next_request("srv-a").unwrap().unwrap();
        assert_eq!((a.id, a.state), (r1.id, RequestState::Active));
        // One at a time per server; other servers go on.
        assert_eq!(s.next_request("srv-a").unwrap(), None);
        assert_eq!(s.next_request("srv-b").unwrap().unwrap().id, r3.id);

        s.set_request_path(r1.id, RequestPath::OutOfBand).unwrap();
        assert!(
            s.finish_request(r1.id, RequestState::Succeeded, "done")
                .unwrap()
        );
        // A finished request stays finished.
        assert!(!s.finish_request(r1.id, RequestState::Failed, "x").unwrap());
        let done = s.request(r1.id).unwrap().unwrap();
        assert_eq!(done.message.as_deref(), Some("done"));
        assert_eq!(done.path, Some(RequestPath::OutOfBand));
        assert!(done.finished_ms.is_some());

        assert_eq!(s.next_request("srv-a").unwrap().unwrap().id, r2.id);
        let listed = s.server_requests("srv-a", 10).unwrap();
        assert_eq!(
            listed.iter().map(|r| r.id).collect::<Vec<_>>(),
            vec![r2.id, r1.id]
        );
        assert_eq!(s.server_requests("srv-a", 1).unwrap().len(), 1);
        assert_eq!(s.open_request_count("srv-a").unwrap(), 1);
        let open = s.open_requests().unwrap();
        assert_eq!(
            open.iter().map(|r| r.id).collect::<Vec<_>>(),
            vec![r2.id, r3.id]
        );
        assert!(s.requeue_request(r2.id, "again").unwrap());
        assert_eq!(
            s.request(r2.id).unwrap().unwrap().state,
            RequestState::Pending
        );
        // Removing the server removes its requests (foreign keys are enforced).
        assert!(s.remove_server("srv-a").unwrap().is_some());
        assert_eq!(s.request(r1.id).unwrap(), None);
    }
}
