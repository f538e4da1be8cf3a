//! [`CommandError`]: why one command did not give a usable answer.

use crate::command::Command;
use crate::completion;

/// Errors of one IPMI command, generic over the transport's own error.
#[derive(Debug, thiserror::Error)]
pub enum CommandError<E> {
    /// The request did not reach the BMC or its answer did not come back.
    #[error("{command}: {source}")]
    Transport {
        command: Command,
        #[source]
        source: E,
    },
    /// The BMC answered with a completion code other than success.
    #[error(
        "{command}: the BMC answered {} (completion code {code:#04x})",
        completion::meaning(*command, *code)
    )]
    Completion { command: Command, code: u8 },
    /// The response has no byte at all, not even the completion code.
    #[error("{command}: empty response, without a completion code")]
    EmptyResponse { command: Command },
    /// Fewer data bytes than every well-formed response of the command has.
    #[error("{command}: response has {len} data bytes, expected at least {expected}")]
    ShortResponse {
        command: Command,
        len: usize,
        expected: usize,
    },
    /// More data bytes than the command's response can have.
    #[error("{command}: response has {len} data bytes, expected {expected}")]
    LongResponse {
        command: Command,
        len: usize,
        expected: usize,
    },
}

impl<E> CommandError<E> {
    pub fn command(&self) -> Command {
        match self {
            CommandError::Transport { command, .. }
            | CommandError::Completion { command, .. }
            | CommandError::EmptyResponse { command }
            | CommandError::ShortResponse { command, .. }
            | CommandError::LongResponse { command, .. } => *command,
        }
    }

    /// The completion code, when the BMC answered with an error code.
    pub fn completion(&self) -> Option<u8> {
        match self {
            CommandError::Completion { code, .. } => Some(*code),
            _ => None,
        }
    }
}
