//! `kraken doctor --config agent.yaml`: is this node able to pull through the swarm? Checks,
//! from the node itself, what an operator would otherwise check by hand when pulls are slow or
//! failing, and prints a fix for each failure:
//!
//! - the agent's config loads and validates;
//! - its certificate is usable: signed by the CA, the agent role, within its validity (a
//!   certificate not valid yet means this host's clock is behind) and days to expiry;
//! - the agent itself answers gRPC health over mutual TLS;
//! - every tracker and build-index answers gRPC health over mutual TLS, and a refused
//!   handshake is told apart from an unreachable host;
//! - this host's clock is within `--max-skew` of the servers' (the `date` of their answers);
//! - the P2P port answers a QUIC handshake at the address the tracker hands to other peers;
//! - with `--runtime`, the container runtime's mirror config points at the agent.
//!
//! Exits non-zero when any check fails; warnings (a certificate close to expiry) do not.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::bail;
use clap::Args;
use kraken_config::agent::AgentConfig;
use kraken_config::cluster::HostList;
use kraken_tls::{Role, TlsMaterial};
use kraken_transport::advertise::{advertise_ip, resolve_hosts};
use kraken_transport::quic::{PeerEndpoint, QuicTuning};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::mirror_config::{Output, Runtime, RuntimePaths, Upstream, render};
use super::serve;

#[derive(Args, Debug)]
pub(crate) struct DoctorArgs {
    /// The agent's YAML config on this node.
    #[arg(long)]
    config: PathBuf,
    /// Also check that this container runtime pulls through the agent (its mirror config, as
    /// `kraken mirror-config` writes it).
    #[arg(long, value_enum)]
    runtime: Option<Runtime>,
    /// Upstream registries the runtime should pull through the agent (with `--runtime`).
    #[arg(long = "upstream", default_value = "docker.io")]
    upstreams: Vec<String>,
    #[command(flatten)]
    paths: RuntimePaths,
    /// Warn when the certificate expires within this many days.
    #[arg(long, default_value_t = 30)]
    warn_days: u64,
    /// Most this host's clock may differ from the tracker's and build-index's.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    max_skew: Duration,
    /// How long each network check may take.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

/// What one check found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Pass(String),
    Warn(String),
    Fail { problem: String, fix: String },
}

#[derive(Debug, Clone)]
struct Check {
    name: String,
    outcome: Outcome,
}

impl Check {
    fn pass(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            outcome: Outcome::Pass(detail.into()),
        }
    }

    fn fail(name: impl Into<String>, problem: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            outcome: Outcome::Fail {
                problem: problem.into(),
                fix: fix.into(),
            },
        }
    }
}

