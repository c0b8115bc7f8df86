//! Anti-spam measures that need no rule writing: in-band registration (XEP-0077),
//! the user directory (XEP-0055), incoming subscription requests per remote domain
//! (RFC 6121 §3.1), messages and subscription requests from strangers, and
//! federation allow and deny lists.
//!
//! The model ([`AntispamConfig`]) and the checks that need state shared by every
//! connection ([`AntispamState`], kept in the limiter's state so a reload keeps the
//! counters). What depends on one stream (the user's observed contacts) is decided
//! by the session with [`StrangersConfig`]. Sans-IO: every call takes `now`.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use regex::RegexSet;
use rustc_hash::FxHashSet;

use crate::address::{AddressKey, CidrList};
use crate::errors::{ErrorType, StanzaError};
use crate::limits::{PerPeriod, UserClass};
use crate::rate::TokenBucket;
use crate::reports::{ReportRecord, ReportSink, SpamReport};
use crate::reputation::Standing;
use crate::table::BoundedTable;

pub const REGISTER_NS: &str = "jabber:iq:register";
pub const SEARCH_NS: &str = "jabber:iq:search";
const DATA_FORMS_NS: &str = "jabber:x:data";

/// Every anti-spam measure as configured. The default changes nothing.
#[derive(Debug, Clone, Default)]
pub struct AntispamConfig {
    /// The hosted domains (`domains` in the configuration): they and their
    /// subdomains are local; everything else is remote.
    pub local_domains: Vec<String>,
    pub registration: RegistrationConfig,
    pub directory: DirectoryConfig,
    pub subscriptions: SubscriptionsConfig,
    pub strangers: Option<StrangersConfig>,
    pub federation: Option<FederationConfig>,
    /// Scores per JID and domain and what they do; `None`: reports are still
    /// recorded, nobody is scored.
    pub reputation: Option<crate::reputation::ReputationConfig>,
}

/// XEP-0077 account creation on a stream before authentication.
#[derive(Debug, Clone)]
pub struct RegistrationConfig {
    /// `false`: every registration request is refused and the stream feature hidden.
    pub enabled: bool,
    /// Where registration is allowed from; empty: anywhere.
    pub allow_from: CidrList,
    /// Accounts created per client address (ejabberd's `registration_timeout`).
    pub per_address: Option<PerPeriod>,
    /// Accounts created per address prefix (Prosody's mod_register_limits counts
    /// per address; a /24 or /48 catches a botnet's neighbours too).
    pub per_prefix: Option<PerPeriod>,
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    /// Usernames refused outright, lowercased.
    pub reserved: std::collections::HashSet<String>,
    /// Usernames matching any of these are refused.
    pub username_patterns: Option<RegexSet>,
    /// Addresses tracked at most, per table.
    pub max_tracked: usize,
}

impl Default for RegistrationConfig {
    fn default() -> Self {
        RegistrationConfig {
            enabled: true,
            allow_from: CidrList::default(),
            per_address: None,
            per_prefix: None,
            ipv4_prefix: 24,
            ipv6_prefix: 48,
            reserved: Default::default(),
            username_patterns: None,
            max_tracked: 100_000,
        }
    }
}

impl RegistrationConfig {
    /// Role names of RFC 2142 and the names operators reserve for their own use:
    /// refused by default once `[registration]` is configured.
    pub const DEFAULT_RESERVED: &'static [&'static str] = &[
        "abuse",
        "admin",
        "administrator",
        "hostmaster",
        "info",
        "noc",
        "postmaster",
        "root",
        "security",
        "support",
        "webmaster",
        "xmpp",
    ];

    /// Compiles the username patterns (regular expressions, matched against the
    /// lowercased name).
    pub fn set_username_patterns(&mut self, patterns: &[String]) -> Result<(), String> {
        if patterns.is_empty() {
            self.username_patterns = None;
            return Ok(());
        }
        let set = regex::RegexSetBuilder::new(patterns)
            .size_limit(10 << 20)
            .build()
            .map_err(|e| format!("invalid regular expression: {e}"))?;
        self.username_patterns = Some(set);
        Ok(())
    }
}

