//! What the server-to-server and component fronts share, sans-IO: the action a
//! session returns for one frame, the policy context of a peer stream, and the
//! checks every peer stanza goes through (size, then the operator's rules).
//!
//! A peer is a remote server or an external component: unlike a client it speaks for
//! whole domains, so its identity is a domain and how that domain was proven
//! ([`PeerAuth`]). Sessions ([`crate::component`], [`crate::s2s`], [`crate::egress`])
//! decide; the driver ([`crate::relay`]) reads and writes.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use xmppwall_policy::limiter::Verdict;
use xmppwall_policy::rules::{Hook, Marks, PeerAuth, Policy, StreamFront, Subject};
use xmppwall_policy::stanza::Stanza;
use xmppwall_policy::{Limiter, UserClass};
use xmppwall_xml::view::{self, StartTag};
use xmppwall_xml::Token;

use crate::config::Limits;
use crate::enforce::{self, PolicyOutcome};
use crate::recorder::Recorder;
use crate::session::{self, namespace, STREAMS_NS};
use crate::stream::HeaderDue;
use crate::stream_error::{StanzaError, StreamCondition, StreamError};

/// XEP-0220 §2.1: the dialback namespace, declared on the stream header with the
/// `db` prefix.
pub const DIALBACK_NS: &str = "jabber:server:dialback";
/// RFC 6120 §4.8.2: the content namespace of server-to-server streams.
pub const SERVER_NS: &str = "jabber:server";
/// XEP-0114 §3: the content namespace of an accepted component's stream.
pub const COMPONENT_NS: &str = "jabber:component:accept";
/// XEP-0288: bidirectional server-to-server streams (feature and request).
pub const BIDI_FEATURE_NS: &str = "urn:xmpp:features:bidi";

/// What to do with one frame, whichever side sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerAction {
    /// Send the original bytes on to the other side.
    Forward,
    /// Send these bytes on instead (children stripped, features rewritten).
    Rewrite(Vec<u8>),
    /// Send nothing on; send these bytes back to the side that sent the frame (an
    /// error stanza).
    Reply(Vec<u8>),
    /// Send nothing to anyone.
    Drop,
    /// End the peer's stream with this error; the server's stream ends too.
    Close(StreamError),
}

/// A session of a peer front, as the driver sees it.
pub trait PeerSession: Send {
    /// A frame from the peer (remote server, component) towards the server.
    fn on_peer_frame(&mut self, token: Token, bytes: &[u8], now: Instant) -> PeerAction;
    /// A frame from the server towards the peer.
    fn on_server_frame(&mut self, token: Token, bytes: &[u8], now: Instant) -> PeerAction;
    /// Whether the peer has proven a domain: the post-authentication framer limits
    /// and the idle timeout apply from then on.
    fn is_authenticated(&self) -> bool;
    /// The bytes that end the peer's stream with `error`: preceded by a stream
    /// header while the peer waits for one (RFC 6120 §4.9.1.2).
    fn peer_error_bytes(&self, error: &StreamError) -> Vec<u8>;
    /// Whether the peer's stream restarts (after SASL success, RFC 6120 §6.4.6):
    /// asked before framing what the peer sent since; the relay then starts a new
    /// stream in the peer's framer.
    fn take_peer_restart(&mut self) -> bool {
        false
    }
    /// Whether the server's stream restarts after the frame just handled.
    fn take_server_restart(&mut self) -> bool {
        false
    }
    /// How many peer domains are authenticated on the stream so far (read after
    /// every read; the registry copies [`Self::peer_domains`] when it changes).
    fn peer_domain_count(&self) -> usize {
        0
    }
    /// The remote domains authenticated on the stream, for the session registry.
    fn peer_domains(&self) -> Vec<String> {
        Vec::new()
    }
}

/// What a peer stream's policy checks need, whatever the front.
#[derive(Debug)]
pub struct PeerContext {
    pub front: StreamFront,
    pub limits: Limits,
    pub limiter: Arc<ArcSwap<Limiter>>,
    pub policy: Arc<ArcSwap<Policy>>,
    pub ip: IpAddr,
    pub marks: Marks,
    pub recorder: Option<Arc<Recorder>>,
    /// Where verdicts other than pass are recorded (the store's audit trail).
    pub audit: Option<xmppwall_store::Store>,
}

