//! Out-of-band control: the controller reaching a server through its BMC, also when the
//! server is off or no agent runs on it. The vocabulary of actions is the protocol's own
//! (`molar_protocol::bmc::{PowerAction, BootDevice, ChassisStatus}`), so an action means the
//! same whether it travels in-band through the agent or out-of-band to the BMC.

use molar_protocol::Secret;

/// The IPMI-over-LAN port (RMCP, UDP).
pub const IPMI_LAN_PORT: u16 = 623;

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
}
