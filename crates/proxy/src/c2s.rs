//! The client-to-server front: one task per client connection.
//!
//! A thin tokio shell around [`crate::session`]: it reads, frames, asks the session
//! what to do, and writes. The phases (see `LIFECYCLE.md`): STARTTLS answered by
//! xmppwall itself (or direct TLS, XEP-0368), the client's post-TLS stream header,
//! the server connection (PROXY header, then the client's header replayed), and the
//! relay in both directions until either side ends the stream.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_rustls::{LazyConfigAcceptor, TlsConnector};
use tracing::{debug, info, warn};
use xmppwall_xml::view::StartTag;
use xmppwall_xml::Token;

use crate::config::{Config, Listener, ListenerTls};
use crate::io::{read_before, read_into, BoxIo, ByteCounts, Counted, Rewind, SendDeadline};
use crate::proxy_header;
use crate::server::Shared;
use crate::session::{
    self, namespace, C2sSession, ClientAction, ClientHeader, SaslOutcome, ServerAction, CLIENT_NS,
    TLS_NS,
};
use crate::sessions::{LiveSession, Registration};
use crate::stats::{Outcome, RecentVerdict, Stats, PROCESSING_SAMPLE_EVERY};
use crate::stream::{
    framing_error, release_consumed, FrameReader, ReadOutcome, TLS_HANDSHAKE_RECORD,
};
use crate::stream_error::{StreamCondition, StreamError};
use crate::tls::describe_handshake_error;
use std::time::SystemTime;
use xmppwall_policy::limiter::auth_banned_error;
use xmppwall_policy::rules::Hook;
use xmppwall_policy::{ConnectionTicket, LimitKind, Limiter, Throttle};
use xmppwall_store::{ConnectionRecord, VerdictSource};

/// The client's socket, counting the bytes each way for the audit trail.
type ClientTcp = Counted<SendDeadline<TcpStream>>;

/// What one connection moved, for its audit record.
#[derive(Debug, Default)]
struct Traffic {
    bytes: Arc<ByteCounts>,
    stanzas_to_server: std::sync::atomic::AtomicU64,
    stanzas_to_client: std::sync::atomic::AtomicU64,
    /// The account or bound JID, once the stream got that far.
    identity: Mutex<Option<String>>,
}

/// The largest element accepted from the server (a big roster or MAM page).
const SERVER_ELEMENT_BYTES: usize = 8 * 1024 * 1024;
/// The most elements in one element from the server (a roster of thousands of items).
const SERVER_ELEMENTS: usize = 1_000_000;
/// Messages from the client direction to the client writer: bounded, so a client
/// that does not read stops being read.
const TO_CLIENT_QUEUE: usize = 32;
/// Stanzas xmppwall sends the server in the user's name (answers to strangers) at
/// most waiting at once; more are dropped and counted as drops.
const TO_SERVER_QUEUE: usize = 16;

/// How a connection ended, for the log.
#[derive(Debug)]
enum End {
    /// The client closed the connection or its stream.
    ClientClosed,
    /// The server closed the connection or its stream.
    ServerClosed,
    /// xmppwall ended the stream with this error.
    Refused(StreamCondition),
    /// xmppwall ended the stream with a protocol-specific failure.
    RefusedOther,
    Shutdown,
    ClientIo(io::Error),
    ServerIo(io::Error),
}

impl End {
    fn outcome(&self) -> Outcome {
        match self {
            End::ClientClosed => Outcome::ClientClosed,
            End::ServerClosed => Outcome::ServerClosed,
            End::Refused(_) | End::RefusedOther => Outcome::StreamError,
            End::Shutdown => Outcome::Shutdown,
            End::ClientIo(_) => Outcome::ClientIoError,
            End::ServerIo(_) => Outcome::ServerIoError,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            End::ClientClosed => "client closed",
            End::ServerClosed => "server closed",
            End::Refused(condition) => condition.name(),
            End::RefusedOther => "refused",
            End::Shutdown => "shutdown",
            End::ClientIo(_) => "client i/o error",
            End::ServerIo(_) => "server i/o error",
        }
    }
}

/// What the gate decided for a connection it let in.
pub struct Admission {
    pub ticket: ConnectionTicket,
    /// The address is banned: the client is told this and the stream closes.
    pub banned: Option<StreamError>,
    /// The connection's place in the count shared with other instances.
    pub cluster: Option<xmppwall_store::ClusterTicket>,
}

/// Serves one accepted client connection to its end.
pub async fn serve(
    shared: Arc<Shared>,
    id: u64,
    tcp: TcpStream,
    peer: SocketAddr,
    listener: Listener,
    admission: Admission,
) {
    shared.stats.accepted(listener.front);
    let started = SystemTime::now();
    let traffic = Arc::new(Traffic::default());
    let record = |end: &str, traffic: &Traffic| {
        use std::sync::atomic::Ordering::Relaxed;
        shared.store.record_connection(ConnectionRecord {
            address: peer.ip().to_canonical(),
            jid: traffic
                .identity
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            front: listener.front.name().to_owned(),
            started,
            ended: SystemTime::now(),
            bytes_from_client: traffic.bytes.read.load(Relaxed),
            bytes_to_client: traffic.bytes.written.load(Relaxed),
            stanzas_to_server: traffic.stanzas_to_server.load(Relaxed),
            stanzas_to_client: traffic.stanzas_to_client.load(Relaxed),
            end_reason: end.to_owned(),
        });
    };
    let config = shared.config.load_full();
    let limiter = Limiter::clone(&shared.limiter.load());
    let policy = shared.policy.load_full();
    if let Some(rule) =
        crate::enforce::connect_refused(&policy, peer.ip(), listener.front.stream_front())
    {
        info!(rule = ?rule, "connection refused by the connect chain");
        shared.audit_refusal(
            peer.ip(),
            Hook::Connect,
            VerdictSource::Rule,
            rule.as_deref().unwrap_or(""),
            "refuse",
        );
        record("refused by the connect chain", &traffic);
        shared.stats.closed(listener.front, Outcome::RuleRefused);
        return;
    }
    let _ = tcp.set_nodelay(true);
    let local = tcp.local_addr().unwrap_or(listener.address);
    let accepted = Instant::now();
    let conn = Connection {
        id,
        preauth_deadline: accepted + config.timeouts.preauth,
        shared: shared.clone(),
        config,
        peer,
        local,
        shutdown: shared.shutdown_signal(),
        limiter,
        admission,
        traffic: traffic.clone(),
    };
    let tcp = Counted::new(
        SendDeadline::new(tcp, conn.config.timeouts.send),
        traffic.bytes.clone(),
    );
    let front = listener.front;
    let end = conn.run(tcp, listener.tls).await;
    record(end.reason(), &traffic);
    shared.stats.closed(front, end.outcome());
    let elapsed_ms = accepted.elapsed().as_millis() as u64;
    match &end {
        End::ClientIo(e) | End::ServerIo(e) => {
            info!(end = end.reason(), error = %e, elapsed_ms, "connection closed")
        }
        _ => info!(end = end.reason(), elapsed_ms, "connection closed"),
    }
}

