//! The client-to-server session: what xmppwall knows of one stream and what it does
//! with each element, in both directions.
//!
//! Sans-IO: it takes frames the framer cut and returns actions; the connection driver
//! ([`crate::c2s`]) does the reading and writing. Both directions of one connection
//! share one `C2sSession`. It owns the stream's state machine (see `LIFECYCLE.md`):
//! authentication (RFC 6120 §6), resource binding (§7), stream restarts, and the
//! checks that belong to the stream itself (no stanza before authentication,
//! XEP-0205 §2.3; stanza size, XEP-0205 §2.5). Operator policy lives elsewhere.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;

use base64::Engine as _;
use tracing::info;
use xmppwall_policy::antispam::{RegistrationRequest, StrangerAction, StrangerScope};
use xmppwall_policy::bans::{
    account_banned_error, account_disabled_failure, domain_banned_error, Ban, Bans,
};
use xmppwall_policy::reputation::Standing;
use xmppwall_policy::rules::{self, Hook, Marks, Policy, StreamFront, Subject};
use xmppwall_policy::stanza::{bare_jid, Head, Kind, Stanza};
use xmppwall_policy::{ConnectionLimits, LimitKind, Limiter, Throttle, Verdict};
use xmppwall_store::{StanzaSummary, Store, VerdictRecord, VerdictSource};
use xmppwall_xml::view::{self, StartTag};
use xmppwall_xml::Token;

use crate::config::{Limits, ListenerTls};
use crate::stream::HeaderDue;
use crate::stream_error::{ErrorType, StanzaError, StreamCondition, StreamError};

pub const STREAMS_NS: &str = "http://etherx.jabber.org/streams";
pub const CLIENT_NS: &str = "jabber:client";
pub const TLS_NS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
pub const SASL_NS: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
pub const SASL2_NS: &str = "urn:xmpp:sasl:2";
pub const BIND_NS: &str = "urn:ietf:params:xml:ns:xmpp-bind";
pub const REGISTER_NS: &str = "jabber:iq:register";
pub const ROSTER_NS: &str = "jabber:iq:roster";
pub const COMPRESS_FEATURE_NS: &str = "http://jabber.org/features/compress";
pub const COMPRESS_NS: &str = "http://jabber.org/protocol/compress";
/// XEP-0440: the channel-binding types a server supports.
pub const CHANNEL_BINDING_NS: &str = "urn:xmpp:sasl-cb:0";

/// The framer's limits before and after authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FramerBudgets {
    pub before: xmppwall_xml::Limits,
    pub after: xmppwall_xml::Limits,
}

/// What to do with an element the client sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAction {
    /// Send the original bytes to the server.
    Forward,
    /// Send these bytes to the server instead (a rule stripped a child).
    ForwardRewritten(Vec<u8>),
    /// Send nothing to the server; send these bytes to the client.
    Reply(Vec<u8>),
    /// Send nothing to anyone.
    Drop,
    /// End the stream with this error.
    Close(StreamError),
    /// Send these bytes to the client, then close the connection (for protocols that
    /// define their own failure element, e.g. STARTTLS `<failure/>`, RFC 6120 §5.4.2.2).
    CloseWith(Vec<u8>),
    /// A bind request the local limit admitted (XEP-0205 §2.4): reserve one of
    /// `account`'s `max` resources in the count shared with the other instances,
    /// then hand the outcome to [`C2sSession::shared_resource_reserved`] (and forward
    /// the original bytes) or [`C2sSession::shared_resource_refused`] (and do what
    /// it answers). Only with [`C2sSession::share_resources`].
    ReserveResource { account: String, max: u32 },
}

/// What to do with an element the server sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerAction {
    /// Send the original bytes to the client.
    Forward,
    /// Send these bytes instead (e.g. features without SCRAM-*-PLUS).
    Rewrite(Vec<u8>),
    /// Send nothing (a payload the client may not receive).
    Drop,
    /// Send the original bytes, then end the stream with this error (a rule of the
    /// auth or bind hook refused the session).
    ForwardThenClose(StreamError),
    /// Send these bytes instead, then end the stream with this error.
    ReplaceThenClose(Vec<u8>, StreamError),
    /// Send nothing to the client; send these bytes to the server in the user's name
    /// (a stranger's message bounced, a stranger's subscription request declined).
    Answer(Vec<u8>),
}

use crate::enforce::PolicyOutcome;

/// How far authentication has got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    None,
    /// `<auth/>` sent with this mechanism, no outcome yet.
    InProgress {
        mechanism: String,
    },
    Authenticated {
        mechanism: String,
    },
}

/// A counted SASL outcome, for metrics and the per-IP failure counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslOutcome {
    Success,
    Failure,
}

#[derive(Debug)]
pub struct C2sSession {
    limits: Limits,
    /// The limits and rules in force now: a reload applies to open streams too.
    limiter: Arc<ArcSwap<Limiter>>,
    conn: ConnectionLimits,
    policy: Arc<ArcSwap<Policy>>,
    /// The client's address, for rules and bans.
    ip: IpAddr,
    /// Marks rules set on this session.
    marks: Marks,
    /// The account whose shared contacts (the limiter's `ContactBook`: roster
    /// results and pushes from the server, whom the user wrote to) this stream
    /// joined; it leaves them when it ends.
    contacts_of: Option<String>,
    recorder: Option<Arc<crate::recorder::Recorder>>,
    /// Where verdicts other than pass are recorded (the store's audit trail).
    audit: Option<Store>,
    /// The operator's bans on accounts and domains (see `xmppwall_policy::bans`).
    bans: Option<Arc<Bans>>,
    /// The stream's `to`: the domain of accounts named by SASL usernames.
    domain: Option<String>,
    /// The account the SASL exchange named, before the server confirms it.
    sasl_account: Option<String>,
    auth: Auth,
    pending_bind: Option<String>,
    /// Whether resources per account are counted across instances as well.
    share_resources: bool,
    /// This stream's place in its account's resource count shared with the other
    /// instances (given back when dropped).
    shared_resource: Option<xmppwall_store::ClusterTicket>,
    /// The id of an in-band registration (XEP-0077) the server has not answered yet.
    pending_registration: Option<String>,
    bound_jid: Option<String>,
    /// The prefix the server's stream header binds to the streams namespace.
    server_stream_prefix: Option<String>,
    /// The client opened a stream the server has not answered yet: an error sent to
    /// the client now must be preceded by a stream header (RFC 6120 §4.9.1.2).
    client_header: HeaderDue,
    /// The client's framer must start a new stream before it reads more (set when
    /// the server's SASL `<success/>` passes).
    client_restart: bool,
    /// The server's framer must start a new stream after the element just passed.
    server_restart: bool,
    /// Whether the stream to the client is TLS, to refuse a second STARTTLS.
    pub tls: ListenerTls,
    last_sasl: Option<SaslOutcome>,
}

impl Drop for C2sSession {
    fn drop(&mut self) {
        let limiter = self.limiter.load();
        if let Some(account) = &self.contacts_of {
            limiter.state.contacts.leave(account);
        }
        limiter.connection_closed(&mut self.conn);
    }
}

impl C2sSession {
    pub fn new(
        limits: Limits,
        tls: ListenerTls,
        limiter: Arc<ArcSwap<Limiter>>,
        conn: ConnectionLimits,
        domain: Option<String>,
        policy: Arc<ArcSwap<Policy>>,
        ip: IpAddr,
    ) -> Self {
        C2sSession {
            limits,
            limiter,
            conn,
            policy,
            ip,
            marks: Marks::default(),
            contacts_of: None,
            recorder: None,
            audit: None,
            bans: None,
            domain,
            sasl_account: None,
            auth: Auth::None,
            pending_bind: None,
            share_resources: false,
            shared_resource: None,
            pending_registration: None,
            bound_jid: None,
            server_stream_prefix: None,
            client_header: HeaderDue::new(),
            client_restart: false,
            server_restart: false,
            tls,
            last_sasl: None,
        }
    }

    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    pub fn is_authenticated(&self) -> bool {
        matches!(self.auth, Auth::Authenticated { .. })
    }

