//! Write-back survives a crash: an origin (a real `kraken origin` process) acknowledges an
//! upload while its storage backend is failing, keeps retrying the write-back, and is killed
//! with SIGKILL mid-retry (no graceful stop, no chance to flush anything). Once the backend is
//! back and the origin restarted on the same directories, the blob lands in the backend intact
//! and the queue drains; the restarted origin exits 0 on SIGTERM.
//!
//! The backend is an `fs` one, failed by replacing its root directory with a plain file (root
//! ignores permissions, so `chmod` would not do) and repaired by putting the directory back.

// Test helpers outside `#[test]` functions: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

/// Hang guards only; nothing is asserted about time.
const PATIENCE: Duration = Duration::from_secs(90);
const NAMESPACE: &str = "crash/app";

fn kraken() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kraken"))
}

struct Origin {
    child: Child,
    log: PathBuf,
}

impl Origin {
    fn start(config: &Path, log: PathBuf) -> Self {
        let out = std::fs::File::create(&log).unwrap();
        let child = kraken()
            .args(["origin", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Self { child, log }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- origin log ---\n{}", self.log_text());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `condition` until it holds; panics naming `what` after [`PATIENCE`].
fn eventually(what: &str, origin: &mut Origin, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        if let Ok(Some(status)) = origin.child.try_wait() {
            panic!("the origin exited ({status}) while waiting for {what}");
        }
        assert!(Instant::now() < deadline, "hang guard: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The value of a Prometheus sample (summed over its labels), 0 when absent.
fn metric(metrics: &str, name: &str) -> f64 {
    common::sample(&common::scrape(metrics), name, &[])
}

fn healthy(grpc: &str, pki: &Path) -> bool {
    kraken()
        .args([
            "health",
            grpc,
            "--role",
            "origin",
            "--timeout",
            "2s",
            "--pki",
        ])
        .arg(pki)
        .output()
        .unwrap()
        .status
        .success()
}

/// Every file under `dir` named `name`.
fn find(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(find(&path, name));
        } else if path.file_name().is_some_and(|n| n == name) {
            found.push(path);
        }
    }
    found
}

#[test]
fn an_acknowledged_upload_reaches_the_backend_after_a_sigkill_mid_write_back() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let pki = root.join("certs");
    let certs = kraken()
        .arg("certs")
        .arg("--out")
        .arg(&pki)
        .output()
        .unwrap();
    assert!(certs.status.success(), "{certs:?}");

    let grpc = TcpListener::bind("127.0.0.1:0").unwrap();
    let metrics = TcpListener::bind("127.0.0.1:0").unwrap();
    let p2p = UdpSocket::bind("127.0.0.1:0").unwrap();
    let grpc_addr = grpc.local_addr().unwrap().to_string();
    let metrics_addr = metrics.local_addr().unwrap().to_string();
    let p2p_addr = p2p.local_addr().unwrap().to_string();
    drop((grpc, metrics, p2p));
    let backend = root.join("backend");
    let config = root.join("origin.yaml");
    std::fs::write(
        &config,
        format!(
            "name: {grpc_addr}\npeer_ip: 127.0.0.1\nlisten:\n  grpc: {grpc_addr}\n  p2p: {p2p_addr}\n\
             cluster:\n  hosts:\n    static: [\"{grpc_addr}\"]\nhashring:\n  max_replica: 1\n\
             store:\n  dir: {root}/store\nwriteback:\n  dir: {root}/writeback\n\
             backends:\n  - namespace: \".*\"\n    backend:\n      fs:\n        root: {backend}\n\
             tls:\n  ca: {pki}/ca.pem\n  cert: {pki}/origin.pem\n  key: {pki}/origin.key\n\
             metrics:\n  listen: {metrics_addr}\n",
            root = root.display(),
            backend = backend.display(),
            pki = pki.display(),
        ),
    )
    .unwrap();

    let mut origin = Origin::start(&config, root.join("origin1.log"));
    eventually("the origin to serve", &mut origin, || {
        healthy(&grpc_addr, &pki)
    });

    // The backend fails: its root is a file now.
    if backend.exists() {
        std::fs::remove_dir_all(&backend).unwrap();
    }
    std::fs::write(&backend, b"not a directory").unwrap();

    let blob: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let hex = hex::encode(Sha256::digest(&blob));
    let file = root.join("blob");
    std::fs::write(&file, &blob).unwrap();
    let pushed = kraken()
        .arg("push")
        .arg(&file)
        .args(["--origin", &grpc_addr, "--namespace", NAMESPACE, "--pki"])
        .arg(&pki)
        .output()
        .unwrap();
    assert!(
        pushed.status.success(),
        "the upload is acknowledged while the backend fails: {}",
        String::from_utf8_lossy(&pushed.stderr)
    );
    assert!(String::from_utf8_lossy(&pushed.stdout).contains(&hex));

    // Mid write-back: it has failed at least once and is still queued.
    eventually("a failed write-back attempt", &mut origin, || {
        metric(&metrics_addr, "kraken_origin_writeback_retries_total") >= 1.0
    });
    assert!(metric(&metrics_addr, "kraken_origin_writeback_queue_depth") >= 1.0);
    origin.child.kill().unwrap(); // SIGKILL
    let status = origin.child.wait().unwrap();
    assert!(!status.success(), "killed, not stopped: {status}");
    drop(origin);

    // The backend is back; the origin restarts on the same directories.
    std::fs::remove_file(&backend).unwrap();
    std::fs::create_dir(&backend).unwrap();
    let mut origin = Origin::start(&config, root.join("origin2.log"));
    eventually("the blob in the backend", &mut origin, || {
        find(&backend, &hex)
            .iter()
            .any(|path| std::fs::read(path).is_ok_and(|data| data == blob))
    });
    eventually("the write-back queue to drain", &mut origin, || {
        healthy(&grpc_addr, &pki)
            && metric(&metrics_addr, "kraken_origin_writeback_queue_depth") == 0.0
    });
    assert_eq!(
        find(&backend, &hex).len(),
        1,
        "exactly one copy in the backend"
    );

    let status = kraken_interop::terminate(&mut origin.child, PATIENCE)
        .expect("hang guard: the origin stops on SIGTERM");
    assert!(status.success(), "exit status on SIGTERM: {status}");
}
