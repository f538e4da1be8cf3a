//! Out-of-band control over Redfish (DMTF DSP0266): the HTTPS client with per-BMC trust
//! (`client`, `trust`), the resources it reads (`types`) and the operations (`ops`). The
//! serial console is IPMI-only (SOL); Redfish BMCs are driven for power, boot override,
//! BMC reset, identify, virtual media and the out-of-band inventory.

pub mod client;
pub mod ops;
pub mod trust;
pub mod types;

#[cfg(test)]
mod tests;

pub use client::Client;
pub use ops::OobInventory;

use super::{BmcIdentity, BmcTarget, OobAction, OobError, OobOutcome};

/// Logs in with the target's credentials.
async fn login(target: &BmcTarget) -> Result<Client, OobError> {
    let mut c = Client::new(target)?;
    c.login().await?;
    Ok(c)
}

/// Runs one action in its own session (opened, used, deleted).
pub async fn perform(target: &BmcTarget, action: &OobAction) -> Result<OobOutcome, OobError> {
    let mut c = login(target).await?;
    let r = ops::run(&mut c, action).await;
    c.close().await;
    r
}

/// Logs in with the target's credentials and reads who the BMC is.
pub async fn verify(target: &BmcTarget) -> Result<BmcIdentity, OobError> {
    let mut c = login(target).await?;
    let r = ops::identify_bmc(&mut c).await;
    c.close().await;
    r
}

/// Reads the out-of-band inventory.
pub async fn inventory(target: &BmcTarget) -> Result<OobInventory, OobError> {
    let mut c = login(target).await?;
    let r = ops::inventory(&mut c).await;
    c.close().await;
    r
}

/// Inserts `url` into the CD virtual media and sets a one-time UEFI boot from it.
pub async fn boot_from_media(target: &BmcTarget, url: &str) -> Result<OobOutcome, OobError> {
    let action = OobAction::BootFromMedia {
        url: url.to_owned(),
    };
    perform(target, &action).await
}

/// Ejects the CD virtual media.
pub async fn eject_media(target: &BmcTarget) -> Result<(), OobError> {
    perform(target, &OobAction::EjectMedia).await.map(|_| ())
}

/// Whether `host:port` answers a Redfish service root over HTTPS (an untrusted certificate
/// counts: a TLS service that is there). Used to probe a bare `--bmc HOST`.
pub async fn probe(target: &BmcTarget) -> Result<bool, OobError> {
    let mut c = Client::new(target)?;
    c.attempts = 1;
    match c.service_root().await {
        Ok(_) => Ok(true),
        Err(e @ OobError::Untrusted { .. }) => Err(e),
        Err(_) => Ok(false),
    }
}
