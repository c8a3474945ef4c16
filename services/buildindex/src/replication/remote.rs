//! The build-indexes of the remote clusters under `remotes:`, each dialed with its own TLS
//! material (the remote's CA, our certificate), and the diagnosis of a failed call to one.

use std::collections::BTreeMap;

use kraken_config::build_index::BuildIndexConfig;
use kraken_tagclient::{TagClient, TagClientError};
use kraken_tls::TlsMaterial;
use kraken_transport::grpc::host_of;

use super::error::ReplicationError;
use crate::error::BuildIndexError;

/// A client per remote cluster, by name.
#[derive(Debug, Default)]
pub(crate) struct RemoteBuildIndexes {
    remotes: BTreeMap<String, RemoteBuildIndex>,
}

/// One remote's build-index client and what it dials with.
#[derive(Debug)]
pub(crate) struct RemoteBuildIndex {
    name: String,
    pub(crate) client: TagClient,
    tls: TlsMaterial,
    server_name: Option<String>,
}

impl RemoteBuildIndexes {
    /// Clients of every remote in `config.remotes`. Fails, naming the remote, when its TLS
    /// material cannot be loaded: a build-index that could never replicate must not start as
    /// if it could.
    pub(crate) fn from_config(config: &BuildIndexConfig) -> Result<Self, BuildIndexError> {
        let mut remotes = BTreeMap::new();
        for (name, remote) in &config.remotes {
            let setup = |reason: String| BuildIndexError::Remote {
                name: name.clone(),
                reason,
            };
            let (client, tls) =
                TagClient::for_remote_config(&remote.build_index, &remote.tls, &config.tls)
                    .map_err(|error| setup(error.to_string()))?;
            let server_name = remote.tls.server_name.clone();
            remotes.insert(
                name.clone(),
                RemoteBuildIndex {
                    name: name.clone(),
                    client,
                    tls,
                    server_name,
                },
            );
        }
        Ok(Self { remotes })
    }

    /// The remote `name`.
    pub(crate) fn get(&self, name: &str) -> Result<&RemoteBuildIndex, ReplicationError> {
        self.remotes
            .get(name)
            .ok_or_else(|| ReplicationError::UnknownRemote {
                remote: name.to_owned(),
                configured: if self.remotes.is_empty() {
                    "none".to_owned()
                } else {
                    self.remotes.keys().cloned().collect::<Vec<_>>().join(", ")
                },
            })
    }
}

impl RemoteBuildIndex {
    /// The error of a call that asked the remote `what`. A bare transport error is checked
    /// with a handshake probe of the host that failed: a remote that refuses our certificate
    /// must read as `tls` with its alert, not as unreachable.
    pub(crate) async fn diagnose(
        &self,
        what: &'static str,
        error: TagClientError,
    ) -> ReplicationError {
        let classified = ReplicationError::from_remote(&self.name, what, error);
        let ReplicationError::RemoteUnreachable { source, .. } = &classified else {
            return classified;
        };
        let TagClientError::Unreachable { host, .. } = source.as_ref() else {
            return classified;
        };
        let server_name = self
            .server_name
            .clone()
            .unwrap_or_else(|| host_of(host).to_owned());
        match kraken_transport::remote::probe_handshake(&self.tls, host, &server_name, &self.name)
            .await
        {
            Some(failure) => ReplicationError::Tls {
                remote: self.name.clone(),
                failure,
            },
            None => classified,
        }
    }
}
