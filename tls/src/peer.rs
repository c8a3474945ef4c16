//! Reading a verified peer's role where a request or connection is handled.

use rustls_pki_types::CertificateDer;

use crate::error::TlsError;
use crate::role::{PeerIdentity, Role, display_roles};

/// The identity of the client behind a tonic request.
///
/// `UNAUTHENTICATED` when the connection carries no verified client certificate (plain-text
/// listener, or tonic without `client_ca_root`); `PERMISSION_DENIED` when the certificate has
/// no usable role.
pub fn peer_identity_from_request<T>(
    request: &tonic::Request<T>,
) -> Result<PeerIdentity, tonic::Status> {
    identity_from_verified_chain(request.peer_certs().as_deref().map(Vec::as_slice))
}

/// The identity in a connection's verified client chain (`None`: the connection has none),
/// as the status a gRPC caller gets when it is unusable: `UNAUTHENTICATED` without a
/// certificate, `PERMISSION_DENIED` for a certificate without a usable role.
pub fn identity_from_verified_chain(
    chain: Option<&[CertificateDer<'_>]>,
) -> Result<PeerIdentity, tonic::Status> {
    let Some(chain) = chain else {
        return Err(tonic::Status::unauthenticated(
            "no verified client certificate on this connection",
        ));
    };
    PeerIdentity::from_chain(chain).map_err(|e| match e {
        TlsError::NoPeerCertificate => tonic::Status::unauthenticated(e.to_string()),
        e => tonic::Status::permission_denied(format!("client certificate rejected: {e}")),
    })
}

/// The role of the client behind a tonic request; see [`peer_identity_from_request`].
pub fn peer_role_from_request<T>(request: &tonic::Request<T>) -> Result<Role, tonic::Status> {
    peer_identity_from_request(request).map(|id| id.role)
}

/// Lets the call through only if the caller's role is one of `allowed`, returning that
/// role; otherwise `PERMISSION_DENIED` naming the caller's role and the allowed ones.
pub fn require_role<T>(
    request: &tonic::Request<T>,
    allowed: &[Role],
) -> Result<Role, tonic::Status> {
    let role = peer_role_from_request(request)?;
    if allowed.contains(&role) {
        Ok(role)
    } else {
        Err(tonic::Status::permission_denied(format!(
            "certificate role `{role}` may not call this method; allowed roles: {}",
            display_roles(allowed)
        )))
    }
}

/// The identity of the peer on the other end of a quinn connection. The certificate was
/// verified during the handshake, so this only reads it.
pub fn peer_identity_from_quinn(connection: &quinn::Connection) -> Result<PeerIdentity, TlsError> {
    let identity = connection
        .peer_identity()
        .ok_or(TlsError::NoPeerCertificate)?;
    let chain = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| TlsError::NoPeerCertificate)?;
    PeerIdentity::from_chain(&chain)
}

/// The role of the peer on the other end of a quinn connection.
pub fn peer_role_from_quinn(connection: &quinn::Connection) -> Result<Role, TlsError> {
    peer_identity_from_quinn(connection).map(|id| id.role)
}

/// The identity of the peer of a finished rustls handshake (e.g. a `tokio-rustls` stream's
/// `get_ref().1`).
pub fn peer_identity_from_rustls(
    connection: &rustls::CommonState,
) -> Result<PeerIdentity, TlsError> {
    let chain = connection
        .peer_certificates()
        .ok_or(TlsError::NoPeerCertificate)?;
    PeerIdentity::from_chain(chain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_without_certificates_is_unauthenticated() {
        let request = tonic::Request::new(());
        let status = peer_role_from_request(&request).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        let status = require_role(&request, &[Role::Agent]).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
    }
}
