//! BMC passwords encrypted at rest: an AEAD key in the state directory (`bmc.key`, mode
//! 0600, never logged) seals each password with ChaCha20-Poly1305 under a random nonce, and
//! the server's id as associated data, so a copied database reveals nothing and a ciphertext
//! moved to another row does not open.

use super::{Result, StoreError};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use std::path::{Path, PathBuf};

/// The key file's name in the state directory.
pub const KEY_FILE: &str = "bmc.key";
/// What a sealed password starts with (the format's version).
const PREFIX: &str = "v1:";
const KEY_LEN: usize = 32;

/// The key that seals BMC passwords, and the file it came from (for errors).
pub struct BmcKey {
    key: LessSafeKey,
    path: PathBuf,
}

impl std::fmt::Debug for BmcKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BmcKey({})", self.path.display())
    }
}

fn key_err(path: &Path, msg: impl Into<String>) -> StoreError {
    StoreError::Key {
        path: path.to_owned(),
        msg: msg.into(),
    }
}

fn aad(server_id: &str) -> Vec<u8> {
    let mut a = b"molar bmc password\0".to_vec();
    a.extend_from_slice(server_id.as_bytes());
    a
}

impl BmcKey {
    fn from_bytes(bytes: &[u8; KEY_LEN], path: PathBuf) -> BmcKey {
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, bytes).expect("a 32-byte key");
        BmcKey {
            key: LessSafeKey::new(unbound),
            path,
        }
    }

    /// A fresh random key that lives in memory only (in-memory stores, tests).
    pub fn ephemeral() -> BmcKey {
        let mut b = [0u8; KEY_LEN];
        SystemRandom::new().fill(&mut b).expect("system randomness");
        BmcKey::from_bytes(&b, PathBuf::from("(in-memory key)"))
    }

    /// Reads `dir/bmc.key`; creates it (mode 0600) when missing and `may_create`. Refuses a
    /// file readable by others or not 64 hex digits.
    pub fn load(dir: &Path, may_create: bool) -> Result<BmcKey> {
        use std::io::Write;
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        let path = dir.join(KEY_FILE);
        match std::fs::metadata(&path) {
            Ok(m) => {
                if m.mode() & 0o077 != 0 {
                    return Err(key_err(
                        &path,
                        format!(
                            "mode {:o} is wider than 0600 (chmod 600 it)",
                            m.mode() & 0o777
                        ),
                    ));
                }
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| key_err(&path, format!("reading: {e}")))?;
                let bytes = hex::decode(text.trim())
                    .ok()
                    .and_then(|b| <[u8; KEY_LEN]>::try_from(b).ok())
                    .ok_or_else(|| key_err(&path, "malformed: not 64 hex digits"))?;
                Ok(BmcKey::from_bytes(&bytes, path))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !may_create {
                    return Err(key_err(
                        &path,
                        "missing, but the database holds encrypted BMC passwords: restore \
                         the key file",
                    ));
                }
                let mut b = [0u8; KEY_LEN];
                SystemRandom::new()
                    .fill(&mut b)
                    .map_err(|_| key_err(&path, "no system randomness"))?;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(|e| key_err(&path, format!("creating: {e}")))?;
                f.write_all(format!("{}\n", hex::encode(b)).as_bytes())
                    .and_then(|_| f.sync_all())
                    .map_err(|e| key_err(&path, format!("writing: {e}")))?;
                Ok(BmcKey::from_bytes(&b, path))
            }
            Err(e) => Err(key_err(&path, e.to_string())),
        }
    }

    /// The password sealed for `server_id`'s row.
    pub fn seal(&self, server_id: &str, password: &str) -> Result<String> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| key_err(&self.path, "no system randomness"))?;
        let mut buf = password.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(server_id)),
                &mut buf,
            )
            .map_err(|_| key_err(&self.path, "sealing failed"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(format!("{PREFIX}{}", hex::encode(out)))
    }

    /// Opens what [`BmcKey::seal`] sealed for `server_id`; an error names the key file
    /// (a wrong key, or a ciphertext from another row).
    pub fn open(&self, server_id: &str, sealed: &str) -> Result<molar_protocol::Secret> {
        let bad = |why: &str| {
            key_err(
                &self.path,
                format!("the BMC password of server {server_id} does not decrypt: {why}"),
            )
        };
        let raw = sealed
            .strip_prefix(PREFIX)
            .and_then(|h| hex::decode(h).ok())
            .filter(|r| r.len() >= NONCE_LEN + CHACHA20_POLY1305.tag_len())
            .ok_or_else(|| bad("not a sealed password"))?;
        let (nonce, ct) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| bad("bad nonce"))?;
        let mut buf = ct.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad(server_id)), &mut buf)
            .map_err(|_| bad("wrong key, or sealed for another server"))?;
        let text = String::from_utf8(plain.to_vec()).map_err(|_| bad("not UTF-8"))?;
        Ok(molar_protocol::Secret::new(text))
    }
}

