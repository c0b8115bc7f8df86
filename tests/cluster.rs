//! Two xmppwall instances sharing state through one real Redis (Debian's
//! `redis-server`, started here on a free loopback port): a ban made on one refuses
//! the address on the other, an operator's ban through one instance's admin API
//! refuses and kicks on the other (and its removal lifts it there), a per-address
//! connection cap, a per-account resource limit and a rule's rate limit hold across
//! both, a report made through one is listed and counted by the other, and
//! with Redis stopped each instance goes on enforcing its own limits until Redis is
//! back and sharing resumes.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use support::client::{stream_from, TestClient};
use support::http::{request, request_ok};
use support::ports::free_loopback_addr;
use support::process::wait_until;
use support::redis::Redis;
use support::wall::{Wall, WallConfig};
use support::{xml, Prosody, ALICE, BOB, IO_TIMEOUT, OTHER_DOMAIN};

const STREAMS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
const STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
const ERRORS: &str = "urn:xmpp:errors";
/// How long an instance may take to notice Redis come or go (it checks every second).
const REDIS_NOTICE: Duration = Duration::from_secs(20);

/// `127.0.0.n`.
fn loopback(n: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, n])
}

struct Pair {
    a: Wall,
    b: Wall,
    redis: Redis,
    prosody: Prosody,
}

impl Pair {
    fn start(tables: &str) -> Pair {
        Pair::start_with(tables, "")
    }

    /// `b_only` goes into B's configuration only, after `tables`.
    fn start_with(tables: &str, b_only: &str) -> Pair {
        Pair::start_each(tables, "", b_only)
    }

    /// `a_only` and `b_only` go into A's and B's configuration only, after `tables`.
    fn start_each(tables: &str, a_only: &str, b_only: &str) -> Pair {
        let redis = Redis::start();
        let prosody = Prosody::start();
        let config = |extra: &str| {
            WallConfig {
            tables: format!(
                "[store]\npath = \":memory:\"\nshared = \"redis\"\nredis = {:?}\n\n{tables}\n{extra}",
                redis.url()
            ),
            ..WallConfig::default()
        }
        };
        let a = Wall::start(prosody.c2s, config(a_only));
        let b = Wall::start(prosody.c2s, config(b_only));
        let pair = Pair {
            a,
            b,
            redis,
            prosody,
        };
        pair.wait_for_log(REACHABLE, 1);
        pair
    }

    /// Waits until both instances logged `what` at least `n` times.
    fn wait_for_log(&self, what: &str, n: usize) {
        for wall in [&self.a, &self.b] {
            wait_until(REDIS_NOTICE, what, || {
                (wall.xmppwall.log().matches(what).count() >= n).then_some(())
            });
        }
    }
}

const REACHABLE: &str = "Redis reachable; sharing bans and counts";
const UNREACHABLE: &str = "Redis is unreachable; enforcing with this instance's state only";
const REMOTE_BAN: &str = "ban from another instance";

/// Two failed SASL PLAIN attempts from `source`: the second bans the address.
fn get_banned(source: IpAddr, addr: SocketAddr) {
    let mut c = TestClient::connect_from(source, addr);
    c.open_stream();
    for _ in 0..2 {
        let answer = c
            .try_auth_plain("alice", "wrong")
            .expect_err("a wrong password fails");
        assert_eq!(xml::root_name(&answer), "failure", "{answer}");
    }
    let closing = c.read_until_closed();
    assert!(
        closing.contains("too many failed authentication attempts from this address"),
        "{closing:?}"
    );
}

/// What a banned address gets on a new connection: a stream header, then
/// `<policy-violation/>` naming the ban's end (XEP-0205 §2.3).
fn assert_refused_as_banned(source: IpAddr, addr: SocketAddr) {
    let mut c = TestClient::connect_from(source, addr);
    c.send_stream_header();
    c.read_stream_header();
    let rest = c.read_until_closed();
    let open = format!(
        "<stream:error><policy-violation xmlns='{STREAMS}'/><text xmlns='{STREAMS}' xml:lang='en'>this address is banned until "
    );
    assert!(rest.starts_with(&open), "not the ban error: {rest:?}");
}

const BAN_AFTER_TWO_FAILURES: &str = "[auth]\nmax_failures = \"2/1h\"\nban = \"10m\"\n";
const TWO_CONNECTIONS: &str =
    "[gate]\nmax_connections_per_address = 2\nconnection_attempts = \"off\"\n";

