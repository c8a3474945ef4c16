//! A typed client of one origin's `BlobService`. Blobs stream through it in [`CHUNK_SIZE`]
//! messages, in constant memory.

use std::io;
use std::pin::Pin;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use kraken_core::{Digest, MetaInfo, Namespace, PeerInfo, WireError, parse_digest};
use kraken_proto::origin::v1::blob_service_client::BlobServiceClient;
use kraken_proto::origin::v1::{
    DownloadRequest, DuplicateHeader, DuplicateRequest, GetMetaInfoRequest, GetPeerContextRequest,
    LocationsRequest, ReplicateToRemoteRequest, StatRequest, UploadHeader, UploadRequest,
    duplicate_request, upload_request,
};
use kraken_tls::{Role, TlsMaterial};
use kraken_transport::grpc::{GrpcError, channel};
use kraken_transport::observe::ObservedChannel;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::oneshot;
use tonic::{Code, Status};

use kraken_proto::wire::CHUNK_SIZE;
use kraken_transport::health::retry_after;

/// A blob's bytes as they arrive.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, ClientError>> + Send>>;

/// Why a call to an origin failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The origin asks to be asked again after this long: it is fetching the blob from its
    /// backend, or its backend is unavailable.
    #[error(
        "the origin is fetching the blob from its backend or waiting for it; retry in {} ms",
        .0.as_millis()
    )]
    Retry(Duration),
    /// Any other answer; `NOT_FOUND` means neither the origin nor its backend has the blob.
    #[error("the origin answered {:?}: {}", .0.code(), .0.message())]
    Status(Status),
    #[error("cannot read the blob to upload")]
    Source(#[source] io::Error),
    #[error("the origin sent an invalid {what}")]
    Response {
        what: &'static str,
        #[source]
        source: WireError,
    },
    #[error("the origin sent no {0}")]
    Missing(&'static str),
    #[error("cannot set up a channel to the origin")]
    Channel(#[source] GrpcError),
    #[error("cannot reach the origin cluster")]
    Cluster(#[source] kraken_transport::cluster::ClusterError),
    #[error(
        "`origin.hosts` lists no origin: give their gRPC addresses under `static` or a `dns` name"
    )]
    NoHosts,
    /// Every origin that could serve the request failed with a network error.
    #[error("no origin answered ({tried} tried); the last one, {host}, failed")]
    Unreachable {
        tried: usize,
        host: String,
        #[source]
        last: Box<ClientError>,
    },
}

impl ClientError {
    /// Reads `UNAVAILABLE` + `retry-after-ms` as [`ClientError::Retry`].
    pub fn from_status(status: Status) -> Self {
        match retry_after(&status) {
            Some(after) if status.code() == Code::Unavailable => Self::Retry(after),
            _ => Self::Status(status),
        }
    }

    /// The gRPC code behind the error (`UNAVAILABLE` for [`ClientError::Retry`] and
    /// [`ClientError::Unreachable`]).
    pub fn code(&self) -> Option<Code> {
        match self {
            Self::Retry(_) | Self::Unreachable { .. } => Some(Code::Unavailable),
            Self::Status(status) => Some(status.code()),
            _ => None,
        }
    }

    /// Whether the origin could not be reached (as opposed to an answer): worth trying
    /// another origin.
    pub fn is_network_error(&self) -> bool {
        match self {
            Self::Status(status) => kraken_transport::health::is_network_error(status),
            Self::Channel(_) | Self::Cluster(_) | Self::Unreachable { .. } => true,
            _ => false,
        }
    }
}

/// What an upload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uploaded {
    pub digest: Digest,
    pub size: u64,
    /// False when the origin already held the blob.
    pub created: bool,
}

impl Uploaded {
    /// From an upload's or a commit's answer.
    pub(crate) fn from_wire(digest: &str, size: u64, created: bool) -> Result<Self, ClientError> {
        Ok(Self {
            digest: parse_digest("digest", digest).map_err(|source| ClientError::Response {
                what: "digest",
                source,
            })?,
            size,
            created,
        })
    }
}

/// What an origin knows about a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobStat {
    pub size: u64,
    /// On the origin's disk (otherwise only in its backend).
    pub local: bool,
    /// Written back to the storage backend.
    pub persisted: bool,
}

/// What an origin did for `ReplicateToRemote`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replicated {
    /// The remote's owner already held the blob: nothing was sent.
    pub already_present: bool,
    pub size: u64,
    /// Bytes sent to the remote by this call (more than `size - resumed_at` only when a cut
    /// lost bytes in flight).
    pub bytes_sent: u64,
    /// The offset a transfer cut before went on from; 0 when sent from the start.
    pub resumed_at: u64,
    /// The remote origin (`host:port`) that holds the blob now.
    pub remote_origin: String,
}

