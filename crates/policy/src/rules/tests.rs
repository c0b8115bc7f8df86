use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use super::config::RulesFile;
use super::*;
use crate::stanza::Stanza;

/// Compiles `text`; returns the policy and the problems as (line, message).
fn load(text: &str) -> (Policy, Vec<(usize, String)>) {
    let file: RulesFile = toml::from_str(text).expect("valid TOML");
    let mut problems = Vec::new();
    let policy = file.compile(Path::new("."), &mut |span, message| {
        let line = text[..span.start].matches('\n').count() + 1;
        problems.push((line, message));
    });
    (policy, problems)
}

fn policy(text: &str) -> Policy {
    let (p, problems) = load(text);
    assert!(problems.is_empty(), "{problems:?}");
    p
}

fn subject(marks: &Marks) -> Subject<'_> {
    Subject {
        ip: "192.0.2.1".parse().unwrap(),
        class: UserClass::Registered,
        mechanism: Some("PLAIN"),
        account: Some("alice@example.org"),
        marks,
        stranger: None,
        front: crate::rules::StreamFront::C2s,
        peer_domain: None,
        peer_auth: None,
    }
}

fn decide(p: &Policy, hook: Hook, xml: &str, subject: &Subject<'_>) -> Decision {
    let stanza = Stanza::parse(xml.as_bytes()).expect("a stanza");
    p.evaluate(
        hook,
        Some(&stanza),
        subject,
        Instant::now(),
        SystemTime::now(),
    )
}

fn to_server(p: &Policy, xml: &str) -> Decision {
    let marks = Marks::default();
    decide(p, Hook::ToServer, xml, &subject(&marks))
}

const SUBJECT_SPAM: &str = r#"
[[rule]]
name = "normal-with-subject"
action = "drop"
[rule.match]
kind = ["message"]
type = ["normal"]
has = ["subject"]
"#;

#[test]
fn normal_message_with_subject_is_dropped_and_chat_passes() {
    let p = policy(SUBJECT_SPAM);
    let d = to_server(
        &p,
        "<message to='x@y'><subject>hi</subject><body>buy</body></message>",
    );
    assert_eq!(d.verdict(), &Action::Drop);
    assert_eq!(d.rule.as_deref(), Some("normal-with-subject"));
    let d = to_server(
        &p,
        "<message to='x@y' type='chat'><subject>hi</subject></message>",
    );
    assert_eq!(d.verdict(), &Action::Pass);
    assert_eq!(
        p.rule_hits(),
        vec![("to-server", "normal-with-subject", 1, 0)]
    );
}

#[test]
fn first_decisive_rule_wins_and_continue_rules_only_add_effects() {
    let p = policy(
        r#"
[[rule]]
name = "log-all"
log = "digest"
[[rule]]
name = "pass-friends"
action = "pass"
[rule.match]
to = ["*@friends.example"]
[[rule]]
name = "drop-rest"
action = "drop"
"#,
    );
    let d = to_server(&p, "<message to='a@friends.example'/>");
    assert_eq!(d.verdict(), &Action::Pass);
    assert_eq!(d.effects.len(), 1);
    assert_eq!(d.effects[0].1.log, Some(LogPayload::Digest));
    assert_eq!(
        to_server(&p, "<message to='a@other.example'/>").verdict(),
        &Action::Drop
    );
}

#[test]
fn jump_runs_the_named_chain_and_returns_when_it_does_not_decide() {
    let p = policy(
        r#"
[[rule]]
name = "to-spam-checks"
action = "jump"
jump = "spam"
[rule.match]
kind = ["message"]
[[rule]]
name = "spam-keywords"
chain = "spam"
action = "bounce"
bounce = { type = "modify", condition = "not-acceptable", text = "no spam" }
[rule.match]
keywords = ["casino"]
[[rule]]
name = "after"
action = "drop"
[rule.match]
to = ["blocked@example.org"]
"#,
    );
    let d = to_server(
        &p,
        "<message to='x@y'><body>best CASINO ever</body></message>",
    );
    assert_eq!(
        d.verdict(),
        &Action::Bounce(StanzaError {
            error_type: crate::errors::ErrorType::Modify,
            condition: "not-acceptable",
            app_condition: None,
            text: Some("no spam".into()),
        })
    );
    assert_eq!(
        to_server(
            &p,
            "<message to='blocked@example.org'><body>hello</body></message>"
        )
        .verdict(),
        &Action::Drop
    );
}

