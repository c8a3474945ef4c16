use std::fmt;
use std::str::FromStr;

use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

use crate::error::TlsError;

/// The prefix of the URI subject alternative name that carries a certificate's role:
/// `kraken://role/<role>`, e.g. `kraken://role/build-index`.
///
/// A URI SAN is used rather than the common name or an OU because SANs are what every TLS
/// stack (rustls, grpcio, openssl) already exposes, and a URI can never be mistaken for a
/// host name during server-name verification.
pub const ROLE_URI_PREFIX: &str = "kraken://role/";

/// What a certificate's holder is allowed to be in the cluster.
///
/// Servers decide which methods a caller may use from this role alone, so it is read only
/// from a certificate that has already been verified against the cluster CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A host-local agent serving pulls to the container runtime (`agent`).
    Agent,
    /// A seeding origin holding blobs durably (`origin`).
    Origin,
    /// The tracker that hands out peers and metainfo (`tracker`).
    Tracker,
    /// The registry front end that accepts pushes (`proxy`).
    Proxy,
    /// The tag index and replication queue (`build-index`).
    BuildIndex,
    /// A human or CI tool calling the cluster, e.g. `kraken push` or a Python grpcio
    /// script (`client`). It never serves anything.
    Client,
}

impl Role {
    /// The five server components, in the order the dev PKI writes them.
    pub const COMPONENTS: [Role; 5] = [
        Role::Agent,
        Role::Origin,
        Role::Tracker,
        Role::Proxy,
        Role::BuildIndex,
    ];

    /// Every role, components first.
    pub const ALL: [Role; 6] = [
        Role::Agent,
        Role::Origin,
        Role::Tracker,
        Role::Proxy,
        Role::BuildIndex,
        Role::Client,
    ];

    /// The role's string form, as used in configs, file names and the role URI.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Origin => "origin",
            Role::Tracker => "tracker",
            Role::Proxy => "proxy",
            Role::BuildIndex => "build-index",
            Role::Client => "client",
        }
    }

    /// The URI SAN that marks a certificate with this role, e.g. `kraken://role/origin`.
    pub fn uri(self) -> String {
        format!("{ROLE_URI_PREFIX}{}", self.as_str())
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no [`Role`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role `{input}`; expected one of {}", display_roles(&Role::ALL))]
pub struct ParseRoleError {
    input: String,
}

impl FromStr for Role {
    type Err = ParseRoleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == s)
            .ok_or_else(|| ParseRoleError { input: clip(s) })
    }
}

/// Formats roles as `agent, origin` for error messages.
pub(crate) fn display_roles(roles: &[Role]) -> String {
    if roles.is_empty() {
        return "none".to_owned();
    }
    roles
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Shortens input that may come from a peer's certificate before it is echoed in an error.
fn clip(input: &str) -> String {
    const MAX: usize = 64;
    match input.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}…", &input[..end]),
        None => input.to_owned(),
    }
}

/// Reads the role from a certificate's `kraken://role/<role>` URI SAN.
///
/// This only parses: call it on a certificate rustls has already verified, never on one a
/// peer merely sent. Fails when the certificate has no role, several roles, or a role URI
/// naming an unknown role.
pub fn role_of(cert: &CertificateDer<'_>) -> Result<Role, TlsError> {
    let parsed = parse_cert(cert)?;
    role_of_parsed(&parsed)
}

/// When a certificate is valid: `[not_before, not_after]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: std::time::SystemTime,
    pub not_after: std::time::SystemTime,
}

/// The validity window of `cert`.
pub fn validity_of(cert: &CertificateDer<'_>) -> Result<Validity, TlsError> {
    let parsed = parse_cert(cert)?;
    let at = |time: x509_parser::time::ASN1Time| {
        let seconds = time.timestamp();
        let magnitude = std::time::Duration::from_secs(seconds.unsigned_abs());
        // Out of `SystemTime`'s range only for absurd dates; the epoch is as good an answer.
        let time = if seconds >= 0 {
            std::time::UNIX_EPOCH.checked_add(magnitude)
        } else {
            std::time::UNIX_EPOCH.checked_sub(magnitude)
        };
        time.unwrap_or(std::time::UNIX_EPOCH)
    };
    let validity = parsed.validity();
    Ok(Validity {
        not_before: at(validity.not_before),
        not_after: at(validity.not_after),
    })
}

pub(crate) fn parse_cert<'a>(
    cert: &'a CertificateDer<'_>,
) -> Result<x509_parser::certificate::X509Certificate<'a>, TlsError> {
    match x509_parser::parse_x509_certificate(cert.as_ref()) {
        Ok((_, parsed)) => Ok(parsed),
        Err(x509_parser::nom::Err::Error(source) | x509_parser::nom::Err::Failure(source)) => {
            Err(TlsError::X509 { source })
        }
        Err(x509_parser::nom::Err::Incomplete(_)) => Err(TlsError::X509 {
            source: x509_parser::error::X509Error::InvalidCertificate,
        }),
    }
}

fn role_of_parsed(cert: &x509_parser::certificate::X509Certificate<'_>) -> Result<Role, TlsError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|source| TlsError::X509 { source })?;
    let mut found: Option<Role> = None;
    for name in san.iter().flat_map(|ext| ext.value.general_names.iter()) {
        let GeneralName::URI(uri) = name else {
            continue;
        };
        // Other URIs (SPIFFE ids, for instance) may share the certificate; only ours count.
        let Some(role) = uri.strip_prefix(ROLE_URI_PREFIX) else {
            continue;
        };
        let role: Role = role.parse()?;
        match found {
            Some(first) if first != role => {
                return Err(TlsError::AmbiguousRole {
                    first,
                    second: role,
                });
            }
            _ => found = Some(role),
        }
    }
    found.ok_or(TlsError::NoRole)
}

/// Who a verified peer is: its role, and the certificate's common name for logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The role from the `kraken://role/<role>` URI SAN.
    pub role: Role,
    /// The subject common name, e.g. `kraken-agent`, when it has one.
    pub common_name: Option<String>,
}

impl PeerIdentity {
    /// Reads the identity of a verified leaf certificate.
    pub fn from_cert(cert: &CertificateDer<'_>) -> Result<Self, TlsError> {
        let parsed = parse_cert(cert)?;
        let role = role_of_parsed(&parsed)?;
        let common_name = parsed
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(clip);
        Ok(PeerIdentity { role, common_name })
    }

    /// Reads the identity from a verified chain as rustls, tonic and quinn hand it out:
    /// the leaf comes first.
    pub fn from_chain(chain: &[CertificateDer<'_>]) -> Result<Self, TlsError> {
        let leaf = chain.first().ok_or(TlsError::NoPeerCertificate)?;
        Self::from_cert(leaf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_forms_round_trip() {
        for role in Role::ALL {
            assert_eq!(role.to_string().parse::<Role>().unwrap(), role);
        }
        assert_eq!("build-index".parse::<Role>().unwrap(), Role::BuildIndex);
        assert_eq!(Role::Origin.uri(), "kraken://role/origin");
    }

    #[test]
    fn unknown_role_lists_the_valid_ones() {
        let err = "buildindex".parse::<Role>().unwrap_err().to_string();
        assert!(err.contains("`buildindex`"), "{err}");
        assert!(
            err.contains("agent, origin, tracker, proxy, build-index, client"),
            "{err}"
        );
    }

    #[test]
    fn long_input_is_clipped() {
        let long = "x".repeat(10_000);
        let err = long.parse::<Role>().unwrap_err().to_string();
        assert!(err.len() < 300, "{}", err.len());
    }
}
