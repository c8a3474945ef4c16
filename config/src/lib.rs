//! Typed configuration for every Kraken component, loaded from YAML.
//!
//! One pipeline serves all five components: read the file, follow its `extends:` chain and
//! merge it (maps deep, lists and scalars replaced), substitute `${VAR}` / `${VAR:-default}` in
//! string values, deserialize into the component's struct — every struct rejects unknown keys
//! and fills absent ones with Kraken's defaults — and run semantic validation. Key names follow
//! Kraken's so its users recognise them; the doc comment of every field is the reference.
//!
//! This crate must never log or print a secret (a [`Secret`] shows `<redacted>` in `Debug` and
//! in the printed config), never silently ignore a key it does not understand, and never report
//! an error without the file, the dotted key path and what was expected. It does no network I/O
//! and reads no file other than the config chain (secret files are read only on request).
//!
//! YAML is parsed by [`serde-saphyr`](https://docs.rs/serde-saphyr), a maintained pure-Rust
//! YAML crate: its event parser (re-exported as `serde_saphyr::granit_parser`) gives the line,
//! column and quoting style of every node, which the merge, substitution and error reporting
//! need; its serializer prints the effective config. (`serde_yaml` is deprecated and
//! `serde_yml` is unsound, RUSTSEC-2025-0068.)
//!
//! Values: durations are humantime strings (`30s`, `5m`, `1h 30m`); byte sizes are `4MiB`,
//! `64KiB`, `1GB` or integers; bit rates are integers or `800Mbit`-style. A value containing
//! `${…}` is typed after substitution, as if it had been written unquoted, so
//! `port: "${PORT:-15002}"` works for a number. `$${` writes a literal `${`.

pub mod agent;
pub mod backend;
pub mod build_index;
pub mod cluster;
pub mod component;
mod error;
pub mod limits;
mod loader;
pub mod metainfogen;
mod net;
pub mod origin;
mod pattern;
pub mod proxy;
pub mod registry_auth;
pub mod remote;
pub mod scheduler;
mod secret;
pub mod store;
mod substitute;
pub mod telemetry;
pub mod tls;
pub mod tracker;
mod tree;
mod units;
mod validate;
pub mod writeback;

pub use agent::AgentConfig;
pub use build_index::BuildIndexConfig;
pub use component::{AnyConfig, Component, PrintError, UnknownComponent, load_any};
pub use error::{ConfigError, Location};
pub use loader::{EXTENDS_KEY, Loaded, Loader, load, load_from_str};
pub use origin::OriginConfig;
pub use pattern::Pattern;
pub use proxy::ProxyConfig;
pub use secret::{REDACTED, Secret, SecretError};
pub use store::{CleanupConfig, StoreConfig};
pub use substitute::{Env, ProcessEnv};
pub use tracker::TrackerConfig;
pub use tree::{KeyPath, PathSegment};
pub use validate::{Validate, ValidationError};
