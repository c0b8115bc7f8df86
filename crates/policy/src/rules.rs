//! The operator's policy: rules in chains, evaluated per hook, first decisive match
//! wins.
//!
//! Rules are compiled once at load ([`config`]) into matchers that read only what
//! they need of a stanza, once ([`Facts`]): a policy whose rules never look at a
//! body never unescapes one. Evaluation is sans-IO: it returns a [`Decision`] with
//! the verdict and the side effects (marks, bans, reports, strips, log lines) for
//! the session to apply. A rule, a chain or the whole policy may run in shadow mode:
//! it is evaluated and counted, what it would have done is logged, and the stanza
//! passes as if the rule had not matched.

pub mod conditions;
pub mod config;
pub mod content;
pub mod index;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::errors::{StanzaError, StreamError};
use crate::limits::{PerPeriod, UserClass};
use crate::rate::TokenBucket;
use crate::stanza::Stanza;
use crate::table::BoundedTable;

pub use conditions::{Condition, Facts};

/// Where in a stream's life a chain runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hook {
    /// A connection was accepted (before any byte): address conditions only.
    Connect,
    /// SASL succeeded: mechanism, class, account known.
    Auth,
    /// A resource was bound: the full JID is known.
    Bind,
    /// A stanza from the client towards the server.
    ToServer,
    /// A stanza from the server towards the client.
    ToClient,
}

impl Hook {
    /// Every hook, in declaration order: `Hook::ALL[h as usize] == h`.
    pub const ALL: [Hook; 5] = [
        Hook::Connect,
        Hook::Auth,
        Hook::Bind,
        Hook::ToServer,
        Hook::ToClient,
    ];

    pub fn chain_name(self) -> &'static str {
        match self {
            Hook::Connect => "connect",
            Hook::Auth => "auth",
            Hook::Bind => "bind",
            Hook::ToServer => "to-server",
            Hook::ToClient => "to-client",
        }
    }
}

/// A rule's decisive action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Not decisive: side effects only, evaluation goes on.
    Continue,
    Pass,
    Drop,
    Bounce(StanzaError),
    Close(StreamError),
    Jump(usize),
}

/// Where a mark is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkScope {
    Session,
    Account,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkSpec {
    pub name: String,
    pub scope: MarkScope,
    pub expires: Duration,
}

/// How much of a stanza a log line carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogPayload {
    /// A SHA-256 digest of the stanza: enough to correlate, nothing to read.
    Digest,
    Full,
    None,
}

/// What a rule does besides its action.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effects {
    pub log: Option<LogPayload>,
    pub mark: Option<MarkSpec>,
    pub ban: Option<Duration>,
    pub report: Option<String>,
    /// First-level children to remove: (namespace or `None` for any, local name).
    pub strip: Vec<(Option<String>, String)>,
}

/// The rate key of a rate-limited rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateKey {
    From,
    FromDomain,
    To,
    Address,
    Account,
}

/// A rule that matches only when its key's rate is exceeded (like mod_firewall's
/// LIMIT): the rule's action applies to the excess.
///
/// With shared state on ([`RuleRate::share`]), every event the bucket admits is also
/// counted per key, under the same lock, for the proxy to send to the other
/// instances in a batch ([`RuleRate::take_used`]); what they consumed comes back
/// through [`RuleRate::add_used`]. Nothing here waits for anything.
#[derive(Debug)]
pub struct RuleRate {
    pub key: RateKey,
    pub limit: PerPeriod,
    max_keys: usize,
    shared: AtomicBool,
    /// Shared with the same rule of the policy a reload replaced, when it limits the
    /// same way ([`Policy::carry_over`]).
    table: Arc<Mutex<RateTable>>,
}

#[derive(Debug)]
struct RateTable {
    buckets: BoundedTable<String, TokenBucket>,
    /// Events admitted per key since the last [`RuleRate::take_used`] (shared state).
    used: HashMap<String, u64>,
}

impl RuleRate {
    pub fn new(key: RateKey, limit: PerPeriod, max_keys: usize) -> RuleRate {
        RuleRate {
            key,
            limit,
            max_keys,
            shared: AtomicBool::new(false),
            table: Arc::new(Mutex::new(RateTable {
                buckets: BoundedTable::new("rule-rate", max_keys),
                used: HashMap::new(),
            })),
        }
    }

