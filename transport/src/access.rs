//! Who may call what: the one role × method table every gRPC server enforces.
//!
//! The caller's role comes from its verified client certificate (`kraken://role/<role>`).
//! [`AccessLayer`] checks every request against [`ACCESS`] before the request reaches a
//! service, so a handler never has to remember to check, and a method missing from the table
//! is refused rather than open: adding an RPC to a `.proto` without deciding who may call it
//! fails the table's completeness test.
//!
//! The rule of thumb is least privilege: reads of content-addressed data (which a caller names
//! by digest) are open to every cluster role; writes go to the roles whose job is to write;
//! `Duplicate` and `Delete` on an origin, which bypass the write path's checks, only to
//! origins; the agent's local cache only to the host's own tools.
//!
//! A server that trusts other clusters' CAs ([`kraken_tls::TrustDomains`]) holds their
//! certificates to [`FOREIGN_ACCESS`] instead, whatever role they claim: a remote cluster's
//! CA vouches for its own components, not for who they may be here, so a foreign
//! certificate may only do what replication needs and can never act as an agent, tracker,
//! proxy or client of this cluster.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use kraken_tls::{Caller, Role, Trust, TrustDomains};
use rustls_pki_types::CertificateDer;
use tonic::codegen::{Service, http};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

/// Every role.
const ANYONE: &[Role] = &Role::ALL;
/// Components that write blobs into the origin cluster, and `kraken push`.
const BLOB_WRITERS: &[Role] = &[Role::Proxy, Role::Origin, Role::Client];
/// Components that write tags, and `kraken tag`.
const TAG_WRITERS: &[Role] = &[Role::Proxy, Role::BuildIndex, Role::Client];
/// Origins only: the ring's own maintenance (replicas, eviction of a local copy).
const ORIGINS: &[Role] = &[Role::Origin];
/// Replication to another cluster is started by the build-index (or an origin passing it on).
const REPLICATORS: &[Role] = &[Role::BuildIndex, Role::Origin];
/// Who asks a build-index for its cluster's origin addresses: origins (a remote cluster's,
/// before they upload a replicated blob), build-indexes and operators' tools.
const ORIGIN_LISTERS: &[Role] = &[Role::Origin, Role::BuildIndex, Role::Client];
/// Replication status: operators' tools and the cluster's build-index peers (tags and errors
/// of pending replications are this cluster's business only: never in `FOREIGN_ACCESS`).
const TASK_READERS: &[Role] = &[Role::Client, Role::BuildIndex];
/// Tag writes copied between the build-indexes of one cluster.
const BUILD_INDEXES: &[Role] = &[Role::BuildIndex];
/// The swarm's members.
const SWARM: &[Role] = &[Role::Agent, Role::Origin];
/// Metainfo readers: the swarm, and the proxy and tools that warm origins through it.
const METAINFO_READERS: &[Role] = &[Role::Agent, Role::Origin, Role::Proxy, Role::Client];
/// The host's own tools (`kraken blob`, `kraken preload`) and agents helping each other.
const AGENT_READERS: &[Role] = &[Role::Client, Role::Agent];
/// Only the host's own tools drop what the agent caches.
const HOST_TOOLS: &[Role] = &[Role::Client];

