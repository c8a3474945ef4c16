//! Trust domains: which cluster's CA vouches for a caller.
//!
//! A server normally trusts its own cluster CA only. A server that takes calls from other
//! clusters (cross-cluster replication) also trusts each remote cluster's CA, *by name*: the
//! handshake accepts a chain to any of them ([`TrustDomains::client_ca_pem`]), and afterwards
//! [`TrustDomains::classify`] tells which one signed it, so the access layer can hold a
//! foreign caller to a much smaller table than a local one whatever role its certificate
//! claims. Classification re-verifies the chain against each CA's key, the local CA first;
//! it never looks at issuer names, which any CA can copy.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::{CertificateDer, UnixTime};

use crate::error::{PemFile, TlsError};
use crate::material::{TlsMaterial, root_store};
use crate::peer::identity_from_verified_chain;
use crate::provider::crypto_provider;
use crate::role::PeerIdentity;

/// Which CA vouched for a verified certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Trust {
    /// Our own cluster CA.
    Local,
    /// The CA configured for the remote cluster of this name.
    Remote(Arc<str>),
}

impl Trust {
    /// Whether the certificate comes from our own cluster.
    pub fn is_local(&self) -> bool {
        matches!(self, Trust::Local)
    }

    /// `local` or `remote`: a metric label with a fixed set of values.
    pub fn label(&self) -> &'static str {
        match self {
            Trust::Local => "local",
            Trust::Remote(_) => "remote",
        }
    }
}

impl fmt::Display for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trust::Local => f.write_str("this cluster"),
            Trust::Remote(name) => write!(f, "remote cluster `{name}`"),
        }
    }
}

/// Who is calling: the identity its certificate carries and the CA that vouched for it.
/// The access layer puts one in every admitted request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Role and common name from the verified leaf.
    pub identity: PeerIdentity,
    /// Our cluster, or which remote one.
    pub trust: Trust,
}

/// The CAs a server accepts client certificates from: its own cluster's, and those of the
/// remote clusters it trusts, each under a name.
#[derive(Clone)]
pub struct TrustDomains {
    local_roots: Arc<RootCertStore>,
    local_ca_pem: Arc<[u8]>,
    /// `None` when there are no remotes: every chain the handshake verified is then local,
    /// and classifying costs nothing.
    local_verifier: Option<Arc<dyn ClientCertVerifier>>,
    remotes: Vec<TrustedCa>,
}

impl TrustDomains {
    /// Our own CA only: what every server uses unless it trusts remote clusters.
    pub fn local_only(local: &TlsMaterial) -> Self {
        Self {
            local_roots: local.roots(),
            local_ca_pem: Arc::clone(&local.ca_pem),
            local_verifier: None,
            remotes: Vec::new(),
        }
    }

    /// Our own CA (from `local`) and, for each `(name, path)`, the CA bundle of the remote
    /// cluster `name`. Refuses an empty or repeated name, and a CA already trusted as our
    /// own or another remote's (its certificates could not be told apart).
    pub fn load(local: &TlsMaterial, remotes: &[(String, PathBuf)]) -> Result<Self, TlsError> {
        let mut pems = Vec::with_capacity(remotes.len());
        for (name, path) in remotes {
            let pem = std::fs::read(path).map_err(|source| TlsError::ReadFile {
                kind: PemFile::Ca,
                path: path.clone(),
                source,
            })?;
            pems.push((name.as_str(), path.as_path(), pem));
        }
        Self::build(local, pems)
    }

    /// As [`TrustDomains::load`], from PEM text held in memory (tests, the dev cluster);
    /// errors name the source `<remote NAME ca>`.
    pub fn from_pem(local: &TlsMaterial, remotes: &[(&str, &[u8])]) -> Result<Self, TlsError> {
        let sources: Vec<PathBuf> = remotes
            .iter()
            .map(|(name, _)| PathBuf::from(format!("<remote {name} ca>")))
            .collect();
        let pems = remotes
            .iter()
            .zip(&sources)
            .map(|((name, pem), source)| (*name, source.as_path(), pem.to_vec()))
            .collect();
        Self::build(local, pems)
    }

