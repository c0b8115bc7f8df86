//! The tokio shell of the peer fronts (external components, remote servers coming
//! in, the server's own outgoing streams): accept, TLS, the peer's stream header,
//! the server connection, then the relay in both directions until either side ends.
//!
//! It reads and writes; the sessions ([`crate::component`], [`crate::s2s`],
//! [`crate::egress`]) decide what each frame means. See `LIFECYCLE.md`.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{watch, Mutex as AsyncMutex};
use tokio::time::Instant;
use tokio_rustls::LazyConfigAcceptor;
use tracing::{debug, info, warn};
use xmppwall_policy::rules::Marks;
use xmppwall_xml::{Framer, Token};

use crate::c2s::Admission;
use crate::component::ComponentSession;
use crate::config::{Config, Front, Listener, ListenerTls};
use crate::io::{read_before, read_into, BoxIo, Rewind, SendDeadline, Tcp};
use crate::peer::{
    self, PeerAction, PeerContext, PeerHeader, PeerSession, COMPONENT_NS, SERVER_NS,
};
use crate::proxy_header;
use crate::server::Shared;
use crate::sessions::{LiveSession, Registration};
use crate::stats::{Outcome, Stats};
use crate::stream::{
    framing_error, release_consumed, FrameReader, ReadOutcome, TLS_HANDSHAKE_RECORD,
};
use crate::stream_error::{StreamCondition, StreamError};
use crate::tls::describe_handshake_error;

/// The largest element accepted from the server on a peer stream.
const SERVER_ELEMENT_BYTES: usize = 8 * 1024 * 1024;

/// How a peer connection ended, for the log.
#[derive(Debug)]
pub(crate) enum End {
    PeerClosed,
    ServerClosed,
    Refused(StreamCondition),
    Shutdown,
    PeerIo(io::Error),
    ServerIo(io::Error),
}

impl End {
    /// For the connection counters: "client" is the peer, as in [`Outcome`].
    fn outcome(&self) -> Outcome {
        match self {
            End::PeerClosed => Outcome::ClientClosed,
            End::ServerClosed => Outcome::ServerClosed,
            End::Refused(_) => Outcome::StreamError,
            End::Shutdown => Outcome::Shutdown,
            End::PeerIo(_) => Outcome::ClientIoError,
            End::ServerIo(_) => Outcome::ServerIoError,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            End::PeerClosed => "peer closed",
            End::ServerClosed => "server closed",
            End::Refused(condition) => condition.name(),
            End::Shutdown => "shutdown",
            End::PeerIo(_) => "peer i/o error",
            End::ServerIo(_) => "server i/o error",
        }
    }
}

/// Serves one connection accepted on a component, s2s or s2s-egress listener.
pub async fn serve(
    shared: Arc<Shared>,
    id: u64,
    tcp: TcpStream,
    peer: SocketAddr,
    listener: Listener,
    admission: Admission,
) {
    let front = listener.front;
    shared.stats.accepted(front);
    let config = shared.config.load_full();
    let policy = shared.policy.load_full();
    if let Some(rule) =
        crate::enforce::connect_refused(&policy, peer.ip(), listener.front.stream_front())
    {
        info!(rule = ?rule, "connection refused by the connect chain");
        shared.audit_refusal(
            peer.ip(),
            xmppwall_policy::rules::Hook::Connect,
            xmppwall_store::VerdictSource::Rule,
            rule.as_deref().unwrap_or(""),
            "refuse",
        );
        shared.stats.closed(front, Outcome::RuleRefused);
        return;
    }
    let _ = tcp.set_nodelay(true);
    let local = tcp.local_addr().unwrap_or(listener.address);
    let accepted = Instant::now();
    let started = std::time::SystemTime::now();
    let live = Arc::new(OnceLock::new());
    let conn = PeerConnection {
        id,
        live: live.clone(),
        preauth_deadline: accepted + config.timeouts.preauth,
        shutdown: shared.shutdown_signal(),
        shared: shared.clone(),
        config,
        peer,
        local,
        listener,
        admission,
    };
    let tcp = SendDeadline::new(tcp, conn.config.timeouts.send);
    let end = conn.run(tcp).await;
    shared.stats.closed(front, end.outcome());
    // What the relay counted (nothing when the stream ended before it): bytes
    // read from the peer and from the server, stanzas forwarded each way; the
    // peer domains stand where a client's JID would.
    let live = live.get();
    let count = |c: fn(&LiveSession) -> &std::sync::atomic::AtomicU64| {
        live.map_or(0, |l| LiveSession::count(c(l)))
    };
    shared
        .store
        .record_connection(xmppwall_store::ConnectionRecord {
            address: peer.ip().to_canonical(),
            jid: live
                .map(|l| l.domains().join(" "))
                .filter(|d| !d.is_empty()),
            front: front.name().to_owned(),
            started,
            ended: std::time::SystemTime::now(),
            bytes_from_client: count(|l| &l.bytes_from_client),
            bytes_to_client: count(|l| &l.bytes_to_client),
            stanzas_to_server: count(|l| &l.stanzas_from_client),
            stanzas_to_client: count(|l| &l.stanzas_to_client),
            end_reason: end.reason().to_owned(),
        });
    let elapsed_ms = accepted.elapsed().as_millis() as u64;
    match &end {
        End::PeerIo(e) | End::ServerIo(e) => {
            info!(end = end.reason(), error = %e, elapsed_ms, "connection closed")
        }
        _ => info!(end = end.reason(), elapsed_ms, "connection closed"),
    }
}

pub(crate) struct PeerConnection {
    /// The connection's id, its id in the session registry too.
    pub(crate) id: u64,
    /// The registry entry once the relay starts, kept for the audit record.
    pub(crate) live: Arc<OnceLock<Arc<LiveSession>>>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) config: Arc<Config>,
    pub(crate) listener: Listener,
    pub(crate) admission: Admission,
    pub(crate) peer: SocketAddr,
    pub(crate) local: SocketAddr,
    pub(crate) preauth_deadline: Instant,
    pub(crate) shutdown: watch::Receiver<bool>,
}

impl PeerConnection {
    async fn run(self, tcp: Tcp) -> End {
        match self.listener.front {
            Front::Component => self.component(tcp).await,
            Front::S2s => self.s2s_inbound(tcp).await,
            Front::S2sEgress => self.s2s_egress(tcp).await,
            // Dispatched to crate::c2s by the server.
            Front::C2s => {
                drop(tcp);
                End::PeerClosed
            }
        }
    }

    /// The policy context of a new session on this connection.
    pub(crate) fn context(&self) -> PeerContext {
        PeerContext {
            front: self.listener.front.stream_front(),
            limits: self.config.limits,
            limiter: self.shared.limiter.clone(),
            policy: self.shared.policy.clone(),
            ip: self.peer.ip().to_canonical(),
            marks: Marks::default(),
            recorder: self.shared.recorder.get().cloned(),
            audit: Some(self.shared.store.clone()),
        }
    }

