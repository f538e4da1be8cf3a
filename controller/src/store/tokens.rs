//! Agent tokens, kept by their SHA-256 hash, each with a scope: which servers a handshake
//! presenting it may be (see `crate::admission` for what each scope allows).

use super::{Db, Result, Store, StoreError, now_ms, q};
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

/// What a token lets an agent be.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TokenScope {
    /// Any server, enrolled or new: what every token meant before scopes (and what
    /// `molar token create NAME` still makes, for compatibility).
    #[default]
    Any,
    /// Only this enrolled server.
    Server { server_id: String },
    /// Servers carrying this label; a server it enrols gets the label.
    Set { label: String },
    /// Only new servers (or one the controller expects to boot the ramdisk).
    Enrol,
}

impl TokenScope {
    /// The stored `(scope, scope_value)` pair.
    fn columns(&self) -> (&'static str, Option<&str>) {
        match self {
            TokenScope::Any => ("any", None),
            TokenScope::Server { server_id } => ("server", Some(server_id)),
            TokenScope::Set { label } => ("set", Some(label)),
            TokenScope::Enrol => ("enrol", None),
        }
    }

    fn from_columns(scope: &str, value: Option<String>) -> Result<TokenScope> {
        let corrupt = || StoreError::Corrupt {
            what: "token scope",
            msg: scope.to_owned(),
        };
        Ok(match (scope, value) {
            ("any", _) => TokenScope::Any,
            ("enrol", _) => TokenScope::Enrol,
            ("server", Some(server_id)) => TokenScope::Server { server_id },
            ("set", Some(label)) => TokenScope::Set { label },
            _ => return Err(corrupt()),
        })
    }

    /// `any`, `server srv-1`, `set rack-a`, `enrol`: for tables and log lines.
    pub fn describe(&self) -> String {
        match self {
            TokenScope::Any => "any".into(),
            TokenScope::Server { server_id } => format!("server {server_id}"),
            TokenScope::Set { label } => format!("set {label}"),
            TokenScope::Enrol => "enrol".into(),
        }
    }
}

/// An agent token as listed (never the token itself).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub name: String,
    pub created_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_ms: Option<i64>,
    /// Absent in answers of a controller that predates scopes: `any`.
    #[serde(default)]
    pub scope: TokenScope,
    /// The token this one replaced (`molar token rotate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated_from: Option<String>,
}

/// A token not revoked, as the handshake checks it.
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveToken {
    pub id: String,
    /// SHA-256 of the token, lowercase hex.
    pub sha256: String,
    pub scope: TokenScope,
}

const TOKEN_COLS: &str = "id, name, created_ms, revoked_ms, scope, scope_value, rotated_from";

fn token_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(TokenRecord, String, Option<String>)> {
    Ok((
        TokenRecord {
            id: r.get(0)?,
            name: r.get(1)?,
            created_ms: r.get(2)?,
            revoked_ms: r.get(3)?,
            scope: TokenScope::Any,
            rotated_from: r.get(6)?,
        },
        r.get(4)?,
        r.get(5)?,
    ))
}

fn finish_token(
    (mut t, scope, value): (TokenRecord, String, Option<String>),
) -> Result<TokenRecord> {
    t.scope = TokenScope::from_columns(&scope, value)?;
    Ok(t)
}

impl Db {
    /// Stores a new agent token by its SHA-256 hash (lowercase hex).
    pub fn create_token(
        &self,
        id: &str,
        name: &str,
        sha256_hex: &str,
        scope: &TokenScope,
        rotated_from: Option<&str>,
    ) -> Result<TokenRecord> {
        let created_ms = now_ms();
        let (kind, value) = scope.columns();
        self.conn
            .execute(
                "INSERT INTO tokens (id, name, sha256, created_ms, scope, scope_value, rotated_from)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![id, name, sha256_hex, created_ms, kind, value, rotated_from],
            )
            .map_err(q("storing a token"))?;
        Ok(TokenRecord {
            id: id.to_owned(),
            name: name.to_owned(),
            created_ms,
            revoked_ms: None,
            scope: scope.clone(),
            rotated_from: rotated_from.map(str::to_owned),
        })
    }

