//! The one loading pipeline: read → follow `extends` → merge → substitute `${VAR}` →
//! deserialize → validate. Every error names the file that holds the offending key.

use std::io;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::error::{ConfigError, Location};
use crate::substitute::{Env, ProcessEnv, SubstError, substitute_tree};
use crate::tree::{self, KeyPath, Node, Origin, Value};
use crate::validate::Validate;

/// The key that names the base file a config extends.
pub const EXTENDS_KEY: &str = "extends";

/// A loaded, validated config and the files it came from.
#[derive(Debug, Clone)]
pub struct Loaded<T> {
    /// The validated config, every absent key at its default.
    pub config: T,
    /// Every file read, most derived first: the file asked for, then the file it extends, and
    /// so on to the root of the chain.
    pub files: Vec<PathBuf>,
}

impl<T> Loaded<T> {
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Loaded<U> {
        Loaded {
            config: f(self.config),
            files: self.files,
        }
    }
}

/// Loads `path` with the process environment. See [`Loader`].
pub fn load<T: DeserializeOwned + Validate>(path: &Path) -> Result<Loaded<T>, ConfigError> {
    Loader::new().load(path)
}

/// Loads a config given as text, named `name` in errors; `extends` resolves relative to the
/// directory of `name`.
pub fn load_from_str<T: DeserializeOwned + Validate>(
    name: impl AsRef<Path>,
    text: &str,
) -> Result<Loaded<T>, ConfigError> {
    Loader::new().load_str(name, text)
}

/// The loading pipeline, with an injectable environment.
///
/// ```
/// # use std::collections::HashMap;
/// # use kraken_config::{Loader, TrackerConfig};
/// let env = HashMap::from([("ORIGIN".to_owned(), "origin1:15002".to_owned())]);
/// let loaded = Loader::with_env(&env)
///     .load_str::<TrackerConfig>("tracker.yaml", "origin:\n  hosts:\n    static: [\"${ORIGIN}\"]\n")
///     .unwrap();
/// assert_eq!(loaded.config.origin.hosts.static_hosts, ["origin1:15002"]);
/// ```
pub struct Loader<'e> {
    env: &'e dyn Env,
}

impl std::fmt::Debug for Loader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader").finish_non_exhaustive()
    }
}

impl Default for Loader<'static> {
    fn default() -> Self {
        Self::new()
    }
}

impl Loader<'static> {
    /// A loader reading the process environment.
    pub fn new() -> Self {
        Self { env: &ProcessEnv }
    }
}

impl<'e> Loader<'e> {
    /// A loader reading variables from `env` (a map, a closure, or [`ProcessEnv`]).
    pub fn with_env(env: &'e dyn Env) -> Self {
        Self { env }
    }

    /// Loads, merges, substitutes, deserializes and validates the config at `path`.
    pub fn load<T: DeserializeOwned + Validate>(
        &self,
        path: &Path,
    ) -> Result<Loaded<T>, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_owned(),
            source,
        })?;
        self.load_str(path, &text)
    }

    /// Like [`Loader::load`] for text already in memory, named `name`.
    pub fn load_str<T: DeserializeOwned + Validate>(
        &self,
        name: impl AsRef<Path>,
        text: &str,
    ) -> Result<Loaded<T>, ConfigError> {
        let (files, root) = self.merged(name.as_ref(), text)?;
        let config = deserialize::<T>(&files, &root)?;
        config.validate().map_err(|error| {
            let origin = root.locate(&error.path);
            ConfigError::Validation {
                file: files[origin.file].clone(),
                location: location(origin),
                error,
            }
        })?;
        Ok(Loaded { config, files })
    }

    /// Loads and deserializes `path` without the semantic checks, for tools that inspect a
    /// partial config such as a `base.yaml` meant to be extended. Components use
    /// [`Loader::load`].
    pub fn load_unvalidated<T: DeserializeOwned>(
        &self,
        path: &Path,
    ) -> Result<Loaded<T>, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_owned(),
            source,
        })?;
        let (files, root) = self.merged(path, &text)?;
        let config = deserialize::<T>(&files, &root)?;
        Ok(Loaded { config, files })
    }

    /// The merged, substituted document and the chain of files it came from.
    fn merged(&self, name: &Path, text: &str) -> Result<(Vec<PathBuf>, Node), ConfigError> {
        let mut files: Vec<PathBuf> = Vec::new();
        // Canonical paths, to recognise a cycle however the file was named.
        let mut seen: Vec<PathBuf> = Vec::new();
        let mut trees: Vec<Node> = Vec::new();
        let mut current = name.to_owned();
        let mut text = text.to_owned();
        loop {
            let id = files.len();
            files.push(current.clone());
            seen.push(std::fs::canonicalize(&current).unwrap_or_else(|_| current.clone()));
            let mut node = parse_file(&current, &text, id)?;
            let extends = take_extends(&mut node, &current)?;
            trees.push(node);
            let Some((target, origin)) = extends else {
                break;
            };
            let canonical = std::fs::canonicalize(&target)
                .map_err(|source| extends_unreadable(&current, origin, &target, source))?;
            if seen.contains(&canonical) {
                let mut chain = files.clone();
                chain.push(target);
                return Err(ConfigError::ExtendsCycle { chain });
            }
            text = std::fs::read_to_string(&target)
                .map_err(|source| extends_unreadable(&current, origin, &target, source))?;
            current = target;
        }
        let mut merged = trees.pop().unwrap_or_else(|| Node::empty_map(origin_at(0)));
        while let Some(derived) = trees.pop() {
            merged = tree::merge(merged, derived);
        }
        substitute_tree(&mut merged, self.env).map_err(|failure| {
            let file = files[failure.origin.file].clone();
            let location = location(failure.origin);
            match failure.error {
                SubstError::Undefined(variable) => ConfigError::UndefinedVariable {
                    file,
                    location,
                    path: failure.path,
                    variable,
                },
                SubstError::Malformed(message) => ConfigError::BadSubstitution {
                    file,
                    location,
                    path: failure.path,
                    message,
                },
            }
        })?;
        Ok((files, merged))
    }
}

