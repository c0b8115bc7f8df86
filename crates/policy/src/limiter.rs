//! The XEP-0205 limits at run time: the state behind them and the verdicts they give.
//!
//! Sans-IO: every call takes `now`. The state that outlives one connection (per
//! address, per account) sits in bounded tables behind short locks, shared by all
//! connections of this instance; per-connection state ([`ConnectionLimits`]) lives in
//! the session that owns the connection. A reload builds a new [`Limiter`] over the
//! same [`LimiterState`], so counters survive a configuration change.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use crate::address::AddressKey;
use crate::antispam::{AntispamConfig, AntispamState, SubscriptionCount};
use crate::errors::{ErrorType, StanzaError, StreamCondition, StreamError};
use crate::limits::{
    LimitsConfig, PayloadDirection, PayloadError, PerPeriod, StanzaLimits, UserClass,
};
use crate::rate::TokenBucket;
use crate::rules::Marks;
use crate::stanza::{bare_jid, Direction, Kind, Stanza};
use crate::table::BoundedTable;

const MUC_NS: &str = "http://jabber.org/protocol/muc";
const ROSTER_NS: &str = "jabber:iq:roster";
const PUBSUB_NS: &str = "http://jabber.org/protocol/pubsub";
/// Correspondents remembered per account, for the distinct-recipient exemption.
const CORRESPONDENTS_PER_ACCOUNT: usize = 256;
/// Recipients remembered per account at most, whatever `distinct_recipients` says.
const RECIPIENTS_HARD_CAP: usize = 10_000;
/// Rooms tracked per account even with `rooms_joined = "off"`: memory stays bounded.
const ROOMS_HARD_CAP: u32 = 1000;

/// Each limit, for counting its hits (`xmppwall_limit_hits_total{limit=...}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    DeniedAddress,
    ConnectionsPerAddress,
    ConnectionAttempts,
    AuthFailureBan,
    BannedAddress,
    AddressTableFull,
    Resources,
    StanzaSize,
    DistinctRecipients,
    Bandwidth,
    BandwidthClose,
    Payload,
    RosterRequests,
    SubscriptionRequests,
    PresenceBroadcasts,
    MucMessages,
    MucPresences,
    RoomsJoined,
    PubsubPublishes,
    Registration,
    Directory,
    IncomingSubscriptions,
    Strangers,
    Federation,
    PeerStanzas,
    PeerRecipients,
    PeerSubscriptions,
}

impl LimitKind {
    pub const ALL: [LimitKind; 27] = [
        LimitKind::DeniedAddress,
        LimitKind::ConnectionsPerAddress,
        LimitKind::ConnectionAttempts,
        LimitKind::AuthFailureBan,
        LimitKind::BannedAddress,
        LimitKind::AddressTableFull,
        LimitKind::Resources,
        LimitKind::StanzaSize,
        LimitKind::DistinctRecipients,
        LimitKind::Bandwidth,
        LimitKind::BandwidthClose,
        LimitKind::Payload,
        LimitKind::RosterRequests,
        LimitKind::SubscriptionRequests,
        LimitKind::PresenceBroadcasts,
        LimitKind::MucMessages,
        LimitKind::MucPresences,
        LimitKind::RoomsJoined,
        LimitKind::PubsubPublishes,
        LimitKind::Registration,
        LimitKind::Directory,
        LimitKind::IncomingSubscriptions,
        LimitKind::Strangers,
        LimitKind::Federation,
        LimitKind::PeerStanzas,
        LimitKind::PeerRecipients,
        LimitKind::PeerSubscriptions,
    ];

    pub fn name(self) -> &'static str {
        match self {
            LimitKind::DeniedAddress => "denied_address",
            LimitKind::ConnectionsPerAddress => "connections_per_address",
            LimitKind::ConnectionAttempts => "connection_attempts",
            LimitKind::AuthFailureBan => "auth_failure_ban",
            LimitKind::BannedAddress => "banned_address",
            LimitKind::AddressTableFull => "address_table_full",
            LimitKind::Resources => "resources_per_account",
            LimitKind::StanzaSize => "stanza_size",
            LimitKind::DistinctRecipients => "distinct_recipients",
            LimitKind::Bandwidth => "bandwidth_throttled",
            LimitKind::BandwidthClose => "bandwidth_closed",
            LimitKind::Payload => "payload",
            LimitKind::RosterRequests => "roster_requests",
            LimitKind::SubscriptionRequests => "subscription_requests",
            LimitKind::PresenceBroadcasts => "presence_broadcasts",
            LimitKind::MucMessages => "muc_messages",
            LimitKind::MucPresences => "muc_presences",
            LimitKind::RoomsJoined => "rooms_joined",
            LimitKind::PubsubPublishes => "pubsub_publishes",
            LimitKind::Registration => "registration",
            LimitKind::Directory => "directory",
            LimitKind::IncomingSubscriptions => "incoming_subscriptions",
            LimitKind::Strangers => "strangers",
            LimitKind::Federation => "federation",
            LimitKind::PeerStanzas => "peer_stanzas",
            LimitKind::PeerRecipients => "peer_distinct_recipients",
            LimitKind::PeerSubscriptions => "peer_subscription_requests",
        }
    }
}

/// What a stanza check decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Not forwarded, nobody told.
    Drop(LimitKind),
    /// Not forwarded; the sender gets this error (where RFC 6120 allows one).
    Bounce(LimitKind, StanzaError),
    /// The stream ends with this error.
    Close(LimitKind, StreamError),
}

/// State that outlives a connection, shared by every connection of this instance.
#[derive(Debug)]
pub struct LimiterState {
    addresses: Mutex<BoundedTable<AddressKey, AddressState>>,
    accounts: Mutex<BoundedTable<String, AccountState>>,
    /// Marks rules set on accounts (`mark = { scope = "account" }`).
    account_marks: Mutex<BoundedTable<String, Marks>>,
    hits: [AtomicU64; LimitKind::ALL.len()],
    next_connection: AtomicU64,
    /// Registration and incoming-subscription counters (`[registration]`,
    /// `[subscriptions]`).
    pub antispam: AntispamState,
    /// Each account's observed contacts, shared by its streams.
    pub contacts: crate::contacts::ContactBook,
    /// Told of every ban the limits or rules make (the durable store, shared state).
    ban_observer: std::sync::OnceLock<BanObserver>,
    /// Remote domains and remote senders on server-to-server and component streams.
    peers: peers::PeerTables,
}

