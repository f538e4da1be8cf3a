//! `bmc.reset`: Cold or Warm Reset of the BMC, then waiting until it answers again.

use std::time::{Duration, Instant};

use molar_ipmi::device;
use molar_protocol::bmc::{BmcResetResult, ResetKind};

use super::{BmcError, BmcTransport, CommandError};
use crate::hw::ipmi::IpmiError;

/// How long [`reset`] waits for the BMC to answer again, and how often it asks.
pub const RESET_WAIT: Duration = Duration::from_secs(90);
pub const RESET_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Resets the BMC and waits until it answers Get Device ID again. A lost answer to the reset
/// request itself is expected (the BMC may restart before replying) and is not an error.
pub fn reset<T: BmcTransport + ?Sized>(
    t: &mut T,
    kind: ResetKind,
) -> Result<BmcResetResult, BmcError> {
    reset_and_wait(t, kind, RESET_WAIT, RESET_POLL_INTERVAL)
}

pub fn reset_and_wait<T: BmcTransport + ?Sized>(
    t: &mut T,
    kind: ResetKind,
    wait: Duration,
    interval: Duration,
) -> Result<BmcResetResult, BmcError> {
    let (sent, name) = match kind {
        ResetKind::Cold => (device::cold_reset(t), "cold"),
        ResetKind::Warm => (device::warm_reset(t), "warm"),
    };
    match sent {
        Ok(())
        | Err(CommandError::Transport {
            source: IpmiError::Timeout { .. },
            ..
        }) => {}
        Err(e) => return Err(e.into()),
    }
    let start = Instant::now();
    loop {
        match device::get_device_id(t) {
            Ok(_) => return Ok(BmcResetResult { kind }),
            Err(e @ (CommandError::Completion { .. } | CommandError::Transport { .. }))
                if start.elapsed() < wait =>
            {
                if matches!(&e, CommandError::Transport { source, .. }
                    if !matches!(source, IpmiError::Timeout { .. }))
                {
                    return Err(e.into());
                }
                std::thread::sleep(interval);
            }
            Err(e) => {
                return Err(BmcError::NotBackAfterReset {
                    kind: name,
                    waited: start.elapsed(),
                    last: Box::new(e.into()),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use molar_ipmi::Command;

    use super::super::fake::{FakeBmc, timeout};
    use super::*;

    #[test]
    fn reset_waits_for_the_bmc_to_answer_again() {
        let dev_id = [
            0x00, 0x20, 0x81, 0x09, 0x08, 0x02, 0xBF, 0x91, 0x12, 0x00, 0x02, 0x0F,
        ];
        // Cold reset answered with a lost response (timeout), then the BMC is initializing
        // (0xD2), then it answers.
        let mut bmc = FakeBmc::new()
            .expect_err(Command::ColdReset, &[], timeout)
            .expect(Command::GetDeviceId, &[], &[0xD2])
            .expect(Command::GetDeviceId, &[], &dev_id);
        let r = reset_and_wait(
            &mut bmc,
            ResetKind::Cold,
            Duration::from_secs(5),
            Duration::ZERO,
        )
        .unwrap();
        bmc.done();
        assert_eq!(r.kind, ResetKind::Cold);
        assert_eq!(bmc.once, vec![(0x06, 0x02)]);

        let mut bmc = FakeBmc::new()
            .expect(Command::WarmReset, &[], &[0x00])
            .expect(Command::GetDeviceId, &[], &dev_id);
        reset_and_wait(
            &mut bmc,
            ResetKind::Warm,
            Duration::from_secs(5),
            Duration::ZERO,
        )
        .unwrap();
        bmc.done();

        // A BMC without warm reset says so.
        let mut bmc = FakeBmc::new().expect(Command::WarmReset, &[], &[0xC1]);
        let err = reset(&mut bmc, ResetKind::Warm).unwrap_err();
        assert_eq!(err.code(), "bmc_invalid_command");
        assert_eq!(
            err.to_string(),
            "warm reset: the BMC answered invalid command (not supported by this BMC) \
             (completion code 0xc1)"
        );

        // Never back.
        let mut bmc = FakeBmc::new()
            .expect(Command::ColdReset, &[], &[0x00])
            .expect(Command::GetDeviceId, &[], &[0xD2]);
        let err =
            reset_and_wait(&mut bmc, ResetKind::Cold, Duration::ZERO, Duration::ZERO).unwrap_err();
        assert_eq!(err.code(), "bmc_not_back_after_reset");
    }
}
