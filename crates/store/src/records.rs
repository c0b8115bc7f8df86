//! The records the store keeps, as the rest of xmppwall sees them.

use std::net::IpAddr;
use std::time::SystemTime;

use ipnet::IpNet;

/// A ban on an address or network.
#[derive(Debug, Clone, PartialEq)]
pub struct Ban {
    /// What is banned: one address (`/32`, `/128`) or the group the gate counts by.
    pub network: IpNet,
    pub created: SystemTime,
    pub expires: SystemTime,
    /// Who banned: `auth_failures`, `rule:NAME`, `admin`, ...
    pub source: String,
    /// Why, in the operator's or the rule's words.
    pub reason: String,
}

impl Ban {
    pub fn new(
        network: IpNet,
        created: SystemTime,
        expires: SystemTime,
        source: impl Into<String>,
        reason: impl Into<String>,
    ) -> Ban {
        Ban {
            network: network.trunc(),
            created,
            expires,
            source: source.into(),
            reason: reason.into(),
        }
    }

    pub fn is_active(&self, now: SystemTime) -> bool {
        self.expires > now
    }
}

/// A ban the operator set (admin API) on an address or prefix, an account or a
/// domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorBan {
    /// `address`, `account` or `domain`.
    pub kind: String,
    /// The address or prefix (CIDR), bare JID or domain.
    pub target: String,
    pub created: SystemTime,
    /// `None`: until lifted.
    pub until: Option<SystemTime>,
    pub reason: Option<String>,
}

/// A spam or abuse report (XEP-0377, or a rule's `report` effect).
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Assigned by the store; ignored by [`crate::Store::add_report`].
    pub id: i64,
    pub at: SystemTime,
    /// Who reported: a JID, or `rule:NAME`.
    pub reporter: String,
    /// Whom the report is about: a JID or an address.
    pub subject: String,
    /// `spam`, `abuse`, or a rule's reason.
    pub reason: String,
    /// Free text the reporter added (never a stanza body unless the reporter put it there).
    pub text: Option<String>,
    /// The ids of the reported stanzas (XEP-0359 `by/id`), if the report names any.
    pub stanza_ids: Vec<String>,
}

/// A subject's (JID's or address's) standing.
#[derive(Debug, Clone, PartialEq)]
pub struct Reputation {
    pub subject: String,
    pub score: f64,
    /// When the score last changed; `None`: never.
    pub updated: Option<SystemTime>,
}

/// One connection, from accept to close.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionRecord {
    pub address: IpAddr,
    /// The bound full JID, if the stream got that far.
    pub jid: Option<String>,
    /// `c2s`, ...
    pub front: String,
    pub started: SystemTime,
    pub ended: SystemTime,
    /// Bytes read from the client and written to it.
    pub bytes_from_client: u64,
    pub bytes_to_client: u64,
    /// Stanzas (top-level elements) forwarded each way.
    pub stanzas_to_server: u64,
    pub stanzas_to_client: u64,
    /// How it ended: `client closed`, `server closed`, a stream error condition, ...
    pub end_reason: String,
}

/// Which part of xmppwall gave a verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerdictSource {
    /// A built-in XEP-0205 limit.
    Limit,
    /// An operator's rule.
    Rule,
}

impl VerdictSource {
    pub fn as_str(self) -> &'static str {
        match self {
            VerdictSource::Limit => "limit",
            VerdictSource::Rule => "rule",
        }
    }

    pub(crate) fn parse(s: &str) -> VerdictSource {
        if s == "rule" {
            VerdictSource::Rule
        } else {
            VerdictSource::Limit
        }
    }
}

/// The addressing of a stanza a verdict was about (never its body).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StanzaSummary {
    /// `message`, `presence`, `iq`; `None` for a verdict on the connection itself.
    pub kind: Option<String>,
    /// The stanza's `type` attribute.
    pub stanza_type: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
}

/// A verdict other than pass.
#[derive(Debug, Clone, PartialEq)]
pub struct VerdictRecord {
    pub at: SystemTime,
    pub address: IpAddr,
    /// The account or bound JID, once known.
    pub jid: Option<String>,
    /// `connect`, `to-server`, `to-client`, `auth`, `bind`.
    pub hook: String,
    pub stanza: StanzaSummary,
    pub source: VerdictSource,
    /// The limit's or the rule's name.
    pub name: String,
    /// `drop`, `bounce`, `close`, `refuse`, `ban`, ...
    pub action: String,
}
