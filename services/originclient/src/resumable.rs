//! Resumable uploads to one origin (`StartUpload`, `UploadChunks`, `GetUploadStatus`,
//! `CommitUpload`, `AbortUpload`), for transfers long enough that a cut connection must not
//! cost the bytes already sent: replication to another cluster above all.
//!
//! The origin appends each chunk at the offset it names and refuses any other offset with
//! `FAILED_PRECONDITION` + `upload-offset` (the bytes it holds), so a sender can always find
//! where to go on: [`upload_resumable`] reads that offset from a refusal, or asks
//! `GetUploadStatus` after a network error, and sends the rest from there. The upload lives
//! on the receiving origin until committed or aborted; it does not survive a restart of that
//! origin (uploads are cleared at start), and then the transfer starts again from 0.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use kraken_core::backoff::Backoff;
use kraken_core::{Digest, Namespace};
use kraken_proto::origin::v1::{
    AbortUploadRequest, CommitUploadRequest, GetUploadStatusRequest, StartUploadRequest,
    UploadChunksRequest,
};
use kraken_proto::wire::UPLOAD_OFFSET;
use kraken_transport::bandwidth::BandwidthLimiter;
use tokio::io::AsyncRead;
use tokio::sync::oneshot;
use tonic::Code;

use crate::client::{ClientError, OriginClient, Uploaded, read_chunks};

/// Resumes one [`upload_resumable`] call makes before giving up (the caller may call again
/// with the same cursor later).
pub const MAX_RESUMES: u32 = 8;

/// Wait before resume number `n`: a reconnect right after a cut usually fails the same way.
const RESUME_BACKOFF: Backoff = Backoff {
    initial: Duration::from_millis(100),
    max: Duration::from_secs(2),
    factor: 2.0,
};

/// Where a resumable upload stands: which origin holds it, its id there (empty: not started)
/// and the bytes that origin acknowledged. Kept by the caller between calls, so that a
/// transfer failed after [`MAX_RESUMES`] resumes goes on where it stopped next time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UploadCursor {
    /// The receiving origin (`host:port`); the caller dials it.
    pub origin: String,
    pub upload_id: String,
    pub offset: u64,
}

impl UploadCursor {
    /// A transfer to `origin` not started yet.
    pub fn new(origin: impl Into<String>) -> Self {
        Self {
            origin: origin.into(),
            ..Self::default()
        }
    }

    fn restart(&mut self) {
        self.upload_id.clear();
        self.offset = 0;
    }
}

/// What [`upload_resumable`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumedUpload {
    pub uploaded: Uploaded,
    /// The first offset this call went on from after a cut (or that a cursor from an earlier
    /// call held); 0 when every byte was sent in one go.
    pub resumed_at: u64,
    /// How often this call resumed.
    pub resumes: u32,
}

impl OriginClient {
    /// Starts a resumable upload into `namespace`; returns its id.
    pub async fn start_upload(&self, namespace: &Namespace) -> Result<String, ClientError> {
        let request = StartUploadRequest {
            namespace: namespace.to_string(),
        };
        let response = self.raw().start_upload(request).await;
        Ok(response
            .map_err(ClientError::from_status)?
            .into_inner()
            .upload_id)
    }

    /// The bytes the origin holds of upload `upload_id`: where the next chunk must start.
    pub async fn upload_status(&self, upload_id: &str) -> Result<u64, ClientError> {
        let request = GetUploadStatusRequest {
            upload_id: upload_id.to_owned(),
        };
        let response = self.raw().get_upload_status(request).await;
        Ok(response
            .map_err(ClientError::from_status)?
            .into_inner()
            .size)
    }