/// A ban the limiter just made, for whoever keeps bans beyond this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BanEvent {
    /// The banned address group (the gate's `ipv4_prefix`/`ipv6_prefix`).
    pub network: ipnet::IpNet,
    pub until: SystemTime,
    /// `auth_failures`, or `rule:NAME`.
    pub source: String,
    pub reason: String,
}

struct BanObserver(Box<dyn Fn(&BanEvent) + Send + Sync>);

impl std::fmt::Debug for BanObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BanObserver")
    }
}

impl LimiterState {
    pub fn new(config: &LimitsConfig) -> Arc<LimiterState> {
        Arc::new(LimiterState {
            addresses: Mutex::new(BoundedTable::new(
                "addresses",
                config.gate.max_tracked_addresses,
            )),
            accounts: Mutex::new(BoundedTable::new("accounts", config.max_tracked_accounts)),
            account_marks: Mutex::new(BoundedTable::new(
                "account-marks",
                config.max_tracked_accounts,
            )),
            hits: std::array::from_fn(|_| AtomicU64::new(0)),
            next_connection: AtomicU64::new(1),
            antispam: AntispamState::new(config.gate.max_tracked_addresses, 10_000),
            contacts: crate::contacts::ContactBook::new(config.max_tracked_accounts),
            ban_observer: std::sync::OnceLock::new(),
            peers: peers::PeerTables::new(&config.peers),
        })
    }

    /// Sets what is told of every new ban (once per process; later calls are ignored
    /// and return `false`). It runs on the connection's task: it must not block long.
    pub fn observe_bans(&self, observer: Box<dyn Fn(&BanEvent) + Send + Sync>) -> bool {
        self.ban_observer.set(BanObserver(observer)).is_ok()
    }

    fn banned(&self, event: BanEvent) {
        if let Some(observer) = self.ban_observer.get() {
            (observer.0)(&event);
        }
    }

    pub fn hit(&self, kind: LimitKind) {
        self.hits[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn hits(&self, kind: LimitKind) -> u64 {
        self.hits[kind as usize].load(Ordering::Relaxed)
    }

    fn addresses(&self) -> MutexGuard<'_, BoundedTable<AddressKey, AddressState>> {
        self.addresses.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn accounts(&self) -> MutexGuard<'_, BoundedTable<String, AccountState>> {
        self.accounts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sizes, caps and evictions of the shared tables, and every limit's hits.
    pub fn snapshot(&self) -> StateSnapshot {
        let (addresses, address_cap, address_evictions) = {
            let t = self.addresses();
            (t.len(), t.cap(), t.evictions())
        };
        let (accounts, account_cap, account_evictions) = {
            let t = self.accounts();
            (t.len(), t.cap(), t.evictions())
        };
        let (peer_domains, peer_senders) = self.peers.snapshot();
        StateSnapshot {
            addresses,
            address_cap,
            address_evictions,
            accounts,
            account_cap,
            account_evictions,
            peer_domains,
            peer_senders,
            hits: LimitKind::ALL.map(|k| (k, self.hits(k))),
        }
    }
}

/// A moment's view of [`LimiterState`], for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateSnapshot {
    pub addresses: usize,
    pub address_cap: usize,
    pub address_evictions: u64,
    pub accounts: usize,
    pub account_cap: usize,
    pub account_evictions: u64,
    /// Remote domains and remote senders: entries, cap, evictions.
    pub peer_domains: (usize, usize, u64),
    pub peer_senders: (usize, usize, u64),
    pub hits: [(LimitKind, u64); LimitKind::ALL.len()],
}

impl std::fmt::Display for StateSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "addresses={}/{} address_evictions={} accounts={}/{} account_evictions={} \
             peer_domains={}/{} peer_domain_evictions={} peer_senders={}/{} \
             peer_sender_evictions={} limit_hits=",
            self.addresses,
            self.address_cap,
            self.address_evictions,
            self.accounts,
            self.account_cap,
            self.account_evictions,
            self.peer_domains.0,
            self.peer_domains.1,
            self.peer_domains.2,
            self.peer_senders.0,
            self.peer_senders.1,
            self.peer_senders.2,
        )?;
        let mut first = true;
        for (kind, n) in self.hits.iter().filter(|(_, n)| *n > 0) {
            if !first {
                f.write_str(",")?;
            }
            write!(f, "{}:{n}", kind.name())?;
            first = false;
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
struct AddressState {
    connections: u32,
    sasl_successes: u32,
    sasl_failures: u32,
    attempts: TokenBucket,
    failures: TokenBucket,
    banned_until: Option<Instant>,
}

impl AddressState {
    /// What a full table evicts first: entries holding no connection and no ban
    /// (their rate counters are what an attacker with many addresses resets anyway).
    fn evictable(&self, now: Instant) -> bool {
        self.connections == 0 && self.banned_until.is_none_or(|t| t <= now)
    }

    fn idle(&self, now: Instant) -> bool {
        self.connections == 0
            && self.attempts.is_full(now)
            && self.failures.is_full(now)
            && self.banned_until.is_none_or(|t| t <= now)
    }
}

/// A room an account joined, through one of its connections.
#[derive(Debug)]
struct JoinedRoom {
    jid: String,
    messages: TokenBucket,
    presences: TokenBucket,
    /// The connection whose join this was: the room is left when it closes.
    joined_by: u64,
}

impl AccountState {
    /// Nothing would be lost by forgetting the account: no session, every counter
    /// back to full, no room, no recipient in a window. (Correspondents only ever
    /// exempt; losing them makes the limit stricter, never looser.)
    fn idle(&self, now: Instant) -> bool {
        self.resources == 0
            && self.bandwidth.is_full(now)
            && self.subscriptions.is_full(now)
            && self.presence_broadcasts.is_full(now)
            && self.publishes.is_full(now)
            && self.rooms.is_empty()
            && self.recipients.as_ref().is_none_or(|r| r.is_empty())
    }
}

#[derive(Debug, Default)]
struct AccountState {
    resources: u32,
    recipients: Option<BoundedTable<String, Instant>>,
    correspondents: Option<BoundedTable<String, Instant>>,
    bandwidth: TokenBucket,
    subscriptions: TokenBucket,
    presence_broadcasts: TokenBucket,
    publishes: TokenBucket,
    /// Joined rooms with each occupant's message and presence buckets.
    rooms: Vec<JoinedRoom>,
}

/// The configured limits over the shared state.
#[derive(Debug, Clone)]
pub struct Limiter {
    pub config: Arc<LimitsConfig>,
    pub state: Arc<LimiterState>,
    /// The anti-spam measures (`[registration]`, `[directory]`, `[subscriptions]`,
    /// `[strangers]`, `[federation]`).
    pub antispam: Arc<AntispamConfig>,
}

/// How the gate answered a new connection (XEP-0205 §2.1, §2.2).
#[derive(Debug)]
pub enum GateDecision {
    Admit(ConnectionTicket),
    /// Admitted far enough to be told, in a `<policy-violation/>`, until when the
    /// address is banned.
    Banned(ConnectionTicket, SystemTime),
    /// Closed at the binding level: XEP-0205 defines no XMPP error for these.
    Refuse(LimitKind),
}

/// One admitted connection's place in its address's count; gives it back on drop.
#[derive(Debug)]
pub struct ConnectionTicket {
    state: Arc<LimiterState>,
    /// `None` for allow-listed addresses, which are not counted.
    key: Option<AddressKey>,
    pub ip: IpAddr,
    /// From an allow-listed address: the trusted tier applies.
    pub trusted_address: bool,
}

impl Drop for ConnectionTicket {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            let mut table = self.state.addresses();
            if let Some(entry) = table.get_mut(&key) {
                entry.connections = entry.connections.saturating_sub(1);
            }
        }
    }
}