struct Connection {
    id: u64,
    shared: Arc<Shared>,
    config: Arc<Config>,
    limiter: Limiter,
    admission: Admission,
    peer: SocketAddr,
    local: SocketAddr,
    preauth_deadline: Instant,
    shutdown: watch::Receiver<bool>,
    traffic: Arc<Traffic>,
}

/// What the handshake hands the relay: both streams, their framers with what they
/// read beyond the headers, the session and the client's header.
struct Ready {
    client: BoxIo,
    server: BoxIo,
    reader: FrameReader,
    server_reader: FrameReader,
    session: C2sSession,
    header: ClientHeader,
}

impl Ready {
    /// Moves the parts out and frees the box at once (`*ready` in the caller would
    /// keep the allocation until the caller's future ends).
    fn unbox(ready: Box<Ready>) -> Ready {
        *ready
    }
}

impl Connection {
    fn domain<'a>(&'a self, header: Option<&'a ClientHeader>) -> Option<&'a str> {
        header
            .and_then(|h| h.to.as_deref())
            .or(self.config.domains.first().map(String::as_str))
    }

    /// Sends a stream header (this side has not sent one on this stream yet) and
    /// the error, then closes.
    async fn refuse_before_header<W: AsyncWrite + Unpin>(
        &self,
        io: &mut W,
        header: Option<&ClientHeader>,
        error: StreamError,
    ) -> End {
        let mut out = session::response_header(self.domain(header), &session::new_stream_id());
        out.extend_from_slice(&error.to_bytes(Some("stream")));
        self.refuse(io, out, error.condition).await
    }

