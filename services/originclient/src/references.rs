//! What a tag depends on, and whether the origins hold all of it.
//!
//! For a `docker` tag: the manifest itself, and what it references: the config and layers of
//! an image manifest; for a manifest list or index, every child manifest *and* the config and
//! layers of each child (Kraken checked only the children, uber/kraken#620 was reverted, so a
//! multi-arch tag could point at missing layers). For a `default` tag: the blob itself.
//!
//! The build-index runs the walk before it accepts a tag ([`check_tag_dependencies`]); the
//! proxy runs it on a manifest before storing it ([`check_manifest_references`]), so a push it
//! refuses stores nothing. Replication to another cluster runs it to list what to send
//! ([`tag_dependencies`]), in the order the remote's own check accepts them.

use std::collections::{HashMap, HashSet};

use futures::StreamExt;
use kraken_core::{Digest, Namespace};
use kraken_oci::{MAX_MANIFEST_SIZE, Manifest};

use crate::cluster::{OriginClusterClient, OriginsError};

/// More blobs than this behind one tag is abuse or a loop, not an image.
pub const MAX_DEPENDENCIES: usize = 10_000;
/// Indexes may nest (an index of indexes); deeper than this is refused.
const MAX_DEPTH: usize = 4;
/// Concurrent `Stat` calls of one check.
const STAT_CONCURRENCY: usize = 16;

/// What a tag's or manifest's blobs are: a tag's target is either a manifest (walked) or any
/// blob (only checked for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    Manifest,
    Blob,
}

/// Why a tag or manifest cannot be accepted.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    /// A dependency is not on the origins.
    #[error("{what} {digest} is not on the origins: push it before the tag")]
    Missing { digest: Digest, what: String },
    #[error("{digest} is not a manifest the tag can point at: {reason}")]
    NotAManifest { digest: Digest, reason: String },
    #[error("the tag depends on more than {max} blobs")]
    TooManyDependencies { max: usize },
    #[error("asking the origins")]
    Origins(#[source] OriginsError),
}

/// A blob a tag needs, and what it is to the tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    pub digest: Digest,
    /// What the blob is, for messages: "manifest", "child manifest of sha256:…", "blob
    /// (config or layer) of manifest sha256:…".
    pub what: String,
    /// A manifest (the tag's target or an index's child), whose own references come first.
    pub manifest: bool,
}

/// The dependencies found so far; manifests are fetched from the origins (so proven present)
/// and walked, other blobs only listed.
#[derive(Debug, Default)]
struct Walk {
    dependencies: Vec<Dependency>,
    /// Nesting depth of every manifest listed (the tag's target is 0).
    depths: HashMap<Digest, usize>,
    fetched: HashSet<Digest>,
    seen: HashSet<Digest>,
    /// Manifests still to fetch: digest, what it is, nesting depth.
    pending: Vec<(Digest, String, usize)>,
}

impl Walk {
    /// Lists what `manifest` references; child manifests of an index are queued for fetching.
    fn add_references(
        &mut self,
        manifest_digest: Digest,
        manifest: &Manifest,
        depth: usize,
    ) -> Result<(), ReferenceError> {
        for child in manifest.references() {
            if !self.seen.insert(child) {
                continue;
            }
            if self.seen.len() > MAX_DEPENDENCIES {
                return Err(ReferenceError::TooManyDependencies {
                    max: MAX_DEPENDENCIES,
                });
            }
            if !manifest.is_index() {
                self.dependencies.push(Dependency {
                    digest: child,
                    what: format!("blob (config or layer) of manifest {manifest_digest}"),
                    manifest: false,
                });
                continue;
            }
            if depth + 1 > MAX_DEPTH {
                return Err(ReferenceError::NotAManifest {
                    digest: manifest_digest,
                    reason: format!("indexes nest deeper than {MAX_DEPTH} levels"),
                });
            }
            let what = format!("child manifest of {manifest_digest}");
            self.queue_manifest(child, what, depth + 1);
        }
        Ok(())
    }

    /// Lists a manifest and queues it for fetching and walking.
    fn queue_manifest(&mut self, digest: Digest, what: String, depth: usize) {
        self.depths.insert(digest, depth);
        self.pending.push((digest, what.clone(), depth));
        self.dependencies.push(Dependency {
            digest,
            what,
            manifest: true,
        });
    }

    /// Fetches and walks every queued manifest.
    async fn run(
        &mut self,
        origins: &OriginClusterClient,
        namespace: &Namespace,
    ) -> Result<(), ReferenceError> {
        self.run_with(
            |digest| async move { origins.fetch(namespace, &digest, MAX_MANIFEST_SIZE).await },
        )
        .await
    }

