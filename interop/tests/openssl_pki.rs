//! The dev PKI checked by a second, independent TLS implementation: OpenSSL verifies every
//! certificate against the CA, sees the role in the SAN URI, and completes a mutual-TLS
//! handshake with our rustls server (and is refused without a client certificate).

// Test helpers outside `#[test]` functions: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};

use kraken_interop::have;
use kraken_tls::{DevPkiOptions, Role, TlsMaterial, generate_dev_pki};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn openssl(args: &[&str]) -> std::process::Output {
    assert!(
        have("openssl"),
        "openssl is required (installed by tests/run.sh)"
    );
    Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl")
}

#[test]
fn openssl_verifies_every_role_certificate_and_reads_its_role() {
    let dir = tempfile::tempdir().unwrap();
    let pki = generate_dev_pki(dir.path(), &DevPkiOptions::default()).unwrap();
    let ca = pki.ca_cert_path().to_str().unwrap().to_owned();
    for role in Role::COMPONENTS {
        let cert = pki.cert_path(role).to_str().unwrap().to_owned();
        let verify = openssl(&["verify", "-CAfile", &ca, "-purpose", "sslclient", &cert]);
        assert!(
            verify.status.success(),
            "{role}: {}",
            String::from_utf8_lossy(&verify.stderr)
        );
        let verify = openssl(&["verify", "-CAfile", &ca, "-purpose", "sslserver", &cert]);
        assert!(
            verify.status.success(),
            "{role}: {}",
            String::from_utf8_lossy(&verify.stderr)
        );
        let text = openssl(&["x509", "-in", &cert, "-noout", "-ext", "subjectAltName"]);
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(
            text.contains(&format!("URI:kraken://role/{role}")),
            "{role}: {text}"
        );
        assert!(
            text.contains("DNS:localhost") && text.contains("IP Address:127.0.0.1"),
            "{text}"
        );
    }
    // A certificate from another CA does not verify against ours.
    let other = tempfile::tempdir().unwrap();
    let other_pki = generate_dev_pki(other.path(), &DevPkiOptions::default()).unwrap();
    let foreign = other_pki
        .cert_path(Role::Agent)
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        !openssl(&["verify", "-CAfile", &ca, &foreign])
            .status
            .success()
    );
}

#[tokio::test]
async fn openssl_s_client_handshakes_with_our_mtls_server_only_with_a_certificate() {
    kraken_tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let pki = generate_dev_pki(dir.path(), &DevPkiOptions::default()).unwrap();
    let server = TlsMaterial::load(&pki.tls_config(Role::Origin)).unwrap();
    let acceptor =
        tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(server.server_config(&[]).unwrap()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let mut roles = Vec::new();
        for _ in 0..2 {
            let (tcp, _) = listener.accept().await.unwrap();
            match acceptor.accept(tcp).await {
                Ok(mut tls) => {
                    let role = kraken_tls::peer_identity_from_rustls(tls.get_ref().1)
                        .map(|identity| identity.role.to_string())
                        .unwrap_or_default();
                    let mut line = [0u8; 5];
                    let _ = tls.read_exact(&mut line).await;
                    let _ = tls.write_all(b"hello\n").await;
                    let _ = tls.shutdown().await;
                    roles.push(role);
                }
                Err(_) => roles.push("refused".to_owned()),
            }
        }
        roles
    });

    let s_client = |with_cert: bool| {
        let mut args = vec![
            "s_client".to_owned(),
            "-connect".to_owned(),
            format!("127.0.0.1:{port}"),
            "-CAfile".to_owned(),
            pki.ca_cert_path().display().to_string(),
            "-verify_return_error".to_owned(),
            "-quiet".to_owned(),
        ];
        if with_cert {
            args.extend([
                "-cert".to_owned(),
                pki.cert_path(Role::Agent).display().to_string(),
                "-key".to_owned(),
                pki.key_path(Role::Agent).display().to_string(),
            ]);
        }
        async move {
            tokio::task::spawn_blocking(move || {
                let mut child = Command::new("openssl")
                    .args(&args)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("spawn openssl");
                use std::io::Write;
                let _ = child.stdin.take().unwrap().write_all(b"ping\n");
                child.wait_with_output().unwrap()
            })
            .await
            .unwrap()
        }
    };
    let with_cert = s_client(true).await;
    let without_cert = s_client(false).await;
    let roles = server.await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&with_cert.stdout).trim(),
        "hello",
        "{}",
        String::from_utf8_lossy(&with_cert.stderr)
    );
    assert_eq!(roles, vec!["agent".to_owned(), "refused".to_owned()]);
    assert!(!String::from_utf8_lossy(&without_cert.stdout).contains("hello"));
}