pub(crate) async fn run(args: DoctorArgs) -> anyhow::Result<()> {
    let checks = diagnose(&args).await;
    let mut failed = 0;
    for check in &checks {
        match &check.outcome {
            Outcome::Pass(detail) => println!("ok    {}: {detail}", check.name),
            Outcome::Warn(detail) => println!("warn  {}: {detail}", check.name),
            Outcome::Fail { problem, fix } => {
                failed += 1;
                println!("FAIL  {}: {problem}\n      fix: {fix}", check.name);
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} checks failed", checks.len());
    }
    println!("all {} checks passed", checks.len());
    Ok(())
}

async fn diagnose(args: &DoctorArgs) -> Vec<Check> {
    let file = args.config.display().to_string();
    let config = match kraken_config::load::<AgentConfig>(&args.config) {
        Ok(loaded) => loaded.config,
        Err(error) => {
            return vec![Check::fail(
                "config",
                format!("{error:#}"),
                format!("correct {file}; `kraken config check {file}` names every problem"),
            )];
        }
    };
    let mut checks = vec![Check::pass("config", format!("{file} loads and validates"))];

    let tls = match serve::tls(&config.tls, &args.config) {
        Ok(tls) => Some(tls),
        Err(error) => {
            checks.push(Check::fail(
                "certificate",
                format!("{error:#}"),
                "point tls.ca, tls.cert and tls.key at this cluster's CA and an agent \
                 certificate it signed (a development PKI: `kraken certs --out DIR`)",
            ));
            None
        }
    };
    if let Some(tls) = &tls {
        checks.push(certificate(tls, args.warn_days, SystemTime::now()));
        let mut times = Vec::new();
        let (agent, _) = health("agent", &local(config.listen.grpc), Role::Agent, tls, args).await;
        checks.push(agent);
        let (tracker, tracker_times) =
            upstreams("tracker", &config.tracker.hosts, Role::Tracker, tls, args).await;
        checks.extend(tracker);
        times.extend(tracker_times);
        if config.build_index.hosts.is_empty() {
            checks.push(Check {
                name: "build-index".into(),
                outcome: Outcome::Warn(
                    "no build_index.hosts: pulls by tag will fail, by digest work".into(),
                ),
            });
        } else {
            let (build_index, build_index_times) = upstreams(
                "build-index",
                &config.build_index.hosts,
                Role::BuildIndex,
                tls,
                args,
            )
            .await;
            checks.extend(build_index);
            times.extend(build_index_times);
        }
        checks.push(clock(&times, args.max_skew));
        checks.push(peer_port(&config, tls, args.timeout).await);
    }
    if let Some(runtime) = args.runtime {
        checks.extend(mirror_config(runtime, &config, args));
    }
    checks
}

/// A listening address as a client on this host dials it.
fn local(addr: SocketAddr) -> String {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port()))
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv6Addr::LOCALHOST, addr.port()))
        }
        _ => addr,
    }
    .to_string()
}

const RENEW: &str = "issue a new agent certificate from the cluster CA (a development PKI: \
                     `kraken certs --out DIR`) and restart the agent";

/// The certificate's role and validity at `now`.
fn certificate(tls: &TlsMaterial, warn_days: u64, now: SystemTime) -> Check {
    const NAME: &str = "certificate";
    match tls.role() {
        Ok(Role::Agent) => {}
        Ok(role) => {
            return Check::fail(
                NAME,
                format!("it carries the {role} role; an agent presents an agent certificate"),
                RENEW,
            );
        }
        Err(error) => return Check::fail(NAME, format!("{error}"), RENEW),
    }
    let validity = match tls.validity() {
        Ok(validity) => validity,
        Err(error) => return Check::fail(NAME, format!("{error}"), RENEW),
    };
    let days = |d: Duration| d.as_secs() / 86_400;
    let date = |t: SystemTime| humantime::format_rfc3339_seconds(t).to_string();
    if let Ok(ago) = now.duration_since(validity.not_after) {
        return Check::fail(
            NAME,
            format!(
                "expired {} ({} days ago): peers, trackers and the build-index refuse it",
                date(validity.not_after),
                days(ago)
            ),
            RENEW,
        );
    }
    if now < validity.not_before {
        return Check::fail(
            NAME,
            format!(
                "not valid until {}: this host's clock is behind, or the certificate is new",
                date(validity.not_before)
            ),
            "check this host's clock (`timedatectl`, chrony/NTP); peers compare certificates \
             against their own clocks",
        );
    }
    let left = validity
        .not_after
        .duration_since(now)
        .map(days)
        .unwrap_or_default();
    let detail = format!(
        "agent role, valid until {} ({left} days)",
        date(validity.not_after)
    );
    if left < warn_days {
        Check {
            name: NAME.into(),
            outcome: Outcome::Warn(format!("{detail}: renew it soon ({RENEW})")),
        }
    } else {
        Check::pass(NAME, detail)
    }
}

/// One health check per host of `hosts`, with the clocks of those that answered.
async fn upstreams(
    what: &str,
    hosts: &HostList,
    role: Role,
    tls: &TlsMaterial,
    args: &DoctorArgs,
) -> (Vec<Check>, Vec<ServerTime>) {
    let mut addresses: Vec<String> = hosts.static_hosts.clone();
    if let Some(dns) = &hosts.dns {
        let resolved = resolve_hosts(&HostList {
            static_hosts: vec![dns.clone()],
            dns: None,
        })
        .await;
        if resolved.is_empty() {
            let check = Check::fail(
                format!("{what} {dns}"),
                "the name does not resolve",
                format!("check DNS for {dns}, or list the {what} hosts under `static`"),
            );
            return (vec![check], Vec::new());
        }
        addresses.extend(resolved.iter().map(ToString::to_string));
    }
    let (mut checks, mut times) = (Vec::new(), Vec::new());
    for address in addresses {
        let (check, time) = health(what, &address, role, tls, args).await;
        checks.push(check);
        times.extend(time);
    }
    (checks, times)
}

