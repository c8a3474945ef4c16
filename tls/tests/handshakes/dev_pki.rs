//! The dev PKI written to disk: files, permissions, refusal to overwrite, and that what it
//! writes loads and handshakes.

use std::time::{Duration, SystemTime};

use kraken_tls::{
    DevCa, DevPkiOptions, LeafOptions, Role, ServerCheck, TlsError, TlsMaterial, generate_dev_pki,
};

use crate::common::{ALPN_TEST, setup, tcp_exchange};

#[tokio::test]
async fn writes_every_role_and_the_files_load_and_handshake() {
    setup();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pki");
    let options = DevPkiOptions {
        hosts: vec!["origin-1.example.com".into(), "10.1.2.3".into()],
        ..DevPkiOptions::default()
    };
    let pki = generate_dev_pki(&out, &options).unwrap();

    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let mut expected = vec!["ca.key".to_owned(), "ca.pem".to_owned()];
    for role in Role::ALL {
        expected.push(format!("{role}.key"));
        expected.push(format!("{role}.pem"));
    }
    expected.sort();
    assert_eq!(names, expected);

    for role in Role::ALL {
        let material = TlsMaterial::load(&pki.tls_config(role)).unwrap();
        assert_eq!(material.role().unwrap(), role);
        assert_eq!(
            material.identity().unwrap().common_name,
            Some(format!("kraken-{role}"))
        );
    }

    let origin = TlsMaterial::load(&pki.tls_config(Role::Origin)).unwrap();
    let agent = TlsMaterial::load(&pki.tls_config(Role::Agent)).unwrap();
    for name in ["localhost", "origin-1.example.com", "10.1.2.3", "127.0.0.1"] {
        let outcome = tcp_exchange(
            origin.server_config(&[ALPN_TEST]).unwrap(),
            agent
                .client_config(&[ALPN_TEST], ServerCheck::Hostname)
                .unwrap(),
            name,
        )
        .await;
        outcome.assert_ok(Role::Agent, Role::Origin);
    }

    // The CA can be reloaded to issue more certificates that the cluster accepts.
    let ca = DevCa::from_pem(
        &std::fs::read_to_string(pki.ca_cert_path()).unwrap(),
        &std::fs::read_to_string(pki.ca_key_path()).unwrap(),
    )
    .unwrap();
    let extra = ca.issue(Role::Agent, &LeafOptions::default()).unwrap();
    let extra = TlsMaterial::from_pem(ca.cert_pem(), &extra.cert_pem, &extra.key_pem).unwrap();
    tcp_exchange(
        origin.server_config(&[]).unwrap(),
        extra.client_config(&[], ServerCheck::Hostname).unwrap(),
        "localhost",
    )
    .await
    .assert_ok(Role::Agent, Role::Origin);
}

#[cfg(unix)]
#[test]
fn keys_are_private_and_certificates_readable() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let pki = generate_dev_pki(dir.path(), &DevPkiOptions::default()).unwrap();
    let mode = |p: std::path::PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let check = |pki: &kraken_tls::DevPki| {
        assert_eq!(mode(pki.ca_key_path()), 0o600);
        assert_eq!(mode(pki.ca_cert_path()), 0o644);
        for role in Role::ALL {
            assert_eq!(mode(pki.key_path(role)), 0o600, "{role}");
            assert_eq!(mode(pki.cert_path(role)), 0o644, "{role}");
        }
    };
    check(&pki);
    // `kraken certs --force` over keys someone loosened: the new keys are private again.
    for role in Role::ALL {
        std::fs::set_permissions(pki.key_path(role), std::fs::Permissions::from_mode(0o644))
            .unwrap();
    }
    let options = DevPkiOptions {
        overwrite: true,
        ..DevPkiOptions::default()
    };
    check(&generate_dev_pki(dir.path(), &options).unwrap());
}

#[test]
fn refuses_to_overwrite_unless_asked() {
    let dir = tempfile::tempdir().unwrap();
    let pki = generate_dev_pki(dir.path(), &DevPkiOptions::default()).unwrap();
    let first_ca = std::fs::read_to_string(pki.ca_cert_path()).unwrap();

    let err = generate_dev_pki(dir.path(), &DevPkiOptions::default()).unwrap_err();
    assert!(
        matches!(&err, TlsError::AlreadyExists { path } if *path == pki.ca_key_path()),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains(&pki.ca_key_path().display().to_string()),
        "{message}"
    );
    assert_eq!(
        std::fs::read_to_string(pki.ca_cert_path()).unwrap(),
        first_ca
    );

    let options = DevPkiOptions {
        overwrite: true,
        ..DevPkiOptions::default()
    };
    generate_dev_pki(dir.path(), &options).unwrap();
    assert_ne!(
        std::fs::read_to_string(pki.ca_cert_path()).unwrap(),
        first_ca
    );
    // No temporary files are left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 14);
}

#[test]
fn a_bad_host_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let options = DevPkiOptions {
        hosts: vec!["not a host!".into()],
        ..DevPkiOptions::default()
    };
    let err = generate_dev_pki(dir.path(), &options).unwrap_err();
    assert!(matches!(err, TlsError::InvalidHost { .. }), "{err:?}");
    assert!(err.to_string().contains("`not a host!`"), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn expired_dev_pki_loads_but_does_not_handshake() {
    setup();
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let options = DevPkiOptions {
        not_before: Some(now - Duration::from_secs(3 * 86_400)),
        not_after: Some(now - Duration::from_secs(86_400)),
        ..DevPkiOptions::default()
    };
    let pki = generate_dev_pki(dir.path(), &options).unwrap();
    let origin = TlsMaterial::load(&pki.tls_config(Role::Origin)).unwrap();
    let agent = TlsMaterial::load(&pki.tls_config(Role::Agent)).unwrap();
    tcp_exchange(
        origin.server_config(&[]).unwrap(),
        agent.client_config(&[], ServerCheck::Hostname).unwrap(),
        "localhost",
    )
    .await
    .assert_refused_by_client("expired");
}

#[test]
fn empty_validity_window_is_refused() {
    let now = SystemTime::now();
    let options = LeafOptions {
        not_before: Some(now),
        not_after: Some(now - Duration::from_secs(1)),
        ..LeafOptions::default()
    };
    let err = DevCa::new()
        .unwrap()
        .issue(Role::Agent, &options)
        .unwrap_err();
    assert!(matches!(err, TlsError::InvalidValidity { .. }), "{err:?}");
}
