//! Several clusters in one process, each with its own CA, chained for replication: cluster
//! `a` replicates every tag (and every blob under it) to `b`, `b` to `c`, and so on, and each
//! cluster trusts exactly the CA of the one before it.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kraken_config::Pattern;
use kraken_oci::TaggedName;
use kraken_tls::Role;

use crate::{DevCluster, DevClusterBuilder, DevClusterError, Ports, RemoteSpec, open_pki};

/// The tag [`DevClusters::self_check`] replicates.
pub const SELF_CHECK_TAG: &str = "kraken/self-check:replication";

/// Ports between one cluster's fixed layout and the next's ([`Ports::Fixed`]).
pub const CLUSTER_PORT_STRIDE: u16 = 2000;

/// Clusters started by [`DevClusters::chain`], first (where pushes go) to last.
#[derive(Debug)]
pub struct DevClusters {
    pub clusters: Vec<DevCluster>,
}

impl DevClusters {
    /// Starts `n` clusters named `a`, `b`, … under `<dir>/cluster-a`, `<dir>/cluster-b`, …,
    /// each with its own PKI; cluster `i` replicates every tag to `i + 1`, which trusts
    /// cluster `i`'s CA. With [`Ports::Fixed`], cluster `i` lays out its ports from
    /// `base + 2000·i`. `customize` adjusts each cluster's builder (by index) before it starts.
    ///
    /// The last cluster starts first, so that each cluster knows its remote's address.
    pub async fn chain(
        dir: &Path,
        n: usize,
        ports: Ports,
        customize: impl Fn(usize, DevClusterBuilder) -> DevClusterBuilder,
    ) -> Result<DevClusters, DevClusterError> {
        let dirs: Vec<PathBuf> = (0..n).map(|i| dir.join(cluster_dir(i))).collect();
        let mut cas = Vec::new();
        for dir in &dirs {
            std::fs::create_dir_all(dir).map_err(|source| DevClusterError::Dir {
                path: dir.clone(),
                source,
            })?;
            cas.push(open_pki(dir)?.ca_cert_path());
        }
        let mut started: Vec<DevCluster> = Vec::new();
        for i in (0..n).rev() {
            let mut builder = DevCluster::builder(&dirs[i])
                .name(cluster_name(i))
                .ports(cluster_ports(ports, i));
            if let Some(next) = started.last() {
                builder = builder.remote(
                    cluster_name(i + 1),
                    RemoteSpec {
                        build_index: next.build_index_addr(),
                        ca: cas[i + 1].clone(),
                        tags: vec![Pattern::any()],
                    },
                );
            }
            if i > 0 {
                builder = builder.trust(cluster_name(i - 1), cas[i - 1].clone());
            }
            match customize(i, builder).start().await {
                Ok(cluster) => started.push(cluster),
                Err(error) => {
                    for cluster in started {
                        cluster.shutdown().await;
                    }
                    return Err(error);
                }
            }
        }
        started.reverse();
        Ok(DevClusters { clusters: started })
    }

    /// Per cluster, what it is and [`DevCluster::summary`].
    pub fn summary(&self) -> String {
        let mut text = String::new();
        for (i, cluster) in self.clusters.iter().enumerate() {
            let name = cluster_name(i);
            let role = match i {
                0 => "push here".to_owned(),
                _ => format!("replica of {}, every repository", cluster_name(i - 1)),
            };
            text.push_str(&format!("=== cluster {name} ({role})\n"));
            text.push_str(&cluster.summary());
            if i > 0 && !cluster.agents.is_empty() {
                text.push_str(&format!(
                    "replicated from {}: push to {}'s proxy, pull here through agent 0's \
                     registry (http://{}) by the same name\n",
                    cluster_name(i - 1),
                    cluster_name(i - 1),
                    cluster.agent_registry_addr(0)
                ));
            }
            if i + 1 < self.clusters.len() {
                text.push_str(&format!(
                    "replication to {}: kraken replication status --build-index {} --pki {}\n",
                    cluster_name(i + 1),
                    cluster.build_index_addr(),
                    cluster.pki.dir().display()
                ));
            }
            text.push('\n');
        }
        text
    }

