//! What a component needs from the machine before it can serve, checked without starting it: the
//! `tls:` files are readable and load as mutual-TLS material, every secret or CA file it names
//! (`*_file`, a registry backend's `ca`) is readable, each remote cluster's TLS (`remotes.*.tls`)
//! loads as material to dial it and the `trusted_remotes` CAs load as trust domains, and every directory it writes to is a
//! writable directory or can be created. `kraken config check` runs these checks and every
//! component runs them at start, so the two fail on the same things with the same messages.
//!
//! Addresses are not checked: whether a port is free can only be known by binding it, and it may
//! change between a check and a start.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use kraken_config::AnyConfig;
use kraken_config::agent::AgentConfig;
use kraken_config::backend::{AuthConfig, BackendConfig, BackendKind};
use kraken_config::build_index::BuildIndexConfig;
use kraken_config::origin::OriginConfig;
use kraken_config::proxy::ProxyConfig;
use kraken_config::remote::RemoteTlsSection;
use kraken_config::tls::TlsSection;
use kraken_config::tracker::{PeerStoreBackend, TrackerConfig};
use kraken_tls::{TlsConfig, TlsMaterial, TrustDomains};

/// What a component reads and writes on this machine, each with the config key that names it.
#[derive(Debug, Default)]
pub(crate) struct Needs<'a> {
    tls: Option<&'a TlsSection>,
    /// Files read at start or on first use: secrets and extra CAs.
    files: Vec<(String, PathBuf)>,
    dirs: Vec<(String, PathBuf)>,
    /// `remotes.<name>.tls` of each remote cluster, by name.
    remotes: Vec<(&'a str, &'a RemoteTlsSection)>,
    /// `trusted_remotes.<name>.ca`, by name.
    trusted: Vec<(String, PathBuf)>,
}

/// One thing that would make the component fail at start.
#[derive(Debug)]
pub(crate) struct Problem {
    /// The key path in the config, e.g. `tls.key` or `store.dir`.
    pub(crate) key: String,
    /// What is wrong, naming the file or directory.
    pub(crate) what: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.what)
    }
}

impl<'a> Needs<'a> {
    pub(crate) fn of(config: &'a AnyConfig) -> Self {
        match config {
            AnyConfig::Agent(c) => Self::agent(c),
            AnyConfig::Origin(c) => Self::origin(c),
            AnyConfig::Tracker(c) => Self::tracker(c),
            AnyConfig::Proxy(c) => Self::proxy(c),
            AnyConfig::BuildIndex(c) => Self::build_index(c),
        }
    }

    pub(crate) fn agent(config: &'a AgentConfig) -> Self {
        Self {
            tls: Some(&config.tls),
            files: registry_tls_files(&config.registry_tls),
            dirs: vec![("store.dir".to_owned(), config.store.dir.clone())],
            ..Self::default()
        }
    }

    pub(crate) fn origin(config: &'a OriginConfig) -> Self {
        let mut dirs = vec![
            ("store.dir".to_owned(), config.store.dir.clone()),
            (
                "writeback.dir".to_owned(),
                config.writeback.dir_or_default(&config.store.dir),
            ),
        ];
        dirs.extend(fs_backend_roots(&config.backends));
        Self {
            tls: Some(&config.tls),
            files: secret_files(&config.backends, &config.auth),
            dirs,
            remotes: config
                .remotes
                .iter()
                .map(|(name, remote)| (name.as_str(), &remote.tls))
                .collect(),
            trusted: config.trusted_remote_cas(),
        }
    }

    pub(crate) fn tracker(config: &'a TrackerConfig) -> Self {
        let redis = &config.peerstore.redis;
        let files = match (&config.peerstore.backend, &redis.password_file) {
            (PeerStoreBackend::Redis, Some(path)) => {
                vec![("peerstore.redis.password_file".to_owned(), path.clone())]
            }
            _ => Vec::new(),
        };
        Self {
            tls: Some(&config.tls),
            files,
            ..Self::default()
        }
    }

    pub(crate) fn proxy(config: &'a ProxyConfig) -> Self {
        let mut files = registry_tls_files(&config.registry_tls);
        let auth = &config.auth;
        if let Some(path) = &auth.htpasswd_file {
            files.push(("auth.htpasswd_file".to_owned(), path.clone()));
        }
        if let Some(path) = &auth.token.signing_key_file {
            files.push(("auth.token.signing_key_file".to_owned(), path.clone()));
        }
        Self {
            tls: Some(&config.tls),
            files,
            dirs: vec![("store.dir".to_owned(), config.store.dir.clone())],
            ..Self::default()
        }
    }

