//! molar-imagebuilder: builds the PXE artefacts a molar server boots — the kernel, an
//! initramfs whose `/init` is the static `molar-agent` plus the kernel modules a profile names
//! (with dependencies resolved from the modules themselves), an iPXE script carrying the
//! agent's settings, a UEFI-bootable ISO for virtual media, and a manifest — reproducibly,
//! without dpkg, depmod, cpio, objcopy or xorriso on the host.
//!
//! `image::build` is the entry point; the other modules are its steps, each testable alone.

pub mod agent;
pub mod bzimage;
pub mod cli;
pub mod cpio;
pub mod deb;
pub mod elf;
pub mod image;
pub mod ipxe;
pub mod iso;
pub mod kmod;
pub mod pe;
pub mod profile;
pub mod uki;

pub use image::{
    AgentSource, BuildError, BuildOptions, Compression, IsoOptions, KernelSource, Manifest, build,
    summary,
};
pub use ipxe::{KernelArgs, Token};
pub use profile::Profile;