    /// The CA bundle a server hands its TLS stack as client trust anchors: ours, then each
    /// remote's. A chain to any other CA fails in the handshake.
    pub fn client_ca_pem(&self) -> Vec<u8> {
        let mut bundle = self.local_ca_pem.to_vec();
        for ca in &self.remotes {
            // PEM blocks need a line break between them; a file may lack its last one.
            bundle.push(b'\n');
            bundle.extend_from_slice(&ca.pem);
        }
        bundle
    }

    /// The names of the trusted remote clusters, in the order given.
    pub fn remote_names(&self) -> impl Iterator<Item = &str> {
        self.remotes.iter().map(|ca| &*ca.name)
    }

    /// Which CA signed `chain` (leaf first), a chain the handshake verified against
    /// [`TrustDomains::client_ca_pem`]: our own CA is tried first, then each remote's, by
    /// verifying signatures, never by comparing names. With no remotes every such chain is
    /// local. A chain no trusted CA signed is [`TlsError::UntrustedChain`].
    ///
    /// Validity in time is not re-judged (the handshake did): the chain is verified at an
    /// instant inside the leaf's validity, so a certificate expiring during a long-lived
    /// connection keeps its classification instead of becoming "nobody's".
    pub fn classify(&self, chain: &[CertificateDer<'_>]) -> Result<Trust, TlsError> {
        let Some(local) = &self.local_verifier else {
            return Ok(Trust::Local);
        };
        let (leaf, intermediates) = chain.split_first().ok_or(TlsError::NoPeerCertificate)?;
        let at = instant_within_validity(leaf)?;
        if local.verify_client_cert(leaf, intermediates, at).is_ok() {
            return Ok(Trust::Local);
        }
        for ca in &self.remotes {
            if ca
                .verifier
                .verify_client_cert(leaf, intermediates, at)
                .is_ok()
            {
                return Ok(Trust::Remote(Arc::clone(&ca.name)));
            }
        }
        Err(TlsError::UntrustedChain)
    }

    /// Whether these domains were built for material trusting exactly `roots` as its own CA.
    pub(crate) fn local_roots_match(&self, roots: &RootCertStore) -> bool {
        self.local_roots.roots == roots.roots
    }

    fn build(local: &TlsMaterial, remotes: Vec<(&str, &Path, Vec<u8>)>) -> Result<Self, TlsError> {
        let provider = crypto_provider();
        let verifier = |roots: Arc<RootCertStore>| {
            WebPkiClientVerifier::builder_with_provider(roots, Arc::clone(&provider))
                .build()
                .map_err(|source| TlsError::Verifier { source })
        };
        let local_roots = local.roots();
        // Every trust anchor's key, with whose it is: a key may belong to one domain only,
        // or classification would silently pick the first.
        let mut owners: Vec<(&[u8], Trust)> = local_roots
            .roots
            .iter()
            .map(|anchor| (anchor.subject_public_key_info.as_ref(), Trust::Local))
            .collect();
        let mut built: Vec<TrustedCa> = Vec::with_capacity(remotes.len());
        let mut anchors: Vec<Arc<RootCertStore>> = Vec::with_capacity(remotes.len());
        for (name, path, pem) in &remotes {
            if name.is_empty() {
                return Err(TlsError::InvalidRemoteName {
                    name: (*name).to_owned(),
                });
            }
            if built.iter().any(|ca| &*ca.name == *name) {
                return Err(TlsError::DuplicateRemote {
                    name: (*name).to_owned(),
                });
            }
            let roots = Arc::new(root_store(path, pem)?);
            built.push(TrustedCa {
                name: Arc::from(*name),
                verifier: verifier(Arc::clone(&roots))?,
                pem: Arc::from(pem.as_slice()),
            });
            anchors.push(roots);
        }
        for (ca, roots) in built.iter().zip(&anchors) {
            for anchor in &roots.roots {
                let key = anchor.subject_public_key_info.as_ref();
                if let Some((_, owner)) = owners.iter().find(|(k, _)| *k == key) {
                    return Err(TlsError::DuplicateCa {
                        remote: ca.name.to_string(),
                        already: owner.to_string(),
                    });
                }
                owners.push((key, Trust::Remote(Arc::clone(&ca.name))));
            }
        }
        let local_verifier = if built.is_empty() {
            None
        } else {
            Some(verifier(Arc::clone(&local_roots))?)
        };
        Ok(Self {
            local_roots,
            local_ca_pem: Arc::clone(&local.ca_pem),
            local_verifier,
            remotes: built,
        })
    }
}

impl fmt::Debug for TrustDomains {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustDomains")
            .field("local_roots", &self.local_roots.len())
            .field("remotes", &self.remote_names().collect::<Vec<_>>())
            .finish()
    }
}

