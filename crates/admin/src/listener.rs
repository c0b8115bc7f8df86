//! The admin API's socket: few connections, each short-lived.
//!
//! The API shares the process (and its file descriptors) with the XMPP fronts, so
//! whoever can reach it must not be able to hold it open: at most
//! [`MAX_CONNECTIONS`] connections at once (the next waits in the kernel's
//! backlog, holding no descriptor of ours), and a connection stops being read
//! [`READ_FOR`] after it was accepted: a request still incomplete then (sent a byte
//! at a time) is dropped, and a keep-alive connection is closed after its answer.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tracing::warn;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 64;

/// How long a connection is read from.
pub const READ_FOR: Duration = Duration::from_secs(30);

pub struct Limited {
    inner: TcpListener,
    slots: Arc<Semaphore>,
    read_for: Duration,
}

impl Limited {
    pub fn new(inner: TcpListener) -> Limited {
        Limited::with(inner, MAX_CONNECTIONS, READ_FOR)
    }

    pub fn with(inner: TcpListener, connections: usize, read_for: Duration) -> Limited {
        Limited {
            inner,
            slots: Arc::new(Semaphore::new(connections)),
            read_for,
        }
    }
}

impl axum::serve::Listener for Limited {
    type Io = Connection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Connection, SocketAddr) {
        let Ok(slot) = self.slots.clone().acquire_owned().await else {
            unreachable!("the semaphore is never closed");
        };
        loop {
            match self.inner.accept().await {
                Ok((stream, peer)) => {
                    let connection = Connection {
                        stream,
                        until: Box::pin(tokio::time::sleep(self.read_for)),
                        _slot: slot,
                    };
                    return (connection, peer);
                }
                Err(e) => {
                    // Out of descriptors and the like: the XMPP fronts come first.
                    warn!(error = %e, "admin API: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// One accepted connection: its slot is given back when it is dropped.
pub struct Connection {
    stream: TcpStream,
    until: Pin<Box<Sleep>>,
    _slot: OwnedSemaphorePermit,
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.until.as_mut().poll(cx).is_ready() {
            // The end of the stream, as far as the HTTP server can tell.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_request_sent_too_slowly_is_dropped_and_gives_its_slot_back() {
        let inner = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let address = inner.local_addr().expect("its address");
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let listener = Limited::with(inner, 1, Duration::from_millis(300));
        tokio::spawn(async move { axum::serve(listener, app).await });

        // The only slot, taken by a request whose end never comes.
        let mut slow = TcpStream::connect(address).await.expect("connect");
        slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("half a request");
        let mut ignored = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), slow.read_to_end(&mut ignored))
            .await
            .expect("the server closes a connection it stopped reading")
            .expect("read");

        // Its slot is free again: a whole request is answered.
        let mut next = TcpStream::connect(address).await.expect("connect");
        next.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .expect("a request");
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(30), next.read_to_string(&mut answer))
            .await
            .expect("answered")
            .expect("read");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("ok"), "{answer}");
    }
}
