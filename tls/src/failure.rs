//! Telling an operator why a TLS handshake with another cluster failed.
//!
//! A refused handshake reaches a gRPC caller as a `transport error` several wrappers deep
//! (tonic, hyper, an `io::Error`, then rustls), and with TLS 1.3 a client learns that the
//! server refused *its* certificate only from an alert at its first read. This finds the
//! rustls error in that chain and says which side distrusted which certificate.

use std::error::Error;

use rustls::{AlertDescription, CertificateError};

/// Why a TLS handshake with the remote cluster `remote` failed, in words an operator can act
/// on. Built by [`handshake_failure`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeFailure {
    /// The remote refused the certificate we presented: typically it does not list our CA
    /// among its trusted remotes (`unknown CA`), or our certificate expired.
    #[error("remote `{remote}` refused our certificate ({})", alert_text(.alert))]
    RefusedOurCertificate {
        /// The remote cluster's name.
        remote: String,
        /// The alert it sent.
        alert: AlertDescription,
    },
    /// The remote's server certificate does not chain to the CA configured for it.
    #[error("remote's certificate is not from the configured CA for remote `{remote}` ({reason})")]
    NotFromConfiguredCa {
        /// The remote cluster's name.
        remote: String,
        /// rustls' finding (`UnknownIssuer`, `BadSignature`).
        reason: String,
    },
    /// We refused the remote's certificate for another reason (expired, wrong host name,
    /// a role other than the one dialed).
    #[error("refused the certificate of remote `{remote}`: {reason}")]
    RemoteCertificateRefused {
        /// The remote cluster's name.
        remote: String,
        /// rustls' finding.
        reason: String,
    },
    /// Any other TLS failure (no common protocol version or cipher suite, a protocol error).
    #[error("TLS handshake with remote `{remote}` failed: {reason}")]
    Other {
        /// The remote cluster's name.
        remote: String,
        /// rustls' error.
        reason: String,
    },
}

/// The TLS failure behind `err` (a tonic `Status`, a transport or I/O error, or a rustls
/// error itself), found by walking its sources; `None` when no TLS error is in the chain
/// (a refused TCP connection, a timeout, an application error).
pub fn handshake_failure(err: &(dyn Error + 'static), remote: &str) -> Option<HandshakeFailure> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(from_rustls(tls, remote));
        }
        // `io::Error::source` skips the error it wraps, which is where tokio-rustls puts
        // the rustls error.
        let wrapped = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref());
        if let Some(inner) = wrapped {
            if let Some(found) = handshake_failure(inner, remote) {
                return Some(found);
            }
            // h2 keeps I/O errors as text only (so that they can be cloned to every
            // stream), which is how an alert read after the handshake reaches a caller.
            if let Some(found) = from_message(&inner.to_string(), remote) {
                return Some(found);
            }
        }
        next = e.source();
    }
    None
}

fn from_rustls(err: &rustls::Error, remote: &str) -> HandshakeFailure {
    let remote = remote.to_owned();
    match err {
        rustls::Error::AlertReceived(
            alert @ (AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateRequired
            | AlertDescription::AccessDenied),
        ) => HandshakeFailure::RefusedOurCertificate {
            remote,
            alert: *alert,
        },
        rustls::Error::InvalidCertificate(
            e @ (CertificateError::UnknownIssuer | CertificateError::BadSignature),
        ) => HandshakeFailure::NotFromConfiguredCa {
            remote,
            reason: format!("{e:?}"),
        },
        rustls::Error::InvalidCertificate(e) => HandshakeFailure::RemoteCertificateRefused {
            remote,
            reason: certificate_error_text(e),
        },
        e => HandshakeFailure::Other {
            remote,
            reason: e.to_string(),
        },
    }
}

/// The failure behind rustls' own wording of an error whose type was lost on the way.
fn from_message(message: &str, remote: &str) -> Option<HandshakeFailure> {
    if let Some(name) = message.strip_prefix("received fatal alert: ") {
        // rustls shows the alert's `Debug` name; find the alert with that name.
        let alert = (0..=u8::MAX)
            .map(AlertDescription::from)
            .find(|alert| format!("{alert:?}") == name)?;
        return Some(from_rustls(&rustls::Error::AlertReceived(alert), remote));
    }
    let reason = message.strip_prefix("invalid peer certificate: ")?;
    let remote = remote.to_owned();
    Some(
        if reason.starts_with("UnknownIssuer") || reason.starts_with("BadSignature") {
            HandshakeFailure::NotFromConfiguredCa {
                remote,
                reason: reason.to_owned(),
            }
        } else {
            HandshakeFailure::RemoteCertificateRefused {
                remote,
                reason: reason.to_owned(),
            }
        },
    )
}

fn alert_text(alert: &AlertDescription) -> String {
    match alert {
        AlertDescription::UnknownCA => "unknown CA".to_owned(),
        AlertDescription::BadCertificate => "bad certificate".to_owned(),
        AlertDescription::CertificateExpired => "certificate expired".to_owned(),
        AlertDescription::CertificateRevoked => "certificate revoked".to_owned(),
        AlertDescription::CertificateRequired => "certificate required".to_owned(),
        AlertDescription::AccessDenied => "access denied".to_owned(),
        other => format!("{other:?}"),
    }
}

/// rustls shows our own verifier's errors (`RoleNotAllowed`) only with `Debug`; show them
/// readably.
fn certificate_error_text(err: &CertificateError) -> String {
    match err {
        CertificateError::Other(other) => other.0.to_string(),
        e => format!("{e:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rustls_error_is_found_inside_io_errors_and_named() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(AlertDescription::UnknownCA),
        );
        let found = handshake_failure(&io, "b").unwrap();
        assert_eq!(
            found.to_string(),
            "remote `b` refused our certificate (unknown CA)"
        );
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        assert_eq!(
            handshake_failure(&io, "b").unwrap().to_string(),
            "remote's certificate is not from the configured CA for remote `b` (UnknownIssuer)"
        );
        // As h2 passes it on: the text only.
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(AlertDescription::CertificateExpired).to_string(),
        );
        assert_eq!(
            handshake_failure(&io, "b").unwrap().to_string(),
            "remote `b` refused our certificate (certificate expired)"
        );
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(handshake_failure(&refused, "b"), None);
    }
}
