//! The inbound server-to-server session: a remote server's stream to the protected
//! server, what xmppwall knows of it and what it does with each element.
//!
//! Sans-IO, driven by [`crate::relay`], after xmppwall has terminated TLS (RFC 6120
//! §5) with the certificate for the requested domain and asked the peer for a
//! certificate of its own. Authentication of the peer's domains:
//!
//! - **Dialback** (XEP-0220) passes through: the peer's `<db:result/>` request goes to
//!   the server, which verifies the key with the peer's authoritative server as
//!   usual and answers `<db:result type='valid'/>` (or `invalid`). xmppwall records
//!   the answer per domain pair (remote, local); several pairs on one stream
//!   (multiplexing, XEP-0220 §8) are tracked each on its own.
//! - **Certificates** are checked by xmppwall (RFC 6120 §13.7.2, RFC 6125): a pair
//!   the server accepted by dialback counts as `certificate` when the chain is
//!   valid for the remote domain, and `dialback` otherwise. With `[s2s]
//!   require_certificate`, a dialback request for a domain the certificate does not
//!   prove is refused before the server sees it.
//! - **SASL EXTERNAL** (XEP-0178 §3) passes through when the relay opened the
//!   server stream with a certificate for the stream's `from` domain minted by the
//!   upstream CA ([`crate::upstream_ca`]; only for a peer whose own certificate
//!   proves that domain): the server's `<mechanisms/>` reach the peer, the peer's
//!   `<auth mechanism='EXTERNAL'/>` reaches the server, and the server's
//!   `<success/>` authenticates the pair (stream `from`, stream `to`); both
//!   streams then restart (RFC 6120 §6.4.6). Without such an upstream, SASL is not
//!   offered and an `<auth/>` is answered `<invalid-mechanism/>` by xmppwall.
//!
//! Stanzas: none before a pair is authenticated (`<not-authorized/>`, RFC 6120
//! §4.9.3.12); each one's `from` domain must be authenticated on this stream towards
//! its `to` domain (`<invalid-from/>`, §4.9.3.9); missing addresses are
//! `<improper-addressing/>` (§4.9.3.7). Then the stanza size limit and the
//! `to-server` rules, with `peer_domain` and `peer_auth` known.

use std::time::Instant;

use xmppwall_policy::rules::{Hook, PeerAuth};
use xmppwall_xml::view::{self, StartTag};
use xmppwall_xml::Token;

use crate::config::S2s;
use crate::peer::{
    element_name, error_bytes, is_stanza, is_within, jid_domain, stream_prefix, PeerAction,
    PeerContext, PeerSession, BIDI_FEATURE_NS, DIALBACK_NS, SERVER_NS,
};
use crate::session::{namespace, SASL_NS, STREAMS_NS, TLS_NS};
use crate::stream::HeaderDue;
use crate::stream_error::{StreamCondition, StreamError};
use crate::tls::PeerCertificate;

/// Domain pairs one stream may authenticate (XEP-0220 §8 multiplexing), pending
/// or done: past this, further dialback requests are refused.
pub const MAX_DOMAIN_PAIRS: usize = 64;

/// One remote domain authenticated towards one local domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthenticatedPair {
    pub remote: String,
    pub local: String,
    pub how: PeerAuth,
}

#[derive(Debug)]
pub struct S2sInboundSession {
    ctx: PeerContext,
    s2s: S2s,
    /// Domains the server hosts (empty: any).
    hosted: Vec<String>,
    /// The local domain the stream header asked for.
    local_domain: Option<String>,
    cert: Option<PeerCertificate>,
    /// Domains the certificate was checked for, and the answer.
    cert_checked: Vec<(String, bool)>,
    pending: Vec<(String, String)>,
    authenticated: Vec<AuthenticatedPair>,
    server_prefix: Option<String>,
    awaits_header: HeaderDue,
    /// The stream header's `from`, when the server stream carries a certificate
    /// minted for it: SASL EXTERNAL passes through for it.
    external_for: Option<String>,
    external: External,
    /// The peer's next stream header is a restart after SASL (RFC 6120 §6.4.6).
    peer_restarts: bool,
    /// For the relay: the framer of each side starts a new stream.
    reset_peer_framer: bool,
    reset_server_framer: bool,
}

/// Where SASL EXTERNAL stands on the stream (XEP-0178 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum External {
    NotStarted,
    /// `<auth/>` forwarded; the server's `<success/>` or `<failure/>` is awaited.
    Pending,
    Done,
}

