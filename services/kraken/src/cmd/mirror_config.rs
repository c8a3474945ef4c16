//! `kraken mirror-config`: makes a node's container runtime pull through its local agent, and
//! fall back to the upstream registry when the agent does not answer.
//!
//! - containerd: one `hosts.toml` per upstream under its `config_path` (the CRI plugin's
//!   `registry.config_path`, or `ctr --hosts-dir`): the agent as the first host, the upstream
//!   as `server`, tried when the agent fails.
//! - podman and CRI-O: a `registries.conf` drop-in (both read containers-registries.conf(5)):
//!   the agent as a mirror of each upstream; the upstream itself stays the fallback.
//! - Docker: `registry-mirrors` in `daemon.json` applies to Docker Hub only, so only
//!   `docker.io` can go through the agent; printed, not written (daemon.json holds other
//!   settings and needs a daemon restart).
//!
//! The rendering is pure ([`render`]); the command only writes what it returns. A file this
//! command did not write is never replaced without `--force`: it may hold an operator's own
//! mirror settings.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use serde::Serialize;

/// First line of every file this command writes: how a later run knows it may replace it.
pub(crate) const MARKER: &str = "# Written by `kraken mirror-config`";

#[derive(Args, Debug)]
pub(crate) struct MirrorConfigArgs {
    /// The container runtime to configure.
    #[arg(long, value_enum)]
    runtime: Runtime,
    /// The local agent's registry API (host:port), e.g. 127.0.0.1:16000. The agent serves
    /// plain HTTP to its own node (its `allowed_cidrs`).
    #[arg(long)]
    agent: String,
    /// An upstream registry pulled through the agent: a host as image references name it
    /// (`docker.io`, `ghcr.io`, `registry.example.com:5000`), or a URL to give its scheme
    /// (`http://10.0.0.5:5000` for a plain-HTTP registry). Repeat for several.
    #[arg(long = "upstream", required = true)]
    upstreams: Vec<String>,
    #[command(flatten)]
    paths: RuntimePaths,
    /// Print what would be written instead of writing it.
    #[arg(long)]
    dry_run: bool,
    /// Replace files this command did not write.
    #[arg(long)]
    force: bool,
}

/// Where the runtimes read their mirror configuration (written here, checked by
/// `kraken doctor`).
#[derive(Args, Debug)]
pub(crate) struct RuntimePaths {
    /// containerd: the directory of `hosts.toml` trees (containerd's `config_path`).
    #[arg(long, default_value = "/etc/containerd/certs.d")]
    pub(crate) config_path: PathBuf,
    /// podman / CRI-O: the registries.conf drop-in.
    #[arg(
        long,
        default_value = "/etc/containers/registries.conf.d/50-kraken-mirror.conf"
    )]
    pub(crate) registries_conf: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Runtime {
    Containerd,
    Podman,
    Crio,
    Docker,
}

/// An upstream registry: the host image references use, and where it is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Upstream {
    /// As in image references (`docker.io`, `host:5000`): containerd's directory name and
    /// registries.conf's `prefix`.
    pub(crate) host: String,
    /// Where the registry API is (`https://registry-1.docker.io` for Docker Hub).
    pub(crate) server: String,
    /// Served over plain HTTP.
    pub(crate) plain_http: bool,
}

impl Upstream {
    pub(crate) fn parse(text: &str) -> anyhow::Result<Self> {
        let (scheme, rest) = match text.split_once("://") {
            Some((scheme @ ("http" | "https"), rest)) => (scheme, rest),
            Some((scheme, _)) => {
                bail!("upstream `{text}`: scheme `{scheme}` is not http or https")
            }
            None => ("https", text),
        };
        let host = rest.trim_end_matches('/');
        if host.is_empty() || host.contains(['/', ' ', '"', '\\']) {
            bail!(
                "upstream `{text}` is not a registry host (e.g. `docker.io`, `ghcr.io`, \
                 `http://10.0.0.5:5000`)"
            );
        }
        // Docker Hub's references say docker.io; its API lives elsewhere.
        let server = match host {
            "docker.io" | "index.docker.io" | "registry-1.docker.io" => {
                return Ok(Self {
                    host: "docker.io".into(),
                    server: "https://registry-1.docker.io".into(),
                    plain_http: false,
                });
            }
            _ => format!("{scheme}://{host}"),
        };
        Ok(Self {
            host: host.to_owned(),
            server,
            plain_http: scheme == "http",
        })
    }
}

