//! The TLS material a component dials another cluster with (`remotes.<name>.tls`): the
//! remote's CA as trust anchors, and the certificate we present, which chains to *our* CA
//! (the remote lists it under its `trusted_remotes`). Built the same way by every component
//! that has remotes (origins, build-index), so they refuse the same mistakes with the same
//! words; and [`probe_handshake`], which tells a remote that refuses our certificate from one
//! that is down.

use kraken_config::remote::RemoteTlsSection;
use kraken_config::tls::TlsSection;
use kraken_tls::{HandshakeFailure, ServerCheck, TlsConfig, TlsError, TlsMaterial};

/// Why the material for a remote cannot be built; the message is relative to
/// `remotes.<name>`.
#[derive(Debug, thiserror::Error)]
pub enum RemoteTlsError {
    #[error(
        "no certificate to present: set `tls.cert` and `tls.key` (or `remotes.<name>.tls.cert` \
         and `key`)"
    )]
    NoIdentity,
    #[error("`tls.ca` is needed to check the certificate presented to the remote")]
    NoOwnCa,
    #[error("tls")]
    Tls(#[source] TlsError),
}

/// Loads the material to dial the remote of `remote` with: its `ca` as roots, its `cert`/`key`
/// (else `own`'s) as our identity, checked against `own.ca`.
pub fn load_remote_material(
    remote: &RemoteTlsSection,
    own: &TlsSection,
) -> Result<TlsMaterial, RemoteTlsError> {
    let (cert, key) = remote.identity(own).ok_or(RemoteTlsError::NoIdentity)?;
    let ca = own.ca.clone().ok_or(RemoteTlsError::NoOwnCa)?;
    let config = TlsConfig {
        ca,
        cert: cert.to_owned(),
        key: key.to_owned(),
    };
    TlsMaterial::load_for_remote(&config, &remote.ca).map_err(RemoteTlsError::Tls)
}

/// How long [`probe_handshake`] waits for each of connecting, the handshake, and the server's
/// first bytes after it.
const PROBE_STEP: std::time::Duration = std::time::Duration::from_secs(3);

/// Finds out whether `address` refuses our certificate, when a call failed with nothing but a
/// transport error. With TLS 1.3 the client finishes its handshake before the server has
/// checked the client certificate; a server that refuses it sends an alert and closes, and an
/// HTTP/2 client may report only the closed connection. This dials `address` with `material`
/// (checking the server's certificate names `server_name`), completes the handshake, and reads
/// what the server sends first: the alert, if it refused us. `None` when the handshake holds,
/// or when `address` cannot be reached at all (not a TLS problem).
pub async fn probe_handshake(
    material: &TlsMaterial,
    address: &str,
    server_name: &str,
    remote: &str,
) -> Option<HandshakeFailure> {
    use tokio::io::AsyncReadExt;

    let config = material
        .client_config(&[b"h2"], ServerCheck::Hostname)
        .ok()?;
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned()).ok()?;
    let tcp = tokio::time::timeout(PROBE_STEP, tokio::net::TcpStream::connect(address))
        .await
        .ok()?
        .ok()?;
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let mut stream = match tokio::time::timeout(PROBE_STEP, connector.connect(name, tcp)).await {
        Err(_) => return None,
        Ok(Err(error)) => return kraken_tls::handshake_failure(&error, remote),
        Ok(Ok(stream)) => stream,
    };
    let mut first = [0u8; 1];
    match tokio::time::timeout(PROBE_STEP, stream.read(&mut first)).await {
        Ok(Err(error)) => kraken_tls::handshake_failure(&error, remote),
        // Bytes (an HTTP/2 server's SETTINGS), silence or a bare close: no refusal seen.
        _ => None,
    }
}
