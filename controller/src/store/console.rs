//! Console tokens and the bounded console log of each server.
//!
//! A console token lets its holder watch one server's serial console without the admin
//! token: `console` tokens come from `POST /api/v1/servers/ID/console/token`, `obmd` ones
//! from seed 001's `/obmd/node/{id}/token`. Only the SHA-256 of a token is stored; a check
//! compares the presented token's hash with every live hash of the server in constant time.
//! The console log keeps what the BMC sent, oldest rows dropped past a per-server cap.

use super::{Db, Result, Store, now_ms, q};
use molar_protocol::Secret;
use rusqlite::params;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::time::Duration;
use subtle::ConstantTimeEq;

/// Default lifetime of a console token, and the longest one may be asked for.
pub const CONSOLE_TOKEN_TTL_DEFAULT: Duration = Duration::from_secs(3600);
pub const CONSOLE_TOKEN_TTL_MAX: Duration = Duration::from_secs(7 * 86_400);
/// Live tokens kept per server and kind; creating more revokes the oldest, so repeated
/// requests cannot grow the table without bound.
pub const CONSOLE_TOKENS_MAX: usize = 64;
/// Bytes of console output kept per server.
pub const CONSOLE_LOG_CAP: usize = 1 << 20;

/// Who a console token was made for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsoleTokenKind {
    /// molar's own `POST /api/v1/servers/ID/console/token`.
    Console,
    /// Seed 001's `POST /obmd/node/{id}/token`.
    Obmd,
}

impl ConsoleTokenKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ConsoleTokenKind::Console => "console",
            ConsoleTokenKind::Obmd => "obmd",
        }
    }
}

/// A token just made: the only time it exists outside its holder.
#[derive(Debug, Clone)]
pub struct ConsoleToken {
    /// 32 lowercase hex characters (OBMd's format).
    pub token: Secret,
    /// Unix ms.
    pub expires_ms: i64,
}

