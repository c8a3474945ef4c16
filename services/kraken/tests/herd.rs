//! The herd: a whole cluster as an operator would run it, every component its own `kraken`
//! process started from `config/examples` (tracker, 3 origins, build-index, proxy, 2 agents),
//! the PKI from `kraken certs`. An image goes in through the proxy with skopeo and comes out
//! through both agents' registries, every digest unchanged; then every process stops on
//! SIGTERM with exit status 0.
//!
//! The examples' `${VAR:-default}` addresses and `KRAKEN_DIR` place the herd in a temp dir on
//! free loopback ports, so it runs beside other tests. This is deliberately not the in-process
//! devcluster: separate processes are what catch a config the binary cannot start from, state
//! two processes share by accident, and a component that hangs or fails on SIGTERM.

// Test helpers outside `#[test]` functions: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kraken_interop::oci_layout::write_single;
use kraken_interop::{have, run_ok};
use sha2::{Digest as _, Sha256};

/// Hang guards only: a healthy herd starts and stops in seconds.
const START_TIMEOUT: Duration = Duration::from_secs(120);
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// skopeo's own limit per command, so a stuck registry fails the test instead of hanging it.
const SKOPEO_TIMEOUT: &str = "300s";

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/examples")
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Free loopback ports. Every socket stays bound until [`FreePorts::release`], so no two
/// addresses handed out are the same; a port is only free again once its socket closes.
#[derive(Default)]
struct FreePorts {
    tcp: Vec<TcpListener>,
    udp: Vec<UdpSocket>,
}

impl FreePorts {
    fn tcp(&mut self) -> SocketAddr {
        let socket = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        self.tcp.push(socket);
        addr
    }

    /// QUIC peer ports are UDP.
    fn udp(&mut self) -> SocketAddr {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        self.udp.push(socket);
        addr
    }

    fn release(self) {}
}

/// One running `kraken` process; its stdout and stderr go to `log`.
struct Member {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Member {
    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// The processes of the herd, killed on drop (a failed assertion leaks none), and the temp dir
/// they live in, removed after them.
struct Herd {
    members: Vec<Member>,
    dir: tempfile::TempDir,
    /// Variables every process gets: where everything lives and every shared address.
    env: Vec<(String, String)>,
}

impl Drop for Herd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for member in &self.members {
                eprintln!(
                    "--- {} ({}) log, last lines ---\n{}",
                    member.name,
                    member.log.display(),
                    member.log_tail(40)
                );
            }
        }
        for member in &mut self.members {
            if let Ok(None) = member.child.try_wait() {
                let _ = member.child.kill();
            }
            let _ = member.child.wait();
        }
    }
}