#[test]
fn a_ban_made_on_one_instance_refuses_the_address_on_the_other() {
    let p = Pair::start(BAN_AFTER_TWO_FAILURES);
    get_banned(loopback(51), p.a.plain);
    // Propagation is by publish/subscribe: wait (bounded) until B applied it.
    wait_until(IO_TIMEOUT, "B to apply A's ban", || {
        p.b.xmppwall.log().contains(REMOTE_BAN).then_some(())
    });
    assert_refused_as_banned(loopback(51), p.b.plain);
    assert_refused_as_banned(loopback(51), p.a.plain);
    // Another address still gets in on B.
    assert!(stream_from(loopback(52), p.b.plain).is_some());
}

#[test]
fn connections_that_end_while_redis_restarts_with_its_data_are_not_counted_after_it() {
    let mut p = Pair::start(TWO_CONNECTIONS);
    let a1 = stream_from(loopback(57), p.a.plain).expect("first connection, on A");
    let a2 = stream_from(loopback(57), p.a.plain).expect("second connection, on A");
    // Once A's count reached Redis, B knows the address is at its cap.
    wait_until(IO_TIMEOUT, "B to see A's two connections", || {
        stream_from(loopback(57), p.b.plain).is_none().then_some(())
    });
    // Redis restarts with its data (A's count of two in it); meanwhile A's two
    // connections end.
    p.redis.shutdown_saving();
    p.wait_for_log(UNREACHABLE, 1);
    drop((a1, a2));
    std::thread::sleep(Duration::from_secs(2));
    p.redis.start_again();
    p.wait_for_log(REACHABLE, 2);
    // A holds none now: B admits two.
    let b1 = wait_until(IO_TIMEOUT, "a place for 127.0.0.57 on B", || {
        stream_from(loopback(57), p.b.plain)
    });
    let b2 = stream_from(loopback(57), p.b.plain)
        .expect("a second place: A's old count is gone from Redis");
    drop((b1, b2));
}

#[test]
fn a_per_address_connection_cap_holds_across_both_instances() {
    let p = Pair::start(TWO_CONNECTIONS);
    let on_a = stream_from(loopback(53), p.a.plain).expect("first connection, on A");
    let _on_b = stream_from(loopback(53), p.b.plain).expect("second connection, on B");
    // Each instance holds one: only the shared count knows the address is at its cap.
    assert!(stream_from(loopback(53), p.a.plain).is_none());
    assert!(stream_from(loopback(53), p.b.plain).is_none());
    // Another address is not affected.
    assert!(stream_from(loopback(54), p.b.plain).is_some());
    // Closing the one on A gives its place back on B (once A's count reached Redis).
    drop(on_a);
    let again = wait_until(IO_TIMEOUT, "a free place for 127.0.0.53 on B", || {
        stream_from(loopback(53), p.b.plain)
    });
    drop(again);
}

#[test]
fn with_redis_gone_each_instance_enforces_alone_and_sharing_resumes_when_it_returns() {
    let mut p = Pair::start(&format!("{TWO_CONNECTIONS}\n{BAN_AFTER_TWO_FAILURES}"));
    p.redis.stop();
    p.wait_for_log(UNREACHABLE, 1);

    // Each instance keeps its own cap of two connections per address...
    let a1 = stream_from(loopback(55), p.a.plain).expect("A admits a first");
    let a2 = stream_from(loopback(55), p.a.plain).expect("A admits a second");
    assert!(
        stream_from(loopback(55), p.a.plain).is_none(),
        "A's own cap"
    );
    let b1 = stream_from(loopback(55), p.b.plain).expect("B admits a first");
    let b2 = stream_from(loopback(55), p.b.plain).expect("B admits a second");
    assert!(
        stream_from(loopback(55), p.b.plain).is_none(),
        "B's own cap"
    );
    // ... and its own bans.
    get_banned(loopback(56), p.a.plain);
    assert_refused_as_banned(loopback(56), p.a.plain);
    drop((b1, b2));
    // Those operations each met the outage; it was logged once all the same.
    for wall in [&p.a, &p.b] {
        assert_eq!(
            wall.xmppwall.log().matches(UNREACHABLE).count(),
            1,
            "the outage is logged once, not per operation"
        );
    }

    p.redis.start_again();
    p.wait_for_log(REACHABLE, 2);
    // The ban A made while Redis was away reaches B once Redis is back.
    wait_until(
        IO_TIMEOUT,
        "B to apply the ban A made during the outage",
        || p.b.xmppwall.log().contains(REMOTE_BAN).then_some(()),
    );
    assert_refused_as_banned(loopback(56), p.b.plain);
    // A wrote its two connections back into the shared count: B, holding none, refuses.
    assert!(
        stream_from(loopback(55), p.b.plain).is_none(),
        "the shared cap holds again"
    );
    drop(a1);
    let again = wait_until(IO_TIMEOUT, "a free place for 127.0.0.55 on B", || {
        stream_from(loopback(55), p.b.plain)
    });
    drop((a2, again));
}

