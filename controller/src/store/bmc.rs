//! The BMC table (seed 004): where a server's BMC is and credentials that work.

use super::{Db, Result, Store, StoreError, now_ms, q};
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

/// A server's BMC as seed 004's BMC table keeps it: where it is and credentials that work.
/// The password is stored for the controller's own out-of-band use and never listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BmcRecord {
    pub server_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    pub username: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<i64>,
    /// How the credentials were obtained: `in_band` (the agent set them), `operator`
    /// (`molar server add`, `molar bmc set`) or `rotated` (`molar bmc rotate` over LAN).
    pub source: String,
    pub updated_ms: i64,
    /// Where the controller reaches the BMC when it is not `ip` (an operator's address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub protocol: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_ipmi15: bool,
    /// The RMCP+ cipher suite of the last session that worked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cipher_suite: Option<u8>,
    /// Get System GUID as the BMC reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_guid: Option<String>,
    /// When a session with these credentials last worked (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_ms: Option<i64>,
    /// Why the last session check failed; `None` when it worked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_error: Option<String>,
    /// When the credentials were last checked, working or not (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checked_ms: Option<i64>,
    /// A rotation set a new password that is not confirmed yet (kept sealed beside the
    /// current one until a session proves which works).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rotation_pending: bool,
    /// Redfish: the pinned fingerprint of the BMC's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_fingerprint: Option<String>,
    /// Redfish: the BMC's certificate is checked against an operator's CA.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tls_ca: bool,
    /// Redfish: the BMC's certificate is not checked (`--bmc-insecure`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tls_insecure: bool,
    /// Hardware details read through the BMC (`source` says how), beside the agent's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oob_inventory: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oob_inventory_ms: Option<i64>,
}

/// What is stored for a BMC.
#[derive(Debug, Clone)]
pub struct BmcCredentials {
    pub mac: Option<String>,
    pub ip: Option<String>,
    pub username: String,
    pub password: molar_protocol::Secret,
    pub user_id: Option<i64>,
    pub source: String,
}

impl Db {
    /// Stores (or replaces) the server's BMC entry.
    pub fn set_bmc(&self, server_id: &str, c: &BmcCredentials) -> Result<()> {
        let sealed = self.key.seal(server_id, c.password.expose())?;
        self.conn
            .execute(
                "INSERT INTO bmcs (server_id, mac, ip, username, password_sealed, user_id, source,
                    updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT(server_id) DO UPDATE SET mac = excluded.mac, ip = excluded.ip,
                   username = excluded.username, password_sealed = excluded.password_sealed,
                   user_id = excluded.user_id, source = excluded.source,
                   updated_ms = excluded.updated_ms",
                params![
                    server_id,
                    c.mac,
                    c.ip,
                    c.username,
                    sealed,
                    c.user_id,
                    c.source,
                    now_ms()
                ],
            )
            .map_err(q("storing a BMC"))?;
        Ok(())
    }

    /// The server's BMC entry, without its password.
    pub fn bmc(&self, server_id: &str) -> Result<Option<BmcRecord>> {
        Ok(self.bmcs_where("WHERE server_id = ?1", [server_id])?.pop())
    }

    /// Every BMC entry, without passwords, by server id.
    pub fn bmcs(&self) -> Result<Vec<BmcRecord>> {
        self.bmcs_where("ORDER BY server_id", [])
    }

