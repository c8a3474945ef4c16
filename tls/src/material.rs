use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};

use crate::error::{PemFile, TlsError};
use crate::provider::crypto_provider;
use crate::role::{PeerIdentity, Role};

/// The three PEM files a component presents and trusts: what [`TlsMaterial::load`] reads.
///
/// This is not a config section of its own. In a component's YAML the paths are written in its
/// `tls:` section, `kraken_config::tls::TlsSection`, which is the one type the config loader
/// reads and checks (all of `ca`, `cert` and `key`, or none); the binary builds a `TlsConfig`
/// from a complete section, and [`crate::DevPki::tls_config`] and the CLI's `--pki` build one
/// directly.
///
/// Every component both serves and dials, so its certificate must carry the `serverAuth` and
/// `clientAuth` extended key usages and a `kraken://role/<role>` URI SAN;
/// [`crate::generate_dev_pki`] writes such files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// The cluster CA bundle: peers are trusted if, and only if, their certificate chains
    /// to one of these certificates.
    pub ca: PathBuf,
    /// This component's certificate, leaf first, optionally followed by intermediates.
    pub cert: PathBuf,
    /// The private key of `cert` (PKCS#8, SEC1 or PKCS#1). Keep it mode 0600.
    pub key: PathBuf,
}

/// Loaded and cross-checked TLS material: the trust anchors, our chain and our key.
///
/// Building it checks everything a handshake would later trip over (empty CA file, key not
/// matching the certificate, certificate from another CA), so a misconfigured component
/// fails at start-up with a message naming the file instead of at its first connection.
#[derive(Clone)]
pub struct TlsMaterial {
    pub(crate) roots: Arc<RootCertStore>,
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) key: Arc<PrivateKeyDer<'static>>,
    // tonic parses PEM itself, so the original text is kept for it.
    pub(crate) ca_pem: Arc<[u8]>,
    pub(crate) cert_pem: Arc<[u8]>,
    pub(crate) key_pem: Arc<[u8]>,
    /// Built by [`TlsMaterial::load_for_remote`]: `roots` are another cluster's CA, so this
    /// material may dial that cluster but never serve (it would admit that cluster's
    /// certificates as our own).
    pub(crate) dial_only: bool,
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("roots", &self.roots.len())
            .field("chain", &self.chain.len())
            .field("key", &"[elided]")
            .field("dial_only", &self.dial_only)
            .finish()
    }
}

struct Sources<'a> {
    ca: &'a Path,
    cert: &'a Path,
    key: &'a Path,
}

/// Where our own certificate is checked, when that is not the CA the material trusts.
struct OwnCa<'a> {
    pem: Vec<u8>,
    path: &'a Path,
}

impl TlsMaterial {
    /// Reads and checks the three files named by `config`.
    pub fn load(config: &TlsConfig) -> Result<Self, TlsError> {
        let ca = read(PemFile::Ca, &config.ca)?;
        let cert = read(PemFile::Cert, &config.cert)?;
        let key = read(PemFile::Key, &config.key)?;
        Self::build(
            ca,
            cert,
            key,
            &Sources {
                ca: &config.ca,
                cert: &config.cert,
                key: &config.key,
            },
            None,
        )
    }

    /// Material to dial the remote cluster whose CA bundle is `remote_ca`: it presents our
    /// certificate and key (`own.cert`, `own.key`, checked against our own CA `own.ca`, as
    /// [`TlsMaterial::load`] would) and trusts only `remote_ca` for the servers it reaches.
    ///
    /// Such material can only dial: every server config built from it is refused
    /// ([`TlsError::DialOnly`]), since its trust anchors are another cluster's.
    pub fn load_for_remote(own: &TlsConfig, remote_ca: &Path) -> Result<Self, TlsError> {
        let ca = read(PemFile::Ca, remote_ca)?;
        let own_ca = read(PemFile::Ca, &own.ca)?;
        let cert = read(PemFile::Cert, &own.cert)?;
        let key = read(PemFile::Key, &own.key)?;
        Self::build(
            ca,
            cert,
            key,
            &Sources {
                ca: remote_ca,
                cert: &own.cert,
                key: &own.key,
            },
            Some(OwnCa {
                pem: own_ca,
                path: &own.ca,
            }),
        )
    }

    /// As [`TlsMaterial::load_for_remote`], from PEM text held in memory; errors name the
    /// sources `<remote ca>`, `<own ca>`, `<cert>` and `<key>`.
    pub fn from_pem_for_remote(
        remote_ca_pem: impl AsRef<[u8]>,
        own_ca_pem: impl AsRef<[u8]>,
        cert_pem: impl AsRef<[u8]>,
        key_pem: impl AsRef<[u8]>,
    ) -> Result<Self, TlsError> {
        Self::build(
            remote_ca_pem.as_ref().to_vec(),
            cert_pem.as_ref().to_vec(),
            key_pem.as_ref().to_vec(),
            &Sources {
                ca: Path::new("<remote ca>"),
                cert: Path::new("<cert>"),
                key: Path::new("<key>"),
            },
            Some(OwnCa {
                pem: own_ca_pem.as_ref().to_vec(),
                path: Path::new("<own ca>"),
            }),
        )
    }

    /// Builds material from PEM text held in memory (tests, the dev PKI); errors name the
    /// sources `<ca>`, `<cert>` and `<key>`.
    pub fn from_pem(
        ca_pem: impl AsRef<[u8]>,
        cert_pem: impl AsRef<[u8]>,
        key_pem: impl AsRef<[u8]>,
    ) -> Result<Self, TlsError> {
        Self::build(
            ca_pem.as_ref().to_vec(),
            cert_pem.as_ref().to_vec(),
            key_pem.as_ref().to_vec(),
            &Sources {
                ca: Path::new("<ca>"),
                cert: Path::new("<cert>"),
                key: Path::new("<key>"),
            },
            None,
        )
    }