    /// Whether `other` limits exactly as this one does (key, rate, table size), so
    /// that its buckets mean the same here.
    fn limits_like(&self, other: &RuleRate) -> bool {
        self.key == other.key && self.limit == other.limit && self.max_keys == other.max_keys
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RateTable> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `key` is over the rate now (and counts this event).
    fn exceeded(&self, key: String, now: Instant) -> bool {
        let mut table = self.lock();
        let admitted = table
            .buckets
            .entry_ref(&key, TokenBucket::new)
            .try_take(&self.limit.rate(), 1.0, now)
            .is_ok();
        if admitted && self.shared.load(Ordering::Relaxed) {
            let full = table.used.len() >= self.max_keys;
            match table.used.get_mut(&key) {
                Some(n) => *n += 1,
                None if !full => {
                    table.used.insert(key, 1);
                }
                None => {}
            }
        }
        !admitted
    }

    /// Starts (or stops) counting admitted events for the other instances.
    pub fn share(&self, on: bool) {
        self.shared.store(on, Ordering::Relaxed);
    }

    /// Events admitted per key since the last call.
    pub fn take_used(&self) -> Vec<(String, u64)> {
        std::mem::take(&mut self.lock().used).into_iter().collect()
    }

    /// Counts `n` events another instance admitted for `key` in this bucket: they
    /// take tokens even past empty, so the excess waits for the refill.
    pub fn add_used(&self, key: String, n: u64, now: Instant) {
        let mut table = self.lock();
        table.buckets.entry(key, TokenBucket::new).take_with_debt(
            &self.limit.rate(),
            n as f64,
            now,
        );
    }
}

#[derive(Debug)]
pub struct Rule {
    pub name: String,
    pub conditions: Vec<Condition>,
    /// The rule does not apply when all of these hold (and there is at least one).
    pub unless: Vec<Condition>,
    pub action: Action,
    pub effects: Effects,
    pub shadow: bool,
    pub rate: Option<RuleRate>,
    pub hits: AtomicU64,
    pub shadow_hits: AtomicU64,
    /// How many of the first `conditions` the chain's index enforces exactly: a rule
    /// the index offers as a candidate holds them, so they are not checked again.
    pub indexed: usize,
}

#[derive(Debug)]
pub struct Chain {
    pub name: String,
    pub rules: Vec<Rule>,
    pub shadow: bool,
    /// Which rules could match, by kind and domains; built once the rules are in.
    pub index: Option<index::ChainIndex>,
}

/// A compiled policy.
#[derive(Debug, Default)]
pub struct Policy {
    pub chains: Vec<Chain>,
    /// The chain each hook runs, by [`Hook`] position (`None`: nothing to run).
    hooks: [Option<usize>; 5],
    pub shadow: bool,
    /// Every rule's regular expressions, one set per text field.
    pub regexes: conditions::PolicyRegexes,
    /// The list files the policy was built from: a change to one reloads it.
    pub files: Vec<std::path::PathBuf>,
    /// The `[lists.*]` of the policy, by name (the admin API lists them).
    pub lists: Vec<config::ListInfo>,
}

/// What evaluation needs beyond the stanza.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub ip: IpAddr,
    pub class: UserClass,
    pub mechanism: Option<&'a str>,
    /// The account's bare JID.
    pub account: Option<&'a str>,
    pub marks: &'a Marks,
    /// Whether the other party of a stanza is outside the user's observed roster;
    /// `None` where unknown.
    pub stranger: Option<bool>,
    /// The kind of stream the event happened on.
    pub front: StreamFront,
    /// On server-to-server and component streams: the peer's domain the stanza is
    /// from (inbound) or to (outbound), once authenticated.
    pub peer_domain: Option<&'a str>,
    /// How that domain was authenticated.
    pub peer_auth: Option<PeerAuth>,
}

/// The kind of stream: which listener front the connection came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum StreamFront {
    /// Client to server (RFC 6120, `jabber:client`).
    #[default]
    C2s,
    /// A remote server connecting in (RFC 6120, `jabber:server`).
    S2s,
    /// The protected server's own outgoing server-to-server streams.
    S2sEgress,
    /// An external component (XEP-0114, `jabber:component:accept`).
    Component,
}

impl StreamFront {
    pub fn name(self) -> &'static str {
        match self {
            StreamFront::C2s => "c2s",
            StreamFront::S2s => "s2s",
            StreamFront::S2sEgress => "s2s-egress",
            StreamFront::Component => "component",
        }
    }

    pub fn parse(name: &str) -> Option<StreamFront> {
        [
            StreamFront::C2s,
            StreamFront::S2s,
            StreamFront::S2sEgress,
            StreamFront::Component,
        ]
        .into_iter()
        .find(|f| f.name() == name)
    }
}

