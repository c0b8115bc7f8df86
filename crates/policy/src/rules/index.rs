//! Which rules of a chain could match a stanza, found without visiting the others.
//!
//! A chain of hundreds of rules mostly holds rules about one recipient domain, one
//! sender domain or one stanza kind. The index keeps, per such dimension, the set of
//! rules that dimension does not constrain and, for each value, the rules that require
//! it; the candidates for a stanza are the intersection over the dimensions. It only
//! ever excludes a rule whose required condition cannot hold, so evaluating the
//! candidates in order gives the same verdict as evaluating every rule.

use std::time::Instant;

use rustc_hash::FxHashMap;
use smallvec::SmallVec;

use super::conditions::{Condition, DomainSet, JidGlob};
use super::{Marks, Rule};
use crate::stanza::Payload;

/// A set of rule positions; chains of up to 256 rules need no allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSet {
    words: SmallVec<[u64; 4]>,
}

impl RuleSet {
    fn empty(rules: usize) -> RuleSet {
        RuleSet {
            words: smallvec::smallvec![0; rules.div_ceil(64)],
        }
    }

    fn full(rules: usize) -> RuleSet {
        let mut s = RuleSet::empty(rules);
        for (w, word) in s.words.iter_mut().enumerate() {
            let bits = rules - w * 64;
            *word = if bits >= 64 {
                u64::MAX
            } else {
                (1 << bits) - 1
            };
        }
        s
    }

    fn insert(&mut self, i: usize) {
        self.words[i / 64] |= 1 << (i % 64);
    }

    fn union_with(&mut self, other: &RuleSet) {
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= b;
        }
    }

    fn intersect_with(&mut self, other: &RuleSet) {
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a &= b;
        }
    }

    /// The positions in the set, in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(w, &word)| {
            let mut bits = word;
            std::iter::from_fn(move || {
                if bits == 0 {
                    return None;
                }
                let b = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                Some(w * 64 + b)
            })
        })
    }
}

/// Rules by one domain dimension (recipient or sender).
#[derive(Debug, Clone)]
struct DomainIndex {
    /// Rules with no condition on this dimension.
    free: RuleSet,
    /// For each domain, the rules that require it (or a subdomain of it).
    by_domain: FxHashMap<String, RuleSet>,
}

impl DomainIndex {
    /// `pick` names the domains a condition requires (the value's domain or one of its
    /// parents must be among them), or `None` for a condition that does not constrain
    /// this dimension.
    fn build(
        rules: &[Rule],
        pick: impl Fn(&Condition) -> Option<Vec<&str>>,
    ) -> Option<DomainIndex> {
        let mut free = RuleSet::empty(rules.len());
        let mut by_domain: FxHashMap<String, RuleSet> = FxHashMap::default();
        let mut any = false;
        for (i, rule) in rules.iter().enumerate() {
            match rule.conditions.iter().find_map(&pick) {
                Some(domains) => {
                    any = true;
                    for d in domains {
                        by_domain
                            .entry(d.to_owned())
                            .or_insert_with(|| RuleSet::empty(rules.len()))
                            .insert(i);
                    }
                }
                None => free.insert(i),
            }
        }
        any.then_some(DomainIndex { free, by_domain })
    }

    /// The rules that could match a stanza carrying these keys (namespaces, marks).
    fn candidates_any<'k>(&self, keys: impl Iterator<Item = &'k str>) -> RuleSet {
        let mut set = self.free.clone();
        for k in keys {
            if let Some(rules) = self.by_domain.get(k) {
                set.union_with(rules);
            }
        }
        set
    }

    /// The rules that could match a stanza whose domain on this dimension is `domain`.
    fn candidates(&self, domain: Option<&str>) -> RuleSet {
        let mut set = self.free.clone();
        let mut rest = domain.map(|d| d.trim_end_matches('.'));
        while let Some(d) = rest {
            if let Some(rules) = self.by_domain.get(d) {
                set.union_with(rules);
            }
            rest = d.split_once('.').map(|(_, parent)| parent);
        }
        set
    }
}

/// Rules by the connection's address (`address` conditions): the address space cut
/// into the pieces no range boundary crosses, each with the rules that admit it.
#[derive(Debug, Clone)]
struct AddressIndex {
    /// Rules with no `address` condition.
    free: RuleSet,
    /// (first, last, rules) of each piece some rule's ranges cover, in order.
    pieces: Vec<(u128, u128, RuleSet)>,
}

impl AddressIndex {
    fn build(rules: &[Rule]) -> Option<AddressIndex> {
        let mut free = RuleSet::empty(rules.len());
        let mut constrained = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            match rule.conditions.iter().find_map(|c| match c {
                Condition::Address(list) => Some(list),
                _ => None,
            }) {
                Some(list) => constrained.push((i, list)),
                None => free.insert(i),
            }
        }
        if constrained.is_empty() {
            return None;
        }
        // Every place a piece starts: each range's first address and the one after
        // its last.
        let mut starts: Vec<u128> = constrained
            .iter()
            .flat_map(|(_, list)| list.ranges())
            .flat_map(|(first, last)| [Some(first), last.checked_add(1)])
            .flatten()
            .collect();
        starts.sort_unstable();
        starts.dedup();
        let mut pieces: Vec<(u128, u128, RuleSet)> = starts
            .iter()
            .enumerate()
            .map(|(k, &first)| {
                let last = starts.get(k + 1).map_or(u128::MAX, |next| next - 1);
                (first, last, RuleSet::empty(rules.len()))
            })
            .collect();
        for (i, list) in constrained {
            for (first, last) in list.ranges() {
                let from = pieces.partition_point(|p| p.0 < first);
                for piece in pieces[from..].iter_mut().take_while(|p| p.1 <= last) {
                    piece.2.insert(i);
                }
            }
        }
        pieces.retain(|p| p.2.words.iter().any(|&w| w != 0));
        Some(AddressIndex { free, pieces })
    }

    fn candidates(&self, ip: std::net::IpAddr) -> RuleSet {
        let mut set = self.free.clone();
        let key = crate::address::CidrList::key(ip);
        let i = self.pieces.partition_point(|p| p.0 <= key);
        if let Some((_, last, rules)) = i.checked_sub(1).map(|i| &self.pieces[i]) {
            if key <= *last {
                set.union_with(rules);
            }
        }
        set
    }
}