fn origin_at(file: usize) -> Origin {
    Origin {
        file,
        line: 1,
        column: 1,
    }
}

fn location(origin: Origin) -> Option<Location> {
    Some(Location {
        line: origin.line,
        column: origin.column,
    })
}

fn extends_unreadable(
    file: &Path,
    origin: Origin,
    target: &Path,
    source: io::Error,
) -> ConfigError {
    ConfigError::ExtendsUnreadable {
        file: file.to_owned(),
        location: location(origin),
        target: target.to_owned(),
        source,
    }
}

fn parse_file(path: &Path, text: &str, id: usize) -> Result<Node, ConfigError> {
    let node = tree::parse(text, id).map_err(|error| ConfigError::Syntax {
        file: path.to_owned(),
        location: Location {
            line: error.line,
            column: error.column,
        },
        message: error.message,
    })?;
    match node {
        // An empty file (or one with only comments) is a config that sets nothing.
        None => Ok(Node::empty_map(origin_at(id))),
        Some(node) if node.is_null() => Ok(Node::empty_map(node.origin)),
        Some(
            node @ Node {
                value: Value::Map(_),
                ..
            },
        ) => Ok(node),
        Some(node) => Err(ConfigError::Invalid {
            file: path.to_owned(),
            location: location(node.origin),
            path: KeyPath::root(),
            message: format!(
                "expected a mapping of keys at the top level, found {}",
                node.kind_name()
            ),
        }),
    }
}

/// Removes `extends:` from a file's top level and resolves it against the file's directory.
fn take_extends(node: &mut Node, file: &Path) -> Result<Option<(PathBuf, Origin)>, ConfigError> {
    let Some(entry) = node.take_entry(EXTENDS_KEY) else {
        return Ok(None);
    };
    let target = match &entry.value.value {
        Value::Scalar(scalar) if !scalar.is_null() && !scalar.text.is_empty() => &scalar.text,
        _ => {
            return Err(ConfigError::Invalid {
                file: file.to_owned(),
                location: location(entry.value.origin),
                path: KeyPath::root().key(EXTENDS_KEY),
                message: format!(
                    "expected the path of the base file (relative to this file), found {}",
                    entry.value.kind_name()
                ),
            });
        }
    };
    let dir = file.parent().unwrap_or(Path::new(""));
    Ok(Some((dir.join(target), entry.value.origin)))
}

fn deserialize<T: DeserializeOwned>(files: &[PathBuf], root: &Node) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(tree::NodeDeserializer::new(root)).map_err(|error| {
        let path = KeyPath::from_serde(error.path());
        let inner = error.into_inner();
        // The deserializer attaches the node it was reading; looking the path up covers errors
        // raised after a node was left (e.g. a missing field, reported at the end of its map).
        let origin = inner.origin.unwrap_or_else(|| {
            if inner.about_key {
                root.locate_key(&path)
            } else {
                root.locate(&path)
            }
        });
        ConfigError::Invalid {
            file: files[origin.file].clone(),
            location: location(origin),
            path,
            message: inner.message,
        }
    })
}