    /// Checks accounts and stanzas against the operator's bans from now on.
    pub fn use_bans(&mut self, bans: Arc<Bans>) {
        self.bans = Some(bans);
    }

    /// The account (bare JID), once SASL succeeded or a resource was bound.
    pub fn account(&self) -> Option<&str> {
        self.conn.account.as_deref()
    }

    pub fn bound_jid(&self) -> Option<&str> {
        self.bound_jid.as_deref()
    }

    pub fn client_awaits_header(&self) -> bool {
        self.client_header.is_due()
    }

    pub fn server_stream_prefix(&self) -> Option<&str> {
        self.server_stream_prefix.as_deref()
    }

    /// True once after the server's SASL success: the caller resets the client's framer.
    pub fn take_client_restart(&mut self) -> bool {
        std::mem::take(&mut self.client_restart)
    }

    /// True once after the server's SASL success: the caller resets the server's
    /// framer before it reads the next frame.
    pub fn take_server_restart(&mut self) -> bool {
        std::mem::take(&mut self.server_restart)
    }

    /// The SASL outcome the last server element carried, if any (taken once).
    pub fn take_sasl_outcome(&mut self) -> Option<SaslOutcome> {
        self.last_sasl.take()
    }

    /// The bytes that end the client's stream with `error`, preceded by a stream
    /// header when the client is waiting for one.
    pub fn stream_error_bytes(&self, error: &StreamError, domain: Option<&str>) -> Vec<u8> {
        if self.client_header.is_due() {
            let mut out = self
                .client_header
                .header(response_header(domain, &new_stream_id()));
            out.extend_from_slice(&error.to_bytes(Some("stream")));
            out
        } else {
            error.to_bytes(self.server_stream_prefix.as_deref())
        }
    }

    /// The user class whose limits apply now.
    pub fn user_class(&self) -> xmppwall_policy::UserClass {
        self.conn.class
    }

    /// Records every stanza from now on (`[record] path`).
    pub fn record_to(&mut self, recorder: Arc<crate::recorder::Recorder>) {
        self.recorder = Some(recorder);
    }

    /// Records every verdict other than pass in the store's audit trail (the
    /// record is queued; nothing waits for the database).
    pub fn audit_to(&mut self, store: Store) {
        self.audit = Some(store);
    }

    /// Counts resources per account across instances too: a bind request the local
    /// limit admits becomes [`ClientAction::ReserveResource`].
    pub fn share_resources(&mut self) {
        self.share_resources = true;
    }

    /// The shared count admitted the bind request: its place is held until the
    /// server refuses the bind or the stream ends.
    pub fn shared_resource_reserved(&mut self, ticket: xmppwall_store::ClusterTicket) {
        self.shared_resource = Some(ticket);
    }

    /// The shared count refused the bind request `bytes` (the account holds `max`
    /// resources across instances): the local slot is given back and the client
    /// gets the same XEP-0205 §2.4 error as from the local limit.
    pub fn shared_resource_refused(&mut self, bytes: &[u8], max: u32) -> ClientAction {
        let error = self
            .limiter
            .load()
            .bind_refused_elsewhere(&mut self.conn, max);
        self.pending_bind = None;
        let Some(tag) = StartTag::parse(bytes) else {
            return ClientAction::Drop;
        };
        self.audit(
            Hook::ToServer,
            Some(&tag),
            VerdictSource::Limit,
            LimitKind::Resources.name(),
            "bounce",
        );
        match error.reply_to(&tag, None) {
            Some(reply) => ClientAction::Reply(reply),
            None => ClientAction::Drop,
        }
    }

    /// The account, or the bound full JID once there is one.
    pub fn identity(&self) -> Option<&str> {
        self.bound_jid.as_deref().or(self.conn.account.as_deref())
    }

    /// Queues an audit record of a verdict other than pass (payloads never).
    fn audit(
        &self,
        hook: Hook,
        tag: Option<&StartTag<'_>>,
        source: VerdictSource,
        name: &str,
        action: &str,
    ) {
        let Some(store) = &self.audit else { return };
        let stanza = tag.map_or_else(StanzaSummary::default, crate::enforce::summary);
        store.record_verdict(VerdictRecord {
            at: SystemTime::now(),
            address: self.ip,
            jid: self.identity().map(str::to_owned),
            hook: hook.chain_name().to_owned(),
            stanza,
            source,
            name: name.to_owned(),
            action: action.to_owned(),
        });
    }

    fn audit_limit(&self, hook: Hook, tag: Option<&StartTag<'_>>, verdict: &Verdict) {
        let (kind, action) = match verdict {
            Verdict::Pass => return,
            Verdict::Drop(k) => (k, "drop"),
            Verdict::Bounce(k, _) => (k, "bounce"),
            Verdict::Close(k, _) => (k, "close"),
        };
        self.audit(hook, tag, VerdictSource::Limit, kind.name(), action);
    }

    /// XEP-0205 §2.7: `n` bytes were read from the client.
    pub fn bytes_read(&mut self, n: usize, now: Instant) -> Throttle {
        let throttle = self.limiter.load().bytes_read(&mut self.conn, n, now);
        if let Throttle::Close(_) = throttle {
            self.audit(
                Hook::ToServer,
                None,
                VerdictSource::Limit,
                LimitKind::BandwidthClose.name(),
                "close",
            );
        }
        throttle
    }

    /// Decides what happens to one frame the client sent.
    pub fn on_client_frame(&mut self, token: Token, bytes: &[u8], now: Instant) -> ClientAction {
        self.on_client_frame_framed(token, bytes, None, now)
    }

    /// [`Self::on_client_frame`] with what the framer read of an element's start tag
    /// ([`xmppwall_xml::Framer::head`]), so that it is not read again.
    pub fn on_client_frame_framed(
        &mut self,
        token: Token,
        bytes: &[u8],
        framed: Option<&xmppwall_xml::Head>,
        now: Instant,
    ) -> ClientAction {
        match token {
            Token::StreamOpen => {
                // The header of the stream restarted after SASL success (the ones
                // before were read by `ClientHeader::parse`).
                if let Some(tag) = StartTag::parse(bytes) {
                    if let Err(error) = refuse_foreign_prefixes(&tag, &[STREAMS_NS]) {
                        return ClientAction::Close(error);
                    }
                }
                self.client_header.restart();
                ClientAction::Forward
            }
            Token::Element => self.on_client_element(bytes, framed, now),
            Token::XmlDeclaration | Token::Whitespace | Token::StreamClose => ClientAction::Forward,
        }
    }

