//! Errors of the loading pipeline. Every one names the file it is about and, when it concerns a
//! value, the dotted key path and what was expected, so the message alone is enough to fix the
//! config.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::tree::KeyPath;
use crate::validate::ValidationError;

/// A position in a config file (1-based line and column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file (or one it extends) could not be read.
    #[error("{}: cannot read the file", file.display())]
    Read {
        file: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The file is not valid YAML.
    #[error("{}: YAML syntax error: {message}", At(file, Some(*location)))]
    Syntax {
        file: PathBuf,
        location: Location,
        message: String,
    },

    /// `extends:` names a file that cannot be read.
    #[error(
        "{}: extends: cannot read `{}`",
        At(file, *location),
        target.display()
    )]
    ExtendsUnreadable {
        /// The file containing the `extends:` key.
        file: PathBuf,
        location: Option<Location>,
        /// The path it resolved to (relative to the including file's directory).
        target: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The `extends:` chain comes back to a file already in it.
    #[error("extends cycle: {}", chain_display(chain))]
    ExtendsCycle {
        /// The files in the order they extend each other, ending with the repeated one.
        chain: Vec<PathBuf>,
    },

    /// `${VAR}` with no default, and `VAR` is not set.
    #[error(
        "{}: {path}: environment variable `{variable}` is not set (set it, or give a default \
         with `${{{variable}:-default}}`)",
        At(file, *location)
    )]
    UndefinedVariable {
        file: PathBuf,
        location: Option<Location>,
        path: KeyPath,
        variable: String,
    },

    /// A malformed `${…}` reference.
    #[error("{}: {path}: {message}", At(file, *location))]
    BadSubstitution {
        file: PathBuf,
        location: Option<Location>,
        path: KeyPath,
        message: String,
    },

    /// A key or value does not fit the schema: unknown key, wrong type, bad duration or size.
    #[error("{}: {path}: {message}", At(file, *location))]
    Invalid {
        file: PathBuf,
        location: Option<Location>,
        path: KeyPath,
        message: String,
    },

    /// The config is well-formed but a semantic check failed.
    #[error("{}: {}: {}", At(file, *location), error.path, error.message)]
    Validation {
        file: PathBuf,
        location: Option<Location>,
        /// What failed, and where; not a `#[source]`: the message above already says it all.
        error: ValidationError,
    },
}

impl ConfigError {
    /// The file the error is about (for a cycle, the first file of the chain).
    pub fn file(&self) -> &Path {
        match self {
            Self::Read { file, .. }
            | Self::Syntax { file, .. }
            | Self::ExtendsUnreadable { file, .. }
            | Self::UndefinedVariable { file, .. }
            | Self::BadSubstitution { file, .. }
            | Self::Invalid { file, .. }
            | Self::Validation { file, .. } => file,
            Self::ExtendsCycle { chain } => chain.first().map_or(Path::new(""), PathBuf::as_path),
        }
    }

    /// The key path the error is about, when it is about a value.
    pub fn key_path(&self) -> Option<&KeyPath> {
        match self {
            Self::UndefinedVariable { path, .. }
            | Self::BadSubstitution { path, .. }
            | Self::Invalid { path, .. } => Some(path),
            Self::Validation { error, .. } => Some(&error.path),
            _ => None,
        }
    }

    /// Where in [`ConfigError::file`] the offending key or value is, when known.
    pub fn location(&self) -> Option<Location> {
        match self {
            Self::Syntax { location, .. } => Some(*location),
            Self::ExtendsUnreadable { location, .. }
            | Self::UndefinedVariable { location, .. }
            | Self::BadSubstitution { location, .. }
            | Self::Invalid { location, .. }
            | Self::Validation { location, .. } => *location,
            _ => None,
        }
    }
}

/// `file:line:column`, or `file` alone when the position is unknown (a default value).
struct At<'a>(&'a Path, Option<Location>);

impl fmt::Display for At<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.1 {
            Some(Location { line, column }) => write!(f, "{}:{line}:{column}", self.0.display()),
            None => write!(f, "{}", self.0.display()),
        }
    }
}

fn chain_display(chain: &[PathBuf]) -> String {
    chain
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(" → ")
}
