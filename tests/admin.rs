//! The admin API, the metrics and `xmppwall ctl` against a running xmppwall in front
//! of a real Prosody: every endpoint with and without the token, kicks and bans
//! asserted on the wire, counters checked after known traffic, the CLI run as a
//! subprocess, and a reload with a broken rules file.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::process::Command;

use serde_json::{json, Value};
use support::client::TestClient;
use support::http::{request, request_with, Answer};
use support::wall::{Wall, WallConfig};
use support::xml;
use support::xmppwall::binary;
use support::{free_loopback_addr, Account, Prosody, ALICE, BOB, CAROL, DOMAIN, OTHER_DOMAIN};

const TOKEN: &str = "test-admin-token-0123456789abcdef";
const STREAMS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
const STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
const SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";

/// Every route of the API with a request that exercises it (the list is checked
/// against the router's own list below, so a new route needs a line here).
const REQUESTS: &[(&str, &str, Option<&str>)] = &[
    ("GET", "/metrics", None),
    ("GET", "/v1/stats", None),
    ("GET", "/v1/sessions", None),
    ("POST", "/v1/sessions/kick", Some(r#"{"ip":"192.0.2.1"}"#)),
    ("POST", "/v1/sessions/999999/kick", Some("{}")),
    ("GET", "/v1/bans", None),
    (
        "POST",
        "/v1/bans",
        Some(r#"{"kind":"address","value":"192.0.2.99","duration":"1m"}"#),
    ),
    ("DELETE", "/v1/bans?kind=address&value=192.0.2.99", None),
    ("POST", "/v1/reload", None),
    ("GET", "/v1/verdicts", None),
    ("GET", "/v1/talkers?seconds=60", None),
    ("GET", "/v1/reports", None),
    ("GET", "/v1/reputation", None),
    ("GET", "/v1/lists", None),
    ("GET", "/v1/lists/no-such-list", None),
];

struct Setup {
    wall: Wall,
    admin: SocketAddr,
    prosody: Prosody,
}

impl Setup {
    fn start() -> Setup {
        Setup::start_with("", "")
    }

    /// `admin` goes inside `[admin]`; `tables` after it.
    fn start_with(admin: &str, tables: &str) -> Setup {
        Setup::start_full(admin, tables, "")
    }

    fn start_full(admin_extra: &str, tables: &str, top: &str) -> Setup {
        let prosody = Prosody::start();
        let admin = free_loopback_addr();
        let wall = Wall::start(
            prosody.c2s,
            WallConfig {
                domains: vec![OTHER_DOMAIN.to_owned()],
                top: top.to_owned(),
                tables: format!(
                    "[admin]\nlisten = \"{admin}\"\ntoken = \"{TOKEN}\"\n{admin_extra}\n\n{tables}"
                ),
                ..WallConfig::default()
            },
        );
        Setup {
            wall,
            admin,
            prosody,
        }
    }

    fn api(&self, method: &str, path: &str, body: Option<&str>) -> Answer {
        request(self.admin, method, path, Some(TOKEN), body)
    }

    fn get(&self, path: &str) -> Value {
        let a = self.api("GET", path, None);
        assert_eq!(a.status, 200, "GET {path}: {}", a.body);
        a.json()
    }

    fn post(&self, path: &str, body: Value) -> Answer {
        self.api("POST", path, Some(&body.to_string()))
    }

    fn login_from(&self, source: IpAddr, account: Account, resource: &str) -> (TestClient, String) {
        self.wall.login_plain_from(source, account, resource)
    }

    /// The id of the live session with this full JID.
    fn session_id(&self, jid: &str) -> u64 {
        let v = self.get(&format!("/v1/sessions?jid={}", jid.replace('/', "%2F")));
        let list = v["sessions"].as_array().expect("sessions");
        assert_eq!(list.len(), 1, "{v}");
        list[0]["id"].as_u64().expect("id")
    }

    fn ctl(&self, args: &[&str]) -> std::process::Output {
        Command::new(binary())
            .arg("ctl")
            .arg("--admin")
            .arg(self.admin.to_string())
            .arg("--token")
            .arg(TOKEN)
            .args(args)
            .output()
            .expect("running xmppwall ctl")
    }
}

fn loopback(n: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, n])
}

fn chat(to: &str, id: &str, body: &str) -> String {
    format!("<message type='chat' to='{to}' id='{id}'><body>{body}</body></message>")
}

fn next_message(c: &mut TestClient) -> String {
    c.read_element_matching(|e| xml::root_name(e) == "message")
}

/// The value of one series in a text exposition (`name{labels} value`).
fn metric(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no series {series} in the scrape:\n{scrape}"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{series}: {e}"))
}