    fn on_client_element(
        &mut self,
        bytes: &[u8],
        framed: Option<&xmppwall_xml::Head>,
        now: Instant,
    ) -> ClientAction {
        // The namespace here, and `to`, `from` and `type` for the stanza below: from
        // the framer, or else in one pass over the attributes.
        let head = match framed.and_then(|f| Head::framed(bytes, f)) {
            Some(head) => head,
            None => match StartTag::parse(bytes) {
                Some(tag) => Head::read(tag),
                None => {
                    return ClientAction::Close(StreamError::new(StreamCondition::NotWellFormed))
                }
            },
        };
        let tag = head.start;
        let ns = match prefix(tag.name) {
            None => head.xmlns().unwrap_or(Cow::Borrowed(CLIENT_NS)),
            Some(_) => namespace(&tag, CLIENT_NS),
        };
        let name = tag.local_name();
        let is_stanza = ns == CLIENT_NS && matches!(name, b"message" | b"presence" | b"iq");

        match (name, ns.as_ref()) {
            (b"starttls", TLS_NS) => {
                // TLS is already in place (or deliberately absent): a second STARTTLS
                // fails, and RFC 6120 §5.4.2.2 says the stream then closes.
                return ClientAction::CloseWith(
                    format!("<failure xmlns='{TLS_NS}'/></stream:stream>").into_bytes(),
                );
            }
            (b"compress", COMPRESS_NS) => {
                // Compression would hide the stream from inspection; xmppwall removes
                // the feature (XEP-0138), so a client asking anyway is told it failed.
                return ClientAction::Reply(
                    format!("<failure xmlns='{COMPRESS_NS}'><setup-failed/></failure>")
                        .into_bytes(),
                );
            }
            (b"auth", SASL_NS) | (b"authenticate", SASL2_NS) => {
                let mechanism = tag
                    .attribute(b"mechanism")
                    .map(Cow::into_owned)
                    .unwrap_or_default();
                if !self.is_authenticated() {
                    self.sasl_account =
                        sasl_account(&mechanism, view::text(bytes).trim(), self.domain.as_deref());
                    self.auth = Auth::InProgress { mechanism };
                }
                return ClientAction::Forward;
            }
            _ => {}
        }

        if !self.is_authenticated() {
            if is_stanza && !is_registration(&tag, bytes) {
                // RFC 6120 §6.4 and XEP-0205 §2.3: no stanza is processed before
                // authentication. In-band registration (XEP-0077) is the exception.
                self.audit(
                    Hook::ToServer,
                    Some(&tag),
                    VerdictSource::Limit,
                    "stanza_before_authentication",
                    "close",
                );
                return ClientAction::Close(
                    StreamError::new(StreamCondition::NotAuthorized)
                        .with_text("stanzas are not accepted before authentication"),
                );
            }
            if is_stanza {
                return self.registration(&tag, bytes, now);
            }
            return ClientAction::Forward;
        }

        if bytes.len() > self.limits.stanza_bytes {
            if !is_stanza {
                return ClientAction::Close(
                    StreamError::new(StreamCondition::PolicyViolation)
                        .with_app_condition("stanza-too-big")
                        .with_text(format!(
                            "element larger than {} bytes",
                            self.limits.stanza_bytes
                        )),
                );
            }
            // XEP-0205 §2.5: not processed, answered without the original payload.
            self.audit(
                Hook::ToServer,
                Some(&tag),
                VerdictSource::Limit,
                LimitKind::StanzaSize.name(),
                "bounce",
            );
            self.limiter
                .load()
                .state
                .hit(xmppwall_policy::LimitKind::StanzaSize);
            return match StanzaError::stanza_too_big(self.limits.stanza_bytes)
                .reply_to(&tag, self.bound_jid.as_deref())
            {
                Some(reply) => ClientAction::Reply(reply),
                None => ClientAction::Drop,
            };
        }

        if !is_stanza {
            return ClientAction::Forward;
        }
        if name == b"iq" && head.stanza_type().as_deref() == Some("set") {
            let binds = view::children(bytes).any(|c| {
                c.start.local_name() == b"bind" && namespace(&c.start, CLIENT_NS) == BIND_NS
            });
            if binds {
                // XEP-0205 §2.4: the slot is reserved before the server binds.
                if let Err(error) = self.limiter.load().bind_requested(&mut self.conn, now) {
                    self.audit(
                        Hook::ToServer,
                        Some(&tag),
                        VerdictSource::Limit,
                        LimitKind::Resources.name(),
                        "bounce",
                    );
                    return match error.reply_to(&tag, None) {
                        Some(reply) => ClientAction::Reply(reply),
                        None => ClientAction::Drop,
                    };
                }
                self.pending_bind = tag.attribute(b"id").map(Cow::into_owned);
                if self.share_resources && self.shared_resource.is_none() {
                    if let Some((account, max)) = self.limiter.load().resource_slot(&self.conn) {
                        return ClientAction::ReserveResource { account, max };
                    }
                }
                return ClientAction::Forward;
            }
        }
        if name == b"iq"
            && !self.contacts_known()
            && self.limiter.load().antispam.strangers.is_some()
        {
            if let Some(rewritten) = roster_get_without_version(&tag, bytes) {
                return ClientAction::ForwardRewritten(rewritten);
            }
        }
        let Some(stanza) = Stanza::with_head(head, bytes) else {
            return ClientAction::Forward;
        };
        if let Some(ban) = self.domain_ban(|| stanza.to()) {
            return match domain_banned_error(&ban)
                .reply_to(&stanza.start, self.bound_jid.as_deref())
            {
                Some(reply) => ClientAction::Reply(reply),
                None => ClientAction::Drop,
            };
        }
        if let Some(action) = self.reputation_to_server(&stanza, now) {
            return action;
        }
        let verdict = self
            .limiter
            .load()
            .check_to_server(&mut self.conn, &stanza, now);
        self.audit_limit(Hook::ToServer, Some(&stanza.start), &verdict);
        let action = match verdict {
            Verdict::Pass => match self.run_policy(Hook::ToServer, Some(&stanza), now) {
                PolicyOutcome::Pass(None) => ClientAction::Forward,
                PolicyOutcome::Pass(Some(rewritten)) => ClientAction::ForwardRewritten(rewritten),
                PolicyOutcome::Drop => ClientAction::Drop,
                PolicyOutcome::Bounce(error) => {
                    match error.reply_to(&tag, self.bound_jid.as_deref()) {
                        Some(reply) => ClientAction::Reply(reply),
                        None => ClientAction::Drop,
                    }
                }
                PolicyOutcome::Close(error) => ClientAction::Close(error),
            },
            Verdict::Drop(_) => ClientAction::Drop,
            Verdict::Bounce(_, error) => match error.reply_to(&tag, self.bound_jid.as_deref()) {
                Some(reply) => ClientAction::Reply(reply),
                None => ClientAction::Drop,
            },
            Verdict::Close(_, error) => ClientAction::Close(error),
        };
        // Whom the user writes to becomes a contact, if the stanza goes out.
        if matches!(
            action,
            ClientAction::Forward | ClientAction::ForwardRewritten(_)
        ) {
            self.note_written(&stanza);
        }
        action
    }

    /// Decides what happens to one frame the server sent. After a SASL `<success/>`
    /// (RFC 6120 §6.4.6) both streams restart: the caller resets the server-side
    /// framer at once ([`Self::take_server_restart`]) and the client-side one at its
    /// next read ([`Self::take_client_restart`]).
    pub fn on_server_frame(&mut self, token: Token, bytes: &[u8], now: Instant) -> ServerAction {
        match token {
            Token::StreamOpen => {
                self.server_stream_prefix = StartTag::parse(bytes)
                    .and_then(|t| prefix(t.name).map(|p| String::from_utf8_lossy(p).into_owned()));
                self.client_header.passed(token);
                ServerAction::Forward
            }
            Token::Element => self.on_server_element(bytes, now),
            Token::XmlDeclaration => {
                self.client_header.passed(token);
                ServerAction::Forward
            }
            Token::Whitespace | Token::StreamClose => ServerAction::Forward,
        }
    }

