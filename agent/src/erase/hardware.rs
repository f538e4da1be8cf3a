//! The hardware commands the erase steps send to one device, behind a narrow trait: the
//! real implementation calls `crate::hw` (the only place that issues ioctls), the recording
//! fake (tests only) records every call and answers from a script, so the ATA password
//! sequence, the sanitize poll and cancellation are tested without hardware.

use std::fs::File;
use std::time::Duration;

use crate::hw::ata::{self, AtaError, IdentifyDevice, Password};
use crate::hw::block::{self, BlockError};
use crate::hw::nvme::{self, NvmeError, SanitizeAction, SanitizeStatus, SecureEraseSetting};

/// A block-layer range operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RangeOp {
    Discard,
    SecureDiscard,
    ZeroOut,
}

/// What the erase steps ask of one device.
pub(crate) trait EraseHardware: Sync {
    fn nvme_format(&self, nsid: u32, lbaf: u8, ses: SecureEraseSetting) -> Result<(), NvmeError>;
    fn nvme_sanitize(&self, action: SanitizeAction, ause: bool) -> Result<(), NvmeError>;
    fn nvme_sanitize_status(&self) -> Result<SanitizeStatus, NvmeError>;
    fn ata_identify(&self) -> Result<IdentifyDevice, AtaError>;
    fn ata_set_password(&self, pw: &Password) -> Result<(), AtaError>;
    fn ata_erase_prepare(&self) -> Result<(), AtaError>;
    fn ata_erase_unit(
        &self,
        pw: &Password,
        enhanced: bool,
        timeout: Duration,
    ) -> Result<(), AtaError>;
    fn ata_unlock(&self, pw: &Password) -> Result<(), AtaError>;
    fn ata_disable_password(&self, pw: &Password) -> Result<(), AtaError>;
    fn block_range(&self, op: RangeOp, offset: u64, len: u64) -> Result<(), BlockError>;
    fn flush_buffers(&self) -> Result<(), BlockError>;
}

/// The device behind an open file, through `crate::hw`.
pub(crate) struct Device<'a>(pub(crate) &'a File);

