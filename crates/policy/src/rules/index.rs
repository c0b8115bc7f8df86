//! Which rules of a chain could match a stanza, found without visiting the others.
//!
//! A chain of hundreds of rules mostly holds rules about one recipient domain, one
//! sender domain or one stanza kind. The index keeps, per such dimension, the set of
//! rules that dimension does not constrain and, for each value, the rules that require
//! it; the candidates for a stanza are the intersection over the dimensions. It only
//! ever excludes a rule whose required condition cannot hold, so evaluating the
//! candidates in order gives the same verdict as evaluating every rule.

use rustc_hash::FxHashMap;

use super::conditions::{Condition, DomainSet, JidGlob};
use super::Rule;

/// A set of rule positions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSet {
    words: Vec<u64>,
}

impl RuleSet {
    fn empty(rules: usize) -> RuleSet {
        RuleSet {
            words: vec![0; rules.div_ceil(64)],
        }
    }

    fn full(rules: usize) -> RuleSet {
        let mut s = RuleSet::empty(rules);
        for i in 0..rules {
            s.insert(i);
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
    rules: usize,
    /// Per kind (message, presence, iq), the rules that admit it; `[3]`: no stanza.
    kinds: Option<[RuleSet; 4]>,
    to: Option<DomainIndex>,
    from: Option<DomainIndex>,
    /// By first-level payload namespace (`payload` conditions).
    payload: Option<DomainIndex>,
    /// By mark name (`mark` conditions).
    marks: Option<DomainIndex>,
}

/// What the index needs to know of a stanza.
pub struct Keys<'a> {
    /// 0 message, 1 presence, 2 iq, 3 no stanza.
    pub kind: usize,
    pub to_domain: Option<&'a str>,
    pub from_domain: Option<&'a str>,
    /// The stanza's first-level payload namespaces (when [`ChainIndex::needs_payloads`]).
    pub payloads: &'a [&'a str],
    /// The marks in force (when [`ChainIndex::needs_marks`]).
    pub marks: &'a [&'a str],
}

impl ChainIndex {
    pub fn build(rules: &[Rule]) -> ChainIndex {
        let constrained = rules
            .iter()
            .any(|r| r.conditions.iter().any(|c| matches!(c, Condition::Kind(_))));
        let kinds = constrained.then(|| {
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
            kinds
        });
        ChainIndex {
            rules: rules.len(),
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
        self.kinds.is_some()
            || self.to.is_some()
            || self.from.is_some()
            || self.payload.is_some()
            || self.marks.is_some()
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
            Some(kinds) => kinds[keys.kind.min(3)].clone(),
            None => RuleSet::full(self.rules),
        };
        if let Some(to) = &self.to {
            set.intersect_with(&to.candidates(keys.to_domain));
        }
        if let Some(from) = &self.from {
            set.intersect_with(&from.candidates(keys.from_domain));
        }
        if let Some(payload) = &self.payload {
            set.intersect_with(&payload.candidates_any(keys.payloads.iter().copied()));
        }
        if let Some(marks) = &self.marks {
            set.intersect_with(&marks.candidates_any(keys.marks.iter().copied()));
        }
        set
    }
}