/// The role × method table: full gRPC method path, and the roles that may call it.
///
/// Health and reflection are open to every verified certificate: they reveal only what
/// the `.proto` files already say, and probes and `grpcurl` need them.
pub const ACCESS: &[(&str, &[Role])] = &[
    // Origin: `kraken.origin.v1.BlobService`.
    ("/kraken.origin.v1.BlobService/Upload", BLOB_WRITERS),
    ("/kraken.origin.v1.BlobService/StartUpload", BLOB_WRITERS),
    ("/kraken.origin.v1.BlobService/UploadChunks", BLOB_WRITERS),
    (
        "/kraken.origin.v1.BlobService/GetUploadStatus",
        BLOB_WRITERS,
    ),
    ("/kraken.origin.v1.BlobService/CommitUpload", BLOB_WRITERS),
    ("/kraken.origin.v1.BlobService/AbortUpload", BLOB_WRITERS),
    ("/kraken.origin.v1.BlobService/Download", ANYONE),
    ("/kraken.origin.v1.BlobService/Stat", ANYONE),
    ("/kraken.origin.v1.BlobService/GetMetaInfo", ANYONE),
    ("/kraken.origin.v1.BlobService/Locations", ANYONE),
    ("/kraken.origin.v1.BlobService/GetPeerContext", ANYONE),
    ("/kraken.origin.v1.BlobService/Prefetch", ANYONE),
    (
        "/kraken.origin.v1.BlobService/ReplicateToRemote",
        REPLICATORS,
    ),
    ("/kraken.origin.v1.BlobService/Duplicate", ORIGINS),
    ("/kraken.origin.v1.BlobService/Delete", ORIGINS),
    // Tracker: `kraken.tracker.v1.TrackerService`.
    ("/kraken.tracker.v1.TrackerService/Announce", SWARM),
    (
        "/kraken.tracker.v1.TrackerService/GetMetaInfo",
        METAINFO_READERS,
    ),
    // Build-index: `kraken.buildindex.v1.TagService`.
    ("/kraken.buildindex.v1.TagService/Put", TAG_WRITERS),
    ("/kraken.buildindex.v1.TagService/Replicate", TAG_WRITERS),
    ("/kraken.buildindex.v1.TagService/Get", ANYONE),
    ("/kraken.buildindex.v1.TagService/Has", ANYONE),
    ("/kraken.buildindex.v1.TagService/List", ANYONE),
    ("/kraken.buildindex.v1.TagService/ListRepository", ANYONE),
    // Build-index: `kraken.buildindex.v1.ReplicationService`.
    (
        "/kraken.buildindex.v1.ReplicationService/ListOrigins",
        ORIGIN_LISTERS,
    ),
    (
        "/kraken.buildindex.v1.ReplicationService/ListTasks",
        TASK_READERS,
    ),
    (
        "/kraken.buildindex.v1.ReplicationService/DuplicatePut",
        BUILD_INDEXES,
    ),
    // Agent: `kraken.agent.v1.AgentService`.
    ("/kraken.agent.v1.AgentService/Preload", AGENT_READERS),
    ("/kraken.agent.v1.AgentService/Stat", AGENT_READERS),
    ("/kraken.agent.v1.AgentService/GetBlob", AGENT_READERS),
    ("/kraken.agent.v1.AgentService/Evict", HOST_TOOLS),
    ("/kraken.agent.v1.AgentService/GetStatus", HOST_TOOLS),
    // Proxy: `kraken.proxy.v1.ProxyService`.
    ("/kraken.proxy.v1.ProxyService/Prefetch", ANYONE),
    // Every server.
    ("/grpc.health.v1.Health/Check", ANYONE),
    ("/grpc.health.v1.Health/Watch", ANYONE),
    (
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        ANYONE,
    ),
    (
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ANYONE,
    ),
];

/// What a certificate from a trusted *remote* cluster's CA may call here: replication, and
/// nothing else. Its build-index asks whether we hold a tag and puts it; its origins ask our
/// build-index for our origins, then upload a blob resumably to our owners, after asking who
/// owns it and whether it is here already (and abort an upload of theirs: upload ids are
/// unguessable, so only their own).
/// Every entry is also in [`ACCESS`] for the same role, so a foreign caller never gets more
/// than a local one would.
pub const FOREIGN_ACCESS: &[(&str, &[Role])] = &[
    ("/kraken.buildindex.v1.TagService/Has", REMOTE_BUILD_INDEX),
    ("/kraken.buildindex.v1.TagService/Put", REMOTE_BUILD_INDEX),
    ("/kraken.origin.v1.BlobService/StartUpload", REMOTE_ORIGIN),
    ("/kraken.origin.v1.BlobService/UploadChunks", REMOTE_ORIGIN),
    (
        "/kraken.origin.v1.BlobService/GetUploadStatus",
        REMOTE_ORIGIN,
    ),
    ("/kraken.origin.v1.BlobService/CommitUpload", REMOTE_ORIGIN),
    ("/kraken.origin.v1.BlobService/AbortUpload", REMOTE_ORIGIN),
    ("/kraken.origin.v1.BlobService/Stat", REMOTE_ORIGIN),
    ("/kraken.origin.v1.BlobService/Locations", REMOTE_ORIGIN),
    (
        "/kraken.buildindex.v1.ReplicationService/ListOrigins",
        REMOTE_ORIGIN,
    ),
];

