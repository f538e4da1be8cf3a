//! `molar-agent`: the in-band agent, and `/init` of the ramdisk. All logic is in the library.

fn main() -> std::process::ExitCode {
    molar_agent::cli::main()
}