impl S2sInboundSession {
    pub fn new(
        ctx: PeerContext,
        s2s: S2s,
        hosted: Vec<String>,
        local_domain: Option<String>,
        cert: Option<PeerCertificate>,
    ) -> Self {
        S2sInboundSession {
            ctx,
            s2s,
            hosted,
            local_domain,
            cert,
            cert_checked: Vec::new(),
            pending: Vec::new(),
            authenticated: Vec::new(),
            server_prefix: None,
            awaits_header: HeaderDue::new(),
            external_for: None,
            external: External::NotStarted,
            peer_restarts: false,
            reset_peer_framer: false,
            reset_server_framer: false,
        }
    }

    /// The server stream presents a certificate for `remote` (the stream header's
    /// `from`, proven by the peer's own certificate): the server's SASL EXTERNAL
    /// offer is relayed and the exchange passes through.
    pub fn with_upstream_certificate(mut self, remote: &str) -> Self {
        self.external_for = Some(remote.to_ascii_lowercase());
        self
    }

    /// The pairs authenticated so far.
    pub fn authenticated(&self) -> &[AuthenticatedPair] {
        &self.authenticated
    }

    fn hosts(&self, domain: &str) -> bool {
        self.hosted.is_empty() || self.hosted.iter().any(|h| is_within(domain, h))
    }

    /// Whether the peer's certificate proves `domain`, checked once per domain and
    /// for at most [`MAX_DOMAIN_PAIRS`] domains a stream: `None` past that, so a
    /// peer naming ever new domains cannot have the certificate verified again and
    /// again.
    pub fn certificate_proves(&mut self, domain: &str) -> Option<bool> {
        if let Some((_, ok)) = self.cert_checked.iter().find(|(d, _)| d == domain) {
            return Some(*ok);
        }
        if self.cert_checked.len() >= MAX_DOMAIN_PAIRS {
            return None;
        }
        let ok = self.cert.as_ref().is_some_and(|c| c.valid_for(domain));
        self.cert_checked.push((domain.to_owned(), ok));
        Some(ok)
    }

    fn on_peer_element(&mut self, bytes: &[u8], now: Instant) -> PeerAction {
        let Some(tag) = StartTag::parse(bytes) else {
            return PeerAction::Close(StreamError::new(StreamCondition::NotWellFormed));
        };
        let (local, ns) = element_name(&tag, SERVER_NS, Some("stream"));
        match (local, ns.as_ref()) {
            (b"result", DIALBACK_NS) if tag.attribute(b"type").is_none() => {
                return self.dialback_request(&tag);
            }
            // The peer asking the server to verify a key (the server is the
            // authoritative side here), or answering in a dialback it started.
            (b"result" | b"verify", DIALBACK_NS) => return PeerAction::Forward,
            (b"starttls", TLS_NS) => {
                return PeerAction::Close(
                    StreamError::new(StreamCondition::PolicyViolation)
                        .with_text("TLS is already in place"),
                )
            }
            (b"auth", SASL_NS) => return self.sasl_auth(&tag, bytes),
            _ => {}
        }
        if !is_stanza(local, &ns, SERVER_NS) {
            return PeerAction::Forward;
        }
        if self.authenticated.is_empty() {
            return PeerAction::Close(
                StreamError::new(StreamCondition::NotAuthorized)
                    .with_text("stanzas are not accepted before the stream is authenticated"),
            );
        }
        let (Some(from), Some(to)) = (tag.attribute(b"from"), tag.attribute(b"to")) else {
            return PeerAction::Close(
                StreamError::new(StreamCondition::ImproperAddressing)
                    .with_text("stanzas between servers carry both 'from' and 'to'"),
            );
        };
        let (from, to) = (jid_domain(&from), jid_domain(&to));
        let Some(pair) = self
            .authenticated
            .iter()
            .find(|p| p.remote == from && p.local == to)
            .cloned()
        else {
            if !self.hosts(&to) {
                return PeerAction::Close(
                    StreamError::new(StreamCondition::HostUnknown)
                        .with_text(format!("this server does not host {to}")),
                );
            }
            return PeerAction::Close(StreamError::new(StreamCondition::InvalidFrom).with_text(
                format!("{from} is not authenticated on this stream towards {to}"),
            ));
        };
        self.ctx
            .check_stanza(Hook::ToServer, &tag, bytes, (&pair.remote, pair.how), now)
    }

