//! Rules and lists as written in the configuration file, and their compilation.
//!
//! Every problem is reported with the byte span of the value at fault, so the
//! configuration loader can say `file:line:column`. Compilation happens once per
//! load; nothing here runs per stanza.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use toml::Spanned;

use super::conditions::{Condition, DomainSet, JidGlob, JidSet, TextField, TimeWindow};
use super::content::{Keywords, Patterns};
use super::{
    Action, Chain, Effects, Hook, LogPayload, MarkScope, MarkSpec, PeerAuth, Policy, RateKey, Rule,
    RuleRate, StreamFront,
};
use crate::address::CidrList;
use crate::errors::{ErrorType, StanzaError, StreamCondition, StreamError};
use crate::limits::{PerPeriod, UserClass};

/// `[policy]`: options of the whole policy.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    #[serde(default)]
    pub shadow: bool,
    /// Chains in shadow mode.
    #[serde(default)]
    pub shadow_chains: Vec<Spanned<String>>,
}

/// A rules file: `[policy]`, `[lists.*]` and `[[rule]]` (what `include` names, and what
/// `xmppwall replay --rules` reads).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RulesFile {
    pub policy: Option<RawPolicy>,
    #[serde(default)]
    pub lists: HashMap<String, Spanned<RawList>>,
    #[serde(default)]
    pub rule: Vec<RawRule>,
}

impl RulesFile {
    /// Compiles this file alone; list files are relative to `base`.
    pub fn compile(&self, base: &Path, report: &mut Report<'_>) -> Policy {
        compile(
            self.policy.as_ref().unwrap_or(&RawPolicy::default()),
            &self.lists,
            &self.rule,
            base,
            report,
        )
    }
}

/// `[lists.NAME]`: one named list, inline or from a file (one entry per line,
/// `#` comments), of one kind.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawList {
    pub keywords: Option<Vec<String>>,
    pub domains: Option<Vec<String>>,
    pub jids: Option<Vec<String>>,
    /// Hex SHA-256 digests of bare JIDs.
    pub hashed_jids: Option<Vec<String>>,
    pub cidrs: Option<Vec<String>>,
    /// A file of entries of the kind named by `kind`.
    pub file: Option<Spanned<String>>,
    pub kind: Option<Spanned<String>>,
}

/// Either an inline list of strings or `"list:NAME"`.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum Strings {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConditions {
    pub kind: Option<Spanned<Vec<String>>>,
    #[serde(rename = "type")]
    pub stanza_type: Option<Vec<String>>,
    pub from: Option<Spanned<Strings>>,
    pub to: Option<Spanned<Strings>>,
    pub from_domain: Option<Spanned<Strings>>,
    pub to_domain: Option<Spanned<Strings>>,
    pub has: Option<Vec<String>>,
    pub payload: Option<Vec<String>>,
    /// Namespaces declared anywhere in the stanza.
    pub declares: Option<Vec<String>>,
    pub keywords: Option<Spanned<Strings>>,
    pub regex: Option<Spanned<Vec<String>>>,
    /// Which text `keywords` and `regex` read: "body" (default), "subject" or "any".
    pub text: Option<Spanned<String>>,
    pub url_domains: Option<Spanned<Strings>>,
    pub url_count: Option<u32>,
    pub data_leak: Option<Spanned<Vec<String>>>,
    pub address: Option<Spanned<Strings>>,
    pub mechanism: Option<Vec<String>>,
    pub class: Option<Spanned<Vec<String>>>,
    pub stranger: Option<bool>,
    pub time: Option<Spanned<RawTime>>,
    pub mark: Option<String>,
    /// The kind of stream: c2s, s2s, s2s-egress, component.
    pub front: Option<Spanned<Vec<String>>>,
    /// The authenticated peer domain of a server-to-server or component stream.
    pub peer_domain: Option<Spanned<Strings>>,
    /// How that peer authenticated: certificate, dialback, handshake.
    pub peer_auth: Option<Spanned<Vec<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTime {
    #[serde(default)]
    pub days: Vec<String>,
    pub from: String,
    pub to: String,
    #[serde(default = "utc")]
    pub zone: String,
}

