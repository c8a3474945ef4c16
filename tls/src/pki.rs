//! The dev PKI: a throwaway cluster CA and one certificate per role, for local clusters,
//! tests and CI. Production clusters bring certificates from their own CA; the only thing
//! they must keep is the role URI SAN (see [`crate::ROLE_URI_PREFIX`]).

use std::fmt;
use std::fs;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;

use crate::error::{PemFile, TlsError};
use crate::material::TlsConfig;
use crate::role::Role;

/// Leaf certificates live a year unless told otherwise.
pub const DEFAULT_LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// The CA outlives any leaf it signs by default, so re-issuing a leaf never needs a new CA.
const DEFAULT_CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// Certificates start a little in the past so hosts whose clocks lag the generating
/// machine by a few minutes still accept them.
const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// How a leaf certificate is issued.
#[derive(Debug, Clone)]
pub struct LeafOptions {
    /// Extra subject alternative names besides `localhost`, `127.0.0.1` and `::1`: each is
    /// parsed as an IP address, and otherwise must be a valid DNS name.
    pub hosts: Vec<String>,
    /// How long the certificate is valid from `not_before`.
    pub validity: Duration,
    /// Start of validity; default: now minus five minutes of clock-skew tolerance.
    pub not_before: Option<SystemTime>,
    /// End of validity; default: `not_before + validity`. Set it in the past to get an
    /// expired certificate for tests.
    pub not_after: Option<SystemTime>,
}

impl Default for LeafOptions {
    fn default() -> Self {
        LeafOptions {
            hosts: Vec::new(),
            validity: DEFAULT_LEAF_VALIDITY,
            not_before: None,
            not_after: None,
        }
    }
}

impl LeafOptions {
    /// Options for a certificate that expired an hour ago (it was valid for a day before).
    pub fn expired() -> Self {
        let now = SystemTime::now();
        LeafOptions {
            not_before: now.checked_sub(Duration::from_secs(25 * 60 * 60)),
            not_after: now.checked_sub(Duration::from_secs(60 * 60)),
            ..LeafOptions::default()
        }
    }

    fn window(&self) -> Result<(OffsetDateTime, OffsetDateTime), TlsError> {
        let not_before = match self.not_before {
            Some(t) => t,
            None => SystemTime::now()
                .checked_sub(CLOCK_SKEW)
                .unwrap_or(UNIX_EPOCH),
        };
        let not_after =
            match self.not_after {
                Some(t) => t,
                None => not_before.checked_add(self.validity).ok_or_else(|| {
                    TlsError::InvalidValidity {
                        reason: format!("validity {:?} overflows the clock", self.validity),
                    }
                })?,
            };
        if not_after <= not_before {
            return Err(TlsError::InvalidValidity {
                reason: "not_after must be later than not_before".to_owned(),
            });
        }
        Ok((to_offset(not_before)?, to_offset(not_after)?))
    }
}

fn to_offset(t: SystemTime) -> Result<OffsetDateTime, TlsError> {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).ok(),
        Err(before) => i64::try_from(before.duration().as_secs()).ok().map(|s| -s),
    };
    secs.and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .ok_or_else(|| TlsError::InvalidValidity {
            reason: format!("{t:?} is not a representable certificate time"),
        })
}

/// A certificate and its private key, as PEM text and as DER.
pub struct IssuedCert {
    /// The certificate, PEM (`CERTIFICATE`).
    pub cert_pem: String,
    /// The private key, PEM (PKCS#8 `PRIVATE KEY`).
    pub key_pem: String,
    /// The certificate, DER.
    pub cert_der: CertificateDer<'static>,
    /// The private key, DER.
    pub key_der: PrivateKeyDer<'static>,
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keys stay out of logs and panic messages.
        f.debug_struct("IssuedCert")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[elided]")
            .finish()
    }
}

/// An in-memory cluster CA that issues role certificates.
pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
}

impl fmt::Debug for DevCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevCa")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

impl DevCa {
    /// A new CA with a fresh ECDSA P-256 key, valid for ten years.
    pub fn new() -> Result<Self, TlsError> {
        Self::with_validity(DEFAULT_CA_VALIDITY)
    }

