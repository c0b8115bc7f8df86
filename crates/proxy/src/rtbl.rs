//! Following real-time block lists (`[[rtbl]]`): xmppwall logs in to the protected
//! server as an ordinary client with its own account, subscribes to a XEP-0060
//! publish-subscribe node, loads every item, and applies item and retract
//! notifications as they come. The entries fill a
//! [`xmppwall_policy::blocklist::BlockList`] that rules and `[federation]` read.
//!
//! The list format is the one of the xmppbl.org lists and Prosody's mod_muc_rtbl:
//! one item per entry, the item id a domain, a JID, or the hex SHA-256 of a bare JID
//! (the payload, a XEP-0377 report, is not needed). The protocol steps, with the
//! sections of XEP-0060: subscribe (§6.1.1), retrieve all items (§6.5.2), item
//! notifications (§7.1.2.1), retract notifications (§7.2.2.1), purge (§7.5.2) and
//! delete (§8.4.2) notifications. Notifications are taken only from the configured
//! service and node: anyone may send the account a message that looks like one.
//!
//! The parsing is sans-IO ([`Change::read_event`], [`read_items`]); [`follow`] is the
//! tokio loop that connects, reconnects with backoff, and stops at shutdown.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tracing::{debug, info, warn};
use xmppwall_policy::blocklist::BlockList;
use xmppwall_xml::view::{self, StartTag};
use xmppwall_xml::Token;

use crate::config::Rtbl;
use crate::io::BoxIo;
use crate::server::Shared;
use crate::stream::{FrameReader, ReadOutcome};

const PUBSUB_NS: &str = "http://jabber.org/protocol/pubsub";
const PUBSUB_EVENT_NS: &str = "http://jabber.org/protocol/pubsub#event";
/// How long one answer from the server may take before the connection is given up.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// A whitespace keep-alive this often keeps idle-timeouts on the way from closing
/// the stream (RFC 6120 §4.6.1).
const KEEPALIVE: Duration = Duration::from_secs(60);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// One change a notification makes to the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Add(String),
    Remove(String),
    /// The node was purged or deleted: every entry goes.
    Clear,
}

impl Change {
    /// The changes a `<message/>` carries when it is a notification from `service`
    /// about `node`; nothing for any other stanza.
    pub fn read_event(message: &[u8], service: &str, node: &str) -> Vec<Change> {
        let Some(tag) = StartTag::parse(message) else {
            return Vec::new();
        };
        if tag.local_name() != b"message" {
            return Vec::new();
        }
        let from = tag.attribute(b"from").unwrap_or_default();
        if !from.eq_ignore_ascii_case(service) {
            return Vec::new();
        }
        let mut changes = Vec::new();
        for event in view::children(message) {
            if event.start.local_name() != b"event"
                || event.start.attribute(b"xmlns").as_deref() != Some(PUBSUB_EVENT_NS)
            {
                continue;
            }
            let event = &message[event.range];
            for child in view::children(event) {
                if child.start.attribute(b"node").as_deref() != Some(node) {
                    continue;
                }
                match child.start.local_name() {
                    b"items" => {
                        let items = &event[child.range];
                        for item in view::children(items) {
                            let Some(id) = item.start.attribute(b"id") else {
                                continue;
                            };
                            match item.start.local_name() {
                                b"item" => changes.push(Change::Add(id.into_owned())),
                                b"retract" => changes.push(Change::Remove(id.into_owned())),
                                _ => {}
                            }
                        }
                    }
                    b"purge" | b"delete" => changes.push(Change::Clear),
                    _ => {}
                }
            }
        }
        changes
    }
}

/// The item ids of an items result (`<iq type='result'><pubsub><items>`).
pub fn read_items(iq: &[u8]) -> Vec<String> {
    let mut ids = Vec::new();
    for pubsub in view::children(iq) {
        if pubsub.start.local_name() != b"pubsub" {
            continue;
        }
        let pubsub = &iq[pubsub.range];
        for items in view::children(pubsub).filter(|c| c.start.local_name() == b"items") {
            let items = &pubsub[items.range];
            for item in view::children(items).filter(|c| c.start.local_name() == b"item") {
                if let Some(id) = item.start.attribute(b"id") {
                    ids.push(id.into_owned());
                }
            }
        }
    }
    ids
}