/// An owner of a digest on the origin ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// Ring label and gRPC address (`host:port`).
    pub address: String,
    pub healthy: bool,
}

/// A client of one origin. Cheap to clone; clones share the connection.
#[derive(Debug, Clone)]
pub struct OriginClient {
    inner: BlobServiceClient<ObservedChannel>,
}

impl OriginClient {
    pub fn new(channel: ObservedChannel) -> Self {
        Self {
            inner: BlobServiceClient::new(channel),
        }
    }

    /// A lazily connecting mTLS client of the origin at `address` (`host:port`).
    pub fn connect(tls: &TlsMaterial, address: &str) -> Result<Self, ClientError> {
        channel(tls, address, None, Role::Origin)
            .map(Self::new)
            .map_err(ClientError::Channel)
    }

    /// The generated client, for the calls not wrapped here.
    pub fn raw(&self) -> BlobServiceClient<ObservedChannel> {
        self.inner.clone()
    }

    /// Uploads a blob read from `reader` to its end. `size`, if known, lets the origin refuse
    /// a short or long stream early. The origin verifies the content against `digest`.
    pub async fn upload<R>(
        &self,
        namespace: &Namespace,
        digest: &Digest,
        reader: R,
        size: Option<u64>,
    ) -> Result<Uploaded, ClientError>
    where
        R: AsyncRead + Send + 'static,
    {
        self.upload_stream(namespace, digest, read_chunks(reader), size)
            .await
    }

    /// Uploads a blob given as a stream of byte chunks (split to [`CHUNK_SIZE`] messages). If
    /// the stream fails, the call is cancelled, so the origin discards what it received.
    pub async fn upload_stream<S>(
        &self,
        namespace: &Namespace,
        digest: &Digest,
        chunks: S,
        size: Option<u64>,
    ) -> Result<Uploaded, ClientError>
    where
        S: Stream<Item = io::Result<Bytes>> + Send + 'static,
    {
        let header = UploadRequest {
            part: Some(upload_request::Part::Header(UploadHeader {
                namespace: namespace.to_string(),
                digest: digest.to_string(),
                size,
            })),
        };
        let (failed, source_error) = oneshot::channel();
        let body = futures::stream::once(async { header }).chain(
            message_chunks(chunks, failed).map(|chunk| UploadRequest {
                part: Some(upload_request::Part::Chunk(chunk)),
            }),
        );
        let mut client = self.inner.clone();
        tokio::select! {
            response = client.upload(body) => {
                let response = response.map_err(ClientError::from_status)?.into_inner();
                Uploaded::from_wire(&response.digest, response.size, response.created)
            }
            // Dropping the call resets the stream: the origin aborts the upload.
            Ok(error) = source_error => Err(ClientError::Source(error)),
        }
    }

    /// Streams a whole blob.
    pub async fn download(
        &self,
        namespace: &Namespace,
        digest: &Digest,
    ) -> Result<ByteStream, ClientError> {
        self.download_range(namespace, digest, 0, None).await
    }

    /// Streams `length` bytes (`None`: to the end) from `offset`.
    pub async fn download_range(
        &self,
        namespace: &Namespace,
        digest: &Digest,
        offset: u64,
        length: Option<u64>,
    ) -> Result<ByteStream, ClientError> {
        let request = DownloadRequest {
            namespace: namespace.to_string(),
            digest: digest.to_string(),
            offset,
            length,
        };
        let response = self
            .inner
            .clone()
            .download(request)
            .await
            .map_err(ClientError::from_status)?;
        let chunks = response.into_inner().map(|message| {
            message
                .map(|message| message.chunk)
                .map_err(ClientError::from_status)
        });
        Ok(Box::pin(chunks))
    }

    /// Size and state of a blob on the origin or in its backend; `None` if neither has it.
    pub async fn stat(
        &self,
        namespace: &Namespace,
        digest: &Digest,
    ) -> Result<Option<BlobStat>, ClientError> {
        self.stat_request(namespace, digest, false).await
    }

    /// Size and state of a blob on the origin's own disk; `None` if it does not hold it (its
    /// backend is not asked).
    pub async fn stat_local(
        &self,
        namespace: &Namespace,
        digest: &Digest,
    ) -> Result<Option<BlobStat>, ClientError> {
        self.stat_request(namespace, digest, true).await
    }

