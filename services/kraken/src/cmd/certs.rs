//! `kraken certs`: a development PKI for a local or test cluster.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use kraken_tls::{DevPkiOptions, Role, TlsError, generate_dev_pki};

#[derive(Args, Debug)]
pub(crate) struct CertsArgs {
    /// Directory to write ca.pem, ca.key and <role>.pem/<role>.key into.
    #[arg(long)]
    out: PathBuf,
    /// Extra DNS name or IP address every certificate is valid for (repeatable). localhost,
    /// 127.0.0.1 and ::1 are always included.
    #[arg(long = "host")]
    hosts: Vec<String>,
    /// Validity of the certificates, e.g. 365d, 90d, 12h.
    #[arg(long, default_value = "365d", value_parser = humantime::parse_duration)]
    validity: Duration,
    /// Replace an existing PKI in the directory.
    #[arg(long)]
    force: bool,
}

pub(crate) fn run(args: CertsArgs) -> anyhow::Result<()> {
    let options = DevPkiOptions {
        hosts: args.hosts,
        validity: args.validity,
        overwrite: args.force,
        ..DevPkiOptions::default()
    };
    let pki = match generate_dev_pki(&args.out, &options) {
        Ok(pki) => pki,
        Err(error @ TlsError::AlreadyExists { .. }) => {
            anyhow::bail!("{error} (pass --force to replace it)")
        }
        Err(error) => {
            return Err(error)
                .with_context(|| format!("generating a PKI in {}", args.out.display()));
        }
    };
    println!("CA:          {}", pki.ca_cert_path().display());
    for role in Role::ALL {
        println!(
            "{:<12} {}  {}",
            format!("{role}:"),
            pki.cert_path(role).display(),
            pki.key_path(role).display()
        );
    }
    Ok(())
}
