//! Black-box tests of the `kraken` binary: spawned as a user would run it.

// Test helpers outside `#[test]` functions: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn kraken(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kraken"))
        .args(args)
        .output()
        .expect("spawn kraken")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

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

#[test]
fn devcluster_starts_passes_its_self_check_and_stops_on_sigterm() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let dir = tempfile::tempdir().unwrap();
    // Below Linux's ephemeral range (32768+) so parallel tests' port-0 sockets cannot take it.
    let base = 10_000 + (std::process::id() % 200) as u16 * 100;
    let mut child = Command::new(env!("CARGO_BIN_EXE_kraken"))
        .args(["devcluster", "--base-port", &base.to_string(), "--dir"])
        .arg(dir.path())
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
    // Keep draining stdout, as a terminal would.
    let drain = std::thread::spawn(move || for _ in lines {});
    let transcript = seen.join("\n");
    assert!(transcript.contains("self-check passed"), "{transcript}");
    assert!(
        transcript.contains(&format!("tracker:        127.0.0.1:{}", base + 3)),
        "{transcript}"
    );
    assert!(dir.path().join("pki/ca.pem").exists());

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    drain.join().unwrap();
    assert!(status.success(), "devcluster exited with {status}");
}