impl EraseHardware for Device<'_> {
    fn nvme_format(&self, nsid: u32, lbaf: u8, ses: SecureEraseSetting) -> Result<(), NvmeError> {
        nvme::format_nvm(self.0, nsid, lbaf, ses)
    }
    fn nvme_sanitize(&self, action: SanitizeAction, ause: bool) -> Result<(), NvmeError> {
        nvme::sanitize(self.0, action, ause)
    }
    fn nvme_sanitize_status(&self) -> Result<SanitizeStatus, NvmeError> {
        nvme::sanitize_status(self.0)
    }
    fn ata_identify(&self) -> Result<IdentifyDevice, AtaError> {
        ata::identify(self.0)
    }
    fn ata_set_password(&self, pw: &Password) -> Result<(), AtaError> {
        ata::security_set_password(self.0, pw)
    }
    fn ata_erase_prepare(&self) -> Result<(), AtaError> {
        ata::security_erase_prepare(self.0)
    }
    fn ata_erase_unit(
        &self,
        pw: &Password,
        enhanced: bool,
        timeout: Duration,
    ) -> Result<(), AtaError> {
        ata::security_erase_unit(self.0, pw, enhanced, timeout)
    }
    fn ata_unlock(&self, pw: &Password) -> Result<(), AtaError> {
        ata::security_unlock(self.0, pw)
    }
    fn ata_disable_password(&self, pw: &Password) -> Result<(), AtaError> {
        ata::security_disable_password(self.0, pw)
    }
    fn block_range(&self, op: RangeOp, offset: u64, len: u64) -> Result<(), BlockError> {
        match op {
            RangeOp::Discard => block::discard(self.0, offset, len),
            RangeOp::SecureDiscard => block::secure_discard(self.0, offset, len),
            RangeOp::ZeroOut => block::zero_out(self.0, offset, len),
        }
    }
    fn flush_buffers(&self) -> Result<(), BlockError> {
        block::flush_buffers(self.0)
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! A recording fake: every call is appended to [`Recording::calls`]; identify and
    //! sanitize-status answers come from queues (the last answer repeats); any call listed
    //! in `fail` fails with a typed error; `on_call` runs after recording (to cancel
    //! mid-sequence).

    use std::collections::VecDeque;
    use std::sync::Mutex;

    use super::*;
    use crate::hw::ata::Sense;
    use crate::hw::nvme::SanitizeState;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Call {
        NvmeFormat(SecureEraseSetting),
        NvmeSanitize(SanitizeAction),
        SanitizeStatus,
        AtaIdentify,
        AtaSetPassword,
        AtaErasePrepare,
        AtaEraseUnit { enhanced: bool },
        AtaUnlock,
        AtaDisablePassword,
        Range(RangeOp),
        FlushBuffers,
    }

    #[derive(Default)]
    pub(crate) struct Recording {
        pub(crate) calls: Mutex<Vec<Call>>,
        pub(crate) identify: Mutex<VecDeque<IdentifyDevice>>,
        pub(crate) status: Mutex<VecDeque<SanitizeStatus>>,
        pub(crate) fail: Vec<Call>,
        #[allow(clippy::type_complexity)]
        pub(crate) on_call: Option<Box<dyn Fn(Call) + Send + Sync>>,
    }

    /// An ATA drive with the security feature set, enabled or not.
    pub(crate) fn ata_identify(enabled: bool) -> IdentifyDevice {
        IdentifyDevice {
            model: "FAKE SSD".into(),
            serial: "F1".into(),
            firmware: "1".into(),
            sectors: 2048,
            security_supported: true,
            security_enabled: enabled,
            security_locked: false,
            security_frozen: false,
            security_count_expired: false,
            enhanced_erase_supported: true,
            erase_time: None,
            enhanced_erase_time: None,
        }
    }

    pub(crate) fn sanitize_status(state: SanitizeState, sprog: u16, est: u32) -> SanitizeStatus {
        SanitizeStatus {
            sprog,
            state,
            overwrite_passes_done: 0,
            global_data_erased: false,
            scdw10: 0,
            est_overwrite: est,
            est_block: est,
            est_crypto: est,
        }
    }

    impl Recording {
        pub(crate) fn calls(&self) -> Vec<Call> {
            self.calls.lock().unwrap().clone()
        }
        fn record(&self, c: Call) -> bool {
            self.calls.lock().unwrap().push(c);
            if let Some(f) = &self.on_call {
                f(c);
            }
            self.fail.contains(&c)
        }
        fn next<T: Clone>(q: &Mutex<VecDeque<T>>) -> Option<T> {
            let mut q = q.lock().unwrap();
            if q.len() > 1 {
                q.pop_front()
            } else {
                q.front().cloned()
            }
        }
        fn ata(&self, c: Call, what: &'static str) -> Result<(), AtaError> {
            if self.record(c) {
                // Sense key 0x0b: ABORTED COMMAND, what a drive answers a refused command.
                return Err(AtaError::Sense {
                    what,
                    sense: Sense {
                        key: 0x0b,
                        ..Default::default()
                    },
                });
            }
            Ok(())
        }
        fn nvme(&self, c: Call, what: &'static str) -> Result<(), NvmeError> {
            if self.record(c) {
                return Err(NvmeError::Status { what, status: 0x4 });
            }
            Ok(())
        }
    }

    impl EraseHardware for Recording {
        fn nvme_format(
            &self,
            _nsid: u32,
            _lbaf: u8,
            ses: SecureEraseSetting,
        ) -> Result<(), NvmeError> {
            self.nvme(Call::NvmeFormat(ses), "format nvm")
        }
        fn nvme_sanitize(&self, action: SanitizeAction, _ause: bool) -> Result<(), NvmeError> {
            self.nvme(Call::NvmeSanitize(action), "sanitize")
        }
        fn nvme_sanitize_status(&self) -> Result<SanitizeStatus, NvmeError> {
            self.nvme(Call::SanitizeStatus, "get log page")?;
            Self::next(&self.status).ok_or(NvmeError::Data {
                what: "get log page",
            })
        }
        fn ata_identify(&self) -> Result<IdentifyDevice, AtaError> {
            self.ata(Call::AtaIdentify, "identify device")?;
            Self::next(&self.identify).ok_or(AtaError::Data {
                what: "identify device",
            })
        }
        fn ata_set_password(&self, _pw: &Password) -> Result<(), AtaError> {
            self.ata(Call::AtaSetPassword, "security set password")
        }
        fn ata_erase_prepare(&self) -> Result<(), AtaError> {
            self.ata(Call::AtaErasePrepare, "security erase prepare")
        }
        fn ata_erase_unit(
            &self,
            _pw: &Password,
            enhanced: bool,
            _timeout: Duration,
        ) -> Result<(), AtaError> {
            self.ata(Call::AtaEraseUnit { enhanced }, "security erase unit")
        }
        fn ata_unlock(&self, _pw: &Password) -> Result<(), AtaError> {
            self.ata(Call::AtaUnlock, "security unlock")
        }
        fn ata_disable_password(&self, _pw: &Password) -> Result<(), AtaError> {
            self.ata(Call::AtaDisablePassword, "security disable password")
        }
        fn block_range(&self, op: RangeOp, _offset: u64, _len: u64) -> Result<(), BlockError> {
            if self.record(Call::Range(op)) {
                return Err(BlockError::Ioctl {
                    what: "BLKDISCARD",
                    source: nix::Error::EOPNOTSUPP,
                });
            }
            Ok(())
        }
        fn flush_buffers(&self) -> Result<(), BlockError> {
            self.record(Call::FlushBuffers);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real implementation reaches the device: on a plain file every command fails
    /// with the kernel's answer, typed, instead of pretending to have worked.
    #[test]
    fn the_real_device_sends_real_commands() {
        let file = tempfile::tempfile().unwrap();
        let d = Device(&file);
        let e = d.block_range(RangeOp::Discard, 0, 4096).unwrap_err();
        assert_eq!(e.errno(), Some(nix::Error::ENOTTY));
        assert!(d.block_range(RangeOp::ZeroOut, 0, 4096).is_err());
        assert!(d.nvme_sanitize_status().unwrap_err().errno().is_some());
        assert!(d.ata_identify().unwrap_err().errno().is_some());
        assert!(d.flush_buffers().is_err());
    }
}