impl Herd {
    /// Starts `kraken <component> --config config/examples/<component>/development.yaml`.
    fn spawn(&mut self, name: &str, component: &str, vars: &[(&str, String)]) {
        let log = self.dir.path().join(format!("{name}.log"));
        let out = File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let config = examples_dir().join(component).join("development.yaml");
        let mut command = Command::new(env!("CARGO_BIN_EXE_kraken"));
        command
            .arg(component)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for (key, value) in &self.env {
            command.env(key, value);
        }
        for (key, value) in vars {
            command.env(key, value);
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start kraken {component} ({name}): {e}"));
        self.members.push(Member {
            name: name.to_owned(),
            child,
            log,
        });
    }

    /// Waits until `name` accepts TCP connections on every one of `addrs` and has logged
    /// `marker`; fails at once, with its log, if it exits instead.
    fn wait_ready(&mut self, name: &str, addrs: &[SocketAddr], marker: &str) {
        let deadline = Instant::now() + START_TIMEOUT;
        let member = self
            .members
            .iter_mut()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no member {name}"));
        loop {
            if let Some(status) = member.child.try_wait().unwrap() {
                panic!(
                    "{name} exited during start with {status}:\n{}",
                    member.log_tail(40)
                );
            }
            let listening = addrs.iter().all(|addr| TcpStream::connect(addr).is_ok());
            let logged = std::fs::read_to_string(&member.log)
                .unwrap_or_default()
                .contains(marker);
            if listening && logged {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name} not ready after {START_TIMEOUT:?} (listening: {listening}, logged \
                 {marker:?}: {logged}):\n{}",
                member.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM to every process, newest first, and checks each exits with status 0
    /// before the next is stopped.
    fn stop(&mut self) {
        let mut failures = Vec::new();
        for member in self.members.iter_mut().rev() {
            match kraken_interop::terminate(&mut member.child, STOP_TIMEOUT) {
                Some(status) if status.success() => {}
                Some(status) => failures.push(format!(
                    "{} exited with {status} after SIGTERM:\n{}",
                    member.name,
                    member.log_tail(30)
                )),
                None => failures.push(format!(
                    "{} still running {STOP_TIMEOUT:?} after SIGTERM:\n{}",
                    member.name,
                    member.log_tail(30)
                )),
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    }
}

fn skopeo(args: &[&str]) -> String {
    let mut all = vec!["--command-timeout", SKOPEO_TIMEOUT];
    all.extend_from_slice(args);
    run_ok("skopeo", &all)
}

#[test]
fn herd_of_processes_pushes_pulls_through_both_agents_and_stops_on_sigterm() {
    assert!(
        have("skopeo"),
        "skopeo is missing: tests/run.sh installs it (apt-get install skopeo)"
    );
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();

    // The PKI where the examples look for it: $KRAKEN_DIR/certs.
    let certs = Command::new(env!("CARGO_BIN_EXE_kraken"))
        .arg("certs")
        .arg("--out")
        .arg(root.join("certs"))
        .output()
        .unwrap();
    assert!(
        certs.status.success(),
        "kraken certs: {}",
        String::from_utf8_lossy(&certs.stderr)
    );

    let mut ports = FreePorts::default();
    let tracker = ports.tcp();
    let build_index = ports.tcp();
    let proxy_registry = ports.tcp();
    let proxy_grpc = ports.tcp();
    let origins: Vec<(SocketAddr, SocketAddr)> =
        (0..3).map(|_| (ports.tcp(), ports.udp())).collect();
    let agents: Vec<(SocketAddr, SocketAddr, SocketAddr)> = (0..2)
        .map(|_| (ports.tcp(), ports.udp(), ports.tcp()))
        .collect();
    ports.release();

    let any_port = "127.0.0.1:0".to_owned();
    let mut env = vec![
        ("KRAKEN_DIR".to_owned(), root.display().to_string()),
        ("KRAKEN_LOG".to_owned(), "info".to_owned()),
        ("TRACKER_GRPC".to_owned(), tracker.to_string()),
        ("BUILD_INDEX_GRPC".to_owned(), build_index.to_string()),
        ("PROXY_REGISTRY".to_owned(), proxy_registry.to_string()),
        ("PROXY_GRPC".to_owned(), proxy_grpc.to_string()),
    ];
    for (index, (grpc, _)) in origins.iter().enumerate() {
        env.push((format!("ORIGIN{}_GRPC", index + 1), grpc.to_string()));
    }
    // Metrics listeners on any free port: nothing here scrapes them.
    for role in ["TRACKER", "BUILD_INDEX", "PROXY", "ORIGIN", "AGENT"] {
        env.push((format!("{role}_METRICS"), any_port.clone()));
    }
    let mut herd = Herd {
        members: Vec::new(),
        dir,
        env,
    };

    for (index, (grpc, p2p)) in origins.iter().enumerate() {
        herd.spawn(
            &format!("origin{}", index + 1),
            "origin",
            &[
                ("ORIGIN_NAME", grpc.to_string()),
                ("ORIGIN_GRPC", grpc.to_string()),
                ("ORIGIN_P2P", p2p.to_string()),
                ("ORIGIN_INSTANCE", format!("origin{}", index + 1)),
            ],
        );
    }
    for (index, (grpc, _)) in origins.iter().enumerate() {
        herd.wait_ready(&format!("origin{}", index + 1), &[*grpc], "origin running");
    }
    herd.spawn("tracker", "tracker", &[]);
    herd.spawn("build-index", "build-index", &[]);
    herd.wait_ready("tracker", &[tracker], "tracker starting");
    herd.wait_ready("build-index", &[build_index], "build-index running");
    herd.spawn("proxy", "proxy", &[]);
    for (index, (registry, p2p, grpc)) in agents.iter().enumerate() {
        herd.spawn(
            &format!("agent{}", index + 1),
            "agent",
            &[
                ("AGENT_REGISTRY", registry.to_string()),
                ("AGENT_P2P", p2p.to_string()),
                ("AGENT_GRPC", grpc.to_string()),
                ("AGENT_INSTANCE", format!("agent{}", index + 1)),
            ],
        );
    }
    herd.wait_ready("proxy", &[proxy_registry, proxy_grpc], "proxy running");
    for (index, (registry, _, grpc)) in agents.iter().enumerate() {
        herd.wait_ready(
            &format!("agent{}", index + 1),
            &[*registry, *grpc],
            "agent running",
        );
    }

    // The image: two uncompressed layers, written by the test (nothing can be pulled here).
    let layout = root.join("layout");
    let image = write_single(&layout, "v1", 2, 512 * 1024).unwrap();
    let repo = "herd/app";
    // `--preserve-digests` keeps skopeo from gzipping the layers, which would change digests.
    skopeo(&[
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", layout.display()),
        &format!("docker://{proxy_registry}/{repo}:v1"),
    ]);

    for (index, (registry, _, _)) in agents.iter().enumerate() {
        let agent = format!("agent{}", index + 1);
        let by_tag = format!("docker://{registry}/{repo}:v1");
        let raw = skopeo(&["inspect", "--raw", "--tls-verify=false", &by_tag]);
        assert_eq!(
            sha256(raw.as_bytes()),
            image.digest,
            "{agent}: the manifest came back changed"
        );
        let inspected: serde_json::Value =
            serde_json::from_str(&skopeo(&["inspect", "--tls-verify=false", &by_tag])).unwrap();
        assert_eq!(inspected["Digest"], image.digest, "{agent}: {inspected}");
        assert_eq!(
            inspected["Layers"],
            serde_json::json!(image.layers),
            "{agent}: {inspected}"
        );

        // The whole image, every blob through the agent (and so through the swarm).
        let out = root.join(format!("pulled-{agent}"));
        skopeo(&[
            "copy",
            "--preserve-digests",
            "--dest-oci-accept-uncompressed-layers",
            "--src-tls-verify=false",
            &by_tag,
            &format!("oci:{}:v1", out.display()),
        ]);
        let index_json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("index.json")).unwrap()).unwrap();
        assert_eq!(
            index_json["manifests"][0]["digest"], image.digest,
            "{agent}"
        );
        let blob = |digest: &str| {
            let hex = digest.trim_start_matches("sha256:");
            let copied = std::fs::read(out.join("blobs/sha256").join(hex))
                .unwrap_or_else(|e| panic!("{agent}: {digest} was not pulled: {e}"));
            assert_eq!(sha256(&copied), digest, "{agent}: {digest} changed");
            copied
        };
        let manifest: serde_json::Value = serde_json::from_slice(&blob(&image.digest)).unwrap();
        let config = manifest["config"]["digest"].as_str().unwrap();
        blob(config);
        for layer in &image.layers {
            blob(layer);
        }
    }

    herd.stop();
}
