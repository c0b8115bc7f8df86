//! Bans an operator sets (through the admin API): address prefixes, accounts and
//! domains, each with an optional expiry.
//!
//! Owns the ban list and its checks. The automatic per-address bans of the limits
//! (authentication failures, a rule's `ban`) live in [`crate::limiter`]; this list is
//! the operator's. What the peer receives for each kind of ban:
//!
//! | ban | checked | what the peer gets |
//! |---|---|---|
//! | address or prefix | at the gate, before the stream | stream header, `<policy-violation/>` stream error (RFC 6120 §4.9.3.18) saying until when, stream end |
//! | account (bare JID) | at SASL success, and at resource binding for mechanisms that name no user | the `<success/>` is replaced by a SASL `<failure/>` with `<account-disabled/>` (RFC 6120 §6.5.1); the bind result by an iq error `cancel` + `<not-allowed/>` (RFC 6120 §7.6.2.2); then `<policy-violation/>` and the stream ends |
//! | domain | every stanza to (client → server) or from (server → client) that domain | to it: stanza error `cancel` + `<policy-violation/>` (RFC 6120 §8.3.3.12), never in answer to an error; from it: dropped |
//!
//! It must not do I/O. Checks on the per-stanza path cost one atomic load while the
//! kind of ban they look for is empty.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::SystemTime;

use ipnet::IpNet;

use crate::errors::{ErrorType, StanzaError, StreamCondition, StreamError};

/// The most bans of all kinds together; adding one more is refused.
pub const MAX_BANS: usize = 100_000;

/// What a ban applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BanTarget {
    /// An address (a /32 or /128) or a prefix.
    Address(IpNet),
    /// A bare JID (`user@domain`), lower-cased.
    Account(String),
    /// A domain, lower-cased.
    Domain(String),
}

impl BanTarget {
    /// `address`, `account` or `domain`.
    pub fn kind(&self) -> &'static str {
        match self {
            BanTarget::Address(_) => "address",
            BanTarget::Account(_) => "account",
            BanTarget::Domain(_) => "domain",
        }
    }

    /// Reads an address (`192.0.2.7`), a prefix (`2001:db8::/48`), a JID
    /// (`user@example.org`, a resource is cut) or a domain (`spam.example`), as the
    /// operator wrote it for `kind` (`address`, `account`, `domain`).
    pub fn parse(kind: &str, value: &str) -> Result<BanTarget, String> {
        let value = value.trim();
        match kind {
            "address" | "ip" | "prefix" => {
                if let Ok(ip) = value.parse::<IpAddr>() {
                    return Ok(BanTarget::Address(IpNet::from(ip.to_canonical())));
                }
                value
                    .parse::<IpNet>()
                    .map(|n| BanTarget::Address(n.trunc()))
                    .map_err(|_| {
                        format!(
                            "{value:?} is not an address or prefix (e.g. 192.0.2.7, 2001:db8::/48)"
                        )
                    })
            }
            "account" | "jid" => {
                let bare = crate::stanza::bare_jid(value).to_ascii_lowercase();
                match bare.split_once('@') {
                    Some((node, domain)) if !node.is_empty() && valid_domain(domain) => {
                        Ok(BanTarget::Account(bare))
                    }
                    _ => Err(format!("{value:?} is not a JID (user@domain)")),
                }
            }
            "domain" => {
                let domain = value.to_ascii_lowercase();
                if valid_domain(&domain) {
                    Ok(BanTarget::Domain(domain))
                } else {
                    Err(format!("{value:?} is not a domain name"))
                }
            }
            other => Err(format!(
                "unknown ban kind {other:?}; use address, account or domain"
            )),
        }
    }

    /// The target as the operator writes it.
    pub fn value(&self) -> String {
        match self {
            BanTarget::Address(net) if net.prefix_len() == net.max_prefix_len() => {
                net.addr().to_string()
            }
            BanTarget::Address(net) => net.to_string(),
            BanTarget::Account(s) | BanTarget::Domain(s) => s.clone(),
        }
    }
}

fn valid_domain(d: &str) -> bool {
    !d.is_empty() && d.len() <= 1023 && !d.contains(['@', '/', ' ', '<', '>', '\'', '"', '&'])
}