    fn bmcs_where(&self, clause: &str, p: impl rusqlite::Params) -> Result<Vec<BmcRecord>> {
        let what = "reading BMC entries";
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT server_id, mac, ip, username, user_id, source, updated_ms, host, port,
                    protocol, allow_ipmi15, cipher_suite, system_guid, verified_ms, verify_error,
                    tls_fingerprint, tls_ca_pem IS NOT NULL, tls_insecure, oob_inventory,
                    oob_inventory_ms, checked_ms, pending_sealed IS NOT NULL
                 FROM bmcs {clause}"
            ))
            .map_err(q(what))?;
        stmt.query_map(p, |r| {
            Ok(BmcRecord {
                server_id: r.get(0)?,
                mac: r.get(1)?,
                ip: r.get(2)?,
                username: r.get(3)?,
                user_id: r.get(4)?,
                source: r.get(5)?,
                updated_ms: r.get(6)?,
                host: r.get(7)?,
                port: r.get(8)?,
                protocol: r.get(9)?,
                allow_ipmi15: r.get::<_, i64>(10)? != 0,
                cipher_suite: r.get(11)?,
                system_guid: r.get(12)?,
                verified_ms: r.get(13)?,
                verify_error: r.get(14)?,
                tls_fingerprint: r.get(15)?,
                tls_ca: r.get(16)?,
                tls_insecure: r.get(17)?,
                oob_inventory: r
                    .get::<_, Option<String>>(18)?
                    .and_then(|j| serde_json::from_str(&j).ok()),
                oob_inventory_ms: r.get(19)?,
                checked_ms: r.get(20)?,
                rotation_pending: r.get(21)?,
            })
        })
        .map_err(q(what))?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(q(what))
    }

    /// The stored BMC password, for the controller's out-of-band use only.
    pub fn bmc_password(&self, server_id: &str) -> Result<Option<molar_protocol::Secret>> {
        let p: Option<String> = self
            .conn
            .query_row(
                "SELECT password_sealed FROM bmcs WHERE server_id = ?1",
                [server_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(q("reading a BMC password"))?;
        p.map(|p| self.key.open(server_id, &p)).transpose()
    }

    /// Refuses a key that does not open every stored password (a wrong or replaced key
    /// file): the controller stops before anything is overwritten.
    pub fn check_bmc_key(&self) -> Result<()> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT server_id, password_sealed FROM bmcs
                 UNION ALL SELECT server_id, pending_sealed FROM bmcs
                    WHERE pending_sealed IS NOT NULL",
            )
            .map_err(q("checking BMC passwords"))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(q("checking BMC passwords"))?;
        for row in rows {
            let (id, sealed) = row.map_err(q("checking BMC passwords"))?;
            self.key.open(&id, &sealed)?;
        }
        Ok(())
    }

    /// Sets where the server's BMC is reached (an operator's `HOST[:PORT]`); `false` when
    /// the server has no BMC entry.
    pub fn set_bmc_endpoint(&self, server_id: &str, host: &str, port: u16) -> Result<bool> {
        let n = self
            .conn
            .execute(
                "UPDATE bmcs SET host = ?2, port = ?3, updated_ms = ?4 WHERE server_id = ?1",
                params![server_id, host, port, now_ms()],
            )
            .map_err(q("setting a BMC address"))?;
        Ok(n > 0)
    }

    /// Where and how the controller reaches the server's BMC out-of-band: `host` and `port`
    /// when set (an operator's entry), else the address the agent reported (`ip`) on the
    /// IPMI port; `None` without a BMC entry or without any address.
    pub fn bmc_target(&self, server_id: &str) -> Result<Option<crate::oob::BmcTarget>> {
        struct Row {
            host: Option<String>,
            port: Option<i64>,
            ip: Option<String>,
            username: String,
            password: String,
            allow_ipmi15: bool,
            protocol: String,
            ca: Option<String>,
            fingerprint: Option<String>,
            insecure: bool,
        }
        let row: Option<Row> = self
            .conn
            .query_row(
                "SELECT host, port, ip, username, password_sealed, allow_ipmi15, protocol, tls_ca_pem,
                    tls_fingerprint, tls_insecure
                 FROM bmcs WHERE server_id = ?1",
                [server_id],
                |r| {
                    Ok(Row {
                        host: r.get(0)?,
                        port: r.get(1)?,
                        ip: r.get(2)?,
                        username: r.get(3)?,
                        password: r.get(4)?,
                        allow_ipmi15: r.get(5)?,
                        protocol: r.get(6)?,
                        ca: r.get(7)?,
                        fingerprint: r.get(8)?,
                        insecure: r.get(9)?,
                    })
                },
            )
            .optional()
            .map_err(q("reading a BMC target"))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let protocol =
            crate::oob::BmcProtocol::parse(&row.protocol).ok_or_else(|| StoreError::Corrupt {
                what: "BMC protocol",
                msg: format!("{:?} is not ipmi or redfish", row.protocol),
            })?;
        let trust = match (row.ca, row.fingerprint, row.insecure) {
            (Some(pem), _, _) => Some(crate::oob::BmcTrust::Ca(pem)),
            (None, Some(f), _) => Some(crate::oob::BmcTrust::Fingerprint(f)),
            (None, None, true) => Some(crate::oob::BmcTrust::Insecure),
            (None, None, false) => None,
        };
        let (username, password, allow_ipmi15) = (row.username, row.password, row.allow_ipmi15);
        let Some(host) = row
            .host
            .filter(|h| !h.is_empty())
            .or(row.ip.filter(|i| !i.is_empty()))
        else {
            return Ok(None);
        };
        let port =
            match row.port {
                None => protocol.default_port(),
                Some(p) => u16::try_from(p).ok().filter(|p| *p != 0).ok_or_else(|| {
                    StoreError::Corrupt {
                        what: "BMC port",
                        msg: format!("{p} is not a port"),
                    }
                })?,
            };
        Ok(Some(crate::oob::BmcTarget {
            host,
            port,
            username,
            password: self.key.open(server_id, &password)?,
            allow_ipmi15,
            protocol,
            trust,
        }))
    }
}
impl Db {
    /// Stores the out-of-band inventory read through the server's BMC; `false` without a
    /// BMC entry.
    pub fn set_oob_inventory(
        &self,
        server_id: &str,
        inv: &crate::oob::redfish::OobInventory,
    ) -> Result<bool> {
        let json = serde_json::to_string(inv).map_err(|e| StoreError::Corrupt {
            what: "out-of-band inventory",
            msg: e.to_string(),
        })?;
        let n = self
            .conn
            .execute(
                "UPDATE bmcs SET oob_inventory = ?2, oob_inventory_ms = ?3 WHERE server_id = ?1",
                params![server_id, json, now_ms()],
            )
            .map_err(q("storing an out-of-band inventory"))?;
        Ok(n > 0)
    }