const TWO_RESOURCES: &str = "[limits.registered]\nresources_per_account = 2\n";

/// Authenticates as alice through `addr` and asks to bind `resource`; returns the
/// client and the server's (or xmppwall's) answer.
fn bind_alice(addr: SocketAddr, resource: &str) -> (TestClient, String) {
    let mut c = TestClient::connect(addr);
    c.open_stream();
    c.auth_plain(ALICE);
    c.send_raw(format!(
        "<iq type='set' id='bind-{resource}'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
         <resource>{resource}</resource></bind></iq>"
    ));
    let answer = c.read_element();
    (c, answer)
}

/// What a bind over the account's resource limit gets (XEP-0205 §2.4).
fn resource_limit_exceeded(resource: &str) -> String {
    format!(
        "<iq type='error' id='bind-{resource}'><error type='cancel'>\
         <resource-constraint xmlns='{STANZAS}'/>\
         <text xmlns='{STANZAS}' xml:lang='en'>at most 2 resources may be bound to one account</text>\
         <resource-limit-exceeded xmlns='{ERRORS}'/></error></iq>"
    )
}

#[test]
fn resources_per_account_hold_across_both_instances() {
    let p = Pair::start(TWO_RESOURCES);
    let (_on_a, answer) = bind_alice(p.a.plain, "one");
    assert_eq!(
        xml::root_attr(&answer, "type").as_deref(),
        Some("result"),
        "{answer}"
    );
    let (on_b, answer) = bind_alice(p.b.plain, "two");
    assert_eq!(
        xml::root_attr(&answer, "type").as_deref(),
        Some("result"),
        "{answer}"
    );
    // Each instance holds one: only the shared count knows the account is at its limit.
    let (mut on_a, answer) = bind_alice(p.a.plain, "three");
    assert_eq!(answer, resource_limit_exceeded("three"));
    let (_refused_on_b, answer) = bind_alice(p.b.plain, "four");
    assert_eq!(answer, resource_limit_exceeded("four"));
    // Ending the stream on B gives its resource back (once B's count reached Redis):
    // the refused stream on A binds when it asks again.
    drop(on_b);
    let bound = wait_until(IO_TIMEOUT, "a free resource for alice on A", || {
        on_a.send_raw(
            "<iq type='set' id='bind-three'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
             <resource>three</resource></bind></iq>",
        );
        let answer = on_a.read_element();
        (xml::root_attr(&answer, "type").as_deref() == Some("result")).then_some(answer)
    });
    assert_eq!(
        xml::text(&bound, "jid").as_deref(),
        Some("alice@example.test/three")
    );
}

const TOKEN: &str = "cluster-admin-token-0123456789abcdef";
/// One report is enough to ban its subject.
const BAN_ON_ONE_REPORT: &str = "[reputation]\nreport_weight = 10\nthrottle_at = \"off\"\n\
                                 quarantine_at = \"off\"\nban_at = 5\n";

/// `user@other.test`, logged in directly at Prosody (not through xmppwall).
fn remote(prosody: &Prosody, user: &str) -> TestClient {
    let password = format!("{user}-remote-secret");
    prosody.register(user, OTHER_DOMAIN, &password);
    let mut c = TestClient::connect(prosody.c2s);
    c.domain = OTHER_DOMAIN.to_string();
    c.open_stream();
    c.try_auth_plain(user, &password)
        .unwrap_or_else(|e| panic!("{user} cannot log in: {e}"));
    c.bind(Some("r"));
    c.send_raw("<presence/>");
    c
}

