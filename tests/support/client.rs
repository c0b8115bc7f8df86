//! `TestClient`: a raw XMPP client for asserting wire behaviour.
//!
//! It sends exactly the bytes a test gives it and hands back exactly the bytes the peer
//! sent, cut into stream-level items by quick-xml (see [`super::xml`]). Blocking std I/O
//! with rustls: simple to reason about, and every read has a deadline, so a hung peer fails
//! the test within [`IO_TIMEOUT`] instead of hanging it.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, ProtocolVersion, RootCertStore, StreamOwned};
use socket2::{Domain, Protocol, Socket, Type};

use super::xml::{self, ItemKind};
use super::{Account, DOMAIN, IO_TIMEOUT};

/// Which TLS versions a client offers; channel binding differs between 1.2 and 1.3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersions {
    /// TLS 1.3 and 1.2, as a normal client.
    Any,
    Tls12Only,
    Tls13Only,
}

/// A rustls client configuration that trusts exactly `ca` (a test CA, see
/// [`super::TestCert`]), with no ALPN (direct TLS connections add `xmpp-client`).
pub fn tls_client_config(ca: &CertificateDer<'static>, versions: TlsVersions) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots
        .add(ca.clone())
        .expect("adding the test CA to the client's trust store");
    // An explicit provider: if anything else in the build enables another rustls crypto
    // backend, the process-wide default becomes ambiguous and `builder()` would panic.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider);
    let builder = match versions {
        TlsVersions::Any => builder.with_safe_default_protocol_versions(),
        TlsVersions::Tls12Only => builder.with_protocol_versions(&[&rustls::version::TLS12]),
        TlsVersions::Tls13Only => builder.with_protocol_versions(&[&rustls::version::TLS13]),
    }
    .expect("the ring provider supports the chosen TLS versions");
    Arc::new(builder.with_root_certificates(roots).with_no_client_auth())
}

enum Transport {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
    /// Only between taking the TCP stream out for a TLS upgrade and putting it back.
    Upgrading,
}

impl Transport {
    fn socket(&self) -> &TcpStream {
        match self {
            Transport::Plain(s) => s,
            Transport::Tls(s) => &s.sock,
            Transport::Upgrading => unreachable!("transport used during a TLS upgrade"),
        }
    }
}

/// What the TLS layer negotiated, for assertions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    pub version: Option<ProtocolVersion>,
    pub alpn: Option<Vec<u8>>,
}

/// A raw XMPP client connection (see the module documentation).
pub struct TestClient {
    transport: Transport,
    /// Bytes received and not yet returned as an item.
    buf: Vec<u8>,
    /// The domain put in stream headers and used as the TLS server name.
    pub domain: String,
    /// How long one `read_*` call may wait; [`IO_TIMEOUT`] unless a test changes it.
    pub timeout: Duration,
    /// The last stream header the peer sent.
    pub stream_header: Option<String>,
}

impl TestClient {
    /// A plain TCP connection to `addr`, for stream headers to [`DOMAIN`].
    pub fn connect(addr: SocketAddr) -> TestClient {
        let tcp = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
        configure_tcp(&tcp);
        TestClient::from_tcp(tcp)
    }

    /// A plain TCP connection from a chosen loopback source address (any of 127.0.0.0/8
    /// works on Linux), so a test can tell its connection's address from the proxy's own
    /// 127.0.0.1 in what the server records.
    pub fn connect_from(source: IpAddr, addr: SocketAddr) -> TestClient {
        let tcp = connect_socket(source, addr, None);
        configure_tcp(&tcp);
        TestClient::from_tcp(tcp)
    }

    fn from_tcp(tcp: TcpStream) -> TestClient {
        TestClient {
            transport: Transport::Plain(tcp),
            buf: Vec::new(),
            domain: DOMAIN.to_string(),
            timeout: IO_TIMEOUT,
            stream_header: None,
        }
    }

    /// A direct TLS connection (XEP-0368): ALPN `xmpp-client`, SNI [`DOMAIN`].
    pub fn connect_direct_tls(addr: SocketAddr, tls: &Arc<ClientConfig>) -> TestClient {
        let mut client = TestClient::connect(addr);
        let mut config = ClientConfig::clone(tls);
        config.alpn_protocols = vec![b"xmpp-client".to_vec()];
        client.upgrade_to_tls(Arc::new(config));
        client
    }

