//! Rule conditions and the facts they are checked against.
//!
//! [`Facts`] reads a stanza lazily and caches what it read: the type and addresses
//! on first use, the body and subject text (unescaped) only if a content condition
//! asks, each at most once per evaluation, however many rules look.

use rustc_hash::FxHashSet;
use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use sha2::{Digest, Sha256};
use xmppwall_xml::view;

use super::content::{self, Keywords, Patterns};
use super::{PeerAuth, RateKey, StreamFront, Subject};
use crate::address::CidrList;
use crate::blocklist::BlockList;
use crate::limits::UserClass;
use crate::stanza::{bare_jid, domain_of, Kind, Payload, Stanza};

/// A set of JIDs, given in the clear or as hex SHA-256 digests of the bare JID
/// (the form real-time block lists publish).
#[derive(Debug, Clone, Default)]
pub struct JidSet {
    pub plain: FxHashSet<String>,
    pub hashed: FxHashSet<[u8; 32]>,
}

impl JidSet {
    pub fn contains(&self, jid: &str) -> bool {
        self.contains_bare(&bare_jid(jid))
    }

    /// For a bare JID already lowercased.
    fn contains_bare(&self, bare: &str) -> bool {
        if self.plain.contains(bare) {
            return true;
        }
        !self.hashed.is_empty()
            && self
                .hashed
                .contains(&<[u8; 32]>::from(Sha256::digest(bare.as_bytes())))
    }
}

/// Domains, each matching itself and its subdomains.
///
/// A handful of domains are compared directly (no hashing: most rules name one or
/// two); larger lists use a hash set with a fast non-cryptographic hasher, one
/// lookup per label of the host.
#[derive(Debug, Clone)]
pub enum DomainSet {
    Few(Vec<String>),
    Many(FxHashSet<String>),
}

impl Default for DomainSet {
    fn default() -> Self {
        DomainSet::Few(Vec::new())
    }
}

/// Lists up to this size are scanned rather than hashed.
const FEW_DOMAINS: usize = 8;

impl DomainSet {
    pub fn new(domains: impl IntoIterator<Item = String>) -> DomainSet {
        let mut all: Vec<String> = domains
            .into_iter()
            .map(|d| {
                d.trim()
                    .trim_start_matches("*.")
                    .trim_end_matches('.')
                    .to_ascii_lowercase()
            })
            .filter(|d| !d.is_empty())
            .collect();
        all.sort();
        all.dedup();
        if all.len() <= FEW_DOMAINS {
            DomainSet::Few(all)
        } else {
            DomainSet::Many(all.into_iter().collect())
        }
    }

    /// Whether `host` or one of its parent domains is in the set.
    pub fn contains(&self, host: &str) -> bool {
        if host.bytes().any(|b| b.is_ascii_uppercase()) {
            return self.contains(&host.to_ascii_lowercase());
        }
        let host = host.trim_end_matches('.');
        match self {
            DomainSet::Few(domains) => domains.iter().any(|d| {
                host.len() >= d.len()
                    && host.ends_with(d.as_str())
                    && (host.len() == d.len() || host.as_bytes()[host.len() - d.len() - 1] == b'.')
            }),
            DomainSet::Many(domains) => {
                let mut rest = host;
                loop {
                    if domains.contains(rest) {
                        return true;
                    }
                    match rest.split_once('.') {
                        Some((_, parent)) => rest = parent,
                        None => return false,
                    }
                }
            }
        }
    }

