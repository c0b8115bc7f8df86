//! The operator's rules against a real Prosody: drop, bounce, close, shadow, strip,
//! and reload on SIGHUP, each asserted on the wire.

mod support;

use std::time::Duration;

use support::client::TestClient;
use support::wall::{Wall, WallConfig};
use support::xml;
use support::{Prosody, ALICE, BOB};

struct Setup {
    wall: Wall,
    // Dropped last: xmppwall goes first.
    _prosody: Prosody,
}

impl Setup {
    fn start(rules: &str) -> Setup {
        let prosody = Prosody::start();
        let wall = Wall::start(
            prosody.c2s,
            WallConfig {
                tables: rules.to_owned(),
                ..WallConfig::default()
            },
        );
        Setup {
            wall,
            _prosody: prosody,
        }
    }

    fn login(&self, account: support::Account, resource: &str) -> (TestClient, String) {
        self.wall.login(account, resource)
    }
}

fn message(to: &str, id: &str, inner: &str) -> String {
    format!("<message to='{to}' id='{id}'>{inner}</message>")
}

/// The next message `c` receives (skipping presence and the like).
fn next_message(c: &mut TestClient) -> String {
    c.read_element_matching(|e| xml::root_name(e) == "message")
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
fn dropped_stanza_never_reaches_the_recipient_and_later_ones_do() {
    let s = Setup::start(SUBJECT_SPAM);
    let (mut alice, _) = s.login(ALICE, "a");
    let (mut bob, bob_jid) = s.login(BOB, "b");
    alice.send_raw(message(
        &bob_jid,
        "spam1",
        "<subject>WIN</subject><body>buy now</body>",
    ));
    alice.send_raw(
        message(&bob_jid, "ok1", "<body>hello</body>")
            .replace("<message ", "<message type='chat' "),
    );
    let got = next_message(&mut bob);
    assert_eq!(xml::root_attr(&got, "id").as_deref(), Some("ok1"), "{got}");
}

#[test]
fn bounced_stanza_gets_the_configured_error_without_payload() {
    let s = Setup::start(
        r#"
[[rule]]
name = "no-casino"
action = "bounce"
bounce = { type = "modify", condition = "not-acceptable", text = "no gambling ads" }
[rule.match]
keywords = ["casino"]
"#,
    );
    let (mut alice, alice_jid) = s.login(ALICE, "a");
    let (_bob, bob_jid) = s.login(BOB, "b");
    alice.send_raw(message(&bob_jid, "c1", "<body>Best CASINO online</body>"));
    let reply = alice.read_element_matching(|e| xml::root_attr(e, "id").as_deref() == Some("c1"));
    assert_eq!(
        reply,
        format!(
            "<message type='error' id='c1' from='{bob_jid}' to='{alice_jid}'><error type='modify'>\
             <not-acceptable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
             <text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas' xml:lang='en'>no gambling ads</text>\
             </error></message>"
        )
    );
}

#[test]
fn close_rule_ends_the_stream_with_its_condition() {
    let s = Setup::start(
        r#"
[[rule]]
name = "card-leak"
action = "close"
close = { condition = "policy-violation", text = "payment card numbers may not be sent" }
[rule.match]
data_leak = ["card"]
"#,
    );
    let (mut alice, _) = s.login(ALICE, "a");
    alice.send_raw(message(
        "bob@example.test",
        "k1",
        "<body>my card is 4111 1111 1111 1111</body>",
    ));
    let rest = alice.read_until_closed();
    assert!(
        rest.ends_with(
            "<stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>\
             <text xmlns='urn:ietf:params:xml:ns:xmpp-streams' xml:lang='en'>payment card numbers may not be sent</text>\
             </stream:error></stream:stream>"
        ),
        "{rest}"
    );
}

#[test]
fn an_auth_rule_closes_the_stream_in_a_new_stream_after_sasl_success() {
    let s = Setup::start(
        r#"
[[rule]]
name = "no-plain"
chain = "auth"
action = "close"
close = { condition = "not-authorized", text = "PLAIN is not accepted here" }
[rule.match]
mechanism = ["PLAIN"]
"#,
    );
    let (mut c, _) = s.wall.client_after_tls();
    c.send_raw(format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{}</auth>",
        support::client::base64(format!("\0{}\0{}", ALICE.user, ALICE.password).as_bytes())
    ));
    let success = c.read_element();
    assert_eq!(xml::root_name(&success), "success", "{success}");
    // <success/> ended the first stream (RFC 6120 §4.3.3, §6.4.6): the error comes
    // in a new one, after xmppwall's header (§4.9.1.2).
    let rest = c.read_until_closed();
    assert!(
        rest.starts_with("<?xml version='1.0'?><stream:stream xmlns='jabber:client' "),
        "{rest}"
    );
    assert!(
        rest.ends_with(
            "'><stream:error><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>\
             <text xmlns='urn:ietf:params:xml:ns:xmpp-streams' xml:lang='en'>PLAIN is not accepted here</text>\
             </stream:error></stream:stream>"
        ),
        "{rest}"
    );
}

