//! Real third-party servers a test starts for itself: Debian's `docker-registry` (an upstream
//! registry, plain HTTP on loopback) and a private `containerd` (own root, state and socket,
//! so a test never touches the machine's containerd or Docker's).
//!
//! Both are killed when dropped. Ports are picked free and the server's own bind is checked:
//! another test can take a port between the pick and the bind, so a server that lost it is
//! started again on another.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Hang guard for a server's start; both start in well under a second.
const START_PATIENCE: Duration = Duration::from_secs(30);

/// A running `docker-registry serve` with filesystem storage under its directory.
#[derive(Debug)]
pub struct DockerRegistry {
    pub addr: SocketAddr,
    child: Child,
}

impl DockerRegistry {
    /// Starts one storing under `dir`. Panics (the test's failure) when it cannot start.
    pub fn start(dir: &Path) -> DockerRegistry {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        for _ in 0..5 {
            let addr = free_port();
            let config = dir.join("registry.yml");
            let yaml = format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: {addr}\n",
                dir.join("data").display()
            );
            std::fs::write(&config, yaml)
                .unwrap_or_else(|e| panic!("writing {}: {e}", config.display()));
            let child = Command::new("docker-registry")
                .arg("serve")
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("docker-registry: {e} (tests/run.sh installs it: apt-get install docker-registry)")
                });
            let mut registry = DockerRegistry { addr, child };
            if registry.wait_ready() {
                return registry;
            }
        }
        panic!("docker-registry did not start on any of 5 free ports");
    }

    /// Whether it answers `GET /v2/` as a registry; false when it exited (lost its port).
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + START_PATIENCE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if answers_v2(self.addr) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "docker-registry on {} did not answer within {START_PATIENCE:?}",
            self.addr
        );
    }
}

impl Drop for DockerRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `addr` answers `GET /v2/` with the registry API's version header (so another
/// server that took the port is not mistaken for the registry).
fn answers_v2(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET /v2/ HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
        .to_ascii_lowercase()
        .contains("docker-distribution-api-version: registry/2.0")
}

/// A private containerd: its own root, state and socket under one directory, the CRI plugin
/// off. Drive it with [`Containerd::ctr`].
#[derive(Debug)]
pub struct Containerd {
    dir: PathBuf,
    child: Child,
}

impl Containerd {
    /// Starts one under `dir` (needs root, as containerd does). Panics when it cannot.
    pub fn start(dir: &Path) -> Containerd {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let path = |name: &str| dir.join(name).display().to_string();
        let config = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n\
             [debug]\n  address = \"{debug}\"\n",
            root = path("root"),
            state = path("state"),
            sock = path("containerd.sock"),
            debug = path("debug.sock"),
        );
        let config_path = dir.join("config.toml");
        std::fs::write(&config_path, config)
            .unwrap_or_else(|e| panic!("writing {}: {e}", config_path.display()));
        let log = std::fs::File::create(dir.join("containerd.log"))
            .unwrap_or_else(|e| panic!("creating containerd.log: {e}"));
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("containerd: {e} (tests/run.sh installs it: apt-get install containerd)")
            });
        let mut containerd = Containerd {
            dir: dir.to_owned(),
            child,
        };
        let deadline = Instant::now() + START_PATIENCE;
        loop {
            if let Ok(Some(status)) = containerd.child.try_wait() {
                panic!(
                    "containerd exited at start ({status}): see {}",
                    containerd.log()
                );
            }
            if containerd.ctr(&["version"]).0 {
                return containerd;
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not answer within {START_PATIENCE:?}: see {}",
                containerd.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `ctr` against this containerd, in namespace `kraken-test`: (success, stdout,
    /// stderr).
    pub fn ctr(&self, args: &[&str]) -> (bool, String, String) {
        let socket = self.dir.join("containerd.sock").display().to_string();
        let mut all = vec!["--address", &socket, "--namespace", "kraken-test"];
        all.extend_from_slice(args);
        crate::run("ctr", &all)
    }

    fn log(&self) -> String {
        let path = self.dir.join("containerd.log");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(20).collect();
        format!(
            "{}:\n{}",
            path.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Snapshots of the native snapshotter are plain directories; the caller's temp dir
        // removes them.
    }
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"))
}