/// What one connection carries of the limits: its tier and its own buckets.
#[derive(Debug)]
pub struct ConnectionLimits {
    /// Unique within this instance.
    id: u64,
    pub class: UserClass,
    /// The account's bare JID, once known.
    pub account: Option<String>,
    /// Whether this connection holds one of the account's resource slots.
    holds_resource: bool,
    bandwidth: TokenBucket,
    /// Throttling in a row, for the close-after penalty.
    throttled: Duration,
    roster: TokenBucket,
    trusted_address: bool,
}

/// What the reader does after `n` bytes (XEP-0205 §2.7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Throttle {
    Continue,
    /// Read nothing more for this long: backpressure, nothing is dropped.
    Pause(Duration),
    Close(StreamError),
}

/// A SASL failure's consequences (XEP-0205 §2.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthFailure {
    /// Wait this long before relaying the failure to the client.
    pub tarpit: Duration,
    /// The address is now banned until then; the stream should close.
    pub banned_until: Option<SystemTime>,
    /// SASL outcomes counted for the address so far.
    pub successes: u32,
    pub failures: u32,
}

fn wall_clock(now: Instant, at: Instant) -> SystemTime {
    SystemTime::now() + at.saturating_duration_since(now)
}

/// The `<policy-violation/>` a banned address gets when it connects, saying until when.
pub fn banned_error(until: SystemTime) -> StreamError {
    StreamError::new(StreamCondition::PolicyViolation).with_text(format!(
        "this address is banned until {}",
        crate::clock::rfc3339(until)
    ))
}

/// The `<policy-violation/>` that ends the stream whose failure caused the ban.
pub fn auth_banned_error(until: SystemTime) -> StreamError {
    StreamError::new(StreamCondition::PolicyViolation).with_text(format!(
        "too many failed authentication attempts from this address; banned until {}",
        crate::clock::rfc3339(until)
    ))
}

/// The `<policy-violation/>` for an address a rule just banned.
pub fn banned_error_for(until: SystemTime, rule: &str) -> StreamError {
    StreamError::new(StreamCondition::PolicyViolation).with_text(format!(
        "banned by rule {rule} until {}",
        crate::clock::rfc3339(until)
    ))
}

fn rate_error(what: &str, limit: PerPeriod) -> StanzaError {
    StanzaError {
        error_type: ErrorType::Wait,
        condition: "policy-violation",
        app_condition: None,
        text: Some(format!(
            "too many {what}: at most {} per {}",
            limit.count,
            humantime::format_duration(limit.period)
        )),
    }
}

impl Limiter {
    pub fn new(config: LimitsConfig) -> Limiter {
        let state = LimiterState::new(&config);
        Limiter {
            config: Arc::new(config),
            state,
            antispam: Arc::default(),
        }
    }

    /// The same limits with these anti-spam measures.
    pub fn with_antispam(self, antispam: Arc<AntispamConfig>) -> Limiter {
        Limiter { antispam, ..self }
    }

    /// The same state under a new configuration (reload). Table caps keep their
    /// first values until restart.
    pub fn with_config(&self, config: LimitsConfig) -> Limiter {
        Limiter {
            config: Arc::new(config),
            state: self.state.clone(),
            antispam: self.antispam.clone(),
        }
    }