    /// `<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>` from
    /// the peer (XEP-0178 §3): forwarded only where the server stream carries a
    /// certificate for the peer's domain, once, before anything else authenticated
    /// the stream; the authorization identity, if any, must be that domain. Else
    /// xmppwall answers `<failure/>` itself (RFC 6120 §6.4.5): `<invalid-mechanism/>`
    /// for what was not offered (§6.5.7), `<invalid-authzid/>` (§6.5.6),
    /// `<incorrect-encoding/>` (§6.5.5).
    fn sasl_auth(&mut self, tag: &StartTag<'_>, bytes: &[u8]) -> PeerAction {
        let failure = |condition: &str| {
            PeerAction::Reply(
                format!("<failure xmlns='{SASL_NS}'><{condition}/></failure>").into_bytes(),
            )
        };
        let Some(remote) = self.external_for.clone() else {
            return failure("invalid-mechanism");
        };
        if self.external != External::NotStarted || !self.authenticated.is_empty() {
            return failure("invalid-mechanism");
        }
        if tag.attribute(b"mechanism").as_deref() != Some("EXTERNAL") {
            return failure("invalid-mechanism");
        }
        // The initial response is the base64 authorization identity: empty or "="
        // for none, else the domain itself (XEP-0178 §3, RFC 6120 §6.4.2).
        let text = view::text(bytes);
        let text = text.trim();
        if !text.is_empty() && text != "=" {
            use base64::Engine;
            let authzid = base64::engine::general_purpose::STANDARD
                .decode(text)
                .ok()
                .and_then(|b| String::from_utf8(b).ok());
            match authzid {
                None => return failure("incorrect-encoding"),
                Some(a) if !a.eq_ignore_ascii_case(&remote) => {
                    tracing::info!(remote = %remote, authzid = %a, "SASL EXTERNAL for another domain refused");
                    return failure("invalid-authzid");
                }
                Some(_) => {}
            }
        }
        self.external = External::Pending;
        PeerAction::Forward
    }

    /// `<db:result from='remote' to='local'>key</db:result>` (XEP-0220 §2.1.1): the
    /// peer asks to be authenticated for a domain pair.
    fn dialback_request(&mut self, tag: &StartTag<'_>) -> PeerAction {
        let (Some(from), Some(to)) = (tag.attribute(b"from"), tag.attribute(b"to")) else {
            return PeerAction::Close(
                StreamError::new(StreamCondition::ImproperAddressing)
                    .with_text("a dialback request names 'from' and 'to'"),
            );
        };
        let (from, to) = (from.to_ascii_lowercase(), to.to_ascii_lowercase());
        let refuse = |condition: &str, text: &str| {
            // XEP-0220 §2.4: a refused request is answered with a db:result of type
            // error carrying a stanza error condition (RFC 6120 §8.3.3).
            PeerAction::Reply(
                format!(
                    "<db:result xmlns:db='{DIALBACK_NS}' from='{}' to='{}' type='error'><error type='cancel'><{condition} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>{}</text></error></db:result>",
                    view::escape_attribute(&to),
                    view::escape_attribute(&from),
                    view::escape_text(text),
                )
                .into_bytes(),
            )
        };
        if !self.hosts(&to) {
            return refuse("item-not-found", "this server does not host that domain");
        }
        if self
            .ctx
            .limiter
            .load()
            .antispam
            .federation_refuses(&from, None)
        {
            tracing::info!(remote = %from, "dialback request from a denied domain refused");
            return refuse(
                "policy-violation",
                "federation with this domain is not allowed",
            );
        }
        if self.pending.len() + self.authenticated.len() >= MAX_DOMAIN_PAIRS {
            return refuse("resource-constraint", "too many domains on one stream");
        }
        if self.s2s.require_certificate {
            match self.certificate_proves(&from) {
                Some(true) => {}
                Some(false) => {
                    tracing::info!(remote = %from, "dialback request without a valid certificate refused");
                    return refuse(
                        "not-authorized",
                        "a certificate valid for the domain is required",
                    );
                }
                None => return refuse("resource-constraint", "too many domains on one stream"),
            }
        }
        if !self.pending.iter().any(|(r, l)| *r == from && *l == to) {
            self.pending.push((from, to));
        }
        PeerAction::Forward
    }

