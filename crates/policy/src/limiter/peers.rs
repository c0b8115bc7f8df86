//! XEP-0205 on server-to-server and component streams.
//!
//! A remote server or an external component speaks for whole domains, so the
//! per-account limits of a client stream do not fit it. What does (XEP-0205 §2.6,
//! §2.7, §2.8 say "connected client or peer server"):
//!
//! - a stanza rate per remote domain (the "karma" of §2.7 counted in stanzas, shared
//!   by every stream of that domain), bounced `wait` + `<policy-violation/>`;
//! - distinct local recipients per remote sender (bare JID), §2.6, bounced exactly
//!   as for a client: `wait` + `<unexpected-request/>` + `<too-many-stanzas/>`; local
//!   users who wrote to the remote sender (seen leaving through the egress or to a
//!   component) are correspondents and do not count;
//! - presence subscription requests per remote domain, bounced `wait` +
//!   `<policy-violation/>`.
//!
//! Towards a remote server (the egress), the per-domain rate applies by the
//! destination domain; a refusal there is a drop, since nothing can reach the local
//! sender on a one-way stream (the caller turns a bounce into a drop anyway).
//!
//! Both tables are bounded: idle entries are trimmed from the least recently used
//! end, and when a table is still full its least recently used entry is evicted and
//! counted.

use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use super::{distinct_recipient_in, rate_error, LimitKind, Limiter, Verdict};
use crate::limits::{PeerLimits, PerPeriod};
use crate::rate::TokenBucket;
use crate::stanza::{bare_jid, Kind, Stanza};
use crate::table::BoundedTable;

/// Correspondents remembered per remote sender.
const CORRESPONDENTS_PER_SENDER: usize = 64;

#[derive(Debug)]
pub(super) struct PeerTables {
    domains: Mutex<BoundedTable<String, DomainState>>,
    senders: Mutex<BoundedTable<String, SenderState>>,
}

#[derive(Debug, Default)]
struct DomainState {
    stanzas: TokenBucket,
    subscriptions: TokenBucket,
}

impl DomainState {
    fn idle(&self, now: Instant) -> bool {
        self.stanzas.is_full(now) && self.subscriptions.is_full(now)
    }
}

#[derive(Debug)]
struct SenderState {
    /// The last time the sender wrote or was written to: past one period of the
    /// recipient limit, nothing in the entry matters any more.
    last: Instant,
    recipients: Option<BoundedTable<String, Instant>>,
    correspondents: Option<BoundedTable<String, Instant>>,
}

impl SenderState {
    fn new(now: Instant) -> SenderState {
        SenderState {
            last: now,
            recipients: None,
            correspondents: None,
        }
    }
}

impl PeerTables {
    pub(super) fn new(config: &PeerLimits) -> PeerTables {
        PeerTables {
            domains: Mutex::new(BoundedTable::new(
                "peer-domains",
                config.max_tracked_domains,
            )),
            senders: Mutex::new(BoundedTable::new(
                "peer-senders",
                config.max_tracked_senders,
            )),
        }
    }

    fn domains(&self) -> MutexGuard<'_, BoundedTable<String, DomainState>> {
        self.domains.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn senders(&self) -> MutexGuard<'_, BoundedTable<String, SenderState>> {
        self.senders.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// (entries, cap, evictions) of the domain and the sender tables.
    pub(super) fn snapshot(&self) -> ((usize, usize, u64), (usize, usize, u64)) {
        let d = self.domains();
        let domains = (d.len(), d.cap(), d.evictions());
        drop(d);
        let s = self.senders();
        (domains, (s.len(), s.cap(), s.evictions()))
    }

    /// Takes one token from `domain`'s bucket chosen by `bucket`; `false` when empty.
    fn take(
        &self,
        domain: &str,
        limit: PerPeriod,
        bucket: fn(&mut DomainState) -> &mut TokenBucket,
        now: Instant,
    ) -> bool {
        let mut table = self.domains();
        table.trim_idle(|d| d.idle(now));
        let entry = table.entry_ref(&domain.to_owned(), DomainState::default);
        bucket(entry).try_take(&limit.rate(), 1.0, now).is_ok()
    }

    /// The sender's entry (made if absent), idle entries trimmed first.
    fn with_sender<R>(
        &self,
        sender: &str,
        period: Option<PerPeriod>,
        now: Instant,
        f: impl FnOnce(&mut SenderState) -> R,
    ) -> R {
        let mut table = self.senders();
        if let Some(limit) = period {
            table.trim_idle(|s| now.saturating_duration_since(s.last) >= limit.period);
        }
        let entry = table.entry_ref(&sender.to_owned(), || SenderState::new(now));
        entry.last = now;
        f(entry)
    }
}