    async fn refuse<W: AsyncWrite + Unpin>(
        &self,
        io: &mut W,
        bytes: Vec<u8>,
        condition: StreamCondition,
    ) -> End {
        debug!(condition = condition.name(), "refusing stream");
        Stats::add(&self.shared.stats.streams_closed_by_error, 1);
        // A ban made on this stream is on disk before the client hears of it, unless
        // the disk does not answer: then the refusal goes out all the same (the ban
        // is in force in memory, and the writer saves it when it can).
        match tokio::time::timeout(STORE_FLUSH_WAIT, self.shared.store.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "a ban could not be saved"),
            Err(_) => {
                warn!("the store did not commit a ban in time; refusing the stream without waiting")
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            let _ = io.write_all(&bytes).await;
            let _ = io.shutdown().await;
        })
        .await;
        End::Refused(condition)
    }

    async fn run(mut self, tcp: ClientTcp, tls: ListenerTls) -> End {
        // Two phases, so that an idle connection carries only what relaying needs:
        // the handshake's future (TLS, headers, the server's answer) lives in a box
        // of its own that is freed once it is done.
        match Box::pin(self.open(tcp, tls)).await {
            Ok(ready) => self.relay_ready(ready).await,
            Err(end) => end,
        }
    }

    /// TLS and the stream headers, up to the moment both streams are ready to relay.
    async fn open(&mut self, tcp: ClientTcp, tls: ListenerTls) -> Result<Box<Ready>, End> {
        let budgets = self.config.limits.framer_budgets();
        match tls {
            ListenerTls::None => self.after_tls(Box::new(tcp), tls).await,
            ListenerTls::Direct => {
                match self
                    .accept_tls(Rewind::new(BytesMut::new(), tcp), None)
                    .await
                {
                    Ok(io) => self.after_tls(io, tls).await,
                    Err(end) => Err(end),
                }
            }
            ListenerTls::Starttls => {
                let mut tcp = tcp;
                let mut reader = FrameReader::new(budgets.before);
                // A client that tries direct TLS first (XEP-0368) sends its
                // ClientHello here: it gets direct TLS instead of a stream error
                // and a second connection.
                match reader
                    .first_byte(&mut tcp, self.preauth_deadline, &mut self.shutdown)
                    .await
                {
                    Ok(TLS_HANDSHAKE_RECORD) => {
                        let hello = std::mem::take(&mut reader.buf);
                        return match self.accept_tls(Rewind::new(hello, tcp), None).await {
                            Ok(io) => self.after_tls(io, ListenerTls::Direct).await,
                            Err(end) => Err(end),
                        };
                    }
                    Ok(_) => {}
                    Err(outcome) => {
                        return Err(self.end_before_relay(&mut tcp, outcome, false).await)
                    }
                }
                let header = match self.read_header(&mut tcp, &mut reader, false).await {
                    Ok((header, _)) => header,
                    Err(end) => return Err(end),
                };
                if let Some(error) = self.admission.banned.take() {
                    return Err(self
                        .refuse_before_header(&mut tcp, Some(&header), error)
                        .await);
                }
                // RFC 6120 §5.3.1: xmppwall answers the stream itself and offers only
                // STARTTLS, as mandatory-to-negotiate.
                let mut out =
                    session::response_header(self.domain(Some(&header)), &session::new_stream_id());
                out.extend_from_slice(session::STARTTLS_FEATURES);
                if let Err(e) = tcp.write_all(&out).await {
                    return Err(End::ClientIo(e));
                }
                loop {
                    match reader
                        .next(&mut tcp, 0, self.preauth_deadline, &mut self.shutdown)
                        .await
                    {
                        ReadOutcome::Frame(Token::Whitespace, len) => reader.consume(len),
                        ReadOutcome::Frame(Token::Element, len) => {
                            let verdict = starttls_request(&reader.buf[..len]);
                            reader.consume(len);
                            match verdict {
                                Ok(()) => break,
                                Err(error) => {
                                    let bytes = error.to_bytes(Some("stream"));
                                    return Err(self
                                        .refuse(&mut tcp, bytes, error.condition)
                                        .await);
                                }
                            }
                        }
                        ReadOutcome::Frame(_, _) | ReadOutcome::Closed => {
                            let _ = tcp.write_all(b"</stream:stream>").await;
                            return Err(End::ClientClosed);
                        }
                        other => return Err(self.end_before_relay(&mut tcp, other, true).await),
                    }
                }
                if let Err(e) = tcp.write_all(session::STARTTLS_PROCEED).await {
                    return Err(End::ClientIo(e));
                }
                // Whatever the client sent after <starttls/> is the start of its TLS
                // handshake (RFC 6120 §5.4.3.3).
                let rest = std::mem::take(&mut reader.buf);
                match self
                    .accept_tls(Rewind::new(rest, tcp), header.to.as_deref())
                    .await
                {
                    Ok(io) => self.after_tls(io, tls).await,
                    Err(end) => Err(end),
                }
            }
        }
    }

    /// Ends a connection whose relay has not started, for a reason other than a frame.
    async fn end_before_relay<W: AsyncWrite + Unpin>(
        &self,
        io: &mut W,
        outcome: ReadOutcome,
        header_sent: bool,
    ) -> End {
        let error = match outcome {
            ReadOutcome::TimedOut => StreamError::new(StreamCondition::ConnectionTimeout)
                .with_text("authentication did not complete in time"),
            ReadOutcome::Shutdown => StreamError::new(StreamCondition::SystemShutdown),
            ReadOutcome::Framing(e) => framing_error(e),
            ReadOutcome::Closed => return End::ClientClosed,
            ReadOutcome::Io(e) => return End::ClientIo(e),
            ReadOutcome::Frame(..) => StreamError::new(StreamCondition::BadFormat),
        };
        let end_shutdown = error.condition == StreamCondition::SystemShutdown;
        let end = if header_sent {
            let bytes = error.to_bytes(Some("stream"));
            self.refuse(io, bytes, error.condition).await
        } else {
            self.refuse_before_header(io, None, error).await
        };
        if end_shutdown {
            End::Shutdown
        } else {
            end
        }
    }

    /// Reads the optional XML declaration and the stream header, and checks it.
    /// Returns the header and how many bytes (declaration included) it took, which
    /// stay in `reader.buf` when `keep` is set, to be replayed to the server.
    async fn read_header<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut S,
        reader: &mut FrameReader,
        keep: bool,
    ) -> Result<(ClientHeader, usize), End> {
        let mut offset = 0;
        loop {
            let outcome = reader
                .next(io, offset, self.preauth_deadline, &mut self.shutdown)
                .await;
            match outcome {
                ReadOutcome::Frame(Token::XmlDeclaration, len) => {
                    if keep {
                        offset += len;
                    } else {
                        reader.consume(len);
                    }
                }
                ReadOutcome::Frame(Token::StreamOpen, len) => {
                    let parsed = ClientHeader::parse(
                        &reader.buf[offset..offset + len],
                        &self.config.domains,
                    );
                    match parsed {
                        Ok(header) => {
                            if keep {
                                offset += len;
                            } else {
                                reader.consume(len);
                            }
                            return Ok((header, offset));
                        }
                        Err(error) => {
                            return Err(self.refuse_before_header(io, None, error).await);
                        }
                    }
                }
                ReadOutcome::Frame(..) => {
                    let error = StreamError::new(StreamCondition::NotWellFormed)
                        .with_text("expected a stream header");
                    return Err(self.refuse_before_header(io, None, error).await);
                }
                other => return Err(self.end_before_relay(io, other, false).await),
            }
        }
    }

    async fn accept_tls(
        &mut self,
        tcp: Rewind<ClientTcp>,
        fallback_name: Option<&str>,
    ) -> Result<BoxIo, End> {
        let handshake = async {
            let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp).await?;
            let name = start
                .client_hello()
                .server_name()
                .map(str::to_owned)
                .or_else(|| fallback_name.map(str::to_owned));
            let Some(config) = self.shared.certs.config_for(name.as_deref()) else {
                return Err(io::Error::other("no certificate configured"));
            };
            start.into_stream(config).await
        };
        match tokio::time::timeout_at(self.preauth_deadline, handshake).await {
            Ok(Ok(tls)) => Ok(Box::new(tls)),
            Ok(Err(e)) => {
                Stats::add(&self.shared.stats.tls_handshake_failures, 1);
                info!(error = %describe_handshake_error(&e), "TLS handshake failed");
                Err(End::ClientIo(e))
            }
            Err(_) => {
                Stats::add(&self.shared.stats.tls_handshake_failures, 1);
                Err(End::Refused(StreamCondition::ConnectionTimeout))
            }
        }
    }

    /// From the client's (post-TLS) stream header to the server's stream, open.
    async fn after_tls(&mut self, mut client: BoxIo, tls: ListenerTls) -> Result<Box<Ready>, End> {
        let budgets = self.config.limits.framer_budgets();
        let mut reader = FrameReader::new(budgets.before);
        let (header, header_len) = match self.read_header(&mut client, &mut reader, true).await {
            Ok(h) => h,
            Err(end) => return Err(end),
        };
        if let Some(error) = self.admission.banned.take() {
            return Err(self
                .refuse_before_header(&mut client, Some(&header), error)
                .await);
        }
        debug!(to = ?header.to, version = ?header.version, "client stream header");
        let header_bytes = reader.buf.split_to(header_len);

        let conn = self.limiter.connection(&self.admission.ticket);
        let mut session = C2sSession::new(
            self.config.limits,
            tls,
            self.shared.limiter.clone(),
            conn,
            header.to.clone(),
            self.shared.policy.clone(),
            self.peer.ip(),
        );
        if let Some(recorder) = self.shared.recorder.get() {
            session.record_to(recorder.clone());
        }
        session.audit_to(self.shared.store.clone());
        session.use_bans(self.shared.bans.clone());
        if self.shared.cluster.get().is_some() {
            session.share_resources();
        }

        // `[upstream] defer_connect`: answer the header with the features the server
        // last offered for this domain, and connect only for a first element that
        // passes. `first` is that element (or what the session made of it).
        let domain = self.domain(Some(&header)).map(str::to_owned);
        let template = match (&domain, self.config.upstream.defer_connect) {
            (Some(domain), true) => self.shared.feature_templates.get(domain),
            _ => None,
        };
        let mut first_element: Option<Vec<u8>> = None;
        if let Some(template) = template {
            match self
                .answer_header(
                    &mut client,
                    &mut reader,
                    &mut session,
                    domain.as_deref(),
                    &template,
                )
                .await
            {
                Ok(element) => first_element = Some(element),
                Err(end) => return Err(end),
            }
        }
        let answered = first_element.is_some();

        let mut server = match self.connect_upstream().await {
            Ok(s) => s,
            Err(e) => {
                Stats::add(&self.shared.stats.upstream_connect_failures, 1);
                warn!(upstream = %self.config.upstream.address, error = %e, "cannot reach the server");
                let error = StreamError::new(StreamCondition::RemoteConnectionFailed)
                    .with_text("the server is not reachable");
                if answered {
                    let bytes = session.stream_error_bytes(&error, domain.as_deref());
                    return Err(self.refuse(&mut client, bytes, error.condition).await);
                }
                return Err(self
                    .refuse_before_header(&mut client, Some(&header), error)
                    .await);
            }
        };
        let mut first =
            proxy_header::header(self.config.upstream.proxy_protocol, self.peer, self.local);
        first.extend_from_slice(&header_bytes);
        if let Err(e) = server.write_all(&first).await {
            let error = StreamError::new(StreamCondition::RemoteConnectionFailed);
            if answered {
                let bytes = session.stream_error_bytes(&error, domain.as_deref());
                let _ = self.refuse(&mut client, bytes, error.condition).await;
            } else {
                let _ = self
                    .refuse_before_header(&mut client, Some(&header), error)
                    .await;
            }
            return Err(End::ServerIo(e));
        }
        let mut server_reader = FrameReader::new(server_limits(&budgets));
        if let Some(element) = first_element {
            // The client has its header and features already: the server's are read
            // here, not relayed (they refresh the template), and the element goes on.
            match self
                .absorb_server_answer(&mut server, &mut server_reader, domain.as_deref())
                .await
            {
                Ok(None) => {}
                Ok(Some(unexpected)) => {
                    let _ = client.write_all(&unexpected).await;
                    let _ = client.shutdown().await;
                    return Err(End::ServerClosed);
                }
                Err(end) => {
                    let error = StreamError::new(StreamCondition::RemoteConnectionFailed)
                        .with_text("the server did not answer the stream");
                    let bytes = session.stream_error_bytes(&error, domain.as_deref());
                    let _ = self.refuse(&mut client, bytes, error.condition).await;
                    return Err(end);
                }
            }
            if let Err(e) = server.write_all(&element).await {
                let error = StreamError::new(StreamCondition::RemoteConnectionFailed);
                let bytes = session.stream_error_bytes(&error, domain.as_deref());
                let _ = self.refuse(&mut client, bytes, error.condition).await;
                return Err(End::ServerIo(e));
            }
            Stats::add(&self.shared.stats.stanzas_to_server, 1);
        }

        Ok(Box::new(Ready {
            client,
            server,
            reader,
            server_reader,
            session,
            header,
        }))
    }

    /// Answers the client's stream header without the server (RFC 6120 §4.3.2: a
    /// response header, then the features, here the server's last ones for this
    /// domain as the session rewrites them), then reads the client's frames until an
    /// element the session would send the server. Returns the bytes to send the
    /// server for it; anything that ends the stream before that ends it here, and the
    /// server never hears of the connection.
    async fn answer_header(
        &mut self,
        client: &mut BoxIo,
        reader: &mut FrameReader,
        session: &mut C2sSession,
        domain: Option<&str>,
        template: &[u8],
    ) -> Result<Vec<u8>, End> {
        let now = Instant::now().into_std();
        let header = session::response_header(domain, &session::new_stream_id());
        // The session sees this header (after its XML declaration) and these
        // features as the server's.
        let open = header
            .windows(2)
            .position(|w| w == b"?>")
            .map_or(0, |p| p + 2);
        let _ = session.on_server_frame(Token::StreamOpen, &header[open..], now);
        let mut out = header;
        match session.on_server_frame(Token::Element, template, now) {
            ServerAction::Rewrite(features) => out.extend_from_slice(&features),
            _ => out.extend_from_slice(template),
        }
        if let Err(e) = client.write_all(&out).await {
            return Err(End::ClientIo(e));
        }
        Stats::add(&self.shared.stats.streams_answered_before_connect, 1);
        loop {
            let outcome = reader
                .next(client, 0, self.preauth_deadline, &mut self.shutdown)
                .await;
            let (token, len) = match outcome {
                ReadOutcome::Frame(token, len) => (token, len),
                ReadOutcome::Closed => return Err(End::ClientClosed),
                other => return Err(self.end_before_relay(client, other, true).await),
            };
            match token {
                Token::Whitespace => reader.consume(len),
                Token::StreamClose => {
                    let _ = client.write_all(b"</stream:stream>").await;
                    let _ = client.shutdown().await;
                    return Err(End::ClientClosed);
                }
                Token::XmlDeclaration | Token::StreamOpen => {
                    let error = StreamError::new(StreamCondition::BadFormat);
                    let bytes = session.stream_error_bytes(&error, domain);
                    return Err(self.refuse(client, bytes, error.condition).await);
                }
                Token::Element => {
                    let action = session.on_client_frame(
                        token,
                        &reader.buf[..len],
                        Instant::now().into_std(),
                    );
                    let element = reader.buf[..len].to_vec();
                    reader.consume(len);
                    match action {
                        ClientAction::Forward | ClientAction::ReserveResource { .. } => {
                            return Ok(element)
                        }
                        ClientAction::ForwardRewritten(rewritten) => return Ok(rewritten),
                        ClientAction::Reply(reply) => {
                            Stats::add(&self.shared.stats.stanzas_bounced, 1);
                            if let Err(e) = client.write_all(&reply).await {
                                return Err(End::ClientIo(e));
                            }
                        }
                        ClientAction::Drop => {}
                        ClientAction::Close(error) => {
                            Stats::add(&self.shared.stats.to_server_closed, 1);
                            let bytes = session.stream_error_bytes(&error, domain);
                            return Err(self.refuse(client, bytes, error.condition).await);
                        }
                        ClientAction::CloseWith(bytes) => {
                            let _ = self
                                .refuse(client, bytes, StreamCondition::UndefinedCondition)
                                .await;
                            return Err(End::RefusedOther);
                        }
                    }
                }
            }
        }
    }

    /// Reads the server's answer to a replayed stream header (declaration, header,
    /// features) without relaying it: the client was answered already. What follows
    /// the features stays in `reader` for the relay.
    async fn absorb_server_answer(
        &mut self,
        server: &mut BoxIo,
        reader: &mut FrameReader,
        domain: Option<&str>,
    ) -> Result<Option<Vec<u8>>, End> {
        let deadline = Instant::now() + self.config.upstream.connect_timeout;
        loop {
            let outcome = reader.next(server, 0, deadline, &mut self.shutdown).await;
            let (token, len) = match outcome {
                ReadOutcome::Frame(token, len) => (token, len),
                ReadOutcome::Io(e) => return Err(End::ServerIo(e)),
                ReadOutcome::Closed => return Err(End::ServerClosed),
                ReadOutcome::Shutdown => return Err(End::Shutdown),
                ReadOutcome::TimedOut => {
                    return Err(End::ServerIo(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no stream features from the server",
                    )))
                }
                ReadOutcome::Framing(e) => return Err(End::ServerIo(io::Error::other(e))),
            };
            match token {
                // Not the session's either: the client's stream goes on under the
                // header xmppwall sent, whose prefix its errors keep using.
                Token::XmlDeclaration | Token::Whitespace | Token::StreamOpen => {
                    reader.consume(len)
                }
                Token::Element if is_stream_features(&reader.buf[..len]) => {
                    if let Some(domain) = domain {
                        self.shared
                            .feature_templates
                            .set(domain, &reader.buf[..len]);
                    }
                    reader.consume(len);
                    return Ok(None);
                }
                // Anything else (a stream error): the client gets it as it is.
                Token::Element | Token::StreamClose => {
                    let bytes = reader.buf[..len].to_vec();
                    reader.consume(len);
                    return Ok(Some(bytes));
                }
            }
        }
    }

    /// Counts a refused stanza and keeps it in the ring of recent verdicts.
    fn note_refusal(&self, live: &LiveSession, direction: &'static str, action: &ClientAction) {
        let stats = &self.shared.stats;
        let (verdict, condition) = match action {
            ClientAction::Forward
            | ClientAction::ForwardRewritten(_)
            | ClientAction::ReserveResource { .. } => return,
            // Counted as bounced where the reply is sent.
            ClientAction::Reply(_) => ("bounce", None),
            ClientAction::Drop => {
                if direction == "to_server" {
                    Stats::add(&stats.to_server_dropped, 1);
                }
                ("drop", None)
            }
            ClientAction::Close(error) => {
                Stats::add(&stats.to_server_closed, 1);
                ("close", Some(error.condition.name()))
            }
            ClientAction::CloseWith(_) => {
                Stats::add(&stats.to_server_closed, 1);
                ("close", None)
            }
        };
        stats.recent.push(RecentVerdict {
            at: SystemTime::now(),
            session: live.id,
            peer: self.peer.ip(),
            jid: live.jid(),
            direction,
            verdict,
            condition,
        });
    }

    async fn connect_upstream(&self) -> io::Result<BoxIo> {
        let upstream = &self.config.upstream;
        let connect = async {
            let tcp = TcpStream::connect(upstream.address).await?;
            let _ = tcp.set_nodelay(true);
            let tcp = SendDeadline::new(tcp, self.config.timeouts.send);
            let tls = self.shared.upstream_tls.load_full();
            match tls.as_ref() {
                None => Ok::<BoxIo, io::Error>(Box::new(tcp)),
                Some((config, name)) => {
                    let tls = TlsConnector::from(config.clone())
                        .connect(name.clone(), tcp)
                        .await?;
                    Ok(Box::new(tls) as BoxIo)
                }
            }
        };
        tokio::time::timeout(upstream.connect_timeout, connect)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
    }

    /// Relays both directions until the connection ends.
    ///
    /// What an idle connection holds is this future and the two directions' futures:
    /// `ready` comes boxed and each direction's future is boxed as soon as it is made,
    /// so the streams and framers are stored once, in the direction that uses them,
    /// rather than once more in every future they pass through (async functions keep
    /// their arguments).
    async fn relay_ready(&self, ready: Box<Ready>) -> End {
        let Ready {
            client,
            server,
            reader,
            server_reader,
            session,
            header,
        } = Ready::unbox(ready);
        let session = Mutex::new(session);
        let registration =
            self.shared
                .sessions
                .register(self.id, self.peer, "c2s", header.to.clone());
        let (client_rd, client_wr) = tokio::io::split(client);
        let (server_rd, server_wr) = tokio::io::split(server);
        let (to_client, from_c2s) = mpsc::channel(TO_CLIENT_QUEUE);
        let (to_server, from_s2c) = mpsc::channel(TO_SERVER_QUEUE);
        let mut c2s = Box::pin(self.client_to_server(
            client_rd,
            server_wr,
            reader,
            &session,
            to_client,
            from_s2c,
            &registration,
        ));
        let mut s2c = Box::pin(self.server_to_client(
            server_rd,
            client_wr,
            server_reader,
            &session,
            from_c2s,
            to_server,
            &header,
            &registration.session,
        ));
        let grace = self.config.timeouts.shutdown_grace;
        let end = tokio::select! {
            end = &mut c2s => {
                let _ = tokio::time::timeout(grace, &mut s2c).await;
                end
            }
            end = &mut s2c => {
                let _ = tokio::time::timeout(grace, &mut c2s).await;
                end
            }
        };
        drop((c2s, s2c));
        *self
            .traffic
            .identity
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = lock(&session).identity().map(str::to_owned);
        end
    }

    /// The client → server direction: frames, checks, forwards.
    ///
    /// Forwarded frames are written straight from the read buffer: a run of
    /// consecutive passes is one write, broken only where something is refused.
    #[allow(clippy::too_many_arguments)] // the two halves, the queues, the session's parts
    async fn client_to_server(
        &self,
        mut rd: ReadHalf<BoxIo>,
        mut wr: WriteHalf<BoxIo>,
        mut reader: FrameReader,
        session: &Mutex<C2sSession>,
        to_client: mpsc::Sender<ToClient>,
        mut from_s2c: mpsc::Receiver<Box<[u8]>>,
        registration: &Registration<'_>,
    ) -> End {
        let budgets = self.config.limits.framer_budgets();
        let stats = &self.shared.stats;
        let live = &*registration.session;
        let mut kicked = registration.kicked.clone();
        let mut shutdown = self.shutdown.clone();
        let mut throttle_pause = Duration::ZERO;
        let mut frames = 0u64;
        loop {
            // Frame what is buffered first: the header read may have left bytes.
            let mut stanzas = 0u64;
            let mut pos = 0;
            let mut run_start = 0;
            // After the server's SASL success the client starts a new stream. The
            // client can only do so once it has read that success, so whatever was
            // buffered before this read still belongs to the old stream.
            if lock(session).take_client_restart() {
                reader.framer.reset();
                reader.framer.set_limits(budgets.after);
            }
            loop {
                let frame = match reader.framer.next(&reader.buf[pos..]) {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => {
                        let _ = wr.write_all(&reader.buf[run_start..pos]).await;
                        return Box::pin(close_both(&mut wr, &to_client, framing_error(e))).await;
                    }
                };
                let bytes = &reader.buf[pos..pos + frame.len];
                frames += 1;
                let action = if frames % PROCESSING_SAMPLE_EVERY == 0 {
                    // Sampled: two clock reads for one frame in PROCESSING_SAMPLE_EVERY.
                    let started = std::time::Instant::now();
                    let head = Some(reader.framer.head());
                    let action =
                        lock(session).on_client_frame_framed(frame.token, bytes, head, started);
                    stats.processing.observe(started.elapsed());
                    action
                } else {
                    lock(session).on_client_frame_framed(
                        frame.token,
                        bytes,
                        Some(reader.framer.head()),
                        Instant::now().into_std(),
                    )
                };
                if action == ClientAction::Forward {
                    pos += frame.len;
                    stanzas += u64::from(frame.token == Token::Element);
                    continue;
                }
                if let Err(e) = wr.write_all(&reader.buf[run_start..pos]).await {
                    return End::ServerIo(e);
                }
                pos += frame.len;
                run_start = pos;
                self.note_refusal(live, "to_server", &action);
                match action {
                    ClientAction::Forward => {}
                    ClientAction::ForwardRewritten(rewritten) => {
                        stanzas += 1;
                        if let Err(e) = wr.write_all(&rewritten).await {
                            return End::ServerIo(e);
                        }
                    }
                    ClientAction::Reply(reply) => {
                        Stats::add(&stats.stanzas_bounced, 1);
                        if to_client
                            .send(ToClient::Bytes(reply.into_boxed_slice()))
                            .await
                            .is_err()
                        {
                            return End::ClientClosed;
                        }
                    }
                    ClientAction::Drop => {}
                    ClientAction::Close(error) => {
                        return Box::pin(close_both(&mut wr, &to_client, error)).await;
                    }
                    ClientAction::CloseWith(bytes) => {
                        let _ = wr.write_all(b"</stream:stream>").await;
                        let _ = to_client
                            .send(ToClient::CloseWith(bytes.into_boxed_slice()))
                            .await;
                        return End::RefusedOther;
                    }
                    ClientAction::ReserveResource { account, max } => {
                        // Once per session (a bind request), never per stanza: one
                        // round trip to Redis, bounded by `redis_timeout`.
                        let refused = match self.shared.cluster.get() {
                            Some(cluster) => {
                                match Box::pin(cluster.reserve_resource(&account, max)).await {
                                    Ok(ticket) => {
                                        lock(session).shared_resource_reserved(ticket);
                                        None
                                    }
                                    Err(()) => {
                                        Some(lock(session).shared_resource_refused(bytes, max))
                                    }
                                }
                            }
                            None => None,
                        };
                        match refused {
                            None => {
                                stanzas += 1;
                                if let Err(e) = wr.write_all(bytes).await {
                                    return End::ServerIo(e);
                                }
                            }
                            Some(action) => {
                                self.note_refusal(live, "to_server", &action);
                                if let ClientAction::Reply(reply) = action {
                                    Stats::add(&stats.stanzas_bounced, 1);
                                    if to_client
                                        .send(ToClient::Bytes(reply.into_boxed_slice()))
                                        .await
                                        .is_err()
                                    {
                                        return End::ClientClosed;
                                    }
                                }
                            }
                        }
                    }
                }
            }
            Stats::add(&stats.stanzas_to_server, stanzas);
            Stats::add(&self.traffic.stanzas_to_server, stanzas);
            LiveSession::add(&live.stanzas_from_client, stanzas);
            if let Err(e) = wr.write_all(&reader.buf[run_start..pos]).await {
                return End::ServerIo(e);
            }
            release_consumed(&mut reader.buf, pos);
            if !throttle_pause.is_zero() {
                // A pause never outlasts the pre-authentication deadline: the read
                // after it finds the deadline passed.
                let pause = std::mem::take(&mut throttle_pause);
                let until = if lock(session).is_authenticated() {
                    Instant::now() + pause
                } else {
                    self.preauth_deadline.min(Instant::now() + pause)
                };
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => {}
                    error = kicked_error(&mut kicked) => return Box::pin(close_both(&mut wr, &to_client, error)).await,
                    _ = shutdown.changed() => {
                        let _ = wr.write_all(b"</stream:stream>").await;
                        let _ = wr.shutdown().await;
                        return End::Shutdown;
                    }
                }
            }

            let deadline = if lock(session).is_authenticated() {
                Instant::now() + self.config.timeouts.idle
            } else {
                self.preauth_deadline
                    .min(Instant::now() + self.config.timeouts.idle)
            };
            let read = tokio::select! {
                r = read_before(deadline, &mut rd, &mut reader.buf) => r,
                // Written between whole client stanzas: nothing partial is pending.
                Some(answer) = from_s2c.recv() => {
                    if let Err(e) = wr.write_all(&answer).await {
                        return End::ServerIo(e);
                    }
                    continue;
                }
                // An operator's kick: the client gets the chosen stream error, the
                // server the end of the stream.
                error = kicked_error(&mut kicked) => {
                    info!(condition = error.condition.name(), "session kicked by the operator");
                    return Box::pin(close_both(&mut wr, &to_client, error)).await;
                }
                _ = shutdown.changed() => {
                    // The server direction tells the client; the server hears the
                    // stream end from here.
                    let _ = wr.write_all(b"</stream:stream>").await;
                    let _ = wr.shutdown().await;
                    return End::Shutdown;
                }
            };
            match read {
                Ok(Ok(0)) => {
                    let _ = wr.shutdown().await;
                    return End::ClientClosed;
                }
                Ok(Ok(n)) => {
                    Stats::add(&stats.bytes_from_client, n as u64);
                    LiveSession::add(&live.bytes_from_client, n as u64);
                    // XEP-0205 §2.7: over the rate, stop reading for a while; the
                    // bytes already read are processed, nothing is dropped.
                    let throttle = lock(session).bytes_read(n, Instant::now().into_std());
                    match throttle {
                        Throttle::Continue => {}
                        Throttle::Pause(pause) => throttle_pause = pause,
                        Throttle::Close(error) => {
                            return Box::pin(close_both(&mut wr, &to_client, error)).await;
                        }
                    }
                }
                Ok(Err(e)) => {
                    let _ = wr.shutdown().await;
                    return End::ClientIo(e);
                }
                Err(_) => {
                    let text = if lock(session).is_authenticated() {
                        "idle timeout"
                    } else {
                        "authentication did not complete in time"
                    };
                    let error =
                        StreamError::new(StreamCondition::ConnectionTimeout).with_text(text);
                    return Box::pin(close_both(&mut wr, &to_client, error)).await;
                }
            }
        }
    }

    /// The server → client direction: frames, observes (SASL, bind), rewrites
    /// features, forwards; also writes what the client direction sends back.
    #[allow(clippy::too_many_arguments)] // the two halves, the queues, the session's parts
    async fn server_to_client(
        &self,
        mut rd: ReadHalf<BoxIo>,
        mut wr: WriteHalf<BoxIo>,
        mut reader: FrameReader,
        session: &Mutex<C2sSession>,
        mut from_c2s: mpsc::Receiver<ToClient>,
        to_server: mpsc::Sender<Box<[u8]>>,
        header: &ClientHeader,
        live: &LiveSession,
    ) -> End {
        let stats = &self.shared.stats;
        // Bytes the server sent after its features, read before the relay started.
        let mut buffered = !reader.buf.is_empty();
        let mut template_seen = false;
        let mut shutdown = self.shutdown.clone();
        let mut c2s_done = false;
        loop {
            // Biased: what the client direction asks (an error reply, a stream error
            // to end with) goes before more server data. When the client direction
            // ends the stream it queues the error first and only then tells the
            // server, so the server's reaction can never overtake the error.
            tokio::select! {
                biased;
                _ = shutdown.changed() => {
                    let error = StreamError::new(StreamCondition::SystemShutdown)
                        .with_text("the server is shutting down");
                    let bytes = lock(session).stream_error_bytes(&error, self.domain(Some(header)));
                    let _ = Box::pin(self.refuse(&mut wr, bytes, StreamCondition::SystemShutdown)).await;
                    return End::Shutdown;
                }
                message = from_c2s.recv(), if !c2s_done => {
                    match message {
                        Some(ToClient::Bytes(bytes)) => {
                            if let Err(e) = wr.write_all(&bytes).await {
                                return End::ClientIo(e);
                            }
                        }
                        Some(ToClient::Close(error)) => {
                            let condition = error.condition;
                            let bytes = lock(session).stream_error_bytes(&error, self.domain(Some(header)));
                            return Box::pin(self.refuse(&mut wr, bytes, condition)).await;
                        }
                        Some(ToClient::CloseWith(bytes)) => {
                            let _ = Box::pin(self.refuse(&mut wr, bytes.into_vec(), StreamCondition::UndefinedCondition)).await;
                            return End::RefusedOther;
                        }
                        // The client direction ended; keep relaying what the server
                        // still says until it closes (bounded by the caller).
                        None => c2s_done = true,
                    }
                }
                read = async {
                    if std::mem::take(&mut buffered) {
                        Ok(None)
                    } else {
                        read_into(&mut rd, &mut reader.buf).await.map(Some)
                    }
                } => {
                    match read {
                        Ok(None) => {}
                        Ok(Some(0)) => {
                            let _ = wr.shutdown().await;
                            return End::ServerClosed;
                        }
                        Ok(Some(n)) => {
                            Stats::add(&stats.bytes_from_server, n as u64);
                            LiveSession::add(&live.bytes_to_client, n as u64);
                        }
                        Err(e) => {
                            Stats::add(&stats.upstream_io_errors, 1);
                            let error = StreamError::new(StreamCondition::RemoteConnectionFailed);
                            let bytes = lock(session).stream_error_bytes(&error, self.domain(Some(header)));
                            let _ = wr.write_all(&bytes).await;
                            let _ = wr.shutdown().await;
                            return End::ServerIo(e);
                        }
                    }
                    let mut stanzas = 0u64;
                    let mut pos = 0;
                    let mut run_start = 0;
                    loop {
                        let frame = match reader.framer.next(&reader.buf[pos..]) {
                            Ok(Some(f)) => f,
                            Ok(None) => break,
                            Err(e) => {
                                warn!(error = %e, "the server sent XML xmppwall cannot frame");
                                let _ = wr.write_all(&reader.buf[run_start..pos]).await;
                                let error = StreamError::new(StreamCondition::InternalServerError);
                                let bytes = lock(session).stream_error_bytes(&error, self.domain(Some(header)));
                                let _ = wr.write_all(&bytes).await;
                                let _ = wr.shutdown().await;
                                return End::ServerIo(io::Error::other(e));
                            }
                        };
                        let bytes = &reader.buf[pos..pos + frame.len];
                        if !template_seen && frame.token == Token::Element && is_stream_features(bytes) {
                            // The features of a first stream: what the next client
                            // is answered with before its server connection exists.
                            template_seen = true;
                            if !lock(session).is_authenticated() {
                                if let Some(domain) = self.domain(Some(header)) {
                                    self.shared.feature_templates.set(domain, bytes);
                                }
                            }
                        }
                        let (action, sasl, restart) = {
                            let mut s = lock(session);
                            let action = s.on_server_frame(frame.token, bytes, Instant::now().into_std());
                            (action, s.take_sasl_outcome(), s.take_server_restart())
                        };
                        stanzas += u64::from(frame.token == Token::Element);
                        if sasl == Some(SaslOutcome::Failure) {
                            Stats::add(&stats.sasl_failures, 1);
                            let failure = self.shared.limiter.load().auth_failed(self.peer.ip(), Instant::now().into_std());
                            info!(address_successes = failure.successes, address_failures = failure.failures, "authentication failed");
                            if !failure.tarpit.is_zero() {
                                // Tarpit: the failure reaches the client late, which
                                // slows a password guesser down (XEP-0205 §2.3).
                                if let Err(e) = wr.write_all(&reader.buf[run_start..pos]).await {
                                    return End::ClientIo(e);
                                }
                                run_start = pos;
                                tokio::time::sleep(failure.tarpit).await;
                            }
                            if let Some(until) = failure.banned_until {
                                warn!(address = %self.peer.ip(), "too many authentication failures; address banned");
                                self.shared.audit_refusal(
                                    self.peer.ip(),
                                    Hook::Auth,
                                    VerdictSource::Limit,
                                    LimitKind::AuthFailureBan.name(),
                                    "ban",
                                );
                                let _ = wr.write_all(&reader.buf[run_start..pos + frame.len]).await;
                                let error = auth_banned_error(until);
                                let bytes = lock(session).stream_error_bytes(&error, self.domain(Some(header)));
                                return Box::pin(self.refuse(&mut wr, bytes, StreamCondition::PolicyViolation)).await;
                            }
                        }
                        match action {
                            ServerAction::Forward => pos += frame.len,
                            ServerAction::ReplaceThenClose(replacement, error) => {
                                let _ = wr.write_all(&reader.buf[run_start..pos]).await;
                                let _ = wr.write_all(&replacement).await;
                                let bytes = lock(session).stream_error_bytes(&error, self.domain(Some(header)));
                                return Box::pin(self.refuse(&mut wr, bytes, error.condition)).await;
                            }
                            ServerAction::ForwardThenClose(error) => {
                                let _ = wr.write_all(&reader.buf[run_start..pos + frame.len]).await;
                                let bytes = lock(session).stream_error_bytes(&error, self.domain(Some(header)));
                                return Box::pin(self.refuse(&mut wr, bytes, error.condition)).await;
                            }
                            ServerAction::Drop => {
                                Stats::add(&stats.to_client_dropped, 1);
                                self.note_refusal(live, "to_client", &ClientAction::Drop);
                                if let Err(e) = wr.write_all(&reader.buf[run_start..pos]).await {
                                    return End::ClientIo(e);
                                }
                                pos += frame.len;
                                run_start = pos;
                            }
                            ServerAction::Answer(answer) => {
                                if let Err(e) = wr.write_all(&reader.buf[run_start..pos]).await {
                                    return End::ClientIo(e);
                                }
                                pos += frame.len;
                                run_start = pos;
                                // Never waits: a full queue loses the answer, not the stream.
                                if to_server.try_send(answer.into_boxed_slice()).is_err() {
                                    debug!("answer to the server dropped: queue full");
                                }
                            }
                            ServerAction::Rewrite(rewritten) => {
                                let written = async {
                                    wr.write_all(&reader.buf[run_start..pos]).await?;
                                    wr.write_all(&rewritten).await
                                };
                                if let Err(e) = written.await {
                                    return End::ClientIo(e);
                                }
                                pos += frame.len;
                                run_start = pos;
                            }
                        }
                        if sasl == Some(SaslOutcome::Success) {
                            Stats::add(&stats.sasl_successes, 1);
                            if let Some(account) = lock(session).account() {
                                live.set_jid(account, false);
                            }
                            let (successes, failures) = self.shared.limiter.load().auth_succeeded(self.peer.ip());
                            info!(auth = ?lock(session).auth(), address_successes = successes, address_failures = failures, "authenticated");
                        }
                        if restart {
                            reader.framer.reset();
                        }
                    }
                    Stats::add(&stats.stanzas_to_client, stanzas);
                    Stats::add(&self.traffic.stanzas_to_client, stanzas);
                    LiveSession::add(&live.stanzas_to_client, stanzas);
                    if !live.has_full_jid() {
                        if let Some(jid) = lock(session).bound_jid() {
                            live.set_jid(jid, true);
                        }
                    }
                    if let Err(e) = wr.write_all(&reader.buf[run_start..pos]).await {
                        return End::ClientIo(e);
                    }
                    release_consumed(&mut reader.buf, pos);
                }
            }
        }
    }
}