    /// The component front (XEP-0114): header, server, relay.
    async fn component(mut self, tcp: Tcp) -> End {
        let mut io: BoxIo = match self.listener.tls {
            ListenerTls::Direct => match self
                .accept_tls(Rewind::new(BytesMut::new(), tcp), None)
                .await
            {
                Ok(io) => io,
                Err(end) => return end,
            },
            ListenerTls::None | ListenerTls::Starttls => Box::new(tcp),
        };
        let budgets = self.config.limits.framer_budgets();
        let mut reader = FrameReader::new(budgets.before);
        let (header, header_len) = match self
            .read_header(&mut io, &mut reader, COMPONENT_NS, None)
            .await
        {
            Ok(h) => h,
            Err(end) => return end,
        };
        let domain = header.to.clone().unwrap_or_default();
        let refuse = |text: String| StreamError::new(StreamCondition::HostUnknown).with_text(text);
        if domain.is_empty() {
            // XEP-0114 §3: the component names its domain in 'to'.
            let error = refuse("the stream header has no 'to' address".into());
            return self
                .refuse_before_header(&mut io, COMPONENT_NS, None, error)
                .await;
        }
        let known = self.config.components.iter().find(|c| c.domain == domain);
        if !self.config.components.is_empty() && known.is_none() {
            let error = refuse(format!("no component {domain} is configured"));
            return self
                .refuse_before_header(&mut io, COMPONENT_NS, Some(&domain), error)
                .await;
        }
        if let Some(error) = self.admission.banned.clone() {
            return self
                .refuse_before_header(&mut io, COMPONENT_NS, Some(&domain), error)
                .await;
        }
        let secret = known.and_then(|c| c.secret.clone());
        let mut server = match self.connect_server().await {
            Ok(s) => s,
            Err(end) => {
                let error = StreamError::new(StreamCondition::RemoteConnectionFailed)
                    .with_text("the server is not reachable");
                let _ = self
                    .refuse_before_header(&mut io, COMPONENT_NS, Some(&domain), error)
                    .await;
                return end;
            }
        };
        let mut first =
            proxy_header::header(self.config.upstream.proxy_protocol, self.peer, self.local);
        first.extend_from_slice(&reader.buf[..header_len]);
        reader.consume(header_len);
        if let Err(e) = server.write_all(&first).await {
            return End::ServerIo(e);
        }
        info!(component = %domain, checks_secret = secret.is_some(), "component stream");
        let live = (Some(domain.clone()), vec![domain.clone()]);
        let session = ComponentSession::new(self.context(), domain, secret);
        self.relay(io, server, reader, None, Mutex::new(session), live)
            .await
    }

    /// The inbound server-to-server front: STARTTLS answered by xmppwall (or direct
    /// TLS, XEP-0368), the peer's certificate asked for, the post-TLS header checked,
    /// then the server connection and the relay (see [`crate::s2s`]).
    async fn s2s_inbound(mut self, tcp: Tcp) -> End {
        let budgets = self.config.limits.framer_budgets();
        let (mut io, chain): (BoxIo, _) = match self.listener.tls {
            ListenerTls::None => (Box::new(tcp), Vec::new()),
            ListenerTls::Direct => {
                match self
                    .accept_s2s_tls(Rewind::new(BytesMut::new(), tcp), None)
                    .await
                {
                    Ok(x) => x,
                    Err(end) => return end,
                }
            }
            ListenerTls::Starttls => {
                let mut plain = tcp;
                let mut reader = FrameReader::new(budgets.before);
                // A remote server that tries direct TLS first (XEP-0368) gets it.
                match reader
                    .first_byte(&mut plain, self.preauth_deadline, &mut self.shutdown)
                    .await
                {
                    Ok(TLS_HANDSHAKE_RECORD) => {
                        let hello = std::mem::take(&mut reader.buf);
                        match self.accept_s2s_tls(Rewind::new(hello, plain), None).await {
                            Ok(x) => x,
                            Err(end) => return end,
                        }
                    }
                    Ok(_) => match self.s2s_starttls(plain, reader).await {
                        Ok(x) => x,
                        Err(end) => return end,
                    },
                    Err(outcome) => {
                        return self
                            .end_before_header(&mut plain, outcome, SERVER_NS, None)
                            .await
                    }
                }
            }
        };
        let mut reader = FrameReader::new(budgets.before);
        let (header, header_len) = match self
            .read_header(&mut io, &mut reader, SERVER_NS, None)
            .await
        {
            Ok(h) => h,
            Err(end) => return end,
        };
        if let Err(error) = self.check_s2s_header(&header) {
            let local = header.to.clone();
            return self
                .refuse_before_header(&mut io, SERVER_NS, local.as_deref(), error)
                .await;
        }
        let cert = (!chain.is_empty()).then(|| crate::tls::PeerCertificate {
            chain,
            verifier: self.shared.s2s_tls.load().verifier.clone(),
        });
        debug!(from = ?header.from, to = ?header.to, certificate = cert.is_some(), "remote server stream header");
        // A peer whose certificate proves the stream's `from` reaches the server
        // over TLS with a certificate for that domain from the upstream CA, so
        // that the server can offer and check SASL EXTERNAL (XEP-0178 §3).
        let upstream_ca = self.shared.s2s_tls.load().upstream.clone();
        let certified = match (&upstream_ca, &header.from, &header.to, &cert) {
            (Some(ca), Some(from), Some(to), Some(cert)) if cert.valid_for(from) => {
                Some((ca.clone(), from.to_ascii_lowercase(), to.clone()))
            }
            _ => None,
        };
        if let Some((ca, from, to)) = certified {
            let header_bytes = reader.buf[..header_len].to_vec();
            reader.consume(header_len);
            let (server, server_reader, tls) = match self
                .open_server_with_certificate(&ca, &from, &to, &header_bytes)
                .await
            {
                Ok(x) => x,
                Err(why) => {
                    // RFC 6120 §4.9.3.18; no fallback to plaintext, so that a server
                    // that does not trust the upstream CA shows in the log.
                    warn!(remote = %from, error = %why, "cannot open the server stream with the peer's certificate");
                    let error = StreamError::new(StreamCondition::RemoteConnectionFailed)
                        .with_text("the stream to the server could not be opened");
                    let _ = self
                        .refuse_before_header(&mut io, SERVER_NS, Some(&to), error)
                        .await;
                    return End::Refused(StreamCondition::RemoteConnectionFailed);
                }
            };
            let mut session = crate::s2s::S2sInboundSession::new(
                self.context(),
                self.config.s2s.clone(),
                self.config.domains.clone(),
                header.to.clone(),
                cert,
            );
            if tls {
                session = session.with_upstream_certificate(&from);
            }
            let live = (header.to.clone(), Vec::new());
            return self
                .relay(
                    io,
                    server,
                    reader,
                    Some(server_reader),
                    Mutex::new(session),
                    live,
                )
                .await;
        }
        let mut server = match self.connect_server().await {
            Ok(s) => s,
            Err(end) => {
                let error = StreamError::new(StreamCondition::RemoteConnectionFailed)
                    .with_text("the server is not reachable");
                let local = header.to.clone();
                let _ = self
                    .refuse_before_header(&mut io, SERVER_NS, local.as_deref(), error)
                    .await;
                return end;
            }
        };
        let mut first =
            proxy_header::header(self.config.upstream.proxy_protocol, self.peer, self.local);
        first.extend_from_slice(&reader.buf[..header_len]);
        reader.consume(header_len);
        if let Err(e) = server.write_all(&first).await {
            return End::ServerIo(e);
        }
        let live = (header.to.clone(), Vec::new());
        let session = crate::s2s::S2sInboundSession::new(
            self.context(),
            self.config.s2s.clone(),
            self.config.domains.clone(),
            header.to.clone(),
            cert,
        );
        self.relay(io, server, reader, None, Mutex::new(session), live)
            .await
    }

