//! molar controller: the daemon (`molar serve`) and the library its CLI and tests share.
//!
//! Code map:
//! - [`store`]: the embedded SQLite store (servers, connections, tokens, tasks, task events,
//!   logs) with versioned migrations.
//! - [`pki`]: the state directory: CA, server certificate, admin token.
//! - [`identity`]: which stored server an agent is.
//! - [`fleet`]: live agent connections, commands and tasks sent to them, task event bus.
//! - [`listener`]: the agent listener (TLS, handshake, per-connection protocol peer).

pub mod fleet;
pub mod identity;
pub mod listener;
pub mod pki;
pub mod store;

pub use fleet::Fleet;
pub use listener::{ListenerConfig, PLAINTEXT_REFUSAL};
