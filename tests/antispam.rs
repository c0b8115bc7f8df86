//! The anti-spam sections against a real Prosody, each asserted on the wire:
//! in-band registration (XEP-0077), the user directory (XEP-0055), incoming
//! subscription requests per domain, strangers, and federation lists.
//!
//! Prosody hosts `example.test` and `other.test`; xmppwall is told only of
//! `example.test`, so for it `other.test` is a remote domain. Senders on
//! `other.test` connect to Prosody directly, as a federated server would deliver.

mod support;

use std::net::IpAddr;

use support::client::TestClient;
use support::wall::{Wall, WallConfig};
use support::xml;
use support::{Prosody, ALICE, BOB, DOMAIN, OTHER_DOMAIN};

const STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";

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

    /// `user@other.test`, created if new, logged in directly at Prosody.
    fn remote(&self, user: &str, resource: &str) -> (TestClient, String) {
        let password = format!("{user}-remote-secret");
        self.prosody.register(user, OTHER_DOMAIN, &password);
        let mut c = TestClient::connect(self.prosody.c2s);
        c.domain = OTHER_DOMAIN.to_string();
        c.open_stream();
        c.try_auth_plain(user, &password)
            .unwrap_or_else(|e| panic!("{user}@{OTHER_DOMAIN} cannot log in: {e}"));
        let jid = c.bind(Some(resource));
        c.send_raw("<presence/>");
        (c, jid)
    }

    /// A stream on the plaintext listener from `source`, before authentication;
    /// returns the client and the features xmppwall relayed.
    fn unauthenticated_from(&self, source: &str) -> (TestClient, String) {
        let source: IpAddr = source.parse().expect("an address");
        let mut c = TestClient::connect_from(source, self.wall.plain);
        let features = c.open_stream();
        (c, features)
    }
}

fn error_reply(kind: &str, id: &str, attrs: &str, ty: &str, condition: &str, text: &str) -> String {
    format!(
        "<{kind} type='error' id='{id}'{attrs}><error type='{ty}'><{condition} xmlns='{STANZAS}'/>\
         <text xmlns='{STANZAS}' xml:lang='en'>{text}</text></error></{kind}>"
    )
}

fn register(c: &mut TestClient, id: &str, user: &str) -> String {
    c.send_raw(format!(
        "<iq type='set' id='{id}'><query xmlns='jabber:iq:register'>\
         <username>{user}</username><password>pw-{user}-1</password></query></iq>"
    ));
    c.read_element_matching(|e| xml::root_attr(e, "id").as_deref() == Some(id))
}

fn by_id(id: &'static str) -> impl Fn(&str) -> bool {
    move |e: &str| xml::root_attr(e, "id").as_deref() == Some(id)
}

/// Waits until the server has routed everything `c` sent so far (a ping's answer
/// comes after), so what a test sends next from elsewhere arrives after it.
fn routed(c: &mut TestClient) {
    c.send_raw("<iq type='get' id='routed' to='example.test'><ping xmlns='urn:xmpp:ping'/></iq>");
    c.read_element_matching(by_id("routed"));
}

/// The next message `c` receives (skipping presence and the like).
fn next_message(c: &mut TestClient) -> String {
    c.read_element_matching(|e| xml::root_name(e) == "message")
}

fn chat(to: &str, id: &str) -> String {
    format!("<message to='{to}' id='{id}' type='chat'><body>hello {id}</body></message>")
}

// ---- In-band registration (XEP-0077) ----

#[test]
fn registration_off_hides_the_feature_and_refuses_with_not_allowed() {
    let s = Setup::start("[registration]\nenabled = false\n");
    // Prosody offers registration (allow_registration = true); xmppwall hides it.
    let (mut c, features) = s.unauthenticated_from("127.0.0.1");
    assert!(
        !features.contains("http://jabber.org/features/iq-register"),
        "{features}"
    );
    c.send_raw("<iq type='get' id='reg1'><query xmlns='jabber:iq:register'/></iq>");
    let reply = c.read_element_matching(by_id("reg1"));
    assert_eq!(
        reply,
        error_reply(
            "iq",
            "reg1",
            "",
            "cancel",
            "not-allowed",
            "in-band registration is disabled on this server"
        )
    );
}