    /// XEP-0205 §2.1 and §2.2, before a byte is read.
    pub fn admit(&self, ip: IpAddr, now: Instant) -> GateDecision {
        let gate = &self.config.gate;
        let ip = ip.to_canonical();
        if gate.allow.contains(ip) {
            return GateDecision::Admit(ConnectionTicket {
                state: self.state.clone(),
                key: None,
                ip,
                trusted_address: true,
            });
        }
        if gate.deny.contains(ip) {
            self.state.hit(LimitKind::DeniedAddress);
            return GateDecision::Refuse(LimitKind::DeniedAddress);
        }
        let key = AddressKey::new(ip, gate.ipv4_prefix, gate.ipv6_prefix);
        let mut table = self.state.addresses();
        table.trim_idle(|e| e.idle(now));
        // A full table forgets an address without connections or ban first, then one
        // without a ban (its connection count is lost: it had the oldest activity of
        // the 256 looked at); a table whose oldest entries are all banned refuses the
        // newcomer rather than lift a ban.
        let Some(entry) = table.entry_evicting(
            key,
            AddressState::default,
            |e| e.evictable(now),
            |e| e.banned_until.is_none_or(|t| t <= now),
        ) else {
            drop(table);
            self.state.hit(LimitKind::AddressTableFull);
            return GateDecision::Refuse(LimitKind::AddressTableFull);
        };
        let refused = if let Some(limit) = gate.connection_attempts {
            entry.attempts.try_take(&limit.rate(), 1.0, now).is_err()
        } else {
            false
        };
        let decision = if refused {
            Err(LimitKind::ConnectionAttempts)
        } else if gate
            .max_connections_per_address
            .is_some_and(|max| entry.connections >= max)
        {
            Err(LimitKind::ConnectionsPerAddress)
        } else {
            entry.connections += 1;
            Ok(entry.banned_until.filter(|&t| t > now))
        };
        drop(table);
        match decision {
            Err(kind) => {
                self.state.hit(kind);
                GateDecision::Refuse(kind)
            }
            Ok(banned) => {
                let ticket = ConnectionTicket {
                    state: self.state.clone(),
                    key: Some(key),
                    ip,
                    trusted_address: false,
                };
                match banned {
                    Some(until) => {
                        self.state.hit(LimitKind::BannedAddress);
                        GateDecision::Banned(ticket, wall_clock(now, until))
                    }
                    None => GateDecision::Admit(ticket),
                }
            }
        }
    }

    fn address_key(&self, ip: IpAddr) -> AddressKey {
        let gate = &self.config.gate;
        AddressKey::new(ip, gate.ipv4_prefix, gate.ipv6_prefix)
    }

    /// The address group `ip` belongs to, as a network.
    pub fn network_of(&self, ip: IpAddr) -> ipnet::IpNet {
        let gate = &self.config.gate;
        let key = self.address_key(ip.to_canonical());
        let prefix = match key.ip() {
            IpAddr::V4(_) => gate.ipv4_prefix.min(32),
            IpAddr::V6(_) => gate.ipv6_prefix.min(128),
        };
        ipnet::IpNet::new(key.ip(), prefix).unwrap_or_else(|_| ipnet::IpNet::from(key.ip()))
    }

    /// Bans `ip`'s address group until `now + duration` (a rule's `ban`); returns
    /// the wall-clock end for the peer's error text. `rule` names who banned.
    pub fn ban(&self, ip: IpAddr, duration: Duration, now: Instant, rule: &str) -> SystemTime {
        self.ban_address(
            ip,
            duration,
            now,
            &format!("rule:{rule}"),
            &format!("banned by rule {rule}"),
        )
    }

    /// Bans `ip`'s address group until `now + duration` and tells the ban observer
    /// (the store) with this `source` (`admin`, `rule:NAME`, ...) and `reason`.
    pub fn ban_address(
        &self,
        ip: IpAddr,
        duration: Duration,
        now: Instant,
        source: &str,
        reason: &str,
    ) -> SystemTime {
        let until = now + duration.min(crate::clock::MAX_BAN);
        {
            let mut table = self.state.addresses();
            let entry = table.entry(self.address_key(ip.to_canonical()), AddressState::default);
            entry.banned_until = Some(entry.banned_until.map_or(until, |t| t.max(until)));
        }
        let until = wall_clock(now, until);
        self.state.banned(BanEvent {
            network: self.network_of(ip),
            until,
            source: source.to_owned(),
            reason: reason.to_owned(),
        });
        until
    }

    /// Re-applies a ban kept elsewhere (the durable store at start, another
    /// instance): no observer is told. A ban already longer stays.
    pub fn restore_ban(&self, network: ipnet::IpNet, until: SystemTime, now: Instant) {
        let Ok(left) = until.duration_since(SystemTime::now()) else {
            return;
        };
        let until = now + left.min(crate::clock::MAX_BAN);
        let mut table = self.state.addresses();
        let entry = table.entry(self.address_key(network.addr()), AddressState::default);
        entry.banned_until = Some(entry.banned_until.map_or(until, |t| t.max(until)));
    }

    /// Lifts the ban on `network`'s address group; `true` if one was in force.
    pub fn unban(&self, network: ipnet::IpNet, now: Instant) -> bool {
        let mut table = self.state.addresses();
        let Some(entry) = table.get_mut(&self.address_key(network.addr())) else {
            return false;
        };
        let active = entry.banned_until.is_some_and(|t| t > now);
        entry.banned_until = None;
        active
    }

    /// The address groups banned now by the limits themselves (authentication
    /// failures, a rule's `ban`), with the wall-clock end of each ban.
    pub fn address_bans(&self, now: Instant) -> Vec<(IpAddr, SystemTime)> {
        self.state
            .addresses()
            .iter()
            .filter_map(|(key, e)| {
                e.banned_until
                    .filter(|&t| t > now)
                    .map(|t| (key.ip(), wall_clock(now, t)))
            })
            .collect()
    }

    /// Sets a mark on an account.
    pub fn mark_account(&self, account: &str, name: &str, until: Instant) {
        let mut table = self
            .state
            .account_marks
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        table
            .entry(account.to_owned(), Marks::default)
            .set(name, until);
    }

    /// Adds the account's marks to `marks`.
    pub fn add_account_marks(&self, account: &str, marks: &mut Marks) {
        let mut table = self
            .state
            .account_marks
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(m) = table.get_mut(&account.to_owned()) {
            marks.merge(m);
        }
    }

    /// Counts a successful SASL authentication from `ip`; returns the address's
    /// (successes, failures) so far, for the log.
    pub fn auth_succeeded(&self, ip: IpAddr) -> (u32, u32) {
        let mut table = self.state.addresses();
        let entry = table.entry(self.address_key(ip), AddressState::default);
        entry.sasl_successes = entry.sasl_successes.saturating_add(1);
        (entry.sasl_successes, entry.sasl_failures)
    }

