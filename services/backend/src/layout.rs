//! `root_directory` + `name_path`: where a blob lives in an object store (S3, GCS) or a file
//! system tree (HDFS), and the way back from a listed name to a digest.
//!
//! `sharded_docker_blob` is the Docker registry's own storage layout, so a bucket a registry
//! writes (e.g. the registry's S3 driver with the same `rootdirectory`) can be read directly.
//! Neither layout records the namespace: a blob is stored once, whatever repository it was
//! pushed to, exactly like in a registry.

use kraken_config::backend::NamePath;
use kraken_core::Digest;

const DOCKER_BLOBS: &str = "docker/registry/v2/blobs/sha256";

/// Object names under a root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectLayout {
    /// The root without leading or trailing `/`; empty for the top of the bucket.
    root: String,
    name_path: NamePath,
    /// Whether names start with `/` (file systems) or not (object stores).
    absolute: bool,
}

impl ObjectLayout {
    /// Object-store keys: no leading `/`, as the Docker registry's S3 and GCS drivers write
    /// them (a key `/a` and a key `a` are different objects).
    pub fn object_keys(root_directory: &str, name_path: NamePath) -> Self {
        Self::new(root_directory, name_path, false)
    }

    /// Absolute file system paths (HDFS).
    pub fn absolute_paths(root_directory: &str, name_path: NamePath) -> Self {
        Self::new(root_directory, name_path, true)
    }

    fn new(root_directory: &str, name_path: NamePath, absolute: bool) -> Self {
        Self {
            root: root_directory.trim_matches('/').to_owned(),
            name_path,
            absolute,
        }
    }

    /// Where `digest` lives:
    /// `<root>/docker/registry/v2/blobs/sha256/<hex[0:2]>/<hex>/data` (sharded_docker_blob) or
    /// `<root>/<hex>` (identity). `docker_tag` names tags, which config validation keeps away
    /// from blob backends; blobs under it fall back to the identity layout.
    pub fn blob_name(&self, digest: &Digest) -> String {
        let hex = digest.hex();
        let relative = match self.name_path {
            NamePath::ShardedDockerBlob => format!("{DOCKER_BLOBS}/{}/{hex}/data", &hex[..2]),
            NamePath::Identity | NamePath::DockerTag => hex,
        };
        self.join(&relative)
    }

    /// The prefix (a directory, ending in `/`) under which every blob name starts.
    pub fn list_prefix(&self) -> String {
        let relative = match self.name_path {
            NamePath::ShardedDockerBlob => format!("{DOCKER_BLOBS}/"),
            NamePath::Identity | NamePath::DockerTag => String::new(),
        };
        let joined = self.join(&relative);
        if joined.is_empty() || joined.ends_with('/') {
            joined
        } else {
            format!("{joined}/")
        }
    }

    /// The digest a listed name stands for; `None` for anything that is not a blob of this
    /// layout (other files under the root, temporary files).
    pub fn digest_of(&self, name: &str) -> Option<Digest> {
        let relative = name.strip_prefix(&self.list_prefix())?;
        match self.name_path {
            NamePath::ShardedDockerBlob => {
                let (shard, rest) = relative.split_once('/')?;
                let hex = rest.strip_suffix("/data")?;
                let digest = Digest::from_hex(hex).ok()?;
                (hex.starts_with(shard) && shard.len() == 2).then_some(digest)
            }
            NamePath::Identity | NamePath::DockerTag => Digest::from_hex(relative).ok(),
        }
    }

    pub fn name_path(&self) -> NamePath {
        self.name_path
    }

    fn join(&self, relative: &str) -> String {
        let lead = if self.absolute { "/" } else { "" };
        match (self.root.is_empty(), relative.is_empty()) {
            (true, _) => format!("{lead}{relative}"),
            (false, true) => format!("{lead}{}/", self.root),
            (false, false) => format!("{lead}{}/{relative}", self.root),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sharded_docker_blob_is_the_registry_layout() {
        let digest = Digest::of(b"layer");
        let hex = digest.hex();
        let layout = ObjectLayout::object_keys("/kraken/default/", NamePath::ShardedDockerBlob);
        let name = layout.blob_name(&digest);
        assert_eq!(
            name,
            format!(
                "kraken/default/docker/registry/v2/blobs/sha256/{}/{hex}/data",
                &hex[..2]
            )
        );
        assert_eq!(
            layout.list_prefix(),
            "kraken/default/docker/registry/v2/blobs/sha256/"
        );
        assert_eq!(layout.digest_of(&name), Some(digest));
        // Things that are not blobs of this layout are skipped.
        assert_eq!(layout.digest_of(&format!("{name}.tmp")), None);
        assert_eq!(layout.digest_of("kraken/default/other"), None);
        let wrong_shard = name.replacen(&format!("/{}/", &hex[..2]), "/zz/", 1);
        assert_eq!(layout.digest_of(&wrong_shard), None);
    }

    #[test]
    fn identity_and_roots() {
        let digest = Digest::of(b"layer");
        let hex = digest.hex();
        let top = ObjectLayout::object_keys("/", NamePath::Identity);
        assert_eq!(top.blob_name(&digest), hex);
        assert_eq!(top.list_prefix(), "");
        assert_eq!(top.digest_of(&hex), Some(digest));

        let hdfs = ObjectLayout::absolute_paths("/infra/dockerRegistry/", NamePath::Identity);
        assert_eq!(
            hdfs.blob_name(&digest),
            format!("/infra/dockerRegistry/{hex}")
        );
        assert_eq!(hdfs.list_prefix(), "/infra/dockerRegistry/");
        let sharded = ObjectLayout::absolute_paths("", NamePath::ShardedDockerBlob);
        assert!(
            sharded
                .blob_name(&digest)
                .starts_with("/docker/registry/v2/blobs/sha256/")
        );
    }
}
