//! Accepting connections under a cap: the gRPC and REST servers stop accepting while
//! `max` accepted connections are open, so a flood of idle connections cannot exhaust file
//! descriptors; each connection gives its slot back when it is dropped.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::Stream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Accepts from a listener while fewer than `max` accepted connections are open.
pub(crate) struct CappedIncoming {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    /// A slot taken for the next connection, held across polls until one arrives.
    slot: Option<OwnedSemaphorePermit>,
    acquiring: Option<Pin<Box<dyn Future<Output = OwnedSemaphorePermit> + Send>>>,
}

impl CappedIncoming {
    pub(crate) fn new(listener: TcpListener, max: usize) -> Self {
        Self {
            listener,
            slots: Arc::new(Semaphore::new(max.max(1))),
            slot: None,
            acquiring: None,
        }
    }
}

impl Stream for CappedIncoming {
    type Item = std::io::Result<CappedStream>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.slot.is_none() {
            let slots = Arc::clone(&this.slots);
            let acquiring = this.acquiring.get_or_insert_with(|| {
                Box::pin(async move {
                    match slots.acquire_owned().await {
                        Ok(permit) => permit,
                        // The semaphore lives as long as this stream and is never closed.
                        Err(_) => std::future::pending().await,
                    }
                })
            });
            let permit = std::task::ready!(acquiring.as_mut().poll(cx));
            this.acquiring = None;
            this.slot = Some(permit);
        }
        match std::task::ready!(this.listener.poll_accept(cx)) {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                let permit = this.slot.take();
                Poll::Ready(Some(Ok(CappedStream {
                    inner: stream,
                    _permit: permit,
                })))
            }
            // Accept errors (EMFILE, a connection reset before accept) are per connection:
            // tonic logs them and keeps accepting.
            Err(error) => Poll::Ready(Some(Err(error))),
        }
    }
}

/// An accepted connection holding its slot until it is dropped.
pub(crate) struct CappedStream {
    inner: TcpStream,
    _permit: Option<OwnedSemaphorePermit>,
}

impl CappedStream {
    /// The client's address.
    pub(crate) fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.inner.peer_addr()
    }

    /// Waits for the first bytes without consuming them.
    pub(crate) async fn peek(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.peek(buf).await
    }
}

impl Connected for CappedStream {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl AsyncRead for CappedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CappedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
