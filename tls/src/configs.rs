use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::error::TlsError;
use crate::material::TlsMaterial;
use crate::provider::crypto_provider;
use crate::role::Role;
use crate::trust::TrustDomains;

/// The ALPN protocol of the QUIC peer protocol.
pub const ALPN_P2P: &[u8] = b"kraken-p2p/1";

/// How a client checks the server it dialed. Both variants verify the chain against the
/// cluster CA, the validity period and the handshake signature; there is deliberately no
/// variant that skips verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerCheck<'a> {
    /// Standard WebPKI verification: the certificate must name the host that was dialed.
    Hostname,
    /// WebPKI verification of the name, and the certificate's role must be one of these: a
    /// component dialing another refuses a server that holds a valid certificate for the
    /// name but is not what it meant to reach (an origin's certificate answering as the
    /// tracker, for instance).
    HostnameAndRole(&'a [Role]),
    /// Accept a server whose certificate does not name the dialed host, provided its role is
    /// one of these. For peer-to-peer dials, where peers reach each other by the IP address
    /// the tracker handed out, which their certificates cannot be expected to list. The
    /// role must be allowed even when the name does match.
    RoleOnly(&'a [Role]),
}

impl TlsMaterial {
    /// A rustls server config that requires a client certificate chaining to the cluster CA.
    /// Offers TLS 1.3 and 1.2 (for clients such as older grpcio builds).
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<rustls::ServerConfig, TlsError> {
        self.server_config_with_versions(alpn, rustls::DEFAULT_VERSIONS)
    }

    fn server_config_with_versions(
        &self,
        alpn: &[&[u8]],
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Result<rustls::ServerConfig, TlsError> {
        if self.dial_only {
            return Err(TlsError::DialOnly);
        }
        let provider = crypto_provider();
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots(), provider.clone())
            .build()
            .map_err(|source| TlsError::Verifier { source })?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .map_err(|source| TlsError::Config { source })?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|source| TlsError::Config { source })?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        // Our own clients put AES-128-GCM first anyway; this keeps foreign clients on the
        // fastest suite too.
        config.ignore_client_order = true;
        Ok(config)
    }

    /// A rustls client config that presents our certificate and checks the server as
    /// `check` says. Offers TLS 1.3 and 1.2.
    pub fn client_config(
        &self,
        alpn: &[&[u8]],
        check: ServerCheck<'_>,
    ) -> Result<rustls::ClientConfig, TlsError> {
        self.client_config_with_versions(alpn, check, rustls::DEFAULT_VERSIONS)
    }

    fn client_config_with_versions(
        &self,
        alpn: &[&[u8]],
        check: ServerCheck<'_>,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Result<rustls::ClientConfig, TlsError> {
        let provider = crypto_provider();
        let webpki = WebPkiServerVerifier::builder_with_provider(self.roots(), provider.clone())
            .build()
            .map_err(|source| TlsError::Verifier { source })?;
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .map_err(|source| TlsError::Config { source })?;
        let builder = match check {
            ServerCheck::Hostname => builder.with_webpki_verifier(webpki),
            ServerCheck::HostnameAndRole(allowed) | ServerCheck::RoleOnly(allowed) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(RoleVerifier {
                    webpki,
                    allowed: allowed.to_vec(),
                    name_required: matches!(check, ServerCheck::HostnameAndRole(_)),
                })),
        };
        let mut config = builder
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|source| TlsError::Config { source })?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }

    /// A quinn server config (TLS 1.3 only, as QUIC requires) that requires client
    /// certificates from the cluster CA. Transport settings are left at quinn's defaults
    /// for the caller to tune.
    pub fn quinn_server_config(&self, alpn: &[&[u8]]) -> Result<quinn::ServerConfig, TlsError> {
        let tls = self.server_config_with_versions(alpn, &[&rustls::version::TLS13])?;
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(Arc::new(tls))
            .map_err(|source| TlsError::Quic { source })?;
        Ok(quinn::ServerConfig::with_crypto(Arc::new(crypto)))
    }

    /// A quinn client config (TLS 1.3 only) presenting our certificate.
    pub fn quinn_client_config(
        &self,
        alpn: &[&[u8]],
        check: ServerCheck<'_>,
    ) -> Result<quinn::ClientConfig, TlsError> {
        let tls = self.client_config_with_versions(alpn, check, &[&rustls::version::TLS13])?;
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls))
            .map_err(|source| TlsError::Quic { source })?;
        Ok(quinn::ClientConfig::new(Arc::new(crypto)))
    }

    /// tonic server TLS: our identity, and client certificates required from the cluster CA
    /// (tonic makes them mandatory whenever `client_ca_root` is set). tonic builds its
    /// rustls config from the process default provider: call
    /// [`crate::install_crypto_provider`] first. Refused for material that may only dial.
    pub fn tonic_server_tls(&self) -> Result<tonic::transport::ServerTlsConfig, TlsError> {
        self.tonic_server_tls_with(&TrustDomains::local_only(self))
    }

    /// tonic server TLS accepting client certificates from every CA of `domains` (ours and
    /// the trusted remote clusters'), so a chain to any other CA fails in the handshake.
    /// Which CA vouched for a caller is then [`TrustDomains::classify`]'s to tell.
    /// `domains` must have been built from this material's CA.
    pub fn tonic_server_tls_with(
        &self,
        domains: &TrustDomains,
    ) -> Result<tonic::transport::ServerTlsConfig, TlsError> {
        if self.dial_only {
            return Err(TlsError::DialOnly);
        }
        if !domains.local_roots_match(&self.roots) {
            return Err(TlsError::TrustDomainsMismatch);
        }
        Ok(tonic::transport::ServerTlsConfig::new()
            .identity(self.tonic_identity())
            .client_ca_root(tonic::transport::Certificate::from_pem(
                domains.client_ca_pem(),
            )))
    }

    /// tonic client TLS: trust the cluster CA, present our identity, and expect the server
    /// certificate to name `domain`.
    pub fn tonic_client_tls(&self, domain: &str) -> tonic::transport::ClientTlsConfig {
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&*self.ca_pem))
            .identity(self.tonic_identity())
            .domain_name(domain)
    }

    fn tonic_identity(&self) -> tonic::transport::Identity {
        tonic::transport::Identity::from_pem(&*self.cert_pem, &*self.key_pem)
    }
}

/// Verifies the chain with WebPKI, then the role; the host name too when `name_required`,
/// otherwise the role stands in for it.
#[derive(Debug)]
struct RoleVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    allowed: Vec<Role>,
    name_required: bool,
}

impl ServerCertVerifier for RoleVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // WebPKI checks the chain, validity and key usage before the name, so a name
        // mismatch means everything else passed. The wrong-CA-with-wrong-name test pins
        // this ordering.
        match self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(_) => {}
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.name_required => {}
            Err(e) => return Err(e),
        }
        let role = crate::role::role_of(end_entity).map_err(other)?;
        if !self.allowed.contains(&role) {
            let err = TlsError::RoleNotAllowed {
                role,
                allowed: self.allowed.clone(),
            };
            // rustls shows wrapped errors with `Debug`; log the readable form too.
            tracing::warn!(server = ?server_name, error = %err, "refusing server");
            return Err(other(err));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[DistinguishedName]> {
        self.webpki.root_hint_subjects()
    }
}

fn other(e: TlsError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(e))))
}