/// Resolves with the kick's stream error once the operator kicks the session;
/// never if the registry entry is gone.
pub(crate) async fn kicked_error(kicked: &mut watch::Receiver<Option<StreamError>>) -> StreamError {
    loop {
        if kicked.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        if let Some(error) = kicked.borrow_and_update().clone() {
            return error;
        }
    }
}

/// Accepts `<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>` and refuses anything
/// else before TLS.
fn starttls_request(element: &[u8]) -> Result<(), StreamError> {
    let Some(tag) = StartTag::parse(element) else {
        return Err(StreamError::new(StreamCondition::NotWellFormed));
    };
    let ns = namespace(&tag, CLIENT_NS);
    if tag.local_name() == b"starttls" && ns == TLS_NS {
        return Ok(());
    }
    if ns == CLIENT_NS && matches!(tag.local_name(), b"message" | b"presence" | b"iq") {
        // RFC 6120 §6.4 / XEP-0205 §2.3: no stanzas before authentication.
        return Err(StreamError::new(StreamCondition::NotAuthorized)
            .with_text("stanzas are not accepted before authentication"));
    }
    // RFC 6120 §5.3.1: TLS is mandatory-to-negotiate here.
    Err(StreamError::new(StreamCondition::PolicyViolation)
        .with_text("STARTTLS is required before anything else"))
}