    /// [`run`](Self::run) with manifests from `fetch` (the origins, or a test's map).
    async fn run_with<F, Fut>(&mut self, fetch: F) -> Result<(), ReferenceError>
    where
        F: Fn(Digest) -> Fut,
        Fut: Future<Output = Result<bytes::Bytes, OriginsError>>,
    {
        while let Some((digest, what, depth)) = self.pending.pop() {
            let body = fetch(digest).await.map_err(|error| match error {
                OriginsError::NotFound { .. } => ReferenceError::Missing {
                    digest,
                    what: what.clone(),
                },
                OriginsError::TooLarge { .. } | OriginsError::Corrupt { .. } => {
                    ReferenceError::NotAManifest {
                        digest,
                        reason: error.to_string(),
                    }
                }
                other => ReferenceError::Origins(other),
            })?;
            self.fetched.insert(digest);
            let manifest =
                Manifest::parse(None, &body).map_err(|error| ReferenceError::NotAManifest {
                    digest,
                    reason: error.to_string(),
                })?;
            self.add_references(digest, &manifest, depth)?;
        }
        Ok(())
    }

    /// Fails with [`ReferenceError::Missing`] naming a dependency the origins lack; fetched
    /// manifests are known to be there.
    async fn verify(
        self,
        origins: &OriginClusterClient,
        namespace: &Namespace,
    ) -> Result<usize, ReferenceError> {
        let count = self.dependencies.len();
        let fetched = self.fetched;
        let unproven = self
            .dependencies
            .into_iter()
            .filter(|dependency| !fetched.contains(&dependency.digest));
        all_present(unproven, |digest| async move {
            origins
                .stat(namespace, &digest)
                .await
                .map(|stat| stat.is_some())
        })
        .await?;
        Ok(count)
    }

    /// The dependencies in the order another cluster must receive them for its own check to
    /// pass at each step: every blob (configs and layers) first, then the manifests, the
    /// most deeply nested first, so each manifest arrives after everything it references and
    /// the tag's target comes last. Otherwise in walk order.
    fn into_ordered(self) -> Vec<Dependency> {
        let depths = self.depths;
        let mut dependencies = self.dependencies;
        dependencies.sort_by_key(|dependency| {
            let depth = depths.get(&dependency.digest).copied().unwrap_or(0);
            (dependency.manifest, std::cmp::Reverse(depth))
        });
        dependencies
    }
}

/// Asks `stat` about each dependency, [`STAT_CONCURRENCY`] at a time, and stops at the first
/// answer that is "missing" or a failure: the stats still in flight are dropped (cancelled)
/// and the rest never start. A manifest naming thousands of missing layers thus costs a few
/// stats, not one per layer (each may reach a storage backend). The missing blob named is the
/// first one found, not necessarily the first in the manifest.
async fn all_present<S, F>(
    dependencies: impl IntoIterator<Item = Dependency>,
    stat: S,
) -> Result<(), ReferenceError>
where
    S: Fn(Digest) -> F,
    F: Future<Output = Result<bool, OriginsError>>,
{
    let mut answers = futures::stream::iter(dependencies)
        .map(|dependency| {
            let present = stat(dependency.digest);
            async move { (dependency, present.await) }
        })
        .buffer_unordered(STAT_CONCURRENCY);
    while let Some((dependency, present)) = answers.next().await {
        match present {
            Ok(true) => {}
            Ok(false) => {
                return Err(ReferenceError::Missing {
                    digest: dependency.digest,
                    what: dependency.what,
                });
            }
            Err(error) => return Err(ReferenceError::Origins(error)),
        }
    }
    Ok(())
}

/// Checks that the origins hold everything a tag on `digest` depends on, the blob itself
/// included. Returns the number of dependencies.
pub async fn check_tag_dependencies(
    origins: &OriginClusterClient,
    kind: TargetKind,
    namespace: &Namespace,
    digest: &Digest,
) -> Result<usize, ReferenceError> {
    walk_tag(origins, kind, namespace, digest)
        .await?
        .verify(origins, namespace)
        .await
}

/// Everything a tag on `digest` depends on, the blob itself included, in the order a remote
/// cluster must receive them: blobs, then child manifests, then the tag's manifest (see
/// [`Dependency`]). Manifests are fetched from the origins to be walked; other blobs are
/// listed, not checked.
pub async fn tag_dependencies(
    origins: &OriginClusterClient,
    kind: TargetKind,
    namespace: &Namespace,
    digest: &Digest,
) -> Result<Vec<Dependency>, ReferenceError> {
    Ok(walk_tag(origins, kind, namespace, digest)
        .await?
        .into_ordered())
}