/// This host's clock against the servers' (their answers' `date`, whole seconds): certificates
/// and tokens are judged by clocks, and a host far off fails handshakes it should not.
fn clock(times: &[ServerTime], max_skew: Duration) -> Check {
    const NAME: &str = "clock";
    let skew = |t: &ServerTime| {
        // The date is rounded down to the second: up to 1 s of apparent lag is no skew.
        match t.received.duration_since(t.said) {
            Ok(behind) => behind.saturating_sub(Duration::from_secs(1)),
            Err(ahead) => ahead.duration(),
        }
    };
    let Some(worst) = times.iter().max_by_key(|t| skew(t)) else {
        return Check {
            name: NAME.into(),
            outcome: Outcome::Warn("no server answered with its time; not checked".into()),
        };
    };
    let off = skew(worst);
    let direction = if worst.received >= worst.said {
        "ahead of"
    } else {
        "behind"
    };
    if off > max_skew {
        Check::fail(
            NAME,
            format!(
                "this host is {}s {direction} {} (more than {}s)",
                off.as_secs(),
                worst.server,
                max_skew.as_secs()
            ),
            "sync this host's clock (chrony/NTP, `timedatectl`); certificates are checked \
             against it",
        )
    } else {
        Check::pass(
            NAME,
            format!(
                "within {}s of {} server(s) (largest gap {}s, {})",
                max_skew.as_secs(),
                times.len(),
                off.as_secs(),
                worst.server
            ),
        )
    }
}

/// A server's clock as its answer showed it, and when we received the answer.
#[derive(Debug, Clone)]
struct ServerTime {
    server: String,
    said: SystemTime,
    received: SystemTime,
}

/// gRPC health of `address` over mutual TLS, refusing a server of another role; with the
/// time the server's answer carried (its HTTP `date`), when it answered.
async fn health(
    what: &str,
    address: &str,
    role: Role,
    tls: &TlsMaterial,
    args: &DoctorArgs,
) -> (Check, Option<ServerTime>) {
    let name = format!("{what} {address}");
    let unreachable_fix = if role == Role::Agent {
        "start the agent (`systemctl start kraken-agent`), or correct listen.grpc".to_owned()
    } else {
        format!(
            "start the {what}, let this host reach {address} (firewall), or correct the {what} \
             hosts in {}",
            args.config.display()
        )
    };
    let channel = match kraken_transport::grpc::channel(tls, address, None, role) {
        Ok(channel) => channel,
        Err(error) => return (Check::fail(name, format!("{error}"), unreachable_fix), None),
    };
    let request = HealthCheckRequest {
        service: String::new(),
    };
    let answer =
        tokio::time::timeout(args.timeout, HealthClient::new(channel).check(request)).await;
    let (status, server_time) = match answer {
        Ok(Ok(answer)) => {
            let server_time = answer
                .metadata()
                .get("date")
                .and_then(|value| value.to_str().ok())
                .and_then(|text| httpdate::parse_http_date(text).ok())
                .map(|said| ServerTime {
                    server: name.clone(),
                    said,
                    received: SystemTime::now(),
                });
            (answer.into_inner().status, server_time)
        }
        Ok(Err(status)) => {
            // A bare transport error may hide a refused certificate (TLS 1.3 reports the
            // alert after the handshake): ask the server directly.
            let host = kraken_transport::grpc::host_of(address);
            if let Some(refusal) =
                kraken_transport::remote::probe_handshake(tls, address, host, what).await
            {
                let check = Check::fail(
                    name,
                    format!("TLS refused: {refusal}"),
                    format!(
                        "the {what} must trust this cluster's CA, and this certificate must be \
                         valid and carry the agent role"
                    ),
                );
                return (check, None);
            }
            let problem = format!("{:?}: {}", status.code(), kraken_core::error_chain(&status));
            return (Check::fail(name, problem, unreachable_fix), None);
        }
        Err(_) => {
            let problem = format!("no answer within {:?}", args.timeout);
            return (Check::fail(name, problem, unreachable_fix), None);
        }
    };
    let check = match ServingStatus::try_from(status) {
        Ok(ServingStatus::Serving) => Check::pass(name, "SERVING over mutual TLS"),
        other => Check::fail(
            name,
            format!(
                "answers {}",
                other.map_or("an unknown status", |s| s.as_str_name())
            ),
            format!("it is starting or draining; see the {what}'s log"),
        ),
    };
    (check, server_time)
}

