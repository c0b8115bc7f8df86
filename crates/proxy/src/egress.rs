//! The egress session: one of the protected server's own outgoing server-to-server
//! streams, sent on by xmppwall to the remote server over TLS.
//!
//! Sans-IO, driven by [`crate::relay`] once xmppwall has connected to the remote
//! server, negotiated STARTTLS with it (RFC 6120 §5, the remote certificate checked
//! for the remote domain) and handed its post-TLS header and features to the server.
//! From then on the server authenticates itself by dialback as usual (XEP-0220:
//! `<db:result/>` out, the remote's verdict back), and xmppwall applies the outgoing
//! policy to what leaves: the `[federation]` lists per stanza (a multiplexed stream
//! may carry several remote domains, XEP-0220 §8), then the `to-client` chain (the
//! chain of what leaves the server), with `front = ["s2s-egress"]`, `peer_domain`
//! the stanza's `to` domain, and `peer_auth` how the remote server was proven
//! (`certificate` when its certificate was verified). A refused stanza is dropped:
//! the server accepts no stanza on its own outgoing stream, so an error reply could
//! not reach the local sender from here (`bounce` acts as `drop` on the egress).

use std::time::Instant;

use xmppwall_policy::rules::{Hook, PeerAuth};
use xmppwall_xml::view::{self, StartTag};
use xmppwall_xml::Token;

use crate::peer::{
    element_name, error_bytes, is_stanza, jid_domain, stream_prefix, PeerAction, PeerContext,
    PeerSession, DIALBACK_NS, SERVER_NS,
};
use crate::s2s::MAX_DOMAIN_PAIRS;
use crate::stream::HeaderDue;
use crate::stream_error::{StreamCondition, StreamError};

#[derive(Debug)]
pub struct EgressSession {
    ctx: PeerContext,
    /// The remote domain the stream was opened to.
    remote: String,
    /// How the remote server was proven: its certificate, or nothing but the
    /// dialback exchange (no TLS, or verification switched off).
    remote_auth: PeerAuth,
    /// The prefix the remote's stream header binds to the streams namespace: how
    /// its stream-level elements are read.
    remote_prefix: Option<String>,
    /// The prefix of the header sent to the remote (the local server's): how
    /// errors written into that stream are named.
    sent_prefix: Option<String>,
    /// Domain pairs (local, remote) the local server asked the remote to accept,
    /// and no verdict came for yet.
    requested: Vec<(String, String)>,
    /// Domain pairs (local, remote) the remote server accepted. Only pairs asked
    /// for count: a verdict nobody asked for is the remote's word alone, and would
    /// let it grow this list without bound.
    authenticated: Vec<(String, String)>,
}

impl EgressSession {
    pub fn new(
        ctx: PeerContext,
        remote: String,
        remote_auth: PeerAuth,
        remote_header: &[u8],
        sent_header: &[u8],
    ) -> Self {
        EgressSession {
            ctx,
            remote,
            remote_auth,
            remote_prefix: stream_prefix(remote_header),
            sent_prefix: stream_prefix(sent_header),
            requested: Vec::new(),
            authenticated: Vec::new(),
        }
    }

    fn refused_by_federation(&self, domain: &str) -> bool {
        self.ctx
            .limiter
            .load()
            .antispam
            .federation_refuses(domain, None)
    }

    fn on_server_element(&mut self, bytes: &[u8], now: Instant) -> PeerAction {
        let Some(tag) = StartTag::parse(bytes) else {
            return PeerAction::Forward;
        };
        let (local, ns) = element_name(&tag, SERVER_NS, Some("stream"));
        if local == b"result" && ns == DIALBACK_NS && tag.attribute(b"type").is_none() {
            // The server asks to be accepted for (from, to); a remote domain the
            // federation lists exclude is refused here (XEP-0220 §8: on a multiplexed
            // stream, per domain), answered as the remote would.
            let (Some(from), Some(to)) = (tag.attribute(b"from"), tag.attribute(b"to")) else {
                return PeerAction::Forward;
            };
            let refusal = |condition: &str| {
                PeerAction::Reply(
                    format!(
                        "<db:result xmlns:db='{DIALBACK_NS}' from='{}' to='{}' type='error'><error type='cancel'><{condition} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></db:result>",
                        view::escape_attribute(&to),
                        view::escape_attribute(&from),
                    )
                    .into_bytes(),
                )
            };
            if self.refused_by_federation(&to.to_ascii_lowercase()) {
                return refusal("policy-violation");
            }
            let pair = (from.to_ascii_lowercase(), to.to_ascii_lowercase());
            if !self.requested.contains(&pair) && !self.authenticated.contains(&pair) {
                if self.requested.len() + self.authenticated.len() >= MAX_DOMAIN_PAIRS {
                    return refusal("resource-constraint");
                }
                self.requested.push(pair);
            }
            return PeerAction::Forward;
        }
        if !is_stanza(local, &ns, SERVER_NS) {
            return PeerAction::Forward;
        }
        let to = tag
            .attribute(b"to")
            .map(|t| jid_domain(&t))
            .unwrap_or_else(|| self.remote.clone());
        if self.refused_by_federation(&to) {
            tracing::info!(remote = %to, "stanza to a denied domain dropped");
            return PeerAction::Drop;
        }
        let how = self.remote_auth;
        match self
            .ctx
            .check_stanza(Hook::ToClient, &tag, bytes, (&to, how), now)
        {
            // The server accepts no stanza on its own outgoing stream (it is
            // authenticated for the remote domain only in the other direction): an
            // error reply cannot reach the local sender from here, so a bounce is
            // a drop on the egress.
            PeerAction::Reply(_) => PeerAction::Drop,
            other => other,
        }
    }

