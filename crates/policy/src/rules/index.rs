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

    /// A copy (a word copy: the derived `Clone` of a `SmallVec` goes element by element).
    fn copy(&self) -> RuleSet {
        RuleSet {
            words: SmallVec::from_slice(&self.words),
        }
    }

    /// Keeps only the rules some of `admitted` (a dimension's free rules and the rules
    /// of each value the stanza has on it) hold: `self &= a1 | a2 | ...`, in place.
    fn restrict(&mut self, admitted: &[&RuleSet]) {
        let Some((first, rest)) = admitted.split_first() else {
            return;
        };
        // Slices throughout: indexing a `SmallVec` checks where it lives every time.
        let mut admit: SmallVec<[u64; 4]> = SmallVec::from_slice(&first.words);
        for set in rest {
            for (a, b) in admit.iter_mut().zip(set.words.iter()) {
                *a |= b;
            }
        }
        for (word, a) in self.words.iter_mut().zip(admit.iter()) {
            *word &= a;
        }
    }

    fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    /// The positions in the set, in increasing order.
    pub fn iter(&self) -> RuleSetIter<'_> {
        RuleSetIter {
            words: &self.words,
            bits: 0,
            base: 0,
            next_base: 0,
        }
    }
}

/// The positions of a [`RuleSet`], in increasing order.
pub struct RuleSetIter<'a> {
    /// The words not yet started.
    words: &'a [u64],
    /// What is left of the current word, and the position of its bit 0.
    bits: u64,
    base: usize,
    /// The position of bit 0 of the next word.
    next_base: usize,
}

impl Iterator for RuleSetIter<'_> {
    type Item = usize;
    fn next(&mut self) -> Option<usize> {
        while self.bits == 0 {
            let (&first, rest) = self.words.split_first()?;
            self.words = rest;
            self.bits = first;
            self.base = self.next_base;
            self.next_base += 64;
        }
        let b = self.bits.trailing_zeros() as usize;
        self.bits &= self.bits - 1;
        Some(self.base + b)
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

    /// The rule sets that admit a stanza carrying these keys (namespaces, marks): the
    /// free rules and those of each key.
    fn admitted_any<'k>(&self, keys: impl Iterator<Item = &'k str>) -> Admitted<'_> {
        let mut admitted: Admitted<'_> = smallvec::smallvec![&self.free];
        admitted.extend(keys.filter_map(|k| self.by_domain.get(k)));
        admitted
    }

    /// The rule sets that admit a stanza whose domain on this dimension is `domain`:
    /// the free rules and those of the domain and each of its parents.
    fn admitted(&self, domain: Option<&str>) -> Admitted<'_> {
        let mut admitted: Admitted<'_> = smallvec::smallvec![&self.free];
        let mut rest = domain.map(|d| d.trim_end_matches('.'));
        while let Some(d) = rest {
            if let Some(rules) = self.by_domain.get(d) {
                admitted.push(rules);
            }
            rest = d.split_once('.').map(|(_, parent)| parent);
        }
        admitted
    }
}

/// The rule sets one dimension admits for a stanza (their union is what it admits).
type Admitted<'i> = SmallVec<[&'i RuleSet; 4]>;

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

    fn admitted(&self, ip: std::net::IpAddr) -> Admitted<'_> {
        let mut admitted: Admitted<'_> = smallvec::smallvec![&self.free];
        let key = crate::address::CidrList::key(ip);
        let i = self.pieces.partition_point(|p| p.0 <= key);
        if let Some((_, last, rules)) = i.checked_sub(1).map(|i| &self.pieces[i]) {
            if key <= *last {
                admitted.push(rules);
            }
        }
        admitted
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

    /// Moves to the front of each rule's conditions those the index enforces exactly
    /// (the rule is a candidate only when they hold) and records how many there are:
    /// the rule's `kind`, and the `payload`, `address` or `mark` condition the index
    /// filed it under. Domain conditions stay: their index is a superset (subdomains,
    /// globs).
    pub fn settle(&self, rules: &mut [Rule]) {
        for rule in rules {
            let mut exact = [false; 4];
            let mut moved = 0;
            for k in 0..rule.conditions.len() {
                let slot = match &rule.conditions[k] {
                    Condition::Kind(_) if self.kinds.is_ok() => 0,
                    Condition::Payload(_) if self.payload.is_some() => 1,
                    Condition::Address(_) if self.address.is_some() => 2,
                    Condition::Mark(_) if self.marks.is_some() => 3,
                    _ => continue,
                };
                // Only the first of each: it is the one the index was built from.
                if std::mem::replace(&mut exact[slot], true) {
                    continue;
                }
                rule.conditions[moved..=k].rotate_right(1);
                moved += 1;
            }
            rule.indexed = moved;
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
    ///
    /// The stanza's kind picks a set, which each other dimension then narrows in
    /// place; once nothing is left the remaining dimensions are not read.
    pub fn candidates(&self, keys: &Keys<'_>) -> RuleSet {
        let mut set = match &self.kinds {
            Ok(kinds) => kinds[keys.kind.min(3)].copy(),
            Err(all) => all.copy(),
        };
        if let Some(to) = &self.to {
            set.restrict(&to.admitted(keys.to_domain));
        }
        if let Some(from) = &self.from {
            if !set.is_empty() {
                set.restrict(&from.admitted(keys.from_domain));
            }
        }
        if let Some(payload) = &self.payload {
            if !set.is_empty() {
                set.restrict(&payload.admitted_any(keys.payloads.iter().map(|p| &*p.ns)));
            }
        }
        if let Some(marks) = &self.marks {
            if !set.is_empty() {
                let in_force = keys.marks.into_iter().flat_map(|(m, now)| m.in_force(now));
                set.restrict(&marks.admitted_any(in_force));
            }
        }
        if let Some(address) = &self.address {
            if !set.is_empty() {
                set.restrict(&address.admitted(keys.ip));
            }
        }
        set
    }
}