/// How the peer of a server-to-server or component stream proved its domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerAuth {
    /// A TLS certificate valid for the domain, checked by xmppwall (RFC 6120 §13.7.2,
    /// RFC 6125).
    Certificate,
    /// Server Dialback (XEP-0220), verified by the server behind xmppwall.
    Dialback,
    /// The XEP-0114 handshake, accepted by the server.
    Handshake,
}

impl PeerAuth {
    pub fn name(self) -> &'static str {
        match self {
            PeerAuth::Certificate => "certificate",
            PeerAuth::Dialback => "dialback",
            PeerAuth::Handshake => "handshake",
        }
    }

    pub fn parse(name: &str) -> Option<PeerAuth> {
        [
            PeerAuth::Certificate,
            PeerAuth::Dialback,
            PeerAuth::Handshake,
        ]
        .into_iter()
        .find(|a| a.name() == name)
    }
}

/// Marks set by rules, with their expiry.
#[derive(Debug, Default, Clone)]
pub struct Marks {
    marks: Vec<(String, Instant)>,
}

impl Marks {
    pub fn set(&mut self, name: &str, until: Instant) {
        match self.marks.iter_mut().find(|(n, _)| n == name) {
            Some(m) => m.1 = m.1.max(until),
            None => self.marks.push((name.to_owned(), until)),
        }
    }

    pub fn has(&self, name: &str, now: Instant) -> bool {
        self.marks
            .iter()
            .any(|(n, until)| n == name && *until > now)
    }

    pub fn is_empty(&self) -> bool {
        self.marks.is_empty()
    }

    /// The names of the marks in force at `now`.
    pub fn in_force(&self, now: Instant) -> impl Iterator<Item = &str> {
        self.marks
            .iter()
            .filter(move |(_, until)| *until > now)
            .map(|(n, _)| n.as_str())
    }

    pub fn merge(&mut self, other: &Marks) {
        for (n, until) in &other.marks {
            self.set(n, *until);
        }
    }
}

/// What the policy decided for one event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    pub action: Option<Action>,
    /// The rule that decided.
    pub rule: Option<String>,
    /// Side effects of every rule that matched, in order.
    pub effects: Vec<(String, Effects)>,
    /// Rules in shadow mode that matched, with what they would have done.
    pub shadowed: Vec<(String, Action)>,
}

impl Decision {
    /// The decisive action, or `Pass`.
    pub fn verdict(&self) -> &Action {
        self.action.as_ref().unwrap_or(&Action::Pass)
    }
}

/// Jumps deeper than this end the evaluation (a loop the loader could not see).
const MAX_JUMP_DEPTH: usize = 16;

impl Policy {
    /// The chain evaluated for `hook`, if the policy has one.
    pub fn has_hook(&self, hook: Hook) -> bool {
        self.hooks[hook as usize].is_some()
    }

    pub fn evaluate(
        &self,
        hook: Hook,
        stanza: Option<&Stanza<'_>>,
        subject: &Subject<'_>,
        now: Instant,
        wall: SystemTime,
    ) -> Decision {
        let mut decision = Decision::default();
        let Some(chain) = self.hooks[hook as usize] else {
            return decision;
        };
        let mut facts = Facts::new(&self.regexes, stanza, subject, now, wall);
        self.run_chain(chain, &mut facts, &mut decision, 0, now);
        decision
    }

    fn run_chain(
        &self,
        chain: usize,
        facts: &mut Facts<'_, '_>,
        decision: &mut Decision,
        depth: usize,
        now: Instant,
    ) -> bool {
        let Some(c) = self.chains.get(chain) else {
            return false;
        };
        let candidates = c.index.as_ref().map(|index| {
            facts.prepare_keys(index.needs_to(), index.needs_from(), index.needs_payloads());
            index.candidates(&facts.keys(index.needs_marks()))
        });
        let (mut indexed, mut all);
        let order: &mut dyn Iterator<Item = usize> = match &candidates {
            Some(set) => {
                indexed = set.iter();
                &mut indexed
            }
            None => {
                all = 0..c.rules.len();
                &mut all
            }
        };
        for i in order {
            let rule = &c.rules[i];
            let skip = if candidates.is_some() {
                rule.indexed
            } else {
                0
            };
            if !rule.matches(facts, now, skip) {
                continue;
            }
            let shadow = self.shadow || c.shadow || rule.shadow;
            if shadow {
                rule.shadow_hits.fetch_add(1, Ordering::Relaxed);
                decision
                    .shadowed
                    .push((rule.name.clone(), rule.action.clone()));
                continue;
            }
            rule.hits.fetch_add(1, Ordering::Relaxed);
            if rule.effects != Effects::default() {
                decision
                    .effects
                    .push((rule.name.clone(), rule.effects.clone()));
            }
            match &rule.action {
                Action::Continue => {}
                Action::Jump(target) => {
                    if depth < MAX_JUMP_DEPTH
                        && self.run_chain(*target, facts, decision, depth + 1, now)
                    {
                        return true;
                    }
                }
                decisive => {
                    decision.action = Some(decisive.clone());
                    decision.rule = Some(rule.name.clone());
                    return true;
                }
            }
        }
        false
    }

