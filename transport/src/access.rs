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

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use kraken_tls::Role;
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
    // Agent: `kraken.agent.v1.AgentService`.
    ("/kraken.agent.v1.AgentService/Preload", AGENT_READERS),
    ("/kraken.agent.v1.AgentService/Stat", AGENT_READERS),
    ("/kraken.agent.v1.AgentService/GetBlob", AGENT_READERS),
    ("/kraken.agent.v1.AgentService/Evict", HOST_TOOLS),
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

/// The roles that may call `path` (`/package.Service/Method`); `None` when the method is not
/// in the table, which every server refuses.
pub fn allowed_roles(path: &str) -> Option<&'static [Role]> {
    ACCESS
        .iter()
        .find(|(method, _)| *method == path)
        .map(|(_, roles)| *roles)
}

/// Why a call was refused, as the status the caller receives.
///
/// `UNAUTHENTICATED` when the connection carries no verified client certificate;
/// `PERMISSION_DENIED` when the certificate has no usable role, its role may not call the
/// method, or the method is not in the table.
pub fn check(path: &str, chain: Option<&[CertificateDer<'_>]>) -> Result<Role, tonic::Status> {
    let role = kraken_tls::identity_from_verified_chain(chain)?.role;
    let Some(allowed) = allowed_roles(path) else {
        return Err(tonic::Status::permission_denied(format!(
            "`{}` is not in the access table; no role may call it",
            clip(path)
        )));
    };
    if allowed.contains(&role) {
        Ok(role)
    } else {
        Err(tonic::Status::permission_denied(format!(
            "certificate role `{role}` may not call `{path}`; allowed roles: {}",
            allowed
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }
}

/// A caller-supplied path echoed in an error is cut short.
fn clip(path: &str) -> &str {
    const MAX: usize = 128;
    match path.char_indices().nth(MAX) {
        Some((end, _)) => &path[..end],
        None => path,
    }
}

/// Enforces [`ACCESS`] in front of a tonic server's routes.
#[derive(Debug, Clone, Copy, Default)]
pub struct AccessLayer;

impl<S> tower_layer::Layer<S> for AccessLayer {
    type Service = AccessControl<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AccessControl { inner }
    }
}

/// The service [`AccessLayer`] wraps around a server's routes.
#[derive(Debug, Clone)]
pub struct AccessControl<S> {
    inner: S,
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

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let certs = request
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(TlsConnectInfo::peer_certs);
        let path = request.uri().path();
        match check(path, certs.as_deref().map(Vec::as_slice)) {
            Ok(_) => Box::pin(self.inner.call(request)),
            Err(status) => {
                metrics::counter!(DENIED, "method" => metric_label(path)).increment(1);
                tracing::warn!(
                    method = clip(path),
                    code = ?status.code(),
                    reason = status.message(),
                    "call refused by the access table"
                );
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

/// Counter of calls the access table refused, by method.
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

    #[test]
    fn a_call_without_a_certificate_is_unauthenticated() {
        let status = check("/kraken.origin.v1.BlobService/Stat", None).unwrap_err();
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
