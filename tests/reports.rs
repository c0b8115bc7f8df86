//! Spam reports (XEP-0377 inside XEP-0191 block commands) and reputation against a
//! real Prosody: reports are read as they pass and the block still reaches the
//! server; reports from distinct users, and rules that report, raise a score whose
//! thresholds quarantine or ban the sender, each asserted on the wire.

mod support;

use support::client::TestClient;
use support::wall::{Wall, WallConfig};
use support::xml;
use support::{Prosody, ALICE, BOB, OTHER_DOMAIN};

const STANZAS: &str = "urn:xmpp:stanzas";

struct Setup {
    wall: Wall,
    prosody: Prosody,
}

impl Setup {
    fn start(tables: &str) -> Setup {
        let prosody = Prosody::start();
        let wall = Wall::start(
            prosody.c2s,
            WallConfig {
                tables: tables.to_owned(),
                ..WallConfig::default()
            },
        );
        Setup { wall, prosody }
    }

    /// `user@other.test`, logged in directly at Prosody.
    fn remote(&self, user: &str) -> (TestClient, String) {
        let password = format!("{user}-remote-secret");
        self.prosody.register(user, OTHER_DOMAIN, &password);
        let mut c = TestClient::connect(self.prosody.c2s);
        c.domain = OTHER_DOMAIN.to_string();
        c.open_stream();
        c.try_auth_plain(user, &password)
            .unwrap_or_else(|e| panic!("{user} cannot log in: {e}"));
        let jid = c.bind(Some("r"));
        c.send_raw("<presence/>");
        (c, jid)
    }
}

fn by_id(id: &'static str) -> impl Fn(&str) -> bool {
    move |e: &str| xml::root_attr(e, "id").as_deref() == Some(id)
}

fn report(c: &mut TestClient, id: &'static str, offender: &str, stanza_id: &str) -> String {
    c.send_raw(format!(
        "<iq type='set' id='{id}'><block xmlns='urn:xmpp:blocking'><item jid='{offender}'>\
         <report xmlns='urn:xmpp:reporting:1' reason='urn:xmpp:reporting:spam'>\
         <stanza-id xmlns='urn:xmpp:sid:0' by='{offender}' id='{stanza_id}'/>\
         <text xml:lang='en'>unsolicited offers</text></report></item></block></iq>"
    ));
    c.read_element_matching(by_id(id))
}

/// Sends a chat message and waits until the server has routed it.
fn send_routed(c: &mut TestClient, to: &str, id: &str) {
    c.send_raw(format!(
        "<message to='{to}' id='{id}' type='chat'><body>{id}</body></message>\
         <iq type='get' id='ping-{id}' to='{OTHER_DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>"
    ));
    let ping = format!("ping-{id}");
    c.read_element_matching(|e| xml::root_attr(e, "id").as_deref() == Some(ping.as_str()));
}

fn next_message_id(c: &mut TestClient) -> String {
    let m = c.read_element_matching(|e| xml::root_name(e) == "message");
    xml::root_attr(&m, "id").unwrap_or_default()
}

#[test]
fn reports_are_recorded_and_the_block_reaches_the_server() {
    let s = Setup::start("");
    let (mut alice, _) = s.wall.login(ALICE, "a");
    let offender = format!("carol@{OTHER_DOMAIN}");
    let answer = report(&mut alice, "b1", &offender, "spam-1");
    // Prosody's mod_blocklist took the block: its result, and the block list holds it.
    assert_eq!(
        xml::root_attr(&answer, "type").as_deref(),
        Some("result"),
        "{answer}"
    );
    alice.send_raw("<iq type='get' id='bl'><blocklist xmlns='urn:xmpp:blocking'/></iq>");
    let list = alice.read_element_matching(by_id("bl"));
    assert!(list.contains(&format!("jid='{offender}'")), "{list}");
    let log = s.wall.xmppwall.log();
    let line = log
        .lines()
        .find(|l| l.contains("spam report"))
        .unwrap_or_else(|| panic!("no report logged:\n{log}"));
    assert!(line.contains("reporter=alice@example.test"), "{line}");
    assert!(line.contains(&format!("offender={offender}")), "{line}");
    assert!(line.contains("reason=spam"), "{line}");
    assert!(line.contains(&format!("{offender}/spam-1")), "{line}");
}

