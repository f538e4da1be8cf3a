//! molar controller: the daemon (`molar serve`) and the library its CLI and tests share.
//!
//! Code map:
//! - [`store`]: the embedded SQLite store (servers, connections, tokens, tasks, task events,
//!   logs) with versioned migrations.
//! - [`pki`]: the state directory: CA, server certificate, admin token.
//! - [`identity`]: which stored server an agent is.

pub mod identity;
pub mod pki;
pub mod store;