    /// Every domain in the set.
    pub fn iter(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        match self {
            DomainSet::Few(d) => Box::new(d.iter().map(String::as_str)),
            DomainSet::Many(d) => Box::new(d.iter().map(String::as_str)),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            DomainSet::Few(d) => d.len(),
            DomainSet::Many(d) => d.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A JID glob: `*` any run, `?` one character; compared on the bare JID unless the
/// pattern has a resource.
#[derive(Debug, Clone)]
pub struct JidGlob {
    pattern: String,
    full: bool,
    /// `*@domain` with a literal domain, the common case: compared, not globbed.
    any_at: Option<String>,
}

impl JidGlob {
    pub fn new(pattern: &str) -> JidGlob {
        let pattern = pattern.to_ascii_lowercase();
        let any_at = pattern
            .strip_prefix("*@")
            .filter(|d| !d.is_empty() && !d.contains(['*', '?', '/', '@']))
            .map(str::to_owned);
        JidGlob {
            full: pattern.contains('/'),
            pattern,
            any_at,
        }
    }

    /// The domain of a `*@domain` pattern.
    pub fn any_at_domain(&self) -> Option<&str> {
        self.any_at.as_deref()
    }

    pub fn matches(&self, jid: &str) -> bool {
        self.matches_address(&Address::lowercased(Cow::Borrowed(jid)))
    }

    /// Against an address already read (lowercased) by [`Facts`].
    fn matches_address(&self, a: &Address<'_>) -> bool {
        if let Some(domain) = &self.any_at {
            // A node is there (the bare JID has an '@') and the domain is exactly this.
            return a.domain_start > 0 && a.domain() == domain;
        }
        let subject = if self.full { &a.full } else { a.bare() };
        glob(self.pattern.as_bytes(), subject.as_bytes())
    }
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Days and a time-of-day window in a time zone.
#[derive(Debug, Clone)]
pub struct TimeWindow {
    /// Bit `n` set: weekday `n` (Monday = 0) is in.
    pub days: u8,
    /// Minutes after midnight; `from > to` spans midnight.
    pub from: u16,
    pub to: u16,
    pub zone: jiff::tz::TimeZone,
}

impl TimeWindow {
    pub fn contains(&self, wall: SystemTime) -> bool {
        let Ok(ts) = jiff::Timestamp::try_from(wall) else {
            return false;
        };
        let zoned = ts.to_zoned(self.zone.clone());
        let day = zoned.weekday().to_monday_zero_offset() as u8;
        let minute = zoned.hour() as u16 * 60 + zoned.minute() as u16;
        let in_time = if self.from <= self.to {
            minute >= self.from && minute < self.to
        } else {
            minute >= self.from || minute < self.to
        };
        // A window spanning midnight belongs to the day it started.
        let day = if self.from > self.to && minute < self.to {
            (day + 6) % 7
        } else {
            day
        };
        in_time && self.days & (1 << day) != 0
    }
}

/// Which text of a message content conditions read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextField {
    Body,
    Subject,
    /// Body and subject.
    Any,
}

/// One compiled condition.
#[derive(Debug, Clone)]
pub enum Condition {
    /// Bit 0 message, 1 presence, 2 iq.
    Kind(u8),
    /// Stanza types; `"normal"` matches a message without type, `"available"` a
    /// presence without type.
    Type(Vec<String>),
    From(Vec<JidGlob>),
    To(Vec<JidGlob>),
    FromJids(Arc<JidSet>),
    ToJids(Arc<JidSet>),
    FromDomain(Arc<DomainSet>),
    ToDomain(Arc<DomainSet>),
    /// A dynamic block list (RTBL): the bare JID, its domain or a parent is listed.
    FromList(Arc<BlockList>),
    ToList(Arc<BlockList>),
    /// A dynamic block list: the domain or a parent is listed.
    FromDomainList(Arc<BlockList>),
    ToDomainList(Arc<BlockList>),
    /// First-level children by (namespace or any, local name).
    Has(Vec<(Option<String>, String)>),
    /// First-level payload namespaces.
    Payload(Vec<String>),
    /// A namespace declared anywhere in the stanza (e.g. a Jingle file-transfer
    /// description inside `<jingle/>`): each as `xmlns='…'` and `xmlns="…"`.
    Declares(Vec<(Vec<u8>, Vec<u8>)>),
    Keywords(Arc<Keywords>, TextField),
    /// Patterns `range` of the policy's [`PolicyRegexes`] set for `field`: every
    /// rule's patterns are matched in one pass over each text.
    Regex(std::ops::Range<usize>, TextField),
    /// A URL to one of these domains.
    UrlDomain(Arc<DomainSet>),
    /// At least this many URLs.
    UrlCount(u32),
    /// Any of the detectors finds something: payment card numbers, IBANs.
    DataLeak {
        card: bool,
        iban: bool,
    },
    Address(Arc<CidrList>),
    Mechanism(Vec<String>),
    Class(Vec<UserClass>),
    Stranger(bool),
    Time(Arc<TimeWindow>),
    Mark(String),
    Front(Vec<StreamFront>),
    PeerDomain(Arc<DomainSet>),
    PeerAuth(Vec<PeerAuth>),
}

/// A JID as conditions compare it: lowercased once, the bare part and the domain
/// found once.
#[derive(Debug, Clone)]
pub struct Address<'a> {
    full: Cow<'a, str>,
    bare_len: usize,
    domain_start: usize,
}

impl<'a> Address<'a> {
    /// ASCII-lowercases `jid`, copying it only when it has an upper-case letter.
    ///
    /// JIDs are short: plain loops find the first `/` (where the resource starts) and
    /// the last `@` before it (where the domain starts), cheaper than library searches
    /// that must first be set up.
    fn lowercased(jid: Cow<'a, str>) -> Address<'a> {
        let bytes = jid.as_bytes();
        let bare_len = bytes.iter().position(|&b| b == b'/').unwrap_or(bytes.len());
        let domain_start = bytes[..bare_len]
            .iter()
            .rposition(|&b| b == b'@')
            .map_or(0, |i| i + 1);
        // Without a branch per byte, so that the compiler checks many at a time.
        let upper = bytes
            .iter()
            .fold(false, |upper, b| upper | b.is_ascii_uppercase());
        let full = if upper {
            Cow::Owned(jid.to_ascii_lowercase())
        } else {
            jid
        };
        Address {
            full,
            bare_len,
            domain_start,
        }
    }

    fn bare(&self) -> &str {
        &self.full[..self.bare_len]
    }

    fn domain(&self) -> &str {
        &self.full[self.domain_start..self.bare_len]
    }
}

/// Every rule's regular expressions, one set per text field, matched at most once per
/// stanza (XEP-agnostic: linear time in the text, whatever the number of patterns).
#[derive(Debug, Default)]
pub struct PolicyRegexes {
    /// Indexed by [`TextField::index`].
    pub sets: [Option<Patterns>; 3],
}

impl TextField {
    pub fn index(self) -> usize {
        match self {
            TextField::Body => 0,
            TextField::Subject => 1,
            TextField::Any => 2,
        }
    }
}

/// What conditions are checked against, read lazily and at most once.
pub struct Facts<'s, 'a> {
    regexes: &'s PolicyRegexes,
    /// Which patterns of each field's set matched (indices), once asked.
    regex_matches: [Option<Vec<usize>>; 3],
    stanza: Option<&'s Stanza<'a>>,
    subject: &'s Subject<'s>,
    now: Instant,
    wall: SystemTime,
    from: Option<Option<Address<'s>>>,
    to: Option<Option<Address<'s>>>,
    /// First-level children, read in one pass over the stanza.
    payloads: Option<Vec<Payload<'a>>>,
    body: Option<Option<Cow<'a, str>>>,
    subject_text: Option<Option<Cow<'a, str>>>,
    stanza_type: Option<Option<Cow<'a, str>>>,
    hosts: Option<Vec<String>>,
}

impl<'s, 'a> Facts<'s, 'a> {
    pub fn new(
        regexes: &'s PolicyRegexes,
        stanza: Option<&'s Stanza<'a>>,
        subject: &'s Subject<'s>,
        now: Instant,
        wall: SystemTime,
    ) -> Self {
        Facts {
            regexes,
            regex_matches: [None, None, None],
            stanza,
            subject,
            now,
            wall,
            from: None,
            to: None,
            payloads: None,
            body: None,
            subject_text: None,
            stanza_type: None,
            hosts: None,
        }
    }

    /// The text of the first child named `local` (entities resolved; borrowed from
    /// the stanza when it has none).
    fn child_text(&mut self, local: &[u8]) -> Option<Cow<'a, str>> {
        let stanza = self.stanza?;
        let bytes: &'a [u8] = stanza.bytes;
        let child = self.payloads().iter().find(|c| c.local == local)?;
        Some(view::text_from(&bytes[child.range.clone()], child.content))
    }

    fn body(&mut self) -> Option<&str> {
        if self.body.is_none() {
            self.body = Some(self.child_text(b"body"));
        }
        self.body.as_ref().and_then(|b| b.as_deref())
    }

    fn subject_text(&mut self) -> Option<&str> {
        if self.subject_text.is_none() {
            self.subject_text = Some(self.child_text(b"subject"));
        }
        self.subject_text.as_ref().and_then(|b| b.as_deref())
    }

    /// The texts `field` names, read once and then borrowed.
    fn texts(&mut self, field: TextField) -> [Option<&str>; 2] {
        if field != TextField::Subject {
            self.body();
        }
        if field != TextField::Body {
            self.subject_text();
        }
        let body = self.body.as_ref().and_then(|b| b.as_deref());
        let subject = self.subject_text.as_ref().and_then(|b| b.as_deref());
        match field {
            TextField::Body => [body, None],
            TextField::Subject => [subject, None],
            TextField::Any => [body, subject],
        }
    }

    fn any_text(&mut self, field: TextField, mut test: impl FnMut(&str) -> bool) -> bool {
        match field {
            TextField::Body => self.body().is_some_and(test),
            TextField::Subject => self.subject_text().is_some_and(test),
            TextField::Any => {
                let body = self.body().is_some_and(&mut test);
                body || self.subject_text().is_some_and(test)
            }
        }
    }

    fn url_hosts(&mut self) -> &[String] {
        if self.hosts.is_none() {
            let mut hosts = Vec::new();
            for text in self.texts(TextField::Any).into_iter().flatten() {
                hosts.extend(content::url_hosts(text));
            }
            if let Some(stanza) = self.stanza {
                // XEP-0066 out-of-band data: <x xmlns='jabber:x:oob'><url>…</url></x>
                for c in self.payloads() {
                    if c.local == b"x" && c.ns == "jabber:x:oob" {
                        let x = &stanza.bytes[c.range.clone()];
                        for u in view::children(x).filter(|u| u.start.local_name() == b"url") {
                            hosts.extend(content::url_hosts(&view::text(&x[u.range])));
                        }
                    }
                }
            }
            self.hosts = Some(hosts);
        }
        self.hosts.as_deref().unwrap_or(&[])
    }

    /// Whether any pattern in `range` of `field`'s set matches the text.
    #[inline(never)]
    fn regex_matched(&mut self, field: TextField, range: &std::ops::Range<usize>) -> bool {
        let i = field.index();
        if self.regex_matches[i].is_none() {
            let Some(set) = &self.regexes.sets[i] else {
                return false;
            };
            let mut matched: Vec<usize> = Vec::new();
            for text in self.texts(field).into_iter().flatten() {
                // Most texts match nothing: the yes/no search stops early and needs
                // no overlapping scan, so ask which patterns only when some did.
                if set.is_match(text) {
                    matched.extend(set.matches(text));
                }
            }
            self.regex_matches[i] = Some(matched);
        }
        self.regex_matches[i]
            .as_ref()
            .is_some_and(|m| m.iter().any(|p| range.contains(p)))
    }

    /// Reads what the rule index asks of the stanza (recipient and sender domains,
    /// first-level children), so that [`Facts::keys`] can lend it out.
    pub fn prepare_keys(&mut self, to: bool, from: bool, payloads: bool) {
        if to {
            self.to();
        }
        if from {
            self.from();
        }
        if payloads {
            self.payloads();
        }
    }

    /// The index keys read by [`Facts::prepare_keys`] (`None`/empty where not read).
    pub fn keys(&self, marks: bool) -> super::index::Keys<'_> {
        fn address<'x>(a: &'x Option<Option<Address<'_>>>) -> Option<&'x str> {
            a.as_ref().and_then(Option::as_ref).map(Address::domain)
        }
        super::index::Keys {
            kind: self.kind_index(),
            to_domain: address(&self.to),
            from_domain: address(&self.from),
            payloads: self.payloads.as_deref().unwrap_or(&[]),
            marks: marks.then_some((self.subject.marks, self.now)),
            ip: self.subject.ip,
        }
    }

    /// The stanza kind for the rule index: 0 message, 1 presence, 2 iq, 3 none.
    pub fn kind_index(&self) -> usize {
        match self.stanza.map(|s| s.kind) {
            Some(Kind::Message) => 0,
            Some(Kind::Presence) => 1,
            Some(Kind::Iq) => 2,
            None => 3,
        }
    }

    /// The recipient's domain, lowercased (as `to_domain` conditions see it).
    pub fn to_domain(&mut self) -> Option<&str> {
        self.to().map(|a| a.domain())
    }

    /// The sender's domain, lowercased (as `from_domain` conditions see it).
    pub fn from_domain(&mut self) -> Option<&str> {
        self.from().map(|a| a.domain())
    }

    /// The key a rate-limited rule counts under.
    pub fn rate_key(&self, key: RateKey) -> Option<String> {
        match key {
            RateKey::From => self
                .stanza
                .and_then(|s| s.from())
                .map(|f| bare_jid(&f))
                .or_else(|| self.subject.account.map(str::to_owned)),
            RateKey::FromDomain => self
                .stanza
                .and_then(|s| s.from())
                .map(|f| domain_of(&f).to_ascii_lowercase())
                .or_else(|| self.subject.account.map(|a| domain_of(a).to_owned())),
            RateKey::To => self.stanza.and_then(|s| s.to()).map(|t| bare_jid(&t)),
            RateKey::Address => Some(self.subject.ip.to_string()),
            RateKey::Account => self.subject.account.map(str::to_owned),
        }
    }

    /// The sender: the stanza's `from`, or (client to server) the account.
    fn from(&mut self) -> Option<&Address<'s>> {
        if self.from.is_none() {
            let jid: Option<Cow<'s, str>> = self
                .stanza
                .and_then(|s| s.from())
                .or_else(|| self.subject.account.map(Cow::Borrowed));
            self.from = Some(jid.map(Address::lowercased));
        }
        self.from.as_ref().and_then(Option::as_ref)
    }

