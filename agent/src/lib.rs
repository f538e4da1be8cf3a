//! placeholder
pub mod ramdisk;
pub mod disks;
pub mod hw;
