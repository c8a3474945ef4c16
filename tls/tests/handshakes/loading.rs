//! Loading PEM material: every failure names the file and what was wrong.

use std::path::{Path, PathBuf};

use kraken_tls::{DevCa, LeafOptions, Role, TlsConfig, TlsError, TlsMaterial, role_of};

fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

struct Files {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    ca: DevCa,
    config: TlsConfig,
}

fn files() -> Files {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::new().unwrap();
    let leaf = ca.issue(Role::Tracker, &LeafOptions::default()).unwrap();
    let config = TlsConfig {
        ca: write(dir.path(), "ca.pem", ca.cert_pem()),
        cert: write(dir.path(), "tracker.pem", &leaf.cert_pem),
        key: write(dir.path(), "tracker.key", &leaf.key_pem),
    };
    Files {
        dir: dir.path().to_path_buf(),
        _dir: dir,
        ca,
        config,
    }
}

#[track_caller]
fn load_err(config: &TlsConfig) -> (TlsError, String) {
    let err = TlsMaterial::load(config).unwrap_err();
    let message = err.to_string();
    (err, message)
}

#[test]
fn valid_files_load() {
    let f = files();
    let material = TlsMaterial::load(&f.config).unwrap();
    assert_eq!(material.role().unwrap(), Role::Tracker);
    assert_eq!(role_of(material.leaf()).unwrap(), Role::Tracker);
}

#[test]
fn missing_file_is_named() {
    let f = files();
    let config = TlsConfig {
        key: f.dir.join("nope.key"),
        ..f.config.clone()
    };
    let (err, message) = load_err(&config);
    assert!(matches!(err, TlsError::ReadFile { .. }), "{err:?}");
    assert!(
        message.starts_with("cannot read private key file "),
        "{message}"
    );
    assert!(message.contains("nope.key"), "{message}");
}

#[test]
fn empty_ca_file() {
    let f = files();
    let config = TlsConfig {
        ca: write(&f.dir, "empty.pem", ""),
        ..f.config.clone()
    };
    let (err, message) = load_err(&config);
    assert!(matches!(err, TlsError::CaEmpty { .. }), "{err:?}");
    assert!(
        message.contains("empty.pem") && message.contains("no CERTIFICATE"),
        "{message}"
    );
}

#[test]
fn certificate_file_without_certificate() {
    let f = files();
    let key = std::fs::read_to_string(&f.config.key).unwrap();
    let config = TlsConfig {
        cert: write(&f.dir, "swapped.pem", &key),
        ..f.config.clone()
    };
    let (err, message) = load_err(&config);
    assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");
    assert!(message.contains("swapped.pem"), "{message}");
}

#[test]
fn key_file_without_key() {
    let f = files();
    let config = TlsConfig {
        key: f.config.cert.clone(),
        ..f.config.clone()
    };
    let (err, message) = load_err(&config);
    assert!(matches!(err, TlsError::NoPrivateKey { .. }), "{err:?}");
    assert!(message.contains("tracker.pem"), "{message}");
}

#[test]
fn malformed_pem() {
    let f = files();
    let config = TlsConfig {
        cert: write(&f.dir, "cut.pem", "-----BEGIN CERTIFICATE-----\nMIIB\n"),
        ..f.config.clone()
    };
    let (err, message) = load_err(&config);
    assert!(matches!(err, TlsError::Pem { .. }), "{err:?}");
    assert!(
        message.contains("cut.pem") && message.contains("not valid PEM"),
        "{message}"
    );
}

#[test]
fn key_of_another_certificate() {
    let f = files();
    let other = f.ca.issue(Role::Tracker, &LeafOptions::default()).unwrap();
    let config = TlsConfig {
        key: write(&f.dir, "other.key", &other.key_pem),
        ..f.config.clone()
    };
    let (err, message) = load_err(&config);
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
    assert!(
        message.contains("other.key") && message.contains("tracker.pem"),
        "{message}"
    );
}

#[test]
fn certificate_from_another_ca() {
    let f = files();
    let other_ca = DevCa::new().unwrap();
    let config = TlsConfig {
        ca: write(&f.dir, "other-ca.pem", other_ca.cert_pem()),
        ..f.config.clone()
    };
    let (err, message) = load_err(&config);
    assert!(matches!(err, TlsError::NotSignedByCa { .. }), "{err:?}");
    assert_eq!(
        message,
        format!(
            "certificate {} is not signed by the CA in {}",
            f.config.cert.display(),
            config.ca.display()
        )
    );
}

#[tokio::test]
async fn ca_bundle_with_several_cas_trusts_each() {
    let f = files();
    let other_ca = DevCa::new().unwrap();
    let bundle = format!("{}{}", other_ca.cert_pem(), f.ca.cert_pem());
    let config = TlsConfig {
        ca: write(&f.dir, "bundle.pem", &bundle),
        ..f.config.clone()
    };
    let ours = TlsMaterial::load(&config).unwrap();
    // A peer certified by the other CA, trusting the same bundle: during a CA rotation both
    // generations must accept each other, in both directions.
    let issued = other_ca
        .issue(Role::Origin, &LeafOptions::default())
        .unwrap();
    let theirs = TlsMaterial::from_pem(&bundle, &issued.cert_pem, &issued.key_pem).unwrap();
    let ours_role = ours.role().unwrap();
    for (server, client, server_role, client_role) in [
        (&theirs, &ours, Role::Origin, ours_role),
        (&ours, &theirs, ours_role, Role::Origin),
    ] {
        crate::common::tcp_exchange(
            server.server_config(&[]).unwrap(),
            client
                .client_config(&[], kraken_tls::ServerCheck::Hostname)
                .unwrap(),
            "localhost",
        )
        .await
        .assert_ok(client_role, server_role);
    }
    // Without the other CA in the bundle, its certificate is refused.
    let theirs_alone =
        TlsMaterial::from_pem(other_ca.cert_pem(), &issued.cert_pem, &issued.key_pem).unwrap();
    let only_ours = TlsMaterial::from_pem(
        f.ca.cert_pem(),
        std::fs::read_to_string(&f.config.cert).unwrap(),
        std::fs::read_to_string(&f.config.key).unwrap(),
    )
    .unwrap();
    crate::common::tcp_exchange(
        theirs_alone.server_config(&[]).unwrap(),
        only_ours
            .client_config(&[], kraken_tls::ServerCheck::Hostname)
            .unwrap(),
        "localhost",
    )
    .await
    .assert_refused_by_client("UnknownIssuer");
}

#[test]
fn ca_key_must_match_ca_certificate() {
    let a = DevCa::new().unwrap();
    let b = DevCa::new().unwrap();
    let err = DevCa::from_pem(a.cert_pem(), &b.key_pem()).unwrap_err();
    assert!(matches!(err, TlsError::CaKeyMismatch), "{err:?}");
}