    /// The egress: the protected server's outgoing stream comes in plaintext; xmppwall
    /// connects to the remote server (static route, else its SRV records, else the
    /// domain on port 5269; through the SOCKS5 proxy when configured), negotiates
    /// TLS with it (direct or STARTTLS), and
    /// hands the server the remote's post-TLS header and features; then the relay
    /// (see [`crate::egress`]).
    async fn s2s_egress(mut self, tcp: Tcp) -> End {
        let budgets = self.config.limits.framer_budgets();
        let mut server: BoxIo = Box::new(tcp);
        let mut server_reader = FrameReader::new(budgets.after);
        let (header, header_len) = match self
            .read_header(&mut server, &mut server_reader, SERVER_NS, None)
            .await
        {
            Ok(h) => h,
            Err(end) => return end,
        };
        let server_header = server_reader.buf[..header_len].to_vec();
        server_reader.consume(header_len);
        let Some(remote) = header.to.clone() else {
            let error = StreamError::new(StreamCondition::HostUnknown)
                .with_text("the stream header names no remote domain");
            return self
                .refuse_before_header(&mut server, SERVER_NS, None, error)
                .await;
        };
        if self
            .shared
            .limiter
            .load()
            .antispam
            .federation_refuses(&remote, None)
        {
            info!(remote = %remote, "outgoing stream to a denied domain refused");
            let error = StreamError::new(StreamCondition::PolicyViolation)
                .with_text(format!("federation with {remote} is not allowed"));
            return self
                .refuse_before_header(&mut server, SERVER_NS, Some(&remote), error)
                .await;
        }
        let opened = match self.open_remote(&remote, &server_header).await {
            Ok(o) => o,
            Err(why) => {
                warn!(remote = %remote, error = %why, "cannot reach the remote server");
                let error = StreamError::new(StreamCondition::RemoteConnectionFailed)
                    .with_text(format!("{remote}: {why}"));
                return self
                    .refuse_before_header(&mut server, SERVER_NS, Some(&remote), error)
                    .await;
            }
        };
        let mut first = opened.header.clone();
        match crate::s2s::rewrite_s2s_features(&opened.features, false) {
            Some(rewritten) => first.extend_from_slice(&rewritten),
            None => first.extend_from_slice(&opened.features),
        }
        if let Err(e) = server.write_all(&first).await {
            return End::ServerIo(e);
        }
        info!(remote = %remote, via = %opened.via, tls = opened.tls, how = opened.auth.name(), "outgoing stream open");
        let live = (Some(remote.clone()), vec![remote.clone()]);
        let session = crate::egress::EgressSession::new(
            self.context(),
            remote,
            opened.auth,
            &opened.header,
            &server_header,
        );
        self.relay(
            opened.io,
            server,
            opened.reader,
            Some(server_reader),
            Mutex::new(session),
            live,
        )
        .await
    }

    /// Connects to `remote` and opens a stream with `header` (the server's own):
    /// each place the routing gives, in turn, until one opens (RFC 6120 §3.2.1:
    /// on failure, the next record).
    async fn open_remote(&mut self, remote: &str, header: &[u8]) -> Result<OpenedRemote, String> {
        let s2s = self.config.s2s.clone();
        let hops = self.route_remote(remote, &s2s).await?;
        let mut failures = Vec::new();
        for hop in &hops {
            match self.open_hop(remote, header, hop, &s2s).await {
                Ok(mut opened) => {
                    opened.via = hop.to_string();
                    return Ok(opened);
                }
                Err(why) => {
                    info!(remote = %remote, target = %hop, error = %why, "remote target failed");
                    failures.push(if hops.len() > 1 {
                        format!("{hop}: {why}")
                    } else {
                        why
                    });
                }
            }
        }
        Err(failures.join("; "))
    }

    /// Where to connect for `remote`, in order: its static route (`[s2s] routes`);
    /// else its SRV records (RFC 6120 §3.2.1, XEP-0368, see [`crate::dns`]); else,
    /// when it has none, the domain itself on port 5269 (RFC 6120 §3.2.2). SRV
    /// records whose only target is `.` mean no service (RFC 2782): an error.
    async fn route_remote(
        &self,
        remote: &str,
        s2s: &crate::config::S2s,
    ) -> Result<Vec<RemoteHop>, String> {
        use crate::dns::Service;
        use crate::socks5::Target;
        if let Some(address) = s2s.route(remote) {
            return Ok(vec![RemoteHop {
                target: Target::Address(address),
                direct_tls: false,
            }]);
        }
        let resolver = self.shared.resolver.get(s2s.resolver)?;
        let service = tokio::time::timeout_at(self.preauth_deadline, resolver.service(remote))
            .await
            .map_err(|_| format!("the DNS lookup for {remote} timed out"))??;
        match service {
            Service::Records(hops) => Ok(hops
                .into_iter()
                .map(|h| RemoteHop {
                    target: Target::Domain(h.host, h.port),
                    direct_tls: h.direct_tls,
                })
                .collect()),
            Service::Unavailable => Err(format!(
                "{remote} has no server-to-server service (its SRV target is \".\")"
            )),
            Service::Fallback => Ok(vec![RemoteHop {
                target: Target::Domain(remote.to_owned(), 5269),
                direct_tls: false,
            }]),
        }
    }

