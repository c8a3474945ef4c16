//! What a tag depends on, and whether the origins hold all of it.
//!
//! For a `docker` tag: the manifest itself, and what it references: the config and layers of
//! an image manifest; for a manifest list or index, every child manifest *and* the config and
//! layers of each child (Kraken checked only the children, uber/kraken#620 was reverted, so a
//! multi-arch tag could point at missing layers). For a `default` tag: the blob itself.
//!
//! The build-index runs the walk before it accepts a tag ([`check_tag_dependencies`]); the
//! proxy runs it on a manifest before storing it ([`check_manifest_references`]), so a push it
//! refuses stores nothing.

use std::collections::HashSet;

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

/// A blob the tag needs, and what it is to the tag (for the error message).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Dependency {
    digest: Digest,
    what: String,
}

/// The dependencies found so far; manifests are fetched from the origins (so proven present)
/// and walked, other blobs only listed.
#[derive(Debug, Default)]
struct Walk {
    dependencies: Vec<Dependency>,
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
            let what = if manifest.is_index() {
                if depth + 1 > MAX_DEPTH {
                    return Err(ReferenceError::NotAManifest {
                        digest: manifest_digest,
                        reason: format!("indexes nest deeper than {MAX_DEPTH} levels"),
                    });
                }
                let what = format!("child manifest of {manifest_digest}");
                self.pending.push((child, what.clone(), depth + 1));
                what
            } else {
                format!("blob (config or layer) of manifest {manifest_digest}")
            };
            self.dependencies.push(Dependency {
                digest: child,
                what,
            });
        }
        Ok(())
    }

    /// Fetches and walks every queued manifest.
    async fn run(
        &mut self,
        origins: &OriginClusterClient,
        namespace: &Namespace,
    ) -> Result<(), ReferenceError> {
        while let Some((digest, what, depth)) = self.pending.pop() {
            let body = origins
                .fetch(namespace, &digest, MAX_MANIFEST_SIZE)
                .await
                .map_err(|error| match error {
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

    /// Fails with [`ReferenceError::Missing`] naming the first dependency (in order) the origins
    /// lack; fetched manifests are known to be there.
    async fn verify(
        self,
        origins: &OriginClusterClient,
        namespace: &Namespace,
    ) -> Result<usize, ReferenceError> {
        let fetched = &self.fetched;
        let results: Vec<_> = futures::stream::iter(self.dependencies.iter().cloned())
            .map(|dependency| async move {
                if fetched.contains(&dependency.digest) {
                    return Ok(true);
                }
                origins
                    .stat(namespace, &dependency.digest)
                    .await
                    .map(|stat| stat.is_some())
            })
            .buffered(STAT_CONCURRENCY)
            .collect()
            .await;
        for (dependency, present) in self.dependencies.iter().zip(results) {
            if !present.map_err(ReferenceError::Origins)? {
                return Err(ReferenceError::Missing {
                    digest: dependency.digest,
                    what: dependency.what.clone(),
                });
            }
        }
        Ok(self.dependencies.len())
    }
}

/// Checks that the origins hold everything a tag on `digest` depends on, the blob itself
/// included. Returns the number of dependencies.
pub async fn check_tag_dependencies(
    origins: &OriginClusterClient,
    kind: TargetKind,
    namespace: &Namespace,
    digest: &Digest,
) -> Result<usize, ReferenceError> {
    let mut walk = Walk::default();
    walk.seen.insert(*digest);
    if kind == TargetKind::Blob {
        walk.dependencies.push(Dependency {
            digest: *digest,
            what: "blob".to_owned(),
        });
    } else {
        walk.dependencies.push(Dependency {
            digest: *digest,
            what: "manifest".to_owned(),
        });
        walk.pending.push((*digest, "manifest".to_owned(), 0));
        walk.run(origins, namespace).await?;
    }
    walk.verify(origins, namespace).await
}

/// Checks that the origins hold everything `manifest` (whose digest is `digest`, not yet
/// stored itself) depends on: its config and layers, or for an index every child manifest
/// and their own references. [`ReferenceError::Missing`] names the first missing blob;
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