    /// Sends `reader` to its end as the bytes of upload `upload_id` from `offset`, each chunk
    /// after `pace` lets it out (if given) and counted in `sent` as it is handed to the
    /// connection. Returns the bytes the origin holds after the call. A refused offset is
    /// `FAILED_PRECONDITION` carrying `upload-offset` (see [`resume_offset`]).
    pub async fn upload_chunks<R>(
        &self,
        upload_id: &str,
        offset: u64,
        reader: R,
        pace: Option<BandwidthLimiter>,
        sent: Arc<AtomicU64>,
    ) -> Result<u64, ClientError>
    where
        R: AsyncRead + Send + 'static,
    {
        let (failed, mut source_error) = oneshot::channel();
        let state = (Box::pin(read_chunks(reader)), offset, Some(failed));
        let id = upload_id.to_owned();
        let messages = futures::stream::unfold(state, move |(mut chunks, at, mut failed)| {
            let (pace, sent, id) = (pace.clone(), sent.clone(), id.clone());
            async move {
                match chunks.next().await? {
                    Ok(data) => {
                        if let Some(pace) = &pace {
                            pace.egress(data.len()).await;
                        }
                        sent.fetch_add(data.len() as u64, Ordering::Relaxed);
                        let message = UploadChunksRequest {
                            // The origin reads the id from the first message only.
                            upload_id: if at == offset { id } else { String::new() },
                            offset: at,
                            data,
                        };
                        let next = at + message.data.len() as u64;
                        Some((message, (chunks, next, failed)))
                    }
                    // Ending the stream early is harmless here: the origin keeps what it got,
                    // and the caller learns why the rest is missing.
                    Err(error) => {
                        if let Some(failed) = failed.take() {
                            let _ = failed.send(error);
                        }
                        None
                    }
                }
            }
        });
        let answer = self.raw().upload_chunks(messages).await;
        // Sent before the stream ended, so before the origin could answer.
        if let Ok(error) = source_error.try_recv() {
            return Err(ClientError::Source(error));
        }
        Ok(answer.map_err(ClientError::from_status)?.into_inner().size)
    }

    /// Verifies upload `upload_id` against `digest` and stores it (the upload is finished
    /// either way).
    pub async fn commit_upload(
        &self,
        upload_id: &str,
        namespace: &Namespace,
        digest: &Digest,
    ) -> Result<Uploaded, ClientError> {
        let request = CommitUploadRequest {
            upload_id: upload_id.to_owned(),
            namespace: namespace.to_string(),
            digest: digest.to_string(),
        };
        let response = self
            .raw()
            .commit_upload(request)
            .await
            .map_err(ClientError::from_status)?
            .into_inner();
        Uploaded::from_wire(&response.digest, response.size, response.created)
    }

    /// Discards upload `upload_id` and what it received.
    pub async fn abort_upload(&self, upload_id: &str) -> Result<(), ClientError> {
        let request = AbortUploadRequest {
            upload_id: upload_id.to_owned(),
        };
        self.raw()
            .abort_upload(request)
            .await
            .map_err(ClientError::from_status)?;
        Ok(())
    }
}

/// The offset an origin named when it refused a chunk (`upload-offset`).
pub fn resume_offset(error: &ClientError) -> Option<u64> {
    match error {
        ClientError::Status(status) if status.code() == Code::FailedPrecondition => status
            .metadata()
            .get(UPLOAD_OFFSET)?
            .to_str()
            .ok()?
            .parse()
            .ok(),
        _ => None,
    }
}