    fn on_server_element(&mut self, bytes: &[u8], now: Instant) -> ServerAction {
        let Some(tag) = StartTag::parse(bytes) else {
            return ServerAction::Forward;
        };
        let ns = namespace_in_stream(&tag, CLIENT_NS, self.server_stream_prefix.as_deref());
        match (tag.local_name(), ns.as_ref()) {
            (b"features", STREAMS_NS) => {
                let mut rewritten = rewrite_features(bytes);
                if !self.limiter.load().antispam.registration_open(self.ip) {
                    // XEP-0077 §8: the feature is not advertised where registration
                    // would be refused anyway.
                    let current = rewritten.as_deref().unwrap_or(bytes);
                    if let Some(without) = drop_feature(current, b"register", REGISTER_FEATURE_NS) {
                        rewritten = Some(without);
                    }
                }
                return match rewritten {
                    Some(rewritten) => ServerAction::Rewrite(rewritten),
                    None => ServerAction::Forward,
                };
            }
            (b"success", SASL_NS) => {
                self.authenticated();
                if let Some(refusal) = self.account_ban_at_sasl(SASL_NS) {
                    return refusal;
                }
                self.client_restart = true;
                self.server_restart = true;
                // <success/> ends the first stream for the client (RFC 6120 §4.3.3,
                // §6.4.6): an error from here until the server's new header must come
                // in a new stream, header first (§4.9.1.2).
                self.client_header.restart();
                if let Some(error) = self.run_stream_hook(Hook::Auth, now) {
                    return ServerAction::ForwardThenClose(error);
                }
            }
            (b"success", SASL2_NS) => {
                // SASL2 (XEP-0388) authenticates without restarting the stream.
                self.authenticated();
                if let Some(refusal) = self.account_ban_at_sasl(SASL2_NS) {
                    return refusal;
                }
                if let Some(error) = self.run_stream_hook(Hook::Auth, now) {
                    return ServerAction::ForwardThenClose(error);
                }
            }
            (b"failure", SASL_NS) | (b"failure", SASL2_NS) => {
                self.auth = Auth::None;
                self.last_sasl = Some(SaslOutcome::Failure);
            }
            (b"iq", CLIENT_NS) => {
                self.observe_roster(&tag, bytes);
                if self.pending_registration.is_some()
                    && tag.attribute(b"id").as_deref() == self.pending_registration.as_deref()
                {
                    self.pending_registration = None;
                    if tag.attribute(b"type").as_deref() == Some("result") {
                        let limiter = self.limiter.load();
                        limiter.state.antispam.registration_succeeded(
                            &limiter.antispam,
                            self.ip,
                            now,
                        );
                        info!(address = %self.ip, "account registered in-band");
                    }
                }
                if let Some(pending) = &self.pending_bind {
                    if tag.attribute(b"id").as_deref() == Some(pending.as_str()) {
                        match tag.attribute(b"type").as_deref() {
                            Some("result") => {
                                self.bound_jid = bound_jid(bytes);
                                self.pending_bind = None;
                                if let Some(ban) = self
                                    .bans
                                    .as_ref()
                                    .zip(self.bound_jid.as_deref())
                                    .and_then(|(bans, jid)| bans.account(jid))
                                {
                                    // RFC 6120 §7.6.2.2: not allowed to bind; then the
                                    // stream (which the server has bound) ends.
                                    let refusal = StanzaError {
                                        error_type: ErrorType::Cancel,
                                        condition: "not-allowed",
                                        app_condition: None,
                                        text: None,
                                    };
                                    let reply = format!(
                                        "<iq type='error' id='{}'>{}</iq>",
                                        view::escape_attribute(
                                            &tag.attribute(b"id").unwrap_or_default()
                                        ),
                                        refusal.error_element()
                                    );
                                    return ServerAction::ReplaceThenClose(
                                        reply.into_bytes(),
                                        account_banned_error(&ban),
                                    );
                                }
                                if self.conn.account.is_none() {
                                    // A mechanism that names no user (EXTERNAL, ...):
                                    // the account is known from the bind result on, and
                                    // its resource slot is taken now. Over the limit,
                                    // the client gets the XEP-0205 §2.4 error instead of
                                    // the result, and the stream (which the server has
                                    // bound) ends.
                                    self.conn.account = self.bound_jid.as_deref().map(bare_jid);
                                    if let Err(error) =
                                        self.limiter.load().bind_requested(&mut self.conn, now)
                                    {
                                        self.audit(
                                            Hook::Bind,
                                            None,
                                            VerdictSource::Limit,
                                            LimitKind::Resources.name(),
                                            "close",
                                        );
                                        let reply = format!(
                                            "<iq type='error' id='{}'>{}</iq>",
                                            view::escape_attribute(
                                                &tag.attribute(b"id").unwrap_or_default()
                                            ),
                                            error.error_element()
                                        );
                                        return ServerAction::ReplaceThenClose(
                                            reply.into_bytes(),
                                            StreamError::new(StreamCondition::PolicyViolation)
                                                .with_text(
                                                    "too many resources bound to this account",
                                                ),
                                        );
                                    }
                                }
                                if let Some(error) = self.run_stream_hook(Hook::Bind, now) {
                                    return ServerAction::ForwardThenClose(error);
                                }
                                return ServerAction::Forward;
                            }
                            Some("error") => {
                                self.pending_bind = None;
                                self.shared_resource = None;
                                self.limiter.load().bind_refused(&mut self.conn);
                                return ServerAction::Forward;
                            }
                            _ => {}
                        }
                    }
                }
                if let Some(stanza) = Stanza::with_start(tag, bytes) {
                    return self.server_stanza(&stanza, now);
                }
            }
            (b"message" | b"presence", CLIENT_NS) => {
                if let Some(stanza) = Stanza::with_start(tag, bytes) {
                    return self.server_stanza(&stanza, now);
                }
            }
            _ => {}
        }
        ServerAction::Forward
    }

    /// Roster results and pushes (RFC 6121 §2.1.4, §2.1.6) the server sends: their
    /// items become (or, with `subscription='remove'`, stop being) contacts.
    fn observe_roster(&mut self, tag: &StartTag<'_>, bytes: &[u8]) {
        if !matches!(tag.attribute(b"type").as_deref(), Some("result" | "set")) {
            return;
        }
        // RFC 6121 §2.1.6: the roster comes from the user's own account (no 'from',
        // or the bare JID); an iq from anyone else is ignored by the client, and by
        // xmppwall: a remote sender must not make itself a contact.
        if let Some(from) = tag.attribute(b"from") {
            if !self
                .conn
                .account
                .as_deref()
                .is_some_and(|account| from.eq_ignore_ascii_case(account))
            {
                return;
            }
        }
        let Some(query) = view::children(bytes).find(|c| {
            c.start.local_name() == b"query" && namespace(&c.start, CLIENT_NS) == ROSTER_NS
        }) else {
            return;
        };
        let Some(account) = self.contacts_account() else {
            return;
        };
        let query = &bytes[query.range];
        let items: Vec<(String, bool)> = view::children(query)
            .filter(|c| c.start.local_name() == b"item")
            .filter_map(|item| {
                let jid = item.start.attribute(b"jid")?;
                let removed = item.start.attribute(b"subscription").as_deref() == Some("remove");
                Some((bare_jid(&jid), removed))
            })
            .collect();
        self.limiter
            .load()
            .state
            .contacts
            .roster(&account, items.iter().map(|(j, r)| (j.as_str(), *r)));
    }

    /// The account whose contacts this stream uses, joining them on first use.
    fn contacts_account(&mut self) -> Option<String> {
        if self.contacts_of.is_none() {
            let account = self.conn.account.clone()?;
            self.limiter.load().state.contacts.join(&account);
            self.contacts_of = Some(account);
        }
        self.contacts_of.clone()
    }

    /// Whether a roster of the account was seen (on any of its streams).
    fn contacts_known(&mut self) -> bool {
        if self.contacts_of.is_none() && self.contacts_account().is_none() {
            return false;
        }
        // The field, not `contacts_account()`: no copy of the account per stanza.
        match self.contacts_of.as_deref() {
            Some(account) => self.limiter.load().state.contacts.known(account),
            None => false,
        }
    }