/// Whether a message counts towards distinct recipients from a remote sender:
/// not errors, groupchat (a remote room to its local occupants) or headlines
/// (publish-subscribe notifications, XEP-0163, fan out to every subscriber).
fn counted_message(ty: Option<&str>) -> bool {
    !matches!(ty, Some("error" | "groupchat" | "headline"))
}

impl Limiter {
    /// XEP-0205 for a stanza a remote server or a component sends towards the
    /// server; `domain` is the peer domain it was authenticated for.
    pub fn check_peer_inbound(&self, domain: &str, stanza: &Stanza<'_>, now: Instant) -> Verdict {
        let limits = &self.config.peers;
        let verdict = self.peer_inbound(limits, domain, stanza, now);
        if let Verdict::Bounce(kind, _) | Verdict::Drop(kind) | Verdict::Close(kind, _) = &verdict {
            self.state.hit(*kind);
        }
        verdict
    }

    fn peer_inbound(
        &self,
        limits: &PeerLimits,
        domain: &str,
        stanza: &Stanza<'_>,
        now: Instant,
    ) -> Verdict {
        let peers = &self.state.peers;
        if let Some(limit) = limits.stanzas_per_domain {
            // Every stanza counts, errors too: a refused error is dropped, not
            // answered (RFC 6120 §8.3.1).
            if !peers.take(domain, limit, |d| &mut d.stanzas, now) {
                return Verdict::Bounce(
                    LimitKind::PeerStanzas,
                    rate_error(&format!("stanzas from {domain}"), limit),
                );
            }
        }
        let ty = stanza.stanza_type();
        let ty = ty.as_deref();
        let subscribe = stanza.kind == Kind::Presence && ty == Some("subscribe");
        if subscribe {
            if let Some(limit) = limits.subscription_requests {
                if !peers.take(domain, limit, |d| &mut d.subscriptions, now) {
                    return Verdict::Bounce(
                        LimitKind::PeerSubscriptions,
                        rate_error(&format!("subscription requests from {domain}"), limit),
                    );
                }
            }
        }
        let counted = subscribe || (stanza.kind == Kind::Message && counted_message(ty));
        let Some(limit) = limits.distinct_recipients.filter(|_| counted) else {
            return Verdict::Pass;
        };
        let (Some(from), Some(to)) = (stanza.from(), stanza.to()) else {
            return Verdict::Pass;
        };
        let sender = bare_jid(&from);
        // A service (a bare domain: a MUC or publish-subscribe service, a gateway)
        // is bounded by the per-domain limits only.
        if !sender.contains('@') {
            return Verdict::Pass;
        }
        peers.with_sender(
            &sender,
            Some(limit),
            now,
            |entry| match distinct_recipient_in(
                &mut entry.recipients,
                entry.correspondents.as_ref(),
                limit,
                &sender,
                &to,
                now,
            ) {
                Ok(()) => Verdict::Pass,
                Err(e) => Verdict::Bounce(LimitKind::PeerRecipients, e),
            },
        )
    }