/// Uploads the `size` bytes of `digest` to `client` (the origin named in `cursor`) resumably,
/// going on from `cursor` (a fresh one starts a new upload) and keeping it up to date.
///
/// `open_at(offset)` gives the blob's content from `offset`. After a cut connection the
/// upload resumes where the origin stands: the offset a refused chunk names, or the origin's
/// answer to `GetUploadStatus` after a network error. An upload the origin no longer knows
/// (restarted, expired, or committed by a call whose answer was lost) is looked up with a
/// local `Stat`, and started again from 0 if the blob is not there. At most [`MAX_RESUMES`]
/// resumes per call, a moment apart; then the last error is returned and `cursor` still says
/// where things stand. Any other refusal is final (a refused commit, e.g. a digest mismatch,
/// also ends the upload). Every byte passes `pace` and is counted in `sent`, so a caller can
/// tell a resumed transfer from a restarted one.
#[allow(clippy::too_many_arguments)]
pub async fn upload_resumable<F, Fut, R>(
    client: &OriginClient,
    cursor: &mut UploadCursor,
    namespace: &Namespace,
    digest: &Digest,
    size: u64,
    open_at: F,
    pace: Option<&BandwidthLimiter>,
    sent: &Arc<AtomicU64>,
) -> Result<ResumedUpload, ClientError>
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = io::Result<R>>,
    R: AsyncRead + Send + 'static,
{
    let transfer = Transfer {
        client,
        namespace,
        digest,
        size,
        pace,
        sent,
    };
    let mut resumes = 0;
    let mut resumed_at = 0;
    // A cursor from an earlier call: the origin may hold more (or nothing) by now.
    let mut ask = !cursor.upload_id.is_empty();
    loop {
        let (stage, error) = match transfer
            .attempt(cursor, &open_at, ask, &mut resumed_at)
            .await
        {
            Ok(uploaded) => {
                cursor.restart();
                return Ok(ResumedUpload {
                    uploaded,
                    resumed_at,
                    resumes,
                });
            }
            Err(failed) => failed,
        };
        ask = false;
        if let Some(offset) = resume_offset(&error) {
            cursor.offset = offset;
        } else if error.code() == Some(Code::NotFound) {
            if let Some(uploaded) = transfer.already_stored().await {
                cursor.restart();
                return Ok(ResumedUpload {
                    uploaded,
                    resumed_at,
                    resumes,
                });
            }
            tracing::info!(origin = %cursor.origin, %digest, "the upload is gone; starting again");
            cursor.restart();
        } else if error.is_network_error() {
            ask = true;
        } else {
            if stage == Stage::Committing {
                cursor.restart();
            }
            return Err(error);
        }
        resumes += 1;
        if resumes > MAX_RESUMES {
            return Err(error);
        }
        tracing::info!(
            origin = %cursor.origin,
            %digest,
            offset = cursor.offset,
            resume = resumes,
            %error,
            "upload cut; resuming"
        );
        tokio::time::sleep(RESUME_BACKOFF.delay(resumes)).await;
    }
}

/// Where an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Sending,
    Committing,
}

/// One blob going to one origin.
struct Transfer<'a> {
    client: &'a OriginClient,
    namespace: &'a Namespace,
    digest: &'a Digest,
    size: u64,
    pace: Option<&'a BandwidthLimiter>,
    sent: &'a Arc<AtomicU64>,
}

impl Transfer<'_> {
    /// Starts the upload (or, when `ask`, learns where the origin stands), sends the rest and
    /// commits. `resumed_at` is set to the first offset above 0 sent from.
    async fn attempt<F, Fut, R>(
        &self,
        cursor: &mut UploadCursor,
        open_at: &F,
        ask: bool,
        resumed_at: &mut u64,
    ) -> Result<Uploaded, (Stage, ClientError)>
    where
        F: Fn(u64) -> Fut,
        Fut: Future<Output = io::Result<R>>,
        R: AsyncRead + Send + 'static,
    {
        let sending = |error| (Stage::Sending, error);
        if cursor.upload_id.is_empty() {
            cursor.upload_id = self
                .client
                .start_upload(self.namespace)
                .await
                .map_err(sending)?;
            cursor.offset = 0;
        } else if ask {
            cursor.offset = self
                .client
                .upload_status(&cursor.upload_id)
                .await
                .map_err(sending)?;
        }
        if cursor.offset < self.size {
            if cursor.offset > 0 && *resumed_at == 0 {
                *resumed_at = cursor.offset;
            }
            let reader = open_at(cursor.offset)
                .await
                .map_err(|error| sending(ClientError::Source(error)))?;
            cursor.offset = self
                .client
                .upload_chunks(
                    &cursor.upload_id,
                    cursor.offset,
                    reader,
                    self.pace.cloned(),
                    self.sent.clone(),
                )
                .await
                .map_err(sending)?;
        }
        if cursor.offset != self.size {
            // The reader ended early (or the origin holds more than the blob: never resumable).
            return Err(sending(ClientError::Source(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the origin holds {} bytes of the {} of {}",
                    cursor.offset, self.size, self.digest
                ),
            ))));
        }
        self.client
            .commit_upload(&cursor.upload_id, self.namespace, self.digest)
            .await
            .map_err(|error| (Stage::Committing, error))
    }

    /// The blob, if the origin stores it already (a commit whose answer was lost).
    async fn already_stored(&self) -> Option<Uploaded> {
        let stat = self
            .client
            .stat_local(self.namespace, self.digest)
            .await
            .ok()??;
        (stat.size == self.size).then_some(Uploaded {
            digest: *self.digest,
            size: stat.size,
            created: false,
        })
    }
}
