//! Byte streams as the connection driver sees them.
//!
//! Owns [`Rewind`], which hands bytes already read back to the next reader: after
//! `<starttls/>` the client may have sent the start of its TLS ClientHello in the
//! same segment, and those bytes belong to the TLS handshake (RFC 6120 §5.4.3.3);
//! and [`read_into`], which lets an idle connection wait without a read buffer.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Largest single read. One per worker thread, not per connection.
const SCRATCH_BYTES: usize = 64 * 1024;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; SCRATCH_BYTES]);
}

/// Reads what is available from `io` and appends it to `buf`, returning how many
/// bytes came (0 at end of stream).
///
/// The read goes into a per-thread scratch buffer within a single poll, and only the
/// bytes that arrived are copied into `buf`: a connection waiting for data holds no
/// read buffer at all, which is what lets thousands of idle streams stay small.
/// The copy is a memcpy of bytes just read, cheap beside the system call.
pub async fn read_into<R: AsyncRead + Unpin + ?Sized>(
    io: &mut R,
    buf: &mut BytesMut,
) -> io::Result<usize> {
    std::future::poll_fn(|cx| {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let mut read_buf = ReadBuf::new(&mut scratch[..]);
            match Pin::new(&mut *io).poll_read(cx, &mut read_buf) {
                Poll::Ready(Ok(())) => {
                    let filled = read_buf.filled();
                    buf.extend_from_slice(filled);
                    Poll::Ready(Ok(filled.len()))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        })
    })
    .await
}

/// A client or server byte stream of any kind (TCP, TLS over TCP, ...).
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

pub type BoxIo = Box<dyn Io>;

/// A stream that first yields `prefix`, then reads from `inner`.
#[derive(Debug)]
pub struct Rewind<T> {
    prefix: BytesMut,
    inner: T,
}

impl<T> Rewind<T> {
    pub fn new(prefix: BytesMut, inner: T) -> Self {
        Rewind { prefix, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                self.prefix = BytesMut::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Bytes that passed through a [`Counted`] stream each way.
#[derive(Debug, Default)]
pub struct ByteCounts {
    pub read: std::sync::atomic::AtomicU64,
    pub written: std::sync::atomic::AtomicU64,
}

impl ByteCounts {
    fn add(counter: &std::sync::atomic::AtomicU64, n: usize) {
        counter.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A stream that counts the bytes read from and written to it (for the audit
/// trail: what went over the client's socket, TLS included).
#[derive(Debug)]
pub struct Counted<T> {
    inner: T,
    counts: std::sync::Arc<ByteCounts>,
}

impl<T> Counted<T> {
    pub fn new(inner: T, counts: std::sync::Arc<ByteCounts>) -> Self {
        Counted { inner, counts }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = poll {
            ByteCounts::add(&self.counts.read, buf.filled().len() - before);
        }
        poll
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            ByteCounts::add(&self.counts.written, n);
        }
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = poll {
            ByteCounts::add(&self.counts.written, n);
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn read_into_appends_only_what_arrived() {
        let mut inner: &[u8] = b"<presence/>";
        let mut buf = BytesMut::from(&b"<r/>"[..]);
        let n = read_into(&mut inner, &mut buf).await.unwrap();
        assert_eq!(n, 11);
        assert_eq!(&buf[..], b"<r/><presence/>");
        assert_eq!(read_into(&mut inner, &mut buf).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn counted_counts_both_ways() {
        use tokio::io::AsyncWriteExt;
        let counts = std::sync::Arc::new(ByteCounts::default());
        let (a, mut b) = tokio::io::duplex(64);
        let mut c = Counted::new(a, counts.clone());
        c.write_all(b"<iq/>").await.unwrap();
        b.write_all(b"<message/>").await.unwrap();
        let mut buf = [0u8; 10];
        c.read_exact(&mut buf).await.unwrap();
        use std::sync::atomic::Ordering::Relaxed;
        assert_eq!(
            (counts.read.load(Relaxed), counts.written.load(Relaxed)),
            (10, 5)
        );
    }

    #[tokio::test]
    async fn rewind_yields_prefix_then_inner_bytes() {
        let inner: &[u8] = b" world";
        let mut r = Rewind::new(BytesMut::from(&b"hello"[..]), inner);
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"hello world");
    }
}