/// One ban.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    pub target: BanTarget,
    /// `None`: until lifted.
    pub until: Option<SystemTime>,
    pub reason: Option<String>,
    pub created: SystemTime,
}

impl Ban {
    fn active(&self, now: SystemTime) -> bool {
        self.until.is_none_or(|t| t > now)
    }
}

#[derive(Debug, Default)]
struct BanSet {
    addresses: Vec<Ban>,
    accounts: HashMap<String, Ban>,
    domains: HashMap<String, Ban>,
}

impl BanSet {
    fn len(&self) -> usize {
        self.addresses.len() + self.accounts.len() + self.domains.len()
    }

    fn purge(&mut self, now: SystemTime) {
        self.addresses.retain(|b| b.active(now));
        self.accounts.retain(|_, b| b.active(now));
        self.domains.retain(|_, b| b.active(now));
    }
}

/// The operator's ban list, shared by every connection.
#[derive(Debug, Default)]
pub struct Bans {
    set: RwLock<BanSet>,
    any_address: AtomicBool,
    any_account: AtomicBool,
    any_domain: AtomicBool,
    /// Bans added, by kind (address, account, domain), for metrics.
    added: [AtomicU64; 3],
    /// Connections, logins and stanzas refused by a ban, by kind.
    enforced: [AtomicU64; 3],
}

fn kind_index(kind: &str) -> usize {
    match kind {
        "address" => 0,
        "account" => 1,
        _ => 2,
    }
}

/// The kinds of ban, in the order of [`Bans::added`] and [`Bans::enforced`].
pub const BAN_KINDS: [&str; 3] = ["address", "account", "domain"];

impl Bans {
    fn read(&self) -> RwLockReadGuard<'_, BanSet> {
        self.set.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, BanSet> {
        self.set.write().unwrap_or_else(|p| p.into_inner())
    }

    fn refresh_flags(&self, set: &BanSet) {
        self.any_address
            .store(!set.addresses.is_empty(), Ordering::Relaxed);
        self.any_account
            .store(!set.accounts.is_empty(), Ordering::Relaxed);
        self.any_domain
            .store(!set.domains.is_empty(), Ordering::Relaxed);
    }

    /// Adds (or replaces) a ban. Refused when [`MAX_BANS`] are in force.
    pub fn add(&self, ban: Ban) -> Result<(), String> {
        let mut set = self.write();
        set.purge(SystemTime::now());
        let replaces = match &ban.target {
            BanTarget::Address(_) => set.addresses.iter().any(|b| b.target == ban.target),
            BanTarget::Account(a) => set.accounts.contains_key(a),
            BanTarget::Domain(d) => set.domains.contains_key(d),
        };
        if !replaces && set.len() >= MAX_BANS {
            return Err(format!(
                "the ban list is full ({MAX_BANS} bans); lift or let expire some first"
            ));
        }
        self.added[kind_index(ban.target.kind())].fetch_add(1, Ordering::Relaxed);
        match ban.target.clone() {
            BanTarget::Address(_) => {
                set.addresses.retain(|b| b.target != ban.target);
                set.addresses.push(ban);
            }
            BanTarget::Account(a) => {
                set.accounts.insert(a, ban);
            }
            BanTarget::Domain(d) => {
                set.domains.insert(d, ban);
            }
        }
        self.refresh_flags(&set);
        Ok(())
    }

    /// Lifts a ban; `false` if there was none.
    pub fn remove(&self, target: &BanTarget) -> bool {
        let mut set = self.write();
        let removed = match target {
            BanTarget::Address(_) => {
                let before = set.addresses.len();
                set.addresses.retain(|b| &b.target != target);
                before != set.addresses.len()
            }
            BanTarget::Account(a) => set.accounts.remove(a).is_some(),
            BanTarget::Domain(d) => set.domains.remove(d).is_some(),
        };
        self.refresh_flags(&set);
        removed
    }

