//! The command line of `molar-imagebuilder`, in the library so its manual page and shell
//! completions are generated from the same definitions the binary parses with.

use crate::Compression;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "molar-imagebuilder",
    version,
    about = "builds molar's PXE artefacts"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Build vmlinuz, initramfs.img, boot.ipxe and manifest.json (and molar.iso with --iso)
    /// into --out.
    Build(BuildArgs),
}

#[derive(Args)]
pub struct BuildArgs {
    /// A Debian kernel package (linux-image-VERSION.deb).
    #[arg(long, value_name = "DEB", conflicts_with_all = ["kernel", "modules"])]
    pub kernel_deb: Option<PathBuf>,
    /// An unpacked kernel image (with --modules).
    #[arg(long, value_name = "VMLINUZ", requires = "modules")]
    pub kernel: Option<PathBuf>,
    /// The kernel's lib/modules/VERSION directory (with --kernel).
    #[arg(long, value_name = "DIR", requires = "kernel")]
    pub modules: Option<PathBuf>,
    /// The static agent binary [default: the workspace's musl release build, built if absent;
    /// installed from the package: /usr/lib/molar/molar-agent].
    #[arg(long, value_name = "PATH")]
    pub agent: Option<PathBuf>,
    /// The agent version for the manifest [default: what `AGENT --version` prints].
    #[arg(long, value_name = "VERSION")]
    pub agent_version: Option<String>,
    /// Module profile.
    #[arg(long, default_value = "default")]
    pub profile: String,
    /// More modules on top of the profile (repeatable).
    #[arg(long = "add-module", value_name = "NAME")]
    pub add_modules: Vec<String>,
    /// Output directory.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// molar.controller=HOST:PORT
    #[arg(long, value_name = "HOST:PORT")]
    pub controller: Option<String>,
    /// molar.ca=sha256:HEX, the controller CA's fingerprint.
    #[arg(long, value_name = "sha256:HEX")]
    pub ca_fingerprint: Option<String>,
    /// molar.token=T (also read from MOLAR_TOKEN; never printed).
    #[arg(long, env = "MOLAR_TOKEN", hide_env_values = true, value_name = "T")]
    pub token: Option<String>,
    /// molar.insecure=1: plaintext to the controller (lab only).
    #[arg(long)]
    pub insecure: bool,
    /// More kernel arguments, one word each (repeatable).
    #[arg(long = "cmdline-extra", value_name = "ARG")]
    pub cmdline_extra: Vec<String>,
    /// zstd[:LEVEL] or gzip[:LEVEL] [default: zstd when the kernel unpacks it, else gzip].
    #[arg(long, value_name = "KIND[:LEVEL]", value_parser = Compression::parse)]
    pub compression: Option<Compression>,
    /// Also write DIR/vmlinux, the uncompressed kernel: QEMU boots it through PVH, about
    /// twice as fast to /init under TCG (for the lab; servers boot vmlinuz).
    #[arg(long)]
    pub vmlinux: bool,
    /// Also write DIR/molar.iso for virtual-media boot: UEFI only (El Torito EFI entry, an
    /// ESP holding a unified kernel image); no BIOS boot. It carries the command line
    /// without the token: give molar.token as an SMBIOS OEM string.
    #[arg(long)]
    pub iso: bool,
    /// systemd's EFI stub, the front of the ISO's unified kernel image (Debian package
    /// systemd-boot-efi).
    #[arg(
        long,
        value_name = "PATH",
        requires = "iso",
        default_value = crate::uki::EFI_STUB
    )]
    pub efi_stub: PathBuf,
}

/// The command line's definition, for its manual page and shell completions.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}