fn sha256_of(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Db {
    /// Stores a token's hash for `server_id`; false when there is no such server. Dead
    /// tokens of the server are deleted and live ones past [`CONSOLE_TOKENS_MAX`] revoked.
    pub fn create_console_token(
        &mut self,
        server_id: &str,
        kind: ConsoleTokenKind,
        sha256: &[u8; 32],
        expires_ms: i64,
    ) -> Result<bool> {
        let what = "storing a console token";
        let now = now_ms();
        let tx = self.write_tx().map_err(q(what))?;
        let exists: bool = tx
            .query_row(
                "SELECT EXISTS(SELECT 1 FROM servers WHERE id = ?1)",
                [server_id],
                |r| r.get(0),
            )
            .map_err(q(what))?;
        if !exists {
            return Ok(false);
        }
        tx.execute(
            "DELETE FROM console_tokens WHERE server_id = ?1
               AND (revoked_ms IS NOT NULL OR (expires_ms IS NOT NULL AND expires_ms <= ?2))",
            params![server_id, now],
        )
        .map_err(q(what))?;
        tx.execute(
            "INSERT INTO console_tokens (sha256, server_id, kind, created_ms, expires_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                hex::encode(sha256),
                server_id,
                kind.as_str(),
                now,
                expires_ms
            ],
        )
        .map_err(q(what))?;
        tx.execute(
            "UPDATE console_tokens SET revoked_ms = ?3 WHERE sha256 IN (
               SELECT sha256 FROM console_tokens WHERE server_id = ?1 AND kind = ?2
                 AND revoked_ms IS NULL
               ORDER BY created_ms DESC, rowid DESC LIMIT -1 OFFSET ?4)",
            params![server_id, kind.as_str(), now, CONSOLE_TOKENS_MAX as i64],
        )
        .map_err(q(what))?;
        tx.commit().map_err(q(what))?;
        Ok(true)
    }

    /// Revokes the server's live tokens of `kind` (every kind when `None`); how many.
    pub fn revoke_console_tokens(
        &self,
        server_id: &str,
        kind: Option<ConsoleTokenKind>,
    ) -> Result<u64> {
        let n = self
            .conn
            .execute(
                "UPDATE console_tokens SET revoked_ms = ?3
                 WHERE server_id = ?1 AND revoked_ms IS NULL AND (?2 IS NULL OR kind = ?2)",
                params![server_id, kind.map(ConsoleTokenKind::as_str), now_ms()],
            )
            .map_err(q("revoking console tokens"))?;
        Ok(n as u64)
    }

    /// Whether `sha256` is a live (not revoked, not expired) token of the server, compared
    /// in constant time with each live hash.
    pub fn check_console_token(&self, server_id: &str, sha256: &[u8; 32]) -> Result<bool> {
        let what = "checking a console token";
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT sha256 FROM console_tokens WHERE server_id = ?1
                   AND revoked_ms IS NULL AND (expires_ms IS NULL OR expires_ms > ?2)",
            )
            .map_err(q(what))?;
        let hashes = st
            .query_map(params![server_id, now_ms()], |r| r.get::<_, String>(0))
            .map_err(q(what))?;
        let presented = hex::encode(sha256);
        let mut found = subtle::Choice::from(0u8);
        for h in hashes {
            let h = h.map_err(q(what))?;
            found |= h.as_bytes().ct_eq(presented.as_bytes());
        }
        Ok(bool::from(found))
    }

    /// Appends console output and drops the oldest rows past `cap` bytes for the server.
    pub fn append_console_log(&mut self, server_id: &str, data: &[u8], cap: usize) -> Result<()> {
        let what = "appending to a console log";
        if data.is_empty() {
            return Ok(());
        }
        // A chunk larger than the cap keeps only its tail.
        let data = &data[data.len().saturating_sub(cap)..];
        let tx = self.write_tx().map_err(q(what))?;
        tx.execute(
            "INSERT INTO console_log (server_id, at_ms, data) VALUES (?1, ?2, ?3)",
            params![server_id, now_ms(), data],
        )
        .map_err(q(what))?;
        let total: i64 = tx
            .query_row(
                "SELECT COALESCE(SUM(length(data)), 0) FROM console_log WHERE server_id = ?1",
                [server_id],
                |r| r.get(0),
            )
            .map_err(q(what))?;
        let mut excess = total - cap as i64;
        if excess > 0 {
            let mut last = None;
            {
                let mut st = tx
                    .prepare(
                        "SELECT id, length(data) FROM console_log WHERE server_id = ?1
                         ORDER BY id",
                    )
                    .map_err(q(what))?;
                let mut rows = st.query([server_id]).map_err(q(what))?;
                while excess > 0 {
                    let Some(r) = rows.next().map_err(q(what))? else {
                        break;
                    };
                    let (id, len): (i64, i64) =
                        (r.get(0).map_err(q(what))?, r.get(1).map_err(q(what))?);
                    excess -= len;
                    last = Some(id);
                }
            }
            if let Some(id) = last {
                tx.execute(
                    "DELETE FROM console_log WHERE server_id = ?1 AND id <= ?2",
                    params![server_id, id],
                )
                .map_err(q(what))?;
            }
        }
        tx.commit().map_err(q(what))?;
        Ok(())
    }

    /// The server's console log, oldest first.
    pub fn console_log(&self, server_id: &str) -> Result<Vec<u8>> {
        let what = "reading a console log";
        let mut st = self
            .conn
            .prepare_cached("SELECT data FROM console_log WHERE server_id = ?1 ORDER BY id")
            .map_err(q(what))?;
        let rows = st
            .query_map([server_id], |r| r.get::<_, Vec<u8>>(0))
            .map_err(q(what))?;
        let mut out = Vec::new();
        for r in rows {
            out.extend_from_slice(&r.map_err(q(what))?);
        }
        Ok(out)
    }
}

impl Store {
    /// Makes a console token for the server, valid for `ttl` (bounded by
    /// [`CONSOLE_TOKEN_TTL_MAX`]); `None` when there is no such server.
    pub async fn create_console_token(
        &self,
        server_id: &str,
        kind: ConsoleTokenKind,
        ttl: Duration,
    ) -> Result<Option<ConsoleToken>> {
        let token = Secret::new(crate::pki::random_hex(16));
        let hash = sha256_of(token.expose());
        let ttl = ttl.min(CONSOLE_TOKEN_TTL_MAX);
        let expires_ms = now_ms().saturating_add(ttl.as_millis() as i64);
        let id = server_id.to_owned();
        let made = self
            .write(move |db| db.create_console_token(&id, kind, &hash, expires_ms))
            .await?;
        Ok(made.then_some(ConsoleToken { token, expires_ms }))
    }