    /// Servers whose IPMI BMC is at an address an operator gave (enrolled), for the console
    /// capture.
    pub fn servers_with_bmc_host(&self) -> Result<Vec<String>> {
        let mut stmt = self
            .conn
            // The capture reads serial over LAN: IPMI BMCs only.
            .prepare(
                "SELECT server_id FROM bmcs WHERE host IS NOT NULL AND protocol = 'ipmi'
                 ORDER BY server_id",
            )
            .map_err(q("listing BMCs with an address"))?;
        let rows = stmt
            .query_map([], |r| r.get(0))
            .map_err(q("listing BMCs with an address"))?;
        rows.collect::<rusqlite::Result<Vec<String>>>()
            .map_err(q("listing BMCs with an address"))
    }
}

impl Store {
    /// See [`Db::set_oob_inventory`].
    pub async fn set_oob_inventory(
        &self,
        server_id: &str,
        inv: crate::oob::redfish::OobInventory,
    ) -> Result<bool> {
        let id = server_id.to_owned();
        self.write(move |db| db.set_oob_inventory(&id, &inv)).await
    }

    /// See [`Db::servers_with_bmc_host`].
    pub async fn servers_with_bmc_host(&self) -> Result<Vec<String>> {
        self.read(|db| db.servers_with_bmc_host()).await
    }

    /// Stores (or replaces) the server's BMC entry.
    pub async fn set_bmc(&self, server_id: &str, c: BmcCredentials) -> Result<()> {
        let id = server_id.to_owned();
        self.write(move |db| db.set_bmc(&id, &c)).await
    }