/// What to do: files to write, or text to print.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Output {
    Files(Vec<(PathBuf, String)>),
    Print(String),
}

/// What `runtime` needs so that `upstreams` are pulled through the agent at `agent`.
pub(crate) fn render(
    runtime: Runtime,
    agent: &str,
    upstreams: &[Upstream],
    config_path: &Path,
    registries_conf: &Path,
) -> anyhow::Result<Output> {
    match runtime {
        Runtime::Containerd => Ok(Output::Files(
            upstreams
                .iter()
                .map(|u| {
                    let path = config_path.join(&u.host).join("hosts.toml");
                    containerd_hosts(agent, u).map(|text| (path, text))
                })
                .collect::<anyhow::Result<_>>()?,
        )),
        Runtime::Podman | Runtime::Crio => Ok(Output::Files(vec![(
            registries_conf.to_owned(),
            registries_conf_text(agent, upstreams)?,
        )])),
        Runtime::Docker => docker_daemon_json(agent, upstreams).map(Output::Print),
    }
}

/// containerd's `hosts.toml` (config_path layout): hosts are tried in order, then `server`.
fn containerd_hosts(agent: &str, upstream: &Upstream) -> anyhow::Result<String> {
    #[derive(Serialize)]
    struct HostsToml {
        server: String,
        host: std::collections::BTreeMap<String, Host>,
    }
    #[derive(Serialize)]
    struct Host {
        capabilities: Vec<&'static str>,
    }
    let file = HostsToml {
        server: upstream.server.clone(),
        host: [(
            format!("http://{agent}"),
            Host {
                // Never push to an agent: it serves pulls only.
                capabilities: vec!["pull", "resolve"],
            },
        )]
        .into(),
    };
    let body = toml::to_string(&file).context("rendering hosts.toml")?;
    Ok(format!(
        "{MARKER}: pulls of {host} images go through the Kraken agent at {agent}, and straight \
         to {server} when the agent fails.\n{body}",
        host = upstream.host,
        server = upstream.server,
    ))
}

/// A containers-registries.conf(5) v2 drop-in: the agent as each upstream's mirror.
fn registries_conf_text(agent: &str, upstreams: &[Upstream]) -> anyhow::Result<String> {
    #[derive(Serialize)]
    struct RegistriesConf {
        registry: Vec<Registry>,
    }
    #[derive(Serialize)]
    struct Registry {
        prefix: String,
        location: String,
        insecure: bool,
        mirror: Vec<Mirror>,
    }
    #[derive(Serialize)]
    struct Mirror {
        location: String,
        /// The agent serves plain HTTP to its own node.
        insecure: bool,
        // No `pull-from-mirror`: its default (`all`: tags and digests; the agent resolves
        // tags on every request) is what we want, and podman 4.3 predates the key.
    }
    let file = RegistriesConf {
        registry: upstreams
            .iter()
            .map(|u| Registry {
                prefix: u.host.clone(),
                location: u
                    .server
                    .split_once("://")
                    .map_or(u.server.as_str(), |(_, rest)| rest)
                    .to_owned(),
                insecure: u.plain_http,
                mirror: vec![Mirror {
                    location: agent.to_owned(),
                    insecure: true,
                }],
            })
            .collect(),
    };
    let body = toml::to_string(&file).context("rendering registries.conf")?;
    let hosts: Vec<&str> = upstreams.iter().map(|u| u.host.as_str()).collect();
    Ok(format!(
        "{MARKER}: pulls of {} images try the Kraken agent at {agent} first, then the registry \
         itself.\n{body}",
        hosts.join(", ")
    ))
}