    fn on_server_element(&mut self, bytes: &[u8], now: Instant) -> PeerAction {
        let Some(tag) = StartTag::parse(bytes) else {
            return PeerAction::Forward;
        };
        let (local, ns) = element_name(&tag, SERVER_NS, self.server_prefix.as_deref());
        match (local, ns.as_ref()) {
            (b"features", STREAMS_NS) => {
                return match rewrite_s2s_features(bytes, self.external_for.is_some()) {
                    Some(rewritten) => PeerAction::Rewrite(rewritten),
                    None => PeerAction::Forward,
                }
            }
            (b"result", DIALBACK_NS) => {
                self.dialback_answer(&tag);
                return PeerAction::Forward;
            }
            (b"success", SASL_NS) if self.external == External::Pending => {
                self.external_succeeded();
                return PeerAction::Forward;
            }
            (b"failure", SASL_NS) if self.external == External::Pending => {
                tracing::info!(remote = ?self.external_for, "the server refused SASL EXTERNAL");
                self.external = External::NotStarted;
                return PeerAction::Forward;
            }
            _ => {}
        }
        if !is_stanza(local, &ns, SERVER_NS) {
            return PeerAction::Forward;
        }
        // Stanzas from the server on an inbound stream (bidirectional streams are not
        // offered, so rarely): the outgoing rules apply.
        let to = tag
            .attribute(b"to")
            .map(|t| jid_domain(&t))
            .unwrap_or_default();
        let how = self
            .authenticated
            .iter()
            .find(|p| p.remote == to)
            .map_or(PeerAuth::Dialback, |p| p.how);
        self.ctx
            .check_stanza(Hook::ToClient, &tag, bytes, (&to, how), now)
    }

    /// The server accepted SASL EXTERNAL: the stream's `from` is authenticated
    /// towards its `to`, and both sides start new streams (RFC 6120 §6.4.6).
    fn external_succeeded(&mut self) {
        self.external = External::Done;
        // <success/> ended the first stream for the peer (RFC 6120 §4.3.3): an
        // error before the server's new header comes in a new stream (§4.9.1.2).
        self.awaits_header.restart();
        self.peer_restarts = true;
        self.reset_peer_framer = true;
        self.reset_server_framer = true;
        let (Some(remote), Some(local)) = (self.external_for.clone(), self.local_domain.clone())
        else {
            return;
        };
        let local = local.to_ascii_lowercase();
        tracing::info!(remote = %remote, local = %local, how = PeerAuth::Certificate.name(), mechanism = "EXTERNAL", "remote server authenticated");
        self.pending.retain(|(r, l)| !(*r == remote && *l == local));
        if !self
            .authenticated
            .iter()
            .any(|p| p.remote == remote && p.local == local)
        {
            self.authenticated.push(AuthenticatedPair {
                remote,
                local,
                how: PeerAuth::Certificate,
            });
        }
    }

    /// The peer's stream header after SASL success must name the same domains
    /// (RFC 6120 §4.7.1, §4.7.2).
    fn restarted_header(&mut self, bytes: &[u8]) -> PeerAction {
        let same =
            |attr: Option<std::borrow::Cow<'_, str>>, known: &Option<String>| match (attr, known) {
                (Some(a), Some(k)) => a.eq_ignore_ascii_case(k),
                (None, None) => true,
                _ => false,
            };
        let Some(tag) = StartTag::parse(bytes) else {
            return PeerAction::Close(StreamError::new(StreamCondition::NotWellFormed));
        };
        if !same(tag.attribute(b"from"), &self.external_for) {
            return PeerAction::Close(
                StreamError::new(StreamCondition::InvalidFrom)
                    .with_text("the restarted stream names another 'from'"),
            );
        }
        if !same(tag.attribute(b"to"), &self.local_domain) {
            return PeerAction::Close(
                StreamError::new(StreamCondition::HostUnknown)
                    .with_text("the restarted stream names another 'to'"),
            );
        }
        if let Err(error) = crate::peer::refuse_foreign_prefixes(bytes) {
            return PeerAction::Close(error);
        }
        PeerAction::Forward
    }

    /// The server's verdict on a dialback request: `<db:result from='local'
    /// to='remote' type='valid|invalid|error'/>`.
    fn dialback_answer(&mut self, tag: &StartTag<'_>) {
        let (Some(local), Some(remote)) = (tag.attribute(b"from"), tag.attribute(b"to")) else {
            return;
        };
        let (local, remote) = (local.to_ascii_lowercase(), remote.to_ascii_lowercase());
        let was_pending = self
            .pending
            .iter()
            .any(|(r, l)| *r == remote && *l == local);
        self.pending.retain(|(r, l)| !(*r == remote && *l == local));
        if tag.attribute(b"type").as_deref() != Some("valid") || !was_pending {
            return;
        }
        let how = if self.certificate_proves(&remote) == Some(true) {
            PeerAuth::Certificate
        } else {
            PeerAuth::Dialback
        };
        tracing::info!(remote = %remote, local = %local, how = how.name(), "remote server authenticated");
        if !self
            .authenticated
            .iter()
            .any(|p| p.remote == remote && p.local == local)
        {
            self.authenticated
                .push(AuthenticatedPair { remote, local, how });
        }
    }
}