    /// Counts a failed SASL attempt from `ip` (XEP-0205 §2.3).
    pub fn auth_failed(&self, ip: IpAddr, now: Instant) -> AuthFailure {
        let auth = &self.config.auth;
        let ip = ip.to_canonical();
        let mut table = self.state.addresses();
        let entry = table.entry(self.address_key(ip), AddressState::default);
        entry.sasl_failures = entry.sasl_failures.saturating_add(1);
        let mut failure = AuthFailure {
            tarpit: auth.tarpit,
            banned_until: None,
            successes: entry.sasl_successes,
            failures: entry.sasl_failures,
        };
        let Some(limit) = auth.max_failures else {
            return failure;
        };
        if self.config.gate.allow.contains(ip) {
            return failure;
        }
        // The Nth failure within the period bans (ejabberd's mod_fail2ban bans at
        // its c2s_max_auth_failures-th): the bucket holds N - 1, the Nth overflows.
        let rate = crate::rate::Rate {
            burst: f64::from(limit.count.saturating_sub(1)),
            ..limit.rate()
        };
        if entry.failures.try_take(&rate, 1.0, now).is_err() {
            let until = now + auth.ban;
            entry.banned_until = Some(until);
            entry.failures = TokenBucket::new();
            failure.banned_until = Some(wall_clock(now, until));
            drop(table);
            self.state.hit(LimitKind::AuthFailureBan);
            self.state.banned(BanEvent {
                network: self.network_of(ip),
                until: wall_clock(now, until),
                source: "auth_failures".into(),
                reason: format!(
                    "{} failed authentications within {}",
                    limit.count,
                    humantime::format_duration(limit.period)
                ),
            });
        }
        failure
    }

    /// The limits of a new connection (before authentication: the registered tier,
    /// or trusted for allow-listed addresses).
    pub fn connection(&self, ticket: &ConnectionTicket) -> ConnectionLimits {
        ConnectionLimits {
            id: self.state.next_connection.fetch_add(1, Ordering::Relaxed),
            class: if ticket.trusted_address {
                UserClass::Trusted
            } else {
                UserClass::Registered
            },
            account: None,
            holds_resource: false,
            bandwidth: TokenBucket::new(),
            throttled: Duration::ZERO,
            roster: TokenBucket::new(),
            trusted_address: ticket.trusted_address,
        }
    }

    /// Sets the tier once authentication succeeded (XEP-0205 §3).
    pub fn authenticated(
        &self,
        conn: &mut ConnectionLimits,
        mechanism: &str,
        account: Option<&str>,
    ) {
        let account = account.map(bare_jid);
        conn.class = if conn.trusted_address
            || account
                .as_ref()
                .is_some_and(|a| self.config.trusted_jids.iter().any(|t| t == a))
        {
            UserClass::Trusted
        } else if mechanism.eq_ignore_ascii_case("ANONYMOUS") {
            UserClass::Anonymous
        } else {
            UserClass::Registered
        };
        conn.account = account;
    }

    fn limits(&self, conn: &ConnectionLimits) -> &StanzaLimits {
        self.config.for_class(conn.class)
    }

    /// XEP-0205 §2.4: a resource bind request. Reserves a slot for the account, or
    /// answers `cancel` + `<resource-constraint/>` + `<resource-limit-exceeded/>`.
    pub fn bind_requested(
        &self,
        conn: &mut ConnectionLimits,
        now: Instant,
    ) -> Result<(), StanzaError> {
        let (Some(account), Some(max)) = (
            conn.account.clone(),
            self.limits(conn).resources_per_account,
        ) else {
            return Ok(());
        };
        if conn.holds_resource {
            return Ok(());
        }
        let mut table = self.state.accounts();
        table.trim_idle(|a| a.idle(now));
        let entry = table.entry(account, AccountState::default);
        if entry.resources >= max {
            drop(table);
            self.state.hit(LimitKind::Resources);
            return Err(resource_limit_error(max));
        }
        entry.resources += 1;
        conn.holds_resource = true;
        Ok(())
    }

    /// The account and its `resources_per_account` when this connection holds a
    /// resource slot (to reserve it in a count shared with other instances).
    pub fn resource_slot(&self, conn: &ConnectionLimits) -> Option<(String, u32)> {
        if !conn.holds_resource {
            return None;
        }
        Some((
            conn.account.clone()?,
            self.limits(conn).resources_per_account?,
        ))
    }

    /// The count shared with other instances refused the slot
    /// [`Limiter::bind_requested`] reserved: it is given back, the limit's hit is
    /// counted, and this is the error for the client (XEP-0205 §2.4).
    pub fn bind_refused_elsewhere(&self, conn: &mut ConnectionLimits, max: u32) -> StanzaError {
        self.release_resource(conn);
        self.state.hit(LimitKind::Resources);
        resource_limit_error(max)
    }

    /// The server refused the bind: the reserved slot is given back.
    pub fn bind_refused(&self, conn: &mut ConnectionLimits) {
        self.release_resource(conn);
    }

    /// The connection ended.
    pub fn connection_closed(&self, conn: &mut ConnectionLimits) {
        self.release_resource(conn);
        if let Some(account) = &conn.account {
            if let Some(entry) = self.state.accounts().get_mut(account) {
                // The server makes this connection's occupants leave their rooms.
                entry.rooms.retain(|r| r.joined_by != conn.id);
            }
        }
    }

    fn release_resource(&self, conn: &mut ConnectionLimits) {
        if !std::mem::take(&mut conn.holds_resource) {
            return;
        }
        if let Some(account) = &conn.account {
            if let Some(entry) = self.state.accounts().get_mut(account) {
                entry.resources = entry.resources.saturating_sub(1);
            }
        }
    }