    /// Proves replication end to end: a small image (a layer, a config, a manifest) pushed to
    /// the first cluster's origins and tagged there with `replicate` is resolved by tag at
    /// every other cluster's build-index (within `patience`), and its manifest pulled through
    /// that cluster's first agent. Returns the tag.
    pub async fn self_check(&self, patience: Duration) -> Result<TaggedName, DevClusterError> {
        let check = |what: String| DevClusterError::Check(what);
        let Some(first) = self.clusters.first() else {
            return Err(check("no clusters".to_owned()));
        };
        let tag: TaggedName = SELF_CHECK_TAG
            .parse()
            .map_err(|e: kraken_oci::TaggedNameError| check(e.to_string()))?;
        let namespace = &tag.repository;
        // Different bytes on every run, so the check cannot pass on what an earlier run left.
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let (digest, manifest) = first.push_image(&tag, &stamp.to_string()).await?;
        for (i, cluster) in self.clusters.iter().enumerate().skip(1) {
            let name = cluster_name(i);
            let tags = cluster.tag_client(Role::Client)?;
            let deadline = tokio::time::Instant::now() + patience;
            loop {
                match tags.get(&tag).await {
                    Ok(Some(found)) if found == digest => break,
                    Ok(_) | Err(_) if tokio::time::Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Ok(found) => {
                        return Err(check(format!(
                            "after {patience:?}, {tag} at cluster {name} points at {found:?}, not \
                             {digest}: see `kraken replication status` of the clusters before it"
                        )));
                    }
                    Err(error) => {
                        return Err(check(format!("asking cluster {name} for {tag}: {error}")));
                    }
                }
            }
            if !cluster.agents.is_empty() {
                let pulled = cluster
                    .pull(0, namespace, &digest)
                    .await
                    .map_err(|status| {
                        check(format!(
                            "pulling {digest} through agent 0 of cluster {name}: {}",
                            status.message()
                        ))
                    })?;
                if pulled != manifest {
                    return Err(check(format!(
                        "agent 0 of cluster {name} returned other bytes for {digest}"
                    )));
                }
            }
        }
        Ok(tag)
    }

    /// Stops every cluster, the first (the sender) first.
    pub async fn shutdown(self) {
        for cluster in self.clusters {
            cluster.shutdown().await;
        }
    }
}

/// `a`, `b`, … `z`, then `c26`, `c27`, …: valid remote cluster names.
pub fn cluster_name(index: usize) -> String {
    match u8::try_from(index) {
        Ok(i) if i < 26 => char::from(b'a' + i).to_string(),
        _ => format!("c{index}"),
    }
}

fn cluster_dir(index: usize) -> String {
    format!("cluster-{}", cluster_name(index))
}