#[test]
fn reports_from_distinct_users_ban_a_remote_sender() {
    let s = Setup::start(
        "[reputation]\nreport_weight = 10\nthrottle_at = \"off\"\nquarantine_at = \"off\"\nban_at = 15\n",
    );
    let (mut alice, alice_jid) = s.wall.login(ALICE, "a");
    let (mut bob, _) = s.wall.login(BOB, "b");
    let (mut carol, carol_jid) = s.remote("carol");
    let (mut dave, _) = s.remote("dave");
    let carol_bare = format!("carol@{OTHER_DOMAIN}");

    // One report, twice from the same user: 10, not yet banned (at 15).
    report(&mut alice, "b1", &carol_bare, "s1");
    report(&mut alice, "b2", &carol_bare, "s2");
    // Unblock so Prosody delivers Carol again; only xmppwall's judgement remains.
    let unblock = |c: &mut TestClient, id: &'static str| {
        c.send_raw(format!(
            "<iq type='set' id='{id}'><unblock xmlns='urn:xmpp:blocking'/></iq>"
        ));
        c.read_element_matching(by_id(id));
    };
    unblock(&mut alice, "u1");
    send_routed(&mut carol, &alice_jid, "carol-1");
    assert_eq!(next_message_id(&mut alice), "carol-1");

    // A second user reports: 20 (less what decayed since), banned; nothing from
    // Carol reaches anyone.
    report(&mut bob, "b3", &carol_bare, "s3");
    unblock(&mut bob, "u2");
    send_routed(&mut carol, &alice_jid, "carol-2");
    send_routed(&mut dave, &alice_jid, "dave-1");
    assert_eq!(next_message_id(&mut alice), "dave-1");
    let _ = carol_jid;
}

#[test]
fn a_local_account_a_rule_reports_is_quarantined_to_its_contacts() {
    let s = Setup::start(
        r#"
[reputation]
rule_weight = 25
throttle_at = "off"
quarantine_at = 20
ban_at = "off"

[[rule]]
name = "casino"
action = "drop"
report = "casino spam"
[rule.match]
kind = ["message"]
keywords = ["casino"]
"#,
    );
    let (mut alice, alice_jid) = s.wall.login(ALICE, "a");
    // Bob is Alice's contact; Dave is not.
    alice.send_raw(
        "<iq type='set' id='r1'><query xmlns='jabber:iq:roster'><item jid='bob@example.test'/></query></iq>",
    );
    alice.read_element_matching(by_id("r1"));
    alice.send_raw("<iq type='get' id='r2'><query xmlns='jabber:iq:roster'/></iq>");
    alice.read_element_matching(by_id("r2"));
    let (mut bob, bob_jid) = s.wall.login(BOB, "b");
    let (_dave, dave_jid) = s.remote("dave");

    // The rule drops and reports: Alice's score is 25 now.
    alice.send_raw(format!(
        "<message to='{dave_jid}' id='spam' type='chat'><body>best casino</body></message>"
    ));
    alice.send_raw(format!(
        "<message to='{dave_jid}' id='q1' type='chat'><body>hello</body></message>"
    ));
    let reply = alice.read_element_matching(by_id("q1"));
    assert_eq!(
        reply,
        format!(
            "<message type='error' id='q1' from='{dave_jid}' to='{alice_jid}'><error type='cancel'>\
             <policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
             <text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas' xml:lang='en'>messages to people \
             outside your contacts are held back while this account is under review</text></error></message>"
        )
    );
    // Her contact still gets her messages.
    alice.send_raw(format!(
        "<message to='{bob_jid}' id='ok' type='chat'><body>hi Bob</body></message>"
    ));
    assert_eq!(next_message_id(&mut bob), "ok");
    let _ = STANZAS;
}

/// One query's rows, each as its columns joined by `|`, read from the store file by
/// another connection.
fn rows(db: &std::path::Path, sql: &str) -> Vec<String> {
    support::sqlite::rows(db, sql)
        .into_iter()
        .map(|r| r.join("|"))
        .collect()
}