    /// XEP-0205 §2.7: account `n` bytes just read from the client.
    pub fn bytes_read(&self, conn: &mut ConnectionLimits, n: usize, now: Instant) -> Throttle {
        let limits = self.limits(conn);
        let mut pause = Duration::ZERO;
        if let Some(bw) = limits.bandwidth {
            pause = conn.bandwidth.take_with_debt(&bw.rate(), n as f64, now);
        }
        if let (Some(bw), Some(account)) = (limits.account_bandwidth, &conn.account) {
            let mut table = self.state.accounts();
            let entry = table.entry_ref(account, AccountState::default);
            pause = pause.max(entry.bandwidth.take_with_debt(&bw.rate(), n as f64, now));
        }
        if pause.is_zero() {
            conn.throttled = Duration::ZERO;
            return Throttle::Continue;
        }
        self.state.hit(LimitKind::Bandwidth);
        conn.throttled += pause;
        if conn.throttled > limits.bandwidth_close_after {
            self.state.hit(LimitKind::BandwidthClose);
            return Throttle::Close(
                StreamError::new(StreamCondition::PolicyViolation)
                    .with_text("sustained traffic over the bandwidth limit"),
            );
        }
        Throttle::Pause(pause)
    }

    /// The stanza limits of XEP-0205 §2.6, §2.8 and §2.9 for a stanza the client sent.
    pub fn check_to_server(
        &self,
        conn: &mut ConnectionLimits,
        stanza: &Stanza<'_>,
        now: Instant,
    ) -> Verdict {
        let limits = self.limits(conn);
        if let Some(v) = payload_verdict(limits, stanza, Direction::ToServer) {
            self.state.hit(LimitKind::Payload);
            return v;
        }
        if let Some(v) = self.antispam_to_server(conn, stanza) {
            return v;
        }
        let ty = stanza.stanza_type();
        if ty.as_deref() == Some("error") {
            return Verdict::Pass;
        }
        let verdict = match stanza.kind {
            Kind::Iq => self.check_iq(conn, limits, stanza, ty.as_deref(), now),
            Kind::Message | Kind::Presence => {
                let Some(account) = &conn.account else {
                    return Verdict::Pass;
                };
                let mut table = self.state.accounts();
                let entry = table.entry_ref(account, AccountState::default);
                if stanza.kind == Kind::Message {
                    check_message(entry, limits, account, stanza, ty.as_deref(), now)
                } else {
                    check_presence(entry, limits, account, conn.id, stanza, ty.as_deref(), now)
                }
            }
        };
        match &verdict {
            Verdict::Drop(k) | Verdict::Bounce(k, _) | Verdict::Close(k, _) => {
                self.state.hit(*k);
                if matches!(
                    k,
                    LimitKind::SubscriptionRequests | LimitKind::DistinctRecipients
                ) {
                    if let Some(account) = &conn.account {
                        self.state.antispam.limit_hit(&self.antispam, account, now);
                    }
                }
            }
            Verdict::Pass => {}
        }
        verdict
    }

    fn check_iq(
        &self,
        conn: &mut ConnectionLimits,
        limits: &StanzaLimits,
        stanza: &Stanza<'_>,
        ty: Option<&str>,
        now: Instant,
    ) -> Verdict {
        match ty {
            Some("get") => {
                if let Some(limit) = limits.roster_requests {
                    if stanza.has_payload(b"query", ROSTER_NS)
                        && conn.roster.try_take(&limit.rate(), 1.0, now).is_err()
                    {
                        return Verdict::Bounce(
                            LimitKind::RosterRequests,
                            rate_error("roster requests", limit),
                        );
                    }
                }
            }
            Some("set") => {
                if let (Some(limit), Some(account)) = (limits.pubsub_publishes, &conn.account) {
                    let publishes = stanza
                        .payloads()
                        .any(|(l, ns)| l == b"pubsub" && ns == PUBSUB_NS)
                        && xmppwall_xml::view::children(stanza.bytes).any(|c| {
                            c.start.local_name() == b"pubsub"
                                && xmppwall_xml::view::children(&stanza.bytes[c.range])
                                    .any(|g| g.start.local_name() == b"publish")
                        });
                    if publishes {
                        let mut table = self.state.accounts();
                        let entry = table.entry_ref(account, AccountState::default);
                        if entry.publishes.try_take(&limit.rate(), 1.0, now).is_err() {
                            return Verdict::Bounce(
                                LimitKind::PubsubPublishes,
                                rate_error("publish requests", limit),
                            );
                        }
                    }
                }
            }
            _ => {}
        }
        Verdict::Pass
    }

    /// The user directory (XEP-0055) by class, and the federation lists for the
    /// stanza's recipient.
    fn antispam_to_server(&self, conn: &ConnectionLimits, stanza: &Stanza<'_>) -> Option<Verdict> {
        let a = &self.antispam;
        if stanza.kind == Kind::Iq
            && !a.directory_allows(conn.class)
            && stanza.has_payload(b"query", crate::antispam::SEARCH_NS)
        {
            self.state.hit(LimitKind::Directory);
            return Some(Verdict::Bounce(
                LimitKind::Directory,
                crate::antispam::directory_error(),
            ));
        }
        if a.federation.is_some() {
            let to = stanza.to()?;
            let domain = crate::stanza::domain_of(&to);
            if a.federation_refuses(domain, conn.account.as_deref()) {
                self.state.hit(LimitKind::Federation);
                return Some(Verdict::Bounce(
                    LimitKind::Federation,
                    crate::antispam::federation_error(domain),
                ));
            }
        }
        None
    }

