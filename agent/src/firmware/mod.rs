//! Bringing firmware to known-good versions (`decom.firmware_secure`): [`plan`] decides per
//! inventory component (pure), then one module per update method does the work —
//! [`nvme`] (Firmware Image Download and Commit through the admin passthrough), [`payload`]
//! (a vendor archive with a static tool, run in a private directory with a timeout),
//! [`capsule`] (a UEFI capsule staged on the ESP or handed to the kernel's loader) — and
//! [`settings`] reads (and writes) UEFI variables through efivarfs.
//!
//! Every step that changes the machine is decided by [`crate::authority`]
//! (`Action::FirmwareUpdate`) before it starts; a dry run changes nothing and needs no
//! authority.

pub mod capsule;
pub mod nvme;
pub mod package;
pub mod payload;
pub mod plan;
pub mod settings;

/// Why one component's update failed: a stable code and the reason, naming the component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateError {
    pub code: &'static str,
    pub msg: String,
}

impl UpdateError {
    pub fn new(code: &'static str, msg: impl Into<String>) -> UpdateError {
        UpdateError {
            code,
            msg: msg.into(),
        }
    }
}

impl std::fmt::Display for UpdateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.msg)
    }
}

/// How an update that succeeded left the component.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Applied {
    /// The version read back afterwards, when one could be read.
    pub after: Option<String>,
    pub reboot: bool,
    pub power_cycle: bool,
    pub message: Option<String>,
}