    async fn stat_request(
        &self,
        namespace: &Namespace,
        digest: &Digest,
        local_only: bool,
    ) -> Result<Option<BlobStat>, ClientError> {
        let request = StatRequest {
            namespace: namespace.to_string(),
            digest: digest.to_string(),
            local_only,
        };
        match self.inner.clone().stat(request).await {
            Ok(response) => {
                let stat = response.into_inner();
                Ok(Some(BlobStat {
                    size: stat.size,
                    local: stat.local,
                    persisted: stat.persisted,
                }))
            }
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(ClientError::from_status(status)),
        }
    }

    /// Sends a replica copy of a blob (origin to origin). With `write_back_delay` the
    /// receiver pins the copy and writes it back itself after that delay unless the backend
    /// has it by then; without, the sender owns the write-back. Returns whether the receiver
    /// stored it (false: it already had it).
    pub async fn duplicate<R>(
        &self,
        namespace: &Namespace,
        digest: &Digest,
        reader: R,
        size: u64,
        write_back_delay: Option<Duration>,
    ) -> Result<bool, ClientError>
    where
        R: AsyncRead + Send + 'static,
    {
        let header = DuplicateRequest {
            part: Some(duplicate_request::Part::Header(DuplicateHeader {
                namespace: namespace.to_string(),
                digest: digest.to_string(),
                size: Some(size),
                write_back_delay: write_back_delay
                    .and_then(|d| prost_types::Duration::try_from(d).ok()),
            })),
        };
        let (failed, source_error) = oneshot::channel();
        let body = futures::stream::once(async { header }).chain(
            message_chunks(read_chunks(reader), failed).map(|chunk| DuplicateRequest {
                part: Some(duplicate_request::Part::Chunk(chunk)),
            }),
        );
        let mut client = self.inner.clone();
        tokio::select! {
            response = client.duplicate(body) => {
                Ok(response.map_err(ClientError::from_status)?.into_inner().created)
            }
            Ok(error) = source_error => Err(ClientError::Source(error)),
        }
    }

    /// Asks this origin to send a blob to the remote cluster named `remote_cluster` (one of
    /// its `remotes:`): it skips a blob the remote holds, and resumes a transfer an earlier
    /// call left cut. [`ClientError::Retry`] while it fetches the blob from its backend; no
    /// deadline, since a large blob takes long.
    pub async fn replicate_to_remote(
        &self,
        namespace: &Namespace,
        digest: &Digest,
        remote_cluster: &str,
    ) -> Result<Replicated, ClientError> {
        let request = ReplicateToRemoteRequest {
            namespace: namespace.to_string(),
            digest: digest.to_string(),
            remote_cluster: remote_cluster.to_owned(),
        };
        let response = self
            .inner
            .clone()
            .replicate_to_remote(request)
            .await
            .map_err(ClientError::from_status)?
            .into_inner();
        Ok(Replicated {
            already_present: response.already_present,
            size: response.size,
            bytes_sent: response.bytes_sent,
            resumed_at: response.resumed_at,
            remote_origin: response.remote_origin,
        })
    }

    /// The blob's metainfo; [`ClientError::Retry`] while the origin fetches it from its
    /// backend.
    pub async fn get_metainfo(
        &self,
        namespace: &Namespace,
        digest: &Digest,
    ) -> Result<MetaInfo, ClientError> {
        let request = GetMetaInfoRequest {
            namespace: namespace.to_string(),
            digest: digest.to_string(),
        };
        let response = self
            .inner
            .clone()
            .get_meta_info(request)
            .await
            .map_err(ClientError::from_status)?
            .into_inner();
        let wire = response.metainfo.ok_or(ClientError::Missing("metainfo"))?;
        MetaInfo::try_from(&wire).map_err(|source| ClientError::Response {
            what: "metainfo",
            source,
        })
    }

