//! `molar`: the controller daemon (`molar serve`) and its CLI. Parses arguments only; all
//! logic is in the library (`molar_controller::cli`).

use clap::Parser;

fn main() -> std::process::ExitCode {
    molar_controller::cli::main(molar_controller::cli::Cli::parse())
}
