use std::io;
use std::path::PathBuf;

use crate::role::{ParseRoleError, Role};

/// Which of the three PEM files of a [`crate::TlsConfig`] an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PemFile {
    /// The cluster CA bundle (`tls.ca`).
    Ca,
    /// This component's certificate chain (`tls.cert`).
    Cert,
    /// This component's private key (`tls.key`).
    Key,
}

impl std::fmt::Display for PemFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PemFile::Ca => "CA certificate",
            PemFile::Cert => "certificate",
            PemFile::Key => "private key",
        })
    }
}

/// Everything that can go wrong loading, generating or checking TLS material.
///
/// Paths are shown as given so an operator can find the file the message is about.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read at all.
    #[error("cannot read {kind} file {}: {source}", path.display())]
    ReadFile {
        /// Which file of the `tls:` section.
        kind: PemFile,
        /// The path that was opened.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },

    /// A PEM file was read but is not well-formed PEM.
    #[error("{kind} file {} is not valid PEM: {source}", path.display())]
    Pem {
        /// Which file of the `tls:` section.
        kind: PemFile,
        /// The offending file, or `<memory>` for in-memory PEM.
        path: PathBuf,
        /// What the PEM parser found.
        #[source]
        source: rustls_pki_types::pem::Error,
    },

    /// The CA file holds no `CERTIFICATE` block.
    #[error("CA file {} contains no CERTIFICATE block", path.display())]
    CaEmpty {
        /// The CA file.
        path: PathBuf,
    },

    /// A certificate in the CA file cannot be used as a trust anchor.
    #[error("CA file {} holds a certificate that cannot be a trust anchor: {source}", path.display())]
    InvalidCa {
        /// The CA file.
        path: PathBuf,
        /// Why rustls refused it.
        #[source]
        source: rustls::Error,
    },

    /// The certificate file holds no `CERTIFICATE` block.
    #[error("certificate file {} contains no CERTIFICATE block", path.display())]
    NoCertificate {
        /// The certificate file.
        path: PathBuf,
    },

    /// The key file holds no PKCS#8, SEC1 or PKCS#1 private key block.
    #[error(
        "key file {} contains no private key (expected a PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY block)",
        path.display()
    )]
    NoPrivateKey {
        /// The key file.
        path: PathBuf,
    },

    /// The private key could not be loaded by the crypto provider.
    #[error("private key in {} is not usable: {source}", path.display())]
    InvalidPrivateKey {
        /// The key file.
        path: PathBuf,
        /// Why the provider refused it.
        #[source]
        source: rustls::Error,
    },

    /// The private key belongs to a different certificate.
    #[error("private key {} does not match the certificate in {}", key.display(), cert.display())]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },

    /// The certificate does not chain to any CA in the CA file.
    #[error("certificate {} is not signed by the CA in {}", cert.display(), ca.display())]
    NotSignedByCa {
        /// The certificate file.
        cert: PathBuf,
        /// The CA file.
        ca: PathBuf,
    },

    /// The certificate chains to the CA but would be refused by a peer for another reason
    /// (wrong key usage, bad encoding, unsupported algorithm…).
    #[error("certificate {} would be rejected by peers trusting {}: {source}", cert.display(), ca.display())]
    CertificateRejected {
        /// The certificate file.
        cert: PathBuf,
        /// The CA file.
        ca: PathBuf,
        /// What the verifier said.
        #[source]
        source: rustls::Error,
    },

    /// A certificate could not be parsed as X.509.
    #[error("malformed X.509 certificate: {source}")]
    X509 {
        /// The parser's complaint.
        #[source]
        source: x509_parser::error::X509Error,
    },

    /// A certificate carries no `kraken://role/<role>` URI SAN.
    #[error("certificate carries no kraken://role/<role> URI in its subject alternative names")]
    NoRole,

    /// A certificate carries more than one role URI, so its role is ambiguous.
    #[error("certificate carries several roles ({first}, {second}); exactly one is allowed")]
    AmbiguousRole {
        /// The first role found.
        first: Role,
        /// Another role found.
        second: Role,
    },

    /// A role URI names no known role.
    #[error("certificate role URI is invalid: {source}")]
    InvalidRole {
        /// The parse error.
        #[source]
        source: ParseRoleError,
    },

    /// A certificate chain verifies against none of the CAs a server trusts.
    #[error("the certificate chains to none of the trusted CAs")]
    UntrustedChain,

    /// A remote cluster's CA is also our own or another remote's: its certificates could
    /// not be told apart from theirs.
    #[error(
        "the CA of remote `{remote}` is already trusted as the CA of {already}; a CA can vouch for one cluster only"
    )]
    DuplicateCa {
        /// The remote whose CA repeats one already listed.
        remote: String,
        /// Whose CA it already is, as the message shows it.
        already: String,
    },

    /// A remote cluster is listed twice.
    #[error("remote `{name}` is listed twice")]
    DuplicateRemote {
        /// Its name.
        name: String,
    },

    /// A remote cluster's name is unusable (empty).
    #[error("remote cluster name `{name}` is invalid: it must not be empty")]
    InvalidRemoteName {
        /// The name as given.
        name: String,
    },

    /// Material built to dial a remote cluster trusts that cluster's CA, so it must never
    /// decide who may call one of our servers.
    #[error(
        "TLS material for dialing remote clusters cannot serve; use the component's own `tls:` material"
    )]
    DialOnly,

    /// A server was given trust domains built for another CA than its own material's.
    #[error("the trust domains were built for another local CA than this server's")]
    TrustDomainsMismatch,

    /// The connection has no verified peer certificate.
    #[error("the peer presented no verified certificate")]
    NoPeerCertificate,

    /// A peer's role is not among the roles allowed for this connection.
    #[error(
        "peer certificate has role {role}; allowed here: {}",
        crate::role::display_roles(allowed)
    )]
    RoleNotAllowed {
        /// The peer's role.
        role: Role,
        /// The roles that would have been accepted.
        allowed: Vec<Role>,
    },

    /// A host name given for a certificate is neither an IP address nor a valid DNS name.
    #[error("`{host}` is neither an IP address nor a valid DNS name")]
    InvalidHost {
        /// The host as given.
        host: String,
    },

    /// The requested validity window is empty or not representable.
    #[error("invalid certificate validity: {reason}")]
    InvalidValidity {
        /// What was wrong.
        reason: String,
    },

    /// rcgen failed to generate a key or certificate.
    #[error("cannot generate {what}: {source}")]
    Generate {
        /// What was being generated.
        what: String,
        /// rcgen's error.
        #[source]
        source: rcgen::Error,
    },

    /// The CA key given to [`crate::DevCa::from_pem`] does not belong to the CA certificate.
    #[error("the CA private key does not match the CA certificate")]
    CaKeyMismatch,

    /// A dev PKI file exists already and overwriting was not requested.
    #[error("{} already exists; refusing to overwrite an existing PKI", path.display())]
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
    },

    /// Writing a dev PKI file failed.
    #[error("cannot write {}: {source}", path.display())]
    WriteFile {
        /// The file being written.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },

    /// rustls refused to build a configuration from loaded material.
    #[error("cannot build TLS configuration: {source}")]
    Config {
        /// rustls' error.
        #[source]
        source: rustls::Error,
    },

    /// The client-certificate verifier could not be built (e.g. no trust anchors).
    #[error("cannot build certificate verifier: {source}")]
    Verifier {
        /// rustls' error.
        #[source]
        source: rustls::server::VerifierBuilderError,
    },

    /// The crypto provider lacks the cipher suite QUIC needs for its initial packets.
    #[error("TLS configuration is unusable for QUIC: {source}")]
    Quic {
        /// quinn's error.
        #[source]
        source: quinn::crypto::rustls::NoInitialCipherSuite,
    },
}

impl From<ParseRoleError> for TlsError {
    fn from(source: ParseRoleError) -> Self {
        TlsError::InvalidRole { source }
    }
}