/// Walks a tag's target: a manifest and what it references, or a single blob.
async fn walk_tag(
    origins: &OriginClusterClient,
    kind: TargetKind,
    namespace: &Namespace,
    digest: &Digest,
) -> Result<Walk, ReferenceError> {
    let mut walk = Walk::default();
    walk.seen.insert(*digest);
    if kind == TargetKind::Blob {
        walk.dependencies.push(Dependency {
            digest: *digest,
            what: "blob".to_owned(),
            manifest: false,
        });
    } else {
        walk.queue_manifest(*digest, "manifest".to_owned(), 0);
        walk.run(origins, namespace).await?;
    }
    Ok(walk)
}

/// Checks that the origins hold everything `manifest` (whose digest is `digest`, not yet
/// stored itself) depends on: its config and layers, or for an index every child manifest
/// and their own references. [`ReferenceError::Missing`] names a missing blob (the check stops
/// at the first one found);
/// [`ReferenceError::NotAManifest`] a child that is not a manifest. Returns the number of
/// dependencies.
pub async fn check_manifest_references(
    origins: &OriginClusterClient,
    namespace: &Namespace,
    digest: &Digest,
    manifest: &Manifest,
) -> Result<usize, ReferenceError> {
    let mut walk = Walk::default();
    walk.seen.insert(*digest);
    walk.add_references(*digest, manifest, 0)?;
    walk.run(origins, namespace).await?;
    walk.verify(origins, namespace).await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    fn dependencies(count: usize) -> Vec<Dependency> {
        (0..count)
            .map(|index| Dependency {
                digest: Digest::of(index.to_string().as_bytes()),
                what: format!("layer {index}"),
                manifest: false,
            })
            .collect()
    }

    fn descriptor(media_type: &str, digest: &Digest) -> String {
        format!(r#"{{"mediaType":"{media_type}","digest":"{digest}","size":1}}"#)
    }

    /// An image manifest on `config` and `layers`, as stored bytes and digest.
    fn image(config: &Digest, layers: &[Digest]) -> (Digest, bytes::Bytes) {
        let layers: Vec<String> = layers
            .iter()
            .map(|layer| descriptor(kraken_oci::media_type::OCI_LAYER_GZIP, layer))
            .collect();
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{},"layers":[{}]}}"#,
            kraken_oci::media_type::OCI_MANIFEST,
            descriptor(kraken_oci::media_type::OCI_CONFIG, config),
            layers.join(",")
        );
        (Digest::of(body.as_bytes()), body.into())
    }

    fn index(children: &[Digest]) -> (Digest, bytes::Bytes) {
        let children: Vec<String> = children
            .iter()
            .map(|child| descriptor(kraken_oci::media_type::OCI_MANIFEST, child))
            .collect();
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{}]}}"#,
            kraken_oci::media_type::OCI_INDEX,
            children.join(",")
        );
        (Digest::of(body.as_bytes()), body.into())
    }

    #[tokio::test]
    async fn an_index_lists_children_and_their_layers_manifests_last() {
        let blob = |name: &str| Digest::of(name.as_bytes());
        let (amd64, amd64_body) = image(&blob("config-amd64"), &[blob("base"), blob("amd64")]);
        // The base layer is shared: listed once.
        let (arm64, arm64_body) = image(&blob("config-arm64"), &[blob("base"), blob("arm64")]);
        let (top, top_body) = index(&[amd64, arm64]);
        let stored: HashMap<Digest, bytes::Bytes> =
            [(amd64, amd64_body), (arm64, arm64_body), (top, top_body)].into();

        let mut walk = Walk::default();
        walk.seen.insert(top);
        walk.queue_manifest(top, "manifest".to_owned(), 0);
        walk.run_with(|digest| {
            let body = stored.get(&digest).cloned();
            async move {
                body.ok_or(OriginsError::NotFound {
                    namespace: "team/app".parse().unwrap(),
                    digest,
                })
            }
        })
        .await
        .unwrap();
        let ordered = walk.into_ordered();

        let digests: Vec<Digest> = ordered.iter().map(|d| d.digest).collect();
        assert_eq!(digests.len(), 8, "{ordered:#?}");
        let unique: HashSet<Digest> = digests.iter().copied().collect();
        assert_eq!(unique.len(), 8, "each blob once: {ordered:#?}");
        // Every config and layer before any manifest, the children before the index.
        let (blobs, manifests) = digests.split_at(5);
        let expected_blobs: HashSet<Digest> =
            ["config-amd64", "config-arm64", "base", "amd64", "arm64"]
                .map(blob)
                .into();
        assert_eq!(
            blobs.iter().copied().collect::<HashSet<_>>(),
            expected_blobs
        );
        assert_eq!(manifests.last(), Some(&top));
        assert_eq!(
            manifests[..2].iter().copied().collect::<HashSet<_>>(),
            HashSet::from([amd64, arm64])
        );
        for dependency in &ordered {
            let is_manifest = [amd64, arm64, top].contains(&dependency.digest);
            assert_eq!(dependency.manifest, is_manifest, "{dependency:?}");
        }
        let child = ordered.iter().find(|d| d.digest == amd64).unwrap();
        assert_eq!(child.what, format!("child manifest of {top}"));
    }

    #[tokio::test]
    async fn nested_indexes_come_after_their_children() {
        let blob = |name: &str| Digest::of(name.as_bytes());
        let (image_digest, image_body) = image(&blob("config"), &[blob("layer")]);
        let (inner, inner_body) = index(&[image_digest]);
        let (outer, outer_body) = index(&[inner]);
        let stored: HashMap<Digest, bytes::Bytes> = [
            (image_digest, image_body),
            (inner, inner_body),
            (outer, outer_body),
        ]
        .into();
        let mut walk = Walk::default();
        walk.seen.insert(outer);
        walk.queue_manifest(outer, "manifest".to_owned(), 0);
        walk.run_with(|digest| {
            let body = stored.get(&digest).cloned();
            async move { Ok(body.unwrap_or_default()) }
        })
        .await
        .unwrap();
        let digests: Vec<Digest> = walk.into_ordered().iter().map(|d| d.digest).collect();
        assert_eq!(
            digests[2..],
            [image_digest, inner, outer],
            "the deepest manifest first, the tag's target last"
        );
    }

    #[tokio::test]
    async fn the_check_stops_at_the_first_missing_reference() {
        let dependencies = dependencies(MAX_DEPENDENCIES);
        let missing = dependencies[0].digest;
        let stats = AtomicUsize::new(0);
        let result = all_present(dependencies, |digest| {
            stats.fetch_add(1, Ordering::Relaxed);
            async move {
                // A real stat is a round trip: let the others in flight make progress.
                tokio::task::yield_now().await;
                Ok(digest != missing)
            }
        })
        .await;
        match result {
            Err(ReferenceError::Missing { digest, what }) => {
                assert_eq!(digest, missing);
                assert_eq!(what, "layer 0");
            }
            other => panic!("expected Missing, got {other:?}"),
        }
        let stats = stats.load(Ordering::Relaxed);
        // At most the window in flight when the answer came, and what refilled it meanwhile.
        assert!(
            stats <= 2 * STAT_CONCURRENCY,
            "{stats} stats for one missing reference"
        );
    }

    #[tokio::test]
    async fn a_missing_reference_cancels_the_stats_in_flight() {
        let dependencies = dependencies(100);
        let missing = dependencies[5].digest;
        let started = AtomicUsize::new(0);
        // Every other stat never answers: the check must not wait for them.
        let check = all_present(dependencies, |digest| {
            started.fetch_add(1, Ordering::Relaxed);
            async move {
                if digest == missing {
                    Ok(false)
                } else {
                    futures::future::pending().await
                }
            }
        });
        let result = tokio::time::timeout(Duration::from_secs(30), check)
            .await
            .expect("the check waited for stats after one reported missing");
        assert!(matches!(result, Err(ReferenceError::Missing { digest, .. }) if digest == missing));
        assert_eq!(started.load(Ordering::Relaxed), STAT_CONCURRENCY);
    }

    #[tokio::test]
    async fn every_reference_is_checked_when_all_are_present() {
        let stats = AtomicUsize::new(0);
        let in_flight = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        all_present(dependencies(500), |_| {
            stats.fetch_add(1, Ordering::Relaxed);
            let now = in_flight.fetch_add(1, Ordering::Relaxed) + 1;
            peak.fetch_max(now, Ordering::Relaxed);
            let in_flight = &in_flight;
            async move {
                tokio::task::yield_now().await;
                in_flight.fetch_sub(1, Ordering::Relaxed);
                Ok(true)
            }
        })
        .await
        .unwrap();
        assert_eq!(stats.load(Ordering::Relaxed), 500);
        assert!(peak.load(Ordering::Relaxed) <= STAT_CONCURRENCY);
    }
}
