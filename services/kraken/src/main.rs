//! `kraken`: every component of the P2P registry in one binary, one subcommand each, plus the
//! tools an operator needs around them (dev PKI, config checking).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;

#[derive(Parser, Debug)]
#[command(
    name = "kraken",
    version,
    about = "Peer-to-peer container registry and blob distribution"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate a development PKI: a cluster CA and one certificate per component role.
    Certs(cmd::certs::CertsArgs),
    /// Configuration tools.
    #[command(subcommand)]
    Config(cmd::config::ConfigCommand),
}

fn main() -> ExitCode {
    kraken_tls::install_crypto_provider();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Certs(args) => cmd::certs::run(args),
        Command::Config(command) => cmd::config::run(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