    fn to(&mut self) -> Option<&Address<'s>> {
        if self.to.is_none() {
            let jid: Option<Cow<'s, str>> = self.stanza.and_then(|s| s.to());
            self.to = Some(jid.map(Address::lowercased));
        }
        self.to.as_ref().and_then(Option::as_ref)
    }

    fn payloads(&mut self) -> &[Payload<'a>] {
        if self.payloads.is_none() {
            self.payloads = Some(
                self.stanza
                    .map(|s| s.children().collect())
                    .unwrap_or_default(),
            );
        }
        self.payloads.as_deref().unwrap_or(&[])
    }

    /// The stanza's `type`, read once.
    fn stanza_type(&mut self) -> Option<&str> {
        if self.stanza_type.is_none() {
            self.stanza_type = Some(self.stanza.and_then(Stanza::stanza_type));
        }
        self.stanza_type.as_ref().and_then(|t| t.as_deref())
    }
}

impl Condition {
    /// A rough cost of checking: rules check their cheapest conditions first, so a
    /// rule that cannot match is usually left after an integer comparison.
    pub fn cost(&self) -> u8 {
        match self {
            Condition::Kind(_)
            | Condition::Class(_)
            | Condition::Stranger(_)
            | Condition::Mechanism(_)
            | Condition::Front(_)
            | Condition::PeerAuth(_) => 0,
            Condition::Type(_) | Condition::Address(_) | Condition::Mark(_) => 1,
            Condition::From(_)
            | Condition::To(_)
            | Condition::FromJids(_)
            | Condition::ToJids(_)
            | Condition::FromDomain(_)
            | Condition::ToDomain(_)
            | Condition::PeerDomain(_) => 2,
            Condition::FromList(_)
            | Condition::ToList(_)
            | Condition::FromDomainList(_)
            | Condition::ToDomainList(_) => 3,
            Condition::Has(_) | Condition::Payload(_) => 3,
            Condition::Declares(_) | Condition::Time(_) => 4,
            Condition::UrlCount(_) | Condition::UrlDomain(_) => 5,
            Condition::Keywords(..) | Condition::DataLeak { .. } => 6,
            Condition::Regex(..) => 7,
        }
    }