    /// Whom the user writes to becomes a contact (once a roster was seen).
    fn note_written(&mut self, stanza: &Stanza<'_>) {
        if stanza.kind == xmppwall_policy::stanza::Kind::Iq {
            return;
        }
        let Some(to) = stanza.to() else {
            return;
        };
        if self.contacts_of.is_none() && self.contacts_account().is_none() {
            return;
        }
        // The fields, not `contacts_account()`: no copy of the account per stanza.
        let Some(account) = self.contacts_of.as_deref() else {
            return;
        };
        self.limiter
            .load()
            .state
            .contacts
            .wrote_to_with(account, || bare_jid(&to));
    }

    /// Whether the other party of `stanza` is outside the observed contacts; `None`
    /// while no roster was seen. Writing to someone makes them a contact (RFC 6121
    /// leaves the roster to the user; a reply is not spam). The user's own account
    /// and JIDs without a node (servers, components) are never strangers.
    fn stranger(&mut self, hook: Hook, stanza: &Stanza<'_>) -> Option<bool> {
        let other = match hook {
            Hook::ToServer => stanza.to(),
            Hook::ToClient => stanza.from(),
            _ => None,
        }?;
        let other = bare_jid(&other);
        let account = self.contacts_account()?;
        let limiter = self.limiter.load();
        if !limiter.state.contacts.known(&account) {
            return None;
        }
        if !other.contains('@') || account == other {
            return Some(false);
        }
        if hook == Hook::ToServer {
            // The user's own stanzas: the recipient becomes a contact once the
            // stanza passes (see `note_written`).
            return Some(false);
        }
        limiter
            .state
            .contacts
            .contains(&account, &other)
            .map(|c| !c)
    }

    /// Spam reports in block commands (XEP-0191 §3.3 with XEP-0377) are recorded as
    /// they pass; then the account's reputation decides: banned, the stream ends;
    /// quarantined, messages and subscription requests to non-contacts are held
    /// back; throttled, they are limited to the configured rate.
    fn reputation_to_server(&mut self, stanza: &Stanza<'_>, now: Instant) -> Option<ClientAction> {
        // Without `[reputation]` only a spam report (an iq) is of interest here: every
        // other stanza leaves at once, before any copy.
        if stanza.kind != Kind::Iq && self.limiter.load().antispam.reputation.is_none() {
            return None;
        }
        let limiter = self.limiter.load_full();
        let account = self.conn.account.clone()?;
        if stanza.kind == Kind::Iq
            && stanza.stanza_type().as_deref() == Some("set")
            && stanza.has_payload(b"block", xmppwall_policy::reports::BLOCKING_NS)
        {
            let reports = limiter.state.antispam.user_reports(
                &limiter.antispam,
                &account,
                stanza.bytes,
                now,
                std::time::SystemTime::now(),
            );
            for r in &reports {
                info!(reporter = %account, offender = %r.offender, reason = %r.reason, stanza_ids = ?r.stanza_ids, "spam report");
            }
            return None;
        }
        let rep = limiter.antispam.reputation.as_ref()?;
        let ty = stanza.stanza_type();
        let counted = match (stanza.kind, ty.as_deref()) {
            (Kind::Message, Some("error")) => false,
            (Kind::Message, _) | (Kind::Presence, Some("subscribe")) => true,
            _ => false,
        };
        let standing = limiter
            .state
            .antispam
            .standing(&limiter.antispam, &account, now);
        let error = |ty, text: String| StanzaError {
            error_type: ty,
            condition: "policy-violation",
            app_condition: None,
            text: Some(text),
        };
        let refusal = match standing {
            Standing::Good => return None,
            Standing::Banned => {
                return Some(ClientAction::Close(
                    StreamError::new(StreamCondition::PolicyViolation)
                        .with_text("this account is suspended: too many spam reports"),
                ));
            }
            Standing::Quarantined if counted && self.recipient_unknown(stanza) => error(
                xmppwall_policy::errors::ErrorType::Cancel,
                "messages to people outside your contacts are held back while this account is under review".into(),
            ),
            Standing::Throttled if counted && limiter.state.antispam.reputation.over_throttle(rep, &account, now) => {
                let (_, rate) = rep.throttle?;
                error(
                    xmppwall_policy::errors::ErrorType::Wait,
                    format!(
                        "this account is slowed down: at most {} messages per {}",
                        rate.count,
                        humantime::format_duration(rate.period)
                    ),
                )
            }
            _ => return None,
        };
        info!(account = %account, standing = standing.name(), "held back by reputation");
        Some(
            match refusal.reply_to(&stanza.start, self.bound_jid.as_deref()) {
                Some(reply) => ClientAction::Reply(reply),
                None => ClientAction::Drop,
            },
        )
    }

    /// `[reputation]` as marks rules can test: `reputation:throttled`,
    /// `reputation:quarantined`, `reputation:banned`, each set when the other party
    /// (the sender of a stanza to the client; the account itself otherwise) stands
    /// there or worse.
    fn reputation_marks(
        &self,
        hook: Hook,
        stanza: Option<&Stanza<'_>>,
        marks: &mut Marks,
        now: Instant,
    ) {
        let limiter = self.limiter.load();
        if limiter.antispam.reputation.is_none() {
            return;
        }
        let whom = match hook {
            Hook::ToClient => stanza.and_then(|s| s.from()).map(|f| bare_jid(&f)),
            _ => self.conn.account.clone(),
        };
        let Some(whom) = whom else { return };
        let standing = limiter
            .state
            .antispam
            .standing(&limiter.antispam, &whom, now);
        let until = now + std::time::Duration::from_secs(1);
        for (level, mark) in [
            (Standing::Throttled, "reputation:throttled"),
            (Standing::Quarantined, "reputation:quarantined"),
            (Standing::Banned, "reputation:banned"),
        ] {
            if standing >= level {
                marks.set(mark, until);
            }
        }
    }

    /// Whether the recipient is not among the contacts xmppwall saw (or no roster
    /// was seen: a quarantined account gets no benefit of the doubt).
    fn recipient_unknown(&mut self, stanza: &Stanza<'_>) -> bool {
        let Some(to) = stanza.to() else {
            return false;
        };
        let to = bare_jid(&to);
        if !to.contains('@') || self.conn.account.as_deref() == Some(to.as_str()) {
            return false;
        }
        let Some(account) = self.contacts_account() else {
            return true;
        };
        self.limiter.load().state.contacts.contains(&account, &to) != Some(true)
    }

    /// A remote sender's reputation for a stanza to the client: banned senders are
    /// dropped, quarantined ones when they are strangers, throttled ones over the
    /// rate.
    fn reputation_holds_back(&mut self, stanza: &Stanza<'_>, now: Instant) -> bool {
        let limiter = self.limiter.load_full();
        let Some(rep) = limiter.antispam.reputation.as_ref() else {
            return false;
        };
        let Some(from) = stanza.from() else {
            return false;
        };
        let from = bare_jid(&from);
        // Local accounts are judged once, on their own stream towards the server.
        if limiter.antispam.is_local(
            xmppwall_policy::stanza::domain_of(&from),
            self.conn.account.as_deref(),
        ) {
            return false;
        }
        let held = match limiter
            .state
            .antispam
            .standing(&limiter.antispam, &from, now)
        {
            Standing::Good => false,
            Standing::Banned => true,
            Standing::Quarantined => self.stranger(Hook::ToClient, stanza) == Some(true),
            Standing::Throttled => {
                stanza.kind != Kind::Iq
                    && limiter
                        .state
                        .antispam
                        .reputation
                        .over_throttle(rep, &from, now)
            }
        };
        if held {
            tracing::debug!(from = %from, "held back by the sender's reputation");
        }
        held
    }

