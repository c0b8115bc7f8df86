//! The XMPP both ends of the benchmark speak: a framed connection, the client's
//! login (stream, SASL PLAIN, restart, bind) and the constants the sink answers with.

use std::ops::Range;

use anyhow::{bail, Context as _};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::scan::{self, Token};

pub const DOMAIN: &str = "localhost";
pub const SASL_NS: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
pub const BIND_NS: &str = "urn:ietf:params:xml:ns:xmpp-bind";
pub const PING_NS: &str = "urn:xmpp:ping";
/// The sink's answer to an `end-*` ping carries its counters in this namespace.
pub const BENCH_NS: &str = "urn:xmppwall:bench";

/// SASL PLAIN for `bench{n}` (RFC 4616: authzid, authcid, password, NUL-separated).
/// Each connection is its own account, as distinct users would be: xmppwall keeps
/// per-account limits (resources, bandwidth), and one shared account would hit them.
/// The sink accepts any credentials; xmppwall only watches the outcome.
fn auth(n: usize) -> Vec<u8> {
    auth_plain(&format!("bench{n}"), "secret")
}

/// SASL PLAIN for `user` with `password`.
pub fn auth_plain(user: &str, password: &str) -> Vec<u8> {
    let credentials = format!("\0{user}\0{password}");
    format!(
        "<auth xmlns='{SASL_NS}' mechanism='PLAIN'>{}</auth>",
        base64(credentials.as_bytes())
    )
    .into_bytes()
}

/// Standard base64 with padding (RFC 4648 §4); the one thing SASL needs encoded.
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let v = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(v >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}
const BIND: &[u8] = b"<iq type='set' id='bind-1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
<resource>bench</resource></bind></iq>";

pub fn client_header() -> Vec<u8> {
    format!(
        "<?xml version='1.0'?><stream:stream to='{DOMAIN}' version='1.0' xml:lang='en' \
         xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
    )
    .into_bytes()
}

/// Read buffer growth step. Big enough that a throughput read takes many stanzas.
const READ_CHUNK: usize = 64 * 1024;

/// A byte stream cut into stream-level tokens.
pub struct Framed<S> {
    io: S,
    buf: Vec<u8>,
    /// Start of the bytes not yet handed out.
    start: usize,
    /// Bytes of the token last returned, dropped at the next call.
    pending: usize,
}

impl<S: AsyncRead + Unpin> Framed<S> {
    pub fn new(io: S) -> Self {
        Framed {
            io,
            buf: Vec::new(),
            start: 0,
            pending: 0,
        }
    }

    /// The next token and where its bytes are (see [`Self::bytes`]); `None` when
    /// the peer closed the connection between tokens.
    pub async fn next(&mut self) -> anyhow::Result<Option<(Token, Range<usize>)>> {
        self.start += self.pending;
        self.pending = 0;
        loop {
            if let Some((token, offset, len)) = scan::next(&self.buf[self.start..])? {
                let at = self.start + offset;
                self.pending = offset + len;
                return Ok(Some((token, at..at + len)));
            }
            // Only a partial token is left: move it to the front before reading more.
            self.buf.drain(..self.start);
            self.start = 0;
            if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
                self.buf.reserve(READ_CHUNK);
            }
            let n = self.io.read_buf(&mut self.buf).await?;
            if n == 0 {
                if self.buf.iter().any(|b| !b.is_ascii_whitespace()) {
                    bail!("connection closed in the middle of an element");
                }
                return Ok(None);
            }
        }
    }

    /// The next token, which must exist.
    pub async fn expect(&mut self, what: &str) -> anyhow::Result<(Token, Range<usize>)> {
        match self.next().await? {
            Some(t) => Ok(t),
            None => bail!("connection closed while waiting for {what}"),
        }
    }

    pub fn bytes(&self, range: Range<usize>) -> &[u8] {
        &self.buf[range]
    }

    /// The connection and whatever was read past the last token handed out.
    pub fn into_parts(self) -> (S, Vec<u8>) {
        let rest = self.buf[self.start + self.pending..].to_vec();
        (self.io, rest)
    }

    /// Gives back memory an idle connection does not need.
    pub fn shrink(&mut self) {
        if self.start + self.pending == self.buf.len() {
            self.buf = Vec::new();
            self.start = 0;
            self.pending = 0;
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Framed<S> {
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.io.write_all(bytes).await?;
        // A no-op on TCP; on TLS it pushes the records out.
        self.io.flush().await
    }
}

/// Shows at most a few hundred bytes of an unexpected element in an error.
pub fn excerpt(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(300)];
    String::from_utf8_lossy(cut).into_owned()
}