/// A QUIC handshake, with this node's own certificate, to the address the tracker hands to
/// other peers: what every other host will dial.
async fn peer_port(config: &AgentConfig, tls: &TlsMaterial, timeout: Duration) -> Check {
    const NAME: &str = "peer port";
    let trackers = resolve_hosts(&config.tracker.hosts).await;
    let ip = match advertise_ip(config.peer_ip, config.listen.p2p.ip(), &trackers) {
        Ok(ip) => ip,
        Err(error) => {
            return Check::fail(
                NAME,
                error.to_string(),
                "set peer_ip to the address other hosts reach this one at",
            );
        }
    };
    let target = SocketAddr::new(ip, config.listen.p2p.port());
    let fix = format!(
        "start the agent, open {}/udp to the other hosts, or set peer_ip to an address they \
         reach",
        target.port()
    );
    let bind = match ip {
        IpAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        IpAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    };
    let endpoint = match PeerEndpoint::bind(bind, tls, &QuicTuning::default()) {
        Ok(endpoint) => endpoint,
        Err(error) => return Check::fail(NAME, format!("cannot open a QUIC socket: {error}"), fix),
    };
    let outcome = tokio::time::timeout(timeout, endpoint.connect(target)).await;
    endpoint.close();
    match outcome {
        Ok(Ok(_)) => Check::pass(
            NAME,
            format!("{target} (what the tracker hands out) answers a QUIC handshake"),
        ),
        Ok(Err(error)) => Check::fail(NAME, format!("{target}: {error}"), fix),
        Err(_) => Check::fail(
            NAME,
            format!("{target}: no QUIC handshake within {timeout:?}"),
            fix,
        ),
    }
}