impl PeerContext {
    /// The stanza size limit (XEP-0205 §2.5), then the operator's rules for `hook`.
    /// `peer` is the peer domain the stanza belongs to and how it was proven.
    ///
    /// On an inbound server-to-server stream a refusal is a drop, never an error
    /// reply: without bidirectional streams (XEP-0288 §1, not offered) the remote
    /// server accepts no stanza on the stream it opened, and Prosody 0.12 ends such a
    /// stream with `<not-authorized/>` when one arrives, taking down federation for
    /// a refused stanza. Components accept stanzas on their stream, so they get the
    /// error.
    pub fn check_stanza(
        &mut self,
        hook: Hook,
        tag: &StartTag<'_>,
        bytes: &[u8],
        peer: (&str, PeerAuth),
        now: Instant,
    ) -> PeerAction {
        match self.check_stanza_answering(hook, tag, bytes, peer, now) {
            PeerAction::Reply(_) if self.front == StreamFront::S2s && hook == Hook::ToServer => {
                PeerAction::Drop
            }
            other => other,
        }
    }

    fn check_stanza_answering(
        &mut self,
        hook: Hook,
        tag: &StartTag<'_>,
        bytes: &[u8],
        peer: (&str, PeerAuth),
        now: Instant,
    ) -> PeerAction {
        let sender = tag.attribute(b"from");
        if bytes.len() > self.limits.stanza_bytes {
            self.limiter
                .load()
                .state
                .hit(xmppwall_policy::LimitKind::StanzaSize);
            return reply_or_drop(
                StanzaError::stanza_too_big(self.limits.stanza_bytes),
                tag,
                sender.as_deref(),
            );
        }
        if let Some(action) = self.peer_limits(hook, tag, bytes, peer.0, sender.as_deref(), now) {
            return action;
        }
        let policy = self.policy.load();
        if !policy.has_hook(hook) && self.recorder.is_none() {
            return PeerAction::Forward;
        }
        let Some(stanza) = Stanza::with_start(*tag, bytes) else {
            return PeerAction::Forward;
        };
        let marks = self.marks.clone();
        let subject = Subject {
            ip: self.ip,
            class: UserClass::Registered,
            mechanism: None,
            account: None,
            marks: &marks,
            stranger: None,
            front: self.front,
            peer_domain: Some(peer.0),
            peer_auth: Some(peer.1),
        };
        let limiter = self.limiter.load();
        let outcome = enforce::apply(
            &policy,
            hook,
            Some(&stanza),
            &subject,
            enforce::StreamState {
                limiter: &limiter,
                marks: &mut self.marks,
                account: None,
                recorder: self.recorder.as_ref(),
                audit: self.audit.as_ref(),
                identity: Some(peer.0),
            },
            now,
        );
        match outcome {
            PolicyOutcome::Pass(None) => PeerAction::Forward,
            PolicyOutcome::Pass(Some(rewritten)) => PeerAction::Rewrite(rewritten),
            PolicyOutcome::Drop => PeerAction::Drop,
            PolicyOutcome::Bounce(error) => reply_or_drop(error, tag, sender.as_deref()),
            PolicyOutcome::Close(error) => PeerAction::Close(error),
        }
    }
}