/// Who is behind a connection's verified client chain (`None`: the connection has none), as
/// the status a gRPC caller gets when that cannot be told: `UNAUTHENTICATED` without a
/// certificate, `PERMISSION_DENIED` for one without a usable role or from no trusted CA.
pub fn caller_from_verified_chain(
    chain: Option<&[CertificateDer<'_>]>,
    domains: &TrustDomains,
) -> Result<Caller, tonic::Status> {
    let identity = identity_from_verified_chain(chain)?;
    // `identity_from_verified_chain` refused a missing chain already.
    let chain = chain.unwrap_or_default();
    let trust = domains.classify(chain).map_err(|e| {
        tonic::Status::permission_denied(format!("client certificate rejected: {e}"))
    })?;
    Ok(Caller { identity, trust })
}

/// One remote cluster's CA.
#[derive(Clone)]
struct TrustedCa {
    name: Arc<str>,
    verifier: Arc<dyn ClientCertVerifier>,
    /// As given, for the server's client-CA bundle.
    pem: Arc<[u8]>,
}

/// Now, moved into the leaf's validity window if it lies outside.
fn instant_within_validity(leaf: &CertificateDer<'_>) -> Result<UnixTime, TlsError> {
    let parsed = crate::role::parse_cert(leaf)?;
    let validity = parsed.validity();
    let secs = |t: i64| u64::try_from(t).unwrap_or(0);
    let not_before = secs(validity.not_before.timestamp());
    let not_after = secs(validity.not_after.timestamp());
    let now = UnixTime::now().as_secs();
    let at = now.min(not_after).max(not_before);
    Ok(UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        at,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::material::certificates;
    use crate::pki::{DevCa, LeafOptions};
    use crate::role::Role;

    fn material(ca: &DevCa, role: Role) -> TlsMaterial {
        let leaf = ca.issue(role, &LeafOptions::default()).unwrap();
        TlsMaterial::from_pem(ca.cert_pem(), &leaf.cert_pem, &leaf.key_pem).unwrap()
    }

    fn chain(ca: &DevCa, role: Role, options: &LeafOptions) -> Vec<CertificateDer<'static>> {
        vec![ca.issue(role, options).unwrap().cert_der]
    }

    /// CA parameters whose subject DN is `copied`'s (O and CN, as `DevCa` writes them).
    fn ca_params_like(copied: &DevCa) -> rcgen::CertificateParams {
        let parsed = crate::role::parse_cert(copied.cert_der()).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (ty, value) in [
            (
                rcgen::DnType::OrganizationName,
                parsed.subject().iter_organization().next(),
            ),
            (
                rcgen::DnType::CommonName,
                parsed.subject().iter_common_name().next(),
            ),
        ] {
            let value = value.unwrap().as_str().unwrap();
            params.distinguished_name.push(ty, value);
        }
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        params
    }

    /// A CA whose subject DN is byte for byte `copied`'s, with a key of its own: what the
    /// operator of a trusted remote cluster could mint to pose as the local CA.
    fn same_subject_as(copied: &DevCa) -> DevCa {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = ca_params_like(copied).self_signed(&key).unwrap();
        DevCa::from_pem(&cert.pem(), &key.serialize_pem()).unwrap()
    }

    #[test]
    fn a_chain_is_classified_by_the_ca_that_signed_it() {
        let (local, a, b) = (
            DevCa::new().unwrap(),
            DevCa::new().unwrap(),
            DevCa::new().unwrap(),
        );
        let server = material(&local, Role::Origin);
        let domains = TrustDomains::from_pem(
            &server,
            &[
                ("a", a.cert_pem().as_bytes()),
                ("b", b.cert_pem().as_bytes()),
            ],
        )
        .unwrap();
        let ok = LeafOptions::default();
        assert_eq!(
            domains.classify(&chain(&local, Role::Agent, &ok)).unwrap(),
            Trust::Local
        );
        assert_eq!(
            domains.classify(&chain(&a, Role::BuildIndex, &ok)).unwrap(),
            Trust::Remote("a".into())
        );
        assert_eq!(
            domains.classify(&chain(&b, Role::Origin, &ok)).unwrap(),
            Trust::Remote("b".into())
        );
        // An expired certificate keeps its domain: the handshake judges time, not this.
        let expired = LeafOptions::expired();
        assert_eq!(
            domains
                .classify(&chain(&b, Role::Origin, &expired))
                .unwrap(),
            Trust::Remote("b".into())
        );
        assert_eq!(domains.remote_names().collect::<Vec<_>>(), ["a", "b"]);

        // The bundle names all three CAs, ours first.
        let bundle = domains.client_ca_pem();
        let certs: Vec<_> = certificates(PemFile::Ca, Path::new("<bundle>"), &bundle).unwrap();
        assert_eq!(
            certs,
            [
                local.cert_der().clone(),
                a.cert_der().clone(),
                b.cert_der().clone()
            ]
        );
    }

    #[test]
    fn same_subject_different_key_is_not_confused() {
        let local = DevCa::new().unwrap();
        let imposter = same_subject_as(&local);
        let local_subject = crate::role::parse_cert(local.cert_der())
            .unwrap()
            .subject()
            .as_raw()
            .to_vec();
        let imposter_subject = crate::role::parse_cert(imposter.cert_der())
            .unwrap()
            .subject()
            .as_raw()
            .to_vec();
        assert_eq!(local_subject, imposter_subject, "the test needs equal DNs");

        let server = material(&local, Role::Origin);
        let domains =
            TrustDomains::from_pem(&server, &[("evil", imposter.cert_pem().as_bytes())]).unwrap();
        let ok = LeafOptions::default();
        // Whatever role it claims, and though its issuer DN is the local CA's, a certificate
        // from the imposter is the remote's.
        for role in Role::ALL {
            assert_eq!(
                domains.classify(&chain(&imposter, role, &ok)).unwrap(),
                Trust::Remote("evil".into()),
                "{role}"
            );
            assert_eq!(
                domains.classify(&chain(&local, role, &ok)).unwrap(),
                Trust::Local
            );
        }
        // Listed the other way round (the imposter as the local CA), the same holds.
        let server = material(&imposter, Role::Origin);
        let domains =
            TrustDomains::from_pem(&server, &[("real", local.cert_pem().as_bytes())]).unwrap();
        assert_eq!(
            domains.classify(&chain(&local, Role::Agent, &ok)).unwrap(),
            Trust::Remote("real".into())
        );
    }

    #[test]
    fn an_unlisted_ca_classifies_as_unknown() {
        let (local, a, stranger) = (
            DevCa::new().unwrap(),
            DevCa::new().unwrap(),
            DevCa::new().unwrap(),
        );
        let server = material(&local, Role::BuildIndex);
        let domains = TrustDomains::from_pem(&server, &[("a", a.cert_pem().as_bytes())]).unwrap();
        let err = domains
            .classify(&chain(&stranger, Role::BuildIndex, &LeafOptions::default()))
            .unwrap_err();
        assert!(matches!(err, TlsError::UntrustedChain), "{err:?}");
        assert!(matches!(
            domains.classify(&[]).unwrap_err(),
            TlsError::NoPeerCertificate
        ));
        let status = caller_from_verified_chain(
            Some(&chain(&stranger, Role::BuildIndex, &LeafOptions::default())),
            &domains,
        )
        .unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        let status = caller_from_verified_chain(None, &domains).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn local_only_trusts_the_local_ca_and_classifies_for_free() {
        let local = DevCa::new().unwrap();
        let server = material(&local, Role::Tracker);
        let domains = TrustDomains::local_only(&server);
        assert_eq!(domains.client_ca_pem(), local.cert_pem().as_bytes());
        let caller = caller_from_verified_chain(
            Some(&chain(&local, Role::Agent, &LeafOptions::default())),
            &domains,
        )
        .unwrap();
        assert_eq!(caller.trust, Trust::Local);
        assert_eq!(caller.identity.role, Role::Agent);
    }

    #[test]
    fn a_ca_belongs_to_one_domain_and_a_name_to_one_ca() {
        let (local, a) = (DevCa::new().unwrap(), DevCa::new().unwrap());
        let server = material(&local, Role::Origin);
        let err =
            TrustDomains::from_pem(&server, &[("a", local.cert_pem().as_bytes())]).unwrap_err();
        assert!(
            err.to_string()
                .contains("remote `a` is already trusted as the CA of this cluster"),
            "{err}"
        );
        let err = TrustDomains::from_pem(
            &server,
            &[
                ("a", a.cert_pem().as_bytes()),
                ("b", a.cert_pem().as_bytes()),
            ],
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("remote `b` is already trusted as the CA of remote cluster `a`"),
            "{err}"
        );
        // The same key re-issued under another certificate is the same CA.
        let reissued = same_subject_as(&a);
        let reissued_same_key = {
            let key = rcgen::KeyPair::from_pem(&a.key_pem()).unwrap();
            ca_params_like(&a).self_signed(&key).unwrap().pem()
        };
        assert_ne!(reissued_same_key, a.cert_pem());
        let err = TrustDomains::from_pem(
            &server,
            &[
                ("a", a.cert_pem().as_bytes()),
                ("b", reissued_same_key.as_bytes()),
            ],
        )
        .unwrap_err();
        assert!(matches!(err, TlsError::DuplicateCa { .. }), "{err:?}");
        // A different key under the same name is a different CA.
        TrustDomains::from_pem(
            &server,
            &[
                ("a", a.cert_pem().as_bytes()),
                ("b", reissued.cert_pem().as_bytes()),
            ],
        )
        .unwrap();

        let err = TrustDomains::from_pem(
            &server,
            &[
                ("a", a.cert_pem().as_bytes()),
                ("a", reissued.cert_pem().as_bytes()),
            ],
        )
        .unwrap_err();
        assert!(matches!(err, TlsError::DuplicateRemote { .. }), "{err:?}");
        let err = TrustDomains::from_pem(&server, &[("", a.cert_pem().as_bytes())]).unwrap_err();
        assert!(matches!(err, TlsError::InvalidRemoteName { .. }), "{err:?}");
        let err = TrustDomains::from_pem(&server, &[("a", b"no pem here")]).unwrap_err();
        assert!(err.to_string().contains("<remote a ca>"), "{err}");
    }

    #[test]
    fn load_names_the_missing_file() {
        let local = DevCa::new().unwrap();
        let server = material(&local, Role::Origin);
        let path = PathBuf::from("/nonexistent/remote-a-ca.pem");
        let err = TrustDomains::load(&server, &[("a".to_owned(), path)]).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/remote-a-ca.pem"),
            "{err}"
        );
    }
}
