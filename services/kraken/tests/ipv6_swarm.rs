//! A swarm on IPv6-only hosts: tracker, origin and three agents, each a separate `kraken`
//! process in its own network namespace whose only link address is IPv6 (`fd77:<tag>::/64`),
//! every link capped at 40 Mbit/s each way so that agents must trade pieces. Every component
//! listens on `[::]` with no `peer_ip`: agents and the origin advertise the address of their
//! route to the tracker, the tracker records and hands out IPv6 addresses, peers dial them
//! over QUIC with mTLS, and gRPC goes over IPv6 with certificates naming IPv6 addresses.
//!
//! The blob must arrive intact at every agent, some of its pieces from other agents (not only
//! from the origin), and every process must stop on SIGTERM with status 0.
//!
//! Needs root for the namespaces; without it the test says so loudly and returns.

// Test helpers outside `#[test]` functions: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use kraken_interop::netns::{self, Family, Host, Lab};
use sha2::{Digest as _, Sha256};

const NAMESPACE: &str = "ipv6/blob";
const GRPC_PORT: u16 = 15000;
const P2P_PORT: u16 = 16000;
const AGENT_GRPC_PORT: u16 = 17000;
const REGISTRY_PORT: u16 = 18000;
const METRICS_PORT: u16 = 9100;
const AGENTS: usize = 3;
const BLOB_SIZE: usize = 12 << 20;
const LINK_MBIT: u32 = 40;
/// Hang guards only; nothing is asserted about time.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const PULL_TIMEOUT: Duration = Duration::from_secs(180);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

fn kraken() -> &'static str {
    env!("CARGO_BIN_EXE_kraken")
}

struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

/// The lab's processes, stopped before the lab's namespaces go (declared after `lab`, so
/// dropped first), with their logs shown when the test failed.
struct Processes(Vec<Process>);

impl Drop for Processes {
    fn drop(&mut self) {
        for process in &mut self.0 {
            if std::thread::panicking() {
                let log = std::fs::read_to_string(&process.log).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                eprintln!(
                    "--- {} log, last lines ---\n{}",
                    process.name,
                    lines[lines.len().saturating_sub(30)..].join("\n")
                );
            }
            if let Ok(None) = process.child.try_wait() {
                let _ = process.child.kill();
            }
            let _ = process.child.wait();
        }
    }
}

fn tls(pki: &Path, role: &str) -> String {
    format!(
        "tls:\n  ca: {pki}/ca.pem\n  cert: {pki}/{role}.pem\n  key: {pki}/{role}.key\n",
        pki = pki.display()
    )
}

fn caps() -> String {
    // The link is the limit; the scheduler's own caps stay out of the way.
    "scheduler:\n  conn:\n    bandwidth:\n      enable: false\n".to_owned()
}