    /// Opens a stream with `remote` at `hop`: TLS from the first byte for a
    /// direct-TLS record (XEP-0368), else STARTTLS (RFC 6120 §5.4) when the remote
    /// offers it; either way the certificate is checked for `remote`.
    async fn open_hop(
        &mut self,
        remote: &str,
        header: &[u8],
        hop: &RemoteHop,
        s2s: &crate::config::S2s,
    ) -> Result<OpenedRemote, String> {
        let budgets = self.config.limits.framer_budgets();
        let mut tcp = self.connect_remote(&hop.target, s2s).await?;
        if hop.direct_tls {
            let mut io = self
                .remote_tls(remote, Rewind::new(Default::default(), tcp))
                .await?;
            let mut reader = FrameReader::new(budgets.after);
            let (remote_header, features) =
                self.remote_stream(&mut io, &mut reader, header).await?;
            return Ok(OpenedRemote {
                io,
                reader,
                header: remote_header,
                features,
                tls: true,
                auth: tls_auth(s2s),
                via: String::new(),
            });
        }
        let mut reader = FrameReader::new(budgets.after);
        let (plain_header, features) = self.remote_stream(&mut tcp, &mut reader, header).await?;
        let offers_tls = xmppwall_xml::view::children(&features).any(|c| {
            c.start.local_name() == b"starttls"
                && crate::session::namespace(&c.start, "") == crate::session::TLS_NS
        });
        if !offers_tls {
            if s2s.egress_require_tls {
                return Err("the remote server does not offer STARTTLS".into());
            }
            // `egress_require_tls = false`: a plaintext stream, dialback only.
            return Ok(OpenedRemote {
                io: Box::new(tcp),
                reader,
                header: plain_header,
                features,
                tls: false,
                auth: xmppwall_policy::rules::PeerAuth::Dialback,
                via: String::new(),
            });
        }
        tcp.write_all(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await
            .map_err(|e| e.to_string())?;
        match reader
            .next(&mut tcp, 0, self.preauth_deadline, &mut self.shutdown)
            .await
        {
            ReadOutcome::Frame(Token::Element, len) => {
                let proceed = xmppwall_xml::view::StartTag::parse(&reader.buf[..len])
                    .is_some_and(|t| t.local_name() == b"proceed");
                reader.consume(len);
                if !proceed {
                    return Err("the remote server refused STARTTLS".into());
                }
            }
            _ => return Err("no answer to STARTTLS".into()),
        }
        let rest = std::mem::take(&mut reader.buf);
        let mut io = self.remote_tls(remote, Rewind::new(rest, tcp)).await?;
        let mut reader = FrameReader::new(budgets.after);
        let (remote_header, features) = self.remote_stream(&mut io, &mut reader, header).await?;
        Ok(OpenedRemote {
            io,
            reader,
            header: remote_header,
            features,
            tls: true,
            auth: tls_auth(s2s),
            via: String::new(),
        })
    }

    /// The server stream for a peer whose certificate proves `remote`: the peer's
    /// header (`header`), STARTTLS (RFC 6120 §5.4) when the server offers it, TLS
    /// presenting a certificate for `remote` minted by the upstream CA (the server
    /// checked by `[s2s] upstream_server_*`), the header again. Returns the stream,
    /// a reader holding the server's post-TLS header and features (for the relay to
    /// frame first), and whether TLS is in place; without STARTTLS on offer the
    /// stream stays plaintext (dialback only), as for any other peer.
    async fn open_server_with_certificate(
        &mut self,
        ca: &crate::upstream_ca::UpstreamCa,
        remote: &str,
        local: &str,
        header: &[u8],
    ) -> Result<(BoxIo, FrameReader, bool), String> {
        let budgets = self.config.limits.framer_budgets();
        let mut server = self
            .connect_server()
            .await
            .map_err(|_| "cannot connect to the server".to_string())?;
        let mut first =
            proxy_header::header(self.config.upstream.proxy_protocol, self.peer, self.local);
        first.extend_from_slice(header);
        let mut reader = FrameReader::new(budgets.after);
        let (plain_header, features) = self.remote_stream(&mut server, &mut reader, &first).await?;
        let offers_tls = xmppwall_xml::view::children(&features).any(|c| {
            c.start.local_name() == b"starttls"
                && crate::session::namespace(&c.start, "") == crate::session::TLS_NS
        });
        if !offers_tls {
            warn!(remote = %remote, "the server offers no STARTTLS to xmppwall: the peer's certificate cannot reach it (configure TLS for server-to-server streams on the server)");
            let mut replay = FrameReader::new(budgets.after);
            replay.buf.extend_from_slice(&plain_header);
            replay.buf.extend_from_slice(&features);
            replay.buf.extend_from_slice(&reader.buf);
            return Ok((server, replay, false));
        }
        server
            .write_all(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await
            .map_err(|e| e.to_string())?;
        match reader
            .next(&mut server, 0, self.preauth_deadline, &mut self.shutdown)
            .await
        {
            ReadOutcome::Frame(Token::Element, len) => {
                let proceed = xmppwall_xml::view::StartTag::parse(&reader.buf[..len])
                    .is_some_and(|t| t.local_name() == b"proceed");
                reader.consume(len);
                if !proceed {
                    return Err("the server refused STARTTLS".into());
                }
            }
            _ => return Err("no answer to STARTTLS from the server".into()),
        }
        // Bytes after <proceed/> belong to the TLS handshake (RFC 6120 §5.4.3.3).
        let rest = std::mem::take(&mut reader.buf);
        let config = ca.client_config(remote).map_err(|e| e.to_string())?;
        let name = ca.server_name(local)?;
        let connect =
            tokio_rustls::TlsConnector::from(config).connect(name, Rewind::new(rest, server));
        let mut tls: BoxIo = match tokio::time::timeout_at(self.preauth_deadline, connect).await {
            Ok(Ok(tls)) => Box::new(tls),
            Ok(Err(e)) => {
                return Err(format!(
                    "TLS with the server failed: {} (check [s2s] upstream_server_name and upstream_server_ca)",
                    describe_handshake_error(&e)
                ))
            }
            Err(_) => return Err("TLS with the server timed out".into()),
        };
        let mut reader = FrameReader::new(budgets.after);
        let (tls_header, features) = self.remote_stream(&mut tls, &mut reader, header).await?;
        let mut replay = FrameReader::new(budgets.after);
        replay.buf.extend_from_slice(&tls_header);
        replay.buf.extend_from_slice(&features);
        replay.buf.extend_from_slice(&reader.buf);
        debug!(remote = %remote, "server stream over TLS with a certificate for the peer");
        Ok((tls, replay, true))
    }

    /// TLS as the client towards `remote`: SNI and the certificate check for the
    /// remote domain, ALPN `xmpp-server` (XEP-0368).
    async fn remote_tls(&self, remote: &str, io: Rewind<Tcp>) -> Result<BoxIo, String> {
        let name = rustls::pki_types::ServerName::try_from(remote.to_owned())
            .map_err(|e| format!("{remote} is not a valid server name: {e}"))?;
        let tls_config = self.shared.s2s_tls.load().egress.clone();
        let connect = tokio_rustls::TlsConnector::from(tls_config).connect(name, io);
        match tokio::time::timeout_at(self.preauth_deadline, connect).await {
            Ok(Ok(tls)) => Ok(Box::new(tls)),
            Ok(Err(e)) => Err(format!(
                "TLS with the remote server failed: {}",
                describe_handshake_error(&e)
            )),
            Err(_) => Err("TLS with the remote server timed out".into()),
        }
    }

    /// Sends `header`, reads the remote's header and features; returns their bytes.
    async fn remote_stream<S: tokio::io::AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut S,
        reader: &mut FrameReader,
        header: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>), String> {
        io.write_all(header).await.map_err(|e| e.to_string())?;
        let mut remote_header = Vec::new();
        loop {
            match reader
                .next(io, 0, self.preauth_deadline, &mut self.shutdown)
                .await
            {
                ReadOutcome::Frame(Token::XmlDeclaration | Token::Whitespace, len) => {
                    reader.consume(len)
                }
                ReadOutcome::Frame(Token::StreamOpen, len) => {
                    PeerHeader::parse(&reader.buf[..len], SERVER_NS)
                        .map_err(|e| format!("bad stream header: {}", e.condition.name()))?;
                    remote_header = reader.buf[..len].to_vec();
                    reader.consume(len);
                }
                ReadOutcome::Frame(Token::Element, len) if !remote_header.is_empty() => {
                    let element = reader.buf[..len].to_vec();
                    reader.consume(len);
                    let is_features = xmppwall_xml::view::StartTag::parse(&element)
                        .is_some_and(|t| t.local_name() == b"features");
                    if !is_features {
                        return Err(format!(
                            "expected stream features, got {}",
                            String::from_utf8_lossy(&element[..element.len().min(120)])
                        ));
                    }
                    return Ok((remote_header, element));
                }
                ReadOutcome::Frame(..) => {
                    return Err("unexpected data from the remote server".into())
                }
                ReadOutcome::Closed => return Err("the remote server closed the connection".into()),
                ReadOutcome::TimedOut => {
                    return Err("the remote server did not answer in time".into())
                }
                ReadOutcome::Shutdown => return Err("shutting down".into()),
                ReadOutcome::Io(e) => return Err(e.to_string()),
                ReadOutcome::Framing(e) => {
                    return Err(format!("malformed XML from the remote server: {e}"))
                }
            }
        }
    }

    /// A TCP connection to `target`, within the connect timeout per address;
    /// through the SOCKS5 proxy when configured (RFC 1928; the proxy resolves the
    /// target's name), else the target's addresses from the egress's resolver,
    /// each in turn.
    async fn connect_remote(
        &self,
        target: &crate::socks5::Target,
        s2s: &crate::config::S2s,
    ) -> Result<Tcp, String> {
        use crate::socks5::Target;
        let timeout = self.config.upstream.connect_timeout;
        let tcp = match (s2s.socks5, target) {
            (Some(proxy), _) => {
                let connect = async {
                    let mut tcp = TcpStream::connect(proxy)
                        .await
                        .map_err(|e| format!("cannot reach the SOCKS5 proxy {proxy}: {e}"))?;
                    crate::socks5::connect(&mut tcp, target)
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok::<_, String>(tcp)
                };
                tokio::time::timeout(timeout, connect)
                    .await
                    .map_err(|_| "connecting timed out".to_string())??
            }
            (None, Target::Address(address)) => {
                tokio::time::timeout(timeout, TcpStream::connect(address))
                    .await
                    .map_err(|_| format!("{address}: connecting timed out"))?
                    .map_err(|e| format!("{address}: {e}"))?
            }
            (None, Target::Domain(name, port)) => {
                let resolver = self.shared.resolver.get(s2s.resolver)?;
                let addresses =
                    tokio::time::timeout_at(self.preauth_deadline, resolver.addresses(name))
                        .await
                        .map_err(|_| format!("the DNS lookup for {name} timed out"))??;
                let mut failures = Vec::new();
                let mut connected = None;
                for ip in addresses {
                    let address = SocketAddr::new(ip, *port);
                    match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
                        Ok(Ok(tcp)) => {
                            connected = Some(tcp);
                            break;
                        }
                        Ok(Err(e)) => failures.push(format!("{address}: {e}")),
                        Err(_) => failures.push(format!("{address}: connecting timed out")),
                    }
                }
                connected.ok_or_else(|| failures.join(", "))?
            }
        };
        let _ = tcp.set_nodelay(true);
        Ok(SendDeadline::new(tcp, self.config.timeouts.send))
    }

