//! placeholder
pub mod ramdisk;
