//! The anti-spam sections of the configuration: `[registration]`, `[directory]`,
//! `[subscriptions]`, `[strangers]`, `[federation]` and `[[rtbl]]`, read into the
//! policy crate's [`AntispamConfig`] and the RTBL followers' [`Rtbl`] settings
//! (see `docs/antispam.md`).

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;
use xmppwall_policy::antispam::{
    AntispamConfig, DirectoryConfig, DomainPatterns, FederationConfig, RegistrationConfig,
    StrangerAction, StrangerScope, StrangersConfig, SubscriptionsConfig,
};
use xmppwall_policy::limits::PerPeriod;
use xmppwall_policy::reputation::ReputationConfig;
use xmppwall_policy::UserClass;

use super::{Checker, Switch};

/// One real-time block list followed over XEP-0060 publish-subscribe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rtbl {
    /// The list's name in rules (`"list:NAME"`) and `[federation] deny_lists`.
    pub name: String,
    /// The pubsub service's JID, e.g. `xmppbl.org`.
    pub service: String,
    pub node: String,
    /// The account xmppwall logs in with (on the protected server, through
    /// `[upstream]`).
    pub jid: String,
    pub password: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRegistration {
    enabled: Option<bool>,
    #[serde(default)]
    allow_from: Vec<Spanned<String>>,
    per_address: Option<Spanned<String>>,
    per_prefix: Option<Spanned<String>>,
    ipv4_prefix: Option<Spanned<i64>>,
    ipv6_prefix: Option<Spanned<i64>>,
    reserved: Option<Vec<String>>,
    username_patterns: Option<Spanned<Vec<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDirectory {
    allow: Spanned<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSubscriptions {
    incoming_per_domain: Option<Spanned<String>>,
    max_tracked_domains: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStrangers {
    messages: Option<Spanned<String>>,
    subscriptions: Option<Spanned<String>>,
    senders: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFederation {
    mode: Spanned<String>,
    #[serde(default)]
    domains: Vec<String>,
    #[serde(default)]
    deny_lists: Vec<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReputation {
    half_life: Option<Spanned<String>>,
    report_weight: Option<Spanned<f64>>,
    rule_weight: Option<Spanned<f64>>,
    limit_weight: Option<Spanned<f64>>,
    domain_share: Option<Spanned<f64>>,
    throttle_at: Option<Spanned<Switch<f64>>>,
    throttle_rate: Option<Spanned<String>>,
    quarantine_at: Option<Spanned<Switch<f64>>>,
    ban_at: Option<Spanned<Switch<f64>>>,
    #[serde(default)]
    exempt: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRtbl {
    name: Spanned<String>,
    service: String,
    #[serde(default = "default_node")]
    node: String,
    jid: Spanned<String>,
    password: Option<String>,
    password_file: Option<Spanned<String>>,
}

fn default_node() -> String {
    "muc_bans_sha256".into()
}

/// The anti-spam sections as read.
#[derive(Default)]
pub(super) struct RawAntispam<'a> {
    pub registration: Option<&'a RawRegistration>,
    pub directory: Option<&'a RawDirectory>,
    pub subscriptions: Option<&'a RawSubscriptions>,
    pub strangers: Option<&'a RawStrangers>,
    pub federation: Option<&'a RawFederation>,
    pub reputation: Option<&'a RawReputation>,
}

impl Checker<'_> {
    /// Reads `[[rtbl]]` and declares each list by name, so rules compiled after can
    /// refer to it.
    pub(super) fn rtbl(&mut self, raw: &[RawRtbl]) -> Vec<Rtbl> {
        let mut out: Vec<Rtbl> = Vec::new();
        for r in raw {
            let name = r.name.get_ref().clone();
            if name.is_empty() || out.iter().any(|x| x.name == name) {
                self.problem(
                    r.name.span(),
                    format!(
                        "an [[rtbl]] needs a unique, non-empty name; {name:?} is taken or empty"
                    ),
                );
                continue;
            }
            if !r.jid.get_ref().contains('@') {
                self.problem(
                    r.jid.span(),
                    "jid must be the bare JID of the account xmppwall logs in with, e.g. \"rtbl@example.org\"".into(),
                );
            }
            let password = match (&r.password, &r.password_file) {
                (Some(p), None) => p.clone(),
                (None, Some(file)) => {
                    let path: PathBuf = self.path(file.get_ref());
                    match std::fs::read_to_string(&path) {
                        Ok(p) => p.trim_end_matches(['\r', '\n']).to_owned(),
                        Err(e) => {
                            self.problem(
                                file.span(),
                                format!("cannot read the password file {}: {e}", path.display()),
                            );
                            String::new()
                        }
                    }
                }
                _ => {
                    self.problem(
                        r.name.span(),
                        "give the RTBL account's password as password or password_file (one of them)".into(),
                    );
                    String::new()
                }
            };
            xmppwall_policy::blocklist::declare(&name);
            out.push(Rtbl {
                name,
                service: r.service.clone(),
                node: r.node.clone(),
                jid: xmppwall_policy::stanza::bare_jid(r.jid.get_ref()),
                password,
            });
        }
        out
    }

    pub(super) fn antispam(&mut self, raw: RawAntispam<'_>, domains: &[String]) -> AntispamConfig {
        let mut config = AntispamConfig {
            local_domains: domains.to_vec(),
            ..AntispamConfig::default()
        };
        if let Some(r) = raw.registration {
            config.registration = self.registration(r);
        }
        if let Some(d) = raw.directory {
            let mut allow = Vec::new();
            for c in d.allow.get_ref() {
                match c.as_str() {
                    "anonymous" => allow.push(UserClass::Anonymous),
                    "registered" => allow.push(UserClass::Registered),
                    "trusted" => allow.push(UserClass::Trusted),
                    other => self.problem(
                        d.allow.span(),
                        format!(
                            "unknown user class {other:?}; use anonymous, registered or trusted"
                        ),
                    ),
                }
            }
            config.directory = DirectoryConfig { allow };
        }
        if let Some(s) = raw.subscriptions {
            let d = SubscriptionsConfig::default();
            config.subscriptions = SubscriptionsConfig {
                incoming_per_domain: self.per_period(&s.incoming_per_domain, None),
                max_tracked_domains: self.size(&s.max_tracked_domains, d.max_tracked_domains, 16),
            };
        }
        if let Some(s) = raw.strangers {
            let action = |c: &mut Self, v: &Option<Spanned<String>>, strip: bool| match v {
                None => StrangerAction::Drop,
                Some(v) => match v.get_ref().as_str() {
                    "pass" => StrangerAction::Pass,
                    "drop" => StrangerAction::Drop,
                    "bounce" => StrangerAction::Bounce,
                    "strip-body" if strip => StrangerAction::StripBody,
                    other => {
                        let allowed = if strip {
                            "pass, drop, bounce or strip-body"
                        } else {
                            "pass, drop or bounce"
                        };
                        c.problem(v.span(), format!("unknown action {other:?}; use {allowed}"));
                        StrangerAction::Drop
                    }
                },
            };
            let messages = action(self, &s.messages, true);
            let subscriptions = action(self, &s.subscriptions, false);
            let senders = match &s.senders {
                None => StrangerScope::Remote,
                Some(v) => match v.get_ref().as_str() {
                    "remote" => StrangerScope::Remote,
                    "all" => StrangerScope::All,
                    other => {
                        self.problem(
                            v.span(),
                            format!("unknown senders {other:?}; use remote or all"),
                        );
                        StrangerScope::Remote
                    }
                },
            };
            config.strangers = Some(StrangersConfig {
                messages,
                subscriptions,
                senders,
            });
        }
        if let Some(r) = raw.reputation {
            config.reputation = Some(self.reputation(r));
        }
        if let Some(f) = raw.federation {
            let allow_mode = match f.mode.get_ref().as_str() {
                "allow" => true,
                "deny" => false,
                other => {
                    self.problem(
                        f.mode.span(),
                        format!("unknown mode {other:?}; use \"allow\" (only the listed domains) or \"deny\" (all but the listed domains)"),
                    );
                    false
                }
            };
            let mut deny_lists = Vec::new();
            for name in &f.deny_lists {
                if allow_mode {
                    self.problem(
                        name.span(),
                        "deny_lists only applies with mode = \"deny\"".into(),
                    );
                }
                match xmppwall_policy::blocklist::lookup(name.get_ref()) {
                    Some(list) => deny_lists.push(list),
                    None => self.problem(
                        name.span(),
                        format!("no [[rtbl]] is named {:?}", name.get_ref()),
                    ),
                }
            }
            config.federation = Some(FederationConfig {
                allow_mode,
                domains: DomainPatterns::new(f.domains.iter().map(String::as_str)),
                deny_lists,
            });
        }
        config
    }

    fn reputation(&mut self, r: &RawReputation) -> ReputationConfig {
        let d = ReputationConfig::default();
        let weight = |c: &mut Self, v: &Option<Spanned<f64>>, default: f64| match v {
            None => default,
            Some(v) if v.get_ref().is_finite() && *v.get_ref() >= 0.0 => *v.get_ref(),
            Some(v) => {
                c.problem(v.span(), "must be a number of at least 0".into());
                default
            }
        };
        let threshold =
            |c: &mut Self, v: &Option<Spanned<Switch<f64>>>, default: Option<f64>| match v {
                None => default,
                Some(v) => match v.get_ref() {
                    Switch::Off(s) if s == "off" => None,
                    Switch::Value(x) if x.is_finite() && *x > 0.0 => Some(*x),
                    _ => {
                        c.problem(v.span(), "must be a score above 0, or \"off\"".into());
                        default
                    }
                },
            };
        let throttle_rate = self
            .per_period(&r.throttle_rate, d.throttle.map(|t| t.1))
            .unwrap_or(PerPeriod::new(6, std::time::Duration::from_secs(60)));
        let throttle =
            threshold(self, &r.throttle_at, d.throttle.map(|t| t.0)).map(|at| (at, throttle_rate));
        let mut exempt_jids = std::collections::HashSet::new();
        let mut exempt_domains = Vec::new();
        for e in &r.exempt {
            if e.contains('@') {
                exempt_jids.insert(xmppwall_policy::stanza::bare_jid(e));
            } else {
                exempt_domains.push(e.as_str());
            }
        }
        ReputationConfig {
            half_life: self.duration(&r.half_life, d.half_life),
            report_weight: weight(self, &r.report_weight, d.report_weight),
            rule_weight: weight(self, &r.rule_weight, d.rule_weight),
            limit_weight: weight(self, &r.limit_weight, d.limit_weight),
            domain_share: weight(self, &r.domain_share, d.domain_share),
            throttle,
            quarantine: threshold(self, &r.quarantine_at, d.quarantine),
            ban: threshold(self, &r.ban_at, d.ban),
            exempt_jids,
            exempt_domains: DomainPatterns::new(exempt_domains),
        }
    }

    fn registration(&mut self, r: &RawRegistration) -> RegistrationConfig {
        let d = RegistrationConfig::default();
        let prefix = |c: &mut Self, v: &Option<Spanned<i64>>, default: u8, max: i64| -> u8 {
            let Some(v) = v else { return default };
            match u8::try_from(*v.get_ref()) {
                Ok(p) if i64::from(p) <= max => p,
                _ => {
                    c.problem(v.span(), format!("a prefix length from 0 to {max}"));
                    default
                }
            }
        };
        let mut config = RegistrationConfig {
            enabled: r.enabled.unwrap_or(true),
            allow_from: self.cidr_list(&r.allow_from),
            // ejabberd's registration_timeout default: one account per address per 600 s.
            per_address: self.per_period(
                &r.per_address,
                Some(PerPeriod::new(1, std::time::Duration::from_secs(600))),
            ),
            per_prefix: self.per_period(&r.per_prefix, None),
            ipv4_prefix: prefix(self, &r.ipv4_prefix, d.ipv4_prefix, 32),
            ipv6_prefix: prefix(self, &r.ipv6_prefix, d.ipv6_prefix, 128),
            reserved: match &r.reserved {
                Some(names) => names.iter().map(|n| n.trim().to_lowercase()).collect(),
                None => RegistrationConfig::DEFAULT_RESERVED
                    .iter()
                    .map(|n| (*n).to_owned())
                    .collect(),
            },
            ..d
        };
        if let Some(p) = &r.username_patterns {
            if let Err(e) = config.set_username_patterns(p.get_ref()) {
                self.problem(p.span(), e);
            }
        }
        config
    }
}
