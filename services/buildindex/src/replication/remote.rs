//! The build-indexes of the remote clusters under `remotes:`, each dialed with its own TLS
//! material (the remote's CA, our certificate).

use std::collections::BTreeMap;

use kraken_config::build_index::BuildIndexConfig;
use kraken_tagclient::TagClient;
use kraken_transport::remote::load_remote_material;

use super::error::ReplicationError;
use crate::error::BuildIndexError;

/// A client per remote cluster, by name.
#[derive(Debug, Default)]
pub(crate) struct RemoteBuildIndexes {
    clients: BTreeMap<String, TagClient>,
}

impl RemoteBuildIndexes {
    /// Clients of every remote in `config.remotes`. Fails, naming the remote, when its TLS
    /// material cannot be loaded: a build-index that could never replicate must not start as
    /// if it could.
    pub(crate) fn from_config(config: &BuildIndexConfig) -> Result<Self, BuildIndexError> {
        let mut clients = BTreeMap::new();
        for (name, remote) in &config.remotes {
            let setup = |reason: String| BuildIndexError::Remote {
                name: name.clone(),
                reason,
            };
            let tls = load_remote_material(&remote.tls, &config.tls)
                .map_err(|error| setup(kraken_core::error_chain(&error)))?;
            let client =
                TagClient::for_remote(&remote.build_index, &tls, remote.tls.server_name.as_deref())
                    .map_err(|error| setup(format!("build_index: {error}")))?;
            clients.insert(name.clone(), client);
        }
        Ok(Self { clients })
    }

    /// The client of the remote `name`.
    pub(crate) fn get(&self, name: &str) -> Result<&TagClient, ReplicationError> {
        self.clients
            .get(name)
            .ok_or_else(|| ReplicationError::UnknownRemote {
                remote: name.to_owned(),
                configured: if self.clients.is_empty() {
                    "none".to_owned()
                } else {
                    self.clients.keys().cloned().collect::<Vec<_>>().join(", ")
                },
            })
    }
}
