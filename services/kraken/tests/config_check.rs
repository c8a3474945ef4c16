//! `kraken config check` fails on what would make the component fail at start — missing or
//! unusable `tls:` files, store and data directories it cannot write — naming the file, the
//! key and the problem; and the component itself fails at start with the same words.

// Test helpers outside `#[test]` functions: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/examples")
}

fn example(component: &str) -> PathBuf {
    examples_dir().join(component).join("development.yaml")
}

/// `kraken ARGS` with the examples placed under `kraken_dir`, plus `vars`.
fn kraken(args: &[&str], kraken_dir: &Path, vars: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kraken"));
    command.args(args).env("KRAKEN_DIR", kraken_dir);
    for (key, value) in vars {
        command.env(key, value);
    }
    command.output().expect("spawn kraken")
}

fn check(component: &str, kraken_dir: &Path, vars: &[(&str, &str)]) -> Output {
    let file = example(component);
    kraken(
        &["config", "check", file.to_str().unwrap()],
        kraken_dir,
        vars,
    )
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A temp dir holding `certs/` as `kraken certs` writes it, where the examples look.
fn with_certs() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kraken"))
        .arg("certs")
        .arg("--out")
        .arg(dir.path().join("certs"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    dir
}

#[test]
fn every_example_passes_once_kraken_certs_wrote_the_pki() {
    let dir = with_certs();
    for component in ["agent", "origin", "tracker", "proxy", "build-index"] {
        let out = check(component, dir.path(), &[]);
        assert!(out.status.success(), "{component}: {}", stderr(&out));
    }
}

#[test]
fn missing_tls_files_are_named_with_their_keys() {
    let dir = tempfile::tempdir().unwrap();
    let out = check("origin", dir.path(), &[]);
    assert!(!out.status.success());
    let text = stderr(&out);
    let file = example("origin").display().to_string();
    let certs = dir.path().join("certs");
    for (key, name) in [
        ("tls.ca", "ca.pem"),
        ("tls.cert", "origin.pem"),
        ("tls.key", "origin.key"),
    ] {
        let line = text
            .lines()
            .find(|line| line.contains(&format!("{key}: ")))
            .unwrap_or_else(|| panic!("no line for {key}: {text}"));
        assert!(line.starts_with(&file), "names the config file: {line}");
        assert!(
            line.contains(&certs.join(name).display().to_string()),
            "names the missing file: {line}"
        );
        assert!(line.contains("no such file"), "says what is wrong: {line}");
    }
    // The directories are fine: only the certificates are reported.
    assert_eq!(text.matches(&file).count(), 4, "{text}");
}

#[test]
fn a_tls_file_that_is_not_usable_is_named() {
    let dir = with_certs();
    let key = dir.path().join("certs/agent.key");
    std::fs::write(&key, "not a key\n").unwrap();
    let out = check("agent", dir.path(), &[]);
    assert!(!out.status.success());
    let text = stderr(&out);
    assert!(text.contains("tls: "), "{text}");
    assert!(text.contains(&key.display().to_string()), "{text}");

    // A directory where a file belongs.
    let dir = with_certs();
    let cert = dir.path().join("certs/agent.pem");
    std::fs::remove_file(&cert).unwrap();
    std::fs::create_dir(&cert).unwrap();
    let out = check("agent", dir.path(), &[]);
    assert!(!out.status.success());
    let text = stderr(&out);
    assert!(
        text.contains(&format!("tls.cert: cannot read {}", cert.display())),
        "{text}"
    );
}

#[test]
fn a_store_dir_that_cannot_be_created_is_named() {
    let dir = with_certs();
    // The agent's store is $KRAKEN_DIR/$AGENT_INSTANCE/store; a file stands in the way.
    let blocker = dir.path().join("blocked");
    std::fs::write(&blocker, "").unwrap();
    let out = check("agent", dir.path(), &[("AGENT_INSTANCE", "blocked")]);
    assert!(!out.status.success());
    let text = stderr(&out);
    let store = blocker.join("store");
    assert!(
        text.contains(&format!(
            "store.dir: cannot create {}: {} is not a directory",
            store.display(),
            blocker.display()
        )),
        "{text}"
    );
    assert!(
        !text.contains("tls.") && !text.contains("tls: "),
        "the certificates are fine: {text}"
    );
}

#[test]
fn a_data_dir_that_is_a_file_is_named() {
    let dir = with_certs();
    // The origin's write-back queue is $KRAKEN_DIR/$ORIGIN_INSTANCE/writeback.
    let origin = dir.path().join("origin2");
    std::fs::create_dir(&origin).unwrap();
    std::fs::write(origin.join("writeback"), "").unwrap();
    let out = check("origin", dir.path(), &[("ORIGIN_INSTANCE", "origin2")]);
    assert!(!out.status.success());
    let text = stderr(&out);
    assert!(
        text.contains(&format!(
            "writeback.dir: {} exists and is not a directory",
            origin.join("writeback").display()
        )),
        "{text}"
    );
    assert!(!text.contains("store.dir"), "{text}");

    // The build-index's fs backend root, named by its position in `backends`.
    std::fs::create_dir_all(dir.path().join("backend")).unwrap();
    std::fs::write(dir.path().join("backend/tags"), "").unwrap();
    let out = check("build-index", dir.path(), &[]);
    assert!(!out.status.success());
    let text = stderr(&out);
    assert!(
        text.contains(&format!(
            "backends[0].backend.fs.root: {} exists and is not a directory",
            dir.path().join("backend/tags").display()
        )),
        "{text}"
    );
}

#[test]
fn schema_only_skips_the_checks_of_this_machine() {
    let dir = tempfile::tempdir().unwrap();
    let file = example("tracker");
    let out = kraken(
        &["config", "check", "--schema-only", file.to_str().unwrap()],
        dir.path(),
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn the_component_fails_at_start_with_the_same_words() {
    let dir = tempfile::tempdir().unwrap();
    let file = example("tracker");
    let checked = check("tracker", dir.path(), &[]);
    // Port 0: nothing can clash, and it must not get as far as binding anyway.
    let started = kraken(
        &["tracker", "--config", file.to_str().unwrap()],
        dir.path(),
        &[
            ("TRACKER_GRPC", "127.0.0.1:0"),
            ("TRACKER_METRICS", "127.0.0.1:0"),
        ],
    );
    assert!(!checked.status.success());
    assert!(!started.status.success());
    let problem = format!(
        "tls.ca: cannot read {}",
        dir.path().join("certs/ca.pem").display()
    );
    assert!(stderr(&checked).contains(&problem), "{}", stderr(&checked));
    assert!(stderr(&started).contains(&problem), "{}", stderr(&started));
}

#[test]
fn missing_secret_files_are_named_with_their_keys() {
    let dir = with_certs();
    let secrets = dir.path().join("secrets");
    let origin = dir.path().join("origin.yaml");
    std::fs::write(
        &origin,
        format!(
            "extends: {}\nauth:\n  s3:\n    minio-user:\n      aws_access_key_id: minioadmin\n      \
             aws_secret_access_key_file: {}\n",
            example("origin").display(),
            secrets.join("minio").display()
        ),
    )
    .unwrap();
    let out = kraken(
        &["config", "check", origin.to_str().unwrap()],
        dir.path(),
        &[],
    );
    assert!(!out.status.success());
    let text = stderr(&out);
    assert!(
        text.contains(&format!(
            "{}: auth.s3.minio-user.aws_secret_access_key_file: cannot read {}: no such file",
            origin.display(),
            secrets.join("minio").display()
        )),
        "{text}"
    );

    let tracker = dir.path().join("tracker.yaml");
    std::fs::write(
        &tracker,
        format!(
            "extends: {}\npeerstore:\n  backend: redis\n  redis:\n    addr: 127.0.0.1:6379\n    \
             password_file: {}\n",
            example("tracker").display(),
            secrets.join("redis").display()
        ),
    )
    .unwrap();
    let out = kraken(
        &["config", "check", tracker.to_str().unwrap()],
        dir.path(),
        &[],
    );
    assert!(!out.status.success());
    let text = stderr(&out);
    assert!(
        text.contains(&format!(
            "peerstore.redis.password_file: cannot read {}",
            secrets.join("redis").display()
        )),
        "{text}"
    );
    // Once the secret is there, the same file passes.
    std::fs::create_dir(&secrets).unwrap();
    std::fs::write(secrets.join("redis"), "hunter2\n").unwrap();
    let out = kraken(
        &["config", "check", tracker.to_str().unwrap()],
        dir.path(),
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("hunter2"),
        "the secret is never printed"
    );
}

#[test]
fn remote_clusters_files_are_named_with_their_keys() {
    let dir = with_certs();
    let other = dir.path().join("cluster-b");
    let build_index = dir.path().join("build-index.yaml");
    let write = |trusted_ca: &Path| {
        std::fs::write(
            &build_index,
            format!(
                "extends: {}\nremotes:\n  b:\n    build_index: {{hosts: {{static: [b:15004]}}}}\n    \
                 tags: [.*]\n    tls: {{ca: {}}}\ntrusted_remotes:\n  b:\n    ca: {}\n",
                example("build-index").display(),
                other.join("ca.pem").display(),
                trusted_ca.display(),
            ),
        )
        .unwrap();
    };
    write(&other.join("ca.pem"));
    let checked = || {
        kraken(
            &["config", "check", build_index.to_str().unwrap()],
            dir.path(),
            &[],
        )
    };
    let out = checked();
    assert!(!out.status.success());
    let text = stderr(&out);
    for key in ["remotes.b.tls.ca", "trusted_remotes.b.ca"] {
        assert!(
            text.contains(&format!(
                "{}: {key}: cannot read {}: no such file",
                build_index.display(),
                other.join("ca.pem").display()
            )),
            "{key}: {text}"
        );
    }

    // Our own CA listed as a remote's could not be told from ours: refused before start.
    write(&dir.path().join("certs/ca.pem"));
    let out = Command::new(env!("CARGO_BIN_EXE_kraken"))
        .arg("certs")
        .arg("--out")
        .arg(&other)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let out = checked();
    assert!(!out.status.success());
    let text = stderr(&out);
    assert!(text.contains(": trusted_remotes: "), "{text}");

    // With the remote cluster's own CA, the same file passes.
    write(&other.join("ca.pem"));
    let out = checked();
    assert!(out.status.success(), "{}", stderr(&out));
}
