//! Readers the backends wrap around blob bytes on their way to or from storage: one that
//! holds a source to the size it announced, and one that turns an HTTP body into an
//! `AsyncRead` without collecting it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures::TryStreamExt;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf, Take};
use tokio_util::io::StreamReader;

/// Yields exactly `size` bytes of `inner`, failing the read that reveals a mismatch: an early
/// end (`UnexpectedEof`) or a byte beyond `size` (`InvalidData`). Backends that stream an
/// upload put this between the source and the network, so a source that lies about its size
/// aborts the request instead of storing a truncated or padded object.
pub(crate) struct ExactReader<R> {
    inner: Take<R>,
    size: u64,
}

impl<R: AsyncRead + Unpin> ExactReader<R> {
    pub(crate) fn new(inner: R, size: u64) -> Self {
        Self {
            inner: inner.take(size),
            size,
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for ExactReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let remaining = this.inner.limit();
        if remaining == 0 {
            // The announced size is reached: the source must end here.
            let mut probe = [0u8; 1];
            let mut probe = ReadBuf::new(&mut probe);
            ready!(Pin::new(this.inner.get_mut()).poll_read(cx, &mut probe))?;
            if probe.filled().is_empty() {
                return Poll::Ready(Ok(()));
            }
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the source holds more than the {} bytes announced",
                    this.size
                ),
            )));
        }
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if buf.filled().len() == before {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the source ended {remaining} bytes short of the {} announced",
                    this.size
                ),
            )));
        }
        Poll::Ready(Ok(()))
    }
}

/// An HTTP response body as an `AsyncRead`, chunk by chunk as it arrives.
pub(crate) fn body_reader(response: reqwest::Response) -> Pin<Box<dyn AsyncRead + Send>> {
    let chunks = response.bytes_stream().map_err(io::Error::other);
    Box::pin(StreamReader::new(chunks))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(data: &[u8], size: u64) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        ExactReader::new(data, size).read_to_end(&mut out).await?;
        Ok(out)
    }

    #[tokio::test]
    async fn passes_a_source_of_the_announced_size() {
        let data = vec![5u8; 100_000];
        assert_eq!(read(&data, 100_000).await.unwrap(), data);
        assert!(read(b"", 0).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn fails_a_short_or_long_source() {
        let short = read(b"abc", 4).await.unwrap_err();
        assert_eq!(short.kind(), io::ErrorKind::UnexpectedEof);
        let long = read(b"abcde", 4).await.unwrap_err();
        assert_eq!(long.kind(), io::ErrorKind::InvalidData);
        assert!(long.to_string().contains("more than the 4 bytes"), "{long}");
    }
}