    /// The checks of a remote server's stream header: a hosted `to` (RFC 6120
    /// §4.9.3.6 `<host-unknown/>`), a `from` the `[federation]` lists allow
    /// (`<policy-violation/>`, §4.9.3.15), no ban on the address.
    fn check_s2s_header(&self, header: &PeerHeader) -> Result<(), StreamError> {
        if let Some(error) = self.admission.banned.clone() {
            return Err(error);
        }
        let hosted = &self.config.domains;
        match &header.to {
            None if !hosted.is_empty() => {
                return Err(StreamError::new(StreamCondition::HostUnknown)
                    .with_text("the stream header has no 'to' address"))
            }
            Some(to) if !hosted.is_empty() && !hosted.iter().any(|d| peer::is_within(to, d)) => {
                return Err(StreamError::new(StreamCondition::HostUnknown)
                    .with_text(format!("this server does not host {to}")))
            }
            _ => {}
        }
        if let Some(from) = &header.from {
            if self
                .shared
                .limiter
                .load()
                .antispam
                .federation_refuses(from, None)
            {
                info!(remote = %from, "stream from a denied domain refused");
                return Err(StreamError::new(StreamCondition::PolicyViolation)
                    .with_text(format!("federation with {from} is not allowed")));
            }
        }
        Ok(())
    }

    /// TLS for a remote server: the certificate for the name it asked for, and
    /// its own certificate asked for.
    async fn accept_s2s_tls(
        &self,
        tcp: Rewind<Tcp>,
        fallback_name: Option<&str>,
    ) -> Result<(BoxIo, Vec<rustls::pki_types::CertificateDer<'static>>), End> {
        self.accept_tls_with(tcp, fallback_name, true).await
    }