#[test]
fn registration_only_from_allowed_ranges() {
    let s = Setup::start("[registration]\nallow_from = [\"127.0.0.2/32\"]\n");
    let (mut outside, features) = s.unauthenticated_from("127.0.0.3");
    assert!(
        !features.contains("http://jabber.org/features/iq-register"),
        "{features}"
    );
    let reply = register(&mut outside, "out1", "mallory");
    assert_eq!(
        reply,
        error_reply(
            "iq",
            "out1",
            "",
            "cancel",
            "not-allowed",
            "in-band registration is not allowed from this address"
        )
    );
    let (mut inside, features) = s.unauthenticated_from("127.0.0.2");
    assert!(
        features.contains("http://jabber.org/features/iq-register"),
        "{features}"
    );
    let reply = register(&mut inside, "in1", "newbie");
    assert_eq!(
        xml::root_attr(&reply, "type").as_deref(),
        Some("result"),
        "{reply}"
    );
}

#[test]
fn registrations_per_address_are_limited_and_counted_on_success() {
    let s = Setup::start("[registration]\nper_address = \"1/1h\"\n");
    let (mut c, _) = s.unauthenticated_from("127.0.0.4");
    // A taken username fails at the server and costs nothing.
    let taken = register(&mut c, "r0", "alice");
    assert_eq!(
        xml::root_attr(&taken, "type").as_deref(),
        Some("error"),
        "{taken}"
    );
    assert!(taken.contains("<conflict"), "{taken}");
    let first = register(&mut c, "r1", "first");
    assert_eq!(
        xml::root_attr(&first, "type").as_deref(),
        Some("result"),
        "{first}"
    );
    let (mut again, _) = s.unauthenticated_from("127.0.0.4");
    let second = register(&mut again, "r2", "second");
    assert_eq!(
        second,
        error_reply(
            "iq",
            "r2",
            "",
            "wait",
            "policy-violation",
            "too many accounts created from this address: at most 1 per 1h; try again later"
        )
    );
    // Another address may still register.
    let (mut other, _) = s.unauthenticated_from("127.0.0.5");
    let third = register(&mut other, "r3", "third");
    assert_eq!(
        xml::root_attr(&third, "type").as_deref(),
        Some("result"),
        "{third}"
    );
    assert!(s.wall.xmppwall.log().contains("registration refused"));
}

#[test]
fn reserved_and_patterned_usernames_are_not_acceptable() {
    let s = Setup::start(
        "[registration]\nreserved = [\"admin\"]\nusername_patterns = [\"^[0-9]+$\", \"viagra\"]\n",
    );
    let (mut c, _) = s.unauthenticated_from("127.0.0.6");
    for (id, user) in [("u1", "Admin"), ("u2", "12345"), ("u3", "cheapviagra")] {
        let reply = register(&mut c, id, user);
        assert_eq!(
            reply,
            error_reply(
                "iq",
                id,
                "",
                "modify",
                "not-acceptable",
                &format!("the username \"{user}\" is not available; choose another")
            ),
        );
    }
    let ok = register(&mut c, "u4", "ordinary");
    assert_eq!(
        xml::root_attr(&ok, "type").as_deref(),
        Some("result"),
        "{ok}"
    );
}

// ---- User directory (XEP-0055) ----

#[test]
fn directory_search_is_refused_to_classes_not_allowed() {
    let s = Setup::start(
        "[directory]\nallow = [\"trusted\"]\n\n[limits]\ntrusted_jids = [\"bob@example.test\"]\n",
    );
    let (mut alice, alice_jid) = s.wall.login(ALICE, "a");
    let search = "<iq type='get' to='example.test' id='s1'><query xmlns='jabber:iq:search'/></iq>";
    alice.send_raw(search);
    let reply = alice.read_element_matching(by_id("s1"));
    assert_eq!(
        reply,
        error_reply(
            "iq",
            "s1",
            &format!(" from='example.test' to='{alice_jid}'"),
            "cancel",
            "not-allowed",
            "searching the user directory is not allowed"
        )
    );
    // A trusted user's search reaches Prosody, which has no directory and says so.
    let (mut bob, _) = s.wall.login(BOB, "b");
    bob.send_raw(search);
    let reply = bob.read_element_matching(by_id("s1"));
    assert_eq!(
        xml::root_attr(&reply, "type").as_deref(),
        Some("error"),
        "{reply}"
    );
    assert!(!reply.contains("searching the user directory"), "{reply}");
}

