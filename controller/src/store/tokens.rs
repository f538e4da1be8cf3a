//! Agent tokens, kept by their SHA-256 hash.

use super::{Db, Result, Store, now_ms, q};
use rusqlite::params;
use serde::{Deserialize, Serialize};

/// An agent token as listed (never the token itself).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub name: String,
    pub created_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_ms: Option<i64>,
}

impl Db {
    /// Stores a new agent token by its SHA-256 hash (lowercase hex).
    pub fn create_token(&self, id: &str, name: &str, sha256_hex: &str) -> Result<TokenRecord> {
        let created_ms = now_ms();
        self.conn
            .execute(
                "INSERT INTO tokens (id, name, sha256, created_ms) VALUES (?1, ?2, ?3, ?4)",
                params![id, name, sha256_hex, created_ms],
            )
            .map_err(q("storing a token"))?;
        Ok(TokenRecord {
            id: id.to_owned(),
            name: name.to_owned(),
            created_ms,
            revoked_ms: None,
        })
    }

    pub fn list_tokens(&self) -> Result<Vec<TokenRecord>> {
        let conn = &self.conn;
        let mut st = conn
            .prepare("SELECT id, name, created_ms, revoked_ms FROM tokens ORDER BY created_ms, id")
            .map_err(q("listing tokens"))?;
        let rows = st
            .query_map([], |r| {
                Ok(TokenRecord {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    created_ms: r.get(2)?,
                    revoked_ms: r.get(3)?,
                })
            })
            .map_err(q("listing tokens"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(q("listing tokens"))
    }

    /// Revokes a token; `false` when there is no such token.
    pub fn revoke_token(&self, id: &str) -> Result<bool> {
        let conn = &self.conn;
        let n = conn
            .execute(
                "UPDATE tokens SET revoked_ms = COALESCE(revoked_ms, ?2) WHERE id = ?1",
                params![id, now_ms()],
            )
            .map_err(q("revoking a token"))?;
        Ok(n > 0)
    }

    /// Hashes (hex) of the tokens not revoked.
    pub fn active_token_hashes(&self) -> Result<Vec<String>> {
        let conn = &self.conn;
        let mut st = conn
            .prepare_cached("SELECT sha256 FROM tokens WHERE revoked_ms IS NULL")
            .map_err(q("reading tokens"))?;
        let rows = st
            .query_map([], |r| r.get(0))
            .map_err(q("reading tokens"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(q("reading tokens"))
    }
}

impl Store {
    pub async fn create_token(
        &self,
        id: &str,
        name: &str,
        sha256_hex: &str,
    ) -> Result<TokenRecord> {
        let (id, name, hash) = (id.to_owned(), name.to_owned(), sha256_hex.to_owned());
        self.write(move |db| db.create_token(&id, &name, &hash))
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

    /// Hashes (hex) of the tokens not revoked.
    pub async fn active_token_hashes(&self) -> Result<Vec<String>> {
        self.read(|db| db.active_token_hashes()).await
    }
}
