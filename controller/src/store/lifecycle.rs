//! A server's state changes and their history. The only code that writes `servers.state`:
//! every change is [`crate::lifecycle::next`] applied as a compare-and-set on the state it
//! was decided from, and recorded in `transitions` in the same transaction, so the history
//! is the state's whole story and two writers racing from one state cannot both win.

use super::{Db, Result, Store, StoreError, now_ms, q};
use crate::lifecycle::{Cause, Illegal, next};
use crate::store::ServerState;
use rusqlite::{OptionalExtension, Transaction, params};
use serde::{Deserialize, Serialize};

/// One stored state change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// Increasing over the whole store: the event id of the state-change stream.
    pub id: i64,
    pub server_id: String,
    /// `None` for the row that created the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<ServerState>,
    pub to: ServerState,
    /// `None` for the row that created the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<Cause>,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    pub at_ms: i64,
}

/// What a transition is tied to, besides its reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Refs {
    pub request_id: Option<i64>,
    pub task_id: Option<String>,
}

/// Why a transition was not applied.
#[derive(Debug, thiserror::Error)]
pub enum TransitionError {
    #[error("no server {0}")]
    NotFound(String),
    #[error(transparent)]
    Illegal(#[from] Illegal),
    /// The server is no longer in the state the transition was decided from: someone else
    /// changed it first.
    #[error("server {server} is {actual} now, not {expected}: its state changed meanwhile")]
    Conflict {
        server: String,
        expected: ServerState,
        actual: ServerState,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Transitions listed at most at once.
pub const TRANSITIONS_LISTED_MAX: u32 = 1000;

const WHAT: &str = "changing a server's state";

fn state_of(tx: &Transaction<'_>, id: &str) -> Result<Option<ServerState>> {
    let s: Option<String> = tx
        .query_row("SELECT state FROM servers WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .optional()
        .map_err(q(WHAT))?;
    s.map(|s| {
        ServerState::parse(&s).ok_or(StoreError::Corrupt {
            what: "server state",
            msg: s,
        })
    })
    .transpose()
}

fn record(
    tx: &Transaction<'_>,
    id: &str,
    from: Option<ServerState>,
    to: ServerState,
    cause: Option<Cause>,
    reason: &str,
    refs: &Refs,
) -> Result<Transition> {
    let at_ms = now_ms();
    tx.execute(
        "INSERT INTO transitions (server_id, from_state, to_state, cause, reason, request_id,
            task_id, at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            id,
            from.map(ServerState::as_str),
            to.as_str(),
            cause.map(Cause::as_str),
            reason,
            refs.request_id,
            refs.task_id,
            at_ms
        ],
    )
    .map_err(q(WHAT))?;
    Ok(Transition {
        id: tx.last_insert_rowid(),
        server_id: id.to_owned(),
        from,
        to,
        cause,
        reason: reason.to_owned(),
        request_id: refs.request_id,
        task_id: refs.task_id.clone(),
        at_ms,
    })
}

/// Records the state a server was created in (inside the creating transaction).
pub(super) fn created(
    tx: &Transaction<'_>,
    id: &str,
    state: ServerState,
    reason: &str,
) -> Result<Transition> {
    record(tx, id, None, state, None, reason, &Refs::default())
}

/// Applies `cause` to server `id` inside `tx` if it is in state `from` now.
pub(super) fn apply(
    tx: &Transaction<'_>,
    id: &str,
    from: ServerState,
    cause: Cause,
    reason: &str,
    refs: &Refs,
) -> Result<Transition, TransitionError> {
    let to = next(from, cause)?;
    let n = tx
        .execute(
            "UPDATE servers SET state = ?3 WHERE id = ?1 AND state = ?2",
            params![id, from.as_str(), to.as_str()],
        )
        .map_err(q(WHAT))?;
    if n == 0 {
        return Err(match state_of(tx, id)? {
            None => TransitionError::NotFound(id.to_owned()),
            Some(actual) => TransitionError::Conflict {
                server: id.to_owned(),
                expected: from,
                actual,
            },
        });
    }
    Ok(record(tx, id, Some(from), to, Some(cause), reason, refs)?)
}

/// Applies `cause` to server `id` inside `tx` from whatever state it is in now; refused by
/// the table when that state has no such edge.
pub(super) fn apply_current(
    tx: &Transaction<'_>,
    id: &str,
    cause: Cause,
    reason: &str,
    refs: &Refs,
) -> Result<Transition, TransitionError> {
    let from = state_of(tx, id)?.ok_or_else(|| TransitionError::NotFound(id.to_owned()))?;
    apply(tx, id, from, cause, reason, refs)
}

fn row(
    r: &rusqlite::Row<'_>,
) -> rusqlite::Result<(Transition, Option<String>, String, Option<String>)> {
    Ok((
        Transition {
            id: r.get(0)?,
            server_id: r.get(1)?,
            from: None,
            to: ServerState::Initial,
            cause: None,
            reason: r.get(5)?,
            request_id: r.get(6)?,
            task_id: r.get(7)?,
            at_ms: r.get(8)?,
        },
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
    ))
}

fn finish(
    (mut t, from, to, cause): (Transition, Option<String>, String, Option<String>),
) -> Result<Transition> {
    let state = |s: String| {
        ServerState::parse(&s).ok_or(StoreError::Corrupt {
            what: "transition state",
            msg: s,
        })
    };
    t.from = from.map(state).transpose()?;
    t.to = state(to)?;
    t.cause = cause
        .map(|c| {
            Cause::parse(&c).ok_or(StoreError::Corrupt {
                what: "transition cause",
                msg: c,
            })
        })
        .transpose()?;
    Ok(t)
}

const COLS: &str = "id, server_id, from_state, to_state, cause, reason, request_id, task_id, at_ms";

impl Db {
    /// Applies `cause` to server `id` if it is in state `from`: the compare-and-set every
    /// lifecycle step goes through.
    pub fn transition(
        &mut self,
        id: &str,
        from: ServerState,
        cause: Cause,
        reason: &str,
        refs: &Refs,
    ) -> Result<Transition, TransitionError> {
        let tx = self.write_tx().map_err(q(WHAT))?;
        let t = apply(&tx, id, from, cause, reason, refs)?;
        tx.commit().map_err(q(WHAT))?;
        Ok(t)
    }

    /// Applies `cause` to server `id` from the state it is in (an operator's action, which
    /// the table alone decides).
    pub fn transition_current(
        &mut self,
        id: &str,
        cause: Cause,
        reason: &str,
        refs: &Refs,
    ) -> Result<Transition, TransitionError> {
        let tx = self.write_tx().map_err(q(WHAT))?;
        let t = apply_current(&tx, id, cause, reason, refs)?;
        tx.commit().map_err(q(WHAT))?;
        Ok(t)
    }

    /// Transitions with an id above `after`, oldest first, at most `limit`; of one server
    /// when `server` is given.
    pub fn transitions(
        &self,
        server: Option<&str>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Transition>> {
        let what = "listing state changes";
        let limit = limit.min(TRANSITIONS_LISTED_MAX);
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {COLS} FROM transitions WHERE id > ?1 AND (?2 IS NULL OR server_id = ?2)
                 ORDER BY id LIMIT ?3"
            ))
            .map_err(q(what))?;
        let rows = stmt
            .query_map(params![after, server, limit], row)
            .map_err(q(what))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(q(what))?;
        rows.into_iter().map(finish).collect()
    }

    /// The newest transitions of one server, newest last.
    pub fn latest_transitions(&self, server: &str, limit: u32) -> Result<Vec<Transition>> {
        let what = "listing state changes";
        let limit = limit.min(TRANSITIONS_LISTED_MAX);
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {COLS} FROM transitions WHERE server_id = ?1 ORDER BY id DESC LIMIT ?2"
            ))
            .map_err(q(what))?;
        let mut rows = stmt
            .query_map(params![server, limit], row)
            .map_err(q(what))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(q(what))?;
        rows.reverse();
        rows.into_iter().map(finish).collect()
    }
}

