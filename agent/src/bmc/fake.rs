//! A scripted BMC for the operations' tests: each expected request (netfn, cmd, exact data)
//! is answered with the given response bytes (completion code first) or a transport error,
//! in order. Test-only: never compiled into the product.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Duration;

use molar_ipmi::Command;
use molar_ipmi::user::encode_set_user_name;

use crate::hw::ipmi::IpmiError;

/// netfn, cmd, expected request data, response (or transport error).
type Step = (u8, u8, Vec<u8>, Result<Vec<u8>, fn() -> IpmiError>);

pub struct FakeBmc {
    script: VecDeque<Step>,
    /// (netfn, cmd) of the requests sent with `request_once`.
    pub once: Vec<(u8, u8)>,
}

impl FakeBmc {
    pub fn new() -> Self {
        Self {
            script: VecDeque::new(),
            once: vec![],
        }
    }

    pub fn expect(mut self, c: Command, data: &[u8], resp: &[u8]) -> Self {
        self.script
            .push_back((c.netfn(), c.cmd(), data.to_vec(), Ok(resp.to_vec())));
        self
    }

    pub fn expect_err(mut self, c: Command, data: &[u8], err: fn() -> IpmiError) -> Self {
        self.script
            .push_back((c.netfn(), c.cmd(), data.to_vec(), Err(err)));
        self
    }

    pub fn done(&self) {
        assert!(
            self.script.is_empty(),
            "requests not sent: {:02x?}",
            self.script
                .iter()
                .map(|s| (s.0, s.1, &s.2))
                .collect::<Vec<_>>()
        );
    }
}

impl molar_ipmi::Transport for FakeBmc {
    type Error = IpmiError;

    fn request(&mut self, netfn: u8, cmd: u8, data: &[u8]) -> Result<Vec<u8>, IpmiError> {
        let Some((n, c, d, resp)) = self.script.pop_front() else {
            panic!("unexpected request netfn {netfn:#04x} cmd {cmd:#04x} {data:02x?}");
        };
        assert_eq!(
            (netfn, cmd, data),
            (n, c, d.as_slice()),
            "request out of script"
        );
        resp.map_err(|f| f())
    }

    fn request_once(&mut self, netfn: u8, cmd: u8, data: &[u8]) -> Result<Vec<u8>, IpmiError> {
        self.once.push((netfn, cmd));
        self.request(netfn, cmd, data)
    }
}

pub fn timeout() -> IpmiError {
    IpmiError::Timeout {
        path: PathBuf::from("/dev/ipmi0"),
        netfn: 0,
        cmd: 0,
        attempts: 3,
        timeout: Duration::from_secs(5),
    }
}

/// Get Channel Info answers: channel 1 is 802.3 LAN / IPMB-1.0 protocol / multi-session,
/// IPMI enterprise number 0x001BF2; the others do not exist.
pub fn scan_channels(mut bmc: FakeBmc, lan: &[u8]) -> FakeBmc {
    for ch in 1..=11u8 {
        bmc = if lan.contains(&ch) {
            bmc.expect(
                Command::GetChannelInfo,
                &[ch],
                &[0x00, ch, 0x04, 0x01, 0x80, 0xF2, 0x1B, 0x00, 0x00, 0x00],
            )
        } else {
            bmc.expect(Command::GetChannelInfo, &[ch], &[0xCC])
        };
    }
    bmc
}

/// A Get User Name response: success, then the name NUL-padded to 16 bytes.
pub fn name16(name: &str) -> Vec<u8> {
    let mut v = vec![0x00];
    v.extend_from_slice(&encode_set_user_name(0, name)[1..]);
    v
}