/// A chat message to `to`, then a ping to the server: once the ping's answer is
/// back, the server has routed the message.
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
fn a_report_made_through_one_instance_is_listed_and_counted_by_the_other() {
    let admin = free_loopback_addr();
    let p = Pair::start_with(
        BAN_ON_ONE_REPORT,
        &format!("[admin]\nlisten = \"{admin}\"\ntoken = \"{TOKEN}\"\n"),
    );
    let get = |path: &str| {
        let answer = request(admin, "GET", path, Some(TOKEN), None);
        assert_eq!(answer.status, 200, "GET {path}: {}", answer.body);
        answer.json()
    };
    let (mut alice, _) = p.a.login(ALICE, "a");
    let (mut bob, bob_jid) = p.b.login(BOB, "b");
    let mut carol = remote(&p.prosody, "carol");
    let mut dave = remote(&p.prosody, "dave");
    let carol_bare = format!("carol@{OTHER_DOMAIN}");

    // Before any report, Carol reaches Bob through B.
    send_routed(&mut carol, &bob_jid, "carol-1");
    assert_eq!(next_message_id(&mut bob), "carol-1");

    // Alice reports Carol through A (XEP-0377 inside a XEP-0191 block).
    alice.send_raw(format!(
        "<iq type='set' id='r1'><block xmlns='urn:xmpp:blocking'><item jid='{carol_bare}'>\
         <report xmlns='urn:xmpp:reporting:1' reason='urn:xmpp:reporting:spam'>\
         <stanza-id xmlns='urn:xmpp:sid:0' by='{carol_bare}' id='s1'/>\
         <text xml:lang='en'>unsolicited offers</text></report></item></block></iq>"
    ));
    let answer = alice.read_element_matching(|e| xml::root_attr(e, "id").as_deref() == Some("r1"));
    assert_eq!(
        xml::root_attr(&answer, "type").as_deref(),
        Some("result"),
        "{answer}"
    );

    // B's review lists it (B stored it from the shared stream)...
    let reports = wait_until(IO_TIMEOUT, "the report listed by B", || {
        let v = get(&format!("/v1/reports?subject={carol_bare}"));
        v["reports"]
            .as_array()
            .is_some_and(|l| !l.is_empty())
            .then_some(v)
    });
    let listed = &reports["reports"][0];
    assert_eq!(listed["reporter"], ALICE.jid(), "{reports}");
    assert_eq!(listed["reason"], "spam", "{reports}");
    assert_eq!(listed["text"], "unsolicited offers", "{reports}");
    // ... and B's score for Carol crossed the ban threshold.
    wait_until(IO_TIMEOUT, "Carol's shared score on B", || {
        let v = get(&format!("/v1/reputation?subject={carol_bare}"));
        v["reputation"][0]["score"]
            .as_f64()
            .is_some_and(|s| s >= 5.0)
            .then_some(())
    });
    // So B, where nobody reported her, drops what Carol sends; Dave still gets through.
    send_routed(&mut carol, &bob_jid, "carol-2");
    send_routed(&mut dave, &bob_jid, "dave-1");
    assert_eq!(next_message_id(&mut bob), "dave-1");
}

/// `[admin]` on `addr` with the test token.
fn admin_at(addr: SocketAddr) -> String {
    format!("[admin]\nlisten = \"{addr}\"\ntoken = \"{TOKEN}\"\n")
}

fn api(admin: SocketAddr, method: &str, path: &str, body: Option<&str>) -> serde_json::Value {
    request_ok(admin, method, path, TOKEN, body)
}

const REMOTE_OPERATOR_BAN: &str = "operator ban from another instance";
const REMOTE_OPERATOR_UNBAN: &str = "operator ban lifted by another instance";

/// What a banned address gets from the gate: a stream header, then exactly this
/// `<policy-violation/>` (RFC 6120 §4.9.3.18) and the end of the stream.
fn operator_address_ban_seen(source: IpAddr, addr: SocketAddr, until: &str) {
    let mut c = TestClient::connect_from(source, addr);
    c.send_stream_header();
    c.read_stream_header();
    assert_eq!(
        c.read_until_closed(),
        format!(
            "<stream:error><policy-violation xmlns='{STREAMS}'/>\
             <text xmlns='{STREAMS}' xml:lang='en'>this address is banned {until}</text>\
             </stream:error></stream:stream>"
        )
    );
}