    fn build(
        ca_pem: Vec<u8>,
        cert_pem: Vec<u8>,
        key_pem: Vec<u8>,
        src: &Sources<'_>,
        own_ca: Option<OwnCa<'_>>,
    ) -> Result<Self, TlsError> {
        let roots = Arc::new(root_store(src.ca, &ca_pem)?);

        let chain = certificates(PemFile::Cert, src.cert, &cert_pem)?;
        if chain.is_empty() {
            return Err(TlsError::NoCertificate {
                path: src.cert.to_path_buf(),
            });
        }

        let key = match PrivateKeyDer::from_pem_slice(&key_pem) {
            Ok(key) => key,
            Err(rustls_pki_types::pem::Error::NoItemsFound) => {
                return Err(TlsError::NoPrivateKey {
                    path: src.key.to_path_buf(),
                });
            }
            Err(source) => {
                return Err(TlsError::Pem {
                    kind: PemFile::Key,
                    path: src.key.to_path_buf(),
                    source,
                });
            }
        };

        let provider = crypto_provider();
        match rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider) {
            Ok(_) => {}
            Err(rustls::Error::InconsistentKeys(_)) => {
                return Err(TlsError::KeyMismatch {
                    cert: src.cert.to_path_buf(),
                    key: src.key.to_path_buf(),
                });
            }
            Err(source) => {
                return Err(TlsError::InvalidPrivateKey {
                    path: src.key.to_path_buf(),
                    source,
                });
            }
        }

        // Our certificate must be one our own cluster's CA signed, whoever we then trust:
        // a remote cluster admits our certificates because it trusts our CA.
        let dial_only = own_ca.is_some();
        match own_ca {
            None => check_chain(&roots, &chain, src)?,
            Some(own) => {
                let own_roots = Arc::new(root_store(own.path, &own.pem)?);
                let src = Sources {
                    ca: own.path,
                    ..*src
                };
                check_chain(&own_roots, &chain, &src)?;
            }
        }

        Ok(TlsMaterial {
            roots,
            chain,
            key: Arc::new(key),
            ca_pem: ca_pem.into(),
            cert_pem: cert_pem.into(),
            key_pem: key_pem.into(),
            dial_only,
        })
    }

    /// Our leaf certificate.
    pub fn leaf(&self) -> &CertificateDer<'static> {
        // `build` refuses an empty chain, so the leaf is always there.
        &self.chain[0]
    }

    /// The role our own certificate carries.
    pub fn role(&self) -> Result<Role, TlsError> {
        crate::role::role_of(self.leaf())
    }

    /// When our own certificate is valid.
    pub fn validity(&self) -> Result<crate::Validity, TlsError> {
        crate::role::validity_of(self.leaf())
    }

    /// Our own identity, as peers will see it.
    pub fn identity(&self) -> Result<PeerIdentity, TlsError> {
        PeerIdentity::from_cert(self.leaf())
    }

    /// The trust anchors read from the CA file.
    pub fn roots(&self) -> Arc<RootCertStore> {
        Arc::clone(&self.roots)
    }
}

fn read(kind: PemFile, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::ReadFile {
        kind,
        path: path.to_path_buf(),
        source,
    })
}

/// The trust anchors of a CA bundle: at least one certificate, each usable as an anchor.
pub(crate) fn root_store(path: &Path, pem: &[u8]) -> Result<RootCertStore, TlsError> {
    let ca_certs = certificates(PemFile::Ca, path, pem)?;
    if ca_certs.is_empty() {
        return Err(TlsError::CaEmpty {
            path: path.to_path_buf(),
        });
    }
    let mut roots = RootCertStore::empty();
    for cert in ca_certs {
        roots.add(cert).map_err(|source| TlsError::InvalidCa {
            path: path.to_path_buf(),
            source,
        })?;
    }
    Ok(roots)
}

pub(crate) fn certificates(
    kind: PemFile,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            kind,
            path: path.to_path_buf(),
            source,
        })
}

/// Verifies our chain the way a peer will, so a certificate from the wrong CA is reported
/// at start-up. Only validity in time is tolerated (with a warning): tests need expired
/// material, and an operator may be about to rotate.
fn check_chain(
    roots: &Arc<RootCertStore>,
    chain: &[CertificateDer<'static>],
    src: &Sources<'_>,
) -> Result<(), TlsError> {
    use rustls::CertificateError as E;

    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::clone(roots), crypto_provider())
            .build()
            .map_err(|source| TlsError::Verifier { source })?;
    let (leaf, intermediates) = match chain.split_first() {
        Some(split) => split,
        None => {
            return Err(TlsError::NoCertificate {
                path: src.cert.to_path_buf(),
            });
        }
    };
    match verifier.verify_client_cert(leaf, intermediates, UnixTime::now()) {
        Ok(_) => Ok(()),
        Err(rustls::Error::InvalidCertificate(E::UnknownIssuer | E::BadSignature)) => {
            Err(TlsError::NotSignedByCa {
                cert: src.cert.to_path_buf(),
                ca: src.ca.to_path_buf(),
            })
        }
        Err(rustls::Error::InvalidCertificate(
            e @ (E::Expired
            | E::ExpiredContext { .. }
            | E::NotValidYet
            | E::NotValidYetContext { .. }),
        )) => {
            tracing::warn!(
                cert = %src.cert.display(),
                error = %e,
                "certificate is outside its validity period; peers will refuse it"
            );
            Ok(())
        }
        Err(source) => Err(TlsError::CertificateRejected {
            cert: src.cert.to_path_buf(),
            ca: src.ca.to_path_buf(),
            source,
        }),
    }
}