    /// XEP-0077 before authentication: `[registration]` decides whether the request
    /// reaches the server.
    fn registration(&mut self, tag: &StartTag<'_>, bytes: &[u8], now: Instant) -> ClientAction {
        let request = RegistrationRequest::read(bytes);
        let limiter = self.limiter.load();
        match limiter
            .state
            .antispam
            .check_registration(&limiter.antispam, self.ip, &request, now)
        {
            Ok(()) => {
                if let RegistrationRequest::Create { .. } = request {
                    self.pending_registration = tag.attribute(b"id").map(Cow::into_owned);
                }
                ClientAction::Forward
            }
            Err(error) => {
                limiter.state.hit(xmppwall_policy::LimitKind::Registration);
                info!(address = %self.ip, reason = error.text.as_deref().unwrap_or(""), "registration refused");
                match error.reply_to(tag, None) {
                    Some(reply) => ClientAction::Reply(reply),
                    None => ClientAction::Drop,
                }
            }
        }
    }

    /// `[strangers]`: a message or subscription request from someone outside the
    /// user's observed contacts (see [`Self::stranger`]).
    fn strangers(&mut self, stanza: &Stanza<'_>) -> Option<ServerAction> {
        let limiter = self.limiter.load_full();
        let config = limiter.antispam.strangers?;
        let ty = stanza.stanza_type();
        let action = match (stanza.kind, ty.as_deref()) {
            // Errors answer what the user sent; groupchat comes from rooms joined.
            (Kind::Message, Some("error" | "groupchat")) => return None,
            (Kind::Message, _) => config.messages,
            // RFC 6121 §3.1.3: a subscription request delivered to the user.
            (Kind::Presence, Some("subscribe")) => config.subscriptions,
            _ => return None,
        };
        if action == StrangerAction::Pass || self.stranger(Hook::ToClient, stanza) != Some(true) {
            return None;
        }
        let from = stanza.from()?;
        if config.senders == StrangerScope::Remote
            && limiter.antispam.is_local(
                xmppwall_policy::stanza::domain_of(&from),
                self.conn.account.as_deref(),
            )
        {
            return None;
        }
        limiter.state.hit(xmppwall_policy::LimitKind::Strangers);
        tracing::debug!(from = %from, account = ?self.conn.account, ?action, "stanza from a stranger");
        Some(match action {
            StrangerAction::Pass => return None,
            StrangerAction::Drop => ServerAction::Drop,
            StrangerAction::StripBody => {
                match rules::strip_children(stanza.bytes, &stranger_strip()) {
                    Some(stripped) => ServerAction::Rewrite(stripped),
                    None => ServerAction::Forward,
                }
            }
            StrangerAction::Bounce if stanza.kind == Kind::Presence => {
                // RFC 6121 §3.2.1: the user declines the request.
                ServerAction::Answer(
                    format!(
                        "<presence type='unsubscribed' to='{}'/>",
                        view::escape_attribute(&bare_jid(&from))
                    )
                    .into_bytes(),
                )
            }
            StrangerAction::Bounce => {
                // XEP-0191 §3.3.3: a blocked sender's message gets <service-unavailable/>,
                // which says nothing of the blocking. The server stamps our `from`.
                let error = StanzaError {
                    error_type: xmppwall_policy::errors::ErrorType::Cancel,
                    condition: "service-unavailable",
                    app_condition: None,
                    text: None,
                };
                let mut reply = format!(
                    "<message type='error' to='{}'",
                    view::escape_attribute(&from)
                );
                if let Some(id) = stanza.start.attribute(b"id") {
                    reply.push_str(&format!(" id='{}'", view::escape_attribute(&id)));
                }
                reply.push('>');
                reply.push_str(&error.error_element());
                reply.push_str("</message>");
                ServerAction::Answer(reply.into_bytes())
            }
        })
    }

    /// The operator's ban on the account that just authenticated: the client gets a
    /// SASL `<failure/>` with `<account-disabled/>` instead of the success, then the
    /// stream ends (see `xmppwall_policy::bans`).
    fn account_ban_at_sasl(&self, ns: &str) -> Option<ServerAction> {
        let ban = self.bans.as_ref()?.account(self.conn.account.as_deref()?)?;
        Some(ServerAction::ReplaceThenClose(
            account_disabled_failure(&ban, ns),
            account_banned_error(&ban),
        ))
    }

    /// The operator's ban on the domain of `jid`, if any (one atomic load while no
    /// domain is banned).
    fn domain_ban<'a>(&self, jid: impl FnOnce() -> Option<Cow<'a, str>>) -> Option<Ban> {
        let bans = self.bans.as_ref().filter(|b| b.has_domains())?;
        bans.domain_of(&jid()?)
    }

    /// Limits, then rules, for a stanza the server sends the client.
    fn server_stanza(&mut self, stanza: &Stanza<'_>, now: Instant) -> ServerAction {
        // A stanza from a banned domain is dropped: its sender is beyond the server.
        if self.domain_ban(|| stanza.from()).is_some() {
            return ServerAction::Drop;
        }
        let verdict = self.limiter.load().check_to_client(&self.conn, stanza, now);
        self.audit_limit(Hook::ToClient, Some(&stanza.start), &verdict);
        match verdict {
            Verdict::Pass => {}
            Verdict::Drop(xmppwall_policy::LimitKind::IncomingSubscriptions) => {
                // ejabberd's mod_pres_counter logs a warning when it triggers.
                tracing::warn!(from = ?stanza.from(), account = ?self.conn.account, "subscription request dropped: too many from this domain");
                return ServerAction::Drop;
            }
            Verdict::Drop(_) | Verdict::Bounce(..) | Verdict::Close(..) => {
                return ServerAction::Drop;
            }
        }
        if self.reputation_holds_back(stanza, now) {
            return ServerAction::Drop;
        }
        if let Some(action) = self.strangers(stanza) {
            return action;
        }
        match self.run_policy(Hook::ToClient, Some(stanza), now) {
            PolicyOutcome::Pass(None) => ServerAction::Forward,
            PolicyOutcome::Pass(Some(rewritten)) => ServerAction::Rewrite(rewritten),
            // The sender is beyond the server; xmppwall does not answer for the client.
            PolicyOutcome::Drop | PolicyOutcome::Bounce(_) | PolicyOutcome::Close(_) => {
                ServerAction::Drop
            }
        }
    }

    /// The rules of `hook` (after SASL success: [`Hook::Auth`]; after binding:
    /// [`Hook::Bind`]); a refusal there ends the stream.
    pub fn run_stream_hook(&mut self, hook: Hook, now: Instant) -> Option<StreamError> {
        match self.run_policy(hook, None, now) {
            PolicyOutcome::Pass(_) => None,
            PolicyOutcome::Close(e) => Some(e),
            PolicyOutcome::Drop | PolicyOutcome::Bounce(_) => Some(
                StreamError::new(StreamCondition::PolicyViolation)
                    .with_text("refused by the server's policy"),
            ),
        }
    }

    /// Evaluates the operator's rules and applies their side effects.
    fn run_policy(
        &mut self,
        hook: Hook,
        stanza: Option<&Stanza<'_>>,
        now: Instant,
    ) -> PolicyOutcome {
        let policy = self.policy.load();
        if !policy.has_hook(hook) && (self.recorder.is_none() || stanza.is_none()) {
            return PolicyOutcome::Pass(None);
        }
        let mut marks = self.marks.clone();
        if let Some(account) = &self.conn.account {
            self.limiter.load().add_account_marks(account, &mut marks);
        }
        self.reputation_marks(hook, stanza, &mut marks, now);
        let stranger = stanza.and_then(|st| self.stranger(hook, st));
        let mechanism = match &self.auth {
            Auth::InProgress { mechanism } | Auth::Authenticated { mechanism } => {
                Some(mechanism.as_str())
            }
            Auth::None => None,
        };
        let subject = Subject {
            ip: self.ip,
            class: self.conn.class,
            mechanism,
            account: self.conn.account.as_deref(),
            marks: &marks,
            stranger,
            front: StreamFront::C2s,
            peer_domain: None,
            peer_auth: None,
        };
        let limiter = self.limiter.load();
        crate::enforce::apply(
            &policy,
            hook,
            stanza,
            &subject,
            crate::enforce::StreamState {
                limiter: &limiter,
                marks: &mut self.marks,
                account: self.conn.account.as_deref(),
                recorder: self.recorder.as_ref(),
                audit: self.audit.as_ref(),
                identity: self.bound_jid.as_deref().or(self.conn.account.as_deref()),
            },
            now,
        )
    }

    fn authenticated(&mut self) {
        let mechanism = match std::mem::replace(&mut self.auth, Auth::None) {
            Auth::InProgress { mechanism } | Auth::Authenticated { mechanism } => mechanism,
            Auth::None => String::new(),
        };
        self.limiter
            .load()
            .authenticated(&mut self.conn, &mechanism, self.sasl_account.as_deref());
        self.auth = Auth::Authenticated { mechanism };
        self.last_sasl = Some(SaslOutcome::Success);
    }
}