    /// Sends raw bytes, unchanged.
    pub fn send_raw(&mut self, bytes: impl AsRef<[u8]>) {
        let bytes = bytes.as_ref();
        let result = match &mut self.transport {
            Transport::Plain(s) => s.write_all(bytes).and_then(|()| s.flush()),
            Transport::Tls(s) => s.write_all(bytes).and_then(|()| s.flush()),
            Transport::Upgrading => unreachable!("send during a TLS upgrade"),
        };
        result.unwrap_or_else(|e| {
            panic!(
                "sending {:?}: {e}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            )
        });
    }

    /// Sends a client stream header to [`Self::domain`].
    pub fn send_stream_header(&mut self) {
        let header = format!(
            "<?xml version='1.0'?><stream:stream to='{}' version='1.0' xml:lang='en' \
             xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>",
            xml::escape(&self.domain)
        );
        self.send_raw(header);
    }

    /// Reads the peer's stream header; panics if the next item is anything else.
    pub fn read_stream_header(&mut self) -> String {
        let (kind, item) = self.read_item();
        assert_eq!(
            kind,
            ItemKind::StreamHeader,
            "expected a stream header, got {item:?}"
        );
        self.stream_header = Some(item.clone());
        item
    }

    /// Opens (or restarts) the stream: sends a header, reads the peer's header and its
    /// `<stream:features/>`, which it returns.
    pub fn open_stream(&mut self) -> String {
        self.send_stream_header();
        self.read_stream_header();
        let features = self.read_element();
        assert!(
            xml::root_name(&features).ends_with("features"),
            "expected stream features after the stream header, got {features:?}"
        );
        features
    }

    /// Negotiates STARTTLS on an open stream and restarts the stream; returns the features
    /// offered over TLS.
    pub fn starttls(&mut self, tls: &Arc<ClientConfig>) -> String {
        self.send_raw("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
        let answer = self.read_element();
        assert_eq!(
            xml::root_name(&answer),
            "proceed",
            "expected <proceed/> to STARTTLS, got {answer:?}"
        );
        self.upgrade_to_tls(tls.clone());
        self.open_stream()
    }

    /// SASL PLAIN (RFC 4616) as `account`, then the stream restart; returns the features
    /// after authentication. Panics with the peer's answer if it is not `<success/>`.
    pub fn auth_plain(&mut self, account: Account) -> String {
        match self.try_auth_plain(account.user, account.password) {
            Ok(features) => features,
            Err(answer) => panic!("SASL PLAIN as {} failed: {answer}", account.user),
        }
    }

    /// SASL PLAIN with any credentials. `Ok(features after restart)` on `<success/>`,
    /// `Err(the peer's answer)` otherwise.
    pub fn try_auth_plain(&mut self, user: &str, password: &str) -> Result<String, String> {
        let credentials = base64(format!("\0{user}\0{password}").as_bytes());
        self.send_raw(format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{credentials}</auth>"
        ));
        let answer = self.read_element();
        if xml::root_name(&answer) != "success" {
            return Err(answer);
        }
        Ok(self.open_stream())
    }

    /// Binds a resource (RFC 6120 §7) and returns the full JID the server assigned.
    pub fn bind(&mut self, resource: Option<&str>) -> String {
        let resource = resource
            .map(|r| format!("<resource>{}</resource>", xml::escape(r)))
            .unwrap_or_default();
        self.send_raw(format!(
            "<iq type='set' id='bind-1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>{resource}</bind></iq>"
        ));
        let answer =
            self.read_element_matching(|e| xml::root_attr(e, "id").as_deref() == Some("bind-1"));
        assert_eq!(
            xml::root_attr(&answer, "type").as_deref(),
            Some("result"),
            "resource binding failed: {answer:?}"
        );
        xml::text(&answer, "jid")
            .unwrap_or_else(|| panic!("no <jid/> in the bind result {answer:?}"))
    }

    /// Connects over plain TCP, authenticates as `account` with PLAIN and binds `resource`.
    /// Returns the client and its full JID.
    pub fn login(addr: SocketAddr, account: Account, resource: &str) -> (TestClient, String) {
        let mut client = TestClient::connect(addr);
        client.open_stream();
        client.auth_plain(account);
        let jid = client.bind(Some(resource));
        (client, jid)
    }

    /// Reads the next stream-level item, whatever it is: a stream header (with any XML
    /// declaration), a complete top-level element, or `</stream:stream>`.
    pub fn read_item(&mut self) -> (ItemKind, String) {
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Some((kind, range)) = xml::next_item(&self.buf) {
                let item = String::from_utf8_lossy(&self.buf[range.clone()]).into_owned();
                self.buf.drain(..range.end);
                return (kind, item);
            }
            match self.read_some(deadline) {
                Ok(0) => panic!(
                    "the peer closed the connection; received and not yet read: {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
                Ok(_) => {}
                Err(e) => panic!(
                    "no complete XML item within {:?} ({e}); received and not yet read: {:?}",
                    self.timeout,
                    String::from_utf8_lossy(&self.buf)
                ),
            }
        }
    }

    /// The raw bytes of the next item (see [`Self::read_item`]) as text. Element-level
    /// assertions use [`super::xml`] on it.
    pub fn read_element(&mut self) -> String {
        self.read_item().1
    }

    /// Reads items until one satisfies `wanted` (skipping presence broadcasts, roster
    /// pushes and the like); all within one [`Self::timeout`].
    pub fn read_element_matching(&mut self, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + self.timeout;
        let mut skipped = Vec::new();
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            assert!(
                !remaining.is_zero(),
                "no matching element within {:?}; skipped {skipped:?}",
                self.timeout
            );
            let saved = std::mem::replace(&mut self.timeout, remaining);
            let (_, item) = self.read_item();
            self.timeout = saved;
            if wanted(&item) {
                return item;
            }
            skipped.push(item);
        }
    }