fn cluster_ports(ports: Ports, index: usize) -> Ports {
    match ports {
        Ports::Ephemeral => Ports::Ephemeral,
        Ports::Fixed { base } => {
            let offset = u16::try_from(index)
                .unwrap_or(u16::MAX)
                .saturating_mul(CLUSTER_PORT_STRIDE);
            Ports::Fixed {
                base: base.saturating_add(offset),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kraken_tls::Role;

    #[test]
    fn cluster_names_are_valid_remote_names() {
        assert_eq!(cluster_name(0), "a");
        assert_eq!(cluster_name(25), "z");
        assert_eq!(cluster_name(26), "c26");
    }

    #[test]
    fn fixed_ports_are_laid_out_per_cluster() {
        assert_eq!(
            cluster_ports(Ports::Fixed { base: 15000 }, 1),
            Ports::Fixed { base: 17000 }
        );
        assert_eq!(cluster_ports(Ports::Ephemeral, 3), Ports::Ephemeral);
    }

    /// Two clusters have two CAs: a server of `b` that trusts `a` accepts `a`'s build-index
    /// certificate, and nothing of another, unrelated CA.
    #[tokio::test]
    async fn two_clusters_have_two_cas_and_only_the_trusted_one_is_accepted() {
        kraken_tls::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let a = open_pki(&dir.path().join("a")).unwrap();
        let b = open_pki(&dir.path().join("b")).unwrap();
        let stranger = open_pki(&dir.path().join("stranger")).unwrap();
        let a_ca = std::fs::read(a.ca_cert_path()).unwrap();
        assert_ne!(a_ca, std::fs::read(b.ca_cert_path()).unwrap());

        let b_origin = kraken_tls::TlsMaterial::load(&b.tls_config(Role::Origin)).unwrap();
        let domains =
            kraken_tls::TrustDomains::from_pem(&b_origin, &[("a", a_ca.as_slice())]).unwrap();
        let leaf = |pki: &kraken_tls::DevPki| {
            let pem = std::fs::read(pki.cert_path(Role::BuildIndex)).unwrap();
            rustls_pemfile_chain(&pem)
        };
        match domains.classify(&leaf(&a)).unwrap() {
            kraken_tls::Trust::Remote(name) => assert_eq!(&*name, "a"),
            other => panic!("a's certificate classified as {other:?}"),
        }
        assert!(matches!(
            domains.classify(&leaf(&b)).unwrap(),
            kraken_tls::Trust::Local
        ));
        assert!(domains.classify(&leaf(&stranger)).is_err());
    }

    /// `chain(2)` wires trust one way: `a`'s build-index certificate is accepted by `b`'s
    /// build-index for replication (`TagService/Has`), never the other way round; and `b`'s
    /// build-index, stopped and restarted, answers again on the same address.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_chain_of_two_trusts_the_sender_only_and_survives_a_build_index_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut clusters = DevClusters::chain(dir.path(), 2, Ports::Ephemeral, |_, builder| {
            builder.origins(1).agents(0).max_replica(1)
        })
        .await
        .unwrap();
        assert_eq!(clusters.clusters[0].name(), Some("a"));
        assert!(clusters.summary().contains("=== cluster b (replica of a"));
        let answer = has(&clusters, 0, 1).await.unwrap();
        assert!(!answer.exists);
        let refused = has(&clusters, 1, 0).await.unwrap_err();
        // a does not trust b's CA: refused in the handshake, never an RPC answer. TLS 1.3
        // tells the client at its first read, which hyper reports in one of three ways: the
        // alert (UnknownCA, as Unknown), or a closed connection (Unavailable, Cancelled).
        let seen = format!("{refused:?}");
        assert!(
            matches!(
                refused.code(),
                tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown
            ),
            "{seen}"
        );
        assert!(
            !seen.contains("alert") || seen.contains("UnknownCA"),
            "{seen}"
        );

        let stopped = clusters.clusters[1].stop_build_index().await.unwrap();
        assert!(clusters.clusters[1].build_index().is_none());
        let down = has(&clusters, 0, 1).await.unwrap_err();
        assert_eq!(down.code(), tonic::Code::Unavailable, "{down}");
        clusters.clusters[1]
            .restart_build_index(stopped)
            .await
            .unwrap();
        has(&clusters, 0, 1).await.unwrap();
        clusters.shutdown().await;
    }

    /// `TagService/Has` on cluster `to`'s build-index, as cluster `from`'s build-index.
    async fn has(
        clusters: &DevClusters,
        from: usize,
        to: usize,
    ) -> Result<kraken_proto::buildindex::v1::HasResponse, tonic::Status> {
        use kraken_proto::buildindex::v1::HasRequest;
        use kraken_proto::buildindex::v1::tag_service_client::TagServiceClient;

        let (from, to) = (&clusters.clusters[from], &clusters.clusters[to]);
        let own = from.pki.tls_config(Role::BuildIndex);
        let material =
            kraken_tls::TlsMaterial::load_for_remote(&own, &to.pki.ca_cert_path()).unwrap();
        let channel = kraken_transport::grpc::channel(
            &material,
            &to.build_index_addr().to_string(),
            None,
            Role::BuildIndex,
        )
        .unwrap();
        TagServiceClient::new(channel)
            .has(HasRequest {
                tag: "repo:tag".into(),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    fn rustls_pemfile_chain(pem: &[u8]) -> Vec<rustls_pki_types::CertificateDer<'static>> {
        use rustls_pki_types::pem::PemObject;
        rustls_pki_types::CertificateDer::pem_slice_iter(pem)
            .collect::<Result<_, _>>()
            .unwrap()
    }
}