/// Reads the server's (optional) declaration, stream header and features.
pub async fn read_features<S: AsyncRead + AsyncWrite + Unpin>(
    f: &mut Framed<S>,
    wanted: &str,
) -> anyhow::Result<()> {
    loop {
        let (token, range) = f.expect("the stream header").await?;
        match token {
            Token::Declaration => {}
            Token::StreamOpen => break,
            _ => bail!("expected a stream header, got {}", excerpt(f.bytes(range))),
        }
    }
    let (token, range) = f.expect("stream features").await?;
    let features = f.bytes(range);
    if token != Token::Element
        || scan::tag_name(features) != b"stream:features"
        || !scan::contains(features, wanted.as_bytes())
    {
        bail!("expected features with {wanted}, got {}", excerpt(features));
    }
    Ok(())
}

/// Logs in as the benchmark user: stream, SASL PLAIN, restart, bind. Returns once
/// the bind result arrived, i.e. the stream is established and xmppwall relays it.
pub async fn login<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
    user: usize,
) -> anyhow::Result<Framed<S>> {
    login_with(io, &auth(user)).await
}

/// Logs in as `user` with `password` (SASL PLAIN), as [`login`] does.
pub async fn login_as<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
    user: &str,
    password: &str,
) -> anyhow::Result<Framed<S>> {
    login_with(io, &auth_plain(user, password)).await
}

async fn login_with<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
    auth: &[u8],
) -> anyhow::Result<Framed<S>> {
    let mut f = Framed::new(io);
    let header = client_header();
    f.send(&header).await.context("sending the stream header")?;
    read_features(&mut f, SASL_NS).await?;
    f.send(auth).await?;
    let (_, range) = f.expect("the SASL outcome").await?;
    let outcome = f.bytes(range);
    if scan::tag_name(outcome) != b"success" {
        bail!("authentication failed: {}", excerpt(outcome));
    }
    // RFC 6120 §6.4.6: a new stream after SASL success.
    f.send(&header).await?;
    read_features(&mut f, BIND_NS).await?;
    f.send(BIND).await?;
    let (_, range) = f.expect("the bind result").await?;
    let result = f.bytes(range);
    if scan::attribute(result, "type") != Some(b"result")
        || scan::attribute(result, "id") != Some(b"bind-1")
    {
        bail!("bind failed: {}", excerpt(result));
    }
    Ok(f)
}

/// `<iq type='get' id='ID'><ping xmlns='urn:xmpp:ping'/></iq>` (XEP-0199).
pub fn ping(id: &str) -> Vec<u8> {
    format!("<iq type='get' id='{id}'><ping xmlns='{PING_NS}'/></iq>").into_bytes()
}

/// Waits for the result of the ping `id`, skipping anything else the server says.
/// Returns the result's bytes range.
pub async fn await_result<S: AsyncRead + AsyncWrite + Unpin>(
    f: &mut Framed<S>,
    id: &[u8],
) -> anyhow::Result<Range<usize>> {
    loop {
        let (token, range) = f.expect("a ping result").await?;
        let bytes = f.bytes(range.clone());
        match token {
            Token::Element if scan::attribute(bytes, "id") == Some(id) => {
                if scan::attribute(bytes, "type") != Some(b"result") {
                    bail!("ping failed: {}", excerpt(bytes));
                }
                return Ok(range);
            }
            Token::Element => {}
            _ => bail!(
                "unexpected while waiting for a ping result: {}",
                excerpt(bytes)
            ),
        }
    }
}

/// Parses a decimal attribute value.
pub fn number(element: &[u8], name: &str) -> anyhow::Result<u64> {
    let raw = scan::attribute(element, name)
        .with_context(|| format!("no {name} attribute in {}", excerpt(element)))?;
    std::str::from_utf8(raw)
        .ok()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("{name} is not a number in {}", excerpt(element)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
        assert_eq!(base64(b"\0bench\0bench"), "AGJlbmNoAGJlbmNo");
    }
}