fn utc() -> String {
    "UTC".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBounce {
    #[serde(rename = "type", default = "cancel")]
    pub error_type: String,
    #[serde(default = "policy_violation")]
    pub condition: String,
    pub text: Option<String>,
}

fn cancel() -> String {
    "cancel".into()
}

fn policy_violation() -> String {
    "policy-violation".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClose {
    #[serde(default = "policy_violation")]
    pub condition: String,
    pub text: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMark {
    pub name: String,
    #[serde(default = "session")]
    pub scope: String,
    pub expires: Option<String>,
}

fn session() -> String {
    "session".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRate {
    pub key: String,
    pub limit: String,
    #[serde(default = "max_keys")]
    pub max_keys: usize,
}

fn max_keys() -> usize {
    10_000
}

/// `[[rule]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: Spanned<String>,
    pub chain: Option<Spanned<String>>,
    #[serde(rename = "match", default)]
    pub when: RawConditions,
    pub unless: Option<RawConditions>,
    pub action: Option<Spanned<String>>,
    pub bounce: Option<Spanned<RawBounce>>,
    pub close: Option<Spanned<RawClose>>,
    pub jump: Option<Spanned<String>>,
    #[serde(default)]
    pub shadow: bool,
    pub log: Option<Spanned<String>>,
    pub mark: Option<Spanned<RawMark>>,
    pub ban: Option<Spanned<String>>,
    pub report: Option<String>,
    pub strip: Option<Vec<String>>,
    pub rate_limit: Option<Spanned<RawRate>>,
}

/// Reports a problem at a byte span of the configuration text.
pub type Report<'a> = dyn FnMut(Range<usize>, String) + 'a;

/// A compiled list, by kind.
#[derive(Debug, Clone)]
enum List {
    Keywords(Vec<String>),
    Domains(Arc<DomainSet>),
    Jids(Arc<JidSet>),
    Cidrs(Arc<CidrList>),
    /// A real-time block list (`[[rtbl]]`): JIDs, hashed JIDs and domains at once.
    Dynamic(Arc<crate::blocklist::BlockList>),
}

impl List {
    fn kind(&self) -> &'static str {
        match self {
            List::Keywords(_) => "keywords",
            List::Domains(_) => "domains",
            List::Jids(_) => "jids",
            List::Cidrs(_) => "cidrs",
            List::Dynamic(_) => "a real-time block list",
        }
    }
}

/// One `[lists.NAME]` as compiled, for the admin API: shares the compiled set
/// with the rules (nothing is copied), its entries listed on demand.
#[derive(Debug, Clone)]
pub struct ListInfo {
    pub name: String,
    /// `keywords`, `domains`, `jids`, `hashed_jids` or `cidrs`.
    pub kind: &'static str,
    /// The file its entries were read from (absent: inline only).
    pub file: Option<PathBuf>,
    /// How many entries were written inline in the configuration.
    pub inline_entries: usize,
    /// When this policy, and the list with it, was compiled (at start, at every
    /// reload and every change of a list file).
    pub loaded: SystemTime,
    list: List,
    /// A hashed list's kind is `jids` inside; this tells which set to show.
    hashed: bool,
}

impl ListInfo {
    /// How many entries the list holds (distinct, normalised; CIDR ranges merged).
    pub fn len(&self) -> usize {
        match &self.list {
            List::Keywords(k) => k.len(),
            List::Domains(d) => d.len(),
            List::Jids(j) if self.hashed => j.hashed.len(),
            List::Jids(j) => j.plain.len(),
            List::Cidrs(c) => c.nets().len(),
            List::Dynamic(_) => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entries, sorted: as matched (lower-cased domains and bare JIDs; hashed
    /// JIDs as lower-case hex SHA-256 digests; CIDR ranges merged).
    pub fn entries(&self) -> Vec<String> {
        let mut out: Vec<String> = match &self.list {
            List::Keywords(k) => k.clone(),
            List::Domains(d) => d.iter().map(str::to_owned).collect(),
            List::Jids(j) if self.hashed => j
                .hashed
                .iter()
                .map(|h| h.iter().map(|b| format!("{b:02x}")).collect())
                .collect(),
            List::Jids(j) => j.plain.iter().cloned().collect(),
            List::Cidrs(c) => return c.nets().iter().map(ToString::to_string).collect(),
            List::Dynamic(_) => Vec::new(),
        };
        out.sort();
        out
    }
}

/// One file's share of the policy: the main configuration or an included file.
pub struct Source<'a> {
    /// An index the caller maps back to the file, passed to the report.
    pub file: usize,
    pub policy: Option<&'a RawPolicy>,
    pub lists: &'a HashMap<String, Spanned<RawList>>,
    pub rules: &'a [RawRule],
    /// The directory list files of this source are relative to.
    pub base: &'a Path,
}

/// Reports a problem in a source file at a byte span.
pub type SourceReport<'a> = dyn FnMut(usize, Range<usize>, String) + 'a;

/// Compiles lists and rules of every source, in order: rules run in the order
/// they are written, the main file's first, then each included file's.
pub fn compile_sources(sources: &[Source<'_>], report: &mut SourceReport<'_>) -> Policy {
    let mut compiled_lists = HashMap::new();
    let mut files = Vec::new();
    let mut infos = Vec::new();
    let loaded = SystemTime::now();
    for source in sources {
        for (name, raw) in source.lists {
            let path = raw
                .get_ref()
                .file
                .as_ref()
                .map(|file| source.base.join(file.get_ref()));
            if let Some(path) = &path {
                files.push(path.clone());
            }
            let mut r = |span: Range<usize>, m: String| report(source.file, span, m);
            if let Some(list) = compile_list(raw, source.base, &mut r) {
                let r = raw.get_ref();
                let (kind, inline) = match (&r.keywords, &r.domains, &r.jids, &r.hashed_jids) {
                    (Some(k), ..) => ("keywords", k.len()),
                    (_, Some(d), ..) => ("domains", d.len()),
                    (_, _, Some(j), _) => ("jids", j.len()),
                    (.., Some(h)) => ("hashed_jids", h.len()),
                    _ => match (&r.cidrs, r.kind.as_ref().map(|k| k.get_ref().as_str())) {
                        (Some(c), _) => ("cidrs", c.len()),
                        (None, Some("hashed_jids")) => ("hashed_jids", 0),
                        _ => (list.kind(), 0),
                    },
                };
                infos.push(ListInfo {
                    name: name.clone(),
                    kind,
                    file: path,
                    inline_entries: inline,
                    loaded,
                    list: list.clone(),
                    hashed: kind == "hashed_jids",
                });
                if compiled_lists.insert(name.clone(), list).is_some() {
                    report(
                        source.file,
                        raw.span(),
                        format!("a list named {name:?} is defined twice"),
                    );
                }
            }
        }
    }
    let mut c = Compiler {
        lists: compiled_lists,
        patterns: Default::default(),
        report,
        file: 0,
    };

    // Chains in order of first mention; the hook chains always exist.
    let mut chain_names: Vec<String> = Hook::ALL
        .iter()
        .map(|h| h.chain_name().to_owned())
        .collect();
    for r in sources.iter().flat_map(|s| s.rules) {
        let name = r
            .chain
            .as_ref()
            .map_or("to-server", |c| c.get_ref().as_str());
        if !chain_names.iter().any(|n| n == name) {
            chain_names.push(name.to_owned());
        }
    }
    let mut shadow = false;
    let mut shadow_chains: Vec<String> = Vec::new();
    for source in sources {
        let Some(policy) = source.policy else {
            continue;
        };
        c.file = source.file;
        shadow |= policy.shadow;
        for s in &policy.shadow_chains {
            if chain_names.iter().any(|n| n == s.get_ref()) {
                shadow_chains.push(s.get_ref().clone());
            } else {
                c.problem(
                    s.span(),
                    format!("no rule is in a chain named {:?}", s.get_ref()),
                );
            }
        }
    }
    let mut chains: Vec<Chain> = chain_names
        .iter()
        .map(|n| Chain {
            name: n.clone(),
            rules: Vec::new(),
            shadow: shadow_chains.contains(n),
            index: None,
        })
        .collect();
    let mut names = std::collections::HashSet::new();
    for source in sources {
        c.file = source.file;
        for r in source.rules {
            if !names.insert(r.name.get_ref().clone()) {
                c.problem(
                    r.name.span(),
                    format!(
                        "two rules are named {:?}; names must be unique (they name metrics)",
                        r.name.get_ref()
                    ),
                );
            }
            let chain = r
                .chain
                .as_ref()
                .map_or("to-server", |c| c.get_ref().as_str());
            let index = chain_names.iter().position(|n| n == chain).unwrap_or(0);
            if let Some(rule) = c.rule(r, &chain_names) {
                chains[index].rules.push(rule);
            }
        }
    }
    let mut regexes = super::conditions::PolicyRegexes::default();
    let all_patterns = std::mem::take(&mut c.patterns);
    for (i, patterns) in all_patterns.iter().enumerate() {
        if patterns.is_empty() {
            continue;
        }
        // Each pattern compiled alone above; together they may exceed the size limit.
        match Patterns::new(patterns, 64 << 20) {
            Ok(set) => regexes.sets[i] = Some(set),
            Err(e) => c.problem(
                0..0,
                format!("the rules' regular expressions together are too large: {e}"),
            ),
        }
    }
    for chain in &mut chains {
        let index = super::index::ChainIndex::build(&chain.rules);
        if index.is_useful() {
            index.settle(&mut chain.rules);
            chain.index = Some(index);
        }
    }
    // `Hook::ALL` lists the hooks in declaration order, and their chains come first.
    let hooks = std::array::from_fn(|i| (!chains[i].rules.is_empty()).then_some(i));
    infos.sort_by(|a, b| a.name.cmp(&b.name));
    Policy {
        chains,
        hooks,
        shadow,
        regexes,
        files,
        lists: infos,
    }
}

/// Compiles one file's policy, lists and rules.
pub fn compile(
    policy: &RawPolicy,
    lists: &HashMap<String, Spanned<RawList>>,
    rules: &[RawRule],
    base: &Path,
    report: &mut Report<'_>,
) -> Policy {
    let source = Source {
        file: 0,
        policy: Some(policy),
        lists,
        rules,
        base,
    };
    compile_sources(&[source], &mut |_, span, message| report(span, message))
}

fn read_entries(path: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

fn compile_list(raw: &Spanned<RawList>, base: &Path, report: &mut Report<'_>) -> Option<List> {
    let r = raw.get_ref();
    let (kind, mut entries) = match (&r.keywords, &r.domains, &r.jids, &r.hashed_jids, &r.cidrs) {
        (Some(k), None, None, None, None) => ("keywords", k.clone()),
        (None, Some(d), None, None, None) => ("domains", d.clone()),
        (None, None, Some(j), None, None) => ("jids", j.clone()),
        (None, None, None, Some(h), None) => ("hashed_jids", h.clone()),
        (None, None, None, None, Some(c)) => ("cidrs", c.clone()),
        (None, None, None, None, None) => match &r.kind {
            Some(k) => (
                match k.get_ref().as_str() {
                    "keywords" => "keywords",
                    "domains" => "domains",
                    "jids" => "jids",
                    "hashed_jids" => "hashed_jids",
                    "cidrs" => "cidrs",
                    other => {
                        report(k.span(), format!("unknown list kind {other:?}; use keywords, domains, jids, hashed_jids or cidrs"));
                        return None;
                    }
                },
                Vec::new(),
            ),
            None => {
                report(raw.span(), "a list needs one of keywords, domains, jids, hashed_jids, cidrs, or file with kind".into());
                return None;
            }
        },
        _ => {
            report(raw.span(), "a list holds one kind of entry: give only one of keywords, domains, jids, hashed_jids, cidrs".into());
            return None;
        }
    };
    if let Some(file) = &r.file {
        let path = base.join(file.get_ref());
        match read_entries(&path) {
            Ok(more) => entries.extend(more),
            Err(e) => {
                report(file.span(), e);
                return None;
            }
        }
    }
    Some(match kind {
        "keywords" => List::Keywords(entries),
        "domains" => List::Domains(Arc::new(DomainSet::new(entries))),
        "jids" => List::Jids(Arc::new(JidSet {
            plain: entries.iter().map(|j| crate::stanza::bare_jid(j)).collect(),
            hashed: Default::default(),
        })),
        "hashed_jids" => {
            let mut hashed = rustc_hash::FxHashSet::default();
            for e in &entries {
                match decode_hex32(e) {
                    Some(h) => {
                        hashed.insert(h);
                    }
                    None => {
                        report(
                            raw.span(),
                            format!("{e:?} is not a hex SHA-256 digest (64 hex digits)"),
                        );
                        return None;
                    }
                }
            }
            List::Jids(Arc::new(JidSet {
                plain: Default::default(),
                hashed,
            }))
        }
        _ => {
            let mut nets = Vec::new();
            for e in &entries {
                match CidrList::parse_entry(e) {
                    Ok(n) => nets.push(n),
                    Err(m) => {
                        report(raw.span(), m);
                        return None;
                    }
                }
            }
            List::Cidrs(Arc::new(CidrList::new(nets)))
        }
    })
}

fn decode_hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

struct Compiler<'r, 'a> {
    lists: HashMap<String, List>,
    /// Every rule's regular expressions, by text field (see [`TextField::index`]).
    patterns: [Vec<String>; 3],
    report: &'r mut SourceReport<'a>,
    /// The source whose rules are being compiled.
    file: usize,
}

impl Compiler<'_, '_> {
    fn problem(&mut self, span: Range<usize>, message: String) {
        (self.report)(self.file, span, message);
    }

    /// The entries of `value`: inline, or from `list:NAME` of the wanted kind.
    fn strings(
        &mut self,
        value: &Spanned<Strings>,
        want: &str,
    ) -> Result<Vec<String>, Option<List>> {
        match value.get_ref() {
            Strings::Many(v) => Ok(v.clone()),
            Strings::One(s) => match s.strip_prefix("list:") {
                Some(name) => match self.lists.get(name) {
                    Some(list)
                        if list.kind() == want
                            || (want == "jids" && matches!(list, List::Jids(_))) =>
                    {
                        Err(Some(list.clone()))
                    }
                    Some(list) => {
                        self.problem(
                            value.span(),
                            format!("list {name:?} holds {}, not {want}", list.kind()),
                        );
                        Err(None)
                    }
                    None => match crate::blocklist::lookup(name) {
                        Some(dynamic) if want == "jids" || want == "domains" => {
                            Err(Some(List::Dynamic(dynamic)))
                        }
                        Some(_) => {
                            self.problem(
                                value.span(),
                                format!("{name:?} is a real-time block list: it holds JIDs and domains, not {want}"),
                            );
                            Err(None)
                        }
                        None => {
                            self.problem(
                                value.span(),
                                format!("no list named {name:?}; define it as [lists.{name}] or [[rtbl]] name = {name:?}"),
                            );
                            Err(None)
                        }
                    },
                },
                None => Ok(vec![s.clone()]),
            },
        }
    }

    fn domains(&mut self, value: &Spanned<Strings>) -> Option<Arc<DomainSet>> {
        match self.strings(value, "domains") {
            Ok(v) => Some(Arc::new(DomainSet::new(v))),
            Err(Some(List::Domains(d))) => Some(d),
            Err(Some(List::Dynamic(_))) => {
                self.problem(
                    value.span(),
                    "a real-time block list is not usable here; use a [lists.NAME] of domains"
                        .into(),
                );
                None
            }
            Err(_) => None,
        }
    }

    fn conditions(&mut self, raw: &RawConditions) -> Vec<Condition> {
        let mut out = Vec::new();
        if let Some(kinds) = &raw.kind {
            let mut mask = 0u8;
            for k in kinds.get_ref() {
                mask |= match k.as_str() {
                    "message" => 1,
                    "presence" => 2,
                    "iq" => 4,
                    other => {
                        self.problem(
                            kinds.span(),
                            format!("unknown stanza kind {other:?}; use message, presence or iq"),
                        );
                        0
                    }
                };
            }
            out.push(Condition::Kind(mask));
        }
        if let Some(types) = &raw.stanza_type {
            out.push(Condition::Type(types.clone()));
        }
        for (value, to) in [(&raw.from, false), (&raw.to, true)] {
            let Some(value) = value else { continue };
            match self.strings(value, "jids") {
                Ok(globs) => {
                    let globs = globs.iter().map(|g| JidGlob::new(g)).collect();
                    out.push(if to {
                        Condition::To(globs)
                    } else {
                        Condition::From(globs)
                    });
                }
                Err(Some(List::Jids(set))) => {
                    out.push(if to {
                        Condition::ToJids(set)
                    } else {
                        Condition::FromJids(set)
                    });
                }
                Err(Some(List::Dynamic(list))) => {
                    out.push(if to {
                        Condition::ToList(list)
                    } else {
                        Condition::FromList(list)
                    });
                }
                Err(_) => {}
            }
        }
        for (value, to) in [(&raw.from_domain, false), (&raw.to_domain, true)] {
            let Some(v) = value else { continue };
            match self.strings(v, "domains") {
                Ok(d) => {
                    let d = Arc::new(DomainSet::new(d));
                    out.push(if to {
                        Condition::ToDomain(d)
                    } else {
                        Condition::FromDomain(d)
                    });
                }
                Err(Some(List::Domains(d))) => out.push(if to {
                    Condition::ToDomain(d)
                } else {
                    Condition::FromDomain(d)
                }),
                Err(Some(List::Dynamic(list))) => out.push(if to {
                    Condition::ToDomainList(list)
                } else {
                    Condition::FromDomainList(list)
                }),
                Err(_) => {}
            }
        }
        if let Some(has) = &raw.has {
            // "local" or "namespace local" (a space separates them: namespaces hold colons).
            let children = has
                .iter()
                .map(|h| match h.rsplit_once(' ') {
                    Some((ns, local)) => (Some(ns.to_owned()), local.to_owned()),
                    None => (None, h.clone()),
                })
                .collect();
            out.push(Condition::Has(children));
        }
        if let Some(p) = &raw.payload {
            out.push(Condition::Payload(p.clone()));
        }
        if let Some(d) = &raw.declares {
            out.push(Condition::Declares(
                d.iter()
                    .map(|ns| {
                        (
                            format!("xmlns='{ns}'").into_bytes(),
                            format!("xmlns=\"{ns}\"").into_bytes(),
                        )
                    })
                    .collect(),
            ));
        }
        let field = match raw.text.as_ref().map(|t| (t.get_ref().as_str(), t.span())) {
            None | Some(("body", _)) => TextField::Body,
            Some(("subject", _)) => TextField::Subject,
            Some(("any", _)) => TextField::Any,
            Some((other, span)) => {
                self.problem(
                    span,
                    format!("unknown text field {other:?}; use body, subject or any"),
                );
                TextField::Body
            }
        };
        if let Some(v) = &raw.keywords {
            let words = match self.strings(v, "keywords") {
                Ok(w) => Some(w),
                Err(Some(List::Keywords(w))) => Some(w),
                Err(_) => None,
            };
            if let Some(words) = words {
                match Keywords::new(words) {
                    Ok(k) => out.push(Condition::Keywords(Arc::new(k), field)),
                    Err(e) => self.problem(v.span(), e),
                }
            }
        }
        if let Some(v) = &raw.regex {
            // Checked alone here (to report a bad pattern at its rule), then matched
            // with every other rule's patterns in one set per text field.
            match regex::RegexSetBuilder::new(v.get_ref())
                .size_limit(10 << 20)
                .build()
            {
                Ok(_) => {
                    let patterns = &mut self.patterns[field.index()];
                    let start = patterns.len();
                    patterns.extend(v.get_ref().iter().cloned());
                    out.push(Condition::Regex(start..patterns.len(), field));
                }
                Err(e) => self.problem(v.span(), format!("invalid regular expression: {e}")),
            }
        }
        if let Some(v) = &raw.url_domains {
            if let Some(d) = self.domains(v) {
                out.push(Condition::UrlDomain(d));
            }
        }
        if let Some(n) = raw.url_count {
            out.push(Condition::UrlCount(n));
        }
        if let Some(v) = &raw.data_leak {
            let (mut card, mut iban) = (false, false);
            for d in v.get_ref() {
                match d.as_str() {
                    "card" => card = true,
                    "iban" => iban = true,
                    other => self.problem(
                        v.span(),
                        format!("unknown data-leak detector {other:?}; use card or iban"),
                    ),
                }
            }
            out.push(Condition::DataLeak { card, iban });
        }
        if let Some(v) = &raw.address {
            match self.strings(v, "cidrs") {
                Ok(entries) => {
                    let mut nets = Vec::new();
                    for e in &entries {
                        match CidrList::parse_entry(e) {
                            Ok(n) => nets.push(n),
                            Err(m) => self.problem(v.span(), m),
                        }
                    }
                    out.push(Condition::Address(Arc::new(CidrList::new(nets))));
                }
                Err(Some(List::Cidrs(l))) => out.push(Condition::Address(l)),
                Err(_) => {}
            }
        }
        if let Some(m) = &raw.mechanism {
            out.push(Condition::Mechanism(m.clone()));
        }
        if let Some(v) = &raw.class {
            let mut classes = Vec::new();
            for c in v.get_ref() {
                match c.as_str() {
                    "anonymous" => classes.push(UserClass::Anonymous),
                    "registered" => classes.push(UserClass::Registered),
                    "trusted" => classes.push(UserClass::Trusted),
                    other => self.problem(
                        v.span(),
                        format!(
                            "unknown user class {other:?}; use anonymous, registered or trusted"
                        ),
                    ),
                }
            }
            out.push(Condition::Class(classes));
        }
        if let Some(s) = raw.stranger {
            out.push(Condition::Stranger(s));
        }
        if let Some(t) = &raw.time {
            match time_window(t.get_ref()) {
                Ok(w) => out.push(Condition::Time(Arc::new(w))),
                Err(e) => self.problem(t.span(), e),
            }
        }
        if let Some(m) = &raw.mark {
            out.push(Condition::Mark(m.clone()));
        }
        if let Some(v) = &raw.front {
            let mut fronts = Vec::new();
            for f in v.get_ref() {
                match StreamFront::parse(f) {
                    Some(front) => fronts.push(front),
                    None => self.problem(
                        v.span(),
                        format!("unknown front {f:?}; use c2s, s2s, s2s-egress or component"),
                    ),
                }
            }
            out.push(Condition::Front(fronts));
        }
        if let Some(v) = &raw.peer_domain {
            if let Some(d) = self.domains(v) {
                out.push(Condition::PeerDomain(d));
            }
        }
        if let Some(v) = &raw.peer_auth {
            let mut ways = Vec::new();
            for a in v.get_ref() {
                match PeerAuth::parse(a) {
                    Some(way) => ways.push(way),
                    None => self.problem(
                        v.span(),
                        format!(
                            "unknown peer authentication {a:?}; use certificate, dialback or handshake"
                        ),
                    ),
                }
            }
            out.push(Condition::PeerAuth(ways));
        }
        // Every condition must hold and none has side effects, so their order is
        // free: cheapest first.
        out.sort_by_key(Condition::cost);
        out
    }

    fn rule(&mut self, r: &RawRule, chains: &[String]) -> Option<Rule> {
        let conditions = self.conditions(&r.when);
        let unless = r
            .unless
            .as_ref()
            .map(|u| self.conditions(u))
            .unwrap_or_default();
        let action_name = r
            .action
            .as_ref()
            .map_or("continue", |a| a.get_ref().as_str());
        let action_span = r.action.as_ref().map_or(r.name.span(), |a| a.span());
        let action = match action_name {
            "continue" => Action::Continue,
            "pass" => Action::Pass,
            "drop" => Action::Drop,
            "bounce" => {
                let b = r.bounce.as_ref();
                let error_type = b.map_or("cancel", |b| b.get_ref().error_type.as_str());
                let condition = b.map_or("policy-violation", |b| b.get_ref().condition.as_str());
                let span = b.map_or(action_span.clone(), |b| b.span());
                let Some(error_type) = error_type_of(error_type) else {
                    self.problem(span, format!("unknown error type {error_type:?}; use auth, cancel, continue, modify or wait"));
                    return None;
                };
                let Some(condition) = stanza_condition(condition) else {
                    self.problem(
                        span,
                        format!("{condition:?} is not a stanza error condition of RFC 6120 §8.3.3"),
                    );
                    return None;
                };
                Action::Bounce(StanzaError {
                    error_type,
                    condition,
                    app_condition: None,
                    text: b.and_then(|b| b.get_ref().text.clone()),
                })
            }
            "close" => {
                let c = r.close.as_ref();
                let name = c.map_or("policy-violation", |c| c.get_ref().condition.as_str());
                let Some(condition) = stream_condition(name) else {
                    self.problem(c.map_or(action_span, |c| c.span()), format!("{name:?} is not a stream error condition xmppwall sends (RFC 6120 §4.9.3)"));
                    return None;
                };
                let mut e = StreamError::new(condition);
                e.text = c.and_then(|c| c.get_ref().text.clone());
                Action::Close(e)
            }
            "jump" => {
                let Some(target) = &r.jump else {
                    self.problem(action_span, "action \"jump\" needs jump = \"CHAIN\"".into());
                    return None;
                };
                match chains.iter().position(|c| c == target.get_ref()) {
                    Some(i) => Action::Jump(i),
                    None => {
                        self.problem(
                            target.span(),
                            format!("no rule is in a chain named {:?}", target.get_ref()),
                        );
                        return None;
                    }
                }
            }
            other => {
                self.problem(
                    action_span,
                    format!(
                        "unknown action {other:?}; use pass, drop, bounce, close, jump or continue"
                    ),
                );
                return None;
            }
        };
        let mut effects = Effects::default();
        if let Some(log) = &r.log {
            effects.log = match log.get_ref().as_str() {
                "digest" => Some(LogPayload::Digest),
                "full" => Some(LogPayload::Full),
                "none" => Some(LogPayload::None),
                other => {
                    self.problem(
                        log.span(),
                        format!("unknown log payload {other:?}; use digest, full or none"),
                    );
                    None
                }
            };
        }
        if let Some(m) = &r.mark {
            let raw = m.get_ref();
            let scope = match raw.scope.as_str() {
                "session" => MarkScope::Session,
                "account" => MarkScope::Account,
                other => {
                    self.problem(
                        m.span(),
                        format!("unknown mark scope {other:?}; use session or account"),
                    );
                    MarkScope::Session
                }
            };
            let expires = match raw.expires.as_deref().map(humantime::parse_duration) {
                None => Duration::from_secs(24 * 3600),
                Some(Ok(d)) => d,
                Some(Err(e)) => {
                    self.problem(m.span(), format!("invalid expires: {e}"));
                    Duration::from_secs(3600)
                }
            };
            effects.mark = Some(MarkSpec {
                name: raw.name.clone(),
                scope,
                expires,
            });
        }
        if let Some(b) = &r.ban {
            match humantime::parse_duration(b.get_ref())
                .map_err(|e| format!("invalid ban duration: {e}"))
                .and_then(crate::clock::check_ban_duration)
            {
                Ok(d) => effects.ban = Some(d),
                Err(e) => self.problem(b.span(), e),
            }
        }
        effects.report = r.report.clone();
        if let Some(strip) = &r.strip {
            effects.strip = strip
                .iter()
                .map(|h| match h.rsplit_once(' ') {
                    Some((ns, local)) => (Some(ns.to_owned()), local.to_owned()),
                    None => (None, h.clone()),
                })
                .collect();
        }
        let rate = match &r.rate_limit {
            None => None,
            Some(rl) => {
                let raw = rl.get_ref();
                let key = match raw.key.as_str() {
                    "from" => RateKey::From,
                    "from-domain" => RateKey::FromDomain,
                    "to" => RateKey::To,
                    "address" => RateKey::Address,
                    "account" => RateKey::Account,
                    other => {
                        self.problem(rl.span(), format!("unknown rate key {other:?}; use from, from-domain, to, address or account"));
                        return None;
                    }
                };
                match PerPeriod::parse(&raw.limit) {
                    Ok(limit) => Some(RuleRate::new(key, limit, raw.max_keys.max(1))),
                    Err(e) => {
                        self.problem(rl.span(), e);
                        return None;
                    }
                }
            }
        };
        Some(Rule {
            name: r.name.get_ref().clone(),
            conditions,
            unless,
            action,
            effects,
            shadow: r.shadow,
            rate,
            hits: Default::default(),
            shadow_hits: Default::default(),
            indexed: 0,
        })
    }
}

fn time_window(t: &RawTime) -> Result<TimeWindow, String> {
    let minutes = |s: &str| -> Result<u16, String> {
        let (h, m) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?} is not HH:MM"))?;
        let h: u16 = h.parse().map_err(|_| format!("{s:?} is not HH:MM"))?;
        let m: u16 = m.parse().map_err(|_| format!("{s:?} is not HH:MM"))?;
        if h > 24 || m > 59 || (h == 24 && m > 0) {
            return Err(format!("{s:?} is not a time of day"));
        }
        Ok(h * 60 + m)
    };
    let mut days = 0u8;
    for d in &t.days {
        let bit = match d.to_ascii_lowercase().get(..3) {
            Some("mon") => 0,
            Some("tue") => 1,
            Some("wed") => 2,
            Some("thu") => 3,
            Some("fri") => 4,
            Some("sat") => 5,
            Some("sun") => 6,
            _ => return Err(format!("{d:?} is not a weekday (mon … sun)")),
        };
        days |= 1 << bit;
    }
    if t.days.is_empty() {
        days = 0x7f;
    }
    let zone = jiff::tz::TimeZone::get(&t.zone)
        .map_err(|e| format!("unknown time zone {:?}: {e}", t.zone))?;
    Ok(TimeWindow {
        days,
        from: minutes(&t.from)?,
        to: minutes(&t.to)?,
        zone,
    })
}

fn error_type_of(s: &str) -> Option<ErrorType> {
    Some(match s {
        "auth" => ErrorType::Auth,
        "cancel" => ErrorType::Cancel,
        "continue" => ErrorType::Continue,
        "modify" => ErrorType::Modify,
        "wait" => ErrorType::Wait,
        _ => return None,
    })
}

/// RFC 6120 §8.3.3 conditions.
fn stanza_condition(s: &str) -> Option<&'static str> {
    const ALL: [&str; 22] = [
        "bad-request",
        "conflict",
        "feature-not-implemented",
        "forbidden",
        "gone",
        "internal-server-error",
        "item-not-found",
        "jid-malformed",
        "not-acceptable",
        "not-allowed",
        "not-authorized",
        "policy-violation",
        "recipient-unavailable",
        "redirect",
        "registration-required",
        "remote-server-not-found",
        "remote-server-timeout",
        "resource-constraint",
        "service-unavailable",
        "subscription-required",
        "undefined-condition",
        "unexpected-request",
    ];
    ALL.iter().find(|c| **c == s).copied()
}

fn stream_condition(s: &str) -> Option<StreamCondition> {
    Some(match s {
        "policy-violation" => StreamCondition::PolicyViolation,
        "not-authorized" => StreamCondition::NotAuthorized,
        "resource-constraint" => StreamCondition::ResourceConstraint,
        "undefined-condition" => StreamCondition::UndefinedCondition,
        "system-shutdown" => StreamCondition::SystemShutdown,
        "connection-timeout" => StreamCondition::ConnectionTimeout,
        "bad-format" => StreamCondition::BadFormat,
        _ => return None,
    })
}