#[test]
fn shadow_rule_delivers_the_stanza_and_counts_the_hit() {
    let mut s = Setup::start(
        &SUBJECT_SPAM.replace("action = \"drop\"", "action = \"drop\"\nshadow = true"),
    );
    let (mut alice, _) = s.login(ALICE, "a");
    let (mut bob, bob_jid) = s.login(BOB, "b");
    alice.send_raw(message(
        &bob_jid,
        "sh1",
        "<subject>WIN</subject><body>buy</body>",
    ));
    let got = next_message(&mut bob);
    assert_eq!(xml::root_attr(&got, "id").as_deref(), Some("sh1"));
    assert!(
        s.wall.xmppwall.log().contains("shadow rule matched"),
        "{}",
        s.wall.xmppwall.log()
    );
    let stats = s.wall.stats();
    assert!(
        stats.contains("to-server/normal-with-subject:0/1"),
        "{stats}"
    );
}

#[test]
fn strip_rule_removes_the_child_and_delivers_the_rest() {
    let s = Setup::start(
        r#"
[[rule]]
name = "no-oob"
strip = ["jabber:x:oob x"]
[rule.match]
payload = ["jabber:x:oob"]
"#,
    );
    let (mut alice, _) = s.login(ALICE, "a");
    let (mut bob, bob_jid) = s.login(BOB, "b");
    alice.send_raw(
        message(
            &bob_jid,
            "f1",
            "<body>file</body><x xmlns='jabber:x:oob'><url>http://x.test/f</url></x>",
        )
        .replace("<message ", "<message type='chat' "),
    );
    let got = next_message(&mut bob);
    assert_eq!(xml::text(&got, "body").as_deref(), Some("file"), "{got}");
    assert!(!got.contains("jabber:x:oob"), "{got}");
}

/// At most two messages per hour from one sender, the excess bounced.
const TWO_PER_SENDER: &str = r#"
[[rule]]
name = "chatty"
action = "bounce"
bounce = { type = "wait", condition = "resource-constraint", text = "too many messages" }
rate_limit = { key = "from", limit = "2/1h" }
[rule.match]
kind = ["message"]
"#;

#[test]
fn a_reload_keeps_what_a_rules_rate_limit_counted() {
    let mut s = Setup::start(TWO_PER_SENDER);
    let (mut alice, _) = s.login(ALICE, "a");
    let (mut bob, bob_jid) = s.login(BOB, "b");
    let chat = |id: &str| {
        message(&bob_jid, id, &format!("<body>{id}</body>"))
            .replace("<message ", "<message type='chat' ")
    };
    let bounced = |alice: &mut TestClient, id: &str| {
        let reply = alice.read_element_matching(|e| xml::root_attr(e, "id").as_deref() == Some(id));
        assert_eq!(
            xml::root_attr(&reply, "type").as_deref(),
            Some("error"),
            "{reply}"
        );
        assert!(reply.contains("too many messages"), "{reply}");
    };
    for id in ["m1", "m2"] {
        alice.send_raw(chat(id));
        assert_eq!(
            xml::root_attr(&next_message(&mut bob), "id").as_deref(),
            Some(id)
        );
    }
    alice.send_raw(chat("m3"));
    bounced(&mut alice, "m3");
    // The same rule, reloaded (a SIGHUP for a renewed certificate, say): the
    // hour's allowance is still spent.
    s.wall.reload(TWO_PER_SENDER, "configuration reloaded");
    alice.send_raw(chat("m4"));
    bounced(&mut alice, "m4");
    // A rule with another rate is another limit: it starts afresh.
    s.wall.reload(
        &TWO_PER_SENDER.replace("2/1h", "3/1h"),
        "configuration reloaded",
    );
    alice.send_raw(chat("m5"));
    assert_eq!(
        xml::root_attr(&next_message(&mut bob), "id").as_deref(),
        Some("m5")
    );
}

#[test]
fn sighup_swaps_rules_without_dropping_streams_and_a_bad_file_keeps_the_old_ones() {
    let mut s = Setup::start("");
    let (mut alice, _) = s.login(ALICE, "a");
    let (mut bob, bob_jid) = s.login(BOB, "b");
    let chat = |id: &str, body: &str| {
        message(&bob_jid, id, &format!("<body>{body}</body>"))
            .replace("<message ", "<message type='chat' ")
    };

    s.wall.reload(
        r#"
[[rule]]
name = "no-foo"
action = "drop"
[rule.match]
keywords = ["foo"]
"#,
        "configuration reloaded",
    );
    alice.send_raw(chat("r1", "foo"));
    alice.send_raw(chat("r2", "bar"));
    assert_eq!(
        xml::root_attr(&next_message(&mut bob), "id").as_deref(),
        Some("r2")
    );

    // A broken rule: the reload is refused with the line, the running rules stay.
    s.wall.reload(
        "[[rule]]\nname = \"broken\"\naction = \"explode\"\n",
        "reload refused",
    );
    assert!(
        s.wall
            .xmppwall
            .log()
            .contains("xmppwall.toml:30:10: unknown action"),
        "{}",
        s.wall.xmppwall.log()
    );
    alice.send_raw(chat("r3", "foo"));
    alice.send_raw(chat("r4", "baz"));
    assert_eq!(
        xml::root_attr(&next_message(&mut bob), "id").as_deref(),
        Some("r4")
    );
}

