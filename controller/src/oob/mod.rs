//! Out-of-band control: the controller reaching a server through its BMC, also when the
//! server is off or no agent runs on it. The vocabulary of actions is the protocol's own
//! (`molar_protocol::bmc::{PowerAction, BootDevice, ChassisStatus}`), so an action means the
//! same whether it travels in-band through the agent or out-of-band to the BMC.

use molar_protocol::Secret;

pub mod lan;
pub mod ops;
pub mod redfish;

pub use lan::{LanOptions, LanSession};

/// The IPMI-over-LAN port (RMCP, UDP).
pub const IPMI_LAN_PORT: u16 = 623;

/// The default HTTPS port of a Redfish service.
pub const REDFISH_PORT: u16 = 443;

/// The protocol a BMC is driven with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BmcProtocol {
    #[default]
    Ipmi,
    Redfish,
}

impl BmcProtocol {
    /// The name stored in the BMC table and shown to operators.
    pub fn as_str(self) -> &'static str {
        match self {
            BmcProtocol::Ipmi => "ipmi",
            BmcProtocol::Redfish => "redfish",
        }
    }

    pub fn parse(s: &str) -> Option<BmcProtocol> {
        match s {
            "ipmi" => Some(BmcProtocol::Ipmi),
            "redfish" => Some(BmcProtocol::Redfish),
            _ => None,
        }
    }

    pub fn default_port(self) -> u16 {
        match self {
            BmcProtocol::Ipmi => IPMI_LAN_PORT,
            BmcProtocol::Redfish => REDFISH_PORT,
        }
    }
}

/// How the controller trusts a Redfish BMC's HTTPS certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BmcTrust {
    /// PEM certificates of the CA that signed the BMC's certificate.
    Ca(String),
    /// `sha256:<hex>` of the BMC's own certificate (self-signed BMCs).
    Fingerprint(String),
    /// No verification (labs only; the operator said `--bmc-insecure`).
    Insecure,
}

/// Where a BMC is and how the controller logs in to it, from the BMC table.
#[derive(Debug, Clone)]
pub struct BmcTarget {
    /// An IP address or a name the controller resolves.
    pub host: String,
    pub port: u16,
    pub username: String,
    /// Never shown: `Secret` redacts itself in `Debug` and `Display`.
    pub password: Secret,
    /// IPMI 1.5 sessions (MD5 / straight password) are used only when this is set.
    pub allow_ipmi15: bool,
    pub protocol: BmcProtocol,
    /// Redfish only; `None` refuses every certificate (showing its fingerprint).
    pub trust: Option<BmcTrust>,
}

impl BmcTarget {
    /// `host:port`, the way errors and logs name a BMC (never with credentials).
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// A power change (IPMI Chassis Control, 28.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerChange {
    On,
    Off,
    /// ACPI soft shutdown request to the operating system.
    Soft,
    Cycle,
    /// Hard reset.
    Reset,
}

/// The device the next boot uses (IPMI boot flags, parameter 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BootTarget {
    /// Clear any override: the firmware's own boot order.
    None,
    Pxe,
    Disk,
    Bios,
    Cdrom,
}

/// One thing the controller asks a BMC to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OobAction {
    PowerStatus,
    Power(PowerChange),
    BootDevice {
        device: BootTarget,
        persistent: bool,
        efi: bool,
    },
    /// BMC cold reset.
    BmcReset,
    /// Chassis identify: `Some(0)` turns it off, `None` is the BMC's default interval.
    Identify {
        seconds: Option<u8>,
    },
    /// Redfish only: insert the image at `url` as virtual CD and boot from it once (UEFI).
    BootFromMedia {
        url: String,
    },
    /// Redfish only: eject the virtual CD.
    EjectMedia,
}

/// What a BMC answered to an action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OobOutcome {
    /// One line for an operator, seed 000's style: "server power state set successful: off".
    pub message: String,
    /// The chassis power state when the action read or changed it.
    pub power_on: Option<bool>,
}

/// What a verifying session learnt about a BMC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BmcIdentity {
    /// The RMCP+ cipher suite the session used (17 or 3), or 0 for IPMI 1.5; `None` over
    /// Redfish.
    pub cipher_suite: Option<u8>,
    /// Get System GUID (22.14) as a lowercase hyphenated UUID, when the BMC answers it.
    pub system_guid: Option<String>,
    /// The BMC's firmware (`major.minor`) from Get Device ID.
    pub firmware_version: Option<String>,
    /// The MAC address of the LAN channel the session came in on (LAN configuration
    /// parameter 5), lowercase `aa:bb:..`: how an agent's `bmc.info` is matched to it.
    pub mac: Option<String>,
}

