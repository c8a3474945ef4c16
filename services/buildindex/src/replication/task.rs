//! One replication task: a tag (at one version) this build-index still owes a remote cluster,
//! or a cluster peer, as kept in its queue file.
//!
//! The file format is JSON and only grows: every field added since the first queue files
//! (which had `tag`, `digest`, `remote` and later `version`, `created_unix_ms`) has a serde
//! default, so files written by earlier releases load unchanged. A task for a remote keeps the
//! file name those releases gave it, `sha256("{tag}\n{remote}")`.

use kraken_core::Digest;
use kraken_oci::TaggedName;
use serde::{Deserialize, Serialize};

/// What the queue keys tasks by: one task per (tag, remote), or per (tag, remote, peer) for a
/// copy owed to a cluster peer. Ordered by tag first, so listings come in tag order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct TaskKey(String);

impl TaskKey {
    /// The key as text: opaque to clients (a page token), stable across releases.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// The task file's name: the key's sha256, fixed-length whatever the tag's characters.
    pub(crate) fn file_name(&self) -> String {
        Digest::of(self.0.as_bytes()).hex()
    }
}

/// A pending replication, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ReplicationTask {
    pub(crate) tag: TaggedName,
    /// What the remote's tag must point at.
    pub(crate) digest: Digest,
    /// The remote cluster's name (under `remotes:`).
    pub(crate) remote: String,
    /// The tag's version being replicated; 0 in files from before versions.
    #[serde(default)]
    pub(crate) version: u64,
    /// When the remote first fell behind on this tag (a newer push keeps it).
    #[serde(default)]
    pub(crate) created_unix_ms: u64,
    /// Not attempted before this time (backoff after a failure, or a peer's hold).
    #[serde(default)]
    pub(crate) not_before_unix_ms: u64,
    /// Failed attempts at this version; there is no cap.
    #[serde(default)]
    pub(crate) attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) cause: Option<Cause>,
    #[serde(default)]
    pub(crate) kind: Kind,
    /// A copy of a cluster peer's task: it runs only if the peer has not finished by
    /// `not_before_unix_ms` (and is cheap then: the remote already has the tag).
    #[serde(default)]
    pub(crate) held_for_peer: bool,
}

/// Who the task owes the tag to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Kind {
    /// The remote cluster `remote`.
    #[default]
    Remote,
    /// A cluster peer (`host:port`) that missed the write: retried until it has it.
    PeerCopy {
        peer: String,
        /// The write had `replicate`: the peer holds its own copies of the remotes' tasks.
        #[serde(default)]
        replicate: bool,
    },
}

/// What made an attempt fail, for status and alerts; the text is in `last_error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "&'static str")]
pub(crate) enum Cause {
    /// The TLS handshake with the remote failed (an unlisted CA, a wrong server name).
    Tls,
    RemoteUnreachable,
    /// The remote answered with an error (e.g. `PERMISSION_DENIED` for a tag it refuses).
    RemoteRefused,
    /// The tag's dependencies could not be listed from the local origins.
    Dependencies,
    /// A local origin could not send a blob.
    Origin,
    Store,
    Peer,
    /// Anything else, and causes written by a newer release.
    Other,
}

impl Cause {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Tls => "tls",
            Self::RemoteUnreachable => "remote_unreachable",
            Self::RemoteRefused => "remote_refused",
            Self::Dependencies => "dependencies",
            Self::Origin => "origin",
            Self::Store => "store",
            Self::Peer => "peer",
            Self::Other => "other",
        }
    }
}

impl From<String> for Cause {
    fn from(text: String) -> Self {
        [
            Self::Tls,
            Self::RemoteUnreachable,
            Self::RemoteRefused,
            Self::Dependencies,
            Self::Origin,
            Self::Store,
            Self::Peer,
        ]
        .into_iter()
        .find(|cause| cause.as_str() == text)
        .unwrap_or(Self::Other)
    }
}

impl From<Cause> for &'static str {
    fn from(cause: Cause) -> Self {
        cause.as_str()
    }
}

/// How a task ended (its file is deleted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The remote received the blobs it lacked and the tag.
    Replicated,
    /// The remote's tag already pointed at this digest.
    AlreadyThere,
    /// The remote holds a newer version of the tag.
    Superseded,
    /// The cluster peer took its copy of the write.
    Copied,
}

