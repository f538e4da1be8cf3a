//! Images written to disks.
pub mod qcow2;
