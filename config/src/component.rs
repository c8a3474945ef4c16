//! The five components, loading "whichever this file is for", and printing the effective config.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::Serialize;

use crate::agent::AgentConfig;
use crate::build_index::BuildIndexConfig;
use crate::error::ConfigError;
use crate::loader::{Loaded, Loader};
use crate::origin::OriginConfig;
use crate::proxy::ProxyConfig;
use crate::telemetry::Telemetry;
use crate::tracker::TrackerConfig;
use crate::validate::{ValidationError, nested};

/// A Kraken component, i.e. a `kraken` subcommand with its own config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Component {
    /// `kraken agent`, [`AgentConfig`].
    Agent,
    /// `kraken origin`, [`OriginConfig`].
    Origin,
    /// `kraken tracker`, [`TrackerConfig`].
    Tracker,
    /// `kraken proxy`, [`ProxyConfig`].
    Proxy,
    /// `kraken build-index`, [`BuildIndexConfig`].
    BuildIndex,
}

impl Component {
    /// Every component, in the order a cluster is usually started bottom-up.
    pub const ALL: [Component; 5] = [
        Self::Agent,
        Self::Origin,
        Self::Tracker,
        Self::Proxy,
        Self::BuildIndex,
    ];

    /// The subcommand name: `agent`, `origin`, `tracker`, `proxy`, `build-index`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Agent => "agent",
            Self::Origin => "origin",
            Self::Tracker => "tracker",
            Self::Proxy => "proxy",
            Self::BuildIndex => "build-index",
        }
    }

    /// The component a config file is for, from its name (`origin.yaml`, `agent-dev.yaml`,
    /// `build_index.yaml`) or, failing that, the nearest directory naming one
    /// (`examples/origin/development.yaml`). `None` when no name, or more than one, matches.
    pub fn guess_from_path(path: &Path) -> Option<Component> {
        // `file_stem` drops only the extension: `prod.tracker.yaml` → `prod.tracker`.
        let stem = path
            .file_stem()
            .and_then(|stem| stem.to_str())
            .unwrap_or_default();
        if let Some(component) = Self::named_in(stem) {
            return Some(component);
        }
        path.parent()?
            .components()
            .rev()
            .filter_map(|part| part.as_os_str().to_str())
            .find_map(Self::named_in)
    }

    /// The one component whose name appears as a word in `text`.
    fn named_in(text: &str) -> Option<Component> {
        let text = text.to_ascii_lowercase().replace(['_', '.', ' '], "-");
        let words: Vec<&str> = text.split('-').collect();
        let found: Vec<Component> = Self::ALL
            .into_iter()
            .filter(|component| match component {
                // Two words once split: look for them side by side, or glued (`buildindex`).
                Self::BuildIndex => {
                    words.windows(2).any(|w| w == ["build", "index"])
                        || words.contains(&"buildindex")
                }
                other => words.contains(&other.name()),
            })
            .collect();
        match found[..] {
            [one] => Some(one),
            _ => None,
        }
    }

    /// Loads and validates `path` as this component's config.
    pub fn load(self, path: &Path) -> Result<Loaded<AnyConfig>, ConfigError> {
        self.load_with(&Loader::new(), path)
    }

    /// Like [`Component::load`] with a specific loader (environment).
    pub fn load_with(
        self,
        loader: &Loader<'_>,
        path: &Path,
    ) -> Result<Loaded<AnyConfig>, ConfigError> {
        Ok(match self {
            Self::Agent => loader.load(path)?.map(|c| AnyConfig::Agent(Box::new(c))),
            Self::Origin => loader.load(path)?.map(|c| AnyConfig::Origin(Box::new(c))),
            Self::Tracker => loader.load(path)?.map(|c| AnyConfig::Tracker(Box::new(c))),
            Self::Proxy => loader.load(path)?.map(|c| AnyConfig::Proxy(Box::new(c))),
            Self::BuildIndex => loader
                .load(path)?
                .map(|c| AnyConfig::BuildIndex(Box::new(c))),
        })
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is not a component.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown component `{0}`: expected one of agent, origin, tracker, proxy, build-index")]
pub struct UnknownComponent(pub String);

impl FromStr for Component {
    type Err = UnknownComponent;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.to_ascii_lowercase().replace('_', "-").as_str() {
            "agent" => Ok(Self::Agent),
            "origin" => Ok(Self::Origin),
            "tracker" => Ok(Self::Tracker),
            "proxy" => Ok(Self::Proxy),
            "build-index" | "buildindex" => Ok(Self::BuildIndex),
            _ => Err(UnknownComponent(text.to_owned())),
        }
    }
}

/// Loads `path` as `component`'s config.
pub fn load_any(component: Component, path: &Path) -> Result<Loaded<AnyConfig>, ConfigError> {
    component.load(path)
}

/// The config of any component.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
#[allow(missing_docs)] // One variant per component, named after it.
pub enum AnyConfig {
    Agent(Box<AgentConfig>),
    Origin(Box<OriginConfig>),
    Tracker(Box<TrackerConfig>),
    Proxy(Box<ProxyConfig>),
    BuildIndex(Box<BuildIndexConfig>),
}

/// Why the effective config could not be printed (not expected for configs that loaded).
#[derive(Debug, thiserror::Error)]
#[error("cannot print the config: {0}")]
pub struct PrintError(String);

impl AnyConfig {
    pub fn component(&self) -> Component {
        match self {
            Self::Agent(_) => Component::Agent,
            Self::Origin(_) => Component::Origin,
            Self::Tracker(_) => Component::Tracker,
            Self::Proxy(_) => Component::Proxy,
            Self::BuildIndex(_) => Component::BuildIndex,
        }
    }

    pub fn telemetry(&self) -> Telemetry<'_> {
        match self {
            Self::Agent(c) => c.telemetry(),
            Self::Origin(c) => c.telemetry(),
            Self::Tracker(c) => c.telemetry(),
            Self::Proxy(c) => c.telemetry(),
            Self::BuildIndex(c) => c.telemetry(),
        }
    }

    /// The effective config (every default filled in) as YAML, secrets shown as `<redacted>`.
    pub fn to_yaml(&self) -> Result<String, PrintError> {
        to_yaml(self)
    }

    /// The effective config as pretty-printed JSON, secrets shown as `<redacted>`.
    pub fn to_json_pretty(&self) -> Result<String, PrintError> {
        to_json_pretty(self)
    }
}

/// Any config section as YAML; secrets print as `<redacted>`.
pub fn to_yaml<T: Serialize>(config: &T) -> Result<String, PrintError> {
    serde_saphyr::to_string(config).map_err(|e| PrintError(e.to_string()))
}

/// Any config section as pretty JSON; secrets print as `<redacted>`.
pub fn to_json_pretty<T: Serialize>(config: &T) -> Result<String, PrintError> {
    serde_json::to_string_pretty(config).map_err(|e| PrintError(e.to_string()))
}

pub(crate) fn validate_telemetry(telemetry: Telemetry<'_>) -> Result<(), ValidationError> {
    nested("log", telemetry.log)?;
    nested("metrics", telemetry.metrics)?;
    nested("tracing", telemetry.tracing)
}