/// XEP-0055 searches, by user class.
#[derive(Debug, Clone)]
pub struct DirectoryConfig {
    /// The classes that may search; the others are refused.
    pub allow: Vec<UserClass>,
}

impl Default for DirectoryConfig {
    fn default() -> Self {
        DirectoryConfig {
            allow: vec![
                UserClass::Anonymous,
                UserClass::Registered,
                UserClass::Trusted,
            ],
        }
    }
}

/// Subscription requests arriving for local users (mod_pres_counter's other half).
#[derive(Debug, Clone)]
pub struct SubscriptionsConfig {
    /// Incoming requests per remote domain; the excess is dropped.
    pub incoming_per_domain: Option<PerPeriod>,
    /// Remote domains tracked at most.
    pub max_tracked_domains: usize,
}

impl Default for SubscriptionsConfig {
    fn default() -> Self {
        SubscriptionsConfig {
            incoming_per_domain: None,
            max_tracked_domains: 10_000,
        }
    }
}

/// What happens to a stranger's stanza.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrangerAction {
    Pass,
    Drop,
    /// The sender gets an error in the user's name (messages: `cancel` +
    /// `<service-unavailable/>`, as XEP-0191 §3.3.3 answers a blocked sender;
    /// subscription requests: declined with `unsubscribed`, RFC 6121 §3.2).
    Bounce,
    /// Delivered without body, subject and XHTML-IM: the user sees that someone
    /// wrote, not what.
    StripBody,
}

/// Which senders count as strangers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrangerScope {
    /// Only senders from remote domains (federated spam).
    Remote,
    /// Local senders too (public servers with open registration).
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StrangersConfig {
    pub messages: StrangerAction,
    pub subscriptions: StrangerAction,
    pub senders: StrangerScope,
}

/// Federation allow or deny list (ejabberd's `s2s_access` whitelist and blacklist).
#[derive(Debug, Clone)]
pub struct FederationConfig {
    /// `true`: only listed domains (whitelist); `false`: all but listed (blacklist).
    pub allow_mode: bool,
    pub domains: DomainPatterns,
    /// Real-time block lists whose domains are denied too (deny mode only).
    pub deny_lists: Vec<std::sync::Arc<crate::blocklist::BlockList>>,
}

/// Exact domains and `*.domain` wildcards (subdomains only).
#[derive(Debug, Clone, Default)]
pub struct DomainPatterns {
    exact: FxHashSet<String>,
    suffixes: Vec<String>,
}

impl DomainPatterns {
    pub fn new<'a>(patterns: impl IntoIterator<Item = &'a str>) -> DomainPatterns {
        let mut d = DomainPatterns::default();
        for p in patterns {
            let p = p.trim().trim_end_matches('.').to_ascii_lowercase();
            match p.strip_prefix("*.") {
                Some(suffix) => d.suffixes.push(format!(".{suffix}")),
                None => {
                    d.exact.insert(p);
                }
            }
        }
        d
    }

    pub fn matches(&self, domain: &str) -> bool {
        let domain = domain.trim_end_matches('.');
        if domain.bytes().any(|b| b.is_ascii_uppercase()) {
            return self.matches(&domain.to_ascii_lowercase());
        }
        self.exact.contains(domain) || self.suffixes.iter().any(|s| domain.ends_with(s.as_str()))
    }
}

impl FederationConfig {
    /// Whether traffic with `domain` (a remote domain) is allowed.
    pub fn allows(&self, domain: &str) -> bool {
        let listed = self.domains.matches(domain);
        if self.allow_mode {
            listed
        } else {
            !listed && !self.deny_lists.iter().any(|l| l.contains_domain(domain))
        }
    }
}