    /// A new CA valid from five minutes ago for `validity`.
    pub fn with_validity(validity: Duration) -> Result<Self, TlsError> {
        let (not_before, not_after) = LeafOptions {
            validity,
            ..LeafOptions::default()
        }
        .window()?;
        let key = generate_key("the CA key")?;
        let mut params = CertificateParams::default();
        params.not_before = not_before;
        params.not_after = not_after;
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "kraken dev");
        // A per-CA suffix keeps two dev clusters' CAs distinguishable: with equal subjects a
        // verifier reports a confusing bad signature instead of an unknown issuer.
        let id: String = params
            .key_identifier(&key)
            .iter()
            .take(4)
            .map(|b| format!("{b:02x}"))
            .collect();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("kraken dev CA {id}"));
        // Leaves are signed directly by the root; a path length of 0 forbids anything else.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params
            .self_signed(&key)
            .map_err(|source| TlsError::Generate {
                what: "the CA certificate".to_owned(),
                source,
            })?;
        Ok(DevCa {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Reloads a CA written earlier (e.g. `ca.pem` and `ca.key` of [`generate_dev_pki`]) to
    /// issue more certificates from it.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let key = parse_key(key_pem)?;
        let cert_der = ca_cert_from_pem(cert_pem)?;
        let parsed = crate::role::parse_cert(&cert_der)?;
        if parsed.tbs_certificate.subject_pki.raw != key.subject_public_key_info().as_slice() {
            return Err(TlsError::CaKeyMismatch);
        }
        let issuer =
            Issuer::from_ca_cert_der(&cert_der, key).map_err(|source| TlsError::Generate {
                what: "an issuer from the CA certificate".to_owned(),
                source,
            })?;
        Ok(DevCa {
            issuer,
            cert_pem: cert_pem.to_owned(),
            cert_der,
        })
    }

    /// The CA certificate, PEM: what every component's `tls.ca` points at.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA private key, PEM (PKCS#8). Whoever holds it can mint any role.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Issues a leaf certificate for `role` with a fresh ECDSA P-256 key.
    ///
    /// SANs: DNS `localhost`, IP `127.0.0.1`, IP `::1`, `options.hosts`, and the role URI;
    /// CN `kraken-<role>`. Components both serve and dial, so theirs carry the `serverAuth` and
    /// `clientAuth` usages; a `client` certificate (CLI tools, scripts) only dials and gets
    /// `clientAuth` alone, so it can never answer as a server.
    pub fn issue(&self, role: Role, options: &LeafOptions) -> Result<IssuedCert, TlsError> {
        let (not_before, not_after) = options.window()?;
        let mut params = CertificateParams::default();
        params.not_before = not_before;
        params.not_after = not_after;
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "kraken dev");
        params
            .distinguished_name
            .push(DnType::CommonName, format!("kraken-{role}"));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match role {
            Role::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            _ => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        };
        params.use_authority_key_identifier_extension = true;
        params.subject_alt_names = subject_alt_names(role, &options.hosts)?;

        let key = generate_key(&format!("the {role} key"))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| TlsError::Generate {
                what: format!("the {role} certificate"),
                source,
            })?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
            key_der: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        })
    }
}

fn generate_key(what: &str) -> Result<KeyPair, TlsError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|source| TlsError::Generate {
        what: what.to_owned(),
        source,
    })
}

fn parse_key(pem: &str) -> Result<KeyPair, TlsError> {
    KeyPair::from_pem(pem).map_err(|source| TlsError::Generate {
        what: "a signing key from the CA key PEM".to_owned(),
        source,
    })
}

fn subject_alt_names(role: Role, hosts: &[String]) -> Result<Vec<SanType>, TlsError> {
    let mut sans = vec![
        SanType::DnsName(ia5("localhost")?),
        SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
    ];
    for host in hosts {
        let host = host.trim();
        let san = match host.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => {
                // rcgen accepts any ASCII; check it is a name a TLS client could ever match.
                if rustls_pki_types::DnsName::try_from(host).is_err() {
                    return Err(TlsError::InvalidHost {
                        host: host.to_owned(),
                    });
                }
                SanType::DnsName(ia5(&host.to_ascii_lowercase())?)
            }
        };
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    sans.push(SanType::URI(ia5(&role.uri())?));
    Ok(sans)
}

fn ia5(s: &str) -> Result<Ia5String, TlsError> {
    Ia5String::try_from(s).map_err(|_| TlsError::InvalidHost { host: s.to_owned() })
}

/// What [`generate_dev_pki`] writes.
#[derive(Debug, Clone)]
pub struct DevPkiOptions {
    /// Extra SANs for every leaf (IP addresses or DNS names), e.g. the hosts' addresses.
    pub hosts: Vec<String>,
    /// Leaf validity; default 365 days.
    pub validity: Duration,
    /// Overrides the leaves' start of validity.
    pub not_before: Option<SystemTime>,
    /// Overrides the leaves' end of validity (set it in the past for expired certificates).
    pub not_after: Option<SystemTime>,
    /// Replace an existing dev PKI in the directory. Without it, an existing `ca.key` (or any
    /// other file about to be written) is an error, because re-issuing the CA silently
    /// breaks every certificate already handed out.
    pub overwrite: bool,
}

impl Default for DevPkiOptions {
    fn default() -> Self {
        DevPkiOptions {
            hosts: Vec::new(),
            validity: DEFAULT_LEAF_VALIDITY,
            not_before: None,
            not_after: None,
            overwrite: false,
        }
    }
}

/// The files written by [`generate_dev_pki`]: `ca.pem`, `ca.key`, and `<role>.pem` /
/// `<role>.key` for every [`Role`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevPki {
    dir: PathBuf,
}