    pub(crate) fn build_index(config: &'a BuildIndexConfig) -> Self {
        let mut dirs = vec![
            ("tag_store.dir".to_owned(), config.tag_store.dir.clone()),
            ("replication.dir".to_owned(), config.replication.dir.clone()),
        ];
        dirs.extend(fs_backend_roots(&config.backends));
        Self {
            tls: Some(&config.tls),
            files: secret_files(&config.backends, &config.auth),
            dirs,
            remotes: config
                .remotes
                .iter()
                .map(|(name, remote)| (name.as_str(), &remote.tls))
                .collect(),
            trusted: config.trusted_remote_cas(),
        }
    }

    /// Every problem found, in config order; empty when the component can start.
    pub(crate) fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if let Some(tls) = self.tls {
            let own = tls_problems(tls);
            let own_usable = own.is_empty();
            problems.extend(own);
            problems.extend(self.remote_problems(tls, own_usable));
        }
        for (key, path) in &self.files {
            if let Err(error) = fs::read(path) {
                problems.push(Problem {
                    key: key.clone(),
                    what: format!("cannot read {}: {}", path.display(), describe(&error)),
                });
            }
        }
        for (key, dir) in &self.dirs {
            if let Err(what) = check_writable_dir(dir) {
                problems.push(Problem {
                    key: key.clone(),
                    what,
                });
            }
        }
        problems
    }

    /// The remote clusters' files must be readable and, once our own TLS loads (`own_usable`),
    /// load as what the component builds from them at start.
    fn remote_problems(&self, own: &TlsSection, own_usable: bool) -> Vec<Problem> {
        let mut problems = Vec::new();
        for (name, remote) in &self.remotes {
            let prefix = format!("remotes.{name}.tls");
            let mut readable = true;
            let files = [
                ("ca", Some(&remote.ca)),
                ("cert", remote.cert.as_ref()),
                ("key", remote.key.as_ref()),
            ];
            for (key, path) in files {
                let Some(path) = path else { continue };
                if let Err(problem) = readable_file(format!("{prefix}.{key}"), path) {
                    problems.push(problem);
                    readable = false;
                }
            }
            let (Some(identity), Some(own_ca), true, true) =
                (remote.identity(own), &own.ca, readable, own_usable)
            else {
                continue;
            };
            let config = TlsConfig {
                ca: own_ca.clone(),
                cert: identity.0.to_owned(),
                key: identity.1.to_owned(),
            };
            if let Err(error) = TlsMaterial::load_for_remote(&config, &remote.ca) {
                problems.push(Problem {
                    key: prefix,
                    what: kraken_core::error_chain(&error),
                });
            }
        }
        let mut readable = true;
        for (name, ca) in &self.trusted {
            if let Err(problem) = readable_file(format!("trusted_remotes.{name}.ca"), ca) {
                problems.push(problem);
                readable = false;
            }
        }
        if readable && own_usable && !self.trusted.is_empty() {
            let (Some(ca), Some(cert), Some(key)) = (&own.ca, &own.cert, &own.key) else {
                return problems;
            };
            let loaded = TlsMaterial::load(&TlsConfig {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            })
            .and_then(|material| TrustDomains::load(&material, &self.trusted));
            if let Err(error) = loaded {
                problems.push(Problem {
                    key: "trusted_remotes".to_owned(),
                    what: kraken_core::error_chain(&error),
                });
            }
        }
        problems
    }

    /// Fails with every problem, one per line, each after `file: `.
    pub(crate) fn check(&self, file: &Path) -> anyhow::Result<()> {
        let problems = self.problems();
        if problems.is_empty() {
            return Ok(());
        }
        let lines: Vec<String> = problems
            .iter()
            .map(|problem| format!("{}: {problem}", file.display()))
            .collect();
        anyhow::bail!(
            "{} cannot start on this machine:\n{}",
            file.display(),
            lines.join("\n")
        )
    }
}

fn fs_backend_roots(backends: &[BackendConfig]) -> impl Iterator<Item = (String, PathBuf)> + '_ {
    backends
        .iter()
        .enumerate()
        .filter_map(|(index, rule)| match &rule.backend {
            BackendKind::Fs(fs) => Some((
                format!("backends[{index}].backend.fs.root"),
                fs.root.clone(),
            )),
            _ => None,
        })
}

/// Secret files of the auth section and of registry backends, and registry backends' CAs.
/// A registry port's certificate and key, when it serves TLS.
fn registry_tls_files(
    section: &kraken_config::registry_auth::RegistryTlsConfig,
) -> Vec<(String, PathBuf)> {
    section
        .files()
        .map(|(cert, key)| {
            vec![
                ("registry_tls.cert".to_owned(), cert.clone()),
                ("registry_tls.key".to_owned(), key.clone()),
            ]
        })
        .unwrap_or_default()
}

