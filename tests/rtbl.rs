//! Real-time block lists (`[[rtbl]]`) against a real Prosody hosting a XEP-0060
//! publish-subscribe node: xmppwall logs in with its own account, loads the items,
//! follows publish and retract notifications, and a rule naming the list drops what
//! the list holds. Entries are hex SHA-256 digests of bare JIDs, the xmppbl.org form.

mod support;

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use support::client::TestClient;
use support::process::wait_until;
use support::prosody::PUBSUB_DOMAIN;
use support::wall::{Wall, WallConfig};
use support::xml;
use support::{Prosody, ProsodyOptions, ALICE, CAROL, OTHER_DOMAIN};

const NODE: &str = "spammers";
const PUBSUB: &str = "http://jabber.org/protocol/pubsub";

fn hex_sha256(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `user@other.test`, logged in directly at Prosody.
fn remote(prosody: &Prosody, user: &str) -> (TestClient, String) {
    let password = format!("{user}-remote-secret");
    prosody.register(user, OTHER_DOMAIN, &password);
    let mut c = TestClient::connect(prosody.c2s);
    c.domain = OTHER_DOMAIN.to_string();
    c.open_stream();
    c.try_auth_plain(user, &password)
        .unwrap_or_else(|e| panic!("{user} cannot log in: {e}"));
    let jid = c.bind(Some("r"));
    (c, jid)
}

fn iq(c: &mut TestClient, id: &str, body: &str) -> String {
    c.send_raw(format!(
        "<iq type='set' to='{PUBSUB_DOMAIN}' id='{id}'><pubsub xmlns='{PUBSUB}'>{body}</pubsub></iq>"
    ));
    let answer = c.read_element_matching(|e| xml::root_attr(e, "id").as_deref() == Some(id));
    assert_eq!(
        xml::root_attr(&answer, "type").as_deref(),
        Some("result"),
        "{answer}"
    );
    answer
}

fn publish(c: &mut TestClient, id: &str) {
    iq(
        c,
        "pub",
        &format!(
            "<publish node='{NODE}'><item id='{id}'><report xmlns='urn:xmpp:reporting:1' \
             reason='urn:xmpp:reporting:spam'/></item></publish>"
        ),
    );
}

/// Waits until xmppwall's log has `needle` one more time than `before`.
fn logged(wall: &Wall, needle: &str, before: usize) -> Duration {
    let started = Instant::now();
    let xmppwall = &wall.xmppwall;
    wait_until(Duration::from_secs(10), needle, || {
        (xmppwall.log().matches(needle).count() > before).then_some(())
    });
    started.elapsed()
}

/// Sends a chat message and waits until the server has routed it (a ping answered).
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
fn block_list_items_are_loaded_followed_and_retracted() {
    let prosody = Prosody::start_with(ProsodyOptions {
        pubsub: true,
        ..ProsodyOptions::default()
    });
    prosody.register("rtbl", support::DOMAIN, "rtbl-secret-9");
    let frank = format!("frank@{OTHER_DOMAIN}");
    let eve = format!("eve@{OTHER_DOMAIN}");

    // The list exists with one entry before xmppwall starts.
    let (mut carol, _) = TestClient::login(prosody.c2s, CAROL, "admin");
    iq(
        &mut carol,
        "create",
        &format!(
            "<create node='{NODE}'/><configure><x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE' type='hidden'><value>{PUBSUB}#node_config</value></field>\
             <field var='pubsub#max_items'><value>256</value></field></x></configure>"
        ),
    );
    publish(&mut carol, &hex_sha256(&frank));

    let wall = Wall::start(
        prosody.c2s,
        WallConfig {
            tables: format!(
                r#"
[[rtbl]]
name = "testbl"
service = "{PUBSUB_DOMAIN}"
node = "{NODE}"
jid = "rtbl@example.test"
password = "rtbl-secret-9"

[[rule]]
name = "rtbl-senders"
chain = "to-client"
action = "drop"
[rule.match]
from = "list:testbl"
"#
            ),
            ..WallConfig::default()
        },
    );
    logged(&wall, "block list loaded", 0);
    assert!(
        wall.xmppwall.log().contains("entries=1"),
        "{}",
        wall.xmppwall.log()
    );

    let (mut alice, alice_jid) = wall.login(ALICE, "a");
    let (mut frank_c, _) = remote(&prosody, "frank");
    let (mut eve_c, _) = remote(&prosody, "eve");
    let (mut dave_c, _) = remote(&prosody, "dave");

    // Loaded at start: frank is dropped, eve is not.
    send_routed(&mut frank_c, &alice_jid, "frank-1");
    send_routed(&mut eve_c, &alice_jid, "eve-1");
    assert_eq!(next_message_id(&mut alice), "eve-1");

    // Published while xmppwall runs: eve is dropped from the notification on.
    let added = wall.xmppwall.log().matches("block list item added").count();
    publish(&mut carol, &hex_sha256(&eve));
    let took = logged(&wall, "block list item added", added);
    eprintln!("publish to xmppwall's log: {took:?}");
    send_routed(&mut eve_c, &alice_jid, "eve-2");
    send_routed(&mut dave_c, &alice_jid, "dave-1");
    assert_eq!(next_message_id(&mut alice), "dave-1");

    // Retracted: eve gets through again.
    let retracted = wall
        .xmppwall
        .log()
        .matches("block list item retracted")
        .count();
    iq(
        &mut carol,
        "retract",
        &format!(
            "<retract node='{NODE}' notify='true'><item id='{}'/></retract>",
            hex_sha256(&eve)
        ),
    );
    let took = logged(&wall, "block list item retracted", retracted);
    eprintln!("retract to xmppwall's log: {took:?}");
    send_routed(&mut eve_c, &alice_jid, "eve-3");
    assert_eq!(next_message_id(&mut alice), "eve-3");
}