// ---- Incoming subscription requests per remote domain ----

#[test]
fn incoming_subscription_requests_over_the_domain_limit_are_dropped_and_logged() {
    let s = Setup::start("[subscriptions]\nincoming_per_domain = \"2/1h\"\n");
    let (mut alice, _) = s.wall.login(ALICE, "a");
    let (mut carol, _) = s.remote("carol", "c");
    let (mut dave, _) = s.remote("dave", "d");
    let (mut erin, _) = s.remote("erin", "e");
    // Prosody delivers one pending request per contact: three contacts, one domain.
    // Each request is routed before the next is sent: a ping answered after it.
    for (c, id) in [
        (&mut carol, "sub1"),
        (&mut dave, "sub2"),
        (&mut erin, "sub3"),
    ] {
        c.send_raw(format!(
            "<presence to='{}' type='subscribe' id='{id}'/>\
             <iq type='get' id='ping-{id}' to='{OTHER_DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>",
            ALICE.jid()
        ));
        c.read_element_matching(|e| {
            xml::root_attr(e, "id").is_some_and(|i| i.starts_with("ping-"))
        });
    }
    // A message after them: everything delivered before it has been seen once it arrives.
    dave.send_raw(chat(&ALICE.jid(), "after"));
    let mut subscribes = Vec::new();
    loop {
        let e = alice.read_element();
        if xml::root_name(&e) == "message" {
            assert_eq!(xml::root_attr(&e, "id").as_deref(), Some("after"), "{e}");
            break;
        }
        if xml::root_attr(&e, "type").as_deref() == Some("subscribe") {
            subscribes.push(xml::root_attr(&e, "id").unwrap_or_default());
        }
    }
    assert_eq!(subscribes, ["sub1", "sub2"]);
    assert!(
        s.wall.xmppwall.log().contains("too many from this domain"),
        "the drop is logged"
    );
}

// ---- Strangers ----

/// Alice puts `contact` on her roster at Prosody directly and returns the roster
/// version Prosody then has (XEP-0237).
fn roster_with(s: &Setup, contact: &str) -> String {
    let (mut alice, _) = TestClient::login(s.prosody.c2s, ALICE, "setup");
    alice.send_raw(format!(
        "<iq type='set' id='add'><query xmlns='jabber:iq:roster'><item jid='{contact}'/></query></iq>"
    ));
    alice.read_element_matching(by_id("add"));
    alice.send_raw("<iq type='get' id='get'><query xmlns='jabber:iq:roster' ver=''/></iq>");
    let roster = alice.read_element_matching(by_id("get"));
    let query = roster
        .find("<query")
        .map(|i| &roster[i..])
        .unwrap_or_default();
    xml::root_attr(query, "ver").unwrap_or_else(|| panic!("no roster version in {roster}"))
}