    /// [`Db::bmcs`].
    pub async fn bmcs(&self) -> Result<Vec<BmcRecord>> {
        self.read(|db| db.bmcs()).await
    }

    /// The server's BMC entry, without its password.
    pub async fn bmc(&self, server_id: &str) -> Result<Option<BmcRecord>> {
        let id = server_id.to_owned();
        self.read(move |db| db.bmc(&id)).await
    }

    /// The stored BMC password, for the controller's out-of-band use only.
    pub async fn bmc_password(&self, server_id: &str) -> Result<Option<molar_protocol::Secret>> {
        let id = server_id.to_owned();
        self.read(move |db| db.bmc_password(&id)).await
    }

    /// See [`Db::set_bmc_endpoint`].
    pub async fn set_bmc_endpoint(&self, server_id: &str, host: &str, port: u16) -> Result<bool> {
        let (id, host) = (server_id.to_owned(), host.to_owned());
        self.write(move |db| db.set_bmc_endpoint(&id, &host, port))
            .await
    }

    /// See [`Db::bmc_target`].
    pub async fn bmc_target(&self, server_id: &str) -> Result<Option<crate::oob::BmcTarget>> {
        let id = server_id.to_owned();
        self.read(move |db| db.bmc_target(&id)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::*;

    #[test]
    fn the_bmc_table_keeps_credentials_and_lists_them_without_the_password() {
        let mut s = Db::open_in_memory().unwrap();
        s.register(
            &reg("uuid:u"),
            &grant(),
            &mut || "srv-1".into(),
            "127.0.0.1:1",
        )
        .unwrap();
        assert_eq!(s.bmc("srv-1").unwrap(), None);
        let c = BmcCredentials {
            mac: Some("52:54:00:be:ef:01".into()),
            ip: Some("192.0.2.10".into()),
            username: "molar".into(),
            password: molar_protocol::Secret::new("Zq8-secret-pw"),
            user_id: Some(3),
            source: "in_band".into(),
        };
        s.set_bmc("srv-1", &c).unwrap();
        s.set_bmc(
            "srv-1",
            &BmcCredentials {
                password: molar_protocol::Secret::new("second-pw"),
                ..c.clone()
            },
        )
        .unwrap();
        let rec = s.bmc("srv-1").unwrap().unwrap();
        assert_eq!(rec.mac.as_deref(), Some("52:54:00:be:ef:01"));
        assert_eq!(rec.username, "molar");
        assert_eq!(rec.user_id, Some(3));
        let listed = serde_json::to_string(&rec).unwrap();
        assert!(!listed.contains("pw"), "{listed}");
        assert_eq!(
            s.bmc_password("srv-1").unwrap().unwrap().expose(),
            "second-pw"
        );
        // A BMC for a server that does not exist is refused by the foreign key.
        assert!(s.set_bmc("srv-nope", &c).is_err());

        // The agent's address on the IPMI port, until an operator's host and port are set.
        let t = s.bmc_target("srv-1").unwrap().unwrap();
        assert_eq!(
            (t.addr(), t.username.as_str()),
            ("192.0.2.10:623".into(), "molar")
        );
        assert_eq!(t.password.expose(), "second-pw");
        assert!(!format!("{t:?}").contains("second-pw"));
        assert!(s.set_bmc_endpoint("srv-1", "127.0.0.1", 9623).unwrap());
        assert!(!s.set_bmc_endpoint("srv-nope", "127.0.0.1", 9623).unwrap());
        assert_eq!(
            s.bmc_target("srv-1").unwrap().unwrap().addr(),
            "127.0.0.1:9623"
        );
        s.conn
            .execute("UPDATE bmcs SET host = NULL, ip = NULL", [])
            .unwrap();
        assert!(s.bmc_target("srv-1").unwrap().is_none());
        assert!(s.bmc_target("srv-nope").unwrap().is_none());
    }
}
