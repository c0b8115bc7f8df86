//! Applying the operator's policy to one event of any stream: evaluation, then the
//! side effects rules ask for (log lines, marks, reports, stripped children, bans).
//!
//! Shared by every front's session (c2s, s2s, component); sans-IO. It owns turning a
//! [`Decision`](xmppwall_policy::rules::Decision) into a [`PolicyOutcome`]; it must
//! not decide what a front does with the outcome (reply, drop, close).

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tracing::info;
use xmppwall_policy::recording::Record;
use xmppwall_policy::rules::{self, Action, Hook, LogPayload, MarkScope, Marks, Policy, Subject};
use xmppwall_policy::stanza::Stanza;
use xmppwall_policy::Limiter;

use xmppwall_store::{StanzaSummary, Store, VerdictRecord, VerdictSource};

use crate::recorder::Recorder;
use crate::stream_error::{StanzaError, StreamError};

/// What the rules decided, side effects applied.
#[derive(Debug)]
pub enum PolicyOutcome {
    /// Forward; with the stripped stanza when a rule removed children.
    Pass(Option<Vec<u8>>),
    Drop,
    Bounce(StanzaError),
    Close(StreamError),
}

/// Where a stream keeps what rules change: its marks, the account marks go to, and
/// the address a ban applies to (`subject.ip`).
pub struct StreamState<'a> {
    pub limiter: &'a Limiter,
    pub marks: &'a mut Marks,
    pub account: Option<&'a str>,
    pub recorder: Option<&'a Arc<Recorder>>,
    /// Where verdicts other than pass are recorded (the store's audit trail).
    pub audit: Option<&'a Store>,
    /// The account or bound JID, for the audit record.
    pub identity: Option<&'a str>,
}

impl StreamState<'_> {
    /// Queues an audit record of a rule's verdict (the stanza's addressing only).
    fn audit(
        &self,
        hook: Hook,
        stanza: Option<&Stanza<'_>>,
        ip: std::net::IpAddr,
        rule: &str,
        action: &str,
    ) {
        let Some(store) = self.audit else { return };
        store.record_verdict(VerdictRecord {
            at: SystemTime::now(),
            address: ip,
            jid: self.identity.map(str::to_owned),
            hook: hook.chain_name().to_owned(),
            stanza: stanza.map_or_else(StanzaSummary::default, |s| summary(&s.start)),
            source: VerdictSource::Rule,
            name: rule.to_owned(),
            action: action.to_owned(),
        });
    }
}

/// What the audit trail keeps of a stanza: its kind, type and addresses, never its
/// payload.
pub fn summary(tag: &xmppwall_xml::view::StartTag<'_>) -> StanzaSummary {
    StanzaSummary {
        kind: Some(String::from_utf8_lossy(tag.local_name()).into_owned()),
        stanza_type: tag.attribute(b"type").map(std::borrow::Cow::into_owned),
        from: tag.attribute(b"from").map(std::borrow::Cow::into_owned),
        to: tag.attribute(b"to").map(std::borrow::Cow::into_owned),
    }
}