impl Outcome {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Replicated => "replicated",
            Self::AlreadyThere => "already_there",
            Self::Superseded => "superseded",
            Self::Copied => "copied",
        }
    }
}

/// How far the running attempt got (in memory only: a restart starts the attempt over, and
/// the remote's `Stat` skips what it already holds).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Progress {
    pub(crate) blobs_done: u32,
    pub(crate) blobs_total: u32,
    pub(crate) bytes_sent: u64,
}

impl ReplicationTask {
    /// A task to point `remote`'s `tag` at `digest` (at `version`), due at `now_ms`.
    pub(crate) fn to_remote(
        tag: TaggedName,
        digest: Digest,
        version: u64,
        remote: &str,
        now_ms: u64,
    ) -> Self {
        Self {
            tag,
            digest,
            remote: remote.to_owned(),
            version,
            created_unix_ms: now_ms,
            not_before_unix_ms: now_ms,
            attempts: 0,
            last_error: None,
            cause: None,
            kind: Kind::Remote,
            held_for_peer: false,
        }
    }

    /// A copy of a write owed to the cluster peer `peer`, due at `now_ms`.
    pub(crate) fn to_peer(
        tag: TaggedName,
        digest: Digest,
        version: u64,
        peer: &str,
        replicate: bool,
        now_ms: u64,
    ) -> Self {
        Self {
            kind: Kind::PeerCopy {
                peer: peer.to_owned(),
                replicate,
            },
            ..Self::to_remote(tag, digest, version, "", now_ms)
        }
    }

    pub(crate) fn key(&self) -> TaskKey {
        match &self.kind {
            // The format of the first release's file names: keep it.
            Kind::Remote => TaskKey(format!("{}\n{}", self.tag, self.remote)),
            Kind::PeerCopy { peer, .. } => {
                TaskKey(format!("{}\n{}\n{peer}", self.tag, self.remote))
            }
        }
    }

    /// Whether this task is for a later write of the tag than `other`: the order of
    /// [`TagRecord::supersedes`](crate::store::TagRecord::supersedes) (version, then the
    /// larger digest), so the queue keeps what the remote's tag must end on. `None`: the
    /// same write.
    pub(crate) fn is_newer_than(&self, other: &Self) -> Option<bool> {
        let rank = |task: &Self| (task.version, task.digest.hex());
        match rank(self).cmp(&rank(other)) {
            std::cmp::Ordering::Equal => None,
            order => Some(order.is_gt()),
        }
    }

    /// The `remote` label of this task's metrics: the remote, or `peer:<host>`.
    pub(crate) fn metric_target(&self) -> String {
        match &self.kind {
            Kind::Remote => self.remote.clone(),
            Kind::PeerCopy { peer, .. } => format!("peer:{peer}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_round_trip_and_unknown_ones_read_as_other() {
        for cause in [
            Cause::Tls,
            Cause::RemoteUnreachable,
            Cause::RemoteRefused,
            Cause::Dependencies,
            Cause::Origin,
            Cause::Store,
            Cause::Peer,
            Cause::Other,
        ] {
            let json = serde_json::to_string(&cause).unwrap();
            assert_eq!(json, format!("\"{}\"", cause.as_str()));
            assert_eq!(serde_json::from_str::<Cause>(&json).unwrap(), cause);
        }
        assert_eq!(
            serde_json::from_str::<Cause>("\"quota\"").unwrap(),
            Cause::Other
        );
    }

    #[test]
    fn a_peer_copy_has_a_key_of_its_own() {
        let tag: TaggedName = "app:1".parse().unwrap();
        let remote = ReplicationTask::to_remote(tag, Digest::of(b"x"), 1, "b", 1);
        let peer = ReplicationTask {
            kind: Kind::PeerCopy {
                peer: "bi-2:7000".into(),
                replicate: true,
            },
            ..remote.clone()
        };
        assert_eq!(remote.key().as_str(), "app:1\nb");
        assert_ne!(remote.key(), peer.key());
        assert_ne!(remote.key().file_name(), peer.key().file_name());
        let json = serde_json::to_value(&peer).unwrap();
        assert_eq!(json["kind"]["peer_copy"]["peer"], "bi-2:7000");
        assert_eq!(json["kind"]["peer_copy"]["replicate"], true);
        let back: ReplicationTask = serde_json::from_value(json).unwrap();
        assert_eq!(back, peer);
    }
}
