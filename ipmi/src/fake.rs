//! A scripted BMC for this crate's tests: each expected request (netfn, cmd, exact data) is
//! answered with the given response bytes (completion code first), in order.

use std::collections::VecDeque;

use crate::command::Command;
use crate::transport::Transport;

#[derive(Debug, thiserror::Error)]
#[error("the test transport failed")]
pub struct TestError;

type Step = (u8, u8, Vec<u8>, Option<Vec<u8>>);

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
            .push_back((c.netfn(), c.cmd(), data.to_vec(), Some(resp.to_vec())));
        self
    }

    pub fn expect_err(mut self, c: Command, data: &[u8]) -> Self {
        self.script
            .push_back((c.netfn(), c.cmd(), data.to_vec(), None));
        self
    }

    pub fn done(&self) {
        assert!(
            self.script.is_empty(),
            "requests not sent: {:02x?}",
            self.script
        );
    }
}

impl Transport for FakeBmc {
    type Error = TestError;

    fn request(&mut self, netfn: u8, cmd: u8, data: &[u8]) -> Result<Vec<u8>, TestError> {
        let Some((n, c, d, resp)) = self.script.pop_front() else {
            panic!("unexpected request netfn {netfn:#04x} cmd {cmd:#04x} {data:02x?}");
        };
        assert_eq!(
            (netfn, cmd, data),
            (n, c, d.as_slice()),
            "request out of script"
        );
        resp.ok_or(TestError)
    }

    fn request_once(&mut self, netfn: u8, cmd: u8, data: &[u8]) -> Result<Vec<u8>, TestError> {
        self.once.push((netfn, cmd));
        self.request(netfn, cmd, data)
    }
}
