//! `molar-imagebuilder`: the command line over `molar_imagebuilder::build`. Argument parsing
//! and printing only; the work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail};
use clap::{Args, Parser, Subcommand};
use molar_imagebuilder::{
    AgentSource, BuildOptions, Compression, KernelArgs, KernelSource, Profile, Token, agent,
};

#[derive(Parser)]
#[command(
    name = "molar-imagebuilder",
    version,
    about = "builds molar's PXE artefacts"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build vmlinuz, initramfs.img, boot.ipxe and manifest.json into --out.
    Build(BuildArgs),
}

#[derive(Args)]
struct BuildArgs {
    /// A Debian kernel package (linux-image-VERSION.deb).
    #[arg(long, value_name = "DEB", conflicts_with_all = ["kernel", "modules"])]
    kernel_deb: Option<PathBuf>,
    /// An unpacked kernel image (with --modules).
    #[arg(long, value_name = "VMLINUZ", requires = "modules")]
    kernel: Option<PathBuf>,
    /// The kernel's lib/modules/VERSION directory (with --kernel).
    #[arg(long, value_name = "DIR", requires = "kernel")]
    modules: Option<PathBuf>,
    /// The static agent binary [default: the workspace's musl release build, built if absent].
    #[arg(long, value_name = "PATH")]
    agent: Option<PathBuf>,
    /// The agent version for the manifest [default: what `AGENT --version` prints].
    #[arg(long, value_name = "VERSION")]
    agent_version: Option<String>,
    /// Module profile.
    #[arg(long, default_value = "default")]
    profile: String,
    /// More modules on top of the profile (repeatable).
    #[arg(long = "add-module", value_name = "NAME")]
    add_modules: Vec<String>,
    /// Output directory.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// molar.controller=HOST:PORT
    #[arg(long, value_name = "HOST:PORT")]
    controller: Option<String>,
    /// molar.ca=sha256:HEX, the controller CA's fingerprint.
    #[arg(long, value_name = "sha256:HEX")]
    ca_fingerprint: Option<String>,
    /// molar.token=T (also read from MOLAR_TOKEN; never printed).
    #[arg(long, env = "MOLAR_TOKEN", hide_env_values = true, value_name = "T")]
    token: Option<String>,
    /// molar.insecure=1: plaintext to the controller (lab only).
    #[arg(long)]
    insecure: bool,
    /// More kernel arguments, one word each (repeatable).
    #[arg(long = "cmdline-extra", value_name = "ARG")]
    cmdline_extra: Vec<String>,
    /// zstd[:LEVEL] or gzip[:LEVEL] [default: zstd when the kernel unpacks it, else gzip].
    #[arg(long, value_name = "KIND[:LEVEL]", value_parser = Compression::parse)]
    compression: Option<Compression>,
    /// Also write DIR/vmlinux, the uncompressed kernel: QEMU boots it through PVH, about
    /// twice as fast to /init under TCG (for the lab; servers boot vmlinuz).
    #[arg(long)]
    vmlinux: bool,
}

fn run(args: BuildArgs) -> anyhow::Result<()> {
    let kernel = match (args.kernel_deb, args.kernel, args.modules) {
        (Some(deb), None, None) => KernelSource::Deb(deb),
        (None, Some(vmlinuz), Some(modules)) => KernelSource::Unpacked { vmlinuz, modules },
        _ => bail!("give either --kernel-deb DEB or --kernel VMLINUZ --modules DIR"),
    };
    let opts = BuildOptions {
        kernel,
        agent: match args.agent {
            Some(p) => AgentSource::Path(p),
            None => AgentSource::Workspace(agent::default_workspace()),
        },
        agent_version: args.agent_version,
        profile: Profile::by_name(&args.profile)?,
        extra_modules: args.add_modules,
        out: args.out.clone(),
        kernel_args: KernelArgs {
            controller: args.controller,
            ca_fingerprint: args.ca_fingerprint,
            token: args.token.map(Token::new),
            insecure: args.insecure,
            extra: args.cmdline_extra,
        },
        compression: args.compression,
        vmlinux: args.vmlinux,
    };
    let started = std::time::Instant::now();
    let manifest = molar_imagebuilder::build(&opts, &mut |line| {
        eprintln!("molar-imagebuilder: {line}");
    })
    // BuildError's message already names every cause: flatten it rather than chain it, so
    // `{:#}` prints each cause once.
    .map_err(|e| anyhow!("building into {}: {e}", args.out.display()))?;
    eprint!("{}", molar_imagebuilder::summary(&manifest));
    eprintln!(
        "wrote {} in {:.1} s",
        args.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Build(args) => run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("molar-imagebuilder: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