    /// Replaces token `old_id` by a new one of the same name and scope and revokes the old
    /// one, in one transaction; `None` when there is no such token or it is revoked already.
    pub fn rotate_token(
        &mut self,
        old_id: &str,
        new_id: &str,
        sha256_hex: &str,
    ) -> Result<Option<TokenRecord>> {
        let what = "rotating a token";
        let tx = self.write_tx().map_err(q(what))?;
        let old = tx
            .query_row(
                &format!("SELECT {TOKEN_COLS} FROM tokens WHERE id = ?1 AND revoked_ms IS NULL"),
                [old_id],
                token_row,
            )
            .optional()
            .map_err(q(what))?;
        let Some(old) = old else {
            return Ok(None);
        };
        let old = finish_token(old)?;
        let now = now_ms();
        let (kind, value) = old.scope.columns();
        tx.execute(
            "INSERT INTO tokens (id, name, sha256, created_ms, scope, scope_value, rotated_from)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![new_id, old.name, sha256_hex, now, kind, value, old_id],
        )
        .map_err(q(what))?;
        tx.execute(
            "UPDATE tokens SET revoked_ms = ?2 WHERE id = ?1",
            params![old_id, now],
        )
        .map_err(q(what))?;
        tx.execute(
            "UPDATE servers SET session_sha256 = NULL, session_boot_id = NULL,
                session_token_id = NULL WHERE session_token_id = ?1",
            [old_id],
        )
        .map_err(q(what))?;
        tx.commit().map_err(q(what))?;
        Ok(Some(TokenRecord {
            id: new_id.to_owned(),
            name: old.name,
            created_ms: now,
            revoked_ms: None,
            scope: old.scope,
            rotated_from: Some(old_id.to_owned()),
        }))
    }

    pub fn list_tokens(&self) -> Result<Vec<TokenRecord>> {
        let conn = &self.conn;
        let mut st = conn
            .prepare(&format!(
                "SELECT {TOKEN_COLS} FROM tokens ORDER BY created_ms, id"
            ))
            .map_err(q("listing tokens"))?;
        let rows = st
            .query_map([], token_row)
            .map_err(q("listing tokens"))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(q("listing tokens"))?;
        rows.into_iter().map(finish_token).collect()
    }

    /// Revokes a token and forgets the session credentials issued under it; `false` when
    /// there is no such token.
    pub fn revoke_token(&mut self, id: &str) -> Result<bool> {
        let tx = self.write_tx().map_err(q("revoking a token"))?;
        let n = tx
            .execute(
                "UPDATE tokens SET revoked_ms = COALESCE(revoked_ms, ?2) WHERE id = ?1",
                params![id, now_ms()],
            )
            .map_err(q("revoking a token"))?;
        tx.execute(
            "UPDATE servers SET session_sha256 = NULL, session_boot_id = NULL,
                session_token_id = NULL WHERE session_token_id = ?1",
            [id],
        )
        .map_err(q("revoking a token"))?;
        tx.commit().map_err(q("revoking a token"))?;
        Ok(n > 0)
    }

    /// The tokens not revoked, with their hashes and scopes.
    pub fn active_tokens(&self) -> Result<Vec<ActiveToken>> {
        let conn = &self.conn;
        let mut st = conn
            .prepare_cached(
                "SELECT id, sha256, scope, scope_value FROM tokens WHERE revoked_ms IS NULL",
            )
            .map_err(q("reading tokens"))?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?,
                ))
            })
            .map_err(q("reading tokens"))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(q("reading tokens"))?;
        rows.into_iter()
            .map(|(id, sha256, scope, value)| {
                Ok(ActiveToken {
                    id,
                    sha256,
                    scope: TokenScope::from_columns(&scope, value)?,
                })
            })
            .collect()
    }
}

impl Store {
    pub async fn create_token(
        &self,
        id: &str,
        name: &str,
        sha256_hex: &str,
        scope: TokenScope,
    ) -> Result<TokenRecord> {
        let (id, name, hash) = (id.to_owned(), name.to_owned(), sha256_hex.to_owned());
        self.write(move |db| db.create_token(&id, &name, &hash, &scope, None))
            .await
    }

    /// [`Db::rotate_token`].
    pub async fn rotate_token(
        &self,
        old_id: &str,
        new_id: &str,
        sha256_hex: &str,
    ) -> Result<Option<TokenRecord>> {
        let (old, new, hash) = (old_id.to_owned(), new_id.to_owned(), sha256_hex.to_owned());
        self.write(move |db| db.rotate_token(&old, &new, &hash))
            .await
    }

    pub async fn list_tokens(&self) -> Result<Vec<TokenRecord>> {
        self.read(|db| db.list_tokens()).await
    }

    /// Revokes a token; `false` when there is no such token.
    pub async fn revoke_token(&self, id: &str) -> Result<bool> {
        let id = id.to_owned();
        self.write(move |db| db.revoke_token(&id)).await
    }

    /// The tokens not revoked.
    pub async fn active_tokens(&self) -> Result<Vec<ActiveToken>> {
        self.read(|db| db.active_tokens()).await
    }
}