impl DevPki {
    /// A PKI written earlier by [`generate_dev_pki`] into `dir`, so a development cluster
    /// keeps its certificates across restarts. Every file must be present.
    pub fn open(dir: &Path) -> Result<Self, TlsError> {
        let pki = Self {
            dir: dir.to_owned(),
        };
        let mut expected = vec![(PemFile::Ca, pki.ca_cert_path())];
        for role in Role::ALL {
            expected.push((PemFile::Cert, pki.cert_path(role)));
            expected.push((PemFile::Key, pki.key_path(role)));
        }
        for (kind, path) in expected {
            if let Err(source) = std::fs::metadata(&path) {
                return Err(TlsError::ReadFile { kind, path, source });
            }
        }
        Ok(pki)
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `ca.pem`.
    pub fn ca_cert_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// `ca.key`.
    pub fn ca_key_path(&self) -> PathBuf {
        self.dir.join("ca.key")
    }

    /// `<role>.pem`.
    pub fn cert_path(&self, role: Role) -> PathBuf {
        self.dir.join(format!("{role}.pem"))
    }

    /// `<role>.key`.
    pub fn key_path(&self, role: Role) -> PathBuf {
        self.dir.join(format!("{role}.key"))
    }

    /// The files a component (or client) holding `role` loads: the paths its `tls:` section
    /// names.
    pub fn tls_config(&self, role: Role) -> TlsConfig {
        TlsConfig {
            ca: self.ca_cert_path(),
            cert: self.cert_path(role),
            key: self.key_path(role),
        }
    }
}

/// Writes a dev PKI into `out_dir` (created if missing): a cluster CA and an ECDSA P-256
/// certificate for each of the five components and for `client`.
///
/// Keys are written with mode 0600, certificates 0644. Each file is written under a
/// temporary name and renamed, so a crash never leaves a half-written key behind.
pub fn generate_dev_pki(out_dir: &Path, options: &DevPkiOptions) -> Result<DevPki, TlsError> {
    let pki = DevPki {
        dir: out_dir.to_path_buf(),
    };
    let mut targets = vec![pki.ca_key_path(), pki.ca_cert_path()];
    for role in Role::ALL {
        targets.push(pki.key_path(role));
        targets.push(pki.cert_path(role));
    }
    if !options.overwrite
        && let Some(existing) = targets.iter().find(|p| p.exists())
    {
        return Err(TlsError::AlreadyExists {
            path: existing.clone(),
        });
    }

    let ca = DevCa::with_validity(DEFAULT_CA_VALIDITY.max(options.validity))?;
    let leaf = LeafOptions {
        hosts: options.hosts.clone(),
        validity: options.validity,
        not_before: options.not_before,
        not_after: options.not_after,
    };
    // Issue everything before touching the disk, so a bad host name writes nothing.
    let issued = Role::ALL
        .into_iter()
        .map(|role| Ok((role, ca.issue(role, &leaf)?)))
        .collect::<Result<Vec<_>, TlsError>>()?;

    fs::create_dir_all(out_dir).map_err(|source| TlsError::WriteFile {
        path: out_dir.to_path_buf(),
        source,
    })?;
    write_file(&pki.ca_key_path(), ca.key_pem().as_bytes(), Secret::Yes)?;
    write_file(&pki.ca_cert_path(), ca.cert_pem().as_bytes(), Secret::No)?;
    for (role, cert) in &issued {
        write_file(&pki.key_path(*role), cert.key_pem.as_bytes(), Secret::Yes)?;
        write_file(&pki.cert_path(*role), cert.cert_pem.as_bytes(), Secret::No)?;
    }
    tracing::info!(dir = %out_dir.display(), "wrote dev PKI");
    Ok(pki)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Secret {
    Yes,
    No,
}

fn write_file(path: &Path, contents: &[u8], secret: Secret) -> Result<(), TlsError> {
    let err = |source| TlsError::WriteFile {
        path: path.to_path_buf(),
        source,
    };
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let mut open = fs::OpenOptions::new();
    open.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // The key must never exist on disk with wider permissions, not even briefly.
        open.mode(if secret == Secret::Yes { 0o600 } else { 0o644 });
    }
    let mut file = open.open(&tmp).map_err(err)?;
    file.write_all(contents).map_err(err)?;
    file.sync_all().map_err(err)?;
    drop(file);
    fs::rename(&tmp, path).map_err(err)?;
    Ok(())
}

fn ca_cert_from_pem(pem: &str) -> Result<CertificateDer<'static>, TlsError> {
    use rustls_pki_types::pem::PemObject;
    let path = || PathBuf::from("<CA certificate PEM>");
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|source| match source {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::CaEmpty { path: path() },
        source => TlsError::Pem {
            kind: PemFile::Ca,
            path: path(),
            source,
        },
    })
}