fn secret_files(backends: &[BackendConfig], auth: &AuthConfig) -> Vec<(String, PathBuf)> {
    let mut files = Vec::new();
    for (index, rule) in backends.iter().enumerate() {
        let (kind, registry) = match &rule.backend {
            BackendKind::RegistryBlob(registry) => ("registry_blob", registry),
            BackendKind::RegistryTag(registry) => ("registry_tag", registry),
            _ => continue,
        };
        let security = &registry.security;
        let prefix = format!("backends[{index}].backend.{kind}.security");
        if let Some(path) = &security.basic.password_file {
            files.push((format!("{prefix}.basic.password_file"), path.clone()));
        }
        if let Some(path) = &security.tls.ca {
            files.push((format!("{prefix}.tls.ca"), path.clone()));
        }
    }
    for (user, credentials) in &auth.s3 {
        if let Some(path) = &credentials.aws_secret_access_key_file {
            files.push((
                format!("auth.s3.{user}.aws_secret_access_key_file"),
                path.clone(),
            ));
        }
    }
    for (user, credentials) in &auth.gcs {
        if let Some(path) = &credentials.access_blob_file {
            files.push((format!("auth.gcs.{user}.access_blob_file"), path.clone()));
        }
    }
    files
}

/// The three files must be named, readable, and together load as this component's identity.
fn tls_problems(section: &TlsSection) -> Vec<Problem> {
    let files = [
        ("tls.ca", &section.ca, "the cluster CA certificate"),
        ("tls.cert", &section.cert, "this component's certificate"),
        ("tls.key", &section.key, "this component's private key"),
    ];
    let mut problems = Vec::new();
    for (key, path, what) in files {
        match path {
            None => problems.push(Problem {
                key: key.to_owned(),
                what: format!(
                    "missing: every component uses mutual TLS and needs {what} \
                     (`kraken certs --out DIR` makes a development PKI)"
                ),
            }),
            Some(path) => {
                if let Err(error) = fs::read(path) {
                    problems.push(Problem {
                        key: key.to_owned(),
                        what: format!("cannot read {}: {}", path.display(), describe(&error)),
                    });
                }
            }
        }
    }
    if !problems.is_empty() {
        return problems;
    }
    let (Some(ca), Some(cert), Some(key)) = (&section.ca, &section.cert, &section.key) else {
        return problems;
    };
    let config = TlsConfig {
        ca: ca.clone(),
        cert: cert.clone(),
        key: key.clone(),
    };
    if let Err(error) = TlsMaterial::load(&config) {
        problems.push(Problem {
            key: "tls".to_owned(),
            what: kraken_core::error_chain(&error),
        });
    }
    problems
}

/// `path` (named by `key`) can be read.
fn readable_file(key: String, path: &Path) -> Result<(), Problem> {
    fs::read(path).map(drop).map_err(|error| Problem {
        key,
        what: format!("cannot read {}: {}", path.display(), describe(&error)),
    })
}

fn describe(error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::NotFound => "no such file".to_owned(),
        io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        io::ErrorKind::NotADirectory => "a component of the path is not a directory".to_owned(),
        io::ErrorKind::IsADirectory => "it is a directory, not a file".to_owned(),
        _ => error.to_string(),
    }
}

/// A directory the component writes to must be a writable directory, or be creatable: its
/// nearest existing ancestor is a writable directory. Writability is probed by creating and
/// removing a file, which also catches read-only mounts (and is right for root, who ignores
/// permission bits).
fn check_writable_dir(dir: &Path) -> Result<(), String> {
    if dir.as_os_str().is_empty() {
        return Err("is empty: a directory path is needed".to_owned());
    }
    let mut existing = dir;
    loop {
        match fs::metadata(existing) {
            Ok(meta) if meta.is_dir() => break,
            Ok(_) if existing == dir => {
                return Err(format!("{} exists and is not a directory", dir.display()));
            }
            Ok(_) => {
                return Err(format!(
                    "cannot create {}: {} is not a directory",
                    dir.display(),
                    existing.display()
                ));
            }
            // A missing ancestor, or one that is a file: keep walking up to what exists.
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) && existing != Path::new(".") =>
            {
                existing = match existing.parent() {
                    Some(parent) if !parent.as_os_str().is_empty() => parent,
                    // A relative path whose first component is missing is created in the
                    // working directory.
                    _ => Path::new("."),
                };
            }
            Err(error) => {
                return Err(format!(
                    "cannot inspect {}: {}",
                    existing.display(),
                    describe(&error)
                ));
            }
        }
    }
    if let Err(error) = probe_write(existing) {
        return Err(if existing == dir {
            format!("{} is not writable: {}", dir.display(), describe(&error))
        } else {
            format!(
                "cannot create {}: {} is not writable: {}",
                dir.display(),
                existing.display(),
                describe(&error)
            )
        });
    }
    Ok(())
}

fn probe_write(dir: &Path) -> io::Result<()> {
    let probe = dir.join(format!(".kraken-preflight-{}", std::process::id()));
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)?;
    fs::remove_file(&probe)
}
