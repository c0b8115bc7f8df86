//! Durable state over the wire: bans made by the limits and by rules survive a
//! `kill -9` of xmppwall (SIGKILL: nothing is flushed or closed), and every
//! connection and non-pass verdict leaves an audit row in the SQLite store.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use support::client::TestClient;
use support::process::wait_until;
use support::wall::{Wall, WallConfig};
use support::xml;
use support::{Prosody, ALICE, BOB, IO_TIMEOUT};

const STREAMS: &str = "urn:ietf:params:xml:ns:xmpp-streams";

/// `127.0.0.n`.
fn loopback(n: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, n])
}

/// Prosody, xmppwall in front of it, and the store file in a directory that outlives
/// xmppwall's restarts.
struct Setup {
    wall: Wall,
    addr: SocketAddr,
    db: PathBuf,
    _state: tempfile::TempDir,
    _prosody: Prosody,
}

impl Setup {
    fn start(tables: &str) -> Setup {
        let state = tempfile::Builder::new()
            .prefix("xmppwall-test-state-")
            .tempdir()
            .expect("a state directory");
        let db = state.path().join("state").join("xmppwall.db");
        let prosody = Prosody::start();
        let wall = Wall::start(
            prosody.c2s,
            WallConfig {
                tables: format!("[store]\npath = {:?}\n\n{tables}", db.display().to_string()),
                ..WallConfig::default()
            },
        );
        Setup {
            addr: wall.plain,
            wall,
            db,
            _state: state,
            _prosody: prosody,
        }
    }
}

use support::sqlite::rows;

/// Waits (bounded) until the audit query returns a row: audit records are batched.
fn wait_for_rows(db: &Path, sql: &str) -> Vec<Vec<String>> {
    wait_until(IO_TIMEOUT, sql, || {
        let r = rows(db, sql);
        (!r.is_empty()).then_some(r)
    })
}

/// What a banned address gets on a new connection: a stream header, then
/// `<policy-violation/>` naming the ban's end (XEP-0205 §2.1 and §2.3).
fn assert_refused_as_banned(source: IpAddr, addr: SocketAddr) {
    let mut c = TestClient::connect_from(source, addr);
    c.send_stream_header();
    let header = c.read_stream_header();
    assert!(header.contains("from='example.test'"), "{header}");
    let rest = c.read_until_closed();
    let open = format!(
        "<stream:error><policy-violation xmlns='{STREAMS}'/><text xmlns='{STREAMS}' xml:lang='en'>this address is banned until "
    );
    assert!(rest.starts_with(&open), "not the ban error: {rest:?}");
    assert!(
        rest.ends_with("</text></stream:error></stream:stream>"),
        "{rest:?}"
    );
}

#[test]
fn an_authentication_failure_ban_survives_kill_9_and_restart() {
    let mut s = Setup::start("[auth]\nmax_failures = \"2/1h\"\nban = \"10m\"\n");
    let mut c = TestClient::connect_from(loopback(21), s.addr);
    c.open_stream();
    for _ in 0..2 {
        let answer = c
            .try_auth_plain("alice", "wrong")
            .expect_err("a wrong password fails");
        assert_eq!(xml::root_name(&answer), "failure", "{answer}");
    }
    let closing = c.read_until_closed();
    assert!(
        closing.contains("too many failed authentication attempts from this address; banned until"),
        "{closing:?}"
    );
    // The ban is committed before the client hears of it: no waiting here.
    let bans = rows(
        &s.db,
        "SELECT network, source, expires_ms > CAST(strftime('%s','now') AS INTEGER) * 1000 + 500000 FROM bans",
    );
    assert_eq!(bans, [["127.0.0.21/32", "auth_failures", "1"]]);

    // Someone else logs in and leaves: a connection row with the bound JID.
    let (mut alice, alice_jid) = s.wall.login_plain_from(loopback(22), ALICE, "phone");
    alice.send_raw("</stream:stream>");
    alice.read_until_closed();
    let mut audit = wait_for_rows(
        &s.db,
        "SELECT jid, front, bytes_from_client > 0, bytes_to_client > 0, stanzas_to_server > 0, \
         stanzas_to_client > 0, end_reason FROM connections WHERE address = '127.0.0.22'",
    );
    // Which side's close xmppwall sees first is a race; either is an orderly end.
    let end = audit[0].pop().unwrap_or_default();
    assert!(end == "client closed" || end == "server closed", "{end}");
    assert_eq!(audit, [[alice_jid.as_str(), "c2s", "1", "1", "1", "1"]]);
    let banned_connection = wait_for_rows(
        &s.db,
        "SELECT end_reason FROM connections WHERE address = '127.0.0.21'",
    );
    assert_eq!(banned_connection, [["policy-violation"]]);
    let verdict = wait_for_rows(
        &s.db,
        "SELECT hook, source, name, action FROM verdicts WHERE address = '127.0.0.21'",
    );
    assert_eq!(verdict, [["auth", "limit", "auth_failure_ban", "ban"]]);

    s.wall.kill_and_restart();
    assert!(
        s.wall
            .xmppwall
            .log()
            .contains("bans restored from the store"),
        "{}",
        s.wall.xmppwall.log()
    );
    assert_refused_as_banned(loopback(21), s.addr);
    // The refused connection is audited by the new process too.
    let verdicts = wait_for_rows(
        &s.db,
        "SELECT name, action FROM verdicts WHERE address = '127.0.0.21' AND name = 'banned_address'",
    );
    assert_eq!(verdicts, [["banned_address", "close"]]);
    // Everyone else still gets in.
    let (_bob, bob_jid) = s.wall.login_plain_from(loopback(23), BOB, "b");
    assert!(bob_jid.starts_with("bob@example.test/"), "{bob_jid}");
}

#[test]
fn a_rule_ban_survives_kill_9_and_restart_and_its_audit_row_has_no_body() {
    let mut s = Setup::start(
        r#"
[[rule]]
name = "ban-on-keyword"
action = "drop"
ban = "1h"
[rule.match]
kind = ["message"]
keywords = ["ban-me-now"]
"#,
    );
    let (mut alice, alice_jid) = s.wall.login_plain_from(loopback(31), ALICE, "a");
    alice.send_raw(
        "<message to='bob@example.test' type='chat' id='m1'><body>ban-me-now secret words</body></message>",
    );
    let closing = alice.read_until_closed();
    assert!(
        closing.contains(&format!(
            "<stream:error><policy-violation xmlns='{STREAMS}'/><text xmlns='{STREAMS}' xml:lang='en'>banned by rule ban-on-keyword until "
        )),
        "{closing:?}"
    );
    let bans = rows(&s.db, "SELECT network, source FROM bans");
    assert_eq!(bans, [["127.0.0.31/32", "rule:ban-on-keyword"]]);
    let verdicts = wait_for_rows(&s.db, "SELECT * FROM verdicts WHERE address = '127.0.0.31'");
    assert_eq!(verdicts.len(), 1, "{verdicts:?}");
    let row = verdicts[0].join("|");
    assert!(
        row.contains(&format!(
            "|{alice_jid}|to-server|message|chat||bob@example.test|rule|ban-on-keyword|ban"
        )),
        "{row}"
    );
    assert!(
        !row.contains("secret"),
        "a payload reached the audit trail: {row}"
    );

    s.wall.kill_and_restart();
    assert_refused_as_banned(loopback(31), s.addr);
}