/// Why an out-of-band operation failed. Messages name the BMC by address and never carry a
/// credential.
#[derive(Debug, thiserror::Error)]
pub enum OobError {
    #[error("BMC {addr}: no answer after {attempts} attempts")]
    Unreachable { addr: String, attempts: u32 },
    #[error("BMC {addr}: login refused: {reason}")]
    Auth { addr: String, reason: String },
    #[error("BMC {addr}: {command} refused: {completion}")]
    Refused {
        addr: String,
        command: String,
        completion: String,
    },
    #[error("BMC {addr}: {detail}")]
    Protocol { addr: String, detail: String },
    #[error(
        "BMC {addr}: its HTTPS certificate {fingerprint} is not trusted; if that is the \
         BMC's certificate, pin it with --bmc-fingerprint {fingerprint} (or give --bmc-ca FILE)"
    )]
    Untrusted { addr: String, fingerprint: String },
    #[error("BMC {addr}: {what} needs a Redfish BMC; this one speaks IPMI")]
    RedfishOnly { addr: String, what: String },
    #[error("BMC {addr}: {what} is IPMI only (serial over LAN); this BMC speaks Redfish")]
    IpmiOnly { addr: String, what: String },
    #[error("BMC {addr}: {source}")]
    Io {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// Runs one action on a BMC in its own session (opened, used, closed).
pub async fn perform(target: &BmcTarget, action: &OobAction) -> Result<OobOutcome, OobError> {
    if target.protocol == BmcProtocol::Redfish {
        return redfish::perform(target, action).await;
    }
    let target = target.clone();
    let action = action.clone();
    let addr = target.addr();
    blocking(&addr, move || {
        let mut s = LanSession::open(&target, LanOptions::default())?;
        let r = ops::run(&mut s, &target.addr(), &action);
        // After a cold reset the BMC has forgotten the session: closing it cannot succeed.
        if action == OobAction::BmcReset {
            s.abandon();
        } else if let Err(e) = s.close() {
            tracing::debug!(bmc = %target.addr(), error = %e, "closing the BMC session");
        }
        r
    })
    .await
}

/// Opens a session with the target's credentials and reads who the BMC is: the check
/// `molar server add` makes before storing anything.
pub async fn verify(target: &BmcTarget) -> Result<BmcIdentity, OobError> {
    if target.protocol == BmcProtocol::Redfish {
        return redfish::verify(target).await;
    }
    let target = target.clone();
    let addr = target.addr();
    blocking(&addr, move || {
        let mut s = LanSession::open(&target, LanOptions::default())?;
        let suite = s.cipher_suite();
        let r = ops::identify_bmc(&mut s, &target.addr(), suite);
        let _ = s.close();
        r
    })
    .await
}

/// Sets a new password for the target's own user over LAN, in a session opened with the
/// current one (`molar bmc rotate` when no agent is connected); returns the user id. IPMI
/// only: a Redfish BMC's accounts are rotated in-band.
pub async fn set_password(
    target: &BmcTarget,
    user_id: Option<u8>,
    password: &Secret,
) -> Result<u8, OobError> {
    if target.protocol == BmcProtocol::Redfish {
        return Err(OobError::Protocol {
            addr: target.addr(),
            detail: "rotating a password over Redfish is not supported: rotate it in-band, \
                     while the server runs the ramdisk"
                .into(),
        });
    }
    let target = target.clone();
    let password = password.clone();
    let addr = target.addr();
    blocking(&addr, move || {
        let mut s = LanSession::open(&target, LanOptions::default())?;
        let r = ops::set_own_password(
            &mut s,
            &target.addr(),
            &target.username,
            user_id,
            password.expose().as_bytes(),
        );
        let _ = s.close();
        r
    })
    .await
}

/// Runs blocking BMC I/O off the async workers.
async fn blocking<T: Send + 'static>(
    addr: &str,
    f: impl FnOnce() -> Result<T, OobError> + Send + 'static,
) -> Result<T, OobError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(OobError::Protocol {
            addr: addr.to_string(),
            detail: format!("the BMC task failed: {e}"),
        }),
    }
}