#[test]
fn check_reports_a_bad_rule_in_an_included_file_with_its_path_and_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let rules = dir.path().join("extra-rules.toml");
    std::fs::write(
        &rules,
        "[[rule]]\nname = \"ok\"\naction = \"drop\"\n\n[[rule]]\nname = \"bad\"\naction = \"drop\"\n[rule.match]\nregex = [\"(\"]\n",
    )
    .expect("writing the rules file");
    let out = support::xmppwall::check(&format!(
        "include = [\"{}\"]\n[upstream]\naddress = \"127.0.0.1:1\"\n[[listen]]\nfront = \"c2s\"\ntls = \"none\"\naddress = \"127.0.0.1:1\"\n",
        rules.display()
    ));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:9:9: invalid regular expression",
            rules.display()
        )),
        "{stderr}"
    );
}

#[test]
fn a_changed_list_file_is_reloaded_without_a_signal() {
    let dir = tempfile::tempdir().expect("temp dir");
    let words = dir.path().join("words.txt");
    std::fs::write(&words, "foo\n").expect("writing the list");
    let s = Setup::start(&format!(
        "[lists.words]\nkind = \"keywords\"\nfile = \"{}\"\n\n[[rule]]\nname = \"words\"\naction = \"drop\"\n[rule.match]\nkeywords = \"list:words\"\n",
        words.display()
    ));
    let (mut alice, _) = s.login(ALICE, "a");
    let (mut bob, bob_jid) = s.login(BOB, "b");
    let chat = |id: &str, body: &str| {
        format!("<message to='{bob_jid}' id='{id}' type='chat'><body>{body}</body></message>")
    };
    alice.send_raw(chat("w1", "foo"));
    alice.send_raw(chat("w2", "bar"));
    assert_eq!(
        xml::root_attr(&next_message(&mut bob), "id").as_deref(),
        Some("w2")
    );
    std::fs::write(&words, "bar\n").expect("rewriting the list");
    support::process::wait_until(Duration::from_secs(15), "the list reload", || {
        s.wall
            .xmppwall
            .log()
            .contains("configuration reloaded")
            .then_some(())
    });
    alice.send_raw(chat("w3", "bar"));
    alice.send_raw(chat("w4", "foo"));
    assert_eq!(
        xml::root_attr(&next_message(&mut bob), "id").as_deref(),
        Some("w4")
    );
}

#[test]
fn messages_from_strangers_are_dropped_and_contacts_get_through() {
    let s = Setup::start(
        r#"
[[rule]]
name = "strangers"
chain = "to-client"
action = "drop"
[rule.match]
kind = ["message"]
stranger = true
"#,
    );
    let (mut alice, alice_jid) = s.login(ALICE, "a");
    // Alice puts Bob on her roster and fetches it: xmppwall sees the push and the result.
    alice.send_raw(
        "<iq type='set' id='r1'><query xmlns='jabber:iq:roster'><item jid='bob@example.test'/></query></iq>",
    );
    alice.read_element_matching(|e| xml::root_attr(e, "id").as_deref() == Some("r1"));
    alice.send_raw("<iq type='get' id='r2'><query xmlns='jabber:iq:roster'/></iq>");
    let roster = alice.read_element_matching(|e| xml::root_attr(e, "id").as_deref() == Some("r2"));
    assert!(roster.contains("bob@example.test"), "{roster}");

    let (mut bob, _) = s.login(BOB, "b");
    let (mut carol, _) = s.login(support::CAROL, "c");
    let chat = |id: &str| {
        format!("<message to='{alice_jid}' id='{id}' type='chat'><body>hi</body></message>")
    };
    carol.send_raw(chat("from-carol"));
    // A directed presence (not a message, so the rule lets it through) after Carol's
    // message: the server hands Carol's stanzas to Alice's stream in order, so once
    // Alice has it, xmppwall has judged Carol's message, before Alice writes to her.
    carol.send_raw(format!("<presence to='{alice_jid}' id='after-carol'/>"));
    bob.send_raw(chat("from-bob"));
    let mut messages = Vec::new();
    let mut marker = false;
    while !marker || messages.is_empty() {
        let got = alice.read_element_matching(|e| {
            xml::root_name(e) == "message"
                || xml::root_attr(e, "id").as_deref() == Some("after-carol")
        });
        if xml::root_name(&got) == "message" {
            messages.push(xml::root_attr(&got, "id").unwrap_or_default());
        } else {
            marker = true;
        }
    }
    assert_eq!(messages, ["from-bob"]);

    // Once Alice writes to Carol, Carol is a contact and her reply gets through.
    alice.send_raw(
        "<message to='carol@example.test' id='to-carol' type='chat'><body>hello?</body></message>",
    );
    next_message(&mut carol);
    carol.send_raw(chat("reply-carol"));
    let got = next_message(&mut alice);
    assert_eq!(
        xml::root_attr(&got, "id").as_deref(),
        Some("reply-carol"),
        "{got}"
    );
}