    /// Every ban in force, addresses first.
    pub fn list(&self) -> Vec<Ban> {
        let now = SystemTime::now();
        let set = self.read();
        let mut out: Vec<Ban> = set
            .addresses
            .iter()
            .filter(|b| b.active(now))
            .cloned()
            .collect();
        let mut named: Vec<Ban> = set
            .accounts
            .values()
            .chain(set.domains.values())
            .filter(|b| b.active(now))
            .cloned()
            .collect();
        named.sort_by(|a, b| {
            (a.target.kind(), a.target.value()).cmp(&(b.target.kind(), b.target.value()))
        });
        out.extend(named);
        out
    }

    /// The ban on this address, if one is in force (the longest when several
    /// prefixes hold it).
    pub fn address(&self, ip: IpAddr) -> Option<Ban> {
        if !self.any_address.load(Ordering::Relaxed) {
            return None;
        }
        let ip = ip.to_canonical();
        let now = SystemTime::now();
        let set = self.read();
        let found = set
            .addresses
            .iter()
            .filter(|b| matches!(&b.target, BanTarget::Address(net) if net.contains(&ip)))
            .filter(|b| b.active(now))
            .max_by_key(|b| b.until.map_or((1, SystemTime::UNIX_EPOCH), |t| (0, t)))
            .cloned();
        if found.is_some() {
            self.enforced[0].fetch_add(1, Ordering::Relaxed);
        }
        found
    }

    /// The ban on this account (a bare or full JID), if one is in force.
    pub fn account(&self, jid: &str) -> Option<Ban> {
        if !self.any_account.load(Ordering::Relaxed) {
            return None;
        }
        let bare = crate::stanza::bare_jid(jid).to_ascii_lowercase();
        let found = self
            .read()
            .accounts
            .get(&bare)
            .filter(|b| b.active(SystemTime::now()))
            .cloned();
        if found.is_some() {
            self.enforced[1].fetch_add(1, Ordering::Relaxed);
        }
        found
    }

    /// Whether any domain is banned (one atomic load: callers skip parsing
    /// addresses when not).
    pub fn has_domains(&self) -> bool {
        self.any_domain.load(Ordering::Relaxed)
    }

    /// The ban on the domain of this JID, if one is in force.
    pub fn domain_of(&self, jid: &str) -> Option<Ban> {
        if !self.has_domains() {
            return None;
        }
        let domain = jid_domain(jid).to_ascii_lowercase();
        let found = self
            .read()
            .domains
            .get(&domain)
            .filter(|b| b.active(SystemTime::now()))
            .cloned();
        if found.is_some() {
            self.enforced[2].fetch_add(1, Ordering::Relaxed);
        }
        found
    }

    /// Bans added so far, by kind ([`BAN_KINDS`]).
    pub fn added(&self) -> [u64; 3] {
        std::array::from_fn(|i| self.added[i].load(Ordering::Relaxed))
    }

    /// Refusals because of a ban so far, by kind ([`BAN_KINDS`]).
    pub fn enforced(&self) -> [u64; 3] {
        std::array::from_fn(|i| self.enforced[i].load(Ordering::Relaxed))
    }

    /// Bans in force, by kind ([`BAN_KINDS`]).
    pub fn sizes(&self) -> [usize; 3] {
        let set = self.read();
        [set.addresses.len(), set.accounts.len(), set.domains.len()]
    }
}

/// The domain part of a JID (RFC 7622 §3.2).
pub fn jid_domain(jid: &str) -> &str {
    let without_resource = jid.split('/').next().unwrap_or(jid);
    match without_resource.rsplit_once('@') {
        Some((_, domain)) => domain,
        None => without_resource,
    }
}

fn until_text(until: Option<SystemTime>) -> String {
    match until {
        Some(t) => format!("until {}", crate::clock::rfc3339(t)),
        None => "until further notice".into(),
    }
}

/// The `<policy-violation/>` (RFC 6120 §4.9.3.18) that ends a banned address's stream.
pub fn address_banned_error(ban: &Ban) -> StreamError {
    StreamError::new(StreamCondition::PolicyViolation)
        .with_text(format!("this address is banned {}", until_text(ban.until)))
}

