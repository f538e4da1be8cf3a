//! placeholder
pub mod erase;
pub mod ramdisk;
pub mod disks;
pub mod hw;
pub mod safety;