    fn on_remote_element(&mut self, bytes: &[u8], now: Instant) -> PeerAction {
        let Some(tag) = StartTag::parse(bytes) else {
            return PeerAction::Close(StreamError::new(StreamCondition::NotWellFormed));
        };
        let (local, ns) = element_name(&tag, SERVER_NS, self.remote_prefix.as_deref());
        if local == b"result" && ns == DIALBACK_NS {
            // The remote's verdict on a pair the local server asked for (XEP-0220
            // §2.4): the pair leaves the requests; `valid` authenticates it.
            if let (Some(from), Some(to), Some(verdict)) = (
                tag.attribute(b"from"),
                tag.attribute(b"to"),
                tag.attribute(b"type"),
            ) {
                let pair = (to.to_ascii_lowercase(), from.to_ascii_lowercase());
                if let Some(i) = self.requested.iter().position(|p| *p == pair) {
                    self.requested.swap_remove(i);
                    if verdict == "valid" {
                        tracing::info!(local = %pair.0, remote = %pair.1, "accepted by the remote server");
                        self.authenticated.push(pair);
                    }
                }
            }
            return PeerAction::Forward;
        }
        if !is_stanza(local, &ns, SERVER_NS) {
            return PeerAction::Forward;
        }
        // Without bidirectional streams (not offered), the remote server sends no
        // stanzas here; if it does, the incoming rules apply.
        let from = tag
            .attribute(b"from")
            .map(|f| jid_domain(&f))
            .unwrap_or_else(|| self.remote.clone());
        if self.refused_by_federation(&from) {
            return PeerAction::Drop;
        }
        let how = self.remote_auth;
        self.ctx
            .check_stanza(Hook::ToServer, &tag, bytes, (&from, how), now)
    }
}

impl PeerSession for EgressSession {
    /// From the remote server, towards the protected one.
    fn on_peer_frame(&mut self, token: Token, bytes: &[u8], now: Instant) -> PeerAction {
        match token {
            Token::Element => self.on_remote_element(bytes, now),
            Token::StreamOpen => PeerAction::Close(
                StreamError::new(StreamCondition::PolicyViolation)
                    .with_text("the stream cannot be restarted here"),
            ),
            _ => PeerAction::Forward,
        }
    }

    /// From the protected server, leaving for the remote one.
    fn on_server_frame(&mut self, token: Token, bytes: &[u8], now: Instant) -> PeerAction {
        match token {
            Token::Element => self.on_server_element(bytes, now),
            _ => PeerAction::Forward,
        }
    }

    fn is_authenticated(&self) -> bool {
        !self.authenticated.is_empty()
    }

    fn peer_domain_count(&self) -> usize {
        self.authenticated.len()
    }

    /// The remote domain the stream was opened to, and any other remote domain
    /// the remote server accepted the server for (XEP-0220 §8 multiplexing).
    fn peer_domains(&self) -> Vec<String> {
        let mut domains = vec![self.remote.clone()];
        for (_, remote) in &self.authenticated {
            if !domains.contains(remote) {
                domains.push(remote.clone());
            }
        }
        domains
    }

    fn peer_error_bytes(&self, error: &StreamError) -> Vec<u8> {
        error_bytes(
            error,
            HeaderDue::answered(),
            SERVER_NS,
            None,
            self.sent_prefix.as_deref(),
        )
    }
}

#[cfg(test)]
mod tests;