/// The roles that may call `path` (`/package.Service/Method`); `None` when the method is not
/// in the table, which every server refuses.
pub fn allowed_roles(path: &str) -> Option<&'static [Role]> {
    lookup(ACCESS, path)
}

/// The roles a certificate from a trusted remote cluster must hold to call `path`; `None`
/// when no foreign certificate may.
pub fn allowed_foreign_roles(path: &str) -> Option<&'static [Role]> {
    lookup(FOREIGN_ACCESS, path)
}

/// Who is calling `path`, or why the call is refused, as the status the caller receives.
///
/// `UNAUTHENTICATED` when the connection carries no verified client certificate;
/// `PERMISSION_DENIED` when the certificate has no usable role or comes from no CA of
/// `domains`, when the method is not in [`ACCESS`], or when the caller may not call it:
/// a local caller per [`ACCESS`], a remote cluster's per [`FOREIGN_ACCESS`].
pub fn check(
    path: &str,
    chain: Option<&[CertificateDer<'_>]>,
    domains: &TrustDomains,
) -> Result<Caller, tonic::Status> {
    decide(path, chain, domains).map_err(|denied| denied.status)
}

/// Only components of a remote cluster that replicate may be admitted at all.
const REMOTE_BUILD_INDEX: &[Role] = &[Role::BuildIndex];
const REMOTE_ORIGIN: &[Role] = &[Role::Origin];

fn lookup(table: &'static [(&str, &[Role])], path: &str) -> Option<&'static [Role]> {
    table
        .iter()
        .find(|(method, _)| *method == path)
        .map(|(_, roles)| *roles)
}

/// A refusal, and the `trust` label it is counted under.
struct Denied {
    status: tonic::Status,
    trust: &'static str,
}

fn decide(
    path: &str,
    chain: Option<&[CertificateDer<'_>]>,
    domains: &TrustDomains,
) -> Result<Caller, Denied> {
    let caller =
        kraken_tls::caller_from_verified_chain(chain, domains).map_err(|status| Denied {
            status,
            trust: "unknown",
        })?;
    let denied = |message: String| Denied {
        status: tonic::Status::permission_denied(message),
        trust: caller.trust.label(),
    };
    let Some(allowed) = allowed_roles(path) else {
        return Err(denied(format!(
            "`{}` is not in the access table; no role may call it",
            clip(path)
        )));
    };
    let role = caller.identity.role;
    match &caller.trust {
        Trust::Local if allowed.contains(&role) => {}
        Trust::Local => {
            return Err(denied(format!(
                "certificate role `{role}` may not call `{path}`; allowed roles: {}",
                display(allowed)
            )));
        }
        Trust::Remote(_)
            if allowed_foreign_roles(path).is_some_and(|roles| roles.contains(&role)) => {}
        Trust::Remote(name) => {
            return Err(denied(format!(
                "certificate of remote cluster `{name}` (role `{role}`) may not call \
                 `{path}`; remote clusters may only replicate"
            )));
        }
    }
    Ok(caller)
}

fn display(roles: &[Role]) -> String {
    roles
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A caller-supplied path echoed in an error is cut short.
fn clip(path: &str) -> &str {
    const MAX: usize = 128;
    match path.char_indices().nth(MAX) {
        Some((end, _)) => &path[..end],
        None => path,
    }
}

/// Enforces [`ACCESS`] (and [`FOREIGN_ACCESS`] for remote clusters' certificates) in front
/// of a tonic server's routes. An admitted request carries its [`Caller`] in its extensions
/// (`request.extensions().get::<Caller>()` in a handler).
#[derive(Debug, Clone)]
pub struct AccessLayer {
    domains: Arc<TrustDomains>,
}

impl AccessLayer {
    /// Classifies callers by `domains`: the same the server's TLS config trusts.
    pub fn new(domains: Arc<TrustDomains>) -> Self {
        Self { domains }
    }
}

impl<S> tower_layer::Layer<S> for AccessLayer {
    type Service = AccessControl<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AccessControl {
            inner,
            domains: Arc::clone(&self.domains),
        }
    }
}

/// The service [`AccessLayer`] wraps around a server's routes.
#[derive(Debug, Clone)]
pub struct AccessControl<S> {
    inner: S,
    domains: Arc<TrustDomains>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> Service<http::Request<B>> for AccessControl<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let certs = request
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(TlsConnectInfo::peer_certs);
        let path = request.uri().path();
        match decide(path, certs.as_deref().map(Vec::as_slice), &self.domains) {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                Box::pin(self.inner.call(request))
            }
            Err(Denied { status, trust }) => {
                metrics::counter!(DENIED, "method" => metric_label(path), "trust" => trust)
                    .increment(1);
                tracing::warn!(
                    method = clip(path),
                    trust,
                    code = ?status.code(),
                    reason = status.message(),
                    "call refused by the access table"
                );
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

/// Counter of calls the access table refused, by method and by `trust` (`local`, `remote`,
/// or `unknown` for a caller without a usable certificate).
pub const DENIED: &str = "kraken_grpc_access_denied_total";

/// A method path as a metric label: only table entries, so a caller cannot grow the label set.
fn metric_label(path: &str) -> &'static str {
    ACCESS
        .iter()
        .find(|(method, _)| *method == path)
        .map(|(method, _)| *method)
        .unwrap_or("unknown")
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use std::collections::BTreeSet;

    /// Every method of every service the servers carry, from the descriptor sets they serve
    /// over reflection.
    fn methods_in_protos() -> BTreeSet<String> {
        let mut methods = BTreeSet::new();
        for set in [
            kraken_proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
        ] {
            let set = prost_types::FileDescriptorSet::decode(set).unwrap();
            for file in set.file {
                for service in &file.service {
                    for method in &service.method {
                        methods.insert(format!(
                            "/{}.{}/{}",
                            file.package(),
                            service.name(),
                            method.name()
                        ));
                    }
                }
            }
        }
        methods
    }

    #[test]
    fn every_method_is_in_the_table_once_and_every_entry_exists() {
        let protos = methods_in_protos();
        let mut table = BTreeSet::new();
        for (method, roles) in ACCESS {
            assert!(table.insert(method.to_string()), "{method} listed twice");
            assert!(!roles.is_empty(), "{method} allows no role");
        }
        let reflection: BTreeSet<String> = [
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ]
        .map(String::from)
        .into();
        let missing: Vec<_> = protos.difference(&table).collect();
        assert!(missing.is_empty(), "methods with no rule: {missing:?}");
        let unknown: Vec<_> = table
            .difference(&protos)
            .filter(|m| !reflection.contains(*m))
            .collect();
        assert!(unknown.is_empty(), "rules for no method: {unknown:?}");
    }

    #[test]
    fn the_readme_security_section_names_every_method() {
        let readme = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"));
        let start = readme.find("## Security").unwrap();
        let section = &readme[start..];
        let section = &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)];
        for (path, _) in ACCESS {
            let method = path.rsplit('/').next().unwrap();
            assert!(
                section.contains(&format!("`{method}`")),
                "README's Security table does not mention `{method}` ({path})"
            );
        }
    }

    /// The README's table of what remote clusters may call: `(component, method, roles)`
    /// for every method named in a row.
    fn readme_foreign_table() -> BTreeSet<(String, String, String)> {
        let readme = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"));
        let start = readme
            .find("| Methods (certificate of a trusted remote cluster) |")
            .expect("README's Security section has no table for remote clusters");
        let mut rows = BTreeSet::new();
        for line in readme[start..].lines().skip(2) {
            let Some(row) = line.strip_prefix('|') else {
                break;
            };
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let (methods, roles) = (cells[0], cells[1]);
            let component = methods.split_whitespace().next().unwrap();
            for method in methods.split('`').skip(1).step_by(2) {
                rows.insert((component.to_owned(), method.to_owned(), roles.to_owned()));
            }
        }
        rows
    }

    /// `origin` for `/kraken.origin.v1.BlobService/Stat`, as the README names components.
    fn component_of(path: &str) -> &'static str {
        match path.split('.').nth(1) {
            Some("origin") => "origin",
            Some("buildindex") => "build-index",
            Some("tracker") => "tracker",
            Some("agent") => "agent",
            Some("proxy") => "proxy",
            _ => "other",
        }
    }

    #[test]
    fn the_readme_lists_exactly_what_remote_clusters_may_call() {
        let table: BTreeSet<_> = FOREIGN_ACCESS
            .iter()
            .map(|(path, roles)| {
                (
                    component_of(path).to_owned(),
                    path.rsplit('/').next().unwrap().to_owned(),
                    display(roles),
                )
            })
            .collect();
        assert_eq!(readme_foreign_table(), table);
    }

    #[test]
    fn foreign_access_is_a_subset_of_access_and_excludes_agent_tracker_proxy_services() {
        let mut seen = BTreeSet::new();
        for (path, roles) in FOREIGN_ACCESS {
            assert!(seen.insert(*path), "{path} listed twice");
            assert!(!roles.is_empty(), "{path} allows no role");
            let local = allowed_roles(path).unwrap_or_else(|| panic!("{path} not in ACCESS"));
            for role in *roles {
                assert!(local.contains(role), "{role} gets {path} only when foreign");
                // Only the components that replicate ever come from another cluster.
                assert!(
                    matches!(role, Role::BuildIndex | Role::Origin),
                    "{role} admitted from a remote cluster for {path}"
                );
            }
            assert!(
                ["origin", "build-index"].contains(&component_of(path)),
                "{path}: remote clusters replicate, they never reach this service"
            );
        }
        // What replication must never reach from outside.
        for method in [
            "/kraken.origin.v1.BlobService/Delete",
            "/kraken.origin.v1.BlobService/Duplicate",
            "/kraken.origin.v1.BlobService/Upload",
            "/kraken.origin.v1.BlobService/Download",
            "/kraken.origin.v1.BlobService/ReplicateToRemote",
            "/kraken.buildindex.v1.TagService/Replicate",
            "/kraken.buildindex.v1.TagService/List",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        ] {
            assert_eq!(allowed_foreign_roles(method), None, "{method}");
        }
    }

    #[test]
    fn a_call_without_a_certificate_is_unauthenticated() {
        kraken_tls::install_crypto_provider();
        let ca = kraken_tls::DevCa::new().unwrap();
        let leaf = ca
            .issue(Role::Origin, &kraken_tls::LeafOptions::default())
            .unwrap();
        let tls = kraken_tls::TlsMaterial::from_pem(ca.cert_pem(), &leaf.cert_pem, &leaf.key_pem)
            .unwrap();
        let domains = TrustDomains::local_only(&tls);
        let status = check("/kraken.origin.v1.BlobService/Stat", None, &domains).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn the_riskiest_methods_are_narrow() {
        for method in ["Duplicate", "Delete"] {
            let roles = allowed_roles(&format!("/kraken.origin.v1.BlobService/{method}"));
            assert_eq!(roles, Some(&[Role::Origin][..]), "{method}");
        }
        assert_eq!(
            allowed_roles("/kraken.agent.v1.AgentService/Evict"),
            Some(&[Role::Client][..])
        );
        assert_eq!(allowed_roles("/kraken.origin.v1.BlobService/Nope"), None);
    }
}