/// What the client direction asks the client writer to send.
enum ToClient {
    /// A stanza (e.g. an error reply). Boxed slices rather than vectors, and the
    /// stream error boxed: the queue's slots are as large as its largest message,
    /// and every connection holds a block of them.
    Bytes(Box<[u8]>),
    /// A stream error; then the connection closes.
    Close(Box<StreamError>),
    /// Raw bytes that end the stream; then the connection closes.
    CloseWith(Box<[u8]>),
}

/// Ends both streams: the client gets `error`, the server the end of its stream.
async fn close_both(
    server: &mut WriteHalf<BoxIo>,
    to_client: &mpsc::Sender<ToClient>,
    error: StreamError,
) -> End {
    let condition = error.condition;
    let _ = to_client.send(ToClient::Close(Box::new(error))).await;
    let _ = server.write_all(b"</stream:stream>").await;
    let _ = server.shutdown().await;
    End::Refused(condition)
}

/// The longest a refusal waits for the store to commit the bans made before it.
const STORE_FLUSH_WAIT: Duration = Duration::from_secs(5);

/// The session lock is only ever held for a few instructions and never across an
/// await; a panic while holding it cannot leave it half-updated in a way that
/// matters more than the panic itself, so a poisoned lock is simply taken.
fn lock(session: &Mutex<C2sSession>) -> MutexGuard<'_, C2sSession> {
    session.lock().unwrap_or_else(|p| p.into_inner())
}