impl AntispamConfig {
    /// Whether `domain` is one of the hosted domains or below one, or the domain of
    /// `account` (the stream's own) or below it.
    pub fn is_local(&self, domain: &str, account: Option<&str>) -> bool {
        let under = |base: &str| {
            domain.eq_ignore_ascii_case(base)
                || (domain.len() > base.len()
                    && domain.as_bytes()[domain.len() - base.len() - 1] == b'.'
                    && domain[domain.len() - base.len()..].eq_ignore_ascii_case(base))
        };
        if let Some(own) = account.map(crate::stanza::domain_of) {
            if under(own) {
                return true;
            }
        }
        self.local_domains.iter().any(|d| under(d))
    }

    /// Federation: the error for a stanza to a remote domain the lists exclude.
    pub fn federation_refuses(&self, domain: &str, account: Option<&str>) -> bool {
        match &self.federation {
            Some(f) => !self.is_local(domain, account) && !f.allows(domain),
            None => false,
        }
    }

    /// Whether registration may be offered to `ip` at all (the stream feature).
    pub fn registration_open(&self, ip: IpAddr) -> bool {
        let r = &self.registration;
        r.enabled && (r.allow_from.is_empty() || r.allow_from.contains(ip.to_canonical()))
    }

    /// XEP-0055: may this class search the user directory?
    pub fn directory_allows(&self, class: UserClass) -> bool {
        self.directory.allow.contains(&class)
    }
}

/// `cancel` + `<not-allowed/>`: what a refused directory search gets.
pub fn directory_error() -> StanzaError {
    StanzaError {
        error_type: ErrorType::Cancel,
        condition: "not-allowed",
        app_condition: None,
        text: Some("searching the user directory is not allowed".into()),
    }
}

/// `cancel` + `<policy-violation/>` (RFC 6120 §8.3.3.12: a local service policy):
/// what a stanza to a domain outside the federation lists gets.
pub fn federation_error(domain: &str) -> StanzaError {
    StanzaError {
        error_type: ErrorType::Cancel,
        condition: "policy-violation",
        app_condition: None,
        text: Some(format!(
            "this server does not exchange messages with {domain}"
        )),
    }
}

/// What a registration request is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrationRequest {
    /// `get`: the client asks for the form (XEP-0077 §3.1, first step).
    Form,
    /// `set` with a username: account creation.
    Create { username: Option<String> },
    /// `set` with `<remove/>` (§3.2) or anything else: passed to the server.
    Other,
}

impl RegistrationRequest {
    /// Reads an `<iq>` carrying a `jabber:iq:register` query.
    pub fn read(iq: &[u8]) -> RegistrationRequest {
        let Some(tag) = xmppwall_xml::view::StartTag::parse(iq) else {
            return RegistrationRequest::Other;
        };
        let ty = tag.attribute(b"type");
        let Some(query) = xmppwall_xml::view::children(iq).find(|c| {
            c.start.local_name() == b"query"
                && c.start.attribute(b"xmlns").as_deref() == Some(REGISTER_NS)
        }) else {
            return RegistrationRequest::Other;
        };
        match ty.as_deref() {
            Some("get") => RegistrationRequest::Form,
            Some("set") => {
                let query = &iq[query.range];
                let mut username = None;
                for child in xmppwall_xml::view::children(query) {
                    match child.start.local_name() {
                        b"remove" => return RegistrationRequest::Other,
                        b"username" => {
                            username = Some(xmppwall_xml::view::text(&query[child.range]));
                        }
                        // XEP-0077 §4: the same fields in a data form.
                        b"x" if child.start.attribute(b"xmlns").as_deref()
                            == Some(DATA_FORMS_NS) =>
                        {
                            let form = &query[child.range];
                            for field in xmppwall_xml::view::children(form) {
                                if field.start.local_name() == b"field"
                                    && field.start.attribute(b"var").as_deref() == Some("username")
                                {
                                    let field = &form[field.range];
                                    username = xmppwall_xml::view::children(field)
                                        .find(|v| v.start.local_name() == b"value")
                                        .map(|v| xmppwall_xml::view::text(&field[v.range]));
                                }
                            }
                        }
                        _ => {}
                    }
                }
                RegistrationRequest::Create {
                    username: username.map(|u| u.trim().to_owned()),
                }
            }
            _ => RegistrationRequest::Other,
        }
    }
}