#[test]
fn every_endpoint_refuses_without_the_token_and_answers_with_it() {
    let s = Setup::start();
    let listed: Vec<(String, String)> = xmppwall_admin::route_list()
        .iter()
        .map(|(m, p)| (m.to_ascii_uppercase(), p.to_string()))
        .collect();
    for (method, path) in &listed {
        let covered = REQUESTS.iter().any(|(m, p, _)| {
            let p = p.split('?').next().unwrap_or(p);
            m == method
                && (p == path
                    || (path.contains("{id}")
                        && p.starts_with("/v1/sessions/")
                        && p.ends_with("/kick")
                        && p != "/v1/sessions/kick")
                    || (path == "/v1/lists/{name}" && p.starts_with("/v1/lists/")))
        });
        assert!(covered, "no request in this test exercises {method} {path}");
    }
    for (method, path, body) in REQUESTS {
        for token in [None, Some("wrong-token-wrong-token-wrong")] {
            let a = request(s.admin, method, path, token, *body);
            assert_eq!(a.status, 401, "{method} {path} with {token:?}: {}", a.body);
            assert_eq!(a.header("www-authenticate"), Some("Bearer"));
            assert!(
                a.json()["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("token")),
                "{}",
                a.body
            );
        }
        let a = request(s.admin, method, path, Some(TOKEN), *body);
        let expected = match *path {
            "/v1/sessions/999999/kick" | "/v1/lists/no-such-list" => 404,
            "/v1/bans" if *method == "POST" => 201,
            _ => 200,
        };
        assert_eq!(a.status, expected, "{method} {path}: {}", a.body);
        if *path != "/metrics" {
            let _ = a.json();
        }
    }
    // No such endpoint: a JSON 404, not an empty answer.
    let a = s.api("GET", "/v1/nothing", None);
    assert_eq!(a.status, 404);
    assert!(a.json()["error"].is_string());
}

#[test]
fn kick_ends_the_stream_with_the_chosen_condition_and_others_keep_talking() {
    let s = Setup::start();
    let (mut alice, alice_jid) = s.login_from(loopback(1), ALICE, "a");
    let (mut bob, bob_jid) = s.login_from(loopback(1), BOB, "b");
    let (mut carol, carol_jid) = s.login_from(loopback(1), CAROL, "c");
    let id = s.session_id(&alice_jid);

    let unknown = s.post(
        &format!("/v1/sessions/{id}/kick"),
        json!({"condition": "go-away"}),
    );
    assert_eq!(unknown.status, 400, "{}", unknown.body);
    assert!(
        unknown.body.contains("policy-violation"),
        "{}",
        unknown.body
    );

    let a = s.post(
        &format!("/v1/sessions/{id}/kick"),
        json!({"condition": "conflict", "text": "replaced by the operator"}),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let got = alice.read_until_closed();
    assert!(
        got.ends_with(&format!(
            "<stream:error><conflict xmlns='{STREAMS}'/><text xmlns='{STREAMS}' xml:lang='en'>replaced by the operator</text></stream:error></stream:stream>"
        )),
        "{got}"
    );

    // Kick by filter, default condition.
    let a = s.post(
        "/v1/sessions/kick",
        json!({"jid": carol_jid.split('/').next()}),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        a.json()["kicked"].as_array().map(Vec::len),
        Some(1),
        "{}",
        a.body
    );
    let got = carol.read_until_closed();
    assert!(
        got.contains(&format!("<policy-violation xmlns='{STREAMS}'/>")),
        "{got}"
    );
    assert!(got.ends_with("</stream:stream>"), "{got}");

    // Bob is untouched and still talks through xmppwall.
    let (mut alice2, _) = s.login_from(loopback(1), ALICE, "a2");
    alice2.send_raw(chat(&bob_jid, "after-kick", "hi"));
    let m = next_message(&mut bob);
    assert_eq!(
        xml::root_attr(&m, "id").as_deref(),
        Some("after-kick"),
        "{m}"
    );
    let v = s.get("/v1/sessions");
    assert!(
        v["sessions"].as_array().is_some_and(|l| l.len() == 2),
        "{v}"
    );
}

#[test]
fn sessions_are_listed_with_counters_and_filtered_by_ip_jid_and_domain() {
    let s = Setup::start();
    let (mut alice, alice_jid) = s.login_from(loopback(11), ALICE, "a");
    let (mut bob, bob_jid) = s.login_from(loopback(12), BOB, "b");
    for i in 0..3 {
        alice.send_raw(chat(&bob_jid, &format!("m{i}"), "hello"));
        next_message(&mut bob);
    }
    let all = s.get("/v1/sessions");
    let list = all["sessions"].as_array().expect("sessions");
    assert_eq!(list.len(), 2, "{all}");
    let a = list
        .iter()
        .find(|x| x["jid"] == json!(alice_jid))
        .expect("alice listed");
    assert_eq!(a["address"], json!("127.0.0.11"));
    assert_eq!(a["to"], json!(DOMAIN));
    assert_eq!(a["front"], json!("c2s"));
    // auth, stream restart, bind, presence, three messages.
    assert!(a["stanzas_from_client"].as_u64().unwrap_or(0) >= 5, "{a}");
    assert!(a["bytes_from_client"].as_u64().unwrap_or(0) > 300, "{a}");

    let by_ip = s.get("/v1/sessions?ip=127.0.0.12");
    assert_eq!(by_ip["sessions"][0]["jid"], json!(bob_jid), "{by_ip}");
    assert_eq!(by_ip["sessions"].as_array().map(Vec::len), Some(1));
    let by_prefix = s.get("/v1/sessions?ip=127.0.0.8%2F29");
    assert_eq!(
        by_prefix["sessions"].as_array().map(Vec::len),
        Some(2),
        "{by_prefix}"
    );
    let by_bare = s.get(&format!("/v1/sessions?jid={}", ALICE.jid()));
    assert_eq!(
        by_bare["sessions"].as_array().map(Vec::len),
        Some(1),
        "{by_bare}"
    );
    let by_domain = s.get(&format!("/v1/sessions?domain={DOMAIN}"));
    assert_eq!(by_domain["sessions"].as_array().map(Vec::len), Some(2));
    let none = s.get(&format!("/v1/sessions?domain={OTHER_DOMAIN}"));
    assert_eq!(none["sessions"].as_array().map(Vec::len), Some(0));
    let bad = s.api("GET", "/v1/sessions?ip=not-an-ip", None);
    assert_eq!(bad.status, 400, "{}", bad.body);

    // Top talkers: alice sent the most.
    let t = s.get("/v1/talkers?seconds=60&by=account");
    assert_eq!(t["talkers"][0]["key"], json!(ALICE.jid()), "{t}");
    let t = s.get("/v1/talkers?seconds=60&by=address&limit=1");
    assert_eq!(t["talkers"].as_array().map(Vec::len), Some(1));
    assert_eq!(t["talkers"][0]["key"], json!("127.0.0.11"), "{t}");
    assert_eq!(s.api("GET", "/v1/talkers?seconds=0", None).status, 400);
}

#[test]
fn address_and_prefix_bans_refuse_on_the_wire_and_unban_lets_the_address_back() {
    let s = Setup::start();
    let (mut alice, _) = s.login_from(loopback(21), ALICE, "a");
    let (_bob, _) = s.login_from(loopback(1), BOB, "b");

    // Banning an address ends its live sessions and refuses new ones.
    let a = s.post(
        "/v1/bans",
        json!({"kind": "address", "value": "127.0.0.21", "duration": "1h", "reason": "test"}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let got = alice.read_until_closed();
    assert!(
        got.contains(&format!("<policy-violation xmlns='{STREAMS}'/>")),
        "{got}"
    );
    assert!(got.contains("this address is banned until "), "{got}");
    let mut c = TestClient::connect_from(loopback(21), s.wall.plain);
    c.send_stream_header();
    let got = c.read_until_closed();
    assert!(
        got.contains(&format!("<policy-violation xmlns='{STREAMS}'/>")),
        "{got}"
    );
    assert!(got.ends_with("</stream:stream>"), "{got}");

    // A prefix.
    let a = s.post(
        "/v1/bans",
        json!({"kind": "address", "value": "127.0.0.64/26"}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let mut c = TestClient::connect_from(loopback(70), s.wall.plain);
    c.send_stream_header();
    let got = c.read_until_closed();
    assert!(
        got.contains("this address is banned until further notice"),
        "{got}"
    );
    let bans = s.get("/v1/bans");
    let values: Vec<&str> = bans["bans"]
        .as_array()
        .expect("bans")
        .iter()
        .filter_map(|b| b["value"].as_str())
        .collect();
    assert!(
        values.contains(&"127.0.0.21") && values.contains(&"127.0.0.64/26"),
        "{bans}"
    );

    // Unban: both addresses log in again; an unknown ban is a 404.
    let a = s.api("DELETE", "/v1/bans?kind=address&value=127.0.0.21", None);
    assert_eq!(a.status, 200, "{}", a.body);
    let a = s.api(
        "DELETE",
        "/v1/bans?kind=address&value=127.0.0.64%2F26",
        None,
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let a = s.api(
        "DELETE",
        "/v1/bans?kind=address&value=127.0.0.64%2F26",
        None,
    );
    assert_eq!(a.status, 404, "{}", a.body);
    s.login_from(loopback(21), ALICE, "again");
    s.login_from(loopback(70), CAROL, "again");
    let bad = s.post("/v1/bans", json!({"kind": "address", "value": "300.0.0.1"}));
    assert_eq!(bad.status, 400, "{}", bad.body);
    // Past a century: refused, and nothing is banned (the address still logs in).
    let bad = s.post(
        "/v1/bans",
        json!({"kind": "address", "value": "127.0.0.21", "duration": "10000y"}),
    );
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(bad.body.contains("over 100 years"), "{}", bad.body);
    s.login_from(loopback(21), ALICE, "still");
}

#[test]
fn account_ban_answers_sasl_success_with_account_disabled_and_unban_restores_it() {
    let s = Setup::start();
    let (mut alice, _) = s.login_from(loopback(1), ALICE, "a");
    let a = s.post(
        "/v1/bans",
        json!({"kind": "account", "value": ALICE.jid(), "duration": "10m"}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(
        a.json()["kicked"].as_array().map(Vec::len),
        Some(1),
        "{}",
        a.body
    );
    let got = alice.read_until_closed();
    assert!(got.contains("this account is banned until "), "{got}");

    // A new login: the server's <success/> becomes <failure><account-disabled/>
    // (RFC 6120 §6.5.1), then the stream ends with <policy-violation/>.
    let mut c = TestClient::connect_from(loopback(1), s.wall.plain);
    c.open_stream();
    let answer = c
        .try_auth_plain(ALICE.user, ALICE.password)
        .expect_err("banned");
    assert_eq!(xml::root_name(&answer), "failure", "{answer}");
    assert!(answer.contains(&format!("xmlns='{SASL}'")), "{answer}");
    assert!(xml::has_element(&answer, "account-disabled"), "{answer}");
    let rest = c.read_until_closed();
    assert!(
        rest.contains(&format!("<policy-violation xmlns='{STREAMS}'/>")),
        "{rest}"
    );
    assert!(rest.ends_with("</stream:stream>"), "{rest}");

    // Others log in; after unban alice does too.
    s.login_from(loopback(1), BOB, "b");
    let a = s.api(
        "DELETE",
        &format!("/v1/bans?kind=account&value={}", ALICE.jid()),
        None,
    );
    assert_eq!(a.status, 200, "{}", a.body);
    s.login_from(loopback(1), ALICE, "back");
}

#[test]
fn operator_bans_survive_kill_9_and_restart_and_a_lifted_one_stays_lifted() {
    let state = tempfile::tempdir().expect("a state directory");
    let db = state.path().join("xmppwall.db");
    let mut s = Setup::start_with(
        "",
        &format!("[store]\npath = {:?}\n", db.display().to_string()),
    );
    let a = s.post(
        "/v1/bans",
        json!({"kind": "address", "value": "127.0.0.81", "duration": "1h", "reason": "test"}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let a = s.post("/v1/bans", json!({"kind": "account", "value": ALICE.jid()}));
    assert_eq!(a.status, 201, "{}", a.body);

    s.wall.kill_and_restart();
    // The address is still refused, with the ban's stream error.
    let mut c = TestClient::connect_from(loopback(81), s.wall.plain);
    c.send_stream_header();
    let got = c.read_until_closed();
    assert!(
        got.contains(&format!("<policy-violation xmlns='{STREAMS}'/>")),
        "{got}"
    );
    assert!(got.contains("this address is banned until "), "{got}");
    // The account still gets <account-disabled/> instead of the server's success.
    let mut c = TestClient::connect_from(loopback(1), s.wall.plain);
    c.open_stream();
    let answer = c
        .try_auth_plain(ALICE.user, ALICE.password)
        .expect_err("banned");
    assert!(xml::has_element(&answer, "account-disabled"), "{answer}");

    // Lifted, then restarted again: it stays lifted.
    let a = s.api("DELETE", "/v1/bans?kind=address&value=127.0.0.81", None);
    assert_eq!(a.status, 200, "{}", a.body);
    s.wall.kill_and_restart();
    s.login_from(loopback(81), BOB, "back");
    let bans = s.get("/v1/bans");
    let values: Vec<&str> = bans["bans"]
        .as_array()
        .expect("bans")
        .iter()
        .filter_map(|b| b["value"].as_str())
        .collect();
    assert_eq!(values, [ALICE.jid().as_str()], "{bans}");
}

#[test]
fn domain_ban_bounces_stanzas_to_it_and_drops_stanzas_from_it() {
    let s = Setup::start();
    s.prosody.register("dave", OTHER_DOMAIN, "dave-password");
    let (mut alice, alice_jid) = s.login_from(loopback(1), ALICE, "a");
    let (mut bob, bob_jid) = s.login_from(loopback(1), BOB, "b");
    let mut dave = TestClient::connect_from(loopback(1), s.wall.plain);
    dave.domain = OTHER_DOMAIN.to_owned();
    dave.open_stream();
    dave.try_auth_plain("dave", "dave-password")
        .expect("dave logs in");
    let dave_jid = dave.bind(Some("d"));

    let a = s.post("/v1/bans", json!({"kind": "domain", "value": OTHER_DOMAIN}));
    assert_eq!(a.status, 201, "{}", a.body);

    // To the banned domain: cancel + <policy-violation/> (RFC 6120 §8.3.3.12).
    alice.send_raw(chat(&dave_jid, "to-banned", "hi"));
    let reply =
        alice.read_element_matching(|e| xml::root_attr(e, "id").as_deref() == Some("to-banned"));
    assert_eq!(
        xml::root_attr(&reply, "type").as_deref(),
        Some("error"),
        "{reply}"
    );
    assert_eq!(
        xml::root_attr(&reply, "to").as_deref(),
        Some(alice_jid.as_str()),
        "{reply}"
    );
    assert!(reply.contains("<error type='cancel'>"), "{reply}");
    assert!(
        reply.contains(&format!("<policy-violation xmlns='{STANZAS}'/>")),
        "{reply}"
    );
    assert!(
        !reply.contains("<body>"),
        "the payload is not echoed: {reply}"
    );

    // From the banned domain: dropped; the next message from elsewhere arrives.
    dave.send_raw(chat(&bob_jid, "from-banned", "spam"));
    alice.send_raw(chat(&bob_jid, "from-alice", "hello"));
    let m = next_message(&mut bob);
    assert_eq!(
        xml::root_attr(&m, "id").as_deref(),
        Some("from-alice"),
        "{m}"
    );

    // Lifted: messages from it arrive again.
    let a = s.api(
        "DELETE",
        &format!("/v1/bans?kind=domain&value={OTHER_DOMAIN}"),
        None,
    );
    assert_eq!(a.status, 200, "{}", a.body);
    dave.send_raw(chat(&bob_jid, "after-unban", "hi"));
    let m = next_message(&mut bob);
    assert_eq!(
        xml::root_attr(&m, "id").as_deref(),
        Some("after-unban"),
        "{m}"
    );
    let v = s.get("/v1/verdicts?source=memory");
    let first = &v["verdicts"]
        .as_array()
        .expect("verdicts")
        .iter()
        .find(|x| x["verdict"] == json!("drop"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(first["direction"], json!("to_client"), "{v}");
}

#[test]
fn metrics_count_known_traffic_and_the_dashboard_names_only_real_metrics() {
    let s = Setup::start_with(
        "",
        r#"
[[rule]]
name = "no-casino"
action = "bounce"
bounce = { type = "modify", condition = "not-acceptable" }
[rule.match]
keywords = ["casino"]
"#,
    );
    // Without metrics_public, /metrics needs the token too.
    assert_eq!(request(s.admin, "GET", "/metrics", None, None).status, 401);
    let (mut alice, _) = s.login_from(loopback(1), ALICE, "a");
    let (mut bob, bob_jid) = s.login_from(loopback(1), BOB, "b");
    let before = s.api("GET", "/metrics", None);
    assert_eq!(before.status, 200);
    assert!(before
        .header("content-type")
        .is_some_and(|c| c.contains("openmetrics")));
    let before = before.body;

    const N: usize = 70;
    for i in 0..N {
        alice.send_raw(chat(&bob_jid, &format!("k{i}"), "hello"));
    }
    for _ in 0..N {
        next_message(&mut bob);
    }
    alice.send_raw(chat(&bob_jid, "bad", "casino"));
    alice.read_element_matching(|e| xml::root_attr(e, "id").as_deref() == Some("bad"));
    drop(alice);
    let (_carol, _) = s.login_from(loopback(1), CAROL, "c");

    let after = s.api("GET", "/metrics", None).body;
    let delta = |series: &str| metric(&after, series) - metric(&before, series);
    assert!(delta(r#"xmppwall_stanzas_total{direction="to_server",verdict="pass"}"#) as usize >= N);
    assert_eq!(
        delta(r#"xmppwall_stanzas_total{direction="to_server",verdict="bounce"}"#),
        1.0
    );
    assert!(delta(r#"xmppwall_stanzas_total{direction="to_client",verdict="pass"}"#) as usize >= N);
    assert_eq!(
        delta(r#"xmppwall_rule_hits_total{chain="to-server",rule="no-casino",mode="enforce"}"#),
        1.0
    );
    assert!(delta(r#"xmppwall_relayed_bytes_total{direction="to_server"}"#) > (N * 50) as f64);
    assert!(
        metric(&after, "xmppwall_stanza_processing_seconds_count") >= 1.0,
        "{after}"
    );
    assert!(metric(&after, r#"xmppwall_sessions_live{front="c2s"}"#) >= 2.0);
    metric(&after, r#"xmppwall_limit_hits_total{limit="stanza_size"}"#);
    metric(&after, r#"xmppwall_table_entries{table="addresses"}"#);
    metric(
        &after,
        r#"xmppwall_table_evictions_total{table="accounts"}"#,
    );
    metric(&after, r#"xmppwall_upstream_errors_total{kind="connect"}"#);
    metric(&after, r#"xmppwall_bans_total{kind="address"}"#);
    // Alice's connection ended when the client closed it; the counter shows it
    // once xmppwall has seen the close.
    support::process::wait_until(support::IO_TIMEOUT, "alice's close counted", || {
        let now = s.api("GET", "/metrics", None).body;
        (metric(
            &now,
            r#"xmppwall_connections_total{front="c2s",outcome="client_closed"}"#,
        ) >= 1.0)
            .then_some(())
    });

    // Every metric the dashboard queries exists in a scrape.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/grafana-dashboard.json"
        ))
        .expect("examples/grafana-dashboard.json"),
    )
    .expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 8, "{exprs:?}");
    for expr in &exprs {
        for name in metric_names(expr) {
            // A sample of exactly that name (a family's TYPE line is not enough: a
            // counter's samples are named `..._total`).
            let (labelled, bare) = (format!("{name}{{"), format!("{name} "));
            assert!(
                after
                    .lines()
                    .any(|l| l.starts_with(&labelled) || l.starts_with(&bare)),
                "the dashboard queries {name}, which the scrape does not have"
            );
        }
    }
}

fn collect_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr", Value::String(e)) => out.push(e.clone()),
                    _ => collect_exprs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_exprs(x, out)),
        _ => {}
    }
}

/// The `xmppwall_*` names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("xmppwall_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

#[test]
fn metrics_public_serves_metrics_without_the_token_and_nothing_else() {
    let s = Setup::start_with("metrics_public = true", "");
    let a = request(s.admin, "GET", "/metrics", None, None);
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(
        a.body.contains("# TYPE xmppwall_connections counter"),
        "{}",
        a.body
    );
    assert_eq!(request(s.admin, "GET", "/v1/stats", None, None).status, 401);
}

#[test]
fn ctl_prints_tables_and_json_for_every_operation() {
    let s = Setup::start();
    let (mut alice, alice_jid) = s.login_from(loopback(31), ALICE, "a");
    let (_bob, _) = s.login_from(loopback(1), BOB, "b");
    let ok = |args: &[&str]| -> String {
        let out = s.ctl(args);
        assert!(
            out.status.success(),
            "xmppwall ctl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    let table = ok(&["sessions"]);
    assert!(table.starts_with("ID  "), "{table}");
    assert!(
        table.contains(&alice_jid) && table.contains("127.0.0.31:"),
        "{table}"
    );
    let listed: Value =
        serde_json::from_str(&ok(&["--json", "sessions", "--ip", "127.0.0.31"])).expect("json");
    assert_eq!(listed["sessions"][0]["jid"], json!(alice_jid), "{listed}");
    let id = listed["sessions"][0]["id"]
        .as_u64()
        .expect("id")
        .to_string();

    let stats = ok(&["stats"]);
    assert!(
        stats.contains("sessions") && stats.contains("sasl successes"),
        "{stats}"
    );
    let stats: Value = serde_json::from_str(&ok(&["stats", "--json"])).expect("json");
    assert_eq!(stats["connections"]["sessions"], json!(2), "{stats}");
    assert!(ok(&["talkers", "--seconds", "30", "--by", "account"]).contains(&ALICE.jid()));
    assert!(ok(&["verdicts"]).starts_with("AT "));
    assert!(ok(&["metrics"]).contains("xmppwall_stanzas_total"));
    assert!(ok(&["reload"]).starts_with("reloaded "));

    let out = ok(&[
        "ban",
        "address",
        "192.0.2.0/24",
        "--duration",
        "1h",
        "--reason",
        "scanner",
    ]);
    assert!(
        out.starts_with("banned address 192.0.2.0/24 until 20"),
        "{out}"
    );
    let bans = ok(&["bans"]);
    assert!(
        bans.contains("192.0.2.0/24") && bans.contains("scanner"),
        "{bans}"
    );
    let bans: Value = serde_json::from_str(&ok(&["bans", "--json"])).expect("json");
    assert_eq!(bans["bans"][0]["reason"], json!("scanner"), "{bans}");
    assert!(ok(&["unban", "address", "192.0.2.0/24"]).starts_with("lifted the ban"));

    let out = ok(&["kick", &id, "--condition", "reset"]);
    assert!(out.contains(&format!("kicked {id} with <reset/>")), "{out}");
    let got = alice.read_until_closed();
    assert!(
        got.contains(&format!("<reset xmlns='{STREAMS}'/>")),
        "{got}"
    );

    assert!(ok(&["reports"]).starts_with("AT "));
    assert!(ok(&["reputation"]).starts_with("SUBJECT "));
    assert!(ok(&["verdicts", "--memory"]).starts_with("AT "));

    // Errors: the API's message on stderr, a failure exit status.
    let out = s.ctl(&["kick", "999999"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no live session 999999"),
        "{out:?}"
    );

    // Address and token from the environment, and from the configuration file.
    let out = Command::new(binary())
        .args(["ctl", "sessions"])
        .env("XMPPWALL_ADMIN", s.admin.to_string())
        .env("XMPPWALL_TOKEN", TOKEN)
        .output()
        .expect("ctl");
    assert!(out.status.success(), "{out:?}");
    let out = Command::new(binary())
        .args(["ctl", "--config"])
        .arg(&s.wall.xmppwall.config_path)
        .arg("stats")
        .env_remove("XMPPWALL_ADMIN")
        .env_remove("XMPPWALL_TOKEN")
        .output()
        .expect("ctl");
    assert!(out.status.success(), "{out:?}");
    // A wrong token is refused.
    let out = Command::new(binary())
        .args([
            "ctl",
            "--admin",
            &s.admin.to_string(),
            "--token",
            "wrong-token-wrong-token",
            "stats",
        ])
        .output()
        .expect("ctl");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{out:?}"
    );
}

#[test]
fn a_reload_cannot_drop_the_token_of_an_api_bound_beyond_loopback() {
    // Bound on every address (only ever reached over loopback here).
    let port = free_loopback_addr().port();
    let admin = |listen: &str, token: bool| {
        let token = if token {
            format!("token = \"{TOKEN}\"\n")
        } else {
            String::new()
        };
        format!("[admin]\nlisten = \"{listen}\"\n{token}")
    };
    let wall = Wall::start(
        free_loopback_addr(),
        WallConfig {
            tables: admin(&format!("0.0.0.0:{port}"), true),
            ..WallConfig::default()
        },
    );
    let api = SocketAddr::from(([127, 0, 0, 1], port));
    // The file now says loopback without a token; the socket is still on 0.0.0.0.
    wall.xmppwall
        .rewrite_config(&wall.config_text(&admin(&format!("127.0.0.1:{port}"), false)));
    let a = request(api, "POST", "/v1/reload", Some(TOKEN), None);
    assert_eq!(a.status, 422, "{}", a.body);
    assert!(
        a.body.contains("not a loopback address") && a.body.contains("needs a token"),
        "{}",
        a.body
    );
    let a = request(api, "GET", "/v1/stats", None, None);
    assert_eq!(a.status, 401, "the token is still required: {}", a.body);
    // A new address with the token kept reloads; the API stays where it is bound.
    wall.xmppwall
        .rewrite_config(&wall.config_text(&admin(&format!("127.0.0.1:{}", port + 1), true)));
    let a = request(api, "POST", "/v1/reload", Some(TOKEN), None);
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(request(api, "GET", "/v1/stats", None, None).status, 401);
    assert_eq!(
        request(api, "GET", "/v1/stats", Some(TOKEN), None).status,
        200
    );
}

#[test]
fn web_pages_cannot_drive_the_api_and_a_tokenless_one_answers_only_loopback_names() {
    let admin = free_loopback_addr();
    let wall = Wall::start(
        free_loopback_addr(),
        WallConfig {
            tables: format!("[admin]\nlisten = \"{admin}\"\n"),
            ..WallConfig::default()
        },
    );
    // No token needed on loopback: ctl and curl are answered, by address or by name.
    assert_eq!(request(admin, "GET", "/v1/stats", None, None).status, 200);
    let local = format!("localhost:{}", admin.port());
    let by_name = request_with(admin, "GET", "/v1/stats", None, None, &[("Host", &local)]);
    assert_eq!(by_name.status, 200, "{}", by_name.body);
    // A page on another site (its fetch carries Origin) cannot reload or kick.
    let page = [("Origin", "http://evil.example")];
    for path in ["/v1/reload", "/v1/sessions/1/kick"] {
        let a = request_with(admin, "POST", path, None, None, &page);
        assert_eq!(a.status, 403, "{path}: {}", a.body);
        assert!(a.body.contains("web pages"), "{}", a.body);
    }
    // A page whose own name now points at 127.0.0.1 (DNS rebinding) is refused too.
    let rebound = format!("rebind.evil.example:{}", admin.port());
    let a = request_with(
        admin,
        "GET",
        "/v1/sessions",
        None,
        None,
        &[("Host", &rebound)],
    );
    assert_eq!(a.status, 403, "{}", a.body);
    assert!(
        a.body.contains("localhost or a loopback address"),
        "{}",
        a.body
    );
    drop(wall);
}

#[test]
fn reload_with_a_broken_rules_file_returns_its_line_and_keeps_the_old_policy() {
    let dir = tempfile::tempdir().expect("temp dir");
    let rules = dir.path().join("rules.toml");
    let casino = "[[rule]]\nname = \"no-casino\"\naction = \"bounce\"\n[rule.match]\nkeywords = [\"casino\"]\n";
    std::fs::write(&rules, casino).expect("rules");
    let s = Setup::start_full(
        "",
        "",
        &format!("include = [{:?}]", rules.display().to_string()),
    );
    let (mut alice, _) = s.login_from(loopback(1), ALICE, "a");
    let (mut bob, bob_jid) = s.login_from(loopback(1), BOB, "b");
    let bounced = |alice: &mut TestClient, id: &str, word: &str| {
        alice.send_raw(chat(&bob_jid, id, word));
        let r = alice.read_element_matching(|e| xml::root_attr(e, "id").as_deref() == Some(id));
        assert_eq!(xml::root_attr(&r, "type").as_deref(), Some("error"), "{r}");
    };
    bounced(&mut alice, "c1", "casino");

    // Broken on line 3: the answer names the file, line and column; nothing changes.
    std::fs::write(&rules, "[[rule]]\nname = \"x\"\naction = \"explode\"\n").expect("rules");
    let a = s.api("POST", "/v1/reload", None);
    assert_eq!(a.status, 422, "{}", a.body);
    let v = a.json();
    assert_eq!(v["problems"][0]["line"], json!(3), "{v}");
    assert!(
        v["problems"][0]["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("rules.toml")),
        "{v}"
    );
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("rules.toml:3:10: unknown action")),
        "{v}"
    );
    bounced(&mut alice, "c2", "casino");
    alice.send_raw(chat(&bob_jid, "ok1", "hello"));
    assert_eq!(
        xml::root_attr(&next_message(&mut bob), "id").as_deref(),
        Some("ok1")
    );

    // A valid file: the same open streams get the new policy at their next stanza.
    std::fs::write(&rules, casino.replace("casino", "poker")).expect("rules");
    let a = s.api("POST", "/v1/reload", None);
    assert_eq!(a.status, 200, "{}", a.body);
    alice.send_raw(chat(&bob_jid, "c3", "casino"));
    assert_eq!(
        xml::root_attr(&next_message(&mut bob), "id").as_deref(),
        Some("c3")
    );
    bounced(&mut alice, "p1", "poker");
}

#[test]
fn operator_bans_survive_kill_9_and_restart_and_reports_reputation_and_verdicts_come_from_the_store(
) {
    let state = tempfile::tempdir().expect("a state directory");
    let db = state.path().join("xmppwall.db");
    let mut s = Setup::start_with(
        "",
        &format!(
            "[store]\npath = {:?}\n\n[reputation]\nreport_weight = 10\n\n\
             [[rule]]\nname = \"no-casino\"\naction = \"bounce\"\n[rule.match]\nkeywords = [\"casino\"]\n",
            db.display().to_string()
        ),
    );
    let a = s.post(
        "/v1/bans",
        json!({"kind": "address", "value": "127.0.0.41", "duration": "1h", "reason": "flood"}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let a = s.post(
        "/v1/bans",
        json!({"kind": "address", "value": "127.0.0.128/25"}),
    );
    assert_eq!(a.status, 201, "{}", a.body);

    s.wall.kill_and_restart();
    let bans = s.get("/v1/bans");
    let find = |v: &Value, value: &str| {
        v["bans"]
            .as_array()
            .expect("bans")
            .iter()
            .find(|b| b["value"] == json!(value))
            .cloned()
    };
    let one = find(&bans, "127.0.0.41").unwrap_or_else(|| panic!("not restored: {bans}"));
    assert_eq!(one["source"], json!("operator"));
    assert_eq!(one["reason"], json!("flood"));
    assert!(one["until"].is_string(), "{one}");
    let prefix = find(&bans, "127.0.0.128/25").unwrap_or_else(|| panic!("not restored: {bans}"));
    assert_eq!(prefix["until"], Value::Null, "until lifted: {prefix}");
    for source in [41, 200] {
        let mut c = TestClient::connect_from(loopback(source), s.wall.plain);
        c.send_stream_header();
        let got = c.read_until_closed();
        assert!(
            got.contains(&format!("<policy-violation xmlns='{STREAMS}'/>")),
            "{got}"
        );
    }

    // Lifted, and still lifted after another restart.
    let a = s.api(
        "DELETE",
        "/v1/bans?kind=address&value=127.0.0.128%2F25",
        None,
    );
    assert_eq!(a.status, 200, "{}", a.body);
    s.wall.kill_and_restart();
    assert!(find(&s.get("/v1/bans"), "127.0.0.128/25").is_none());
    assert!(find(&s.get("/v1/bans"), "127.0.0.41").is_some());
    s.login_from(loopback(200), BOB, "b");

    // A report (XEP-0377 in a block command) and the reporter's target's score.
    let (mut alice, _) = s.login_from(loopback(1), ALICE, "a");
    let offender = format!("spammer@{OTHER_DOMAIN}");
    alice.send_raw(format!(
        "<iq type='set' id='r1'><block xmlns='urn:xmpp:blocking'><item jid='{offender}'>\
         <report xmlns='urn:xmpp:reporting:1' reason='urn:xmpp:reporting:spam'>\
         <text xml:lang='en'>unsolicited offers</text></report></item></block></iq>"
    ));
    alice.read_element_matching(|e| xml::root_attr(e, "id").as_deref() == Some("r1"));
    let reports =
        support::process::wait_until(support::IO_TIMEOUT, "the report in the store", || {
            let v = s.get(&format!("/v1/reports?subject={offender}"));
            (v["reports"].as_array().is_some_and(|l| !l.is_empty())).then_some(v)
        });
    assert_eq!(
        reports["reports"][0]["reporter"],
        json!(ALICE.jid()),
        "{reports}"
    );
    let score = support::process::wait_until(support::IO_TIMEOUT, "the score in the store", || {
        let v = s.get(&format!("/v1/reputation?subject={offender}"));
        let score = v["reputation"][0]["score"].as_f64().unwrap_or(0.0);
        (score > 0.0).then_some(v)
    });
    assert_eq!(
        score["reputation"][0]["subject"],
        json!(format!("jid:{offender}"))
    );
    let domain = s.get(&format!("/v1/reputation?subject={OTHER_DOMAIN}"));
    assert!(
        domain["reputation"][0]["score"].as_f64().unwrap_or(0.0) > 0.0,
        "{domain}"
    );

    // The rule's bounce in the audit trail, with the rule's name.
    alice.send_raw(chat(&BOB.jid(), "c1", "casino"));
    alice.read_element_matching(|e| xml::root_attr(e, "id").as_deref() == Some("c1"));
    let v = support::process::wait_until(support::IO_TIMEOUT, "the verdict in the store", || {
        let v = s.get("/v1/verdicts");
        v["verdicts"]
            .as_array()
            .and_then(|l| l.iter().find(|x| x["name"] == json!("no-casino")).cloned())
    });
    assert_eq!(v["by"], json!("rule"), "{v}");
    assert_eq!(v["hook"], json!("to-server"), "{v}");

    // After a kill -9 and a restart, nothing of that is held in memory any more:
    // what the API shows now is what the store kept.
    s.wall.kill_and_restart();
    let reports = s.get(&format!("/v1/reports?subject={offender}"));
    assert_eq!(
        reports["reports"][0]["reporter"],
        json!(ALICE.jid()),
        "{reports}"
    );
    let restored = s.get(&format!("/v1/reputation?subject={offender}"));
    assert_eq!(
        restored["reputation"][0]["score"], score["reputation"][0]["score"],
        "{restored}"
    );
    let verdicts = s.get("/v1/verdicts");
    assert!(
        verdicts["verdicts"]
            .as_array()
            .is_some_and(|l| l.iter().any(|x| x["name"] == json!("no-casino"))),
        "{verdicts}"
    );
    drop(state);
}

/// The hex SHA-256 of `text`, by `sha256sum`: independent of xmppwall.
fn sha256_hex(text: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("running sha256sum");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("writing to sha256sum");
    let out = child.wait_with_output().expect("sha256sum's output");
    String::from_utf8_lossy(&out.stdout)
        .chars()
        .take(64)
        .collect()
}

#[test]
fn lists_show_inline_file_and_hashed_lists_with_their_entries_and_ctl_prints_them() {
    let dir = tempfile::Builder::new()
        .prefix("xmppwall-test-lists-")
        .tempdir()
        .expect("a directory");
    let file = dir.path().join("blocked.txt");
    std::fs::write(
        &file,
        "# spammers\nspammer@example.net\nBot@Example.NET/res\n",
    )
    .expect("list file");
    let hash = sha256_hex("hidden@example.net");
    let s = Setup::start_with(
        "",
        &format!(
            r#"
[lists.friends]
domains = ["Friends.example", "pals.example"]

[lists.blocked]
file = "{file}"
kind = "jids"

[lists.hashed]
hashed_jids = ["{hash}"]

[lists.nets]
cidrs = ["192.0.2.0/25", "192.0.2.128/25", "198.51.100.7"]

[[rule]]
name = "block-listed"
action = "drop"
[rule.match]
from = "list:blocked"
"#,
            file = file.display()
        ),
    );

    let all = s.get("/v1/lists");
    let lists = all["lists"].as_array().expect("lists");
    let names: Vec<&str> = lists.iter().filter_map(|l| l["name"].as_str()).collect();
    assert_eq!(names, ["blocked", "friends", "hashed", "nets"], "{all}");
    let by = |name: &str| {
        lists
            .iter()
            .find(|l| l["name"] == name)
            .expect(name)
            .clone()
    };
    let blocked = by("blocked");
    assert_eq!(blocked["kind"], json!("jids"), "{blocked}");
    assert_eq!(blocked["size"], json!(2), "{blocked}");
    assert_eq!(blocked["source"], json!("file"), "{blocked}");
    assert_eq!(
        blocked["file"],
        json!(file.display().to_string()),
        "{blocked}"
    );
    assert!(
        blocked["loaded"]
            .as_str()
            .is_some_and(|t| t.starts_with("20")),
        "{blocked}"
    );
    let friends = by("friends");
    assert_eq!(
        (
            &friends["kind"],
            &friends["size"],
            &friends["source"],
            &friends["file"]
        ),
        (&json!("domains"), &json!(2), &json!("inline"), &Value::Null),
        "{friends}"
    );
    let hashed = by("hashed");
    assert_eq!(
        (&hashed["kind"], &hashed["size"]),
        (&json!("hashed_jids"), &json!(1)),
        "{hashed}"
    );
    let nets = by("nets");
    assert_eq!(
        (&nets["kind"], &nets["size"]),
        (&json!("cidrs"), &json!(2)),
        "{nets}"
    );

    // Entries as matched: bare, lower-cased JIDs; hashes; merged ranges.
    assert_eq!(
        s.get("/v1/lists/blocked")["entries"],
        json!(["bot@example.net", "spammer@example.net"])
    );
    assert_eq!(
        s.get("/v1/lists/friends")["entries"],
        json!(["friends.example", "pals.example"])
    );
    assert_eq!(s.get("/v1/lists/hashed")["entries"], json!([hash]));
    assert_eq!(
        s.get("/v1/lists/nets")["entries"],
        json!(["192.0.2.0/24", "198.51.100.7/32"])
    );
    let missing = s.api("GET", "/v1/lists/nothing-here", None);
    assert_eq!(missing.status, 404, "{}", missing.body);
    assert!(
        missing.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("nothing-here")),
        "{}",
        missing.body
    );
    let anonymous = request(s.admin, "GET", "/v1/lists/blocked", None, None);
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    assert!(!anonymous.body.contains("spammer"), "{}", anonymous.body);

    // A changed file is read again on reload: the API shows the new entries.
    std::fs::write(
        &file,
        "spammer@example.net\nbot@example.net\nthird@example.net\n",
    )
    .expect("list file");
    assert_eq!(s.post("/v1/reload", json!({})).status, 200);
    assert_eq!(
        s.get("/v1/lists/blocked")["entries"],
        json!([
            "bot@example.net",
            "spammer@example.net",
            "third@example.net"
        ])
    );

    let ok = |args: &[&str]| -> String {
        let out = s.ctl(args);
        assert!(
            out.status.success(),
            "xmppwall ctl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let table = ok(&["lists"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("NAME ") && lines[0].contains("SOURCE"),
        "{table}"
    );
    assert!(
        lines[1].starts_with("blocked ")
            && lines[1].contains(" jids ")
            && lines[1].contains(" 3 ")
            && lines[1].contains(&file.display().to_string()),
        "{table}"
    );
    assert!(
        lines[2].starts_with("friends ") && lines[2].contains("inline"),
        "{table}"
    );
    let one = ok(&["lists", "hashed"]);
    assert!(
        one.starts_with("# hashed (hashed_jids, 1 entries, inline"),
        "{one}"
    );
    assert_eq!(one.lines().nth(1), Some(hash.as_str()), "{one}");
    let json_out: Value = serde_json::from_str(&ok(&["--json", "lists", "nets"])).expect("json");
    assert_eq!(
        json_out["entries"],
        json!(["192.0.2.0/24", "198.51.100.7/32"])
    );
    let out = s.ctl(&["lists", "nothing-here"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing-here"));
}
