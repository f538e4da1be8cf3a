//! SOL over the controller's own RMCP+ session ([`crate::oob::lan::LanSession`]): the
//! opener the console service uses for servers with a BMC on record.

use super::pump::{OpenError, OpenedSol, SolLink, SolOpener};
use crate::oob::OobError;
use crate::oob::lan::{LanOptions, LanSession};
use crate::store::Store;
use molar_ipmi::CommandError;
use molar_ipmi::sol::{PAYLOAD_SOL, SolActivation, activate_sol, deactivate_sol};
use molar_ipmi::sol_payload::max_data_for;
use std::sync::Arc;
use std::time::Duration;

/// The SOL instance used: the first (the host's console port).
const SOL_INSTANCE: u8 = 1;
/// Activate Payload's completion code for a payload already active (24.1).
const ALREADY_ACTIVE: u8 = 0x80;

struct LanSol {
    session: LanSession,
}

impl SolLink for LanSol {
    fn send_sol(&mut self, packet: &[u8]) -> Result<(), OobError> {
        self.session.send_payload(PAYLOAD_SOL, packet)
    }

    fn recv_sol(&mut self, timeout: Duration) -> Result<Option<Vec<u8>>, OobError> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.session.recv_payload(left)? {
                None => return Ok(None),
                Some((PAYLOAD_SOL, data)) => return Ok(Some(data)),
                // Another payload type in a SOL session: nothing to do with it.
                Some(_) if left.is_zero() => return Ok(None),
                Some(_) => continue,
            }
        }
    }

    fn keepalive(&mut self) -> Result<(), OobError> {
        // SOL packets arriving meanwhile are kept by the session for recv_payload.
        match molar_ipmi::device::get_device_id(&mut self.session) {
            Ok(_) => Ok(()),
            Err(CommandError::Transport { source, .. }) => Err(source),
            // Any answer at all means the session is alive.
            Err(_) => Ok(()),
        }
    }

    fn close(&mut self) {
        let _ = deactivate_sol(&mut self.session, SOL_INSTANCE);
        let _ = self.session.close();
    }
}

fn activation_error(addr: &str, e: CommandError<OobError>) -> OobError {
    match e {
        CommandError::Transport { source, .. } => source,
        other => OobError::Refused {
            addr: addr.to_owned(),
            command: "activate serial over LAN".into(),
            completion: other.to_string(),
        },
    }
}

/// Opens an RMCP+ session with the server's BMC (credentials from the BMC table) and
/// activates SOL; a payload left active by an earlier session is deactivated first.
pub fn lan_opener(store: Arc<Store>, handle: tokio::runtime::Handle) -> SolOpener {
    Arc::new(move |server_id: &str| {
        let target = handle
            .block_on(store.bmc_target(server_id))
            .map_err(|e| OpenError::Store {
                server: server_id.to_owned(),
                msg: e.to_string(),
            })?
            .ok_or_else(|| OpenError::NoBmc(server_id.to_owned()))?;
        if target.protocol == crate::oob::BmcProtocol::Redfish {
            return Err(OobError::IpmiOnly {
                addr: target.addr(),
                what: "the serial console".into(),
            }
            .into());
        }
        let mut session = LanSession::open(&target, LanOptions::default())?;
        let activation = SolActivation::default();
        let activated = match activate_sol(&mut session, SOL_INSTANCE, &activation) {
            Err(CommandError::Completion { code, .. }) if code == ALREADY_ACTIVE => {
                let _ = deactivate_sol(&mut session, SOL_INSTANCE);
                activate_sol(&mut session, SOL_INSTANCE, &activation)
            }
            r => r,
        }
        .map_err(|e| activation_error(&target.addr(), e))?;
        Ok(OpenedSol {
            max_data: max_data_for(activated.inbound_size),
            link: Box::new(LanSol { session }),
        })
    })
}