#[test]
fn shadow_rule_is_counted_and_reported_but_the_stanza_passes() {
    let p = policy(&SUBJECT_SPAM.replace("action = \"drop\"", "action = \"drop\"\nshadow = true"));
    let d = to_server(&p, "<message to='x@y'><subject>s</subject></message>");
    assert_eq!(d.verdict(), &Action::Pass);
    assert_eq!(
        d.shadowed,
        vec![("normal-with-subject".to_string(), Action::Drop)]
    );
    assert_eq!(
        p.rule_hits(),
        vec![("to-server", "normal-with-subject", 0, 1)]
    );
}

#[test]
fn whole_policy_and_chains_can_be_shadowed() {
    let p = policy(&format!("[policy]\nshadow = true\n{SUBJECT_SPAM}"));
    assert_eq!(
        to_server(&p, "<message to='x@y'><subject>s</subject></message>").verdict(),
        &Action::Pass
    );
    let p = policy(&format!(
        "[policy]\nshadow_chains = [\"to-server\"]\n{SUBJECT_SPAM}"
    ));
    assert_eq!(
        to_server(&p, "<message to='x@y'><subject>s</subject></message>").verdict(),
        &Action::Pass
    );
}

#[test]
fn rate_limited_rule_fires_only_past_the_rate_per_key() {
    let p = policy(
        r#"
[[rule]]
name = "too-many-to-one"
action = "drop"
rate_limit = { key = "to", limit = "2/1h" }
[rule.match]
kind = ["message"]
"#,
    );
    for _ in 0..2 {
        assert_eq!(
            to_server(&p, "<message to='a@x'/>").verdict(),
            &Action::Pass
        );
    }
    assert_eq!(
        to_server(&p, "<message to='a@x'/>").verdict(),
        &Action::Drop
    );
    assert_eq!(
        to_server(&p, "<message to='b@x'/>").verdict(),
        &Action::Pass
    );
}

#[test]
fn a_shared_rule_rate_counts_what_it_admits_and_adds_what_others_used() {
    let p = policy(
        r#"
[[rule]]
name = "too-many-to-one"
action = "drop"
rate_limit = { key = "to", limit = "3/1h" }
[rule.match]
kind = ["message"]
"#,
    );
    let rates: Vec<_> = p.rule_rates().collect();
    assert_eq!(rates.len(), 1);
    let (name, rate) = &rates[0];
    assert!(name.ends_with("/too-many-to-one"), "{name}");
    // Not shared: nothing is counted for the others.
    assert_eq!(
        to_server(&p, "<message to='a@x'/>").verdict(),
        &Action::Pass
    );
    assert!(rate.take_used().is_empty());
    rate.share(true);
    assert_eq!(
        to_server(&p, "<message to='a@x'/>").verdict(),
        &Action::Pass
    );
    assert_eq!(
        to_server(&p, "<message to='b@x'/>").verdict(),
        &Action::Pass
    );
    let mut used = rate.take_used();
    used.sort();
    assert_eq!(used, vec![("a@x".to_owned(), 1), ("b@x".to_owned(), 1)]);
    assert!(rate.take_used().is_empty(), "taken once");
    // Another instance used two for b@x: its third here is the excess.
    rate.add_used("b@x".to_owned(), 2, std::time::Instant::now());
    assert_eq!(
        to_server(&p, "<message to='b@x'/>").verdict(),
        &Action::Drop
    );
    // A refused event is not counted as used.
    assert!(rate.take_used().is_empty());
    assert_eq!(
        to_server(&p, "<message to='a@x'/>").verdict(),
        &Action::Pass
    );
}

#[test]
fn url_domain_lists_and_counts_match_bodies_and_oob_urls() {
    let p = policy(
        r#"
[lists.bad]
domains = ["bad.example"]
[[rule]]
name = "bad-urls"
action = "drop"
[rule.match]
url_domains = "list:bad"
[[rule]]
name = "many-urls"
action = "drop"
[rule.match]
url_count = 3
"#,
    );
    assert_eq!(
        to_server(
            &p,
            "<message to='x@y'><body>see https://www.bad.example/x</body></message>"
        )
        .rule
        .as_deref(),
        Some("bad-urls")
    );
    assert_eq!(
        to_server(&p, "<message to='x@y'><x xmlns='jabber:x:oob'><url>http://cdn.bad.example/f.png</url></x></message>").rule.as_deref(),
        Some("bad-urls")
    );
    assert_eq!(
        to_server(
            &p,
            "<message to='x@y'><body>http://a.test http://b.test www.c.test</body></message>"
        )
        .rule
        .as_deref(),
        Some("many-urls")
    );
    assert_eq!(
        to_server(
            &p,
            "<message to='x@y'><body>http://good.example</body></message>"
        )
        .verdict(),
        &Action::Pass
    );
}

