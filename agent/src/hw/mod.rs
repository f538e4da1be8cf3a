//! Hardware access layer: the only place in the agent that issues ioctls.
//!
//! One module per device kind, each with a private `mod ioctl` and a safe public face.

pub mod ata;
pub mod block;
pub mod ethtool;
pub mod inode_flags;
pub mod ipmi;
pub mod kexec;
pub mod loop_dev;
pub mod nvme;