/// The account a SASL initial response names, where the mechanism carries it in the
/// clear: PLAIN (RFC 4616: `authzid NUL authcid NUL password`) and SCRAM (RFC 5802
/// §5.1: `gs2-header n=user,r=...`). The password is never kept.
fn sasl_account(mechanism: &str, initial: &str, domain: Option<&str>) -> Option<String> {
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(initial)
        .ok()?;
    let with_domain = |user: &str| -> Option<String> {
        if user.is_empty() {
            return None;
        }
        if user.contains('@') {
            return Some(bare_jid(user));
        }
        domain.map(|d| format!("{}@{}", user.to_ascii_lowercase(), d))
    };
    if mechanism.eq_ignore_ascii_case("PLAIN") {
        let mut parts = decoded.split(|&b| b == 0);
        let authzid = std::str::from_utf8(parts.next()?).ok()?;
        let authcid = std::str::from_utf8(parts.next()?).ok()?;
        return if authzid.is_empty() {
            with_domain(authcid)
        } else {
            with_domain(authzid)
        };
    }
    if mechanism.to_ascii_uppercase().starts_with("SCRAM-") {
        let text = std::str::from_utf8(&decoded).ok()?;
        // gs2-header: cbind-flag "," [authzid] ","; then the bare message.
        let mut fields = text.splitn(3, ',');
        let _cbind = fields.next()?;
        let authzid = fields.next()?.strip_prefix("a=").map(scram_unescape);
        let user = fields
            .next()?
            .split(',')
            .find_map(|f| f.strip_prefix("n="))
            .map(scram_unescape)?;
        return match authzid {
            Some(a) if !a.is_empty() => with_domain(&a),
            _ => with_domain(&user),
        };
    }
    None
}

/// RFC 5802 §5.1: `=2C` is `,` and `=3D` is `=` in SCRAM names.
fn scram_unescape(s: &str) -> String {
    s.replace("=2C", ",").replace("=3D", "=")
}

/// The stream feature of XEP-0077 §8.
pub const REGISTER_FEATURE_NS: &str = "http://jabber.org/features/iq-register";

/// What `[strangers] messages = "strip-body"` removes: the text a spammer wants
/// read (body, subject, XHTML-IM) and out-of-band links.
fn stranger_strip() -> Vec<(Option<String>, String)> {
    vec![
        (None, "body".into()),
        (None, "subject".into()),
        (
            Some("http://jabber.org/protocol/xhtml-im".into()),
            "html".into(),
        ),
        (Some("jabber:x:oob".into()), "x".into()),
    ]
}

/// A roster get (RFC 6121 §2.1.3) without its XEP-0237 `ver`: the server then
/// sends the whole roster (§2.6.3 allows it at any time), which xmppwall must see
/// to know the user's contacts. `None` when the request is no versioned roster get.
fn roster_get_without_version(tag: &StartTag<'_>, bytes: &[u8]) -> Option<Vec<u8>> {
    if tag.attribute(b"type").as_deref() != Some("get") {
        return None;
    }
    let query = view::children(bytes).find(|c| {
        c.start.local_name() == b"query" && namespace(&c.start, CLIENT_NS) == ROSTER_NS
    })?;
    query.start.attribute(b"ver")?;
    let q = &bytes[query.range.clone()];
    // The attribute as written in the start tag: ` ver='…'` or ` ver="…"`.
    let head_end = memchr::memchr(b'>', q)?;
    let head = &q[..head_end];
    let at =
        memchr::memmem::find(head, b" ver=").or_else(|| memchr::memmem::find(head, b"\tver="))?;
    let quote_at = at + 5;
    let quote = *head.get(quote_at)?;
    if quote != b'\'' && quote != b'"' {
        return None;
    }
    let close = quote_at + 1 + memchr::memchr(quote, &head[quote_at + 1..])?;
    let mut out = Vec::with_capacity(bytes.len());
    out.extend_from_slice(&bytes[..query.range.start + at]);
    out.extend_from_slice(&bytes[query.range.start + close + 1..]);
    Some(out)
}

/// `features` without the first-level child `local` in `ns`, or `None` without one.
fn drop_feature(features: &[u8], local: &[u8], ns: &str) -> Option<Vec<u8>> {
    let child = view::children(features)
        .find(|c| c.start.local_name() == local && namespace(&c.start, "") == ns)?;
    let mut out = Vec::with_capacity(features.len());
    out.extend_from_slice(&features[..child.range.start]);
    out.extend_from_slice(&features[child.range.end..]);
    Some(out)
}

/// XEP-0077: `<iq><query xmlns='jabber:iq:register'/></iq>` may be sent before
/// authentication.
fn is_registration(tag: &StartTag<'_>, bytes: &[u8]) -> bool {
    tag.local_name() == b"iq"
        && view::children(bytes).any(|c| {
            c.start.local_name() == b"query" && namespace(&c.start, CLIENT_NS) == REGISTER_NS
        })
}

/// The text of `<bind><jid>…</jid></bind>` in a bind result (RFC 6120 §7.6.1).
fn bound_jid(iq: &[u8]) -> Option<String> {
    let bind = view::children(iq).find(|c| c.start.local_name() == b"bind")?;
    let bind = &iq[bind.range];
    let jid = view::children(bind).find(|c| c.start.local_name() == b"jid")?;
    let text = view::text(&bind[jid.range]);
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// The prefix of a qualified name, if any.
fn prefix(name: &[u8]) -> Option<&[u8]> {
    memchr_colon(name).map(|i| &name[..i])
}

fn memchr_colon(name: &[u8]) -> Option<usize> {
    name.iter().position(|&b| b == b':')
}

/// The namespace of an element from its own declarations, else `inherited`.
/// Elements of the stream's top level declare their namespace on themselves in
/// practice; prefixed names whose prefix is declared elsewhere are resolved by
/// [`namespace_in_stream`].
pub fn namespace<'a>(tag: &StartTag<'a>, inherited: &'a str) -> Cow<'a, str> {
    match prefix(tag.name) {
        None => tag.attribute(b"xmlns").unwrap_or(Cow::Borrowed(inherited)),
        Some(p) => {
            let mut attr = Vec::with_capacity(6 + p.len());
            attr.extend_from_slice(b"xmlns:");
            attr.extend_from_slice(p);
            tag.attribute(&attr).unwrap_or(Cow::Borrowed(""))
        }
    }
}

/// Like [`namespace`], also knowing the prefix the stream header bound to the
/// streams namespace (e.g. `<stream:features>`).
fn namespace_in_stream<'a>(
    tag: &StartTag<'a>,
    inherited: &'a str,
    stream_prefix: Option<&str>,
) -> Cow<'a, str> {
    let ns = namespace(tag, inherited);
    if ns.is_empty()
        && prefix(tag.name).is_some()
        && prefix(tag.name) == stream_prefix.map(str::as_bytes)
    {
        return Cow::Borrowed(STREAMS_NS);
    }
    ns
}