    /// Reads the optional XML declaration and the stream header, and checks its
    /// namespaces. Returns the header and how many bytes it took (kept in
    /// `reader.buf`, to be replayed to the server).
    pub(crate) async fn read_header<S: tokio::io::AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut S,
        reader: &mut FrameReader,
        content_ns: &str,
        local_domain: Option<&str>,
    ) -> Result<(PeerHeader, usize), End> {
        let mut offset = 0;
        loop {
            let outcome = reader
                .next(io, offset, self.preauth_deadline, &mut self.shutdown)
                .await;
            match outcome {
                ReadOutcome::Frame(Token::XmlDeclaration, len) => offset += len,
                ReadOutcome::Frame(Token::StreamOpen, len) => {
                    let header = &reader.buf[offset..offset + len];
                    let parsed = PeerHeader::parse(header, content_ns)
                        .and_then(|h| peer::refuse_foreign_prefixes(header).map(|()| h));
                    return match parsed {
                        Ok(header) => Ok((header, offset + len)),
                        Err(error) => Err(self
                            .refuse_before_header(io, content_ns, local_domain, error)
                            .await),
                    };
                }
                other => {
                    return Err(self
                        .end_before_header(io, other, content_ns, local_domain)
                        .await)
                }
            }
        }
    }

    /// STARTTLS on the inbound s2s front: the peer's plaintext header checked,
    /// xmppwall's own answer offering only STARTTLS, then the TLS handshake.
    async fn s2s_starttls(
        &mut self,
        mut plain: Tcp,
        mut reader: FrameReader,
    ) -> Result<(BoxIo, Vec<rustls::pki_types::CertificateDer<'static>>), End> {
        let (header, len) = self
            .read_header(&mut plain, &mut reader, SERVER_NS, None)
            .await?;
        reader.consume(len);
        if let Err(error) = self.check_s2s_header(&header) {
            let local = header.to.clone();
            return Err(self
                .refuse_before_header(&mut plain, SERVER_NS, local.as_deref(), error)
                .await);
        }
        // RFC 6120 §5.3.1, §5.4.2: xmppwall answers the stream itself (the
        // dialback namespace declared, XEP-0220 §2.1.1) and offers only
        // STARTTLS, as mandatory-to-negotiate.
        let mut out =
            peer::response_header(SERVER_NS, header.to.as_deref(), header.from.as_deref());
        out.extend_from_slice(crate::session::STARTTLS_FEATURES);
        if let Err(e) = plain.write_all(&out).await {
            return Err(End::PeerIo(e));
        }
        loop {
            match reader
                .next(&mut plain, 0, self.preauth_deadline, &mut self.shutdown)
                .await
            {
                ReadOutcome::Frame(Token::Whitespace, len) => reader.consume(len),
                ReadOutcome::Frame(Token::Element, len) => {
                    let is_starttls = xmppwall_xml::view::StartTag::parse(&reader.buf[..len])
                        .is_some_and(|t| {
                            t.local_name() == b"starttls"
                                && crate::session::namespace(&t, SERVER_NS)
                                    == crate::session::TLS_NS
                        });
                    reader.consume(len);
                    if is_starttls {
                        break;
                    }
                    let error = StreamError::new(StreamCondition::PolicyViolation)
                        .with_text("STARTTLS is required before anything else");
                    let bytes = error.to_bytes(Some("stream"));
                    return Err(refuse(&self.shared, &mut plain, bytes, error.condition).await);
                }
                ReadOutcome::Frame(..) | ReadOutcome::Closed => {
                    let _ = plain.write_all(b"</stream:stream>").await;
                    return Err(End::PeerClosed);
                }
                ReadOutcome::Io(e) => return Err(End::PeerIo(e)),
                ReadOutcome::TimedOut => {
                    let error = StreamError::new(StreamCondition::ConnectionTimeout);
                    let bytes = error.to_bytes(Some("stream"));
                    return Err(refuse(&self.shared, &mut plain, bytes, error.condition).await);
                }
                ReadOutcome::Shutdown => {
                    let error = StreamError::new(StreamCondition::SystemShutdown);
                    let bytes = error.to_bytes(Some("stream"));
                    let _ = refuse(&self.shared, &mut plain, bytes, error.condition).await;
                    return Err(End::Shutdown);
                }
                ReadOutcome::Framing(e) => {
                    let error = framing_error(e);
                    let bytes = error.to_bytes(Some("stream"));
                    return Err(refuse(&self.shared, &mut plain, bytes, error.condition).await);
                }
            }
        }
        if let Err(e) = plain.write_all(crate::session::STARTTLS_PROCEED).await {
            return Err(End::PeerIo(e));
        }
        // Bytes after <starttls/> start the TLS handshake (RFC 6120 §5.4.3.3).
        // The pre-TLS stream was plain TCP: take the socket back out.
        let rest = std::mem::take(&mut reader.buf);
        self.accept_s2s_tls(Rewind::new(rest, plain), header.to.as_deref())
            .await
    }

    /// Ends a stream whose header did not come: `outcome` is what came instead.
    async fn end_before_header<W: AsyncWrite + Unpin>(
        &self,
        io: &mut W,
        outcome: ReadOutcome,
        content_ns: &str,
        local_domain: Option<&str>,
    ) -> End {
        let error = match outcome {
            ReadOutcome::Frame(..) => StreamError::new(StreamCondition::NotWellFormed)
                .with_text("expected a stream header"),
            ReadOutcome::Closed => return End::PeerClosed,
            ReadOutcome::Io(e) => return End::PeerIo(e),
            ReadOutcome::TimedOut => StreamError::new(StreamCondition::ConnectionTimeout),
            ReadOutcome::Shutdown => {
                let error = StreamError::new(StreamCondition::SystemShutdown);
                let _ = self
                    .refuse_before_header(io, content_ns, local_domain, error)
                    .await;
                return End::Shutdown;
            }
            ReadOutcome::Framing(e) => framing_error(e),
        };
        self.refuse_before_header(io, content_ns, local_domain, error)
            .await
    }

    /// Sends xmppwall's own stream header and `error`, then closes (RFC 6120
    /// §4.9.1.2: an error is always preceded by a header the peer received).
    pub(crate) async fn refuse_before_header<W: AsyncWrite + Unpin>(
        &self,
        io: &mut W,
        content_ns: &str,
        local_domain: Option<&str>,
        error: StreamError,
    ) -> End {
        let mut out = peer::response_header(content_ns, local_domain, None);
        out.extend_from_slice(&error.to_bytes(Some("stream")));
        refuse(&self.shared, io, out, error.condition).await
    }

    /// Accepts TLS with the certificate for the name the peer asked for (SNI, else
    /// `fallback_name`), with `config` when given (e.g. asking for a client
    /// certificate).
    pub(crate) async fn accept_tls(
        &self,
        tcp: Rewind<Tcp>,
        fallback_name: Option<&str>,
    ) -> Result<BoxIo, End> {
        self.accept_tls_with(tcp, fallback_name, false)
            .await
            .map(|(io, _)| io)
    }

    /// Like [`Self::accept_tls`], with the server-to-server configuration when
    /// `s2s` is set; also returns the peer's certificate chain, if it sent one.
    pub(crate) async fn accept_tls_with(
        &self,
        tcp: Rewind<Tcp>,
        fallback_name: Option<&str>,
        s2s: bool,
    ) -> Result<(BoxIo, Vec<rustls::pki_types::CertificateDer<'static>>), End> {
        let handshake = async {
            let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp).await?;
            let name = start
                .client_hello()
                .server_name()
                .map(str::to_owned)
                .or_else(|| fallback_name.map(str::to_owned));
            let config = if s2s {
                self.shared.certs.s2s_config_for(name.as_deref())
            } else {
                self.shared.certs.config_for(name.as_deref())
            };
            let Some(config) = config else {
                return Err(io::Error::other("no certificate configured"));
            };
            start.into_stream(config).await
        };
        match tokio::time::timeout_at(self.preauth_deadline, handshake).await {
            Ok(Ok(tls)) => {
                let chain = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                    .unwrap_or_default();
                Ok((Box::new(tls), chain))
            }
            Ok(Err(e)) => {
                Stats::add(&self.shared.stats.tls_handshake_failures, 1);
                info!(error = %describe_handshake_error(&e), "TLS handshake failed");
                Err(End::PeerIo(e))
            }
            Err(_) => {
                Stats::add(&self.shared.stats.tls_handshake_failures, 1);
                Err(End::Refused(StreamCondition::ConnectionTimeout))
            }
        }
    }

    /// Connects to the server behind xmppwall: this listener's `upstream`, else
    /// `[upstream] address`.
    pub(crate) async fn connect_server(&self) -> Result<BoxIo, End> {
        let address = self
            .listener
            .upstream
            .unwrap_or(self.config.upstream.address);
        let connect = TcpStream::connect(address);
        match tokio::time::timeout(self.config.upstream.connect_timeout, connect).await {
            Ok(Ok(tcp)) => {
                let _ = tcp.set_nodelay(true);
                Ok(Box::new(SendDeadline::new(tcp, self.config.timeouts.send)))
            }
            Ok(Err(e)) => {
                Stats::add(&self.shared.stats.upstream_connect_failures, 1);
                warn!(upstream = %address, error = %e, "cannot reach the server");
                Err(End::ServerIo(e))
            }
            Err(_) => {
                Stats::add(&self.shared.stats.upstream_connect_failures, 1);
                warn!(upstream = %address, "connecting to the server timed out");
                Err(End::ServerIo(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connect timed out",
                )))
            }
        }
    }

    /// Relays both directions until either ends; `reader` holds what the peer sent
    /// after its header, `server_reader` (when xmppwall read the server's header
    /// itself) what the server sent after it. The stream is in the session registry
    /// meanwhile, under `live`: the stream's `to` and its peer domains so far.
    pub(crate) async fn relay<S: PeerSession>(
        &self,
        peer_io: BoxIo,
        server_io: BoxIo,
        reader: FrameReader,
        server_reader: Option<FrameReader>,
        session: Mutex<S>,
        live: (Option<String>, Vec<String>),
    ) -> End {
        let (to, domains) = live;
        let registration =
            self.shared
                .sessions
                .register(self.id, self.peer, self.listener.front.name(), to);
        registration.session.set_domains(domains);
        let _ = self.live.set(registration.session.clone());
        let (peer_rd, peer_wr) = tokio::io::split(peer_io);
        let (server_rd, server_wr) = tokio::io::split(server_io);
        let writers = Writers {
            peer: AsyncMutex::new(peer_wr),
            server: AsyncMutex::new(server_wr),
        };
        let inbound = self.peer_to_server(peer_rd, reader, &session, &writers, &registration);
        let outbound = self.server_to_peer(
            server_rd,
            server_reader,
            &session,
            &writers,
            &registration.session,
        );
        let mut inbound = Box::pin(inbound);
        let mut outbound = Box::pin(outbound);
        let grace = self.config.timeouts.shutdown_grace;
        let end = tokio::select! {
            end = &mut inbound => {
                let _ = tokio::time::timeout(grace, &mut outbound).await;
                end
            }
            end = &mut outbound => {
                let _ = tokio::time::timeout(grace, &mut inbound).await;
                end
            }
        };
        // A direction still running after the grace may hold a writer's lock in a
        // write that waits for its peer: dropped here, it lets the lock go.
        drop((inbound, outbound));
        let _ = tokio::time::timeout(grace, async {
            let _ = writers.peer.lock().await.shutdown().await;
            let _ = writers.server.lock().await.shutdown().await;
        })
        .await;
        end
    }

    /// Peer → server: frames, asks the session, forwards runs of passed frames.
    async fn peer_to_server<S: PeerSession>(
        &self,
        mut rd: ReadHalf<BoxIo>,
        reader: FrameReader,
        session: &Mutex<S>,
        w: &Writers,
        registration: &Registration<'_>,
    ) -> End {
        let budgets = self.config.limits.framer_budgets();
        let stats = &self.shared.stats;
        let live = &*registration.session;
        let mut kicked = registration.kicked.clone();
        let FrameReader {
            mut framer,
            mut buf,
        } = reader;
        let mut shutdown = self.shutdown.clone();
        let mut after_limits = false;
        let mut domains_seen = 0;
        loop {
            // After SASL success the peer's next bytes open a new stream (RFC 6120
            // §6.4.6); it may send them only once it has the server's <success/>,
            // which the session saw before it was relayed.
            if lock(session).take_peer_restart() {
                framer.reset();
            }
            let mut pos = 0;
            let mut run_start = 0;
            let mut stanzas = 0u64;
            loop {
                let frame = match framer.next(&buf[pos..]) {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => {
                        let _ = w.to_server(&buf[run_start..pos]).await;
                        return self.close_both(session, w, framing_error(e)).await;
                    }
                };
                let action = lock(session).on_peer_frame(
                    frame.token,
                    &buf[pos..pos + frame.len],
                    Instant::now().into_std(),
                );
                let element = frame.token == Token::Element;
                if action == PeerAction::Forward {
                    stanzas += u64::from(element);
                    pos += frame.len;
                    continue;
                }
                if let Err(e) = w.to_server(&buf[run_start..pos]).await {
                    return End::ServerIo(e);
                }
                pos += frame.len;
                run_start = pos;
                match action {
                    PeerAction::Forward => {}
                    PeerAction::Drop => {
                        if element {
                            Stats::add(&stats.to_server_dropped, 1);
                        }
                    }
                    PeerAction::Rewrite(bytes) => {
                        stanzas += u64::from(element);
                        if let Err(e) = w.to_server(&bytes).await {
                            return End::ServerIo(e);
                        }
                    }
                    PeerAction::Reply(bytes) => {
                        Stats::add(&stats.stanzas_bounced, 1);
                        if let Err(e) = w.to_peer(&bytes).await {
                            return End::PeerIo(e);
                        }
                    }
                    PeerAction::Close(error) => {
                        Stats::add(&stats.to_server_closed, u64::from(element));
                        Stats::add(&stats.stanzas_to_server, stanzas);
                        LiveSession::add(&live.stanzas_from_client, stanzas);
                        return self.close_both(session, w, error).await;
                    }
                }
            }
            Stats::add(&stats.stanzas_to_server, stanzas);
            LiveSession::add(&live.stanzas_from_client, stanzas);
            if let Err(e) = w.to_server(&buf[run_start..pos]).await {
                return End::ServerIo(e);
            }
            release_consumed(&mut buf, pos);
            refresh_domains(session, live, &mut domains_seen);
            let authenticated = lock(session).is_authenticated();
            if authenticated && !after_limits {
                framer.set_limits(budgets.after);
                after_limits = true;
            }
            let deadline = if authenticated {
                Instant::now() + self.config.timeouts.idle
            } else {
                self.preauth_deadline
            };
            let read = tokio::select! {
                r = read_before(deadline, &mut rd, &mut buf) => r,
                // An operator's kick (admin API): the peer gets the chosen stream
                // error and the end of the stream (RFC 6120 §4.9.1.1), the server
                // the end of its stream. Between whole frames: nothing partial is
                // pending towards the server.
                error = crate::c2s::kicked_error(&mut kicked) => {
                    info!(condition = error.condition.name(), "stream kicked by the operator");
                    return self.close_both(session, w, error).await;
                }
                _ = shutdown.changed() => {
                    let error = StreamError::new(StreamCondition::SystemShutdown);
                    let _ = self.close_both(session, w, error).await;
                    return End::Shutdown;
                }
            };
            match read {
                Ok(Ok(0)) => {
                    let _ = w.server.lock().await.shutdown().await;
                    return End::PeerClosed;
                }
                Ok(Ok(n)) => {
                    Stats::add(&stats.bytes_from_client, n as u64);
                    LiveSession::add(&live.bytes_from_client, n as u64);
                }
                Ok(Err(e)) => {
                    let _ = w.server.lock().await.shutdown().await;
                    return End::PeerIo(e);
                }
                Err(_) => {
                    let text = if authenticated {
                        "idle timeout"
                    } else {
                        "authentication did not complete in time"
                    };
                    let error =
                        StreamError::new(StreamCondition::ConnectionTimeout).with_text(text);
                    return self.close_both(session, w, error).await;
                }
            }
        }
    }

    /// Server → peer: frames, asks the session, forwards.
    async fn server_to_peer<S: PeerSession>(
        &self,
        mut rd: ReadHalf<BoxIo>,
        reader: Option<FrameReader>,
        session: &Mutex<S>,
        w: &Writers,
        live: &LiveSession,
    ) -> End {
        let stats = &self.shared.stats;
        let mut domains_seen = 0;
        let budgets = self.config.limits.framer_budgets();
        let limits = xmppwall_xml::Limits {
            max_element_bytes: budgets.after.max_element_bytes.max(SERVER_ELEMENT_BYTES),
            ..budgets.after
        };
        let (mut framer, mut buf) = match reader {
            Some(FrameReader { mut framer, buf }) => {
                framer.set_limits(limits);
                (framer, buf)
            }
            None => (Framer::new(limits), BytesMut::new()),
        };
        let mut first = true;
        loop {
            // What xmppwall already read of the server is framed before reading more.
            if !std::mem::take(&mut first) || buf.is_empty() {
                match read_into(&mut rd, &mut buf).await {
                    Ok(0) => {
                        let _ = w.peer.lock().await.shutdown().await;
                        return End::ServerClosed;
                    }
                    Ok(n) => {
                        Stats::add(&stats.bytes_from_server, n as u64);
                        LiveSession::add(&live.bytes_to_client, n as u64);
                    }
                    Err(e) => {
                        let error = StreamError::new(StreamCondition::RemoteConnectionFailed);
                        let bytes = lock(session).peer_error_bytes(&error);
                        let _ = w.to_peer(&bytes).await;
                        return End::ServerIo(e);
                    }
                }
            }
            let mut pos = 0;
            let mut run_start = 0;
            let mut stanzas = 0u64;
            loop {
                let frame = match framer.next(&buf[pos..]) {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => {
                        warn!(error = %e, "the server sent XML xmppwall cannot frame");
                        let _ = w.to_peer(&buf[run_start..pos]).await;
                        let error = StreamError::new(StreamCondition::InternalServerError);
                        return self.close_both(session, w, error).await;
                    }
                };
                let (action, restart) = {
                    let mut session = lock(session);
                    let action = session.on_server_frame(
                        frame.token,
                        &buf[pos..pos + frame.len],
                        Instant::now().into_std(),
                    );
                    (action, session.take_server_restart())
                };
                if restart {
                    // What follows is the server's new stream (RFC 6120 §6.4.6).
                    framer.reset();
                }
                let element = frame.token == Token::Element;
                if action == PeerAction::Forward {
                    stanzas += u64::from(element);
                    pos += frame.len;
                    continue;
                }
                if let Err(e) = w.to_peer(&buf[run_start..pos]).await {
                    return End::PeerIo(e);
                }
                pos += frame.len;
                run_start = pos;
                match action {
                    PeerAction::Forward => {}
                    PeerAction::Drop => {
                        if element {
                            Stats::add(&stats.to_client_dropped, 1);
                        }
                    }
                    PeerAction::Rewrite(bytes) => {
                        stanzas += u64::from(element);
                        if let Err(e) = w.to_peer(&bytes).await {
                            return End::PeerIo(e);
                        }
                    }
                    PeerAction::Reply(bytes) => {
                        Stats::add(&stats.stanzas_bounced, 1);
                        if let Err(e) = w.to_server(&bytes).await {
                            return End::ServerIo(e);
                        }
                    }
                    PeerAction::Close(error) => {
                        Stats::add(&stats.to_client_closed, u64::from(element));
                        Stats::add(&stats.stanzas_to_client, stanzas);
                        LiveSession::add(&live.stanzas_to_client, stanzas);
                        return self.close_both(session, w, error).await;
                    }
                }
            }
            Stats::add(&stats.stanzas_to_client, stanzas);
            LiveSession::add(&live.stanzas_to_client, stanzas);
            if let Err(e) = w.to_peer(&buf[run_start..pos]).await {
                return End::PeerIo(e);
            }
            release_consumed(&mut buf, pos);
            refresh_domains(session, live, &mut domains_seen);
        }
    }

    /// Ends both streams: the peer gets `error`, the server the end of its stream.
    async fn close_both<S: PeerSession>(
        &self,
        session: &Mutex<S>,
        w: &Writers,
        error: StreamError,
    ) -> End {
        let condition = error.condition;
        debug!(condition = condition.name(), "refusing stream");
        let bytes = lock(session).peer_error_bytes(&error);
        // The other direction may hold a writer's lock in a write its peer does not
        // read; the send deadline bounds that write, and so this wait.
        {
            let mut peer = w.peer.lock().await;
            let _ = refuse(&self.shared, &mut *peer, bytes, condition).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            let mut server = w.server.lock().await;
            let _ = server.write_all(b"</stream:stream>").await;
            let _ = server.shutdown().await;
        })
        .await;
        if condition == StreamCondition::SystemShutdown {
            End::Shutdown
        } else {
            End::Refused(condition)
        }
    }
}