#[test]
fn strangers_messages_dropped_subscriptions_declined_contacts_and_locals_pass() {
    let s = Setup::start(
        "[strangers]\nmessages = \"drop\"\nsubscriptions = \"bounce\"\nsenders = \"remote\"\n",
    );
    let version = roster_with(&s, &format!("dave@{OTHER_DOMAIN}"));
    let (mut dave, _) = s.remote("dave", "d");
    let (mut carol, carol_jid) = s.remote("carol", "c");
    let (mut alice, alice_jid) = s.wall.login(ALICE, "a");
    // The client's cached version is current: Prosody would answer with no items.
    // xmppwall asks without the version, so the whole roster comes and it sees it.
    alice.send_raw(format!(
        "<iq type='get' id='r1'><query xmlns='jabber:iq:roster' ver='{version}'/></iq>"
    ));
    let roster = alice.read_element_matching(by_id("r1"));
    assert!(roster.contains(&format!("dave@{OTHER_DOMAIN}")), "{roster}");

    carol.send_raw(chat(&alice_jid, "from-carol"));
    routed(&mut carol);
    dave.send_raw(chat(&alice_jid, "from-dave"));
    let got = next_message(&mut alice);
    assert_eq!(
        xml::root_attr(&got, "id").as_deref(),
        Some("from-dave"),
        "{got}"
    );

    // A local stranger is not filtered with senders = "remote".
    let (mut bob, _) = TestClient::login(s.prosody.c2s, BOB, "b");
    bob.send_raw(chat(&alice_jid, "from-bob"));
    let got = next_message(&mut alice);
    assert_eq!(
        xml::root_attr(&got, "id").as_deref(),
        Some("from-bob"),
        "{got}"
    );

    // A remote stranger's subscription request is declined in Alice's name
    // (RFC 6121 §3.2.1) and never reaches her.
    carol.send_raw(format!("<presence to='{}' type='subscribe'/>", ALICE.jid()));
    routed(&mut carol);
    dave.send_raw(chat(&alice_jid, "after-subscribe"));
    let next = alice.read_element_matching(|e| {
        xml::root_name(e) == "message" || xml::root_attr(e, "type").as_deref() == Some("subscribe")
    });
    assert_eq!(
        xml::root_attr(&next, "id").as_deref(),
        Some("after-subscribe"),
        "{next}"
    );
    // Declined, Prosody no longer holds the request: a new session of Alice's, whose
    // initial presence gets every pending request (RFC 6121 §3.1.3), gets none.
    let (mut direct, _) = TestClient::login(s.prosody.c2s, ALICE, "direct");
    direct.send_raw(
        "<presence/><iq type='get' id='ping' to='example.test'><ping xmlns='urn:xmpp:ping'/></iq>",
    );
    let mut before_ping = Vec::new();
    loop {
        let e = direct.read_element();
        if xml::root_attr(&e, "id").as_deref() == Some("ping") {
            break;
        }
        before_ping.push(e);
    }
    assert!(
        !before_ping
            .iter()
            .any(|e| e.contains("type='subscribe'") && e.contains(&support_bare(&carol_jid))),
        "{before_ping:?}"
    );
}
#[test]
fn strangers_messages_bounced_with_service_unavailable() {
    let s = Setup::start("[strangers]\nmessages = \"bounce\"\n");
    let (mut alice, alice_jid) = s.wall.login(ALICE, "a");
    alice.send_raw("<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>");
    alice.read_element_matching(by_id("r1"));
    let (mut carol, carol_jid) = s.remote("carol", "c");
    carol.send_raw(chat(&alice_jid, "spam1"));
    let bounce = carol.read_element_matching(by_id("spam1"));
    assert_eq!(
        xml::root_attr(&bounce, "type").as_deref(),
        Some("error"),
        "{bounce}"
    );
    assert_eq!(
        xml::root_attr(&bounce, "to").as_deref(),
        Some(carol_jid.as_str()),
        "{bounce}"
    );
    assert_eq!(
        xml::root_attr(&bounce, "from")
            .map(|f| support_bare(&f))
            .as_deref(),
        Some(ALICE.jid().as_str()),
        "{bounce}"
    );
    assert!(
        bounce.contains(&format!(
            "<error type='cancel'><service-unavailable xmlns='{STANZAS}'/></error>"
        )),
        "{bounce}"
    );
    assert!(!bounce.contains("<body"), "{bounce}");
}

#[test]
fn strangers_messages_stripped_of_body_for_all_senders() {
    let s = Setup::start("[strangers]\nmessages = \"strip-body\"\nsenders = \"all\"\n");
    let (mut alice, alice_jid) = s.wall.login(ALICE, "a");
    alice.send_raw("<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>");
    alice.read_element_matching(by_id("r1"));
    let (mut bob, _) = TestClient::login(s.prosody.c2s, BOB, "b");
    bob.send_raw(format!(
        "<message to='{alice_jid}' id='m1' type='chat'><subject>WIN</subject><body>buy now</body>\
         <active xmlns='http://jabber.org/protocol/chatstates'/></message>"
    ));
    let got = next_message(&mut alice);
    assert_eq!(xml::root_attr(&got, "id").as_deref(), Some("m1"), "{got}");
    assert!(
        !got.contains("buy now") && !got.contains("<subject"),
        "{got}"
    );
    assert!(
        got.contains("http://jabber.org/protocol/chatstates"),
        "{got}"
    );
}

fn support_bare(jid: &str) -> String {
    jid.split('/').next().unwrap_or(jid).to_owned()
}

// ---- Federation allow and deny lists ----