#[test]
fn a_blob_crosses_a_swarm_of_ipv6_only_hosts() {
    if !netns::can_create() {
        kraken_interop::skip(
            "ipv6_swarm",
            "needs root to create network namespaces (run tests/run.sh as root)",
        );
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    // Unique per run, so a concurrent run (another checkout's CI) builds its own lab.
    let tag = (std::process::id() & 0xffff) as u16;
    let mut lab = Lab::new(&format!("k6{tag:04x}"), Family::V6 { tag }).unwrap();
    let tracker = lab.add_host("t", None).unwrap();
    let origin = lab.add_host("o", Some(LINK_MBIT)).unwrap();
    let agents: Vec<Host> = (0..AGENTS)
        .map(|_| lab.add_host("a", Some(LINK_MBIT)).unwrap())
        .collect();
    let no_ipv4 = lab
        .command(&agents[0], "ip")
        .args(["-4", "-o", "addr", "show", "dev", "eth0"])
        .output()
        .unwrap();
    assert!(
        no_ipv4.stdout.is_empty(),
        "the lab's hosts must have no IPv4 address: {}",
        String::from_utf8_lossy(&no_ipv4.stdout)
    );

    // Certificates naming every host's IPv6 address.
    let pki = dir.join("pki");
    let mut certs = Command::new(kraken());
    certs.args(["certs", "--out"]).arg(&pki);
    for host in agents.iter().chain([&tracker, &origin]) {
        certs.args(["--host", &host.ip.to_string()]);
    }
    let certs = certs.output().unwrap();
    assert!(
        certs.status.success(),
        "kraken certs: {}",
        String::from_utf8_lossy(&certs.stderr)
    );

    // The blob, in the origin's filesystem backend.
    let blob: Vec<u8> = (0..BLOB_SIZE)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&blob)));
    let hex = digest.trim_start_matches("sha256:");
    let backend = dir.join("backend");
    let stored = backend
        .join(NAMESPACE)
        .join("blobs/sha256")
        .join(&hex[..2])
        .join(hex);
    std::fs::create_dir_all(stored.parent().unwrap()).unwrap();
    std::fs::write(&stored, &blob).unwrap();

    let tracker_grpc = tracker.addr(GRPC_PORT);
    let origin_grpc = origin.addr(GRPC_PORT);
    let mut processes = Processes(Vec::new());
    let mut start = |host: &Host, name: &str, component: &str, config: String| {
        let path = dir.join(format!("{name}.yaml"));
        std::fs::write(&path, config).unwrap();
        let log = dir.join(format!("{name}.log"));
        let child = lab
            .spawn(
                host,
                kraken(),
                &[component, "--config", path.to_str().unwrap()],
                &log,
            )
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        processes.0.push(Process {
            name: name.to_owned(),
            child,
            log,
        });
    };
    start(
        &tracker,
        "tracker",
        "tracker",
        format!(
            "listen:\n  grpc: \"[::]:{GRPC_PORT}\"\norigin:\n  hosts:\n    static: [\"{origin_grpc}\"]\n{}",
            tls(&pki, "tracker")
        ),
    );
    start(
        &origin,
        "origin",
        "origin",
        format!(
            "name: \"{origin_grpc}\"\nlisten:\n  grpc: \"[::]:{GRPC_PORT}\"\n  p2p: \"[::]:{P2P_PORT}\"\n\
             cluster:\n  hosts:\n    static: [\"{origin_grpc}\"]\nhashring:\n  max_replica: 1\n\
             store:\n  dir: {dir}/origin-store\nbackends:\n  - namespace: \".*\"\n    backend:\n      fs:\n        root: {backend}\n\
             {caps}{tls}metrics:\n  listen: \"[::]:{METRICS_PORT}\"\n",
            dir = dir.display(),
            backend = backend.display(),
            caps = caps(),
            tls = tls(&pki, "origin"),
        ),
    );
    for (i, agent) in agents.iter().enumerate() {
        start(
            agent,
            &format!("agent{i}"),
            "agent",
            format!(
                "listen:\n  registry: \"[::1]:{REGISTRY_PORT}\"\n  grpc: \"[::]:{AGENT_GRPC_PORT}\"\n  p2p: \"[::]:{P2P_PORT}\"\n\
                 tracker:\n  hosts:\n    static: [\"{tracker_grpc}\"]\nbuild_index:\n  hosts:\n    static: [\"{tracker_grpc}\"]\n\
                 store:\n  dir: {dir}/agent{i}-store\n{caps}{tls}metrics:\n  listen: \"[::]:{METRICS_PORT}\"\n",
                dir = dir.display(),
                caps = caps(),
                tls = tls(&pki, "agent"),
            ),
        );
    }

    // Ready: gRPC health over mTLS, across the IPv6 network (agents: from the tracker's host).
    let ready = |from: &Host, addr: String, role: &str| {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let probe = lab
                .command(from, kraken())
                .args(["health", &addr, "--role", role, "--timeout", "2s", "--pki"])
                .arg(&pki)
                .output()
                .unwrap();
            if probe.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{role} at {addr} not healthy: {}",
                String::from_utf8_lossy(&probe.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    ready(&tracker, tracker_grpc.to_string(), "tracker");
    ready(&tracker, origin_grpc.to_string(), "origin");
    for agent in &agents {
        ready(&tracker, agent.addr(AGENT_GRPC_PORT).to_string(), "agent");
    }

    // Every agent pulls at once; each output must be the blob.
    let mut pulls: Vec<(usize, PathBuf, Child)> = agents
        .iter()
        .enumerate()
        .map(|(i, agent)| {
            let output = dir.join(format!("pulled{i}"));
            let child = lab
                .command(agent, kraken())
                .args([
                    "pull",
                    "--agent",
                    &format!("[::1]:{AGENT_GRPC_PORT}"),
                    "--pki",
                ])
                .arg(&pki)
                .args(["--namespace", NAMESPACE, "--quiet", "--output"])
                .arg(&output)
                .arg(&digest)
                .spawn()
                .unwrap();
            (i, output, child)
        })
        .collect();
    let deadline = Instant::now() + PULL_TIMEOUT;
    for (i, output, child) in &mut pulls {
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("agent {i}'s pull did not finish");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "agent {i}'s pull failed ({status})");
        let pulled = std::fs::read(output).unwrap();
        assert_eq!(
            format!("sha256:{}", hex::encode(Sha256::digest(&pulled))),
            digest,
            "agent {i} pulled other bytes"
        );
    }

    // Some pieces travelled between agents: the swarm, not three downloads from the origin.
    let counter = |host: &Host, name: &str| -> f64 {
        let url = format!("http://{}/metrics", host.addr(METRICS_PORT));
        let output = lab
            .command(host, "curl")
            .args(["-sS", "--max-time", "10", &url])
            .output()
            .unwrap();
        assert!(output.status.success(), "scraping {url} failed");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|line| line.starts_with(name))
            .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    };
    let from_agents: f64 = agents
        .iter()
        .map(|a| {
            counter(a, "kraken_p2p_pieces_received_total")
                - counter(a, "kraken_p2p_pieces_from_origins_total")
        })
        .sum();
    let origin_sent = counter(&origin, "kraken_p2p_pieces_sent_total");
    eprintln!("pieces: {origin_sent} sent by the origin, {from_agents} received from agents");
    assert!(
        origin_sent > 0.0,
        "the origin sent no piece over IPv6 (sent {origin_sent})"
    );
    assert!(
        from_agents > 0.0,
        "no agent received a piece from another agent over IPv6"
    );

    // Clean stops.
    for process in &mut processes.0 {
        let status = kraken_interop::terminate(&mut process.child, STOP_TIMEOUT)
            .unwrap_or_else(|| panic!("{} did not stop on SIGTERM", process.name));
        assert!(
            status.success(),
            "{} exited with {status} on SIGTERM",
            process.name
        );
    }
}
