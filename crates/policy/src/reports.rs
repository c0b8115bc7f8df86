//! Spam reports: what users report with XEP-0377 inside a XEP-0191 block command,
//! and what rules report with their `report` effect.
//!
//! Reading a report is sans-IO ([`SpamReport::read_block`]); where reports go is a
//! [`ReportSink`]: [`MemoryReports`] keeps the latest in a bounded buffer (nothing
//! survives a restart), and the proxy plugs in a durable one where a store is
//! configured. Recording a report never holds up the stanza that carried it.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

use xmppwall_xml::view;

pub const BLOCKING_NS: &str = "urn:xmpp:blocking";
/// XEP-0377 version 0.3 and later.
pub const REPORTING_NS: &str = "urn:xmpp:reporting:1";
/// XEP-0377 before version 0.3 (`<report><spam/></report>`), still sent by clients.
pub const REPORTING_NS_0: &str = "urn:xmpp:reporting:0";
const STANZA_ID_NS: &str = "urn:xmpp:sid:0";

/// What one report may hold, so that the reports kept (in memory and in the store)
/// cost a bounded amount each, whatever a block command carries: reports per
/// command, stanza ids per report, bytes per id, characters of text and of a
/// reason, and the longest reported JID (RFC 7622: 1023 bytes per part).
const MAX_REPORTS_PER_COMMAND: usize = 64;
const MAX_STANZA_IDS: usize = 16;
const MAX_STANZA_ID_BYTES: usize = 256;
const MAX_TEXT_CHARS: usize = 1000;
const MAX_JID_BYTES: usize = 3071;
const MAX_REASON_CHARS: usize = 256;

/// What a report says about one blocked JID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpamReport {
    /// The reported JID, as the block item names it.
    pub offender: String,
    /// `spam`, `abuse`, or the reason URI as given when it is another.
    pub reason: String,
    /// XEP-0359 stanza ids of the offending stanzas (`id`, with `by` when given:
    /// `by/id`).
    pub stanza_ids: Vec<String>,
    /// The reporter's own words, if any.
    pub text: Option<String>,
}

impl SpamReport {
    /// The reports in a block command (XEP-0191 §3.3): one per `<item/>` carrying a
    /// `<report/>` (XEP-0377 §3). Items without a report are plain blocks.
    pub fn read_block(iq: &[u8]) -> Vec<SpamReport> {
        let mut out = Vec::new();
        for block in view::children(iq) {
            if block.start.local_name() != b"block"
                || block.start.attribute(b"xmlns").as_deref() != Some(BLOCKING_NS)
            {
                continue;
            }
            let block = &iq[block.range];
            for item in view::children(block).filter(|c| c.start.local_name() == b"item") {
                let Some(jid) = item.start.attribute(b"jid") else {
                    continue;
                };
                if jid.len() > MAX_JID_BYTES || out.len() >= MAX_REPORTS_PER_COMMAND {
                    continue;
                }
                let item_bytes = &block[item.range];
                for report in view::children(item_bytes) {
                    let ns = report.start.attribute(b"xmlns");
                    if report.start.local_name() != b"report"
                        || !matches!(ns.as_deref(), Some(REPORTING_NS | REPORTING_NS_0))
                    {
                        continue;
                    }
                    let report_bytes = &item_bytes[report.range];
                    let mut reason = report
                        .start
                        .attribute(b"reason")
                        .map(|r| short_reason(&r).to_owned());
                    let mut stanza_ids = Vec::new();
                    let mut text = None;
                    for child in view::children(report_bytes) {
                        match child.start.local_name() {
                            b"stanza-id"
                                if child.start.attribute(b"xmlns").as_deref()
                                    == Some(STANZA_ID_NS) =>
                            {
                                if let Some(id) = child.start.attribute(b"id") {
                                    let id = match child.start.attribute(b"by") {
                                        Some(by) => format!("{by}/{id}"),
                                        None => id.into_owned(),
                                    };
                                    if stanza_ids.len() < MAX_STANZA_IDS
                                        && id.len() <= MAX_STANZA_ID_BYTES
                                    {
                                        stanza_ids.push(id);
                                    }
                                }
                            }
                            b"text" => {
                                let t = view::text(&report_bytes[child.range]);
                                let t = t.trim();
                                if !t.is_empty() {
                                    text = Some(t.chars().take(MAX_TEXT_CHARS).collect());
                                }
                            }
                            // Version 0: the reason is a child element.
                            b"spam" | b"abuse" if reason.is_none() => {
                                reason = Some(
                                    String::from_utf8_lossy(child.start.local_name()).into_owned(),
                                );
                            }
                            _ => {}
                        }
                    }
                    out.push(SpamReport {
                        offender: crate::stanza::bare_jid(&jid),
                        reason: reason.map_or_else(
                            || "spam".into(),
                            |r| r.chars().take(MAX_REASON_CHARS).collect(),
                        ),
                        stanza_ids,
                        text,
                    });
                }
            }
        }
        out
    }
}