    /// Everything the peer sends until it closes the connection (buffered bytes included),
    /// as text. Panics if it does not close within [`Self::timeout`].
    pub fn read_until_closed(&mut self) -> String {
        let deadline = Instant::now() + self.timeout;
        loop {
            match self.read_some(deadline) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if is_closed(&e) => break,
                Err(e) => panic!(
                    "the peer did not close the connection within {:?} ({e}); received: {:?}",
                    self.timeout,
                    String::from_utf8_lossy(&self.buf)
                ),
            }
        }
        String::from_utf8_lossy(&std::mem::take(&mut self.buf)).into_owned()
    }

    /// What TLS negotiated, or `None` on a plaintext connection.
    pub fn tls_info(&self) -> Option<TlsInfo> {
        match &self.transport {
            Transport::Tls(s) => Some(TlsInfo {
                version: s.conn.protocol_version(),
                alpn: s.conn.alpn_protocol().map(<[u8]>::to_vec),
            }),
            _ => None,
        }
    }

    /// Our end's address, as a server behind a proxy should report it.
    pub fn local_addr(&self) -> SocketAddr {
        self.transport
            .socket()
            .local_addr()
            .expect("local address of a connected socket")
    }

    /// Reads at most one chunk into `buf`, waiting until `deadline`.
    fn read_some(&mut self, deadline: Instant) -> io::Result<usize> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"));
        }
        self.transport.socket().set_read_timeout(Some(remaining))?;
        let mut chunk = [0u8; 16 * 1024];
        let n = match &mut self.transport {
            Transport::Plain(s) => s.read(&mut chunk)?,
            Transport::Tls(s) => s.read(&mut chunk)?,
            Transport::Upgrading => unreachable!("read during a TLS upgrade"),
        };
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Runs a TLS handshake on the plaintext connection now (bounded by the socket
    /// timeouts), with SNI [`Self::domain`]. [`Self::starttls`] and
    /// [`Self::connect_direct_tls`] use it; a test calls it directly to negotiate by hand
    /// (e.g. after reading `<proceed/>` itself). Panics if bytes are buffered unread.
    pub fn upgrade_to_tls(&mut self, config: Arc<ClientConfig>) {
        assert!(
            self.buf.is_empty(),
            "the peer sent bytes before the TLS handshake: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        let mut tcp = match std::mem::replace(&mut self.transport, Transport::Upgrading) {
            Transport::Plain(tcp) => tcp,
            Transport::Tls(_) => panic!("TLS requested on a connection that already has it"),
            Transport::Upgrading => unreachable!("nested TLS upgrade"),
        };
        let name = ServerName::try_from(self.domain.clone())
            .unwrap_or_else(|e| panic!("{:?} is not a TLS server name: {e}", self.domain));
        let mut conn = ClientConnection::new(config, name).expect("creating a TLS client session");
        tcp.set_read_timeout(Some(self.timeout))
            .expect("setting the socket read timeout");
        while conn.is_handshaking() {
            if let Err(e) = conn.complete_io(&mut tcp) {
                panic!("TLS handshake with {} failed: {e}", self.domain);
            }
        }
        self.transport = Transport::Tls(Box::new(StreamOwned::new(conn, tcp)));
    }
}

fn configure_tcp(tcp: &TcpStream) {
    tcp.set_nodelay(true).expect("setting TCP_NODELAY");
    tcp.set_write_timeout(Some(IO_TIMEOUT))
        .expect("setting the socket write timeout");
}

