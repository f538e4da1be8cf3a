//! molar-agent: the in-band provisioning agent.
//!
//! The agent dials out to a controller and serves the v1 protocol on that connection
//! ([`session`]), runs long work as tasks ([`tasks`]), forwards its logs ([`logfwd`]), and
//! reaches the hardware only through [`hw`]. When it is PID 1 of the ramdisk, [`ramdisk`]
//! prepares the machine first. `main.rs` only calls [`cli::main`].
//!
//! Architecture invariant: only `hw` issues ioctls; only `ramdisk` assumes it is PID 1;
//! every action that changes the machine is decided by [`authority::Authority::decide`], and
//! device actions pass through `safety`.
pub mod authority;
pub mod bmc;
pub mod boot;
pub mod burnin;
pub mod capabilities;
pub mod cli;
pub mod clock;
pub mod configdrive;
pub mod directio;
pub mod disks;
pub mod erase;
pub mod firmware;
pub mod hw;
pub mod identity;
pub mod image;
pub mod inventory;
pub mod logfwd;
pub mod partition;
pub mod ramdisk;
pub mod safety;
pub mod session;
pub mod tasks;
pub mod tls;