#[test]
fn data_leak_detectors_catch_cards_and_ibans_in_outgoing_text() {
    let p = policy(
        r#"
[[rule]]
name = "pci"
action = "bounce"
[rule.match]
data_leak = ["card"]
[[rule]]
name = "iban"
action = "drop"
[rule.match]
data_leak = ["iban"]
"#,
    );
    assert_eq!(
        to_server(
            &p,
            "<message to='x@y'><body>4111 1111 1111 1111</body></message>"
        )
        .rule
        .as_deref(),
        Some("pci")
    );
    assert_eq!(
        to_server(
            &p,
            "<message to='x@y'><body>DE89 3704 0044 0532 0130 00</body></message>"
        )
        .rule
        .as_deref(),
        Some("iban")
    );
    assert_eq!(
        to_server(
            &p,
            "<message to='x@y'><body>4111 1111 1111 1112</body></message>"
        )
        .verdict(),
        &Action::Pass
    );
}

#[test]
fn regex_keywords_and_unless_combine() {
    let p = policy(
        r#"
[lists.words]
keywords = ["lottery"]
[[rule]]
name = "spam"
action = "drop"
[rule.match]
regex = ["(?i)free\\s+money", "\\bbitcoin\\b"]
text = "any"
[rule.unless]
from = ["*@trusted.example"]
[[rule]]
name = "words"
action = "drop"
[rule.match]
keywords = "list:words"
"#,
    );
    assert_eq!(
        to_server(
            &p,
            "<message to='x@y'><subject>FREE   money</subject></message>"
        )
        .rule
        .as_deref(),
        Some("spam")
    );
    assert_eq!(
        to_server(
            &p,
            "<message to='x@y'><body>you won the LOTTERY</body></message>"
        )
        .rule
        .as_deref(),
        Some("words")
    );
    let marks = Marks::default();
    let trusted = Subject {
        account: Some("boss@trusted.example"),
        ..subject(&marks)
    };
    assert_eq!(
        decide(
            &p,
            Hook::ToServer,
            "<message to='x@y'><body>free money</body></message>",
            &trusted
        )
        .verdict(),
        &Action::Pass
    );
}

#[test]
fn subject_conditions_address_class_mechanism_stranger_and_marks() {
    let p = policy(
        r#"
[[rule]]
name = "anon-strangers"
action = "drop"
[rule.match]
class = ["anonymous"]
stranger = true
[[rule]]
name = "office-net"
action = "pass"
[rule.match]
address = ["192.0.2.0/24"]
mechanism = ["EXTERNAL"]
[[rule]]
name = "marked"
action = "drop"
[rule.match]
mark = "suspect"
"#,
    );
    let mut marks = Marks::default();
    let anon = Subject {
        class: UserClass::Anonymous,
        stranger: Some(true),
        ..subject(&marks)
    };
    assert_eq!(
        decide(&p, Hook::ToServer, "<message to='a@b'/>", &anon)
            .rule
            .as_deref(),
        Some("anon-strangers")
    );
    let external = Subject {
        mechanism: Some("EXTERNAL"),
        ..subject(&marks)
    };
    assert_eq!(
        decide(&p, Hook::ToServer, "<message to='a@b'/>", &external)
            .rule
            .as_deref(),
        Some("office-net")
    );
    assert_eq!(
        decide(&p, Hook::ToServer, "<message to='a@b'/>", &subject(&marks)).verdict(),
        &Action::Pass
    );
    marks.set("suspect", Instant::now() + Duration::from_secs(60));
    assert_eq!(
        decide(&p, Hook::ToServer, "<message to='a@b'/>", &subject(&marks))
            .rule
            .as_deref(),
        Some("marked")
    );
}

