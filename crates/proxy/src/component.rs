//! The external-component session (XEP-0114, "Jabber Component Protocol"): what
//! xmppwall knows of one component stream and what it does with each element.
//!
//! Sans-IO, driven by [`crate::relay`]. The component opens a stream in
//! `jabber:component:accept` to its own domain; the server answers with a stream id;
//! the component proves it knows the shared secret with
//! `<handshake>hex(SHA-1(stream id ‖ secret))</handshake>` (XEP-0114 §3); the server
//! answers `<handshake/>`, or ends the stream with `<not-authorized/>`. xmppwall
//! passes the handshake to the server and, when it is given the secret too, checks
//! it first. From then on every stanza the component sends must be from its domain
//! (or a subdomain of it): anything else is `<invalid-from/>` (RFC 6120 §4.9.3.9).
//! The operator's rules apply in both directions: `to-server` to what the component
//! sends, `to-client` to what the server sends it.

use std::time::Instant;

use xmppwall_policy::rules::{Hook, PeerAuth};
use xmppwall_xml::view::{self, StartTag};
use xmppwall_xml::Token;

use crate::peer::{
    element_name, error_bytes, is_stanza, is_within, jid_domain, passes_untouched, stream_prefix,
    PeerAction, PeerContext, PeerSession, COMPONENT_NS,
};
use crate::stream::HeaderDue;
use crate::stream_error::{StreamCondition, StreamError};

#[derive(Debug)]
pub struct ComponentSession {
    ctx: PeerContext,
    /// The component's domain: its stream header's `to`.
    domain: String,
    /// The shared secret, when xmppwall checks the handshake itself.
    secret: Option<String>,
    /// The id of the server's stream header, which the handshake digest covers.
    stream_id: Option<String>,
    server_prefix: Option<String>,
    awaits_header: HeaderDue,
    handshake_sent: bool,
    authenticated: bool,
}

impl ComponentSession {
    pub fn new(ctx: PeerContext, domain: String, secret: Option<String>) -> Self {
        ComponentSession {
            ctx,
            domain,
            secret,
            stream_id: None,
            server_prefix: None,
            awaits_header: HeaderDue::new(),
            handshake_sent: false,
            authenticated: false,
        }
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    fn on_component_element(&mut self, bytes: &[u8], now: Instant) -> PeerAction {
        let Some(tag) = StartTag::parse(bytes) else {
            return PeerAction::Close(StreamError::new(StreamCondition::NotWellFormed));
        };
        let (local, ns) = element_name(&tag, COMPONENT_NS, Some("stream"));
        if local == b"handshake" && ns == COMPONENT_NS {
            if self.authenticated || self.handshake_sent {
                return PeerAction::Close(
                    StreamError::new(StreamCondition::NotAuthorized)
                        .with_text("the handshake was already sent"),
                );
            }
            self.handshake_sent = true;
            if let (Some(secret), Some(id)) = (&self.secret, &self.stream_id) {
                let digest = view::text(bytes);
                if !handshake_matches(id, secret, digest.trim()) {
                    // XEP-0114 §3: a wrong handshake ends the stream with <not-authorized/>.
                    return PeerAction::Close(
                        StreamError::new(StreamCondition::NotAuthorized)
                            .with_text("the handshake does not match the shared secret"),
                    );
                }
            }
            return PeerAction::Forward;
        }
        let stanza = is_stanza(local, &ns, COMPONENT_NS);
        if !self.authenticated {
            if stanza {
                // RFC 6120 §4.9.3.12: nothing before the handshake succeeded.
                return PeerAction::Close(
                    StreamError::new(StreamCondition::NotAuthorized)
                        .with_text("stanzas are not accepted before the handshake"),
                );
            }
            return PeerAction::Forward;
        }
        if !stanza {
            return PeerAction::Forward;
        }
        // RFC 6120 §4.9.3.9 and XEP-0114 §3: a component speaks only for its domain.
        let from = tag.attribute(b"from").map(|f| jid_domain(&f));
        match from {
            Some(d) if is_within(&d, &self.domain) => {}
            Some(d) => {
                return PeerAction::Close(
                    StreamError::new(StreamCondition::InvalidFrom)
                        .with_text(format!("{d} is not the component's domain {}", self.domain)),
                )
            }
            None => {
                return PeerAction::Close(
                    StreamError::new(StreamCondition::InvalidFrom)
                        .with_text("a component's stanzas must carry a 'from' address"),
                )
            }
        }
        let domain = self.domain.clone();
        self.ctx.check_stanza(
            Hook::ToServer,
            &tag,
            bytes,
            (&domain, PeerAuth::Handshake),
            now,
        )
    }

    fn on_server_element(&mut self, bytes: &[u8], now: Instant) -> PeerAction {
        let Some(tag) = StartTag::parse(bytes) else {
            return PeerAction::Forward;
        };
        let (local, ns) = element_name(&tag, COMPONENT_NS, self.server_prefix.as_deref());
        if local == b"handshake" && ns == COMPONENT_NS {
            self.authenticated = true;
            tracing::info!(component = %self.domain, "component authenticated");
            return PeerAction::Forward;
        }
        if !self.authenticated || !is_stanza(local, &ns, COMPONENT_NS) {
            return PeerAction::Forward;
        }
        let domain = self.domain.clone();
        self.ctx.check_stanza(
            Hook::ToClient,
            &tag,
            bytes,
            (&domain, PeerAuth::Handshake),
            now,
        )
    }
}

impl PeerSession for ComponentSession {
    fn on_peer_frame(&mut self, token: Token, bytes: &[u8], now: Instant) -> PeerAction {
        match token {
            Token::Element => self.on_component_element(bytes, now),
            Token::StreamOpen => PeerAction::Close(
                StreamError::new(StreamCondition::NotAuthorized)
                    .with_text("a component stream is not restarted"),
            ),
            t if passes_untouched(t) => PeerAction::Forward,
            _ => PeerAction::Forward,
        }
    }

    fn on_server_frame(&mut self, token: Token, bytes: &[u8], now: Instant) -> PeerAction {
        match token {
            Token::StreamOpen => {
                self.awaits_header.passed(token);
                self.server_prefix = stream_prefix(bytes);
                self.stream_id = StartTag::parse(bytes)
                    .and_then(|t| t.attribute(b"id").map(|id| id.into_owned()));
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
        self.authenticated
    }

    fn peer_error_bytes(&self, error: &StreamError) -> Vec<u8> {
        error_bytes(
            error,
            self.awaits_header,
            COMPONENT_NS,
            Some(&self.domain),
            self.server_prefix.as_deref(),
        )
    }
}

/// XEP-0114 §3: the handshake is the hex SHA-1 of the stream id followed by the
/// secret. Compared in constant time; hex digits in either case.
pub fn handshake_matches(stream_id: &str, secret: &str, digest: &str) -> bool {
    let expected = handshake_digest(stream_id, secret);
    let given = digest.to_ascii_lowercase();
    expected.len() == given.len()
        && expected
            .bytes()
            .zip(given.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// The lowercase hex SHA-1 of `stream_id ‖ secret` (XEP-0114 §3).
pub fn handshake_digest(stream_id: &str, secret: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(stream_id.as_bytes());
    ctx.update(secret.as_bytes());
    let mut hex = String::with_capacity(40);
    for b in ctx.finish().as_ref() {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

#[cfg(test)]
mod tests;