fn domains(set: &DomainSet) -> Vec<&str> {
    set.iter().collect()
}

/// The domains of JID globs that are all `*@domain`: such a condition requires the
/// JID's domain to be one of them (a superset is fine for an index).
fn any_at_domains(globs: &[JidGlob]) -> Option<Vec<&str>> {
    globs.iter().map(JidGlob::any_at_domain).collect()
}

/// The index of one chain.
#[derive(Debug, Clone)]
pub struct ChainIndex {
    /// Per kind (message, presence, iq), the rules that admit it; `[3]`: no stanza.
    /// Without `kind` conditions, one set of every rule.
    kinds: Result<[RuleSet; 4], RuleSet>,
    to: Option<DomainIndex>,
    from: Option<DomainIndex>,
    /// By first-level payload namespace (`payload` conditions).
    payload: Option<DomainIndex>,
    /// By mark name (`mark` conditions).
    marks: Option<DomainIndex>,
    /// By the connection's address (`address` conditions).
    address: Option<AddressIndex>,
}

/// What the index needs to know of a stanza.
pub struct Keys<'a> {
    /// 0 message, 1 presence, 2 iq, 3 no stanza.
    pub kind: usize,
    pub to_domain: Option<&'a str>,
    pub from_domain: Option<&'a str>,
    /// The stanza's first-level children (when [`ChainIndex::needs_payloads`]).
    pub payloads: &'a [Payload<'a>],
    /// The marks and the time they are in force at (when [`ChainIndex::needs_marks`]).
    pub marks: Option<(&'a Marks, Instant)>,
    /// The connection's address.
    pub ip: std::net::IpAddr,
}

impl ChainIndex {
    pub fn build(rules: &[Rule]) -> ChainIndex {
        let constrained = rules
            .iter()
            .any(|r| r.conditions.iter().any(|c| matches!(c, Condition::Kind(_))));
        let kinds = if !constrained {
            Err(RuleSet::full(rules.len()))
        } else {
            let mut kinds = std::array::from_fn(|_| RuleSet::empty(rules.len()));
            for (i, rule) in rules.iter().enumerate() {
                let mask = rule
                    .conditions
                    .iter()
                    .find_map(|c| match c {
                        Condition::Kind(m) => Some(*m),
                        _ => None,
                    })
                    .map_or(0b1111, |m| m & 0b0111);
                for (k, set) in kinds.iter_mut().enumerate() {
                    if mask & (1 << k) != 0 {
                        set.insert(i);
                    }
                }
            }
            Ok(kinds)
        };
        ChainIndex {
            kinds,
            to: DomainIndex::build(rules, |c| match c {
                Condition::ToDomain(set) => Some(domains(set)),
                Condition::To(globs) => any_at_domains(globs),
                _ => None,
            }),
            from: DomainIndex::build(rules, |c| match c {
                Condition::FromDomain(set) => Some(domains(set)),
                Condition::From(globs) => any_at_domains(globs),
                _ => None,
            }),
            payload: DomainIndex::build(rules, |c| match c {
                Condition::Payload(namespaces) => {
                    Some(namespaces.iter().map(String::as_str).collect())
                }
                _ => None,
            }),
            marks: DomainIndex::build(rules, |c| match c {
                Condition::Mark(name) => Some(vec![name.as_str()]),
                _ => None,
            }),
            address: AddressIndex::build(rules),
        }
    }

    pub fn needs_payloads(&self) -> bool {
        self.payload.is_some()
    }

    pub fn needs_marks(&self) -> bool {
        self.marks.is_some()
    }

    /// Whether the index can exclude anything at all.
    pub fn is_useful(&self) -> bool {
        self.kinds.is_ok()
            || self.to.is_some()
            || self.from.is_some()
            || self.payload.is_some()
            || self.marks.is_some()
            || self.address.is_some()
    }

    pub fn needs_to(&self) -> bool {
        self.to.is_some()
    }

    pub fn needs_from(&self) -> bool {
        self.from.is_some()
    }

    /// The rules that could match, in order.
    pub fn candidates(&self, keys: &Keys<'_>) -> RuleSet {
        let mut set = match &self.kinds {
            Ok(kinds) => kinds[keys.kind.min(3)].clone(),
            Err(all) => all.clone(),
        };
        if let Some(to) = &self.to {
            set.intersect_with(&to.candidates(keys.to_domain));
        }
        if let Some(from) = &self.from {
            set.intersect_with(&from.candidates(keys.from_domain));
        }
        if let Some(payload) = &self.payload {
            set.intersect_with(&payload.candidates_any(keys.payloads.iter().map(|p| &*p.ns)));
        }
        if let Some(marks) = &self.marks {
            let in_force = keys.marks.into_iter().flat_map(|(m, now)| m.in_force(now));
            set.intersect_with(&marks.candidates_any(in_force));
        }
        if let Some(address) = &self.address {
            set.intersect_with(&address.candidates(keys.ip));
        }
        set
    }
}