#[test]
fn chains_run_only_on_their_hook() {
    let p = policy(
        r#"
[[rule]]
name = "incoming-oob"
chain = "to-client"
action = "drop"
[rule.match]
payload = ["jabber:x:oob"]
"#,
    );
    let xml = "<message from='x@y'><x xmlns='jabber:x:oob'><url>http://a</url></x></message>";
    assert_eq!(to_server(&p, xml).verdict(), &Action::Pass);
    let marks = Marks::default();
    assert_eq!(
        decide(&p, Hook::ToClient, xml, &subject(&marks)).verdict(),
        &Action::Drop
    );
    assert!(!p.has_hook(Hook::ToServer));
    assert!(p.has_hook(Hook::ToClient));
}

#[test]
fn effects_carry_marks_bans_reports_and_strips() {
    let p = policy(
        r#"
[[rule]]
name = "strip-oob"
strip = ["jabber:x:oob x"]
mark = { name = "sent-file", scope = "account", expires = "10m" }
report = "file transfer"
ban = "5m"
[rule.match]
payload = ["jabber:x:oob"]
"#,
    );
    let d = to_server(&p, "<message to='x@y'><x xmlns='jabber:x:oob'/></message>");
    assert_eq!(d.verdict(), &Action::Pass);
    let e = &d.effects[0].1;
    assert_eq!(
        e.strip,
        vec![(Some("jabber:x:oob".to_string()), "x".to_string())]
    );
    assert_eq!(
        e.mark.as_ref().map(|m| (m.scope, m.expires)),
        Some((MarkScope::Account, Duration::from_secs(600)))
    );
    assert_eq!(e.ban, Some(Duration::from_secs(300)));
    assert_eq!(e.report.as_deref(), Some("file transfer"));
}

#[test]
fn bad_rules_are_reported_at_their_lines() {
    let (_, problems) = load(
        r#"
[[rule]]
name = "a"
action = "explode"

[[rule]]
name = "b"
action = "drop"
[rule.match]
regex = ["(unclosed"]

[[rule]]
name = "c"
action = "jump"
jump = "nowhere"

[[rule]]
name = "d"
action = "drop"
[rule.match]
keywords = "list:missing"
time = { from = "25:00", to = "10:00" }
"#,
    );
    let lines: Vec<usize> = problems.iter().map(|(l, _)| *l).collect();
    assert_eq!(lines, vec![4, 10, 15, 21, 22], "{problems:?}");
    assert!(problems[0].1.contains("unknown action"));
    assert!(problems[1].1.contains("regular expression"));
    assert!(problems[2].1.contains("nowhere"));
    assert!(problems[3].1.contains("no list named"));
    assert!(problems[4].1.contains("time of day"));
}

#[test]
fn duplicate_rule_names_are_refused() {
    let (_, problems) = load("[[rule]]\nname = \"x\"\n[[rule]]\nname = \"x\"\n");
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].0, 4);
}

#[test]
fn strip_removes_only_the_named_children() {
    let xml = b"<message to='a@b'><body>hi</body><x xmlns='jabber:x:oob'><url>u</url></x><subject>s</subject></message>";
    let out = strip_children(
        xml,
        &[
            (Some("jabber:x:oob".into()), "x".into()),
            (None, "subject".into()),
        ],
    )
    .unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "<message to='a@b'><body>hi</body></message>"
    );
    assert_eq!(strip_children(xml, &[(None, "thread".into())]), None);
}

