//! `molar-imagebuilder`: the command line over `molar_imagebuilder::build`. Argument parsing
//! and printing only; the work is in the library.

use std::process::ExitCode;

use anyhow::{anyhow, bail};
use clap::Parser;
use molar_imagebuilder::cli::{BuildArgs, Cli, Command};
use molar_imagebuilder::{
    AgentSource, BuildOptions, IsoOptions, KernelArgs, KernelSource, Profile, Token, agent,
};

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
            // Built from source: the workspace it was built in; installed from the package:
            // the agent the package ships.
            None if !agent::default_workspace().join("Cargo.toml").exists()
                && std::path::Path::new(agent::PACKAGED_AGENT).exists() =>
            {
                AgentSource::Path(agent::PACKAGED_AGENT.into())
            }
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
        iso: args.iso.then_some(IsoOptions {
            efi_stub: args.efi_stub,
        }),
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
