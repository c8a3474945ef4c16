//! Black-box tests of the `kraken` binary: spawned as a user would run it.

// Test helpers outside `#[test]` functions: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{kraken, text};
use std::path::{Path, PathBuf};
use std::process::Command;

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/examples")
}

#[test]
fn version_names_the_crate_version() {
    let out = kraken(&["--version"]);
    assert!(out.status.success());
    assert_eq!(
        text(&out.stdout).trim(),
        format!("kraken {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn certs_writes_a_ca_and_five_role_certificates_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("pki");
    let out_arg = out_dir.to_str().unwrap();
    let out = kraken(&["certs", "--out", out_arg, "--host", "kraken.test"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for name in ["ca", "agent", "origin", "tracker", "proxy", "build-index"] {
        let cert = std::fs::read_to_string(out_dir.join(format!("{name}.pem"))).unwrap();
        assert!(
            cert.starts_with("-----BEGIN CERTIFICATE-----"),
            "{name}.pem"
        );
        assert!(out_dir.join(format!("{name}.key")).exists(), "{name}.key");
    }
    // Each role certificate loads with the right role from the written files.
    let ca = out_dir.join("ca.pem");
    for role in kraken_role_names() {
        let material = kraken_tls_material(&ca, &out_dir, role);
        assert_eq!(material, role);
    }

    let again = kraken(&["certs", "--out", out_arg]);
    assert!(!again.status.success());
    let stderr = text(&again.stderr);
    assert!(
        stderr.contains("ca.key") && stderr.contains("--force"),
        "{stderr}"
    );

    let forced = kraken(&["certs", "--out", out_arg, "--force"]);
    assert!(forced.status.success(), "{}", text(&forced.stderr));
}

fn kraken_role_names() -> [&'static str; 5] {
    ["agent", "origin", "tracker", "proxy", "build-index"]
}

/// Reads the role back out of a written certificate, as a peer verifying it would.
fn kraken_tls_material(ca: &Path, dir: &Path, role: &str) -> String {
    let config = kraken_tls::TlsConfig {
        ca: ca.to_owned(),
        cert: dir.join(format!("{role}.pem")),
        key: dir.join(format!("{role}.key")),
    };
    kraken_tls::TlsMaterial::load(&config)
        .unwrap()
        .role()
        .unwrap()
        .to_string()
}

#[test]
fn config_check_accepts_every_example() {
    // The examples name the files `kraken certs` writes, under $KRAKEN_DIR/certs.
    let dir = tempfile::tempdir().unwrap();
    let certs = kraken(&["certs", "--out", dir.path().join("certs").to_str().unwrap()]);
    assert!(certs.status.success(), "{}", text(&certs.stderr));
    let mut checked = 0;
    for component in std::fs::read_dir(examples_dir()).unwrap() {
        let component = component.unwrap().path();
        if !component.is_dir() {
            continue;
        }
        let file = component.join("development.yaml");
        let out = Command::new(env!("CARGO_BIN_EXE_kraken"))
            .args(["config", "check", file.to_str().unwrap()])
            .env("KRAKEN_DIR", dir.path())
            .output()
            .expect("spawn kraken");
        assert!(
            out.status.success(),
            "{}: {}",
            file.display(),
            text(&out.stderr)
        );
        assert!(text(&out.stderr).contains("valid"), "{}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains("listen:"),
            "effective config printed"
        );
        checked += 1;
    }
    assert_eq!(checked, 5, "one example per component");
}

#[test]
fn config_check_rejects_an_unknown_key_naming_file_and_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let base = examples_dir().join("agent/base.yaml");
    let file = dir.path().join("agent.yaml");
    std::fs::write(
        &file,
        format!(
            "extends: {}\nscheduler:\n  connstate:\n    max_open_conns: 3\n",
            base.display()
        ),
    )
    .unwrap();
    let out = kraken(&["config", "check", file.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&file.display().to_string()),
        "names the file: {stderr}"
    );
    assert!(
        stderr.contains("scheduler.connstate.max_open_conns"),
        "names the key: {stderr}"
    );
    assert!(
        stderr.contains("max_open_conn`"),
        "says what was expected: {stderr}"
    );
}

#[test]
fn config_check_needs_a_component_it_can_tell() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster.yaml");
    std::fs::write(&file, "origin:\n  hosts:\n    static: [127.0.0.1:15002]\n").unwrap();
    let out = kraken(&["config", "check", file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--component"),
        "{}",
        text(&out.stderr)
    );
    // No `tls:` here, so only the file itself can pass.
    let out = kraken(&[
        "config",
        "check",
        file.to_str().unwrap(),
        "--component",
        "tracker",
        "--schema-only",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // A semantic error is reported once, with its key path.
    std::fs::write(&file, "{}\n").unwrap();
    let out = kraken(&[
        "config",
        "check",
        file.to_str().unwrap(),
        "--component",
        "tracker",
    ]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(stderr.matches("origin.hosts").count(), 1, "{stderr}");
}

/// A `kraken devcluster` started with `args` and `--dir dir`, read up to the line saying its
/// self-check passed.
struct RunningDevcluster {
    child: std::process::Child,
    /// Everything it printed up to that line.
    transcript: String,
    /// Keeps draining its output, as a terminal would.
    drain: std::thread::JoinHandle<()>,
}

impl RunningDevcluster {
    fn start(args: &[&str], dir: &Path) -> Self {
        use std::io::{BufRead, BufReader};
        use std::process::Stdio;

        let mut child = Command::new(env!("CARGO_BIN_EXE_kraken"))
            .arg("devcluster")
            .args(args)
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut seen = Vec::new();
        let mut lines = stdout.lines();
        for line in lines.by_ref() {
            let line = line.unwrap();
            let done = line.starts_with("self-check passed");
            seen.push(line);
            if done {
                break;
            }
        }
        let drain = std::thread::spawn(move || for _ in lines {});
        Self {
            child,
            transcript: seen.join("\n"),
            drain,
        }
    }

    /// SIGTERM, then it must exit 0.
    fn stop(mut self) {
        let killed = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let status = self.child.wait().unwrap();
        self.drain.join().unwrap();
        assert!(status.success(), "devcluster exited with {status}");
    }
}

#[test]
fn devcluster_starts_passes_its_self_check_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    // Below Linux's ephemeral range (32768+) so parallel tests' port-0 sockets cannot take it.
    let base = 10_000 + (std::process::id() % 200) as u16 * 100;
    let running = RunningDevcluster::start(&["--base-port", &base.to_string()], dir.path());
    let transcript = &running.transcript;
    assert!(transcript.contains("self-check passed"), "{transcript}");
    assert!(
        transcript.contains(&format!("tracker:        127.0.0.1:{}", base + 3)),
        "{transcript}"
    );
    assert!(dir.path().join("pki/ca.pem").exists());
    running.stop();
}

#[test]
fn devcluster_with_two_clusters_replicates_a_tag_and_lists_both() {
    let dir = tempfile::tempdir().unwrap();
    // Below Linux's ephemeral range even for the second cluster (+2000), and apart from
    // `devcluster_starts_…`'s range (10 000–29 999 in steps of 100, +~1 100).
    let base = 12_050 + (std::process::id() % 100) as u16 * 100;
    let running = RunningDevcluster::start(
        &[
            "--clusters",
            "2",
            "--origins",
            "1",
            "--agents",
            "1",
            "--max-replica",
            "1",
            "--base-port",
            &base.to_string(),
        ],
        dir.path(),
    );
    let transcript = &running.transcript;
    assert!(
        transcript.contains("self-check passed")
            && transcript.contains("kraken/self-check:replication"),
        "{transcript}"
    );
    assert!(
        transcript.contains("=== cluster a (push here)")
            && transcript.contains("=== cluster b (replica of a, every repository)"),
        "{transcript}"
    );
    // Cluster b's layout starts 2000 ports up.
    assert!(
        transcript.contains(&format!("tracker:        127.0.0.1:{}", base + 3))
            && transcript.contains(&format!("tracker:        127.0.0.1:{}", base + 2003)),
        "{transcript}"
    );
    let pki_a = dir.path().join("cluster-a/pki");
    let status = format!(
        "replication to b: kraken replication status --build-index 127.0.0.1:{} --pki {}",
        base + 4,
        pki_a.display()
    );
    assert!(transcript.contains(&status), "{transcript}");
    let ca = |name: &str| std::fs::read(dir.path().join(format!("cluster-{name}/pki/ca.pem")));
    assert_ne!(
        ca("a").unwrap(),
        ca("b").unwrap(),
        "each cluster has its own CA"
    );

    // The command the banner shows works as written; the self-check's task ends (its end is
    // recorded just after cluster b acknowledged the tag).
    let mut listing = String::new();
    for _ in 0..100 {
        let out = Command::new(env!("CARGO_BIN_EXE_kraken"))
            .args(status.split_once(": ").unwrap().1.split(' ').skip(1))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        listing = text(&out.stdout);
        if listing.lines().last() == Some("0 pending") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(listing.lines().last(), Some("0 pending"), "{listing}");

    running.stop();
}