/// The `daemon.json` keys for Docker, which mirrors Docker Hub only.
fn docker_daemon_json(agent: &str, upstreams: &[Upstream]) -> anyhow::Result<String> {
    let others: Vec<&str> = upstreams
        .iter()
        .filter(|u| u.host != "docker.io")
        .map(|u| u.host.as_str())
        .collect();
    if !others.is_empty() {
        bail!(
            "Docker's registry-mirrors apply to Docker Hub (docker.io) only, so {} cannot be \
             pulled through the agent by dockerd; use containerd (--runtime containerd, or \
             Docker's containerd image store with a hosts.toml) for other registries",
            others.join(", ")
        );
    }
    let json = serde_json::json!({
        "registry-mirrors": [format!("http://{agent}")],
        // dockerd refuses a plain-HTTP mirror unless it is listed as insecure.
        "insecure-registries": [agent],
    });
    let mut text = String::new();
    let _ = writeln!(
        text,
        "Merge into /etc/docker/daemon.json, then restart dockerd (`systemctl restart docker`).\n\
         Docker Hub pulls then go through the agent at {agent} and straight to Docker Hub when \
         it fails:\n"
    );
    text.push_str(&serde_json::to_string_pretty(&json).context("rendering daemon.json")?);
    Ok(text)
}

pub(crate) fn run(args: MirrorConfigArgs) -> anyhow::Result<()> {
    // host:port, by address or name: what a registry reference puts before the first `/`.
    if args.agent.contains(['/', ' ', '"', '\\']) || !args.agent.contains(':') {
        bail!(
            "--agent `{}` is not host:port of the agent's registry API (e.g. 127.0.0.1:16000)",
            args.agent
        );
    }
    let upstreams = args
        .upstreams
        .iter()
        .map(|u| Upstream::parse(u))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let output = render(
        args.runtime,
        &args.agent,
        &upstreams,
        &args.paths.config_path,
        &args.paths.registries_conf,
    )?;
    match output {
        Output::Print(text) => println!("{text}"),
        Output::Files(files) if args.dry_run => {
            for (path, text) in files {
                println!("# {}\n{text}", path.display());
            }
        }
        Output::Files(files) => {
            for (path, _) in &files {
                ensure_ours(path, args.force)?;
            }
            for (path, text) in files {
                write_file(&path, &text)?;
                println!("wrote {}", path.display());
            }
            if matches!(args.runtime, Runtime::Containerd) {
                println!(
                    "containerd reads these when its CRI plugin's registry.config_path is {} \
                     (no restart needed once it is); ctr: --hosts-dir {}",
                    args.paths.config_path.display(),
                    args.paths.config_path.display()
                );
            }
        }
    }
    Ok(())
}

