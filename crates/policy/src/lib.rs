//! xmppwall's limits and policy: what may pass, decided without I/O.
//!
//! The built-in limits of XEP-0205 ([`limiter`]) over bounded state ([`table`]),
//! token buckets with an injected clock ([`rate`]), address grouping and CIDR lists
//! ([`address`]), the lazy stanza view limits read ([`stanza`]), and the exact error
//! stanzas a refused peer receives ([`errors`]).
#![forbid(unsafe_code)]

pub mod address;
pub mod antispam;
pub mod bans;
pub mod blocklist;
pub mod clock;
pub mod contacts;
pub mod errors;
pub mod limiter;
pub mod limits;
pub mod rate;
pub mod recording;
pub mod reports;
pub mod reputation;
pub mod rules;
pub mod stanza;
pub mod table;

pub use limiter::{
    BanEvent, ConnectionLimits, ConnectionTicket, GateDecision, LimitKind, Limiter, LimiterState,
    Throttle, Verdict,
};
pub use limits::{LimitsConfig, PerPeriod, UserClass};