/// Removes from a server's `<stream:features/>` what cannot survive xmppwall in the
/// middle: STARTTLS (xmppwall already did it), stream compression (XEP-0138, it
/// would hide the stream), and channel-binding SASL mechanisms (`SCRAM-*-PLUS`,
/// RFC 5802 §6, and XEP-0440's list): the client's TLS channel ends at xmppwall, so
/// a binding to it can never match the server's. Returns `None` when unchanged.
pub fn rewrite_features(features: &[u8]) -> Option<Vec<u8>> {
    let tag = StartTag::parse(features)?;
    if tag.self_closing {
        return None;
    }
    let mut out = Vec::with_capacity(features.len());
    let mut copied = 0;
    let mut changed = false;
    for child in view::children(features) {
        let ns = namespace(&child.start, "");
        let local = child.start.local_name();
        let drop_whole = matches!(
            (local, ns.as_ref()),
            (b"starttls", TLS_NS)
                | (b"compression", COMPRESS_FEATURE_NS)
                | (b"sasl-channel-binding", CHANNEL_BINDING_NS)
        );
        let filtered = if drop_whole {
            Some(Vec::new())
        } else if (local == b"mechanisms" && ns == SASL_NS)
            || (local == b"authentication" && ns == SASL2_NS)
        {
            drop_plus_mechanisms(&features[child.range.clone()])
        } else {
            None
        };
        if let Some(replacement) = filtered {
            out.extend_from_slice(&features[copied..child.range.start]);
            out.extend_from_slice(&replacement);
            copied = child.range.end;
            changed = true;
        }
    }
    if !changed {
        return None;
    }
    out.extend_from_slice(&features[copied..]);
    Some(out)
}

/// `<mechanisms>` without its `<mechanism>…-PLUS</mechanism>` children, or `None`
/// when it has none.
fn drop_plus_mechanisms(mechanisms: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(mechanisms.len());
    let mut copied = 0;
    let mut changed = false;
    for child in view::children(mechanisms) {
        if child.start.local_name() != b"mechanism" {
            continue;
        }
        let name = view::text(&mechanisms[child.range.clone()]);
        if name.trim().ends_with("-PLUS") {
            out.extend_from_slice(&mechanisms[copied..child.range.start]);
            copied = child.range.end;
            changed = true;
        }
    }
    if !changed {
        return None;
    }
    out.extend_from_slice(&mechanisms[copied..]);
    Some(out)
}

/// What xmppwall learned from a client's stream header (RFC 6120 §4.7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHeader {
    pub to: Option<String>,
    pub from: Option<String>,
    pub version: Option<String>,
    pub lang: Option<String>,
}

impl ClientHeader {
    /// Reads and checks a client's stream header. `domains` are the hosted domains
    /// (empty: any).
    pub fn parse(bytes: &[u8], domains: &[String]) -> Result<ClientHeader, StreamError> {
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
        // RFC 6120 §4.8.2: the content namespace of a c2s stream is jabber:client.
        let content_ns = tag.attribute(b"xmlns");
        if content_ns.as_deref() != Some(CLIENT_NS) {
            return Err(StreamError::new(StreamCondition::InvalidNamespace)
                .with_text("the default namespace of a client stream must be jabber:client"));
        }
        refuse_foreign_prefixes(&tag, &[STREAMS_NS])?;
        let header = ClientHeader {
            to: tag.attribute(b"to").map(|t| t.to_ascii_lowercase()),
            from: tag.attribute(b"from").map(Cow::into_owned),
            version: tag.attribute(b"version").map(Cow::into_owned),
            lang: tag.attribute(b"xml:lang").map(Cow::into_owned),
        };
        // RFC 6120 §4.7.5: without a version the peer speaks pre-1.0 XMPP, which has
        // no STARTTLS or SASL; xmppwall needs both.
        let major = header
            .version
            .as_deref()
            .and_then(|v| v.split('.').next())
            .and_then(|m| m.parse::<u32>().ok());
        if major.unwrap_or(0) < 1 {
            return Err(StreamError::new(StreamCondition::UnsupportedVersion)
                .with_text("XMPP 1.0 streams are required (version='1.0')"));
        }
        match &header.to {
            None if !domains.is_empty() => {
                return Err(StreamError::new(StreamCondition::HostUnknown)
                    .with_text("the stream header has no 'to' address"));
            }
            Some(to) if !domains.is_empty() && !domains.iter().any(|d| d == to) => {
                return Err(StreamError::new(StreamCondition::HostUnknown)
                    .with_text(format!("this server does not host {to}")));
            }
            _ => {}
        }
        Ok(header)
    }
}

/// Refuses a stream header that declares a namespace prefix for anything but the
/// namespaces in `allowed`. A prefix declared there is in scope in every stanza of
/// the stream (Namespaces in XML 1.0 §6.1), so `<iq><av:query/></iq>` would carry a
/// payload whose namespace no `xmlns` in the stanza names: out of sight of the
/// payload rules (XEP-0205 §2.8) and of the policy's payload conditions, which read
/// one stanza at a time. Clients declare only `stream:` there; servers also `db:`.
pub(crate) fn refuse_foreign_prefixes(
    tag: &StartTag<'_>,
    allowed: &[&str],
) -> Result<(), StreamError> {
    for (name, _) in tag.attributes() {
        if let Some(prefix) = name.strip_prefix(b"xmlns:") {
            let mut attr = b"xmlns:".to_vec();
            attr.extend_from_slice(prefix);
            let bound = tag.attribute(&attr);
            if !bound.is_some_and(|ns| allowed.contains(&&*ns)) {
                return Err(
                    StreamError::new(StreamCondition::PolicyViolation).with_text(format!(
                        "the stream header declares a namespace prefix ({}) for a namespace not accepted there",
                        String::from_utf8_lossy(prefix)
                    )),
                );
            }
        }
    }
    Ok(())
}

/// The stream header xmppwall sends when it answers a client itself (before TLS,
/// or to carry an error, RFC 6120 §4.9.1.2).
pub fn response_header(domain: Option<&str>, id: &str) -> Vec<u8> {
    let mut s = String::with_capacity(200);
    s.push_str("<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'");
    if let Some(domain) = domain {
        s.push_str(" from='");
        s.push_str(&view::escape_attribute(domain));
        s.push('\'');
    }
    s.push_str(" id='");
    s.push_str(id);
    s.push_str("'>");
    s.into_bytes()
}

/// Stream features offered before TLS: STARTTLS only, and required (RFC 6120 §5.3.1).
pub const STARTTLS_FEATURES: &[u8] = b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features>";

/// RFC 6120 §5.4.2.3.
pub const STARTTLS_PROCEED: &[u8] = b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>";

/// An unpredictable stream id (RFC 6120 §4.7.3): 128 random bits in hex.
pub fn new_stream_id() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::getrandom(&mut bytes).is_err() {
        // The id only needs to be unique per stream; fall back to time and a counter.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        bytes = nanos.to_le_bytes();
    }
    let mut s = String::with_capacity(32);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

#[cfg(test)]
mod tests;