    /// Revokes the server's console tokens of `kind` (all kinds when `None`); how many.
    pub async fn revoke_console_tokens(
        &self,
        server_id: &str,
        kind: Option<ConsoleTokenKind>,
    ) -> Result<u64> {
        let id = server_id.to_owned();
        self.write(move |db| db.revoke_console_tokens(&id, kind))
            .await
    }

    /// Whether `token` is a live console token (of any kind) of the server. Runs on the
    /// writer so a revocation just answered is seen.
    pub async fn check_console_token(&self, server_id: &str, token: &str) -> Result<bool> {
        if token.is_empty() || token.len() > 256 {
            return Ok(false);
        }
        let hash = sha256_of(token);
        let id = server_id.to_owned();
        self.write(move |db| db.check_console_token(&id, &hash))
            .await
    }

    /// Appends console output, keeping at most [`CONSOLE_LOG_CAP`] bytes for the server.
    pub async fn append_console_log(&self, server_id: &str, data: Vec<u8>) -> Result<()> {
        let id = server_id.to_owned();
        self.write(move |db| db.append_console_log(&id, &data, CONSOLE_LOG_CAP))
            .await
    }

    /// The server's console log, oldest first.
    pub async fn console_log(&self, server_id: &str) -> Result<Vec<u8>> {
        let id = server_id.to_owned();
        self.read(move |db| db.console_log(&id)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::reg;

    fn db_with_server() -> (Db, String) {
        let mut db = Db::open_in_memory().expect("db");
        let (s, _) = db
            .register(
                &reg("key-1"),
                &crate::store::test_support::grant(),
                &mut || "srv-1".into(),
                "127.0.0.1:1",
            )
            .expect("register");
        (db, s.id)
    }

    #[test]
    fn tokens_check_expire_and_revoke() {
        let (mut db, id) = db_with_server();
        let far = now_ms() + 60_000;
        let a = sha256_of("a");
        assert!(
            db.create_console_token(&id, ConsoleTokenKind::Console, &a, far)
                .expect("c")
        );
        assert!(db.check_console_token(&id, &a).expect("check"));
        assert!(!db.check_console_token(&id, &sha256_of("b")).expect("check"));
        assert!(!db.check_console_token("srv-2", &a).expect("check"));
        let old = sha256_of("old");
        db.create_console_token(&id, ConsoleTokenKind::Obmd, &old, now_ms() - 1)
            .expect("c");
        assert!(!db.check_console_token(&id, &old).expect("expired"));
        assert_eq!(
            db.revoke_console_tokens(&id, Some(ConsoleTokenKind::Obmd))
                .expect("r"),
            1
        );
        assert!(db.check_console_token(&id, &a).expect("console kept"));
        assert_eq!(db.revoke_console_tokens(&id, None).expect("r"), 1);
        assert!(!db.check_console_token(&id, &a).expect("revoked"));
        assert!(
            !db.create_console_token("nope", ConsoleTokenKind::Console, &a, far)
                .expect("c")
        );
    }

    #[test]
    fn live_tokens_are_bounded() {
        let (mut db, id) = db_with_server();
        let far = now_ms() + 60_000;
        for i in 0..CONSOLE_TOKENS_MAX + 5 {
            let h = sha256_of(&format!("t{i}"));
            db.create_console_token(&id, ConsoleTokenKind::Console, &h, far)
                .expect("c");
        }
        assert!(!db.check_console_token(&id, &sha256_of("t0")).expect("c"));
        let newest = format!("t{}", CONSOLE_TOKENS_MAX + 4);
        assert!(db.check_console_token(&id, &sha256_of(&newest)).expect("c"));
    }

    #[test]
    fn log_is_bounded_and_keeps_the_tail() {
        let (mut db, id) = db_with_server();
        for i in 0..100u8 {
            db.append_console_log(&id, &[i; 10], 95).expect("append");
        }
        let log = db.console_log(&id).expect("log");
        assert!(log.len() <= 95 && log.len() >= 85, "{}", log.len());
        assert_eq!(*log.last().expect("byte"), 99);
        db.append_console_log(&id, &[7u8; 500], 95).expect("append");
        assert_eq!(db.console_log(&id).expect("log"), vec![7u8; 95]);
    }
}
