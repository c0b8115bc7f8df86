//! Byte streams as the connection driver sees them.
//!
//! Owns [`Rewind`], which hands bytes already read back to the next reader: after
//! `<starttls/>` the client may have sent the start of its TLS ClientHello in the
//! same segment, and those bytes belong to the TLS handshake (RFC 6120 §5.4.3.3);
//! and [`read_into`], which lets an idle connection wait without a read buffer.

use std::cell::RefCell;
use std::future::Future;
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

/// The deadline of [`read_before`] had passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadlinePassed;

/// [`read_into`], unless `deadline` passes first. A deadline that has passed is
/// kept even when bytes are waiting: a peer that always has more to send (held
/// back by the bandwidth limit, say) must not outlive its pre-authentication
/// deadline because each read finds data at once.
pub async fn read_before<R: AsyncRead + Unpin + ?Sized>(
    deadline: tokio::time::Instant,
    io: &mut R,
    buf: &mut BytesMut,
) -> Result<io::Result<usize>, DeadlinePassed> {
    if tokio::time::Instant::now() >= deadline {
        return Err(DeadlinePassed);
    }
    tokio::time::timeout_at(deadline, read_into(io, buf))
        .await
        .map_err(|_| DeadlinePassed)
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

/// A TCP connection to or from a peer, with the send deadline.
pub type Tcp = SendDeadline<tokio::net::TcpStream>;

/// A stream whose writes fail when the peer reads nothing for `limit`
/// (`[timeouts] send`).
///
/// A peer that stops reading fills its receive window and then the local send
/// buffer, and every write to it waits from then on. Without a bound, that peer
/// holds its connection, its place in the per-address count and the other
/// direction's queue for as long as it likes: the pre-authentication and idle
/// deadlines are checked when reading, and a kick or a shutdown has to write
/// first. Here a write (or flush) that has made no progress for `limit` fails
/// with `TimedOut`, and so does every write after it: the peer is gone.
///
/// The timer exists only while a write waits, so an idle connection holds none.
#[derive(Debug)]
pub struct SendDeadline<T> {
    inner: T,
    limit: std::time::Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
    timed_out: bool,
}

impl<T> SendDeadline<T> {
    pub fn new(inner: T, limit: std::time::Duration) -> Self {
        SendDeadline {
            inner,
            limit,
            stalled: None,
            timed_out: false,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    fn timed_out_error(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the peer read nothing for {}",
                humantime::format_duration(self.limit)
            ),
        )
    }

    /// `poll` as the inner stream answered it, with the deadline applied: any
    /// answer ends the wait; a wait that outlasts `limit` is an error.
    fn deadline<R>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        match poll {
            Poll::Ready(result) => {
                self.stalled = None;
                Poll::Ready(result)
            }
            Poll::Pending => {
                let limit = self.limit;
                let stalled = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                match stalled.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        self.stalled = None;
                        self.timed_out = true;
                        Poll::Ready(Err(self.timed_out_error()))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for SendDeadline<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for SendDeadline<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.timed_out {
            return Poll::Ready(Err(self.timed_out_error()));
        }
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.deadline(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.timed_out {
            return Poll::Ready(Err(self.timed_out_error()));
        }
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.deadline(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.timed_out {
            return Poll::Ready(Err(self.timed_out_error()));
        }
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.deadline(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Sends a FIN, or fails: it does not wait for the peer.
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

    #[tokio::test(start_paused = true)]
    async fn a_deadline_that_has_passed_ends_the_read_though_bytes_are_waiting() {
        let mut inner: &[u8] = b"<presence/>";
        let mut buf = BytesMut::new();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
        assert_eq!(
            read_before(deadline, &mut inner, &mut buf)
                .await
                .unwrap()
                .unwrap(),
            11
        );
        tokio::time::advance(std::time::Duration::from_secs(3)).await;
        let mut more: &[u8] = b"<presence/>";
        assert!(matches!(
            read_before(deadline, &mut more, &mut buf).await,
            Err(DeadlinePassed)
        ));
        assert_eq!(&buf[..], b"<presence/>");
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

    #[tokio::test(start_paused = true)]
    async fn a_write_the_peer_never_reads_fails_after_the_limit_and_so_do_later_ones() {
        use tokio::io::AsyncWriteExt;
        let limit = std::time::Duration::from_secs(30);
        // A peer with room for 16 bytes that never reads.
        let (a, _peer) = tokio::io::duplex(16);
        let mut w = SendDeadline::new(a, limit);
        let started = tokio::time::Instant::now();
        let e = w
            .write_all(&[b' '; 64])
            .await
            .expect_err("the peer never reads");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(e.to_string(), "the peer read nothing for 30s");
        assert_eq!(started.elapsed(), limit);
        // The peer is gone: the next write fails at once.
        let e = w.write_all(b"</stream:stream>").await.expect_err("gone");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), limit);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_that_keeps_reading_is_not_cut_off() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let limit = std::time::Duration::from_secs(30);
        let (a, mut peer) = tokio::io::duplex(16);
        let mut w = SendDeadline::new(a, limit);
        // The peer takes 16 bytes every 20 s: each wait is shorter than the limit,
        // though the whole write takes far longer.
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = [0u8; 16];
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(20)).await;
                match peer.read(&mut buf).await {
                    Ok(0) | Err(_) => return got,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        });
        let started = tokio::time::Instant::now();
        w.write_all(&[b'x'; 128])
            .await
            .expect("a slow reader still reads");
        assert!(started.elapsed() > limit * 3);
        drop(w);
        assert_eq!(reader.await.unwrap().len(), 128);
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