/// Follows one list until shutdown: connects, reconnects after any failure with a
/// growing delay (1 s doubling to a minute), and keeps the entries it had meanwhile.
pub async fn follow(shared: Arc<Shared>, rtbl: Rtbl) {
    let list = xmppwall_policy::blocklist::declare(&rtbl.name);
    let mut shutdown = shared.shutdown_signal();
    let mut backoff = Duration::from_secs(1);
    loop {
        let started = Instant::now();
        let outcome = tokio::select! {
            r = session(&shared, &rtbl, &list) => r,
            _ = shutdown.changed() => return,
        };
        match outcome {
            Ok(()) => return,
            Err(e) => {
                warn!(list = %rtbl.name, error = %e, retry_in = ?backoff, "block list connection failed")
            }
        }
        if started.elapsed() > BACKOFF_MAX {
            backoff = Duration::from_secs(1);
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// A failure of one session with the server, said in words for the log.
type Failure = String;

struct Conn {
    io: BoxIo,
    reader: FrameReader,
    shutdown: watch::Receiver<bool>,
}

impl Conn {
    async fn send(&mut self, bytes: &[u8]) -> Result<(), Failure> {
        self.io
            .write_all(bytes)
            .await
            .map_err(|e| format!("writing to the server: {e}"))
    }

    /// The next frame's token and bytes, within `timeout`.
    async fn next(&mut self, timeout: Duration) -> Result<(Token, Vec<u8>), Failure> {
        let deadline = Instant::now() + timeout;
        match self
            .reader
            .next(&mut self.io, 0, deadline, &mut self.shutdown)
            .await
        {
            ReadOutcome::Frame(token, len) => {
                let bytes = self.reader.buf[..len].to_vec();
                self.reader.consume(len);
                Ok((token, bytes))
            }
            ReadOutcome::Closed => Err("the server closed the connection".into()),
            ReadOutcome::TimedOut => Err("no answer from the server in time".into()),
            ReadOutcome::Shutdown => Err("shutting down".into()),
            ReadOutcome::Framing(e) => Err(format!("the server sent XML that cannot be read: {e}")),
            ReadOutcome::Io(e) => Err(format!("reading from the server: {e}")),
        }
    }

    /// The next top-level element (skipping whitespace and the like).
    async fn element(&mut self) -> Result<Vec<u8>, Failure> {
        loop {
            match self.next(ANSWER_TIMEOUT).await? {
                (Token::Element, bytes) => return Ok(bytes),
                (Token::StreamClose, _) => return Err("the server closed the stream".into()),
                _ => {}
            }
        }
    }

    /// Opens (or restarts) the stream and returns the server's features.
    async fn open(&mut self, domain: &str) -> Result<Vec<u8>, Failure> {
        self.send(
            format!(
                "<?xml version='1.0'?><stream:stream to='{}' version='1.0' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>",
                view::escape_attribute(domain)
            )
            .as_bytes(),
        )
        .await?;
        loop {
            match self.next(ANSWER_TIMEOUT).await? {
                (Token::StreamOpen, _) | (Token::XmlDeclaration, _) | (Token::Whitespace, _) => {}
                (Token::Element, bytes) => return Ok(bytes),
                (Token::StreamClose, _) => return Err("the server closed the stream".into()),
            }
        }
    }

    /// Sends an IQ and waits for its answer; notifications arriving meanwhile are
    /// handed to `other`.
    async fn iq(
        &mut self,
        id: &str,
        iq: String,
        other: &mut (dyn FnMut(&[u8]) + Send),
    ) -> Result<Vec<u8>, Failure> {
        self.send(iq.as_bytes()).await?;
        loop {
            let element = self.element().await?;
            let Some(tag) = StartTag::parse(&element) else {
                continue;
            };
            if tag.local_name() == b"iq" && tag.attribute(b"id").as_deref() == Some(id) {
                return Ok(element);
            }
            other(&element);
        }
    }
}

async fn connect(shared: &Shared) -> Result<BoxIo, Failure> {
    let config = shared.config.load_full();
    let upstream = &config.upstream;
    let connect = async {
        let tcp = TcpStream::connect(upstream.address)
            .await
            .map_err(|e| format!("connecting to {}: {e}", upstream.address))?;
        let _ = tcp.set_nodelay(true);
        // The server's own limits see xmppwall's address: this is xmppwall's session.
        let local = tcp.local_addr().map_err(|e| e.to_string())?;
        let header = crate::proxy_header::header(upstream.proxy_protocol, local, upstream.address);
        let mut io: BoxIo = match shared.upstream_tls.load_full().as_ref() {
            None => Box::new(tcp),
            Some((tls, name)) => Box::new(
                TlsConnector::from(tls.clone())
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| format!("TLS with the server: {e}"))?,
            ),
        };
        if !header.is_empty() {
            io.write_all(&header).await.map_err(|e| e.to_string())?;
        }
        Ok::<BoxIo, Failure>(io)
    };
    tokio::time::timeout(upstream.connect_timeout, connect)
        .await
        .map_err(|_| format!("connecting to {} timed out", upstream.address))?
}

fn is_result(iq: &[u8]) -> bool {
    StartTag::parse(iq).and_then(|t| t.attribute(b"type").map(|t| t == "result")) == Some(true)
}

fn apply(list: &BlockList, rtbl: &Rtbl, changes: Vec<Change>) {
    for change in changes {
        match change {
            Change::Add(id) => {
                if list.insert(&id) {
                    info!(list = %rtbl.name, id = %id, entries = list.len(), "block list item added");
                }
            }
            Change::Remove(id) => {
                if list.remove(&id) {
                    info!(list = %rtbl.name, id = %id, entries = list.len(), "block list item retracted");
                }
            }
            Change::Clear => {
                list.clear();
                info!(list = %rtbl.name, "block list purged");
            }
        }
    }
}

/// One login: authenticate, bind, subscribe, load, then follow until the stream ends.
async fn session(shared: &Shared, rtbl: &Rtbl, list: &BlockList) -> Result<(), Failure> {
    let io = connect(shared).await?;
    let limits = shared.config.load().limits.framer_budgets().after;
    let mut conn = Conn {
        io,
        reader: FrameReader::new(xmppwall_xml::Limits {
            // Item lists may be long.
            max_element_bytes: limits.max_element_bytes.max(16 << 20),
            max_elements: limits.max_elements.max(1 << 20),
            ..limits
        }),
        shutdown: shared.shutdown_signal(),
    };
    let (user, domain) = rtbl
        .jid
        .split_once('@')
        .ok_or_else(|| format!("{} is not a bare JID", rtbl.jid))?;
    conn.open(domain).await?;
    // RFC 4616: authzid NUL authcid NUL password.
    let credentials =
        base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{}", rtbl.password));
    conn.send(
        format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{credentials}</auth>"
        )
        .as_bytes(),
    )
    .await?;
    let answer = conn.element().await?;
    if StartTag::parse(&answer).map(|t| t.local_name() == b"success") != Some(true) {
        return Err(format!(
            "the server refused the login of {}: {}",
            rtbl.jid,
            String::from_utf8_lossy(&answer)
        ));
    }
    conn.reader.framer.reset();
    conn.open(domain).await?;
    let mut pending: Vec<Change> = Vec::new();
    let (service, node) = (rtbl.service.as_str(), rtbl.node.as_str());
    let mut early = |e: &[u8]| pending.extend(Change::read_event(e, service, node));
    let bound = conn
        .iq(
            "bind",
            format!(
                "<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>xmppwall-rtbl-{}</resource></bind></iq>",
                view::escape_text(&rtbl.name)
            ),
            &mut early,
        )
        .await?;
    if !is_result(&bound) {
        return Err(format!(
            "binding a resource failed: {}",
            String::from_utf8_lossy(&bound)
        ));
    }
    // Available, so that notifications to the bare JID reach this session
    // (RFC 6121 §8.5.2.1.1); a negative priority would keep them away.
    conn.send(b"<presence/>").await?;
    let escaped_service = view::escape_attribute(service).into_owned();
    let escaped_node = view::escape_attribute(node).into_owned();
    let subscribed = conn
        .iq(
            "sub",
            format!(
                "<iq type='set' to='{escaped_service}' id='sub'><pubsub xmlns='{PUBSUB_NS}'><subscribe node='{escaped_node}' jid='{}'/></pubsub></iq>",
                view::escape_attribute(&rtbl.jid)
            ),
            &mut early,
        )
        .await?;
    if !is_result(&subscribed) {
        return Err(format!(
            "subscribing to {service} node {node} failed: {}",
            String::from_utf8_lossy(&subscribed)
        ));
    }
    // Subscribed first, then loaded: a change between the two arrives as a
    // notification and is applied after the load, in order.
    let items = conn
        .iq(
            "items",
            format!(
                "<iq type='get' to='{escaped_service}' id='items'><pubsub xmlns='{PUBSUB_NS}'><items node='{escaped_node}'/></pubsub></iq>"
            ),
            &mut early,
        )
        .await?;
    if !is_result(&items) {
        return Err(format!(
            "loading the items of {service} node {node} failed: {}",
            String::from_utf8_lossy(&items)
        ));
    }
    let ids = read_items(&items);
    list.replace_all(ids.iter().map(String::as_str));
    apply(list, rtbl, std::mem::take(&mut pending));
    info!(list = %rtbl.name, service, node, entries = list.len(), "block list loaded");

    loop {
        let (token, bytes) = match conn.next(KEEPALIVE).await {
            Ok(frame) => frame,
            Err(e) if e.starts_with("no answer") => {
                conn.send(b" ").await?;
                continue;
            }
            Err(e) => return Err(e),
        };
        match token {
            Token::Element => {}
            Token::StreamClose => return Err("the server closed the stream".into()),
            _ => continue,
        }
        let Some(tag) = StartTag::parse(&bytes) else {
            continue;
        };
        match tag.local_name() {
            b"message" => apply(list, rtbl, Change::read_event(&bytes, service, node)),
            b"iq" if matches!(tag.attribute(b"type").as_deref(), Some("get" | "set")) => {
                // RFC 6120 §8.4: a request nobody here serves gets <service-unavailable/>.
                let mut reply = String::from("<iq type='error'");
                if let Some(id) = tag.attribute(b"id") {
                    reply.push_str(&format!(" id='{}'", view::escape_attribute(&id)));
                }
                if let Some(from) = tag.attribute(b"from") {
                    reply.push_str(&format!(" to='{}'", view::escape_attribute(&from)));
                }
                reply.push_str("><error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>");
                conn.send(reply.as_bytes()).await?;
            }
            _ => {
                debug!(list = %rtbl.name, "ignored from the server: {}", String::from_utf8_lossy(&bytes))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_from_the_service_about_the_node_are_read() {
        let event = b"<message from='xmppbl.org' to='rtbl@example.org' id='n1'><event xmlns='http://jabber.org/protocol/pubsub#event'><items node='muc_bans_sha256'><item id='abc'><report xmlns='urn:xmpp:reporting:1' reason='urn:xmpp:reporting:spam'/></item><retract id='def'/></items></event></message>";
        assert_eq!(
            Change::read_event(event, "xmppbl.org", "muc_bans_sha256"),
            vec![Change::Add("abc".into()), Change::Remove("def".into())]
        );
        // Another node, another sender: nothing.
        assert!(Change::read_event(event, "xmppbl.org", "other").is_empty());
        assert!(Change::read_event(event, "evil.example", "muc_bans_sha256").is_empty());
        let purge = b"<message from='xmppbl.org'><event xmlns='http://jabber.org/protocol/pubsub#event'><purge node='muc_bans_sha256'/></event></message>";
        assert_eq!(
            Change::read_event(purge, "xmppbl.org", "muc_bans_sha256"),
            vec![Change::Clear]
        );
    }

    #[test]
    fn items_results_give_every_item_id() {
        let iq = b"<iq type='result' from='xmppbl.org' id='items'><pubsub xmlns='http://jabber.org/protocol/pubsub'><items node='muc_bans_sha256'><item id='one'/><item id='two'><x/></item></items></pubsub></iq>";
        assert_eq!(read_items(iq), ["one", "two"]);
    }
}
