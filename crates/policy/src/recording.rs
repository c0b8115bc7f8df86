//! The stanza recording format, and replaying a policy against it.
//!
//! A recording is JSON Lines: one object per stanza, in the order xmppwall saw them
//! (see docs/policy.md). xmppwall writes one when `[record] path` is set;
//! `xmppwall replay` evaluates a policy against it without touching the network, so
//! an operator sees what each rule would do before enabling it.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::limits::UserClass;
use crate::rules::{Action, Hook, Marks, Policy, Subject};
use crate::stanza::Stanza;

/// One recorded stanza.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Milliseconds since the Unix epoch.
    pub t: u64,
    /// `"to-server"` or `"to-client"`.
    pub dir: String,
    /// The client's address.
    pub ip: IpAddr,
    /// `"anonymous"`, `"registered"` or `"trusted"`.
    pub class: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mechanism: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// The stanza's bytes as they crossed xmppwall.
    pub stanza: String,
}

impl Record {
    pub fn new(hook: Hook, subject: &Subject<'_>, stanza: &[u8], wall: SystemTime) -> Record {
        Record {
            t: wall
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            dir: hook.chain_name().to_owned(),
            ip: subject.ip,
            class: subject.class.name().to_owned(),
            mechanism: subject.mechanism.map(str::to_owned),
            account: subject.account.map(str::to_owned),
            stanza: String::from_utf8_lossy(stanza).into_owned(),
        }
    }

    /// The line written to a recording file (with its newline).
    pub fn to_line(&self) -> String {
        let mut line = serde_json::to_string(self).unwrap_or_default();
        line.push('\n');
        line
    }
}

/// What one rule did over a replay.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleTally {
    pub decided: u64,
    pub matched_side_effects_only: u64,
    pub shadow: u64,
}

/// The outcome of replaying a recording.
#[derive(Debug, Default)]
pub struct Replay {
    /// Per record (line number, 1-based): the verdict and the deciding rule.
    pub verdicts: Vec<(usize, String, Option<String>)>,
    pub rules: BTreeMap<String, RuleTally>,
    /// Lines that could not be read, with why.
    pub bad_lines: Vec<(usize, String)>,
}

/// A short name for an action, for reports.
pub fn action_name(action: &Action) -> String {
    match action {
        Action::Continue | Action::Pass => "pass".into(),
        Action::Drop => "drop".into(),
        Action::Bounce(e) => format!("bounce({})", e.condition),
        Action::Close(e) => format!("close({})", e.condition.name()),
        Action::Jump(_) => "jump".into(),
    }
}

/// Evaluates `policy` against every record of `text` (a JSON Lines recording).
/// Marks set by rules carry over between records of one account, as live; time
/// windows see each record's own time.
pub fn replay(policy: &Policy, text: &str) -> Replay {
    let mut out = Replay::default();
    let mut marks: BTreeMap<String, Marks> = BTreeMap::new();
    let start = Instant::now();
    let mut first_t = None;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let record: Record = match serde_json::from_str(line) {
            Ok(r) => r,
            Err(e) => {
                out.bad_lines.push((n, e.to_string()));
                continue;
            }
        };
        let hook = match record.dir.as_str() {
            "to-server" => Hook::ToServer,
            "to-client" => Hook::ToClient,
            other => {
                out.bad_lines.push((n, format!("unknown dir {other:?}")));
                continue;
            }
        };
        let class = match record.class.as_str() {
            "anonymous" => UserClass::Anonymous,
            "trusted" => UserClass::Trusted,
            _ => UserClass::Registered,
        };
        let Some(stanza) = Stanza::parse(record.stanza.as_bytes()) else {
            out.bad_lines.push((n, "not a stanza".into()));
            continue;
        };
        let first = *first_t.get_or_insert(record.t);
        let now = start + Duration::from_millis(record.t.saturating_sub(first));
        let wall = UNIX_EPOCH + Duration::from_millis(record.t);
        let key = record.account.clone().unwrap_or_default();
        let account_marks = marks.entry(key).or_default();
        let subject = Subject {
            ip: record.ip,
            class,
            mechanism: record.mechanism.as_deref(),
            account: record.account.as_deref(),
            marks: account_marks,
            stranger: None,
            front: crate::rules::StreamFront::C2s,
            peer_domain: None,
            peer_auth: None,
        };
        let decision = policy.evaluate(hook, Some(&stanza), &subject, now, wall);
        for (rule, effects) in &decision.effects {
            let tally = out.rules.entry(rule.clone()).or_default();
            if decision.rule.as_deref() != Some(rule.as_str()) {
                tally.matched_side_effects_only += 1;
            }
            if let Some(mark) = &effects.mark {
                account_marks.set(&mark.name, now + mark.expires);
            }
        }
        for (rule, _) in &decision.shadowed {
            out.rules.entry(rule.clone()).or_default().shadow += 1;
        }
        if let Some(rule) = &decision.rule {
            out.rules.entry(rule.clone()).or_default().decided += 1;
        }
        out.verdicts
            .push((n, action_name(decision.verdict()), decision.rule.clone()));
    }
    out
}
