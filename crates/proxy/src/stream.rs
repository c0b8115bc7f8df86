//! Reading an XMPP stream from a socket, shared by every front: frames before the
//! relay starts ([`FrameReader`]), the stream error that reports a framing error, and
//! releasing read memory between stanzas.
//!
//! Owns no protocol state; sessions decide what frames mean.

use std::io;

use bytes::{Buf, BytesMut};
use tokio::io::AsyncRead;
use tokio::sync::watch;
use tokio::time::Instant;
use xmppwall_xml::{Error as FramerError, Framer, Limit, Token};

use crate::io::read_before;
use crate::stream_error::{StreamCondition, StreamError};

/// Reads frames from one side before the relay starts.
pub struct FrameReader {
    pub framer: Framer,
    pub buf: BytesMut,
}

pub enum ReadOutcome {
    Frame(Token, usize),
    Closed,
    TimedOut,
    Shutdown,
    Framing(FramerError),
    Io(io::Error),
}

impl FrameReader {
    pub fn new(limits: xmppwall_xml::Limits) -> Self {
        FrameReader {
            framer: Framer::new(limits),
            buf: BytesMut::new(),
        }
    }

    /// The next frame found at `offset` in the buffer; its bytes are
    /// `self.buf[offset..offset + len]` until [`Self::consume`]. Bytes before
    /// `offset` are kept (the stream header, to be replayed to the server).
    pub async fn next<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
        offset: usize,
        deadline: Instant,
        shutdown: &mut watch::Receiver<bool>,
    ) -> ReadOutcome {
        loop {
            match self.framer.next(&self.buf[offset..]) {
                Ok(Some(frame)) => return ReadOutcome::Frame(frame.token, frame.len),
                Ok(None) => {}
                Err(e) => return ReadOutcome::Framing(e),
            }
            if let Some(end) = self.read_more(io, deadline, shutdown).await {
                return end;
            }
        }
    }

    /// The first byte the peer sent, waiting for it if none came yet; the byte
    /// stays in the buffer.
    pub async fn first_byte<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
        deadline: Instant,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<u8, ReadOutcome> {
        loop {
            if let Some(&first) = self.buf.first() {
                return Ok(first);
            }
            if let Some(end) = self.read_more(io, deadline, shutdown).await {
                return Err(end);
            }
        }
    }

    /// Appends what the peer sends next; `Some` when nothing more will come.
    async fn read_more<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
        deadline: Instant,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<ReadOutcome> {
        let read = tokio::select! {
            r = read_before(deadline, io, &mut self.buf) => r,
            _ = shutdown.changed() => return Some(ReadOutcome::Shutdown),
        };
        match read {
            Err(_) => Some(ReadOutcome::TimedOut),
            Ok(Ok(0)) => Some(ReadOutcome::Closed),
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(ReadOutcome::Io(e)),
        }
    }

    pub fn consume(&mut self, len: usize) {
        self.buf.advance(len);
    }
}

/// Maps a framing error to the stream error of RFC 6120 §4.9.3 that reports it.
pub fn framing_error(e: FramerError) -> StreamError {
    match e {
        FramerError::RestrictedXml(what) => {
            StreamError::new(StreamCondition::RestrictedXml).with_text(what)
        }
        FramerError::NotWellFormed(what) => {
            StreamError::new(StreamCondition::NotWellFormed).with_text(what)
        }
        FramerError::TextAtStreamLevel => StreamError::new(StreamCondition::BadFormat)
            .with_text("character data is not allowed between stanzas"),
        FramerError::LimitExceeded(Limit::ElementBytes) => {
            // XEP-0205 §2.5: a seriously large stanza may close the stream.
            StreamError::new(StreamCondition::PolicyViolation)
                .with_app_condition("stanza-too-big")
                .with_text("stanza too large")
        }
        FramerError::LimitExceeded(limit) => StreamError::new(StreamCondition::PolicyViolation)
            .with_text(match limit {
                Limit::Depth => "elements nested too deeply",
                Limit::Elements => "too many elements in one stanza",
                Limit::Attributes => "too many attributes on one element",
                Limit::NameBytes => "element or attribute name too long",
                Limit::AttributeValueBytes => "attribute value too long",
                Limit::ElementBytes => "stanza too large",
            }),
        FramerError::InvalidNamespace => StreamError::new(StreamCondition::InvalidNamespace)
            .with_text("the stream header is not in the streams namespace"),
    }
}

/// The first byte of a TLS record carrying a handshake message (RFC 8446 §5.1), as a
/// ClientHello starts. It is a control character, which no XML stream can start
/// with (XML 1.0 §2.2), so seeing it where a stream header was expected means the
/// peer is starting TLS at once.
pub const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Whether a peer waits for a stream header from xmppwall's side: at the start, and
/// after a restart (RFC 6120 §4.3.3), until the server's header has gone to it. An
/// error sent meanwhile needs a header first (§4.9.1.2), without the XML
/// declaration if the server's has gone out already (a document has one, XML 1.0
/// §2.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderDue {
    due: bool,
    declared: bool,
}

impl HeaderDue {
    /// A stream the peer opened and nobody answered yet.
    pub const fn new() -> HeaderDue {
        HeaderDue {
            due: true,
            declared: false,
        }
    }

    /// A stream that has its header already.
    pub const fn answered() -> HeaderDue {
        HeaderDue {
            due: false,
            declared: false,
        }
    }

    /// The peer's stream starts over: it waits for a new header.
    pub fn restart(&mut self) {
        *self = HeaderDue::new();
    }

    /// A stream-level token of the server's went to the peer.
    pub fn passed(&mut self, token: Token) {
        match token {
            Token::XmlDeclaration if self.due => self.declared = true,
            Token::StreamOpen => *self = HeaderDue::answered(),
            _ => {}
        }
    }

    pub fn is_due(&self) -> bool {
        self.due
    }

    /// `header` (which starts with an XML declaration), as it may still be sent.
    pub fn header(&self, mut header: Vec<u8>) -> Vec<u8> {
        if self.declared {
            if let Some(end) = header.windows(2).position(|w| w == b"?>") {
                header.drain(..end + 2);
            }
        }
        header
    }
}

impl Default for HeaderDue {
    fn default() -> Self {
        HeaderDue::new()
    }
}

/// Drops the first `consumed` bytes; an emptied buffer is released entirely, so a
/// connection between stanzas holds no read memory.
pub fn release_consumed(buf: &mut BytesMut, consumed: usize) {
    if consumed == buf.len() {
        *buf = BytesMut::new();
    } else {
        buf.advance(consumed);
    }
}