/// The framer limits for what the server sends. The server is trusted to send
/// well-formed XML, but not unbounded elements: the post-authentication limits apply
/// in both directions, with room for roster results and MAM pages, which may
/// legitimately be large.
fn server_limits(budgets: &session::FramerBudgets) -> xmppwall_xml::Limits {
    xmppwall_xml::Limits {
        max_element_bytes: budgets.after.max_element_bytes.max(SERVER_ELEMENT_BYTES),
        max_elements: budgets.after.max_elements.max(SERVER_ELEMENTS),
        ..budgets.after
    }
}

/// Whether `element` is `<stream:features>` with the `stream` prefix xmppwall's own
/// response header declares (so that it can follow that header unchanged).
fn is_stream_features(element: &[u8]) -> bool {
    element
        .strip_prefix(b"<stream:features")
        .and_then(|rest| rest.first())
        .is_some_and(|b| matches!(b, b'>' | b'/' | b' ' | b'\t' | b'\r' | b'\n'))
}

/// The most domains a template is kept for (without `domains`, any `to` is accepted).
const MAX_FEATURE_TEMPLATES: usize = 256;

/// The stream features the server last offered on a first stream, per domain: what a
/// new client is answered with before its server connection exists
/// (`[upstream] defer_connect`). Refreshed by every stream that reaches the server.
#[derive(Debug, Default)]
pub struct FeatureTemplates(Mutex<std::collections::HashMap<String, Arc<[u8]>>>);

impl FeatureTemplates {
    pub fn get(&self, domain: &str) -> Option<Arc<[u8]>> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&domain.to_ascii_lowercase()).cloned()
    }

    pub fn set(&self, domain: &str, features: &[u8]) {
        let domain = domain.to_ascii_lowercase();
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(&domain).is_some_and(|old| **old == *features) {
            return;
        }
        if map.len() >= MAX_FEATURE_TEMPLATES && !map.contains_key(&domain) {
            map.clear();
        }
        map.insert(domain, Arc::from(features));
    }

    /// Forgets every template (a reload may point at another server).
    pub fn clear(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}