#[test]
fn an_operator_ban_through_one_instance_refuses_and_kicks_on_the_other_and_delete_lifts_it() {
    let (admin_a, admin_b) = (free_loopback_addr(), free_loopback_addr());
    let p = Pair::start_each("", &admin_at(admin_a), &admin_at(admin_b));
    let (mut alice_on_b, _) = p.b.login(ALICE, "b");

    // An address, until lifted, through A's admin API.
    api(
        admin_a,
        "POST",
        "/v1/bans",
        Some(r#"{"kind": "address", "value": "127.0.0.57", "reason": "abuse"}"#),
    );
    wait_until(IO_TIMEOUT, "B to apply A's address ban", || {
        p.b.xmppwall
            .log()
            .contains(REMOTE_OPERATOR_BAN)
            .then_some(())
    });
    operator_address_ban_seen(loopback(57), p.b.plain, "until further notice");
    let listed = api(admin_b, "GET", "/v1/bans", None);
    assert!(
        listed["bans"]
            .as_array()
            .is_some_and(|l| l.iter().any(|b| b["value"] == "127.0.0.57"
                && b["source"] == "operator"
                && b["reason"] == "abuse")),
        "{listed}"
    );
    // Another address still gets in on B.
    assert!(stream_from(loopback(59), p.b.plain).is_some());

    // An account, for an hour: Alice's live stream on B ends with the same stream
    // error a kick on A would send.
    let made = api(
        admin_a,
        "POST",
        "/v1/bans",
        Some(&format!(
            r#"{{"kind": "account", "value": "{}", "duration": "1h"}}"#,
            ALICE.jid()
        )),
    );
    let until = made["ban"]["until"]
        .as_str()
        .expect("the ban's end")
        .to_owned();
    assert_eq!(
        made["kicked"],
        serde_json::json!([]),
        "nothing to kick on A"
    );
    let rest = alice_on_b.read_until_closed();
    let kicked = format!(
        "<stream:error><policy-violation xmlns='{STREAMS}'/>\
         <text xmlns='{STREAMS}' xml:lang='en'>this account is banned until {until}</text>\
         </stream:error></stream:stream>"
    );
    assert!(rest.ends_with(&kicked), "{rest:?}");
    // A new login on B: <account-disabled/> instead of the server's success.
    let mut c = TestClient::connect(p.b.plain);
    c.open_stream();
    let answer = c
        .try_auth_plain(ALICE.user, ALICE.password)
        .expect_err("banned on B");
    assert!(xml::has_element(&answer, "account-disabled"), "{answer}");

    // DELETE on A lifts both on B.
    api(
        admin_a,
        "DELETE",
        "/v1/bans?kind=address&value=127.0.0.57",
        None,
    );
    api(
        admin_a,
        "DELETE",
        &format!("/v1/bans?kind=account&value={}", ALICE.jid()),
        None,
    );
    wait_until(IO_TIMEOUT, "B to lift both bans", || {
        (p.b.xmppwall.log().matches(REMOTE_OPERATOR_UNBAN).count() >= 2).then_some(())
    });
    assert!(stream_from(loopback(57), p.b.plain).is_some());
    p.b.login_plain_from(loopback(57), ALICE, "back");
    let listed = api(admin_b, "GET", "/v1/bans", None);
    assert_eq!(listed["bans"], serde_json::json!([]), "{listed}");
}

#[test]
fn an_operator_ban_made_while_redis_is_away_reaches_the_others_when_it_returns() {
    let admin_a = free_loopback_addr();
    let mut p = Pair::start_each("", &admin_at(admin_a), "");
    p.redis.stop();
    p.wait_for_log(UNREACHABLE, 1);
    api(
        admin_a,
        "POST",
        "/v1/bans",
        Some(r#"{"kind": "address", "value": "127.0.0.58/31"}"#),
    );
    // In force on A at once; B cannot know yet.
    operator_address_ban_seen(loopback(58), p.a.plain, "until further notice");
    assert!(stream_from(loopback(58), p.b.plain).is_some());

    p.redis.start_again();
    p.wait_for_log(REACHABLE, 2);
    wait_until(
        IO_TIMEOUT,
        "B to apply the ban A made during the outage",
        || {
            p.b.xmppwall
                .log()
                .contains(REMOTE_OPERATOR_BAN)
                .then_some(())
        },
    );
    operator_address_ban_seen(loopback(59), p.b.plain, "until further notice");

    // An instance started now reads it from Redis.
    let c = Wall::start(
        p.prosody.c2s,
        WallConfig {
            tables: format!(
                "[store]\npath = \":memory:\"\nshared = \"redis\"\nredis = {:?}\n",
                p.redis.url()
            ),
            ..WallConfig::default()
        },
    );
    wait_until(REDIS_NOTICE, "C to load the stored ban", || {
        c.xmppwall.log().contains(REMOTE_OPERATOR_BAN).then_some(())
    });
    operator_address_ban_seen(loopback(58), c.plain, "until further notice");
}

/// At most four messages per hour from one sender, the excess bounced.
const FOUR_PER_SENDER: &str = r#"
[[rule]]
name = "chatty"
action = "bounce"
bounce = { type = "wait", condition = "resource-constraint", text = "too many messages" }
rate_limit = { key = "from", limit = "4/1h" }
[rule.match]
kind = ["message"]
"#;

/// Sends a chat message to `to` and waits until `to_client` receives it.
fn delivered(from: &mut TestClient, to_client: &mut TestClient, to: &str, id: &str) {
    from.send_raw(format!(
        "<message to='{to}' id='{id}' type='chat'><body>{id}</body></message>"
    ));
    let got = to_client.read_element_matching(|e| xml::root_name(e) == "message");
    assert_eq!(xml::root_attr(&got, "id").as_deref(), Some(id), "{got}");
}

/// Two messages from Alice through A, two through B, all delivered to Bob (on A):
/// four is the limit, so every interleaving of the instances' batches passes them.
fn two_through_each(p: &Pair) -> (TestClient, String, TestClient, String) {
    let (mut bob, bob_jid) = p.a.login(BOB, "b");
    let (mut alice_a, alice_a_jid) = p.a.login(ALICE, "a");
    let (mut alice_b, _) = p.b.login(ALICE, "b");
    delivered(&mut alice_a, &mut bob, &bob_jid, "a1");
    delivered(&mut alice_a, &mut bob, &bob_jid, "a2");
    delivered(&mut alice_b, &mut bob, &bob_jid, "b1");
    delivered(&mut alice_b, &mut bob, &bob_jid, "b2");
    (alice_a, alice_a_jid, bob, bob_jid)
}

fn metric(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn a_rule_rate_limit_holds_across_both_instances_once_the_batch_is_in() {
    let admin_a = free_loopback_addr();
    let p = Pair::start_each(FOUR_PER_SENDER, &admin_at(admin_a), "");
    let (mut alice_a, alice_a_jid, _bob, bob_jid) = two_through_each(&p);
    // A has added B's two to Alice's bucket (one batch each way, within seconds).
    wait_until(IO_TIMEOUT, "A to receive B's rule rate use", || {
        let scrape = request(admin_a, "GET", "/metrics", Some(TOKEN), None).body;
        metric(&scrape, "xmppwall_shared_rule_rate_events_total{}")
            .is_some_and(|n| n >= 2.0)
            .then_some(())
    });
    // Her fifth message overall, the third through A: bounced by the rule.
    alice_a.send_raw(format!(
        "<message to='{bob_jid}' id='a3' type='chat'><body>a3</body></message>"
    ));
    let reply = alice_a.read_element_matching(|e| xml::root_attr(e, "id").as_deref() == Some("a3"));
    assert_eq!(
        reply,
        format!(
            "<message type='error' id='a3' from='{bob_jid}' to='{alice_a_jid}'><error type='wait'>\
             <resource-constraint xmlns='{STANZAS}'/>\
             <text xmlns='{STANZAS}' xml:lang='en'>too many messages</text>\
             </error></message>"
        )
    );
}

#[test]
fn without_shared_state_the_same_traffic_passes_on_each_instance() {
    let prosody = Prosody::start();
    let config = || WallConfig {
        tables: format!("[store]\npath = \":memory:\"\n\n{FOUR_PER_SENDER}"),
        ..WallConfig::default()
    };
    let p = Pair {
        a: Wall::start(prosody.c2s, config()),
        b: Wall::start(prosody.c2s, config()),
        redis: Redis::start(),
        prosody,
    };
    let (mut alice_a, _, mut bob, bob_jid) = two_through_each(&p);
    // Each instance counts only its own two: the third through A is delivered.
    delivered(&mut alice_a, &mut bob, &bob_jid, "a3");
}
