//! The BMC table's credentials over time: an operator's `molar bmc set`, a rotation's
//! pending password (stored sealed before the BMC is asked to take it, so a failure half-way
//! never leaves the controller without the password the BMC has), and the periodic session
//! checks (`checked_ms`, `verified_ms`, `verify_error`).

use super::{Db, Result, Store, now_ms, q};
use molar_protocol::Secret;
use rusqlite::{OptionalExtension, params};

/// What `molar bmc show --reveal` shows: the credentials in use and, while a rotation is
/// unconfirmed, the password it set.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BmcSecrets {
    pub server_id: String,
    pub username: String,
    pub password: Secret,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_password: Option<Secret>,
}

impl Db {
    /// Replaces the login of the server's BMC (an operator's `molar bmc set`): a row is
    /// created when there is none. `verified` says a session with it just worked. The user
    /// id is kept only while the username stays; a pending rotation is dropped.
    pub fn set_bmc_login(
        &self,
        server_id: &str,
        username: &str,
        password: &Secret,
        verified: bool,
    ) -> Result<()> {
        let sealed = self.key.seal(server_id, password.expose())?;
        let now = now_ms();
        let verified_ms = verified.then_some(now);
        self.conn
            .execute(
                "INSERT INTO bmcs (server_id, username, password_sealed, source, updated_ms,
                    verified_ms, checked_ms)
                 VALUES (?1, ?2, ?3, 'operator', ?4, ?5, ?5)
                 ON CONFLICT(server_id) DO UPDATE SET
                   user_id = CASE WHEN username = excluded.username THEN user_id END,
                   username = excluded.username, password_sealed = excluded.password_sealed,
                   source = 'operator', updated_ms = excluded.updated_ms,
                   verified_ms = excluded.verified_ms, checked_ms = excluded.checked_ms,
                   verify_error = NULL, pending_sealed = NULL",
                params![server_id, username, sealed, now, verified_ms],
            )
            .map_err(q("storing a BMC login"))?;
        Ok(())
    }

    /// Keeps `password` as the rotation's pending password; `false` without a BMC entry.
    pub fn set_bmc_pending(&self, server_id: &str, password: &Secret) -> Result<bool> {
        let sealed = self.key.seal(server_id, password.expose())?;
        let n = self
            .conn
            .execute(
                "UPDATE bmcs SET pending_sealed = ?2 WHERE server_id = ?1",
                params![server_id, sealed],
            )
            .map_err(q("storing a pending BMC password"))?;
        Ok(n > 0)
    }

    /// Drops the pending password (the BMC kept the current one).
    pub fn clear_bmc_pending(&self, server_id: &str) -> Result<()> {
        self.conn
            .execute(
                "UPDATE bmcs SET pending_sealed = NULL WHERE server_id = ?1",
                [server_id],
            )
            .map_err(q("dropping a pending BMC password"))?;
        Ok(())
    }

    /// Makes the pending password the current one, verified now, with `source`; `false`
    /// when there is none.
    pub fn promote_bmc_pending(&self, server_id: &str, source: &str) -> Result<bool> {
        let now = now_ms();
        let n = self
            .conn
            .execute(
                "UPDATE bmcs SET password_sealed = pending_sealed, pending_sealed = NULL,
                    source = ?2, updated_ms = ?3, verified_ms = ?3, checked_ms = ?3,
                    verify_error = NULL
                 WHERE server_id = ?1 AND pending_sealed IS NOT NULL",
                params![server_id, source, now],
            )
            .map_err(q("confirming a rotated BMC password"))?;
        Ok(n > 0)
    }

    /// The credentials in use and the pending password, for `--reveal` and the checks.
    pub fn bmc_secrets(&self, server_id: &str) -> Result<Option<BmcSecrets>> {
        let row: Option<(String, String, Option<String>)> = self
            .conn
            .query_row(
                "SELECT username, password_sealed, pending_sealed FROM bmcs WHERE server_id = ?1",
                [server_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(q("reading BMC credentials"))?;
        let Some((username, sealed, pending)) = row else {
            return Ok(None);
        };
        Ok(Some(BmcSecrets {
            server_id: server_id.to_owned(),
            username,
            password: self.key.open(server_id, &sealed)?,
            pending_password: pending.map(|p| self.key.open(server_id, &p)).transpose()?,
        }))
    }

    /// Records a session check of the current credentials: a success sets `verified_ms`
    /// and clears the error, a failure keeps the last success and says why.
    pub fn record_bmc_check(&self, server_id: &str, outcome: Result<(), String>) -> Result<()> {
        let now = now_ms();
        let (sql, err) = match outcome {
            Ok(()) => (
                "UPDATE bmcs SET checked_ms = ?2, verified_ms = ?2, verify_error = ?3
                 WHERE server_id = ?1",
                None,
            ),
            Err(e) => (
                "UPDATE bmcs SET checked_ms = ?2, verify_error = ?3 WHERE server_id = ?1",
                Some(e),
            ),
        };
        self.conn
            .execute(sql, params![server_id, now, err])
            .map_err(q("recording a BMC check"))?;
        Ok(())
    }

    /// Up to `limit` servers whose BMC has an operator-given address and was not checked
    /// for `every_ms`, the longest unchecked first. An address only an agent reported is not
    /// checked on the controller's own initiative (it may not be reachable, or not be the
    /// BMC's, from here).
    pub fn bmcs_due(&self, every_ms: i64, limit: usize) -> Result<Vec<String>> {
        let what = "listing BMCs due for a check";
        let mut stmt = self
            .conn
            .prepare(
                "SELECT server_id FROM bmcs
                 WHERE COALESCE(host, '') <> ''
                   AND COALESCE(checked_ms, 0) <= ?1
                 ORDER BY COALESCE(checked_ms, 0), server_id LIMIT ?2",
            )
            .map_err(q(what))?;
        let rows = stmt
            .query_map(
                params![
                    now_ms().saturating_sub(every_ms),
                    i64::try_from(limit).unwrap_or(i64::MAX)
                ],
                |r| r.get(0),
            )
            .map_err(q(what))?;
        rows.collect::<rusqlite::Result<Vec<String>>>()
            .map_err(q(what))
    }

    /// How many BMCs failed their last check.
    pub fn bmcs_failing(&self) -> Result<i64> {
        self.conn
            .query_row(
                "SELECT count(*) FROM bmcs WHERE verify_error IS NOT NULL",
                [],
                |r| r.get(0),
            )
            .map_err(q("counting failing BMCs"))
    }
}

impl Store {
    /// See [`Db::set_bmc_login`].
    pub async fn set_bmc_login(
        &self,
        server_id: &str,
        username: &str,
        password: Secret,
        verified: bool,
    ) -> Result<()> {
        let (id, user) = (server_id.to_owned(), username.to_owned());
        self.write(move |db| db.set_bmc_login(&id, &user, &password, verified))
            .await
    }

    /// See [`Db::set_bmc_pending`].
    pub async fn set_bmc_pending(&self, server_id: &str, password: Secret) -> Result<bool> {
        let id = server_id.to_owned();
        self.write(move |db| db.set_bmc_pending(&id, &password))
            .await
    }

    /// See [`Db::clear_bmc_pending`].
    pub async fn clear_bmc_pending(&self, server_id: &str) -> Result<()> {
        let id = server_id.to_owned();
        self.write(move |db| db.clear_bmc_pending(&id)).await
    }

    /// See [`Db::promote_bmc_pending`].
    pub async fn promote_bmc_pending(&self, server_id: &str, source: &str) -> Result<bool> {
        let (id, source) = (server_id.to_owned(), source.to_owned());
        self.write(move |db| db.promote_bmc_pending(&id, &source))
            .await
    }

    /// See [`Db::bmc_secrets`].
    pub async fn bmc_secrets(&self, server_id: &str) -> Result<Option<BmcSecrets>> {
        let id = server_id.to_owned();
        self.read(move |db| db.bmc_secrets(&id)).await
    }

    /// See [`Db::record_bmc_check`].
    pub async fn record_bmc_check(
        &self,
        server_id: &str,
        outcome: std::result::Result<(), String>,
    ) -> Result<()> {
        let id = server_id.to_owned();
        self.write(move |db| db.record_bmc_check(&id, outcome))
            .await
    }

    /// See [`Db::bmcs_due`].
    pub async fn bmcs_due(&self, every_ms: i64, limit: usize) -> Result<Vec<String>> {
        self.read(move |db| db.bmcs_due(every_ms, limit)).await
    }

    /// See [`Db::bmcs_failing`].
    pub async fn bmcs_failing(&self) -> Result<i64> {
        self.read(|db| db.bmcs_failing()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::BmcCredentials;
    use crate::store::test_support::*;

    fn server(db: &mut Db, id: &str) {
        let mut next = || id.to_owned();
        db.register(
            &reg(&format!("uuid:{id}")),
            &grant(),
            &mut next,
            "127.0.0.1:1",
        )
        .unwrap();
    }

    #[test]
    fn a_rotation_keeps_both_passwords_until_one_is_confirmed() {
        let mut db = Db::open_in_memory().unwrap();
        server(&mut db, "srv-1");
        assert!(!db.set_bmc_pending("srv-1", &Secret::new("new-pw")).unwrap());
        db.set_bmc(
            "srv-1",
            &BmcCredentials {
                mac: None,
                ip: Some("192.0.2.9".into()),
                username: "molar".into(),
                password: Secret::new("old-pw"),
                user_id: Some(3),
                source: "in_band".into(),
            },
        )
        .unwrap();
        assert!(db.set_bmc_pending("srv-1", &Secret::new("new-pw")).unwrap());
        let rec = db.bmc("srv-1").unwrap().unwrap();
        assert!(rec.rotation_pending);
        assert!(!serde_json::to_string(&rec).unwrap().contains("pw"));
        let s = db.bmc_secrets("srv-1").unwrap().unwrap();
        assert_eq!(s.password.expose(), "old-pw");
        assert_eq!(s.pending_password.unwrap().expose(), "new-pw");
        // The key check covers the pending password too.
        db.check_bmc_key().unwrap();

        db.clear_bmc_pending("srv-1").unwrap();
        assert!(!db.promote_bmc_pending("srv-1", "rotated").unwrap());
        assert_eq!(
            db.bmc_password("srv-1").unwrap().unwrap().expose(),
            "old-pw"
        );

        db.set_bmc_pending("srv-1", &Secret::new("new-pw")).unwrap();
        db.record_bmc_check("srv-1", Err("login refused".into()))
            .unwrap();
        assert!(db.promote_bmc_pending("srv-1", "rotated").unwrap());
        let rec = db.bmc("srv-1").unwrap().unwrap();
        assert_eq!(
            (rec.source.as_str(), rec.rotation_pending, rec.verify_error),
            ("rotated", false, None)
        );
        assert!(rec.verified_ms.is_some());
        assert_eq!(
            db.bmc_password("srv-1").unwrap().unwrap().expose(),
            "new-pw"
        );
        assert_eq!(
            db.bmc_target("srv-1").unwrap().unwrap().password.expose(),
            "new-pw"
        );
    }

    #[test]
    fn an_operator_login_replaces_the_credentials_and_keeps_the_address() {
        let mut db = Db::open_in_memory().unwrap();
        server(&mut db, "srv-1");
        db.set_bmc_login("srv-1", "admin", &Secret::new("a-pw"), false)
            .unwrap();
        let rec = db.bmc("srv-1").unwrap().unwrap();
        assert_eq!(
            (rec.username.as_str(), rec.source.as_str()),
            ("admin", "operator")
        );
        assert_eq!(rec.verified_ms, None);
        assert!(db.bmc_target("srv-1").unwrap().is_none(), "no address yet");
        db.conn
            .execute("UPDATE bmcs SET ip = '192.0.2.7', user_id = 4", [])
            .unwrap();
        db.set_bmc_pending("srv-1", &Secret::new("p-pw")).unwrap();
        db.set_bmc_login("srv-1", "admin", &Secret::new("b-pw"), true)
            .unwrap();
        let rec = db.bmc("srv-1").unwrap().unwrap();
        assert_eq!(
            (rec.ip.as_deref(), rec.user_id),
            (Some("192.0.2.7"), Some(4))
        );
        assert!(rec.verified_ms.is_some() && !rec.rotation_pending);
        db.set_bmc_login("srv-1", "other", &Secret::new("c-pw"), true)
            .unwrap();
        assert_eq!(db.bmc("srv-1").unwrap().unwrap().user_id, None);
        assert_eq!(db.bmc_password("srv-1").unwrap().unwrap().expose(), "c-pw");
    }

    #[test]
    fn checks_are_recorded_and_due_ones_come_longest_unchecked_first() {
        let mut db = Db::open_in_memory().unwrap();
        for id in ["srv-a", "srv-b", "srv-c"] {
            server(&mut db, id);
            db.set_bmc_login(id, "u", &Secret::new("pw"), false)
                .unwrap();
        }
        // Without an operator's address nothing is due.
        db.conn
            .execute("UPDATE bmcs SET ip = '192.0.2.1'", [])
            .unwrap();
        assert!(db.bmcs_due(0, 10).unwrap().is_empty());
        db.conn
            .execute("UPDATE bmcs SET host = '192.0.2.1'", [])
            .unwrap();
        db.conn
            .execute(
                "UPDATE bmcs SET checked_ms = 5 WHERE server_id = 'srv-a'",
                [],
            )
            .unwrap();
        assert_eq!(db.bmcs_due(0, 10).unwrap(), ["srv-b", "srv-c", "srv-a"]);
        assert_eq!(db.bmcs_due(0, 1).unwrap(), ["srv-b"]);
        db.record_bmc_check("srv-b", Ok(())).unwrap();
        db.record_bmc_check("srv-c", Err("no answer".into()))
            .unwrap();
        assert_eq!(db.bmcs_due(60_000, 10).unwrap(), ["srv-a"]);
        assert_eq!(db.bmcs_failing().unwrap(), 1);
        let c = db.bmc("srv-c").unwrap().unwrap();
        assert_eq!(c.verify_error.as_deref(), Some("no answer"));
        assert!(c.checked_ms.is_some() && c.verified_ms.is_none());
        db.record_bmc_check("srv-c", Ok(())).unwrap();
        assert_eq!(db.bmcs_failing().unwrap(), 0);
    }
}