fn short_reason(uri: &str) -> &str {
    match uri {
        "urn:xmpp:reporting:spam" => "spam",
        "urn:xmpp:reporting:abuse" => "abuse",
        other => other,
    }
}

/// One recorded report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportRecord {
    pub at: SystemTime,
    /// The reporting account's bare JID, or `rule:NAME`.
    pub reporter: String,
    pub offender: String,
    pub reason: String,
    pub stanza_ids: Vec<String>,
    pub text: Option<String>,
}

/// Where reports go.
pub trait ReportSink: Send + Sync + std::fmt::Debug {
    fn report(&self, report: ReportRecord);
}

/// Reports kept in memory, the latest [`MemoryReports::CAP`] at most.
#[derive(Debug, Default)]
pub struct MemoryReports {
    reports: Mutex<VecDeque<ReportRecord>>,
}

impl MemoryReports {
    pub const CAP: usize = 10_000;

    /// The reports kept, oldest first.
    pub fn recent(&self) -> Vec<ReportRecord> {
        let r = self.reports.lock().unwrap_or_else(|p| p.into_inner());
        r.iter().cloned().collect()
    }
}

impl ReportSink for MemoryReports {
    fn report(&self, report: ReportRecord) {
        let mut r = self.reports.lock().unwrap_or_else(|p| p.into_inner());
        if r.len() >= Self::CAP {
            r.pop_front();
        }
        r.push_back(report);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_in_block_commands_are_read_in_both_versions() {
        let iq = b"<iq type='set' id='b1'><block xmlns='urn:xmpp:blocking'>\
            <item jid='Spammer@Spam.example/res'><report xmlns='urn:xmpp:reporting:1' reason='urn:xmpp:reporting:spam'>\
            <stanza-id xmlns='urn:xmpp:sid:0' by='alice@example.org' id='28482-98726'/>\
            <text xml:lang='en'>Buy cheap pills</text></report></item>\
            <item jid='quiet@example.net'/>\
            <item jid='old@example.net'><report xmlns='urn:xmpp:reporting:0'><abuse/></report></item>\
            </block></iq>";
        assert_eq!(
            SpamReport::read_block(iq),
            vec![
                SpamReport {
                    offender: "spammer@spam.example".into(),
                    reason: "spam".into(),
                    stanza_ids: vec!["alice@example.org/28482-98726".into()],
                    text: Some("Buy cheap pills".into()),
                },
                SpamReport {
                    offender: "old@example.net".into(),
                    reason: "abuse".into(),
                    stanza_ids: vec![],
                    text: None,
                },
            ]
        );
        assert!(SpamReport::read_block(b"<iq type='set' id='u'><unblock xmlns='urn:xmpp:blocking'><item jid='x@y'/></unblock></iq>").is_empty());
    }

    #[test]
    fn a_report_holds_a_bounded_amount_whatever_the_command_carries() {
        let id = |n: usize, len: usize| {
            format!(
                "<stanza-id xmlns='urn:xmpp:sid:0' id='{n}{}'/>",
                "i".repeat(len)
            )
        };
        let ids: String = (0..100).map(|n| id(n, 10)).collect();
        let item = |jid: &str| {
            format!(
                "<item jid='{jid}'><report xmlns='urn:xmpp:reporting:1' reason='{}'>{ids}{}<text>{}</text></report></item>",
                "r".repeat(10_000),
                id(999, 10_000),
                "t".repeat(10_000),
            )
        };
        let items: String = [item(&format!("{}@spam.example", "x".repeat(10_000)))]
            .into_iter()
            .chain((0..100).map(|n| item(&format!("s{n}@spam.example"))))
            .collect();
        let iq =
            format!("<iq type='set' id='b'><block xmlns='urn:xmpp:blocking'>{items}</block></iq>");
        let reports = SpamReport::read_block(iq.as_bytes());
        assert_eq!(reports.len(), MAX_REPORTS_PER_COMMAND);
        assert_eq!(reports[0].offender, "s0@spam.example", "no JID that long");
        for r in &reports {
            assert!(r.offender.len() <= MAX_JID_BYTES);
            assert_eq!(r.stanza_ids.len(), MAX_STANZA_IDS);
            assert!(r.stanza_ids.iter().all(|i| i.len() <= MAX_STANZA_ID_BYTES));
            assert_eq!(
                r.text.as_ref().map(|t| t.chars().count()),
                Some(MAX_TEXT_CHARS)
            );
            assert_eq!(r.reason.chars().count(), MAX_REASON_CHARS);
        }
    }

    #[test]
    fn memory_reports_keep_the_latest() {
        let m = MemoryReports::default();
        for i in 0..(MemoryReports::CAP + 5) {
            m.report(ReportRecord {
                at: SystemTime::UNIX_EPOCH,
                reporter: format!("r{i}@example.org"),
                offender: "x@y".into(),
                reason: "spam".into(),
                stanza_ids: vec![],
                text: None,
            });
        }
        let recent = m.recent();
        assert_eq!(recent.len(), MemoryReports::CAP);
        assert_eq!(recent[0].reporter, "r5@example.org");
    }
}
