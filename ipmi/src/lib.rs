//! IPMI 2.0 (rev. 1.1) commands as bytes, without I/O.
//!
//! Each module owns a group of commands: its request encoders, its response decoders and
//! thin functions that send one command over a [`Transport`] and decode the answer. A
//! transport is anything that moves `(netfn, cmd, data)` to a BMC and returns the response
//! bytes, completion code first: the agent's `/dev/ipmi0` driver, or an IPMI-over-LAN
//! session. Byte layouts follow the specification; the section of each command is named
//! where it is encoded, and the tests are byte vectors from the specification's tables.
//!
//! Decoders take fixed-size arrays (`&[u8; 11]`), never slices: [`call`] checks the
//! completion code and turns the response into the array a command's decoder takes, so no
//! caller checks a length and no decoder can index out of bounds.
//!
//! [`rmcp`] is the IPMI-over-LAN session as bytes in and bytes out (RMCP+ handshake, keys,
//! integrity, encryption, replay window; IPMI 1.5 MD5 sessions): the controller's
//! `oob::LanSession` owns the socket and feeds it.
//!
//! Architecture invariant: this crate does no I/O and knows no async runtime; it reaches a
//! BMC only through [`Transport`], and its RMCP+ code takes randomness from the caller.

#![forbid(unsafe_code)]

pub mod boot;
pub mod channel;
pub mod chassis;
pub mod command;
pub mod completion;
pub mod device;
pub mod error;
pub mod lan;
pub mod rmcp;
pub mod sol;
pub mod sol_payload;
pub mod transport;
pub mod user;

#[cfg(test)]
mod fake;

pub use command::Command;
pub use error::CommandError;
pub use transport::{Reply, Transport, call, call_once, reply};
pub use user::Privilege;