#[test]
fn the_rule_index_never_changes_a_verdict() {
    let text = r#"
[lists.many]
domains = ["a.example", "b.example", "c.example", "d.example", "e.example", "f.example", "g.example", "h.example", "i.example"]
[[rule]]
name = "kind-and-to"
action = "drop"
[rule.match]
kind = ["message"]
to_domain = ["spam.example"]
[[rule]]
name = "from-list"
action = "bounce"
[rule.match]
from_domain = "list:many"
[[rule]]
name = "iq-only"
action = "drop"
[rule.match]
kind = ["iq"]
has = ["query"]
[[rule]]
name = "any-subject"
action = "drop"
[rule.match]
has = ["subject"]
[[rule]]
name = "to-sub"
action = "close"
[rule.match]
to_domain = ["example.net"]
[[rule]]
name = "from-glob"
action = "drop"
[rule.match]
from = ["*@glob.example"]
[[rule]]
name = "oob-payload"
action = "drop"
[rule.match]
payload = ["jabber:x:oob"]
[[rule]]
name = "marked"
action = "bounce"
[rule.match]
mark = "suspect"
"#;
    let indexed = policy(text);
    let mut plain = policy(text);
    for chain in &mut plain.chains {
        chain.index = None;
    }
    assert!(indexed.chains.iter().any(|c| c.index.is_some()));
    let stanzas = [
        "<message to='x@spam.example'><body>hi</body></message>",
        "<message to='x@SPAM.example/r'/>",
        "<presence to='x@spam.example'/>",
        "<message from='u@sub.c.example' to='x@y'/>",
        "<message from='u@notc.example' to='x@y'/>",
        "<iq type='get' id='1'><query xmlns='jabber:iq:roster'/></iq>",
        "<message to='a@b'><subject>s</subject></message>",
        "<message to='a@deep.example.net'/>",
        "<message to='a@example.net.'/>",
        "<message/>",
        "<message from='u@glob.example/r' to='a@b'/>",
        "<message from='u@sub.glob.example' to='a@b'/>",
        "<message from='glob.example' to='a@b'/>",
        "<message to='a@b'><x xmlns='jabber:x:oob'><url>u</url></x></message>",
        "<message to='a@b'><a:x xmlns:a='jabber:x:oob'/></message>",
    ];
    let marks = Marks::default();
    for xml in stanzas {
        let a = decide(&indexed, Hook::ToServer, xml, &subject(&marks));
        let b = decide(&plain, Hook::ToServer, xml, &subject(&marks));
        assert_eq!((a.action, a.rule), (b.action, b.rule), "{xml}");
    }
    // and the account stands in for a missing `from`, in both
    let marks = Marks::default();
    let from_list = Subject {
        account: Some("boss@e.example"),
        ..subject(&marks)
    };
    let a = decide(&indexed, Hook::ToServer, "<message to='q@r'/>", &from_list);
    assert_eq!(a.rule.as_deref(), Some("from-list"));
    let glob = decide(
        &indexed,
        Hook::ToServer,
        "<message from='u@glob.example/r' to='a@b'/>",
        &subject(&marks),
    );
    assert_eq!(glob.rule.as_deref(), Some("from-glob"));
    let not_glob = decide(
        &indexed,
        Hook::ToServer,
        "<message from='glob.example' to='a@b'/>",
        &subject(&marks),
    );
    assert_eq!(not_glob.rule, None);
}