/// A stream opened to a remote server, ready to relay.
/// One place the egress tries for a remote domain.
struct RemoteHop {
    target: crate::socks5::Target,
    /// TLS from the first byte (an `_xmpps-server` record, XEP-0368).
    direct_tls: bool,
}

impl std::fmt::Display for RemoteHop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.target {
            crate::socks5::Target::Address(a) => write!(f, "{a}")?,
            crate::socks5::Target::Domain(name, port) => write!(f, "{name}:{port}")?,
        }
        if self.direct_tls {
            f.write_str(" (direct TLS)")?;
        }
        Ok(())
    }
}

/// How a remote server over TLS is proven: its certificate, unless checks are off.
fn tls_auth(s2s: &crate::config::S2s) -> xmppwall_policy::rules::PeerAuth {
    if s2s.egress_insecure_skip_verify {
        xmppwall_policy::rules::PeerAuth::Dialback
    } else {
        xmppwall_policy::rules::PeerAuth::Certificate
    }
}

struct OpenedRemote {
    io: BoxIo,
    /// What the remote sent after its features.
    reader: FrameReader,
    header: Vec<u8>,
    features: Vec<u8>,
    tls: bool,
    auth: xmppwall_policy::rules::PeerAuth,
    /// Where it was reached (for the log).
    via: String,
}