impl PeerSession for S2sInboundSession {
    fn on_peer_frame(&mut self, token: Token, bytes: &[u8], now: Instant) -> PeerAction {
        match token {
            Token::Element => self.on_peer_element(bytes, now),
            // After SASL success the peer opens a new stream (RFC 6120 §6.4.6).
            Token::StreamOpen if std::mem::take(&mut self.peer_restarts) => {
                self.restarted_header(bytes)
            }
            // Otherwise nothing restarts the relayed stream (STARTTLS was xmppwall's).
            Token::StreamOpen => PeerAction::Close(
                StreamError::new(StreamCondition::PolicyViolation)
                    .with_text("the stream cannot be restarted here"),
            ),
            _ => PeerAction::Forward,
        }
    }

    fn on_server_frame(&mut self, token: Token, bytes: &[u8], now: Instant) -> PeerAction {
        match token {
            Token::StreamOpen => {
                self.awaits_header.passed(token);
                self.server_prefix = stream_prefix(bytes);
                PeerAction::Forward
            }
            Token::Element => self.on_server_element(bytes, now),
            _ => {
                self.awaits_header.passed(token);
                PeerAction::Forward
            }
        }
    }

    fn is_authenticated(&self) -> bool {
        !self.authenticated.is_empty()
    }

    fn take_peer_restart(&mut self) -> bool {
        std::mem::take(&mut self.reset_peer_framer)
    }

    fn take_server_restart(&mut self) -> bool {
        std::mem::take(&mut self.reset_server_framer)
    }

    fn peer_domain_count(&self) -> usize {
        self.authenticated.len()
    }

    fn peer_domains(&self) -> Vec<String> {
        let mut domains: Vec<String> = Vec::new();
        for pair in &self.authenticated {
            if !domains.contains(&pair.remote) {
                domains.push(pair.remote.clone());
            }
        }
        domains
    }

    fn peer_error_bytes(&self, error: &StreamError) -> Vec<u8> {
        error_bytes(
            error,
            self.awaits_header,
            SERVER_NS,
            self.local_domain.as_deref(),
            self.server_prefix.as_deref(),
        )
    }
}

/// Removes from a server's features what cannot pass xmppwall on a server-to-server
/// stream: STARTTLS (done by xmppwall), compression (it would hide the stream),
/// SASL unless `keep_sasl` (without a certificate minted for the peer on the
/// server stream, the server cannot see the peer's certificate, RFC 6120 §13.7.2;
/// xmppwall checks it itself), and bidirectional streams (XEP-0288: xmppwall relays
/// one direction per stream; the server's own traffic leaves through the egress).
/// `None` when unchanged.
pub fn rewrite_s2s_features(features: &[u8], keep_sasl: bool) -> Option<Vec<u8>> {
    let tag = StartTag::parse(features)?;
    if tag.self_closing {
        return None;
    }
    let mut out = Vec::with_capacity(features.len());
    let mut copied = 0;
    for child in view::children(features) {
        let ns = namespace(&child.start, "");
        let drop = matches!(
            (child.start.local_name(), ns.as_ref()),
            (b"starttls", TLS_NS)
                | (b"compression", crate::session::COMPRESS_FEATURE_NS)
                | (b"bidi", BIDI_FEATURE_NS)
        ) || (!keep_sasl
            && (child.start.local_name(), ns.as_ref()) == (b"mechanisms", SASL_NS));
        if drop {
            out.extend_from_slice(&features[copied..child.range.start]);
            copied = child.range.end;
        }
    }
    if copied == 0 {
        return None;
    }
    out.extend_from_slice(&features[copied..]);
    Some(out)
}

#[cfg(test)]
mod tests;