impl PeerContext {
    /// XEP-0205 per remote domain and per remote sender (`[limits.peers]`):
    /// towards the server, the stanza rate of the peer domain, the remote sender's
    /// distinct recipients and the domain's subscription requests, a refusal
    /// answered to the sender (a component) or dropped (a remote server: see
    /// [`Self::check_stanza`]); towards a peer, the egress's
    /// stanza rate per destination domain (a refusal is a drop: see
    /// [`crate::egress`]) and the local senders remembered as correspondents.
    /// `None` when the stanza passes.
    fn peer_limits(
        &self,
        hook: Hook,
        tag: &StartTag<'_>,
        bytes: &[u8],
        domain: &str,
        sender: Option<&str>,
        now: Instant,
    ) -> Option<PeerAction> {
        let limiter = self.limiter.load();
        let peers = &limiter.config.peers;
        if peers.stanzas_per_domain.is_none()
            && peers.distinct_recipients.is_none()
            && peers.subscription_requests.is_none()
        {
            return None;
        }
        let stanza = Stanza::with_start(*tag, bytes)?;
        let verdict = match hook {
            Hook::ToServer => limiter.check_peer_inbound(domain, &stanza, now),
            Hook::ToClient => {
                let egress = self.front == StreamFront::S2sEgress;
                limiter.check_peer_outbound(egress.then_some(domain), &stanza, now)
            }
            _ => return None,
        };
        match verdict {
            Verdict::Pass => None,
            Verdict::Drop(kind) => {
                tracing::info!(limit = kind.name(), peer = domain, "peer stanza refused");
                Some(PeerAction::Drop)
            }
            Verdict::Bounce(kind, error) => {
                tracing::info!(limit = kind.name(), peer = domain, "peer stanza refused");
                Some(reply_or_drop(error, tag, sender))
            }
            Verdict::Close(_, error) => Some(PeerAction::Close(error)),
        }
    }
}

/// The error reply to a refused stanza, to its sender; a silent drop where RFC 6120
/// §8.3.1 forbids answering (errors, IQ results).
fn reply_or_drop(error: StanzaError, tag: &StartTag<'_>, sender: Option<&str>) -> PeerAction {
    match error.reply_to(tag, sender) {
        Some(reply) => PeerAction::Reply(reply),
        None => PeerAction::Drop,
    }
}

/// Whether `domain` is `parent` or one of its subdomains (by label).
pub fn is_within(domain: &str, parent: &str) -> bool {
    domain == parent
        || domain
            .strip_suffix(parent)
            .is_some_and(|rest| rest.ends_with('.'))
}

/// The domain part of a JID (RFC 7622 §3.2), lowercased.
pub fn jid_domain(jid: &str) -> String {
    xmppwall_policy::stanza::domain_of(jid).to_ascii_lowercase()
}

/// A peer's stream header (RFC 6120 §4.7), read for a server or component stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerHeader {
    pub to: Option<String>,
    pub from: Option<String>,
    pub id: Option<String>,
    pub version: Option<String>,
    /// Whether the header declares the dialback namespace (XEP-0220 §2.1.1).
    pub dialback: bool,
}

/// Refuses a peer's stream header (a remote server's, a component's) that binds a
/// prefix to anything but the streams or the dialback namespace (XEP-0220 declares
/// `db:` there): see [`session::refuse_foreign_prefixes`].
pub fn refuse_foreign_prefixes(header: &[u8]) -> Result<(), StreamError> {
    match StartTag::parse(header) {
        Some(tag) => session::refuse_foreign_prefixes(&tag, &[STREAMS_NS, DIALBACK_NS]),
        None => Err(StreamError::new(StreamCondition::NotWellFormed)),
    }
}

impl PeerHeader {
    /// Reads a stream header whose content namespace must be `content_ns`.
    pub fn parse(bytes: &[u8], content_ns: &str) -> Result<PeerHeader, StreamError> {
        let tag = StartTag::parse(bytes)
            .ok_or_else(|| StreamError::new(StreamCondition::NotWellFormed))?;
        // RFC 6120 §4.8.1: the stream element is qualified by the streams namespace.
        if tag.local_name() != b"stream" || namespace(&tag, "") != STREAMS_NS {
            return Err(
                StreamError::new(StreamCondition::InvalidNamespace).with_text(
                    "expected <stream:stream xmlns:stream='http://etherx.jabber.org/streams'>",
                ),
            );
        }
        // RFC 6120 §4.8.2 (jabber:server), XEP-0114 §3 (jabber:component:accept).
        if tag.attribute(b"xmlns").as_deref() != Some(content_ns) {
            return Err(
                StreamError::new(StreamCondition::InvalidNamespace).with_text(format!(
                    "the default namespace of this stream must be {content_ns}"
                )),
            );
        }
        Ok(PeerHeader {
            to: tag.attribute(b"to").map(|t| t.to_ascii_lowercase()),
            from: tag.attribute(b"from").map(|t| t.to_ascii_lowercase()),
            id: tag.attribute(b"id").map(|t| t.into_owned()),
            version: tag.attribute(b"version").map(|t| t.into_owned()),
            dialback: tag.attribute(b"xmlns:db").as_deref() == Some(DIALBACK_NS),
        })
    }
}