    /// Every rate-limited rule as `chain/rule` (its name among instances sharing
    /// state) with its rate.
    pub fn rule_rates(&self) -> impl Iterator<Item = (String, &RuleRate)> {
        self.chains.iter().flat_map(|c| {
            c.rules.iter().filter_map(move |r| {
                r.rate
                    .as_ref()
                    .map(|rate| (format!("{}/{}", c.name, r.name), rate))
            })
        })
    }

    /// Takes over from `old`, the policy a reload replaces, what each rule that is
    /// still here (same chain, same name) has counted: its hits, and, when it limits
    /// exactly as before, its rate buckets, which both policies then share while
    /// connections still hold the old one. A reload must not hand every sender a
    /// fresh allowance, nor restart the hit counters.
    pub fn carry_over(&mut self, old: &Policy) {
        for chain in &mut self.chains {
            let Some(old_chain) = old.chains.iter().find(|c| c.name == chain.name) else {
                continue;
            };
            for rule in &mut chain.rules {
                let Some(old_rule) = old_chain.rules.iter().find(|r| r.name == rule.name) else {
                    continue;
                };
                rule.hits
                    .store(old_rule.hits.load(Ordering::Relaxed), Ordering::Relaxed);
                rule.shadow_hits.store(
                    old_rule.shadow_hits.load(Ordering::Relaxed),
                    Ordering::Relaxed,
                );
                if let (Some(rate), Some(old_rate)) = (rule.rate.as_mut(), old_rule.rate.as_ref()) {
                    if rate.limits_like(old_rate) {
                        rate.table = old_rate.table.clone();
                    }
                }
            }
        }
    }

    /// Every rule's (chain, name, hits, shadow hits), for metrics.
    pub fn rule_hits(&self) -> Vec<(&str, &str, u64, u64)> {
        self.chains
            .iter()
            .flat_map(|c| {
                c.rules.iter().map(move |r| {
                    (
                        c.name.as_str(),
                        r.name.as_str(),
                        r.hits.load(Ordering::Relaxed),
                        r.shadow_hits.load(Ordering::Relaxed),
                    )
                })
            })
            .collect()
    }
}

impl Rule {
    /// Whether the rule applies, its first `skip` conditions taken as holding.
    fn matches(&self, facts: &mut Facts<'_, '_>, now: Instant, skip: usize) -> bool {
        if !self.conditions[skip..].iter().all(|c| c.holds(facts)) {
            return false;
        }
        if !self.unless.is_empty() && self.unless.iter().all(|c| c.holds(facts)) {
            return false;
        }
        match &self.rate {
            None => true,
            Some(rate) => match facts.rate_key(rate.key) {
                Some(key) => rate.exceeded(key, now),
                None => false,
            },
        }
    }
}

/// A stanza without the first-level children `strip` names (namespace or any,
/// local name), or `None` when it has none of them.
pub fn strip_children(stanza: &[u8], strip: &[(Option<String>, String)]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(stanza.len());
    let mut copied = 0;
    for child in xmppwall_xml::view::children(stanza) {
        let ns = child
            .start
            .attribute(b"xmlns")
            .unwrap_or(std::borrow::Cow::Borrowed("jabber:client"));
        let hit = strip.iter().any(|(want_ns, local)| {
            child.start.local_name() == local.as_bytes()
                && want_ns.as_deref().is_none_or(|w| w == ns)
        });
        if hit {
            out.extend_from_slice(&stanza[copied..child.range.start]);
            copied = child.range.end;
        }
    }
    if copied == 0 {
        return None;
    }
    out.extend_from_slice(&stanza[copied..]);
    Some(out)
}

/// A short SHA-256 digest of a stanza for logs: correlates without revealing.
pub fn digest(bytes: &[u8]) -> String {
    use sha2::{Digest as _, Sha256};
    let d = Sha256::digest(bytes);
    d.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

/// Shared, reloadable handle to a compiled policy.
pub type SharedPolicy = Arc<Policy>;

#[cfg(test)]
mod tests;