    /// The federation lists for the sender, and incoming subscription requests per
    /// remote domain (ejabberd's mod_pres_counter counts both directions).
    fn antispam_to_client(
        &self,
        conn: &ConnectionLimits,
        stanza: &Stanza<'_>,
        now: Instant,
    ) -> Option<Verdict> {
        let a = &self.antispam;
        if a.federation.is_none() && a.subscriptions.incoming_per_domain.is_none() {
            return None;
        }
        let from = stanza.from()?;
        let domain = crate::stanza::domain_of(&from);
        if a.federation_refuses(domain, conn.account.as_deref()) {
            self.state.hit(LimitKind::Federation);
            return Some(Verdict::Drop(LimitKind::Federation));
        }
        if stanza.kind == Kind::Presence
            && a.subscriptions.incoming_per_domain.is_some()
            && stanza.stanza_type().as_deref() == Some("subscribe")
            && !a.is_local(domain, conn.account.as_deref())
        {
            if let SubscriptionCount::Excess(_) =
                self.state.antispam.incoming_subscription(a, domain, now)
            {
                self.state.hit(LimitKind::IncomingSubscriptions);
                // Repeated excess counts against the sender's reputation.
                self.state.antispam.limit_hit(a, &from, now);
                return Some(Verdict::Drop(LimitKind::IncomingSubscriptions));
            }
        }
        None
    }

    /// What the server sends the client: payload restrictions towards the client,
    /// and who wrote to the account (replies to them are not distinct recipients).
    pub fn check_to_client(
        &self,
        conn: &ConnectionLimits,
        stanza: &Stanza<'_>,
        now: Instant,
    ) -> Verdict {
        if let Some(v) = self.antispam_to_client(conn, stanza, now) {
            return v;
        }
        let limits = self.limits(conn);
        if let Some(v) = payload_verdict(limits, stanza, Direction::ToClient) {
            self.state.hit(LimitKind::Payload);
            // The sender is elsewhere; xmppwall cannot answer for the client.
            return match v {
                Verdict::Bounce(k, _) => Verdict::Drop(k),
                other => other,
            };
        }
        if stanza.kind == Kind::Message && limits.distinct_recipients.is_some() {
            let ty = stanza.stanza_type();
            if !matches!(ty.as_deref(), Some("error" | "groupchat" | "headline")) {
                if let (Some(account), Some(from)) = (&conn.account, stanza.from()) {
                    let mut table = self.state.accounts();
                    let entry = table.entry_ref(account, AccountState::default);
                    let correspondents = entry.correspondents.get_or_insert_with(|| {
                        BoundedTable::new("correspondents", CORRESPONDENTS_PER_ACCOUNT)
                    });
                    *correspondents.entry(bare_jid(&from), || now) = now;
                }
            }
        }
        Verdict::Pass
    }
}

/// The raw values of the `xmlns` and `xmlns:p` attributes in `bytes`, as written.
fn xmlns_values(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    static XMLNS: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"xmlns"));
    XMLNS.find_iter(bytes).filter_map(move |at| {
        let mut i = at + 5;
        if bytes.get(i) == Some(&b':') {
            i += 1;
            while bytes
                .get(i)
                .is_some_and(|b| !matches!(b, b'=' | b' ' | b'\t' | b'\r' | b'\n'))
            {
                i += 1;
            }
        }
        while bytes.get(i).is_some_and(|b| b.is_ascii_whitespace()) {
            i += 1;
        }
        if bytes.get(i) != Some(&b'=') {
            return None;
        }
        i += 1;
        while bytes.get(i).is_some_and(|b| b.is_ascii_whitespace()) {
            i += 1;
        }
        let quote = *bytes.get(i).filter(|q| matches!(q, b'\'' | b'"'))?;
        let rest = &bytes[i + 1..];
        let end = memchr::memchr(quote, rest)?;
        Some(&rest[..end])
    })
}

fn payload_verdict(
    limits: &StanzaLimits,
    stanza: &Stanza<'_>,
    direction: Direction,
) -> Option<Verdict> {
    if limits.payloads.is_empty() {
        return None;
    }
    // A payload namespace is declared by an `xmlns` or `xmlns:p` attribute: reading
    // just those values spares the walk over the children for almost every stanza.
    // The framer notes them as it reads (`Stanza::declared_namespaces`); otherwise
    // one precompiled substring search finds them. A value with a reference is
    // walked for.
    let declared = |value: &[u8]| {
        value.contains(&b'&')
            || limits
                .payloads
                .iter()
                .any(|r| r.namespace.as_bytes() == value)
    };
    let any_declared = match stanza.declared_namespaces() {
        // The framer noted every declaration: a few short comparisons.
        Some(names) => names.iter().copied().any(declared),
        None => xmlns_values(stanza.bytes).any(declared),
    };
    if !any_declared {
        return None;
    }
    for (_, ns) in stanza.payloads() {
        let rule = limits.payloads.iter().find(|r| {
            r.namespace == ns
                && match r.direction {
                    PayloadDirection::Both => true,
                    PayloadDirection::ToServer => direction == Direction::ToServer,
                    PayloadDirection::ToClient => direction == Direction::ToClient,
                }
        });
        if let Some(rule) = rule {
            let condition = match rule.error {
                PayloadError::NotAllowed => "not-allowed",
                PayloadError::PolicyViolation => "policy-violation",
            };
            return Some(Verdict::Bounce(
                LimitKind::Payload,
                StanzaError {
                    error_type: ErrorType::Cancel,
                    condition,
                    app_condition: None,
                    text: Some(format!(
                        "payloads of {} are not allowed here",
                        rule.namespace
                    )),
                },
            ));
        }
    }
    None
}

/// XEP-0205 §2.6: is `to` one more distinct recipient than allowed?
fn distinct_recipient(
    entry: &mut AccountState,
    limit: PerPeriod,
    account: &str,
    to: &str,
    now: Instant,
) -> Result<(), StanzaError> {
    distinct_recipient_in(
        &mut entry.recipients,
        entry.correspondents.as_ref(),
        limit,
        account,
        to,
        now,
    )
}

