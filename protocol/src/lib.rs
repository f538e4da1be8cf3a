//! molar wire protocol v1.
//!
//! One JSON object per line, UTF-8, `\n`-terminated, every message tagged `"version":"v1"`
//! (see `DESIGN.md`, "Wire protocol v1"). This crate owns every type that crosses the wire,
//! the bounded line codec, and [`Peer`], the bidirectional request/response engine both the
//! agent and the controller run on a connection.
//!
//! Architecture invariant: no hardware, no policy, no knowledge of which side it runs on.
//! The crate does socket I/O only through the stream handed to [`Peer::spawn`].

pub mod bmc;
pub mod burnin;
pub mod catalogue;
pub mod codec;
pub mod configdrive;
pub mod erase;
pub mod firmware;
pub mod image;
pub mod inventory;
pub mod message;
pub mod methods;
pub mod peer;
pub mod qc;
pub mod run_image;
pub mod secret;

pub use catalogue::{Method, TaskMethod, canonical_method};
pub use codec::{CodecError, DEFAULT_MAX_LINE, LineCodec};
pub use message::{
    Command, DecodeError, ErrorBody, ErrorResponse, Fatal, Message, Success, VERSION, codes,
};
pub use peer::{CallError, CloseReason, Handler, Peer, PeerConfig, PeerHandle};
pub use secret::Secret;
