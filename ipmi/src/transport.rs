//! [`Transport`], the one thing this crate needs from the outside world, and [`call`], the
//! one place where response bytes become the fixed-size arrays decoders take.

use crate::command::Command;
use crate::completion;
use crate::error::CommandError;

/// Moves IPMI requests to a BMC and their responses back.
pub trait Transport {
    type Error: std::error::Error + 'static;

    /// Sends a request and returns the response bytes with the completion code first,
    /// exactly as the specification's response tables number them.
    fn request(&mut self, netfn: u8, cmd: u8, data: &[u8]) -> Result<Vec<u8>, Self::Error>;

    /// A request that must not be repeated if its answer is lost (its effect would double):
    /// power control and BMC resets. Transports without retries need not override it.
    fn request_once(&mut self, netfn: u8, cmd: u8, data: &[u8]) -> Result<Vec<u8>, Self::Error> {
        self.request(netfn, cmd, data)
    }
}

/// A successful response: the `N` data bytes every well-formed response of the command has,
/// and the optional bytes after them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply<const N: usize> {
    pub data: [u8; N],
    pub rest: Vec<u8>,
}

/// Sends `command` and returns its response data once the completion code said success.
pub fn call<T: Transport + ?Sized, const N: usize>(
    t: &mut T,
    command: Command,
    request: &[u8],
) -> Result<Reply<N>, CommandError<T::Error>> {
    let resp = t
        .request(command.netfn(), command.cmd(), request)
        .map_err(|source| CommandError::Transport { command, source })?;
    reply(command, &resp)
}

/// [`call`] for requests that must not be resent (see [`Transport::request_once`]).
pub fn call_once<T: Transport + ?Sized, const N: usize>(
    t: &mut T,
    command: Command,
    request: &[u8],
) -> Result<Reply<N>, CommandError<T::Error>> {
    let resp = t
        .request_once(command.netfn(), command.cmd(), request)
        .map_err(|source| CommandError::Transport { command, source })?;
    reply(command, &resp)
}

/// Checks the completion code of a raw response (completion code first) and splits its data
/// into the first `N` bytes and the rest.
pub fn reply<const N: usize, E>(
    command: Command,
    resp: &[u8],
) -> Result<Reply<N>, CommandError<E>> {
    let Some((&code, data)) = resp.split_first() else {
        return Err(CommandError::EmptyResponse { command });
    };
    if code != completion::OK {
        return Err(CommandError::Completion { command, code });
    }
    let Some((fixed, rest)) = data.split_first_chunk::<N>() else {
        return Err(CommandError::ShortResponse {
            command,
            len: data.len(),
            expected: N,
        });
    };
    Ok(Reply {
        data: *fixed,
        rest: rest.to_vec(),
    })
}

impl<const N: usize> Reply<N> {
    /// The data of a response that has exactly `N` bytes; anything after them means the
    /// response is not what this crate takes it for.
    pub fn exact<E>(self, command: Command) -> Result<[u8; N], CommandError<E>> {
        if self.rest.is_empty() {
            Ok(self.data)
        } else {
            Err(CommandError::LongResponse {
                command,
                len: N + self.rest.len(),
                expected: N,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{FakeBmc, TestError};

    type R<const N: usize> = Result<Reply<N>, CommandError<TestError>>;

    #[test]
    fn the_completion_code_is_checked_and_the_data_split() {
        let r: R<2> = reply(Command::GetDeviceId, &[0x00, 0x20, 0x81, 0x09]);
        assert_eq!(
            r.unwrap(),
            Reply {
                data: [0x20, 0x81],
                rest: vec![0x09]
            }
        );
        let r: R<0> = reply(Command::SetUserName, &[0x00]);
        assert_eq!(r.unwrap().data, []);

        let err = reply::<2, TestError>(Command::GetDeviceId, &[0xC1, 0x20, 0x81]).unwrap_err();
        assert_eq!(err.completion(), Some(0xC1));
        assert_eq!(
            err.to_string(),
            "get device id: the BMC answered invalid command (not supported by this BMC) \
             (completion code 0xc1)"
        );
        let err = reply::<11, TestError>(Command::GetDeviceId, &[0x00, 0x20, 0x81]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "get device id: response has 2 data bytes, expected at least 11"
        );
        let err = reply::<0, TestError>(Command::GetDeviceId, &[]).unwrap_err();
        assert!(matches!(err, CommandError::EmptyResponse { .. }));
        assert_eq!(
            err.to_string(),
            "get device id: empty response, without a completion code"
        );
    }

    #[test]
    fn exact_refuses_trailing_bytes() {
        let r: R<2> = reply(Command::GetUserAccess, &[0x00, 1, 2]);
        assert_eq!(
            r.unwrap()
                .exact::<TestError>(Command::GetUserAccess)
                .unwrap(),
            [1, 2]
        );
        let r: R<2> = reply(Command::GetUserAccess, &[0x00, 1, 2, 3]);
        let err = r
            .unwrap()
            .exact::<TestError>(Command::GetUserAccess)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "get user access: response has 3 data bytes, expected 2"
        );
    }

    #[test]
    fn transport_errors_name_the_command_and_once_is_passed_on() {
        let mut bmc = FakeBmc::new().expect_err(Command::GetDeviceId, &[]);
        let err = call::<_, 0>(&mut bmc, Command::GetDeviceId, &[]).unwrap_err();
        assert_eq!(err.command(), Command::GetDeviceId);
        assert_eq!(err.to_string(), "get device id: the test transport failed");
        assert!(std::error::Error::source(&err).is_some());

        let mut bmc = FakeBmc::new().expect(Command::ColdReset, &[], &[0x00]);
        call_once::<_, 0>(&mut bmc, Command::ColdReset, &[]).unwrap();
        bmc.done();
        assert_eq!(bmc.once, vec![(0x06, 0x02)]);
    }
}