/// The runtime's mirror files exist and name the agent's registry.
fn mirror_config(runtime: Runtime, config: &AgentConfig, args: &DoctorArgs) -> Vec<Check> {
    let name = format!("mirror config ({runtime:?})").to_lowercase();
    let agent = local(config.listen.registry);
    let command = format!(
        "`kraken mirror-config --runtime {} --agent {agent} {}`",
        format!("{runtime:?}").to_lowercase(),
        args.upstreams
            .iter()
            .map(|u| format!("--upstream {u}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let upstreams: Vec<Upstream> = match args.upstreams.iter().map(|u| Upstream::parse(u)).collect()
    {
        Ok(upstreams) => upstreams,
        Err(error) => {
            return vec![Check::fail(
                name,
                format!("{error:#}"),
                "correct --upstream",
            )];
        }
    };
    let files = match render(
        runtime,
        &agent,
        &upstreams,
        &args.paths.config_path,
        &args.paths.registries_conf,
    ) {
        Ok(Output::Files(files)) => files,
        Ok(Output::Print(_)) => {
            return vec![Check {
                name,
                outcome: Outcome::Warn(
                    "Docker's daemon.json is not checked: `registry-mirrors` must list the \
                     agent"
                        .into(),
                ),
            }];
        }
        Err(error) => return vec![Check::fail(name, format!("{error:#}"), command)],
    };
    files
        .into_iter()
        .map(|(path, _)| mirror_file(&name, &path, &agent, &command))
        .collect()
}

fn mirror_file(name: &str, path: &Path, agent: &str, command: &str) -> Check {
    let name = format!("{name} {}", path.display());
    match std::fs::read_to_string(path) {
        Ok(text) if text.contains(agent) => Check::pass(name, format!("pulls go through {agent}")),
        Ok(_) => Check::fail(
            name,
            format!("does not name the agent at {agent}: pulls bypass the swarm"),
            format!("{command} --force"),
        ),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Check::fail(
            name,
            "missing: the runtime pulls straight from the upstream",
            command.to_owned(),
        ),
        Err(error) => Check::fail(name, format!("cannot read it: {error}"), command.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kraken_tls::{DevCa, LeafOptions};

    fn material(role: Role, options: &LeafOptions) -> TlsMaterial {
        let ca = DevCa::new().unwrap();
        let leaf = ca.issue(role, options).unwrap();
        TlsMaterial::from_pem(ca.cert_pem(), &leaf.cert_pem, &leaf.key_pem).unwrap()
    }

    #[test]
    fn an_expired_certificate_fails_and_says_how_to_renew() {
        let check = certificate(
            &material(Role::Agent, &LeafOptions::expired()),
            30,
            SystemTime::now(),
        );
        let Outcome::Fail { problem, fix } = check.outcome else {
            panic!("{check:?}");
        };
        assert!(problem.contains("expired"), "{problem}");
        assert!(fix.contains("kraken certs"), "{fix}");
    }

    #[test]
    fn validity_is_judged_against_the_clock_given() {
        let tls = material(Role::Agent, &LeafOptions::default());
        let now = SystemTime::now();
        assert!(matches!(
            certificate(&tls, 30, now).outcome,
            Outcome::Pass(_)
        ));
        // Close to expiry: a warning, not a failure.
        let validity = tls.validity().unwrap();
        let late = validity.not_after - Duration::from_secs(86_400);
        assert!(matches!(
            certificate(&tls, 30, late).outcome,
            Outcome::Warn(_)
        ));
        // A clock behind the certificate's start.
        let early = validity.not_before - Duration::from_secs(3_600);
        let Outcome::Fail { problem, fix } = certificate(&tls, 30, early).outcome else {
            panic!("a clock behind the certificate passed");
        };
        assert!(problem.contains("clock"), "{problem}");
        assert!(fix.contains("clock"), "{fix}");
    }

    #[test]
    fn a_certificate_of_another_role_fails() {
        let check = certificate(
            &material(Role::Origin, &LeafOptions::default()),
            30,
            SystemTime::now(),
        );
        assert!(
            matches!(&check.outcome, Outcome::Fail { problem, .. } if problem.contains("origin role")),
            "{check:?}"
        );
    }

    #[test]
    fn a_clock_far_from_the_servers_fails_and_a_close_one_passes() {
        let now = SystemTime::now();
        let at = |server: &str, offset: i64| ServerTime {
            server: server.into(),
            said: if offset >= 0 {
                now + Duration::from_secs(offset.unsigned_abs())
            } else {
                now - Duration::from_secs(offset.unsigned_abs())
            },
            received: now,
        };
        let limit = Duration::from_secs(30);
        let close = clock(&[at("tracker a", 1), at("tracker b", -1)], limit);
        assert!(matches!(close.outcome, Outcome::Pass(_)), "{close:?}");
        let far = clock(&[at("tracker a", 0), at("build-index b", -120)], limit);
        let Outcome::Fail { problem, fix } = far.outcome else {
            panic!("a clock 2 minutes off passed");
        };
        assert!(problem.contains("ahead of build-index b"), "{problem}");
        assert!(fix.contains("NTP"), "{fix}");
        assert!(matches!(clock(&[], limit).outcome, Outcome::Warn(_)));
    }

    #[test]
    fn unspecified_listen_addresses_are_dialled_on_loopback() {
        assert_eq!(local("0.0.0.0:16002".parse().unwrap()), "127.0.0.1:16002");
        assert_eq!(local("[::]:16002".parse().unwrap()), "[::1]:16002");
        assert_eq!(local("10.0.0.5:16002".parse().unwrap()), "10.0.0.5:16002");
    }
}