#[test]
fn reports_and_reputation_survive_a_restart() {
    let state = tempfile::Builder::new()
        .prefix("xmppwall-test-state-")
        .tempdir()
        .expect("a state directory");
    let db = state.path().join("xmppwall.db");
    let mut s = Setup::start(&format!(
        "[store]\npath = {:?}\n\n[reputation]\nreport_weight = 10\nthrottle_at = \"off\"\nquarantine_at = \"off\"\nban_at = 15\n",
        db.display().to_string()
    ));
    let carol_bare = format!("carol@{OTHER_DOMAIN}");
    {
        let (mut alice, _) = s.wall.login(ALICE, "a");
        let (mut bob, _) = s.wall.login(BOB, "b");
        report(&mut alice, "b1", &carol_bare, "s1");
        report(&mut bob, "b2", &carol_bare, "s2");
        for (c, id) in [(&mut alice, "u1"), (&mut bob, "u2")] {
            c.send_raw(format!(
                "<iq type='set' id='{id}'><unblock xmlns='urn:xmpp:blocking'/></iq>"
            ));
            c.read_element_matching(|e| xml::root_attr(e, "id").as_deref() == Some(id));
        }
    }
    let reports_sql = "SELECT reporter, subject, reason, text, stanza_ids FROM reports ORDER BY id";
    let expected = vec![
        format!("alice@example.test|{carol_bare}|spam|unsolicited offers|{carol_bare}/s1"),
        format!("bob@example.test|{carol_bare}|spam|unsolicited offers|{carol_bare}/s2"),
    ];
    // Stored as they pass (a task per report: wait, bounded, for both).
    support::process::wait_until(support::IO_TIMEOUT, "two stored reports", || {
        (rows(&db, reports_sql) == expected).then_some(())
    });
    support::process::wait_until(support::IO_TIMEOUT, "stored scores", || {
        (rows(&db, "SELECT subject FROM reputation ORDER BY subject")
            == [
                format!("domain:{OTHER_DOMAIN}"),
                format!("jid:{carol_bare}"),
            ])
        .then_some(())
    });

    s.wall.kill_and_restart();
    assert_eq!(rows(&db, reports_sql), expected);
    // The score came back: Carol is still banned after the restart.
    let (mut alice, alice_jid) = s.wall.login(ALICE, "a2");
    let (mut carol, _) = s.remote("carol");
    let (mut dave, _) = s.remote("dave");
    send_routed(&mut carol, &alice_jid, "carol-after");
    send_routed(&mut dave, &alice_jid, "dave-after");
    assert_eq!(next_message_id(&mut alice), "dave-after");
}

#[test]
fn a_throttled_account_is_slowed_and_rules_see_its_standing() {
    let s = Setup::start(
        r#"
[reputation]
rule_weight = 12
throttle_at = 10
throttle_rate = "2/1h"
quarantine_at = "off"
ban_at = "off"

[[rule]]
name = "casino"
action = "drop"
report = "casino spam"
[rule.match]
kind = ["message"]
keywords = ["casino"]

[[rule]]
name = "no-links-while-throttled"
action = "bounce"
bounce = { type = "modify", condition = "not-acceptable", text = "no links from this account for now" }
[rule.match]
mark = "reputation:throttled"
url_count = 1
"#,
    );
    let (mut alice, alice_jid) = s.wall.login(ALICE, "a");
    let (mut bob, bob_jid) = s.wall.login(BOB, "b");
    let chat = |id: &str, body: &str| {
        format!("<message to='{bob_jid}' id='{id}' type='chat'><body>{body}</body></message>")
    };
    // A link passes while Alice is in good standing.
    alice.send_raw(chat("link-0", "see https://shop.example/"));
    assert_eq!(next_message_id(&mut bob), "link-0");
    alice.send_raw(chat("spam", "casino night"));
    // Throttled now (12): the rule sees the mark and bounces the link...
    alice.send_raw(chat("link-1", "see https://shop.example/"));
    let reply = alice.read_element_matching(by_id("link-1"));
    assert_eq!(
        reply,
        format!(
            "<message type='error' id='link-1' from='{bob_jid}' to='{alice_jid}'><error type='modify'>\
             <not-acceptable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
             <text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas' xml:lang='en'>no links from this account for now</text>\
             </error></message>"
        )
    );
    // ... and at most two messages an hour get through (the bounced one counted).
    alice.send_raw(chat("m2", "hello"));
    assert_eq!(next_message_id(&mut bob), "m2");
    alice.send_raw(chat("m3", "hello again"));
    let reply = alice.read_element_matching(by_id("m3"));
    assert_eq!(
        reply,
        format!(
            "<message type='error' id='m3' from='{bob_jid}' to='{alice_jid}'><error type='wait'>\
             <policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
             <text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas' xml:lang='en'>this account is slowed down: \
             at most 2 messages per 1h</text></error></message>"
        )
    );
}