/// The two write halves, shared by both directions (a reply goes back the way
/// its stanza came).
struct Writers {
    peer: AsyncMutex<WriteHalf<BoxIo>>,
    server: AsyncMutex<WriteHalf<BoxIo>>,
}

impl Writers {
    async fn to_server(&self, bytes: &[u8]) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.server.lock().await.write_all(bytes).await
    }

    async fn to_peer(&self, bytes: &[u8]) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.peer.lock().await.write_all(bytes).await
    }
}

/// Writes the bytes that end a stream, then closes; bounded in time.
pub(crate) async fn refuse<W: AsyncWrite + Unpin>(
    shared: &Shared,
    io: &mut W,
    bytes: Vec<u8>,
    condition: StreamCondition,
) -> End {
    Stats::add(&shared.stats.streams_closed_by_error, 1);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = io.write_all(&bytes).await;
        let _ = io.shutdown().await;
    })
    .await;
    End::Refused(condition)
}

/// Copies the session's peer domains to its registry entry when their number
/// changed (a domain authenticated): a lock-free count most of the time.
fn refresh_domains<S: PeerSession>(session: &Mutex<S>, live: &LiveSession, seen: &mut usize) {
    let s = lock(session);
    let n = s.peer_domain_count();
    if n != *seen {
        *seen = n;
        let domains = s.peer_domains();
        drop(s);
        live.set_domains(domains);
    }
}

/// The session lock is held for a few instructions, never across an await.
fn lock<S>(session: &Mutex<S>) -> MutexGuard<'_, S> {
    session.lock().unwrap_or_else(|p| p.into_inner())
}
