//! A cluster as an operator runs it: every component its own `kraken` process, started from
//! `config/examples` (or a file extending them), on free loopback ports in a temp dir.

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kraken_interop::run_ok;
use sha2::{Digest as _, Sha256};

/// Hang guards only: a healthy herd starts and stops in seconds.
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(120);
pub(crate) const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// skopeo's own limit per command, so a stuck registry fails the test instead of hanging it.
pub(crate) const SKOPEO_TIMEOUT: &str = "300s";

pub(crate) fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/examples")
}

pub(crate) fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Free loopback ports. Every socket stays bound until [`FreePorts::release`], so no two
/// addresses handed out are the same; a port is only free again once its socket closes.
#[derive(Default)]
pub(crate) struct FreePorts {
    tcp: Vec<TcpListener>,
    udp: Vec<UdpSocket>,
}

impl FreePorts {
    pub(crate) fn tcp(&mut self) -> SocketAddr {
        let socket = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        self.tcp.push(socket);
        addr
    }

    /// QUIC peer ports are UDP.
    pub(crate) fn udp(&mut self) -> SocketAddr {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        self.udp.push(socket);
        addr
    }

    pub(crate) fn release(self) {}
}

/// One running `kraken` process; its stdout and stderr go to `log`.
pub(crate) struct Member {
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
pub(crate) struct Herd {
    pub(crate) members: Vec<Member>,
    pub(crate) dir: tempfile::TempDir,
    /// Variables every process gets: where everything lives and every shared address.
    pub(crate) env: Vec<(String, String)>,
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
    pub(crate) fn spawn(&mut self, name: &str, component: &str, vars: &[(&str, String)]) {
        let config = examples_dir().join(component).join("development.yaml");
        self.spawn_with(name, component, &config, vars);
    }

    /// Starts `kraken <component> --config <config>`.
    pub(crate) fn spawn_with(
        &mut self,
        name: &str,
        component: &str,
        config: &Path,
        vars: &[(&str, String)],
    ) {
        let log = self.dir.path().join(format!("{name}.log"));
        // Appended to: a member started again keeps its earlier log.
        let out = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let err = out.try_clone().unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_kraken"));
        command
            .arg(component)
            .arg("--config")
            .arg(config)
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
    pub(crate) fn wait_ready(&mut self, name: &str, addrs: &[SocketAddr], marker: &str) {
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
    pub(crate) fn stop(&mut self) {
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

impl Herd {
    /// Sends SIGTERM to `name` alone, checks it exits with status 0 and forgets it (start it
    /// again with the same name: its log goes on).
    pub(crate) fn stop_member(&mut self, name: &str) {
        let position = self
            .members
            .iter()
            .position(|m| m.name == name)
            .unwrap_or_else(|| panic!("no member {name}"));
        let mut member = self.members.remove(position);
        match kraken_interop::terminate(&mut member.child, STOP_TIMEOUT) {
            Some(status) if status.success() => {}
            other => panic!(
                "{name} did not exit cleanly on SIGTERM ({other:?}):\n{}",
                member.log_tail(30)
            ),
        }
    }
}

pub(crate) fn skopeo(args: &[&str]) -> String {
    let mut all = vec!["--command-timeout", SKOPEO_TIMEOUT];
    all.extend_from_slice(args);
    run_ok("skopeo", &all)
}