/// The `<policy-violation/>` that ends a banned account's stream.
pub fn account_banned_error(ban: &Ban) -> StreamError {
    StreamError::new(StreamCondition::PolicyViolation)
        .with_text(format!("this account is banned {}", until_text(ban.until)))
}

/// The SASL `<failure/>` that replaces a banned account's `<success/>`:
/// `<account-disabled/>`, RFC 6120 §6.5.1 ("temporarily disabled"). `ns` is the
/// namespace of the success it replaces (SASL, or SASL2 of XEP-0388 whose failure
/// carries the RFC 6120 condition in the SASL namespace).
pub fn account_disabled_failure(ban: &Ban, ns: &str) -> Vec<u8> {
    const SASL_NS: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
    let text = xmppwall_xml::view::escape_text(&format!(
        "this account is banned {}",
        until_text(ban.until)
    ))
    .into_owned();
    if ns == SASL_NS {
        format!("<failure xmlns='{SASL_NS}'><account-disabled/><text xml:lang='en'>{text}</text></failure>")
    } else {
        format!("<failure xmlns='{ns}'><account-disabled xmlns='{SASL_NS}'/><text>{text}</text></failure>")
    }
    .into_bytes()
}

/// The stanza error for a stanza to a banned domain: `cancel` + `<policy-violation/>`
/// (RFC 6120 §8.3.3.12; `cancel` because retrying cannot help, §8.3.2).
pub fn domain_banned_error(ban: &Ban) -> StanzaError {
    StanzaError {
        error_type: ErrorType::Cancel,
        condition: "policy-violation",
        app_condition: None,
        text: Some(format!(
            "the domain {} is banned {}",
            ban.target.value(),
            until_text(ban.until)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ban(kind: &str, value: &str, until: Option<SystemTime>) -> Ban {
        Ban {
            target: BanTarget::parse(kind, value).expect("valid target"),
            until,
            reason: None,
            created: SystemTime::now(),
        }
    }

    #[test]
    fn prefix_ban_holds_addresses_inside_it_only() {
        let bans = Bans::default();
        assert!(bans.address("192.0.2.7".parse().unwrap()).is_none());
        bans.add(ban("address", "192.0.2.0/24", None)).unwrap();
        assert!(bans.address("192.0.2.7".parse().unwrap()).is_some());
        assert!(bans.address("::ffff:192.0.2.8".parse().unwrap()).is_some());
        assert!(bans.address("192.0.3.7".parse().unwrap()).is_none());
        assert!(bans.remove(&BanTarget::parse("prefix", "192.0.2.0/24").unwrap()));
        assert!(bans.address("192.0.2.7".parse().unwrap()).is_none());
    }

    #[test]
    fn expired_bans_hold_nothing_and_are_not_listed() {
        let bans = Bans::default();
        let past = SystemTime::now() - std::time::Duration::from_secs(1);
        bans.add(ban("account", "Eve@Example.org/phone", Some(past)))
            .unwrap();
        assert!(bans.account("eve@example.org").is_none());
        assert!(bans.list().is_empty());
        let future = SystemTime::now() + std::time::Duration::from_secs(60);
        bans.add(ban("account", "eve@example.org", Some(future)))
            .unwrap();
        assert!(bans.account("EVE@example.org/laptop").is_some());
        assert_eq!(bans.list().len(), 1);
    }

    #[test]
    fn domain_ban_matches_the_domain_part_only() {
        let bans = Bans::default();
        bans.add(ban("domain", "spam.example", None)).unwrap();
        assert!(bans.domain_of("bot@spam.example/x").is_some());
        assert!(bans.domain_of("spam.example").is_some());
        assert!(bans.domain_of("user@example.org").is_none());
        assert!(bans.domain_of("spam.example@example.org").is_none());
    }

    #[test]
    fn bad_targets_are_refused_with_a_reason() {
        let reason = |kind: &str, value: &str| BanTarget::parse(kind, value).unwrap_err();
        assert!(reason("address", "300.1.1.1").contains("is not an address or prefix"));
        assert!(reason("account", "example.org").contains("is not a JID (user@domain)"));
        assert!(reason("domain", "a b").contains("is not a domain name"));
        assert!(reason("user", "x").contains("use address, account or domain"));
    }
}
