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
            })
            .collect()
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