    /// Whether the condition holds for the facts.
    ///
    /// A regular expression condition whose field was matched already (one set for
    /// every rule, so each rule after the first only looks up its patterns) is
    /// answered here; the others in [`Condition::holds_other`], kept out of line so
    /// that this stays small.
    #[inline]
    pub fn holds(&self, f: &mut Facts<'_, '_>) -> bool {
        match self {
            Condition::Regex(range, field) => match &f.regex_matches[field.index()] {
                Some(matched) => matched.iter().any(|p| range.contains(p)),
                None => f.regex_matched(*field, range),
            },
            other => other.holds_other(f),
        }
    }

    #[inline(never)]
    fn holds_other(&self, f: &mut Facts<'_, '_>) -> bool {
        match self {
            Condition::Kind(mask) => f.stanza.is_some_and(|s| {
                let bit = match s.kind {
                    Kind::Message => 1,
                    Kind::Presence => 2,
                    Kind::Iq => 4,
                };
                mask & bit != 0
            }),
            Condition::Type(types) => f.stanza.is_some_and(|s| {
                let default = match s.kind {
                    Kind::Message => "normal",
                    Kind::Presence => "available",
                    Kind::Iq => "",
                };
                let ty = f.stanza_type().unwrap_or(default);
                types.iter().any(|t| t == ty)
            }),
            Condition::From(globs) => f
                .from()
                .is_some_and(|a| globs.iter().any(|g| g.matches_address(a))),
            Condition::To(globs) => f
                .to()
                .is_some_and(|a| globs.iter().any(|g| g.matches_address(a))),
            Condition::FromJids(set) => f.from().is_some_and(|a| set.contains_bare(a.bare())),
            Condition::ToJids(set) => f.to().is_some_and(|a| set.contains_bare(a.bare())),
            Condition::FromDomain(set) => f.from().is_some_and(|a| set.contains(a.domain())),
            Condition::ToDomain(set) => f.to().is_some_and(|a| set.contains(a.domain())),
            Condition::FromList(list) => f.from().is_some_and(|a| list.contains_jid(a.bare())),
            Condition::ToList(list) => f.to().is_some_and(|a| list.contains_jid(a.bare())),
            Condition::FromDomainList(list) => {
                f.from().is_some_and(|a| list.contains_domain(a.domain()))
            }
            Condition::ToDomainList(list) => {
                f.to().is_some_and(|a| list.contains_domain(a.domain()))
            }
            Condition::Has(children) => {
                f.stanza.is_some() && {
                    let payloads = f.payloads();
                    children.iter().all(|(ns, local)| {
                        payloads.iter().any(|p| {
                            p.local == local.as_bytes() && ns.as_deref().is_none_or(|ns| ns == p.ns)
                        })
                    })
                }
            }
            Condition::Payload(namespaces) => f
                .payloads()
                .iter()
                .any(|p| namespaces.iter().any(|ns| *ns == p.ns)),
            Condition::Declares(needles) => f.stanza.is_some_and(|s| {
                needles.iter().any(|(single, double)| {
                    memchr::memmem::find(s.bytes, single).is_some()
                        || memchr::memmem::find(s.bytes, double).is_some()
                })
            }),
            Condition::Keywords(k, field) => f.any_text(*field, |t| k.find_in(t)),
            Condition::Regex(range, field) => f.regex_matched(*field, range),
            Condition::UrlDomain(domains) => f.url_hosts().iter().any(|h| domains.contains(h)),
            Condition::UrlCount(n) => f.url_hosts().len() >= *n as usize,
            Condition::DataLeak { card, iban } => f.any_text(TextField::Any, |t| {
                (*card && content::has_card_number(t)) || (*iban && content::has_iban(t))
            }),
            Condition::Address(list) => list.contains(f.subject.ip),
            Condition::Mechanism(names) => f
                .subject
                .mechanism
                .is_some_and(|m| names.iter().any(|n| n.eq_ignore_ascii_case(m))),
            Condition::Class(classes) => classes.contains(&f.subject.class),
            Condition::Stranger(want) => f.subject.stranger == Some(*want),
            Condition::Time(window) => window.contains(f.wall),
            Condition::Mark(name) => f.subject.marks.has(name, f.now),
            Condition::Front(fronts) => fronts.contains(&f.subject.front),
            Condition::PeerDomain(set) => f.subject.peer_domain.is_some_and(|d| set.contains(d)),
            Condition::PeerAuth(ways) => f.subject.peer_auth.is_some_and(|a| ways.contains(&a)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_bare_jids_unless_a_resource_is_given() {
        assert!(JidGlob::new("*@spam.example").matches("Bot1@spam.example/x"));
        assert!(!JidGlob::new("*@spam.example").matches("bot@notspam.example"));
        assert!(JidGlob::new("bot?@example.org").matches("bot7@example.org"));
        assert!(JidGlob::new("*/evil*").matches("a@b/evil-client"));
        assert!(!JidGlob::new("*/evil*").matches("a@b/good"));
        assert!(JidGlob::new("*").matches("anything@at.all"));
    }

    #[test]
    fn addresses_split_into_bare_jid_and_domain_lowercased() {
        let cases = [
            (
                "Alice@Example.org/Phone@x/y",
                "alice@example.org",
                "example.org",
            ),
            ("alice@example.org", "alice@example.org", "example.org"),
            ("example.org/res@x", "example.org", "example.org"),
            ("EXAMPLE.ORG", "example.org", "example.org"),
            ("a@b@c.test", "a@b@c.test", "c.test"),
            ("", "", ""),
        ];
        for (jid, bare, domain) in cases {
            let a = Address::lowercased(Cow::Borrowed(jid));
            assert_eq!((a.bare(), a.domain()), (bare, domain), "{jid}");
            assert_eq!(&*a.full, jid.to_ascii_lowercase(), "{jid}");
        }
        // Only an upper-case letter makes a copy.
        assert!(matches!(
            Address::lowercased(Cow::Borrowed("a@b/C")).full,
            Cow::Owned(_)
        ));
        assert!(matches!(
            Address::lowercased(Cow::Borrowed("a@b/c")).full,
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn domain_sets_match_subdomains_by_label() {
        let d = DomainSet::new(["spam.example".to_string(), "*.bad.test".to_string()]);
        assert!(d.contains("spam.example"));
        assert!(d.contains("muc.spam.example"));
        assert!(d.contains("x.bad.test"));
        assert!(!d.contains("notspam.example"));
    }

    #[test]
    fn hashed_jids_match_the_sha256_of_the_bare_jid() {
        let mut set = JidSet::default();
        set.hashed
            .insert(Sha256::digest(b"spammer@example.org").into());
        assert!(set.contains("Spammer@Example.org/res"));
        assert!(!set.contains("friend@example.org"));
    }

    #[test]
    fn time_windows_follow_days_hours_and_zone() {
        let utc = jiff::tz::TimeZone::UTC;
        let office = TimeWindow {
            days: 0b0001_1111,
            from: 9 * 60,
            to: 17 * 60,
            zone: utc.clone(),
        };
        let at = |s: &str| SystemTime::from(s.parse::<jiff::Timestamp>().unwrap());
        assert!(office.contains(at("2026-11-20T10:00:00Z"))); // a Friday
        assert!(!office.contains(at("2026-11-21T10:00:00Z"))); // Saturday
        assert!(!office.contains(at("2026-11-20T17:00:00Z")));
        let night = TimeWindow {
            days: 0b0000_0001, // starting Monday
            from: 22 * 60,
            to: 6 * 60,
            zone: utc,
        };
        assert!(night.contains(at("2026-11-16T23:00:00Z"))); // Monday night
        assert!(night.contains(at("2026-11-17T05:59:00Z"))); // still Monday's window
        assert!(!night.contains(at("2026-11-17T23:00:00Z"))); // Tuesday night
    }
}