/// The stream header xmppwall sends a peer when it answers itself (before TLS, or to
/// carry an error): `content_ns` as default namespace, the dialback namespace
/// declared on server streams (XEP-0220 §2.1.1).
pub fn response_header(content_ns: &str, from: Option<&str>, to: Option<&str>) -> Vec<u8> {
    let mut s = String::with_capacity(256);
    s.push_str("<?xml version='1.0'?><stream:stream xmlns='");
    s.push_str(content_ns);
    s.push_str("' xmlns:stream='http://etherx.jabber.org/streams'");
    if content_ns == SERVER_NS {
        s.push_str(" xmlns:db='jabber:server:dialback' version='1.0'");
    }
    for (name, value) in [("from", from), ("to", to)] {
        if let Some(v) = value {
            s.push(' ');
            s.push_str(name);
            s.push_str("='");
            s.push_str(&view::escape_attribute(v));
            s.push('\'');
        }
    }
    s.push_str(" id='");
    s.push_str(&session::new_stream_id());
    s.push_str("'>");
    s.into_bytes()
}

/// The prefix the stream header binds to the streams namespace (`stream` in
/// practice), for recognising `<stream:features>` and `<stream:error>`.
pub fn stream_prefix(header: &[u8]) -> Option<String> {
    let tag = StartTag::parse(header)?;
    let name = tag.name;
    let colon = name.iter().position(|&b| b == b':')?;
    Some(String::from_utf8_lossy(&name[..colon]).into_owned())
}

/// The local name and namespace of a top-level element, resolving the stream prefix.
pub fn element_name<'a>(
    tag: &StartTag<'a>,
    content_ns: &'a str,
    stream_prefix: Option<&str>,
) -> (&'a [u8], std::borrow::Cow<'a, str>) {
    let mut ns = namespace(tag, content_ns);
    if ns.is_empty() {
        let name = tag.name;
        if let Some(colon) = name.iter().position(|&b| b == b':') {
            let p = &name[..colon];
            if Some(p) == stream_prefix.map(str::as_bytes) {
                ns = std::borrow::Cow::Borrowed(STREAMS_NS);
            } else if p == b"db" {
                // XEP-0220 §2.1.1: `db` is declared on the stream header, not on
                // each element.
                ns = std::borrow::Cow::Borrowed(DIALBACK_NS);
            }
        }
    }
    (tag.local_name(), ns)
}

/// Whether a frame is a stanza of `content_ns` (RFC 6120 §8).
pub fn is_stanza(local: &[u8], ns: &str, content_ns: &str) -> bool {
    ns == content_ns && matches!(local, b"message" | b"presence" | b"iq")
}

/// The stream error bytes for a peer: its own header first when it waits for one.
pub fn error_bytes(
    error: &StreamError,
    header: HeaderDue,
    content_ns: &str,
    local_domain: Option<&str>,
    prefix: Option<&str>,
) -> Vec<u8> {
    if header.is_due() {
        let mut out = header.header(response_header(content_ns, local_domain, None));
        out.extend_from_slice(&error.to_bytes(Some("stream")));
        out
    } else {
        error.to_bytes(prefix.or(Some("stream")))
    }
}

/// Tokens that carry no stanza pass untouched on every front.
pub fn passes_untouched(token: Token) -> bool {
    matches!(
        token,
        Token::XmlDeclaration | Token::Whitespace | Token::StreamClose
    )
}
