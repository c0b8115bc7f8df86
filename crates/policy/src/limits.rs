//! The XEP-0205 limits as configured: one plain value per limit, per user class.
//!
//! Parsing the file and reporting its positions is the proxy's config module's job;
//! this module owns the model, the documented defaults, and the tiers of XEP-0205 §3
//! (anonymous stricter than registered, trusted looser).

use std::time::Duration;

use crate::address::CidrList;
use crate::rate::Rate;

/// "COUNT per PERIOD", e.g. 20 per hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerPeriod {
    pub count: u32,
    pub period: Duration,
}

impl PerPeriod {
    pub const fn new(count: u32, period: Duration) -> PerPeriod {
        PerPeriod { count, period }
    }

    pub fn rate(&self) -> Rate {
        Rate::per_period(self.count, self.period)
    }

    /// Parses `"20/1h"`, `"5/60s"`.
    pub fn parse(text: &str) -> Result<PerPeriod, String> {
        let (count, period) = text.split_once('/').ok_or_else(|| {
            format!("{text:?} is not COUNT/PERIOD; write e.g. \"20/1h\" or \"5/60s\"")
        })?;
        let count: u32 = count
            .trim()
            .parse()
            .map_err(|_| format!("{:?} is not a whole number of events", count.trim()))?;
        let period = humantime::parse_duration(period.trim()).map_err(|e| {
            format!(
                "{:?} is not a period ({e}); write e.g. \"1h\"",
                period.trim()
            )
        })?;
        if period.is_zero() {
            return Err("the period must be longer than zero".into());
        }
        if count == 0 {
            return Err(format!(
                "{text:?} allows nothing at all; the count must be at least 1"
            ));
        }
        Ok(PerPeriod { count, period })
    }
}

/// Bytes per second with a burst (XEP-0205 §2.7, "karma").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bandwidth {
    pub bytes_per_second: u64,
    pub burst_bytes: u64,
}

impl Bandwidth {
    pub fn rate(&self) -> Rate {
        Rate::bytes(self.bytes_per_second, self.burst_bytes)
    }
}

/// Which way a payload restriction applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadDirection {
    ToServer,
    ToClient,
    Both,
}

/// The stanza error a refused payload gets (XEP-0205 §2.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadError {
    /// `cancel` + `<not-allowed/>`.
    NotAllowed,
    /// `cancel` + `<policy-violation/>`.
    PolicyViolation,
}

/// A payload namespace that may not pass in a direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadRule {
    pub namespace: String,
    pub direction: PayloadDirection,
    pub error: PayloadError,
}

/// Limits on what one user class may do once authenticated. `None`: no limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StanzaLimits {
    /// XEP-0205 §2.4.
    pub resources_per_account: Option<u32>,
    /// XEP-0205 §2.6: distinct bare JIDs written to (messages, subscription requests).
    pub distinct_recipients: Option<PerPeriod>,
    /// XEP-0205 §2.7, per connection.
    pub bandwidth: Option<Bandwidth>,
    /// XEP-0205 §2.7, per account across its connections.
    pub account_bandwidth: Option<Bandwidth>,
    /// Continuous throttling longer than this closes the stream with `<policy-violation/>`.
    pub bandwidth_close_after: Duration,
    /// XEP-0205 §2.8: roster gets per connection.
    pub roster_requests: Option<PerPeriod>,
    /// XEP-0205 §2.8: `subscribe` presences per account.
    pub subscription_requests: Option<PerPeriod>,
    /// XEP-0205 §2.9: presence broadcasts (no `to`) per account.
    pub presence_broadcasts: Option<PerPeriod>,
    /// XEP-0205 §2.9: groupchat messages per occupant (account and room).
    pub muc_messages: Option<PerPeriod>,
    /// XEP-0205 §2.9: presence to a room per occupant.
    pub muc_presences: Option<PerPeriod>,
    /// XEP-0205 §2.9: rooms joined at once per account.
    pub rooms_joined: Option<u32>,
    /// XEP-0205 §2.9: pubsub publish requests per account.
    pub pubsub_publishes: Option<PerPeriod>,
    /// XEP-0205 §2.8: payloads refused by namespace and direction.
    pub payloads: Vec<PayloadRule>,
}

const MINUTE: Duration = Duration::from_secs(60);