#[test]
fn the_address_index_never_changes_a_verdict() {
    // Overlapping, nested, adjacent and IPv6 ranges, a bare address and a rule
    // without an address condition between them.
    let text = r#"
[[rule]]
name = "wide"
action = "continue"
log = "digest"
[rule.match]
address = ["10.0.0.0/8", "2001:db8::/32"]
[[rule]]
name = "nested"
action = "drop"
[rule.match]
address = ["10.1.0.0/16"]
kind = ["message"]
[[rule]]
name = "anyone-iq"
action = "bounce"
[rule.match]
kind = ["iq"]
[[rule]]
name = "adjacent"
action = "close"
[rule.match]
address = ["10.2.0.0/24", "10.2.1.0/24", "192.0.2.1", "2001:db8:1::/48"]
[[rule]]
name = "edge"
action = "drop"
[rule.match]
address = ["255.255.255.255/32", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128", "::/128"]
"#;
    let indexed = policy(text);
    let mut plain = policy(text);
    for chain in &mut plain.chains {
        chain.index = None;
    }
    let marks = Marks::default();
    let addresses = [
        "10.0.0.1",
        "10.1.2.3",
        "10.1.255.255",
        "10.2.0.255",
        "10.2.1.0",
        "10.2.2.0",
        "11.0.0.0",
        "9.255.255.255",
        "192.0.2.1",
        "192.0.2.2",
        "255.255.255.255",
        "::ffff:10.1.0.1",
        "2001:db8::1",
        "2001:db8:1::5",
        "2001:db9::1",
        "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        "::",
    ];
    let mut decided = 0;
    for ip in addresses {
        for xml in [
            "<message to='a@b'/>",
            "<iq type='get' id='1'/>",
            "<presence/>",
        ] {
            let s = Subject {
                ip: ip.parse().unwrap(),
                ..subject(&marks)
            };
            let a = decide(&indexed, Hook::ToServer, xml, &s);
            let b = decide(&plain, Hook::ToServer, xml, &s);
            assert_eq!((&a.action, &a.rule), (&b.action, &b.rule), "{ip} {xml}");
            assert_eq!(a.effects.len(), b.effects.len(), "{ip} {xml}");
            decided += usize::from(a.action.is_some());
        }
    }
    assert!(decided > 10, "the addresses exercise the rules: {decided}");
    let nested = Subject {
        ip: "::ffff:10.1.0.1".parse().unwrap(),
        ..subject(&marks)
    };
    let d = decide(&indexed, Hook::ToServer, "<message to='a@b'/>", &nested);
    assert_eq!(d.rule.as_deref(), Some("nested"));
}

#[test]
fn hooks_are_listed_in_declaration_order() {
    for (i, hook) in Hook::ALL.iter().enumerate() {
        assert_eq!(*hook as usize, i, "{hook:?}");
    }
}

#[test]
fn compiled_lists_are_listed_with_kind_size_and_entries_as_matched() {
    let digest = "AB".repeat(32);
    let p = policy(&format!(
        r#"
[lists.words]
keywords = ["casino", "pills"]
[lists.peers]
domains = ["B.example", "a.example.", "*.a.example"]
[lists.people]
jids = ["Alice@Example.org/phone", "bob@example.org"]
[lists.hidden]
hashed_jids = ["{digest}"]
[lists.nets]
cidrs = ["10.0.0.0/9", "10.128.0.0/9", "2001:db8::1"]
"#
    ));
    let names: Vec<&str> = p.lists.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["hidden", "nets", "peers", "people", "words"]);
    let get = |name: &str| p.lists.iter().find(|l| l.name == name).unwrap();
    assert_eq!(get("words").kind, "keywords");
    assert_eq!(get("words").entries(), ["casino", "pills"]);
    assert_eq!(get("peers").kind, "domains");
    assert_eq!(get("peers").inline_entries, 3);
    assert_eq!(get("peers").entries(), ["a.example", "b.example"]);
    assert_eq!(get("peers").len(), 2);
    assert_eq!(
        get("people").entries(),
        ["alice@example.org", "bob@example.org"]
    );
    assert_eq!(get("hidden").kind, "hashed_jids");
    assert_eq!(get("hidden").entries(), ["ab".repeat(32)]);
    // Adjacent ranges merged; a bare address is its /128.
    assert_eq!(get("nets").entries(), ["10.0.0.0/8", "2001:db8::1/128"]);
    assert_eq!(get("nets").len(), 2);
    assert!(p.lists.iter().all(|l| l.file.is_none()));
}

#[test]
fn carry_over_keeps_the_hits_of_rules_still_there_and_the_buckets_of_unchanged_rates() {
    const TEXT: &str = r#"
[[rule]]
name = "few"
action = "drop"
rate_limit = { key = "to", limit = "1/1h" }
[rule.match]
kind = ["message"]

[[rule]]
name = "subject"
action = "drop"
[rule.match]
has = ["subject"]
"#;
    let xml = "<message to='b@example.org'><subject>x</subject></message>";
    let old = policy(TEXT);
    // "few" admits its one, then matches; "subject" matches each time "few" did not.
    assert_eq!(to_server(&old, xml).verdict(), &Action::Drop);
    assert_eq!(to_server(&old, xml).verdict(), &Action::Drop);
    let hits = |p: &Policy| -> Vec<(String, u64)> {
        p.rule_hits()
            .into_iter()
            .map(|(_, name, hits, _)| (name.to_owned(), hits))
            .collect()
    };
    let counted = hits(&old);
    assert_eq!(counted, [("few".to_owned(), 1), ("subject".to_owned(), 1)]);

    // The same text again: the hour's allowance stays spent, the hits stay.
    let mut same = policy(TEXT);
    same.carry_over(&old);
    assert_eq!(hits(&same), counted);
    let before = hits(&same)[0].1;
    to_server(&same, xml);
    assert_eq!(hits(&same)[0].1, before + 1, "the bucket started afresh");

    // Another rate is another limit: its bucket is new (its hits stay).
    let mut other = policy(&TEXT.replace("1/1h", "2/1h"));
    other.carry_over(&old);
    let before = hits(&other)[0].1;
    to_server(&other, xml);
    assert_eq!(hits(&other)[0].1, before, "a new bucket admits");
}
