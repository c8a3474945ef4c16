//! `kraken config check FILE`: load a component's config the way the component would (extends,
//! `${ENV}` substitution, validation), check what it names on this machine the way the component
//! does at start (`tls:` files, writable directories), and print the effective result, secrets
//! redacted.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Subcommand, ValueEnum};
use kraken_config::Component;

use super::preflight;

#[derive(Subcommand, Debug)]
pub(crate) enum ConfigCommand {
    /// Validate a config file and print the effective configuration.
    Check {
        /// The YAML file.
        file: PathBuf,
        /// Which component the file configures; guessed from the file or directory name
        /// (agent, origin, tracker, proxy, build-index) when absent.
        #[arg(long)]
        component: Option<Component>,
        /// Output format of the effective configuration.
        #[arg(long, value_enum, default_value_t = Format::Yaml)]
        format: Format,
        /// Check only the file itself, not what it names on this machine (the `tls:` files,
        /// store and data directories): for a config meant for another host.
        #[arg(long)]
        schema_only: bool,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub(crate) enum Format {
    Yaml,
    Json,
}

pub(crate) fn run(command: ConfigCommand) -> anyhow::Result<()> {
    let ConfigCommand::Check {
        file,
        component,
        format,
        schema_only,
    } = command;
    let component = match component.or_else(|| Component::guess_from_path(&file)) {
        Some(component) => component,
        None => bail!(
            "cannot tell which component {} configures from its name; pass --component \
             (agent, origin, tracker, proxy or build-index)",
            file.display()
        ),
    };
    let loaded = component.load(&file).map_err(anyhow::Error::new)?;
    if !schema_only {
        // What the component would trip over at start: certificates, directories.
        preflight::Needs::of(&loaded.config).check(&file)?;
    }
    let printed = match format {
        Format::Yaml => loaded.config.to_yaml(),
        Format::Json => loaded.config.to_json_pretty(),
    }
    .context("printing the effective configuration")?;
    eprintln!(
        "{}: valid {component} configuration (read {})",
        file.display(),
        loaded
            .files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(" <- ")
    );
    println!("{printed}");
    Ok(())
}