    /// [`get_metainfo`](Self::get_metainfo), retrying as told for up to `patience`; the last
    /// [`ClientError::Retry`] is returned if the blob is not ready by then.
    pub async fn wait_for_metainfo(
        &self,
        namespace: &Namespace,
        digest: &Digest,
        patience: Duration,
    ) -> Result<MetaInfo, ClientError> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            match self.get_metainfo(namespace, digest).await {
                Err(ClientError::Retry(after))
                    if tokio::time::Instant::now() + after <= deadline =>
                {
                    tokio::time::sleep(after).await;
                }
                other => return other,
            }
        }
    }

    /// The owners of a digest on the origin ring, highest score first.
    pub async fn locations(&self, digest: &Digest) -> Result<Vec<Location>, ClientError> {
        let request = LocationsRequest {
            digest: digest.to_string(),
        };
        let response = self
            .inner
            .clone()
            .locations(request)
            .await
            .map_err(ClientError::from_status)?;
        Ok(response
            .into_inner()
            .origins
            .into_iter()
            .map(|origin| Location {
                address: origin.address,
                healthy: origin.healthy,
            })
            .collect())
    }

    /// The origin as a seeder (peer id and QUIC address) and its ring label.
    pub async fn peer_context(&self) -> Result<(PeerInfo, String), ClientError> {
        let response = self
            .inner
            .clone()
            .get_peer_context(GetPeerContextRequest {})
            .await
            .map_err(ClientError::from_status)?
            .into_inner();
        let wire = response.peer.ok_or(ClientError::Missing("peer"))?;
        let peer = PeerInfo::try_from(&wire).map_err(|source| ClientError::Response {
            what: "peer",
            source,
        })?;
        Ok((peer, response.name))
    }
}

/// Reads `reader` in chunks of [`CHUNK_SIZE`] (the last may be shorter).
pub(crate) fn read_chunks<R>(reader: R) -> impl Stream<Item = io::Result<Bytes>> + Send
where
    R: AsyncRead + Send + 'static,
{
    futures::stream::unfold(Some(Box::pin(reader)), |reader| async move {
        let mut reader = reader?;
        let mut chunk = BytesMut::with_capacity(CHUNK_SIZE);
        while chunk.len() < CHUNK_SIZE {
            match reader.read_buf(&mut chunk).await {
                Ok(0) => break,
                Ok(_) => {}
                Err(error) => return Some((Err(error), None)),
            }
        }
        if chunk.is_empty() {
            None
        } else {
            Some((Ok(chunk.freeze()), Some(reader)))
        }
    })
}

/// Splits `chunks` into messages of at most [`CHUNK_SIZE`]. On a read error the error goes to
/// `failed` and the stream stalls, so the caller can cancel the call instead of ending the
/// upload early (which would look like a short blob).
fn message_chunks<S>(chunks: S, failed: oneshot::Sender<io::Error>) -> impl Stream<Item = Bytes>
where
    S: Stream<Item = io::Result<Bytes>> + Send + 'static,
{
    let state = (Box::pin(chunks), Bytes::new(), Some(failed));
    futures::stream::unfold(state, |(mut chunks, mut pending, mut failed)| async move {
        loop {
            if !pending.is_empty() {
                let message = pending.split_to(pending.len().min(CHUNK_SIZE));
                return Some((message, (chunks, pending, failed)));
            }
            match chunks.next().await {
                Some(Ok(bytes)) => pending = bytes,
                Some(Err(error)) => {
                    if let Some(failed) = failed.take() {
                        let _ = failed.send(error);
                    }
                    futures::future::pending::<()>().await;
                }
                None => return None,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use kraken_proto::wire::RETRY_AFTER_MS;
    use tonic::metadata::MetadataValue;

    use super::*;

    #[tokio::test]
    async fn readers_and_streams_become_bounded_messages() {
        let data: Vec<u8> = (0..(CHUNK_SIZE * 2 + 10)).map(|i| i as u8).collect();
        let chunks: Vec<Bytes> = read_chunks(std::io::Cursor::new(data.clone()))
            .map(Result::unwrap)
            .collect()
            .await;
        let lens: Vec<usize> = chunks.iter().map(Bytes::len).collect();
        assert_eq!(lens, vec![CHUNK_SIZE, CHUNK_SIZE, 10]);

        let (failed, _) = oneshot::channel();
        let big =
            futures::stream::iter([Ok(Bytes::from(data.clone())), Ok(Bytes::from_static(b"!"))]);
        let messages: Vec<Bytes> = message_chunks(big, failed).collect().await;
        let lens: Vec<usize> = messages.iter().map(Bytes::len).collect();
        assert_eq!(lens, vec![CHUNK_SIZE, CHUNK_SIZE, 10, 1]);
        assert_eq!(messages.concat()[..data.len()], data[..]);
    }

    #[test]
    fn retry_after_becomes_a_typed_retry() {
        let mut status = Status::unavailable("fetching");
        status
            .metadata_mut()
            .insert(RETRY_AFTER_MS, MetadataValue::from(250u64));
        assert!(matches!(
            ClientError::from_status(status),
            ClientError::Retry(d) if d == Duration::from_millis(250)
        ));
        let plain = ClientError::from_status(Status::unavailable("down"));
        assert_eq!(plain.code(), Some(Code::Unavailable));
        assert!(matches!(plain, ClientError::Status(_)));
    }
}