/// Seals every clear-text password in place (the migration step that renamed the column);
/// runs inside that step's transaction.
pub(super) fn seal_clear(tx: &rusqlite::Transaction<'_>, key: &BmcKey) -> rusqlite::Result<()> {
    let rows: Vec<(String, String)> = {
        let mut stmt = tx.prepare("SELECT server_id, password_sealed FROM bmcs")?;
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?
    };
    for (id, clear) in rows {
        let sealed = key
            .seal(&id, &clear)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        tx.execute(
            "UPDATE bmcs SET password_sealed = ?2 WHERE server_id = ?1",
            rusqlite::params![id, sealed],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::*;
    use crate::store::{BmcCredentials, Db, MIGRATIONS, SEAL_STEP};
    use std::os::unix::fs::PermissionsExt;

    const PW: &str = "Sekr1t-bmc-pass-zq";

    fn creds(pw: &str) -> BmcCredentials {
        BmcCredentials {
            mac: None,
            ip: Some("10.0.0.9".into()),
            username: "molar".into(),
            password: molar_protocol::Secret::new(pw),
            user_id: Some(3),
            source: "in_band".into(),
        }
    }

    fn db_with_bmc(dir: &Path) -> Db {
        let mut db = Db::open(dir).unwrap();
        db.register(
            &reg("uuid:a"),
            &grant(),
            &mut || "srv-1".into(),
            "127.0.0.1:1",
        )
        .unwrap();
        db.set_bmc("srv-1", &creds(PW)).unwrap();
        db
    }

    fn raw(dir: &Path) -> String {
        rusqlite::Connection::open(dir.join("molar.db"))
            .unwrap()
            .query_row(
                "SELECT password_sealed FROM bmcs WHERE server_id = 'srv-1'",
                [],
                |r| r.get(0),
            )
            .unwrap()
    }

    fn contains(hay: &[u8], needle: &str) -> bool {
        hay.windows(needle.len()).any(|w| w == needle.as_bytes())
    }

    #[test]
    fn a_password_round_trips_under_a_fresh_nonce_and_only_for_its_own_server() {
        let k = BmcKey::ephemeral();
        let a = k.seal("srv-1", PW).unwrap();
        let b = k.seal("srv-1", PW).unwrap();
        assert_ne!(a, b, "each write takes a new nonce");
        assert!(!a.contains(PW));
        assert_eq!(k.open("srv-1", &a).unwrap().expose(), PW);
        let moved = k.open("srv-2", &a).unwrap_err().to_string();
        assert!(moved.contains("srv-2") && !moved.contains(PW), "{moved}");
        assert!(
            BmcKey::ephemeral().open("srv-1", &a).is_err(),
            "another key"
        );
        let mut tampered = a.clone();
        tampered.pop();
        tampered.push(if a.ends_with('0') { '1' } else { '0' });
        assert!(k.open("srv-1", &tampered).is_err());
        for junk in ["", "v1:", "v1:zz", PW, "v1:00"] {
            assert!(k.open("srv-1", junk).is_err(), "{junk:?}");
        }
    }

    #[test]
    fn the_key_file_is_created_0600_and_refused_when_wider_or_malformed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        BmcKey::load(dir.path(), true).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&path).unwrap().trim().len(), 64);
        BmcKey::load(dir.path(), false).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = BmcKey::load(dir.path(), true).unwrap_err().to_string();
        assert!(e.contains("bmc.key") && e.contains("640"), "{e}");
        std::fs::write(&path, "not hex\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = BmcKey::load(dir.path(), true).unwrap_err().to_string();
        assert!(e.contains("bmc.key") && e.contains("malformed"), "{e}");
        assert!(
            !e.contains("not hex"),
            "the key file's content is never shown: {e}"
        );
    }

    #[test]
    fn the_database_file_holds_no_password_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let db = db_with_bmc(dir.path());
        assert_eq!(db.bmc_password("srv-1").unwrap().unwrap().expose(), PW);
        drop(db);
        let mut found = Vec::new();
        for f in std::fs::read_dir(dir.path()).unwrap() {
            let f = f.unwrap();
            if f.file_name().to_string_lossy().starts_with("molar.db") {
                let bytes = std::fs::read(f.path()).unwrap();
                assert!(!bytes.is_empty() || f.file_name() != "molar.db");
                if contains(&bytes, PW) {
                    found.push(f.file_name());
                }
            }
        }
        assert!(found.is_empty(), "password bytes in {found:?}");
        assert!(raw(dir.path()).starts_with(PREFIX));
        let db = Db::open(dir.path()).unwrap();
        let t = db.bmc_target("srv-1").unwrap().unwrap();
        assert_eq!(t.password.expose(), PW);
    }

    #[test]
    fn the_migration_seals_clear_text_passwords_once() {
        let dir = tempfile::tempdir().unwrap();
        drop(db_with_bmc(dir.path()));
        // Back to the schema before the sealing step, with a clear-text password (the
        // steps after it undone too).
        let seal = MIGRATIONS.iter().position(|m| *m == SEAL_STEP).unwrap();
        let conn = rusqlite::Connection::open(dir.path().join("molar.db")).unwrap();
        conn.execute_batch(&format!(
            "ALTER TABLE bmcs DROP COLUMN pending_sealed;
             ALTER TABLE bmcs DROP COLUMN checked_ms;
             ALTER TABLE bmcs RENAME COLUMN password_sealed TO password;
             UPDATE bmcs SET password = '{PW}';
             PRAGMA user_version = {seal};"
        ))
        .unwrap();
        drop(conn);
        let db = Db::open(dir.path()).unwrap();
        assert_eq!(db.schema_version().unwrap(), MIGRATIONS.len() as i64);
        assert_eq!(db.bmc_password("srv-1").unwrap().unwrap().expose(), PW);
        let sealed = raw(dir.path());
        assert!(sealed.starts_with(PREFIX) && !sealed.contains(PW));
        drop(db);
        // Opening again does not seal the sealed text a second time.
        let db = Db::open(dir.path()).unwrap();
        assert_eq!(raw(dir.path()), sealed);
        assert_eq!(db.bmc_password("srv-1").unwrap().unwrap().expose(), PW);
    }

    #[test]
    fn a_wrong_or_missing_key_stops_the_store_and_overwrites_nothing() {
        let dir = tempfile::tempdir().unwrap();
        drop(db_with_bmc(dir.path()));
        let before = raw(dir.path());
        let path = dir.path().join(KEY_FILE);
        std::fs::write(&path, format!("{}\n", "ab".repeat(32))).unwrap();
        let e = Db::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(e.contains("does not decrypt") && !e.contains(PW), "{e}");
        assert_eq!(raw(dir.path()), before);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{}\n", "ab".repeat(32))
        );
        std::fs::remove_file(&path).unwrap();
        let e = Db::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("missing") && e.contains("bmc.key"), "{e}");
        assert!(!path.exists(), "a lost key is not replaced");
        assert_eq!(raw(dir.path()), before);
    }
}
