//! `bandwidth:` of a backend rule: caps on the bytes an origin moves to (egress) and from
//! (ingress) its storage, so backend traffic cannot saturate the origin's link or run up a
//! cloud bill. A decorator around any [`Backend`], so the kinds never deal with it.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use async_trait::async_trait;
use kraken_config::backend::BackendBandwidthConfig;
use kraken_core::{Digest, Namespace};
use kraken_transport::bandwidth::BandwidthLimiter;
use tokio::io::{AsyncRead, ReadBuf};

use super::{Backend, BackendBlob, BackendError, StoredBlob, UploadSource};

/// A backend whose uploads and downloads are paced by token buckets (one per direction,
/// shared by every transfer through this backend).
pub struct BandwidthLimited {
    inner: Arc<dyn Backend>,
    limiter: BandwidthLimiter,
    egress_bits_per_sec: u64,
    ingress_bits_per_sec: u64,
}

impl BandwidthLimited {
    /// Caps in bits per second for this process; 0 leaves a direction unlimited.
    pub fn new(
        inner: Arc<dyn Backend>,
        egress_bits_per_sec: u64,
        ingress_bits_per_sec: u64,
    ) -> Self {
        let some = |bits: u64| (bits > 0).then_some(bits);
        Self {
            inner,
            limiter: BandwidthLimiter::new(some(egress_bits_per_sec), some(ingress_bits_per_sec)),
            egress_bits_per_sec,
            ingress_bits_per_sec,
        }
    }

    /// This origin's share of cluster-wide caps: each divided by the number of origins, since
    /// every origin talks to the same storage.
    pub fn for_cluster(
        inner: Arc<dyn Backend>,
        config: &BackendBandwidthConfig,
        origins: usize,
    ) -> Arc<dyn Backend> {
        let origins = origins.max(1) as u64;
        // At least 1 bit/s: a cap divided down to 0 must not turn into "unlimited".
        let share = |bits: u64| (bits / origins).max(1);
        Arc::new(Self::new(
            inner,
            share(config.egress_bits_per_sec),
            share(config.ingress_bits_per_sec),
        ))
    }
}

impl fmt::Debug for BandwidthLimited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BandwidthLimited")
            .field("egress_bits_per_sec", &self.egress_bits_per_sec)
            .field("ingress_bits_per_sec", &self.ingress_bits_per_sec)
            .field("inner", &self.inner)
            .finish()
    }
}

#[async_trait]
impl Backend for BandwidthLimited {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    async fn stat(
        &self,
        namespace: &Namespace,
        digest: &Digest,
    ) -> Result<Option<u64>, BackendError> {
        self.inner.stat(namespace, digest).await
    }

    async fn upload(
        &self,
        namespace: &Namespace,
        digest: &Digest,
        source: UploadSource,
        size: u64,
    ) -> Result<(), BackendError> {
        let reader = Throttled::new(
            source.into_reader(),
            self.limiter.clone(),
            Direction::Egress,
        );
        let source = UploadSource::Reader(Box::pin(reader));
        self.inner.upload(namespace, digest, source, size).await
    }

    async fn download(
        &self,
        namespace: &Namespace,
        digest: &Digest,
    ) -> Result<BackendBlob, BackendError> {
        let blob = self.inner.download(namespace, digest).await?;
        Ok(BackendBlob {
            size: blob.size,
            reader: Box::pin(Throttled::new(
                blob.reader,
                self.limiter.clone(),
                Direction::Ingress,
            )),
        })
    }

    async fn list(&self, namespace_prefix: &str) -> Result<Vec<StoredBlob>, BackendError> {
        self.inner.list(namespace_prefix).await
    }
}

#[derive(Debug, Clone, Copy)]
enum Direction {
    /// Towards the backend (uploads).
    Egress,
    /// From the backend (downloads).
    Ingress,
}

/// A reader that pays for each read's bytes before the next read: the first read goes
/// through at once, later ones wait until the bucket has refilled. The wait is a boxed future
/// because the limiter's waits are `async fn`s.
struct Throttled<R> {
    inner: R,
    limiter: BandwidthLimiter,
    direction: Direction,
    paying: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl<R> Throttled<R> {
    fn new(inner: R, limiter: BandwidthLimiter, direction: Direction) -> Self {
        Self {
            inner,
            limiter,
            direction,
            paying: None,
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Throttled<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(paying) = this.paying.as_mut() {
            ready!(paying.as_mut().poll(cx));
            this.paying = None;
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let read = buf.filled().len() - before;
        if read > 0 {
            let limiter = this.limiter.clone();
            let direction = this.direction;
            this.paying = Some(Box::pin(async move {
                match direction {
                    Direction::Egress => limiter.egress(read).await,
                    Direction::Ingress => limiter.ingress(read).await,
                }
            }));
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::FsBackend;

    #[tokio::test]
    async fn downloads_and_uploads_are_paced_and_shares_divide_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let inner: Arc<dyn Backend> = Arc::new(FsBackend::new(dir.path()));
        // 16 Mbit/s for the cluster, 2 origins: 8 Mbit/s = 1 MB/s each way for this one.
        let config = BackendBandwidthConfig {
            enable: true,
            egress_bits_per_sec: 16_000_000,
            ingress_bits_per_sec: 16_000_000,
        };
        let limited = BandwidthLimited::for_cluster(inner, &config, 2);
        let data = vec![3u8; 1 << 20];
        let digest = Digest::of(&data);
        let namespace: Namespace = "library/ubuntu".parse().unwrap();

        let started = Instant::now();
        limited
            .upload(
                &namespace,
                &digest,
                UploadSource::Reader(Box::pin(std::io::Cursor::new(data.clone()))),
                data.len() as u64,
            )
            .await
            .unwrap();
        let upload = started.elapsed();

        let started = Instant::now();
        let mut blob = limited.download(&namespace, &digest).await.unwrap();
        let mut read = Vec::new();
        blob.reader.read_to_end(&mut read).await.unwrap();
        let download = started.elapsed();
        assert_eq!(read, data);
        // 1 MiB at ~1 MB/s less the initial burst: at least ~0.8 s each way. Lower bounds
        // only: a busy machine slows a limiter down, never speeds it up.
        assert!(
            upload >= Duration::from_millis(700),
            "upload took {upload:?}"
        );
        assert!(
            download >= Duration::from_millis(700),
            "download took {download:?}"
        );
        assert!(format!("{limited:?}").contains("egress_bits_per_sec: 8000000"));
    }
}