/// [`distinct_recipient`] over the two tables themselves: `account` is the sender
/// (an account, or a remote sender on a peer stream).
fn distinct_recipient_in(
    recipients_slot: &mut Option<BoundedTable<String, Instant>>,
    correspondents: Option<&BoundedTable<String, Instant>>,
    limit: PerPeriod,
    account: &str,
    to: &str,
    now: Instant,
) -> Result<(), StanzaError> {
    // Copied only when it becomes a new entry.
    let to = crate::stanza::bare_jid_ref(to);
    // The account itself and bare domains (the server, its components) are not
    // recipients a spammer gains anything from.
    if to == account || !to.contains('@') {
        return Ok(());
    }
    let recipients =
        recipients_slot.get_or_insert_with(|| BoundedTable::new("recipients", RECIPIENTS_HARD_CAP));
    recipients.trim_idle(|&t| now.saturating_duration_since(t) >= limit.period);
    if let Some(t) = recipients.get_mut(to.as_ref()) {
        *t = now;
        return Ok(());
    }
    let replied = correspondents
        .and_then(|c| c.peek(to.as_ref()))
        .is_some_and(|&t| now.saturating_duration_since(t) < limit.period);
    if replied {
        return Ok(());
    }
    let recipients =
        recipients_slot.get_or_insert_with(|| BoundedTable::new("recipients", RECIPIENTS_HARD_CAP));
    // Compared with the limit in force now (a reload may change it); the table's
    // own cap only bounds memory.
    if recipients.len() >= (limit.count as usize).min(RECIPIENTS_HARD_CAP) {
        return Err(StanzaError {
            error_type: ErrorType::Wait,
            condition: "unexpected-request",
            app_condition: Some("too-many-stanzas"),
            text: Some(format!(
                "too many distinct recipients: at most {} per {}",
                limit.count,
                humantime::format_duration(limit.period)
            )),
        });
    }
    recipients.entry(to.into_owned(), || now);
    Ok(())
}

fn check_message(
    entry: &mut AccountState,
    limits: &StanzaLimits,
    account: &str,
    stanza: &Stanza<'_>,
    ty: Option<&str>,
    now: Instant,
) -> Verdict {
    let Some(to) = stanza.to() else {
        return Verdict::Pass;
    };
    if ty == Some("groupchat") {
        let room = bare_jid(&to);
        if let Some(joined) = entry.rooms.iter_mut().find(|r| r.jid == room) {
            if let Some(limit) = limits.muc_messages {
                if joined.messages.try_take(&limit.rate(), 1.0, now).is_err() {
                    return Verdict::Bounce(
                        LimitKind::MucMessages,
                        rate_error("groupchat messages", limit),
                    );
                }
            }
            return Verdict::Pass;
        }
        // A groupchat message to a room this account was not seen joining is a
        // message like any other: it counts as a recipient.
    }
    if let Some(limit) = limits.distinct_recipients {
        if let Err(e) = distinct_recipient(entry, limit, account, &to, now) {
            return Verdict::Bounce(LimitKind::DistinctRecipients, e);
        }
    }
    Verdict::Pass
}

fn check_presence(
    entry: &mut AccountState,
    limits: &StanzaLimits,
    account: &str,
    conn_id: u64,
    stanza: &Stanza<'_>,
    ty: Option<&str>,
    now: Instant,
) -> Verdict {
    let Some(to) = stanza.to() else {
        // A broadcast to every subscriber: the session manager amplifies it (§2.9).
        if let Some(limit) = limits.presence_broadcasts {
            if matches!(ty, None | Some("unavailable"))
                && entry
                    .presence_broadcasts
                    .try_take(&limit.rate(), 1.0, now)
                    .is_err()
            {
                // Dropped, not bounced: an error for one's own broadcast helps nobody.
                return Verdict::Drop(LimitKind::PresenceBroadcasts);
            }
        }
        return Verdict::Pass;
    };
    if ty == Some("subscribe") {
        if let Some(limit) = limits.subscription_requests {
            if entry
                .subscriptions
                .try_take(&limit.rate(), 1.0, now)
                .is_err()
            {
                return Verdict::Bounce(
                    LimitKind::SubscriptionRequests,
                    rate_error("subscription requests", limit),
                );
            }
        }
        if let Some(limit) = limits.distinct_recipients {
            if let Err(e) = distinct_recipient(entry, limit, account, &to, now) {
                return Verdict::Bounce(LimitKind::DistinctRecipients, e);
            }
        }
        return Verdict::Pass;
    }
    if matches!(
        ty,
        Some("subscribed" | "unsubscribe" | "unsubscribed" | "probe")
    ) {
        return Verdict::Pass;
    }
    let room = bare_jid(&to);
    let joining = stanza.has_payload(b"x", MUC_NS);
    let known = entry.rooms.iter().position(|r| r.jid == room);
    if ty == Some("unavailable") {
        if let Some(i) = known {
            entry.rooms.swap_remove(i);
        }
        return Verdict::Pass;
    }
    let index = match (known, joining) {
        (Some(i), _) => i,
        (None, true) => {
            let max = limits
                .rooms_joined
                .unwrap_or(ROOMS_HARD_CAP)
                .min(ROOMS_HARD_CAP);
            if entry.rooms.len() >= max as usize {
                return Verdict::Bounce(
                    LimitKind::RoomsJoined,
                    StanzaError {
                        error_type: ErrorType::Cancel,
                        condition: "policy-violation",
                        app_condition: None,
                        text: Some(format!("at most {max} rooms may be joined at once")),
                    },
                );
            }
            entry.rooms.push(JoinedRoom {
                jid: room,
                messages: TokenBucket::new(),
                presences: TokenBucket::new(),
                joined_by: conn_id,
            });
            entry.rooms.len() - 1
        }
        // Directed presence to a contact: not amplified.
        (None, false) => return Verdict::Pass,
    };
    if let Some(limit) = limits.muc_presences {
        if entry.rooms[index]
            .presences
            .try_take(&limit.rate(), 1.0, now)
            .is_err()
        {
            return Verdict::Bounce(
                LimitKind::MucPresences,
                rate_error("presence updates to a room", limit),
            );
        }
    }
    Verdict::Pass
}

/// XEP-0205 §2.4: `cancel` + `<resource-constraint/>` + `<resource-limit-exceeded/>`.
fn resource_limit_error(max: u32) -> StanzaError {
    StanzaError {
        error_type: ErrorType::Cancel,
        condition: "resource-constraint",
        app_condition: Some("resource-limit-exceeded"),
        text: Some(format!(
            "at most {max} resources may be bound to one account"
        )),
    }
}

mod peers;

#[cfg(test)]
mod tests;