/// Evaluates `hook` for `stanza` (none for stream events) and applies the side
/// effects. The caller built `subject` with the stream's marks merged in.
pub fn apply(
    policy: &Policy,
    hook: Hook,
    stanza: Option<&Stanza<'_>>,
    subject: &Subject<'_>,
    state: StreamState<'_>,
    now: Instant,
) -> PolicyOutcome {
    let wall = SystemTime::now();
    if let (Some(recorder), Some(stanza)) = (state.recorder, stanza) {
        recorder.record(Record::new(hook, subject, stanza.bytes, wall).to_line());
    }
    let decision = policy.evaluate(hook, stanza, subject, now, wall);
    let bytes = stanza.map_or(&[][..], |s| s.bytes);
    for (rule, action) in &decision.shadowed {
        info!(rule, hook = hook.chain_name(), would = ?action, digest = %rules::digest(bytes), "shadow rule matched");
    }
    let mut rewritten: Option<Vec<u8>> = None;
    let mut close = None;
    for (rule, effects) in &decision.effects {
        match effects.log {
            Some(LogPayload::Digest) => {
                info!(rule, hook = hook.chain_name(), digest = %rules::digest(bytes), "rule matched")
            }
            Some(LogPayload::Full) => {
                info!(rule, hook = hook.chain_name(), stanza = %String::from_utf8_lossy(bytes), "rule matched")
            }
            Some(LogPayload::None) => info!(rule, hook = hook.chain_name(), "rule matched"),
            None => {}
        }
        if let Some(mark) = &effects.mark {
            let until = now + mark.expires;
            match (mark.scope, state.account) {
                (MarkScope::Account, Some(account)) => {
                    state.limiter.mark_account(account, &mark.name, until)
                }
                _ => state.marks.set(&mark.name, until),
            }
        }
        if let Some(reason) = &effects.report {
            info!(rule, reason, account = ?state.account, peer_domain = ?subject.peer_domain, digest = %rules::digest(bytes), "report");
            // Whom the report is about: the sender of a stanza towards the client,
            // else the stream's own account.
            let offender = match hook {
                Hook::ToClient => stanza.and_then(|s| s.from()).map(|f| f.into_owned()),
                _ => state.account.map(str::to_owned),
            };
            if let Some(offender) = offender {
                let limiter = state.limiter;
                limiter.state.antispam.rule_report(
                    &limiter.antispam,
                    rule,
                    reason,
                    &offender,
                    now,
                    wall,
                );
            }
        }
        if !effects.strip.is_empty() {
            let current = rewritten.as_deref().unwrap_or(bytes);
            if let Some(out) = rules::strip_children(current, &effects.strip) {
                rewritten = Some(out);
            }
        }
        if let Some(duration) = effects.ban {
            let until = state.limiter.ban(subject.ip, duration, now, rule);
            state.audit(hook, stanza, subject.ip, rule, "ban");
            close = Some(xmppwall_policy::limiter::banned_error_for(until, rule));
        }
    }
    if let Some(error) = close {
        return PolicyOutcome::Close(error);
    }
    let action = match &decision.action {
        Some(Action::Drop) => Some("drop"),
        Some(Action::Bounce(_)) => Some("bounce"),
        Some(Action::Close(_)) => Some("close"),
        _ => None,
    };
    if let Some(action) = action {
        let rule = decision.rule.as_deref().unwrap_or("");
        state.audit(hook, stanza, subject.ip, rule, action);
    }
    match decision.action {
        None | Some(Action::Pass) | Some(Action::Continue) | Some(Action::Jump(_)) => {
            PolicyOutcome::Pass(rewritten)
        }
        Some(Action::Drop) => PolicyOutcome::Drop,
        Some(Action::Bounce(e)) => PolicyOutcome::Bounce(e),
        Some(Action::Close(e)) => PolicyOutcome::Close(e),
    }
}

/// The `connect` chain for a new connection on `front`: it sees only the address
/// (and the front). `Some(rule)` when a rule refuses it; the caller closes the
/// socket before a byte is read, like the gate.
pub fn connect_refused(
    policy: &Policy,
    ip: std::net::IpAddr,
    front: xmppwall_policy::rules::StreamFront,
) -> Option<Option<String>> {
    if !policy.has_hook(Hook::Connect) {
        return None;
    }
    let marks = Marks::default();
    let subject = Subject {
        ip: ip.to_canonical(),
        class: xmppwall_policy::UserClass::Registered,
        mechanism: None,
        account: None,
        marks: &marks,
        stranger: None,
        front,
        peer_domain: None,
        peer_auth: None,
    };
    let decision = policy.evaluate(
        Hook::Connect,
        None,
        &subject,
        Instant::now(),
        SystemTime::now(),
    );
    matches!(
        decision.verdict(),
        Action::Drop | Action::Bounce(_) | Action::Close(_)
    )
    .then(|| decision.rule.clone())
}
