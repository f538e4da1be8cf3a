//! molar controller: the daemon (`molar serve`) and the library its CLI and tests share.
//!
//! Code map:
//! - [`store`]: the embedded SQLite store (servers, connections, tokens, tasks, task events,
//!   logs) with versioned migrations.
//! - [`identity`]: which stored server an agent is.

pub mod identity;
pub mod store;