#[test]
fn federation_deny_list_bounces_outgoing_and_drops_incoming() {
    let s = Setup::start(&format!(
        "[federation]\nmode = \"deny\"\ndomains = [\"{OTHER_DOMAIN}\"]\n"
    ));
    let (mut alice, alice_jid) = s.wall.login(ALICE, "a");
    let (mut carol, carol_jid) = s.remote("carol", "c");
    alice.send_raw(chat(&carol_jid, "f1"));
    let reply = alice.read_element_matching(by_id("f1"));
    assert_eq!(
        reply,
        error_reply(
            "message",
            "f1",
            &format!(" from='{carol_jid}' to='{alice_jid}'"),
            "cancel",
            "policy-violation",
            &format!("this server does not exchange messages with {OTHER_DOMAIN}")
        )
    );
    carol.send_raw(chat(&alice_jid, "from-carol"));
    routed(&mut carol);
    let (mut bob, _) = TestClient::login(s.prosody.c2s, BOB, "b");
    bob.send_raw(chat(&alice_jid, "from-bob"));
    let got = next_message(&mut alice);
    assert_eq!(
        xml::root_attr(&got, "id").as_deref(),
        Some("from-bob"),
        "{got}"
    );
}

#[test]
fn federation_allow_list_admits_only_listed_domains_and_wildcards() {
    let s = Setup::start(&format!(
        "[federation]\nmode = \"allow\"\ndomains = [\"*.{OTHER_DOMAIN}\", \"partner.test\"]\n"
    ));
    let (mut alice, alice_jid) = s.wall.login(ALICE, "a");
    // `*.other.test` admits subdomains only: other.test itself is not listed.
    alice.send_raw(chat(&format!("carol@{OTHER_DOMAIN}"), "a1"));
    let reply = alice.read_element_matching(by_id("a1"));
    assert!(reply.contains("<policy-violation"), "{reply}");
    // A subdomain of it, and a listed domain, pass xmppwall: the server then finds
    // no way to them (the test server has no route and looks up no DNS) and says so.
    for (to, id) in [
        (format!("carol@sub.{OTHER_DOMAIN}"), "a2"),
        ("dave@partner.test".to_owned(), "a3"),
    ] {
        alice.send_raw(chat(&to, id));
        let reply = alice.read_element_matching(by_id(id));
        assert!(
            reply.contains("<remote-server-not-found") && !reply.contains("<policy-violation"),
            "{reply}"
        );
    }
    // Local traffic is never subject to the list.
    let (mut bob, bob_jid) = s.wall.login(BOB, "b");
    alice.send_raw(chat(&bob_jid, "local"));
    let got = next_message(&mut bob);
    assert_eq!(
        xml::root_attr(&got, "id").as_deref(),
        Some("local"),
        "{got}"
    );
    let _ = alice_jid;
    let _ = DOMAIN;
}

#[test]
fn contacts_are_shared_by_an_accounts_streams_and_forgotten_with_the_last() {
    let s = Setup::start("[strangers]\nmessages = \"drop\"\n");
    let (mut first, _) = s.wall.login(ALICE, "first");
    first.send_raw(format!(
        "<iq type='set' id='r0'><query xmlns='jabber:iq:roster'><item jid='dave@{OTHER_DOMAIN}'/></query></iq>"
    ));
    first.read_element_matching(by_id("r0"));
    first.send_raw("<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>");
    first.read_element_matching(by_id("r1"));
    // The second stream never asks for the roster, yet knows the first one's.
    let (mut second, second_jid) = s.wall.login(ALICE, "second");
    let (mut carol, _) = s.remote("carol", "c");
    let (mut dave, _) = s.remote("dave", "d");
    carol.send_raw(chat(&second_jid, "spam-1"));
    routed(&mut carol);
    dave.send_raw(chat(&second_jid, "after-1"));
    routed(&mut dave);
    assert_eq!(
        xml::root_attr(&next_message(&mut second), "id").as_deref(),
        Some("after-1")
    );
    // Both streams end: the contacts go with them, and a new stream that has not
    // fetched its roster treats no one as a stranger (nothing is guessed).
    let xmppwall = &s.wall.xmppwall;
    let closed_before = xmppwall.log().matches("connection closed").count();
    drop(first);
    drop(second);
    support::process::wait_until(support::IO_TIMEOUT, "both streams closed", || {
        (xmppwall.log().matches("connection closed").count() >= closed_before + 2).then_some(())
    });
    let (mut third, third_jid) = s.wall.login(ALICE, "third");
    carol.send_raw(chat(&third_jid, "spam-2"));
    assert_eq!(
        xml::root_attr(&next_message(&mut third), "id").as_deref(),
        Some("spam-2")
    );
}