    /// XEP-0205 for a stanza the server sends to a remote server or a component:
    /// with `domain` (the egress: the destination domain) the per-domain stanza
    /// rate, as a drop (the local sender cannot be answered on a one-way stream);
    /// and, always, the local sender of a message becomes a correspondent of the
    /// remote recipient, whose replies to it are then not distinct recipients.
    pub fn check_peer_outbound(
        &self,
        domain: Option<&str>,
        stanza: &Stanza<'_>,
        now: Instant,
    ) -> Verdict {
        let limits = &self.config.peers;
        if let (Some(domain), Some(limit)) = (domain, limits.stanzas_per_domain) {
            if !self
                .state
                .peers
                .take(domain, limit, |d| &mut d.stanzas, now)
            {
                self.state.hit(LimitKind::PeerStanzas);
                return Verdict::Drop(LimitKind::PeerStanzas);
            }
        }
        let Some(limit) = limits.distinct_recipients else {
            return Verdict::Pass;
        };
        let ty = stanza.stanza_type();
        if stanza.kind != Kind::Message || !counted_message(ty.as_deref()) {
            return Verdict::Pass;
        }
        let (Some(from), Some(to)) = (stanza.from(), stanza.to()) else {
            return Verdict::Pass;
        };
        let remote = bare_jid(&to);
        if !remote.contains('@') {
            return Verdict::Pass;
        }
        let local = bare_jid(&from);
        self.state
            .peers
            .with_sender(&remote, Some(limit), now, |entry| {
                let correspondents = entry.correspondents.get_or_insert_with(|| {
                    BoundedTable::new("peer-correspondents", CORRESPONDENTS_PER_SENDER)
                });
                *correspondents.entry(local, || now) = now;
            });
        Verdict::Pass
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::errors::ErrorType;
    use crate::limits::LimitsConfig;

    const MINUTE: Duration = Duration::from_secs(60);

    fn limiter(peers: PeerLimits) -> Limiter {
        Limiter::new(LimitsConfig {
            peers,
            ..LimitsConfig::default()
        })
    }

    fn off() -> PeerLimits {
        PeerLimits {
            stanzas_per_domain: None,
            distinct_recipients: None,
            subscription_requests: None,
            ..PeerLimits::default()
        }
    }

    fn per(count: u32, period: Duration) -> Option<PerPeriod> {
        Some(PerPeriod::new(count, period))
    }

    fn inbound(l: &Limiter, domain: &str, xml: &str, now: Instant) -> Verdict {
        let stanza = Stanza::parse(xml.as_bytes()).expect("a stanza");
        l.check_peer_inbound(domain, &stanza, now)
    }

    fn message(from: &str, to: &str) -> String {
        format!("<message from='{from}/r' to='{to}' type='chat'><body>hi</body></message>")
    }

    #[test]
    fn defaults_limit_only_distinct_recipients_per_remote_sender() {
        let d = PeerLimits::default();
        assert_eq!(d.stanzas_per_domain, None);
        assert_eq!(d.subscription_requests, None);
        assert_eq!(d.distinct_recipients, per(100, MINUTE));
    }

    #[test]
    fn stanzas_per_domain_bounce_with_wait_policy_violation_and_refill() {
        let l = limiter(PeerLimits {
            stanzas_per_domain: per(3, MINUTE),
            ..off()
        });
        let t0 = Instant::now();
        let m = message("carol@remote.test", "bob@example.test");
        for _ in 0..3 {
            assert_eq!(inbound(&l, "remote.test", &m, t0), Verdict::Pass);
        }
        let Verdict::Bounce(kind, error) = inbound(&l, "remote.test", &m, t0) else {
            panic!("the fourth stanza within a minute passed");
        };
        assert_eq!(kind, LimitKind::PeerStanzas);
        assert_eq!(error.error_type, ErrorType::Wait);
        assert_eq!(error.condition, "policy-violation");
        assert_eq!(error.app_condition, None);
        assert_eq!(
            error.text.as_deref(),
            Some("too many stanzas from remote.test: at most 3 per 1m")
        );
        // Another domain has its own bucket.
        let other = message("eve@other.test", "bob@example.test");
        assert_eq!(inbound(&l, "other.test", &other, t0), Verdict::Pass);
        // One stanza's worth refills in 20 s.
        assert_eq!(
            inbound(&l, "remote.test", &m, t0 + Duration::from_secs(20)),
            Verdict::Pass
        );
        assert!(matches!(
            inbound(&l, "remote.test", &m, t0 + Duration::from_secs(20)),
            Verdict::Bounce(LimitKind::PeerStanzas, _)
        ));
        assert_eq!(l.state.hits(LimitKind::PeerStanzas), 2);
    }

    #[test]
    fn distinct_recipients_per_remote_sender_as_xep_0205_section_2_6() {
        let l = limiter(PeerLimits {
            distinct_recipients: per(2, MINUTE),
            ..off()
        });
        let t0 = Instant::now();
        let carol = "carol@remote.test";
        for to in ["a@example.test", "b@example.test", "a@example.test"] {
            assert_eq!(
                inbound(&l, "remote.test", &message(carol, to), t0),
                Verdict::Pass
            );
        }
        let Verdict::Bounce(kind, error) =
            inbound(&l, "remote.test", &message(carol, "c@example.test"), t0)
        else {
            panic!("a third distinct recipient passed");
        };
        assert_eq!(kind, LimitKind::PeerRecipients);
        assert_eq!(error.error_type, ErrorType::Wait);
        assert_eq!(error.condition, "unexpected-request");
        assert_eq!(error.app_condition, Some("too-many-stanzas"));
        // Per sender: another user of the same domain is not affected.
        assert_eq!(
            inbound(
                &l,
                "remote.test",
                &message("dave@remote.test", "c@example.test"),
                t0
            ),
            Verdict::Pass
        );
        // Groupchat, headlines and errors are not counted; presence subscriptions are.
        for ty in ["groupchat", "headline", "error"] {
            let m = format!("<message from='{carol}/r' to='z@example.test' type='{ty}'/>");
            assert_eq!(inbound(&l, "remote.test", &m, t0), Verdict::Pass, "{ty}");
        }
        let sub = format!("<presence from='{carol}' to='y@example.test' type='subscribe'/>");
        assert!(matches!(
            inbound(&l, "remote.test", &sub, t0),
            Verdict::Bounce(LimitKind::PeerRecipients, _)
        ));
        // A service (no local part) is bounded per domain only.
        let room = "<message from='conference.remote.test' to='x@example.test'/>";
        assert_eq!(inbound(&l, "remote.test", room, t0), Verdict::Pass);
        // One period after the last write, the window is empty again.
        assert_eq!(
            inbound(
                &l,
                "remote.test",
                &message(carol, "c@example.test"),
                t0 + MINUTE
            ),
            Verdict::Pass
        );
    }

    #[test]
    fn local_users_who_wrote_first_are_correspondents() {
        let l = limiter(PeerLimits {
            distinct_recipients: per(1, MINUTE),
            ..off()
        });
        let t0 = Instant::now();
        let carol = "carol@remote.test";
        assert_eq!(
            inbound(&l, "remote.test", &message(carol, "a@example.test"), t0),
            Verdict::Pass
        );
        let out = Stanza::parse(
            b"<message from='b@example.test/desk' to='carol@remote.test' type='chat'/>",
        )
        .expect("a stanza");
        assert_eq!(l.check_peer_outbound(None, &out, t0), Verdict::Pass);
        // A reply to b is not a new recipient; c still is.
        assert_eq!(
            inbound(&l, "remote.test", &message(carol, "b@example.test"), t0),
            Verdict::Pass
        );
        assert!(matches!(
            inbound(&l, "remote.test", &message(carol, "c@example.test"), t0),
            Verdict::Bounce(LimitKind::PeerRecipients, _)
        ));
    }

    #[test]
    fn subscription_requests_per_remote_domain() {
        let l = limiter(PeerLimits {
            subscription_requests: per(2, MINUTE),
            ..off()
        });
        let t0 = Instant::now();
        let sub = |from: &str| {
            format!("<presence from='{from}' to='bob@example.test' type='subscribe'/>")
        };
        assert_eq!(
            inbound(&l, "remote.test", &sub("a@remote.test"), t0),
            Verdict::Pass
        );
        assert_eq!(
            inbound(&l, "remote.test", &sub("b@remote.test"), t0),
            Verdict::Pass
        );
        let Verdict::Bounce(kind, error) = inbound(&l, "remote.test", &sub("c@remote.test"), t0)
        else {
            panic!("a third subscription request from the domain passed");
        };
        assert_eq!(kind, LimitKind::PeerSubscriptions);
        assert_eq!(error.condition, "policy-violation");
        assert_eq!(
            error.text.as_deref(),
            Some("too many subscription requests from remote.test: at most 2 per 1m")
        );
        // Other presence is not a subscription request.
        let available = "<presence from='c@remote.test/r' to='bob@example.test'/>";
        assert_eq!(inbound(&l, "remote.test", available, t0), Verdict::Pass);
    }

    #[test]
    fn egress_rate_per_destination_domain_drops() {
        let l = limiter(PeerLimits {
            stanzas_per_domain: per(1, MINUTE),
            ..off()
        });
        let t0 = Instant::now();
        let out = Stanza::parse(b"<message from='b@example.test/desk' to='carol@remote.test'/>")
            .expect("a stanza");
        assert_eq!(
            l.check_peer_outbound(Some("remote.test"), &out, t0),
            Verdict::Pass
        );
        assert_eq!(
            l.check_peer_outbound(Some("remote.test"), &out, t0),
            Verdict::Drop(LimitKind::PeerStanzas)
        );
    }

    #[test]
    fn tables_are_bounded_and_evictions_counted() {
        let l = limiter(PeerLimits {
            stanzas_per_domain: per(10, MINUTE),
            distinct_recipients: per(10, MINUTE),
            max_tracked_domains: 16,
            max_tracked_senders: 16,
            ..off()
        });
        let t0 = Instant::now();
        for i in 0..20 {
            let domain = format!("d{i}.test");
            let m = message(&format!("u@{domain}"), "bob@example.test");
            assert_eq!(inbound(&l, &domain, &m, t0), Verdict::Pass);
        }
        let snapshot = l.state.snapshot();
        assert_eq!(snapshot.peer_domains, (16, 16, 4));
        assert_eq!(snapshot.peer_senders, (16, 16, 4));
        // Idle entries go first, without counting as evictions.
        let later = t0 + 2 * MINUTE;
        let m = message("u@fresh.test", "bob@example.test");
        assert_eq!(inbound(&l, "fresh.test", &m, later), Verdict::Pass);
        let snapshot = l.state.snapshot();
        assert_eq!(snapshot.peer_domains, (1, 16, 4));
        assert_eq!(snapshot.peer_senders, (1, 16, 4));
        assert!(snapshot
            .to_string()
            .contains("peer_domains=1/16 peer_domain_evictions=4"));
    }
}