impl Store {
    /// See [`Db::transition`].
    pub async fn transition(
        &self,
        id: &str,
        from: ServerState,
        cause: Cause,
        reason: &str,
        refs: Refs,
    ) -> Result<Transition, TransitionError> {
        let (id, reason) = (id.to_owned(), reason.to_owned());
        self.write(move |db| Ok(db.transition(&id, from, cause, &reason, &refs)))
            .await?
    }

    /// See [`Db::transition_current`].
    pub async fn transition_current(
        &self,
        id: &str,
        cause: Cause,
        reason: &str,
        refs: Refs,
    ) -> Result<Transition, TransitionError> {
        let (id, reason) = (id.to_owned(), reason.to_owned());
        self.write(move |db| Ok(db.transition_current(&id, cause, &reason, &refs)))
            .await?
    }

    /// See [`Db::transitions`].
    pub async fn transitions(
        &self,
        server: Option<&str>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Transition>> {
        let server = server.map(str::to_owned);
        self.read(move |db| db.transitions(server.as_deref(), after, limit))
            .await
    }

    /// See [`Db::latest_transitions`].
    pub async fn latest_transitions(&self, server: &str, limit: u32) -> Result<Vec<Transition>> {
        let server = server.to_owned();
        self.read(move |db| db.latest_transitions(&server, limit))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::{grant, reg};
    use ServerState as S;

    fn server(db: &mut Db, key: &str) -> String {
        let mut n = 0;
        let (s, _) = db
            .register(
                &reg(key),
                &grant(),
                &mut || {
                    n += 1;
                    format!("srv-{key}-{n}")
                },
                "127.0.0.1:1",
            )
            .unwrap();
        s.id
    }

    fn state(db: &Db, id: &str) -> ServerState {
        db.get_server(id).unwrap().unwrap().state
    }

    #[test]
    fn a_new_agent_starts_in_discovery_and_its_history_says_how() {
        let mut db = Db::open_in_memory().unwrap();
        let id = server(&mut db, "a");
        assert_eq!(state(&db, &id), S::Discovery);
        let h = db.transitions(Some(&id), 0, 100).unwrap();
        let steps: Vec<_> = h.iter().map(|t| (t.from, t.to, t.cause)).collect();
        assert_eq!(
            steps,
            [
                (None, S::Initial, None),
                (Some(S::Initial), S::Discovery, Some(Cause::Discover))
            ]
        );
        // A reconnection changes nothing.
        server(&mut db, "a");
        assert_eq!(db.transitions(Some(&id), 0, 100).unwrap().len(), 2);
    }

    #[test]
    fn a_transition_is_a_compare_and_set_on_its_from_state() {
        let mut db = Db::open_in_memory().unwrap();
        let id = server(&mut db, "a");
        let refs = Refs {
            request_id: None,
            task_id: Some("t-1".into()),
        };
        let t = db
            .transition(
                &id,
                S::Discovery,
                Cause::Discovered,
                "inventory stored",
                &refs,
            )
            .unwrap();
        assert_eq!((t.from, t.to), (Some(S::Discovery), S::Available));
        assert_eq!(t.task_id.as_deref(), Some("t-1"));
        assert_eq!(state(&db, &id), S::Available);

        // Decided from a state that is gone: refused, nothing written.
        let e = db
            .transition(
                &id,
                S::Discovery,
                Cause::Discovered,
                "again",
                &Refs::default(),
            )
            .unwrap_err();
        assert!(
            matches!(
                e,
                TransitionError::Conflict {
                    actual: S::Available,
                    ..
                }
            ),
            "{e}"
        );
        // Not in the table: refused before the store is touched.
        let e = db
            .transition(&id, S::Available, Cause::Cleaned, "x", &Refs::default())
            .unwrap_err();
        assert!(matches!(e, TransitionError::Illegal(_)), "{e}");
        let e = db
            .transition(
                "srv-none",
                S::Available,
                Cause::Claimed,
                "x",
                &Refs::default(),
            )
            .unwrap_err();
        assert!(matches!(e, TransitionError::NotFound(_)), "{e}");
        assert_eq!(db.transitions(Some(&id), 0, 100).unwrap().len(), 3);

        let t = db
            .transition_current(&id, Cause::MaintenanceOn, "fan", &Refs::default())
            .unwrap();
        assert_eq!(t.to, S::Maintenance);
        let e = db
            .transition_current(&id, Cause::Claimed, "x", &Refs::default())
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "a server in state maintenance cannot be claimed: only a server in state available can"
        );
        let latest = db.latest_transitions(&id, 2).unwrap();
        assert_eq!(
            latest.iter().map(|t| t.to).collect::<Vec<_>>(),
            [S::Available, S::Maintenance]
        );
        assert_eq!(latest[1].reason, "fan");
    }

    #[test]
    fn concurrent_writers_from_one_state_have_exactly_one_winner() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(dir.path()).unwrap();
        let id = server(&mut db, "a");
        db.transition(&id, S::Discovery, Cause::Discovered, "", &Refs::default())
            .unwrap();
        // Eight connections race to take the available server each their own way.
        let causes = [Cause::Claimed, Cause::MaintenanceOn, Cause::Failed];
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let (dir, id, barrier) = (dir.path().to_owned(), id.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let mut db = Db::open(&dir).unwrap();
                    barrier.wait();
                    db.transition(
                        &id,
                        S::Available,
                        causes[i % 3],
                        &format!("writer {i}"),
                        &Refs::default(),
                    )
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let won: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(won.len(), 1, "{results:?}");
        for r in &results {
            if let Err(e) = r {
                assert!(matches!(e, TransitionError::Conflict { .. }), "{e}");
            }
        }
        let db = Db::open(dir.path()).unwrap();
        assert_eq!(state(&db, &id), won[0].to);
        let h = db.transitions(Some(&id), 0, 100).unwrap();
        assert_eq!(h.len(), 4, "one row per applied change: {h:?}");
        assert_eq!(h.last().unwrap(), won[0]);
    }

    #[test]
    fn the_stream_pages_by_id_across_servers() {
        let mut db = Db::open_in_memory().unwrap();
        let a = server(&mut db, "a");
        let b = server(&mut db, "b");
        let all = db.transitions(None, 0, 100).unwrap();
        assert_eq!(all.len(), 4);
        assert!(all.windows(2).all(|w| w[0].id < w[1].id));
        let after = db.transitions(None, all[1].id, 1).unwrap();
        assert_eq!(after, [all[2].clone()]);
        assert!(
            db.transitions(Some(&a), 0, 100)
                .unwrap()
                .iter()
                .all(|t| t.server_id == a)
        );
        assert!(db.transitions(Some(&b), all[3].id, 100).unwrap().is_empty());
    }
}
