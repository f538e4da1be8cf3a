//! Serial over LAN sessions: Activate Payload (24.1) and Deactivate Payload (24.2) for the
//! SOL payload (standard payload type 1). Both only make sense inside an RMCP+ session.

use crate::command::Command;
use crate::error::CommandError;
use crate::transport::{Transport, call};

/// Standard payload type of Serial over LAN (table 13-16).
pub const PAYLOAD_SOL: u8 = 0x01;

/// What happens to serial/modem alerts the BMC would send while SOL holds the port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SerialAlerts {
    Fail,
    Deferred,
    Succeed,
}

/// SOL activation options (auxiliary request data byte 1, table 24-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SolActivation {
    pub encrypt: bool,
    pub authenticate: bool,
    pub serial_alerts: SerialAlerts,
    /// Keep CTS and DCD/DSR deasserted after activation (a test mode); normally the BMC
    /// asserts them so the host's serial port starts sending at once.
    pub hold_handshake: bool,
}

impl Default for SolActivation {
    fn default() -> Self {
        Self {
            encrypt: true,
            authenticate: true,
            serial_alerts: SerialAlerts::Deferred,
            hold_handshake: false,
        }
    }
}

/// Activate Payload request for SOL instance `instance` (1-based, bits 3:0).
pub fn encode_activate_sol(instance: u8, a: &SolActivation) -> [u8; 6] {
    let mut aux = 0x00;
    if a.encrypt {
        aux |= 0x80;
    }
    if a.authenticate {
        aux |= 0x40;
    }
    aux |= match a.serial_alerts {
        SerialAlerts::Fail => 0b00 << 2,
        SerialAlerts::Deferred => 0b01 << 2,
        SerialAlerts::Succeed => 0b10 << 2,
    };
    if a.hold_handshake {
        aux |= 0x02;
    }
    [PAYLOAD_SOL, instance & 0x0F, aux, 0x00, 0x00, 0x00]
}

/// Activate Payload response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivatedPayload {
    /// Auxiliary response data; reserved for SOL.
    pub aux: [u8; 4],
    /// The largest payload the remote console may send to the BMC.
    pub inbound_size: u16,
    /// The largest payload the BMC sends.
    pub outbound_size: u16,
    /// UDP port the payload runs on (normally the session's own, 623).
    pub port: u16,
    /// VLAN the payload runs on; `None` when VLAN addressing is not used (0xFFFF).
    pub vlan: Option<u16>,
}

/// Decodes the 12 data bytes of the response (after the completion code); the 16-bit
/// fields are least significant byte first.
pub fn decode_activate_payload(d: &[u8; 12]) -> ActivatedPayload {
    let [a0, a1, a2, a3, in0, in1, out0, out1, p0, p1, v0, v1] = *d;
    let vlan = u16::from_le_bytes([v0, v1]);
    ActivatedPayload {
        aux: [a0, a1, a2, a3],
        inbound_size: u16::from_le_bytes([in0, in1]),
        outbound_size: u16::from_le_bytes([out0, out1]),
        port: u16::from_le_bytes([p0, p1]),
        vlan: (vlan != 0xFFFF).then_some(vlan),
    }
}

/// Activates SOL instance `instance`. The response must be exactly 12 bytes: anything else
/// means the fields are not where this code would read them.
pub fn activate_sol<T: Transport + ?Sized>(
    t: &mut T,
    instance: u8,
    activation: &SolActivation,
) -> Result<ActivatedPayload, CommandError<T::Error>> {
    let command = Command::ActivatePayload;
    let r = call::<_, 12>(t, command, &encode_activate_sol(instance, activation))?;
    Ok(decode_activate_payload(&r.exact::<T::Error>(command)?))
}

/// Deactivate Payload request for SOL instance `instance`; the auxiliary data is reserved
/// for SOL.
pub fn encode_deactivate_sol(instance: u8) -> [u8; 6] {
    [PAYLOAD_SOL, instance & 0x0F, 0x00, 0x00, 0x00, 0x00]
}