impl Default for StanzaLimits {
    /// Defaults for registered users, no looser than Prosody's and ejabberd's
    /// shipped configurations where they have an equivalent (see docs/limits.md).
    fn default() -> Self {
        StanzaLimits {
            // ejabberd's example config: max_user_sessions 10.
            resources_per_account: Some(10),
            distinct_recipients: Some(PerPeriod::new(50, MINUTE)),
            // ejabberd's `normal` shaper (3000 B/s, burst 20000) is stricter than
            // Prosody's mod_limits example (10 kB/s, 2 s burst); the stricter applies.
            bandwidth: Some(Bandwidth {
                bytes_per_second: 3000,
                burst_bytes: 20000,
            }),
            account_bandwidth: Some(Bandwidth {
                bytes_per_second: 10000,
                burst_bytes: 60000,
            }),
            // Long enough that one stanza of the default maximum size (256 KiB) read at
            // the default rate (20000 burst + 3000 B/s x 120 s) is slowed, not closed.
            bandwidth_close_after: Duration::from_secs(120),
            roster_requests: Some(PerPeriod::new(10, MINUTE)),
            // ejabberd mod_pres_counter: count 5, interval 60.
            subscription_requests: Some(PerPeriod::new(5, MINUTE)),
            presence_broadcasts: Some(PerPeriod::new(30, MINUTE)),
            muc_messages: Some(PerPeriod::new(60, MINUTE)),
            muc_presences: Some(PerPeriod::new(20, MINUTE)),
            // ejabberd mod_muc max_user_conferences: 100.
            rooms_joined: Some(100),
            pubsub_publishes: Some(PerPeriod::new(60, MINUTE)),
            payloads: vec![PayloadRule {
                // XEP-0008 IQ-based avatars: obsolete, and a way to push large blobs.
                namespace: "jabber:iq:avatar".into(),
                direction: PayloadDirection::Both,
                error: PayloadError::NotAllowed,
            }],
        }
    }
}

impl StanzaLimits {
    /// XEP-0205 §3: anonymous users (SASL ANONYMOUS, XEP-0175) are unknown to the
    /// server and get stricter defaults.
    pub fn anonymous_default() -> Self {
        let registered = StanzaLimits::default();
        StanzaLimits {
            resources_per_account: Some(1),
            distinct_recipients: Some(PerPeriod::new(5, MINUTE)),
            bandwidth: Some(Bandwidth {
                bytes_per_second: 1000,
                burst_bytes: 10000,
            }),
            subscription_requests: Some(PerPeriod::new(1, MINUTE)),
            rooms_joined: Some(5),
            pubsub_publishes: Some(PerPeriod::new(5, MINUTE)),
            payloads: {
                let mut p = registered.payloads.clone();
                for ns in ["http://jabber.org/protocol/ibb", "jabber:iq:register"] {
                    p.push(PayloadRule {
                        namespace: ns.into(),
                        direction: PayloadDirection::ToServer,
                        error: PayloadError::NotAllowed,
                    });
                }
                p
            },
            ..registered
        }
    }

    /// Admins and trusted peers: no stanza limits beyond the stream's own.
    pub fn trusted_default() -> Self {
        StanzaLimits {
            resources_per_account: None,
            distinct_recipients: None,
            bandwidth: None,
            account_bandwidth: None,
            bandwidth_close_after: Duration::from_secs(60),
            roster_requests: None,
            subscription_requests: None,
            presence_broadcasts: None,
            muc_messages: None,
            muc_presences: None,
            rooms_joined: None,
            pubsub_publishes: None,
            payloads: Vec::new(),
        }
    }
}

/// Limits at the binding level, before a stream (XEP-0205 §2.1, §2.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateLimits {
    pub max_connections_per_address: Option<u32>,
    pub connection_attempts: Option<PerPeriod>,
    /// IPv4 addresses are grouped by this prefix length (default 32: each address).
    pub ipv4_prefix: u8,
    /// IPv6 addresses are grouped by this prefix length (default 64: one host's subnet).
    pub ipv6_prefix: u8,
    /// Never refused, exempt from the caps, and trusted for stanza limits.
    pub allow: CidrList,
    /// Refused at once.
    pub deny: CidrList,
    /// Hard cap on addresses tracked at once.
    pub max_tracked_addresses: usize,
}

impl Default for GateLimits {
    fn default() -> Self {
        GateLimits {
            max_connections_per_address: Some(10),
            connection_attempts: Some(PerPeriod::new(30, MINUTE)),
            ipv4_prefix: 32,
            ipv6_prefix: 64,
            allow: CidrList::default(),
            deny: CidrList::default(),
            max_tracked_addresses: 100_000,
        }
    }
}