/// Refuses to replace a file this command did not write, unless forced.
fn ensure_ours(path: &Path, force: bool) -> anyhow::Result<()> {
    match std::fs::read_to_string(path) {
        Ok(text) if !force && !text.starts_with(MARKER) => bail!(
            "{} exists and was not written by kraken mirror-config; it may hold your own \
             registry settings: move it away, or pass --force to replace it",
            path.display()
        ),
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes `text` to `path` atomically: a runtime reading the file never sees half of it.
fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .with_context(|| format!("{} has no directory", path.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let temp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .map_or_else(|| "mirror".into(), |n| n.to_string_lossy())
    ));
    std::fs::write(&temp, text).with_context(|| format!("writing {}", temp.display()))?;
    std::fs::rename(&temp, path).with_context(|| format!("replacing {}", path.display()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn upstreams(list: &[&str]) -> Vec<Upstream> {
        list.iter().map(|u| Upstream::parse(u).unwrap()).collect()
    }

    #[test]
    fn upstreams_parse_docker_hub_hosts_and_urls() {
        let hub = Upstream::parse("docker.io").unwrap();
        assert_eq!(hub.server, "https://registry-1.docker.io");
        let plain = Upstream::parse("http://127.0.0.1:5000/").unwrap();
        assert_eq!(plain.host, "127.0.0.1:5000");
        assert!(plain.plain_http);
        let error = Upstream::parse("ftp://x").unwrap_err().to_string();
        assert!(error.contains("scheme `ftp`"), "{error}");
        assert!(Upstream::parse("host/path").is_err());
    }

    #[test]
    fn containerd_gets_one_hosts_toml_per_upstream_with_the_agent_first() {
        let Output::Files(files) = render(
            Runtime::Containerd,
            "127.0.0.1:16000",
            &upstreams(&["docker.io", "http://10.0.0.5:5000"]),
            Path::new("/etc/containerd/certs.d"),
            Path::new("unused"),
        )
        .unwrap() else {
            panic!("containerd's config is written")
        };
        assert_eq!(
            files[0].0,
            Path::new("/etc/containerd/certs.d/docker.io/hosts.toml")
        );
        let parsed: toml::Value = toml::from_str(&files[0].1).unwrap();
        assert_eq!(
            parsed["server"].as_str(),
            Some("https://registry-1.docker.io")
        );
        let agent = &parsed["host"]["http://127.0.0.1:16000"];
        assert_eq!(
            agent["capabilities"].as_array().unwrap().len(),
            2,
            "pull and resolve, never push"
        );
        assert!(files[0].1.starts_with(MARKER));
        let second: toml::Value = toml::from_str(&files[1].1).unwrap();
        assert_eq!(second["server"].as_str(), Some("http://10.0.0.5:5000"));
    }

    #[test]
    fn podman_and_crio_get_the_agent_as_each_upstreams_mirror() {
        for runtime in [Runtime::Podman, Runtime::Crio] {
            let Output::Files(files) = render(
                runtime,
                "127.0.0.1:16000",
                &upstreams(&["docker.io", "http://10.0.0.5:5000"]),
                Path::new("unused"),
                Path::new("/etc/containers/registries.conf.d/50-kraken-mirror.conf"),
            )
            .unwrap() else {
                panic!("registries.conf is written")
            };
            let parsed: toml::Value = toml::from_str(&files[0].1).unwrap();
            let registries = parsed["registry"].as_array().unwrap();
            assert_eq!(registries[0]["prefix"].as_str(), Some("docker.io"));
            assert_eq!(
                registries[0]["location"].as_str(),
                Some("registry-1.docker.io")
            );
            assert_eq!(
                registries[0]["mirror"][0]["location"].as_str(),
                Some("127.0.0.1:16000")
            );
            assert_eq!(registries[1]["insecure"].as_bool(), Some(true));
        }
    }

    #[test]
    fn docker_mirrors_docker_hub_only_and_says_so() {
        let Output::Print(text) = render(
            Runtime::Docker,
            "127.0.0.1:16000",
            &upstreams(&["docker.io"]),
            Path::new("x"),
            Path::new("y"),
        )
        .unwrap() else {
            panic!("docker's config is printed")
        };
        assert!(text.contains("\"registry-mirrors\""), "{text}");
        assert!(text.contains("http://127.0.0.1:16000"), "{text}");
        let error = render(
            Runtime::Docker,
            "127.0.0.1:16000",
            &upstreams(&["ghcr.io"]),
            Path::new("x"),
            Path::new("y"),
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("Docker Hub (docker.io) only"), "{error}");
        assert!(error.contains("ghcr.io"), "{error}");
    }

    #[test]
    fn a_file_not_written_here_is_kept_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts.toml");
        std::fs::write(&path, "server = \"https://mine\"\n").unwrap();
        let error = ensure_ours(&path, false).unwrap_err().to_string();
        assert!(error.contains("--force"), "{error}");
        ensure_ours(&path, true).unwrap();
        write_file(&path, &format!("{MARKER}\n")).unwrap();
        ensure_ours(&path, false).unwrap();
        ensure_ours(&dir.path().join("absent"), false).unwrap();
    }
}