/// Counters shared by every connection; kept across reloads.
#[derive(Debug)]
pub struct AntispamState {
    registrations: Mutex<BoundedTable<AddressKey, TokenBucket>>,
    registration_prefixes: Mutex<BoundedTable<AddressKey, TokenBucket>>,
    incoming_subscriptions: Mutex<BoundedTable<String, DomainCounter>>,
    pub reputation: crate::reputation::ReputationState,
    /// Where spam reports go: memory unless the proxy plugs in a durable sink.
    reports: Mutex<std::sync::Arc<dyn ReportSink>>,
    /// The in-memory reports (also kept when a durable sink is plugged in).
    pub memory_reports: std::sync::Arc<crate::reports::MemoryReports>,
}

#[derive(Debug, Default)]
struct DomainCounter {
    bucket: TokenBucket,
    /// Requests dropped for this domain so far.
    excess: u64,
}

/// What an incoming subscription request's count decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionCount {
    Pass,
    /// Over the limit; the domain's excess so far.
    Excess(u64),
}

impl Default for AntispamState {
    fn default() -> Self {
        AntispamState::new(100_000, 10_000)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl AntispamState {
    pub fn new(max_addresses: usize, max_domains: usize) -> AntispamState {
        let memory = std::sync::Arc::new(crate::reports::MemoryReports::default());
        AntispamState {
            registrations: Mutex::new(BoundedTable::new("registrations", max_addresses)),
            registration_prefixes: Mutex::new(BoundedTable::new(
                "registration-prefixes",
                max_addresses,
            )),
            incoming_subscriptions: Mutex::new(BoundedTable::new(
                "incoming-subscriptions",
                max_domains,
            )),
            reputation: crate::reputation::ReputationState::new(max_addresses),
            reports: Mutex::new(memory.clone()),
            memory_reports: memory,
        }
    }

    /// Sends reports to `sink` (besides memory) from now on.
    pub fn set_report_sink(&self, sink: std::sync::Arc<dyn ReportSink>) {
        *lock(&self.reports) = sink;
    }

    fn record(&self, report: ReportRecord) {
        let sink = lock(&self.reports).clone();
        if !std::sync::Arc::ptr_eq(
            &(sink.clone() as std::sync::Arc<dyn ReportSink>),
            &(self.memory_reports.clone() as std::sync::Arc<dyn ReportSink>),
        ) {
            self.memory_reports.report(report.clone());
        }
        sink.report(report);
    }

    /// XEP-0377 reports inside a XEP-0191 block command `reporter` sent: recorded,
    /// and each offender's reputation raised once per reporter. Returns them.
    pub fn user_reports(
        &self,
        config: &AntispamConfig,
        reporter: &str,
        iq: &[u8],
        now: Instant,
        wall: std::time::SystemTime,
    ) -> Vec<SpamReport> {
        let reports = SpamReport::read_block(iq);
        for r in &reports {
            self.record(ReportRecord {
                at: wall,
                reporter: reporter.to_owned(),
                offender: r.offender.clone(),
                reason: r.reason.clone(),
                stanza_ids: r.stanza_ids.clone(),
                text: r.text.clone(),
            });
            if let Some(rep) = &config.reputation {
                self.reputation.reported(rep, reporter, &r.offender, now);
            }
        }
        reports
    }

    /// A rule with a `report` effect matched a stanza of `offender`.
    pub fn rule_report(
        &self,
        config: &AntispamConfig,
        rule: &str,
        reason: &str,
        offender: &str,
        now: Instant,
        wall: std::time::SystemTime,
    ) {
        self.record(ReportRecord {
            at: wall,
            reporter: format!("rule:{rule}"),
            offender: crate::stanza::bare_jid(offender),
            reason: reason.to_owned(),
            stanza_ids: Vec::new(),
            text: None,
        });
        if let Some(rep) = &config.reputation {
            self.reputation.add(rep, offender, rep.rule_weight, now);
        }
    }

    /// A limit refused something `who` (a bare JID or a domain) sent.
    pub fn limit_hit(&self, config: &AntispamConfig, who: &str, now: Instant) {
        if let Some(rep) = &config.reputation {
            self.reputation.add(rep, who, rep.limit_weight, now);
        }
    }

    /// Where `jid` stands (always good without `[reputation]`).
    pub fn standing(&self, config: &AntispamConfig, jid: &str, now: Instant) -> Standing {
        match &config.reputation {
            Some(rep) => self.reputation.standing(rep, jid, now),
            None => Standing::Good,
        }
    }

    /// XEP-0077 §3.1: may this request pass to the server? Rates are only looked at
    /// here; an account is counted when the server confirms it
    /// ([`Self::registration_succeeded`]), so a taken username costs nothing.
    pub fn check_registration(
        &self,
        config: &AntispamConfig,
        ip: IpAddr,
        request: &RegistrationRequest,
        now: Instant,
    ) -> Result<(), StanzaError> {
        let r = &config.registration;
        let ip = ip.to_canonical();
        if !r.enabled {
            return Err(not_allowed(
                "in-band registration is disabled on this server",
            ));
        }
        if !r.allow_from.is_empty() && !r.allow_from.contains(ip) {
            return Err(not_allowed(
                "in-band registration is not allowed from this address",
            ));
        }
        let RegistrationRequest::Create { username } = request else {
            return Ok(());
        };
        let probe = |table: &Mutex<BoundedTable<AddressKey, TokenBucket>>,
                     key: AddressKey,
                     limit: PerPeriod| {
            let t = lock(table);
            let mut bucket = t.peek(&key).copied().unwrap_or_default();
            bucket.try_take(&limit.rate(), 1.0, now).is_ok()
        };
        if let Some(limit) = r.per_address {
            if !probe(&self.registrations, AddressKey::new(ip, 32, 128), limit) {
                return Err(registration_rate_error("this address", limit));
            }
        }
        if let Some(limit) = r.per_prefix {
            let key = AddressKey::new(ip, r.ipv4_prefix, r.ipv6_prefix);
            if !probe(&self.registration_prefixes, key, limit) {
                return Err(registration_rate_error("this network", limit));
            }
        }
        if let Some(name) = username {
            let lower = name.to_lowercase();
            let refused = r.reserved.contains(&lower)
                || r.username_patterns
                    .as_ref()
                    .is_some_and(|p| p.is_match(&lower));
            if refused {
                // RFC 6120 §8.3.3.11: the request does not meet the server's criteria.
                return Err(StanzaError {
                    error_type: ErrorType::Modify,
                    condition: "not-acceptable",
                    app_condition: None,
                    text: Some(format!(
                        "the username {name:?} is not available; choose another"
                    )),
                });
            }
        }
        Ok(())
    }

    /// The server created an account for a client at `ip`: it counts now.
    pub fn registration_succeeded(&self, config: &AntispamConfig, ip: IpAddr, now: Instant) {
        let r = &config.registration;
        let ip = ip.to_canonical();
        if let Some(limit) = r.per_address {
            let mut t = lock(&self.registrations);
            t.trim_idle(|b| b.is_full(now));
            let _ = t
                .entry(AddressKey::new(ip, 32, 128), TokenBucket::new)
                .try_take(&limit.rate(), 1.0, now);
        }
        if let Some(limit) = r.per_prefix {
            let mut t = lock(&self.registration_prefixes);
            t.trim_idle(|b| b.is_full(now));
            let _ = t
                .entry(
                    AddressKey::new(ip, r.ipv4_prefix, r.ipv6_prefix),
                    TokenBucket::new,
                )
                .try_take(&limit.rate(), 1.0, now);
        }
    }

    /// Counts a subscription request from the remote `domain`.
    pub fn incoming_subscription(
        &self,
        config: &AntispamConfig,
        domain: &str,
        now: Instant,
    ) -> SubscriptionCount {
        let Some(limit) = config.subscriptions.incoming_per_domain else {
            return SubscriptionCount::Pass;
        };
        let mut t = lock(&self.incoming_subscriptions);
        let entry = t.entry(domain.to_ascii_lowercase(), DomainCounter::default);
        if entry.bucket.try_take(&limit.rate(), 1.0, now).is_ok() {
            SubscriptionCount::Pass
        } else {
            entry.excess += 1;
            SubscriptionCount::Excess(entry.excess)
        }
    }
}

fn not_allowed(text: &str) -> StanzaError {
    StanzaError {
        error_type: ErrorType::Cancel,
        condition: "not-allowed",
        app_condition: None,
        text: Some(text.into()),
    }
}

fn registration_rate_error(from: &str, limit: PerPeriod) -> StanzaError {
    StanzaError {
        error_type: ErrorType::Wait,
        condition: "policy-violation",
        app_condition: None,
        text: Some(format!(
            "too many accounts created from {from}: at most {} per {}; try again later",
            limit.count,
            humantime::format_duration(limit.period)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn create(user: &str) -> RegistrationRequest {
        RegistrationRequest::Create {
            username: Some(user.into()),
        }
    }

    #[test]
    fn registration_requests_are_read_plain_and_as_data_forms() {
        let plain = b"<iq type='set' id='r1'><query xmlns='jabber:iq:register'><username>Bill</username><password>x</password></query></iq>";
        assert_eq!(RegistrationRequest::read(plain), create("Bill"));
        let form = b"<iq type='set' id='r2'><query xmlns='jabber:iq:register'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>jabber:iq:register</value></field><field var='username'><value>bot1</value></field></x></query></iq>";
        assert_eq!(RegistrationRequest::read(form), create("bot1"));
        let get = b"<iq type='get' id='r3'><query xmlns='jabber:iq:register'/></iq>";
        assert_eq!(RegistrationRequest::read(get), RegistrationRequest::Form);
        let remove =
            b"<iq type='set' id='r4'><query xmlns='jabber:iq:register'><remove/></query></iq>";
        assert_eq!(
            RegistrationRequest::read(remove),
            RegistrationRequest::Other
        );
    }

    #[test]
    fn registrations_count_on_success_per_address_and_prefix() {
        let mut config = AntispamConfig::default();
        config.registration.per_address = Some(PerPeriod::new(1, Duration::from_secs(600)));
        config.registration.per_prefix = Some(PerPeriod::new(2, Duration::from_secs(3600)));
        let state = AntispamState::default();
        let now = Instant::now();
        let a = ip("192.0.2.1");
        // Refused names and failed attempts cost nothing.
        assert!(state
            .check_registration(&config, a, &create("x"), now)
            .is_ok());
        assert!(state
            .check_registration(&config, a, &create("x"), now)
            .is_ok());
        state.registration_succeeded(&config, a, now);
        let e = state
            .check_registration(&config, a, &create("y"), now)
            .unwrap_err();
        assert_eq!(
            (e.error_type, e.condition),
            (ErrorType::Wait, "policy-violation")
        );
        // The form may still be fetched.
        assert!(state
            .check_registration(&config, a, &RegistrationRequest::Form, now)
            .is_ok());
        let b = ip("192.0.2.2");
        assert!(state
            .check_registration(&config, b, &create("y"), now)
            .is_ok());
        state.registration_succeeded(&config, b, now);
        let c = ip("192.0.2.3");
        let e = state
            .check_registration(&config, c, &create("z"), now)
            .unwrap_err();
        assert!(e.text.unwrap().contains("this network"));
        assert!(state
            .check_registration(&config, ip("198.51.100.1"), &create("z"), now)
            .is_ok());
        // Ten minutes later the address may create one more (its network's limit
        // aside, which allows no more for an hour).
        config.registration.per_prefix = None;
        assert!(state
            .check_registration(&config, a, &create("w"), now)
            .is_err());
        let later = now + Duration::from_secs(601);
        assert!(state
            .check_registration(&config, a, &create("w"), later)
            .is_ok());
    }

    #[test]
    fn registration_off_or_from_elsewhere_is_not_allowed_and_reserved_names_not_acceptable() {
        let mut config = AntispamConfig::default();
        config.registration.allow_from =
            CidrList::new([CidrList::parse_entry("10.0.0.0/8").unwrap()]);
        config.registration.reserved.insert("admin".into());
        config.registration.username_patterns = Some(RegexSet::new(["^[0-9]+$"]).unwrap());
        let state = AntispamState::default();
        let now = Instant::now();
        let e = state
            .check_registration(&config, ip("192.0.2.1"), &RegistrationRequest::Form, now)
            .unwrap_err();
        assert_eq!(
            (e.error_type, e.condition),
            (ErrorType::Cancel, "not-allowed")
        );
        assert!(!config.registration_open(ip("192.0.2.1")));
        assert!(config.registration_open(ip("10.1.2.3")));
        let e = state
            .check_registration(&config, ip("10.1.2.3"), &create("Admin"), now)
            .unwrap_err();
        assert_eq!(
            (e.error_type, e.condition),
            (ErrorType::Modify, "not-acceptable")
        );
        assert!(state
            .check_registration(&config, ip("10.1.2.3"), &create("12345"), now)
            .is_err());
        assert!(state
            .check_registration(&config, ip("10.1.2.3"), &create("alice"), now)
            .is_ok());
        config.registration.enabled = false;
        let e = state
            .check_registration(&config, ip("10.1.2.3"), &create("alice"), now)
            .unwrap_err();
        assert!(e.text.unwrap().contains("disabled"));
    }

    #[test]
    fn federation_lists_match_exact_domains_and_wildcards_and_spare_local_ones() {
        let mut config = AntispamConfig {
            local_domains: vec!["example.org".into()],
            ..AntispamConfig::default()
        };
        config.federation = Some(FederationConfig {
            allow_mode: false,
            domains: DomainPatterns::new(["spam.example", "*.bad.example"]),
            deny_lists: Vec::new(),
        });
        assert!(config.federation_refuses("spam.example", None));
        assert!(!config.federation_refuses("sub.spam.example", None));
        assert!(config.federation_refuses("x.bad.example", None));
        assert!(!config.federation_refuses("bad.example", None));
        assert!(!config.federation_refuses("good.example", None));
        config.federation = Some(FederationConfig {
            allow_mode: true,
            domains: DomainPatterns::new(["partner.example"]),
            deny_lists: Vec::new(),
        });
        assert!(!config.federation_refuses("partner.example", None));
        assert!(config.federation_refuses("other.example", None));
        assert!(!config.federation_refuses("conference.example.org", None));
        assert!(!config.federation_refuses("own.test", Some("u@own.test")));
    }

    #[test]
    fn incoming_subscriptions_are_counted_per_domain() {
        let mut config = AntispamConfig::default();
        config.subscriptions.incoming_per_domain = Some(PerPeriod::new(2, Duration::from_secs(60)));
        let state = AntispamState::default();
        let now = Instant::now();
        assert_eq!(
            state.incoming_subscription(&config, "a.example", now),
            SubscriptionCount::Pass
        );
        assert_eq!(
            state.incoming_subscription(&config, "a.example", now),
            SubscriptionCount::Pass
        );
        assert_eq!(
            state.incoming_subscription(&config, "A.example", now),
            SubscriptionCount::Excess(1)
        );
        assert_eq!(
            state.incoming_subscription(&config, "b.example", now),
            SubscriptionCount::Pass
        );
    }
}