/// Authentication failures (XEP-0205 §2.3; ejabberd's mod_fail2ban is the anchor:
/// 20 failures within an hour ban the address for an hour).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthLimits {
    pub max_failures: Option<PerPeriod>,
    pub ban: Duration,
    /// Delay before a SASL failure is relayed to the client.
    pub tarpit: Duration,
}

impl Default for AuthLimits {
    fn default() -> Self {
        AuthLimits {
            max_failures: Some(PerPeriod::new(20, Duration::from_secs(3600))),
            ban: Duration::from_secs(3600),
            tarpit: Duration::ZERO,
        }
    }
}

/// Limits on what remote servers and external components send (XEP-0205 §2.6,
/// §2.7, §2.8 applied to peer streams): per remote domain, and per remote sender
/// where a per-user limit makes sense. Counted across every stream of the domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerLimits {
    /// Stanzas per remote domain (the stanza's `from` domain on the s2s front, the
    /// component's domain on the component front; its `to` domain on the egress).
    pub stanzas_per_domain: Option<PerPeriod>,
    /// Distinct local recipients per remote sender (bare JID), XEP-0205 §2.6.
    pub distinct_recipients: Option<PerPeriod>,
    /// Presence subscription requests per remote domain.
    pub subscription_requests: Option<PerPeriod>,
    /// Hard cap on remote domains tracked at once.
    pub max_tracked_domains: usize,
    /// Hard cap on remote senders tracked at once.
    pub max_tracked_senders: usize,
}

impl Default for PeerLimits {
    /// Off, except a generous distinct-recipient limit per remote sender: a remote
    /// user has no business writing to more than 100 local strangers a minute.
    fn default() -> Self {
        PeerLimits {
            stanzas_per_domain: None,
            distinct_recipients: Some(PerPeriod::new(100, Duration::from_secs(60))),
            subscription_requests: None,
            max_tracked_domains: 10_000,
            max_tracked_senders: 100_000,
        }
    }
}

/// Every limit, with the tiers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsConfig {
    pub gate: GateLimits,
    pub auth: AuthLimits,
    pub registered: StanzaLimits,
    pub anonymous: StanzaLimits,
    pub trusted: StanzaLimits,
    /// Bare JIDs given the trusted tier (admins, bots the operator runs).
    pub trusted_jids: Vec<String>,
    /// Hard cap on accounts tracked at once.
    pub max_tracked_accounts: usize,
    /// Remote servers and components (`[limits.peers]`).
    pub peers: PeerLimits,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            gate: GateLimits::default(),
            auth: AuthLimits::default(),
            registered: StanzaLimits::default(),
            anonymous: StanzaLimits::anonymous_default(),
            trusted: StanzaLimits::trusted_default(),
            trusted_jids: Vec::new(),
            max_tracked_accounts: 100_000,
            peers: PeerLimits::default(),
        }
    }
}

/// The tier a stream's limits come from (XEP-0205 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UserClass {
    Anonymous,
    Registered,
    Trusted,
}

impl UserClass {
    pub fn name(self) -> &'static str {
        match self {
            UserClass::Anonymous => "anonymous",
            UserClass::Registered => "registered",
            UserClass::Trusted => "trusted",
        }
    }
}

impl LimitsConfig {
    pub fn for_class(&self, class: UserClass) -> &StanzaLimits {
        match class {
            UserClass::Anonymous => &self.anonymous,
            UserClass::Registered => &self.registered,
            UserClass::Trusted => &self.trusted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_period_reads_count_and_period() {
        assert_eq!(
            PerPeriod::parse("20/1h").unwrap(),
            PerPeriod::new(20, Duration::from_secs(3600))
        );
        assert_eq!(
            PerPeriod::parse(" 5 / 60s ").unwrap(),
            PerPeriod::new(5, Duration::from_secs(60))
        );
        assert!(PerPeriod::parse("20").unwrap_err().contains("COUNT/PERIOD"));
        assert!(PerPeriod::parse("x/1h").is_err());
        assert!(PerPeriod::parse("3/0s").is_err());
    }

    #[test]
    fn anonymous_tier_is_stricter_than_registered() {
        let r = StanzaLimits::default();
        let a = StanzaLimits::anonymous_default();
        assert!(a.resources_per_account < r.resources_per_account);
        assert!(a.distinct_recipients.unwrap().count < r.distinct_recipients.unwrap().count);
        assert!(a.bandwidth.unwrap().bytes_per_second < r.bandwidth.unwrap().bytes_per_second);
        assert!(a.payloads.len() > r.payloads.len());
    }
}