/// Whether a read error means the peer is gone rather than slow.
fn is_closed(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            // rustls: the peer closed TCP without a TLS close_notify.
            | io::ErrorKind::UnexpectedEof
    )
}

/// Standard base64 with padding (RFC 4648 §4), for SASL payloads.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

const HEADER: &str = "<?xml version='1.0'?><stream:stream to='example.test' version='1.0' \
                      xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";

/// A TCP connection from `source` that sends a stream header. `Some(connection)` once
/// the server's stream features arrived through xmppwall; `None` when xmppwall closed
/// the connection without sending a single byte (a refusal at the gate).
pub fn stream_from(source: IpAddr, addr: SocketAddr) -> Option<TcpStream> {
    let mut tcp = connect_socket(source, addr, None);
    tcp.set_read_timeout(Some(IO_TIMEOUT))
        .expect("setting the read timeout");
    // A refused connection may already be reset: the write is allowed to fail.
    let _ = tcp.write_all(HEADER.as_bytes());
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tcp.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                got.extend_from_slice(&chunk[..n]);
                if String::from_utf8_lossy(&got).contains("</stream:features>") {
                    return Some(tcp);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                ) =>
            {
                break
            }
            Err(e) => panic!(
                "from {source}: neither features nor a close within {IO_TIMEOUT:?} ({e}); got {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    assert!(
        got.is_empty(),
        "a refused connection got bytes: {:?}",
        String::from_utf8_lossy(&got)
    );
    None
}

/// A TCP connection from `source` to `addr` with a small receive buffer (set before
/// connecting, so the window it advertises stays small): a peer that will soon stop
/// reading.
pub fn quiet_connection(source: IpAddr, addr: SocketAddr) -> TcpStream {
    let tcp = connect_socket(source, addr, Some(4096));
    tcp.set_read_timeout(Some(IO_TIMEOUT))
        .expect("setting the read timeout");
    tcp
}

/// A TCP connection from `source` (any of 127.0.0.0/8) to `addr`, with a receive
/// buffer of `recv_buffer` bytes when given (set before connecting, so the window
/// it advertises stays that small).
fn connect_socket(source: IpAddr, addr: SocketAddr, recv_buffer: Option<usize>) -> TcpStream {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .expect("creating a TCP socket");
    if let Some(bytes) = recv_buffer {
        socket
            .set_recv_buffer_size(bytes)
            .expect("setting the receive buffer");
    }
    socket
        .bind(&SocketAddr::new(source, 0).into())
        .unwrap_or_else(|e| panic!("binding the client socket to {source}: {e}"));
    socket
        .connect_timeout(&addr.into(), IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("connecting from {source} to {addr}: {e}"));
    TcpStream::from(socket)
}

/// Writes `send` on `tcp`, then reads until what came contains `wait_for`; returns
/// what came.
pub fn exchange(tcp: &mut TcpStream, send: &str, wait_for: &str) -> String {
    tcp.write_all(send.as_bytes()).expect("writing");
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(wait_for) {
        match tcp.read(&mut chunk) {
            Ok(0) | Err(_) => panic!(
                "waiting for {wait_for:?}: the connection ended or stalled after {:?}",
                String::from_utf8_lossy(&got)
            ),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Writes `element` on `tcp` over and over and never reads, for at most `bound`.
/// Returns how long after the flood began the other side closed the connection (a
/// write failed with a reset or a broken pipe), or `None` if it was still open at
/// `bound`.
pub fn flood_until_closed(mut tcp: TcpStream, element: &str, bound: Duration) -> Option<Duration> {
    tcp.set_write_timeout(Some(Duration::from_millis(200)))
        .expect("setting the write timeout");
    let batch = element.repeat(64);
    let started = Instant::now();
    while started.elapsed() < bound {
        match tcp.write(batch.as_bytes()) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                ) =>
            {
                return Some(started.elapsed())
            }
            Err(e) => panic!("flooding: {e}"),
        }
    }
    None
}

/// A peer that stops reading: a [`quiet_connection`] that goes through `opening`
/// (each part sent, then read until its marker, as in a login), then floods
/// `element` without reading ([`flood_until_closed`]).
pub fn flood_without_reading(
    source: IpAddr,
    addr: SocketAddr,
    opening: &[(&str, &str)],
    element: &str,
    bound: Duration,
) -> Option<Duration> {
    let mut tcp = quiet_connection(source, addr);
    for (send, wait_for) in opening {
        exchange(&mut tcp, send, wait_for);
    }
    flood_until_closed(tcp, element, bound)
}