pub fn deactivate_sol<T: Transport + ?Sized>(
    t: &mut T,
    instance: u8,
) -> Result<(), CommandError<T::Error>> {
    call::<_, 0>(
        t,
        Command::DeactivatePayload,
        &encode_deactivate_sol(instance),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeBmc;

    #[test]
    fn activate_sol_follows_tables_24_1_and_24_2() {
        // Byte 1 payload type 1 (SOL); byte 2 instance 1; byte 3: encryption (bit 7),
        // authentication (bit 6), shared serial alerts bits 3:2 (00 fail, 01 deferred,
        // 10 succeed), bit 1 "hold CTS/DCD/DSR deasserted"; bytes 4-6 reserved.
        assert_eq!(
            encode_activate_sol(1, &SolActivation::default()),
            [0x01, 0x01, 0xC4, 0x00, 0x00, 0x00]
        );
        // What ipmitool sends by default: the same, with the handshake held.
        let ipmitool = SolActivation {
            hold_handshake: true,
            ..SolActivation::default()
        };
        assert_eq!(
            encode_activate_sol(1, &ipmitool),
            [0x01, 0x01, 0xC6, 0, 0, 0]
        );
        let plain = SolActivation {
            encrypt: false,
            authenticate: false,
            serial_alerts: SerialAlerts::Fail,
            hold_handshake: false,
        };
        assert_eq!(encode_activate_sol(2, &plain), [0x01, 0x02, 0x00, 0, 0, 0]);
        let succeed = SolActivation {
            serial_alerts: SerialAlerts::Succeed,
            ..plain
        };
        assert_eq!(encode_activate_sol(1, &succeed)[2], 0x08);

        // Response: aux data (reserved), inbound payload size 0x00FC, outbound 0x00FC, port
        // 623 (0x026F), VLAN not used (0xFFFF); all least significant byte first.
        let resp = [
            0x00, 0x00, 0x00, 0x00, 0x00, 0xFC, 0x00, 0xFC, 0x00, 0x6F, 0x02, 0xFF, 0xFF,
        ];
        let mut bmc = FakeBmc::new().expect(
            Command::ActivatePayload,
            &[0x01, 0x01, 0xC4, 0, 0, 0],
            &resp,
        );
        let p = activate_sol(&mut bmc, 1, &SolActivation::default()).unwrap();
        bmc.done();
        assert_eq!(
            p,
            ActivatedPayload {
                aux: [0; 4],
                inbound_size: 0xFC,
                outbound_size: 0xFC,
                port: 623,
                vlan: None,
            }
        );
        let p =
            decode_activate_payload(&[0, 0, 0, 0, 0x00, 0x01, 0x10, 0x00, 0x6F, 0x02, 0x05, 0x00]);
        assert_eq!(
            (p.inbound_size, p.outbound_size, p.vlan),
            (0x100, 0x10, Some(5))
        );
    }

    #[test]
    fn activate_sol_refuses_odd_responses_and_names_its_completion_codes() {
        let mut long = vec![0x00];
        long.extend_from_slice(&[0; 13]);
        let mut bmc = FakeBmc::new()
            .expect(
                Command::ActivatePayload,
                &[0x01, 0x01, 0xC4, 0, 0, 0],
                &long,
            )
            .expect(
                Command::ActivatePayload,
                &[0x01, 0x01, 0xC4, 0, 0, 0],
                &[0x00; 5],
            )
            .expect(
                Command::ActivatePayload,
                &[0x01, 0x01, 0xC4, 0, 0, 0],
                &[0x80],
            );
        let a = SolActivation::default();
        let err = activate_sol(&mut bmc, 1, &a).unwrap_err();
        assert_eq!(
            err.to_string(),
            "activate payload: response has 13 data bytes, expected 12"
        );
        let err = activate_sol(&mut bmc, 1, &a).unwrap_err();
        assert!(matches!(
            err,
            CommandError::ShortResponse {
                len: 4,
                expected: 12,
                ..
            }
        ));
        let err = activate_sol(&mut bmc, 1, &a).unwrap_err();
        assert_eq!(
            err.to_string(),
            "activate payload: the BMC answered payload already active on another session \
             (completion code 0x80)"
        );
        bmc.done();
    }

    #[test]
    fn deactivate_sol_encoding() {
        assert_eq!(encode_deactivate_sol(1), [0x01, 0x01, 0, 0, 0, 0]);
        let mut bmc = FakeBmc::new()
            .expect(
                Command::DeactivatePayload,
                &[0x01, 0x01, 0, 0, 0, 0],
                &[0x00],
            )
            .expect(
                Command::DeactivatePayload,
                &[0x01, 0x01, 0, 0, 0, 0],
                &[0x80],
            );
        deactivate_sol(&mut bmc, 1).unwrap();
        let err = deactivate_sol(&mut bmc, 1).unwrap_err();
        bmc.done();
        assert_eq!(
            err.to_string(),
            "deactivate payload: the BMC answered payload already deactivated (completion code \
             0x80)"
        );
    }
}
