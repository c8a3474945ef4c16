//! The TLS material a component dials another cluster with (`remotes.<name>.tls`): the
//! remote's CA as trust anchors, and the certificate we present, which chains to *our* CA
//! (the remote lists it under its `trusted_remotes`). Built the same way by every component
//! that has remotes (origins, build-index), so they refuse the same mistakes with the same
//! words.

use kraken_config::remote::RemoteTlsSection;
use kraken_config::tls::TlsSection;
use kraken_tls::{TlsConfig, TlsError, TlsMaterial};

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
