//! The store against real SQLite files in a temporary directory.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;

const DAY: Duration = Duration::from_secs(24 * 3600);

fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn net(s: &str) -> IpNet {
    s.parse().expect("a network")
}

fn connection(ended: SystemTime) -> ConnectionRecord {
    ConnectionRecord {
        address: "192.0.2.7".parse().expect("an address"),
        jid: Some("alice@example.org/phone".into()),
        front: "c2s".into(),
        started: ended - Duration::from_secs(60),
        ended,
        bytes_from_client: 1200,
        bytes_to_client: 3400,
        stanzas_to_server: 5,
        stanzas_to_client: 9,
        end_reason: "client closed".into(),
    }
}

fn verdict(at: SystemTime) -> VerdictRecord {
    VerdictRecord {
        at,
        address: "192.0.2.7".parse().expect("an address"),
        jid: Some("alice@example.org".into()),
        hook: "to-server".into(),
        stanza: StanzaSummary {
            kind: Some("message".into()),
            stanza_type: Some("chat".into()),
            from: None,
            to: Some("bob@example.org".into()),
        },
        source: VerdictSource::Rule,
        name: "no-links".into(),
        action: "bounce".into(),
    }
}

fn report(at: SystemTime) -> Report {
    Report {
        id: 0,
        at,
        reporter: "bob@example.org".into(),
        subject: "spammer@example.net".into(),
        reason: "spam".into(),
        text: Some("buy now".into()),
        stanza_ids: vec!["spammer@example.net/id-1".into()],
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

#[test]
fn bans_are_on_disk_when_ban_returns_and_survive_reopening() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("state/xmppwall.db");
    let now = SystemTime::now();
    runtime().block_on(async {
        let store = Store::open(&StoreConfig::file(&path)).expect("store opens");
        store
            .ban(Ban::new(
                net("198.51.100.9/32"),
                now,
                now + DAY,
                "admin",
                "spam",
            ))
            .await
            .expect("ban saved");
        store
            .ban(Ban::new(
                net("198.51.100.10/32"),
                now - DAY,
                now - Duration::from_secs(1),
                "admin",
                "old",
            ))
            .await
            .expect("ban saved");
        // Another connection sees the row: it is committed, not only queued.
        let other = rusqlite::Connection::open(&path).expect("a second connection");
        let rows: i64 = other
            .query_row("SELECT COUNT(*) FROM bans", [], |r| r.get(0))
            .expect("count");
        assert_eq!(rows, 2);
        let mode: String = other
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .expect("journal mode");
        assert_eq!(mode, "wal");
    });
    let store = Store::open(&StoreConfig::file(&path)).expect("store reopens");
    let active = store.active_bans_blocking(now).expect("bans read");
    assert_eq!(
        active.len(),
        1,
        "only the unexpired ban is active: {active:?}"
    );
    assert_eq!(active[0].network, net("198.51.100.9/32"));
    assert_eq!(active[0].reason, "spam");
    assert_eq!(active[0].source, "admin");
}

#[test]
fn submitted_ban_is_committed_once_flush_returns() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("xmppwall.db");
    let store = Store::open(&StoreConfig::file(&path)).expect("store opens");
    let now = SystemTime::now();
    store.submit_ban(Ban::new(
        net("203.0.113.0/24"),
        now,
        now + DAY,
        "auth_failures",
        "too many failed authentications",
    ));
    runtime().block_on(store.flush()).expect("flushed");
    let other = rusqlite::Connection::open(&path).expect("a second connection");
    let network: String = other
        .query_row("SELECT network FROM bans", [], |r| r.get(0))
        .expect("the ban row");
    assert_eq!(network, "203.0.113.0/24");
}

#[test]
fn a_ban_submitted_while_the_writer_is_stalled_and_the_queue_full_returns_at_once_and_is_saved() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("xmppwall.db");
    let store = Store::open(&StoreConfig::file(&path)).expect("store opens");
    // Another process holds the write lock: the writer waits on it (busy timeout).
    let other = rusqlite::Connection::open(&path).expect("a second connection");
    other
        .execute_batch("BEGIN EXCLUSIVE")
        .expect("the write lock");
    let now = SystemTime::now();
    // The writer takes one batch and stalls in it; the rest fill the queue.
    for _ in 0..(writer::BATCH + AUDIT_QUEUE + 1) {
        store.record_connection(connection(now));
    }
    assert!(store.audit_dropped() > 0, "the queue never filled");
    // This call runs on an async worker in the proxy: it must not wait for room.
    store.submit_ban(Ban::new(
        net("198.51.100.77/32"),
        now,
        now + DAY,
        "auth_failures",
        "too many failed authentications",
    ));
    other.execute_batch("ROLLBACK").expect("the lock released");
    runtime().block_on(store.flush()).expect("flushed");
    let active = store.active_bans_blocking(now).expect("bans read");
    assert!(
        active.iter().any(|b| b.network == net("198.51.100.77/32")),
        "{active:?}"
    );
    assert_eq!(store.bans_not_saved(), 0);
    // Had the call waited for room, it would have waited out the writer's busy
    // timeout (the lock is released only after it returns), and the records of the
    // stalled batch would have been lost.
    let offered = (writer::BATCH + AUDIT_QUEUE + 1) as u64;
    let saved: i64 = other
        .query_row("SELECT COUNT(*) FROM connections", [], |r| r.get(0))
        .expect("count");
    assert_eq!(saved as u64, offered - store.audit_dropped());
}

#[test]
fn unban_lifts_only_the_named_network() {
    let now = SystemTime::now();
    runtime().block_on(async {
        let store = Store::open(&StoreConfig::in_memory()).expect("store opens");
        for n in ["192.0.2.1/32", "192.0.2.2/32"] {
            store
                .ban(Ban::new(net(n), now, now + DAY, "admin", "test"))
                .await
                .expect("ban saved");
        }
        assert_eq!(
            store.unban(net("192.0.2.1/32"), now).await.expect("unban"),
            1
        );
        assert_eq!(
            store.unban(net("192.0.2.1/32"), now).await.expect("unban"),
            0
        );
        let active = store.active_bans(now).await.expect("bans");
        assert_eq!(
            active.iter().map(|b| b.network).collect::<Vec<_>>(),
            [net("192.0.2.2/32")]
        );
    });
}

#[test]
fn reports_reputation_and_audit_read_back() {
    let now = SystemTime::now();
    runtime().block_on(async {
        let store = Store::open(&StoreConfig::in_memory()).expect("store opens");
        let id = store.add_report(report(now)).await.expect("report saved");
        assert!(id > 0);
        let got = store
            .reports(Some("spammer@example.net".into()), 10)
            .await
            .expect("reports");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].id, id);
        assert_eq!(got[0].text.as_deref(), Some("buy now"));
        assert!(store
            .reports(Some("nobody@example.net".into()), 10)
            .await
            .expect("reports")
            .is_empty());

        let unknown = store.reputation("x@example.net".into()).await.expect("rep");
        assert_eq!((unknown.score, unknown.updated), (0.0, None));
        store
            .adjust_reputation("x@example.net".into(), -2.5, now)
            .await
            .expect("adjusted");
        let r = store
            .adjust_reputation("x@example.net".into(), 1.0, now)
            .await
            .expect("adjusted");
        assert_eq!(r.score, -1.5);

        store.record_connection(connection(now));
        store.record_verdict(verdict(now));
        let connections = store.recent_connections(10).await.expect("connections");
        assert_eq!(
            connections,
            [connection(now)].map(|mut c| {
                // Times are kept to the millisecond.
                c.started = writer::time(writer::ms(c.started));
                c.ended = writer::time(writer::ms(c.ended));
                c
            })
        );
        let verdicts = store.recent_verdicts(10).await.expect("verdicts");
        assert_eq!(verdicts.len(), 1);
        assert_eq!(verdicts[0].name, "no-links");
        assert_eq!(verdicts[0].source, VerdictSource::Rule);
        assert_eq!(verdicts[0].stanza.to.as_deref(), Some("bob@example.org"));
        assert_eq!(
            verdicts[0].address,
            "192.0.2.7".parse::<IpAddr>().expect("ip")
        );
    });
}

#[test]
fn file_from_schema_version_1_is_migrated_and_keeps_its_bans() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("old.db");
    let now = SystemTime::now();
    {
        let old = schema::open_at_version(Some(&path), 1).expect("a version 1 file");
        old.execute(
            "INSERT INTO bans (network, created_ms, expires_ms, source, reason)
             VALUES ('192.0.2.0/24', ?1, ?2, 'admin', 'kept across the upgrade')",
            rusqlite::params![writer::ms(now), writer::ms(now + DAY)],
        )
        .expect("old ban");
        let has_audit: i64 = old
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name = 'connections'",
                [],
                |r| r.get(0),
            )
            .expect("schema query");
        assert_eq!(has_audit, 0, "version 1 has no audit tables");
    }
    let store = Store::open(&StoreConfig::file(&path)).expect("store opens and migrates");
    let version: i64 = rusqlite::Connection::open(&path)
        .expect("a second connection")
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("version");
    assert_eq!(version, SCHEMA_VERSION);
    let bans = store.active_bans_blocking(now).expect("bans");
    assert_eq!(bans.len(), 1);
    assert_eq!(bans[0].reason, "kept across the upgrade");
    store.record_connection(connection(now));
    let rows = runtime()
        .block_on(store.recent_connections(5))
        .expect("audit table usable after migration");
    assert_eq!(rows.len(), 1);
}

#[test]
fn a_migration_another_process_already_applied_is_skipped() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("raced.db");
    schema::open(Some(&path)).expect("the first process migrates the file");
    // The second process read version 0 before the first one migrated: its steps
    // must find the work done, not create the tables again.
    let mut late = rusqlite::Connection::open(&path).expect("a second connection");
    late.busy_timeout(Duration::from_secs(5))
        .expect("busy timeout");
    schema::migrate(&mut late, "raced.db", 0, SCHEMA_VERSION)
        .expect("a stale version read is not an error");
    let version: i64 = late
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("version");
    assert_eq!(version, SCHEMA_VERSION);
}

#[test]
fn xmppwalls_opening_one_new_file_at_once_all_succeed() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    for round in 0..5 {
        let path = dir.path().join(format!("shared-{round}.db"));
        let start = std::sync::Arc::new(std::sync::Barrier::new(6));
        let openers: Vec<_> = (0..6)
            .map(|_| {
                let (path, start) = (path.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    schema::open(Some(&path)).map(|_| ())
                })
            })
            .collect();
        for opener in openers {
            opener
                .join()
                .expect("opener thread")
                .expect("every opener gets a migrated store");
        }
    }
}

#[test]
fn file_from_a_newer_xmppwall_is_refused() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("new.db");
    rusqlite::Connection::open(&path)
        .expect("file")
        .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .expect("version set");
    match Store::open(&StoreConfig::file(&path)) {
        Err(StoreError::TooNew { found, .. }) => assert_eq!(found, SCHEMA_VERSION + 1),
        other => panic!("expected TooNew, got {other:?}"),
    }
}

#[test]
fn pruning_keeps_each_kind_for_its_retention() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = StoreConfig {
        path: Some(dir.path().join("prune.db")),
        retention: Retention {
            connections: 7 * DAY,
            verdicts: 3 * DAY,
            reports: 90 * DAY,
            expired_bans: 10 * DAY,
            reputation: 30 * DAY,
            prune_interval: Duration::from_secs(3600),
        },
    };
    let t = t0();
    runtime().block_on(async {
        let store = Store::open(&config).expect("store opens");
        store.record_connection(connection(t));
        store.record_verdict(verdict(t));
        store.add_report(report(t)).await.expect("report");
        store
            .adjust_reputation("x@example.net".into(), 1.0, t)
            .await
            .expect("reputation");
        // Expires a day after t: kept until 11 days after t.
        store
            .ban(Ban::new(net("192.0.2.9/32"), t, t + DAY, "admin", "x"))
            .await
            .expect("ban");

        // Nothing is old enough yet.
        assert_eq!(store.prune(t + DAY).await.expect("prune"), 0);
        // Four days later the verdict goes, the connection stays.
        assert_eq!(store.prune(t + 4 * DAY).await.expect("prune"), 1);
        assert!(store.recent_verdicts(5).await.expect("v").is_empty());
        assert_eq!(store.recent_connections(5).await.expect("c").len(), 1);
        // Twelve days: the connection and the expired ban.
        assert_eq!(store.prune(t + 12 * DAY).await.expect("prune"), 2);
        assert!(store.recent_connections(5).await.expect("c").is_empty());
        // Forty days: the reputation entry; the report stays.
        assert_eq!(store.prune(t + 40 * DAY).await.expect("prune"), 1);
        assert_eq!(store.reports(None, 5).await.expect("r").len(), 1);
        assert_eq!(store.prune(t + 91 * DAY).await.expect("prune"), 1);
        assert!(store.reports(None, 5).await.expect("r").is_empty());
    });
}

#[test]
fn operator_bans_are_replaced_lifted_and_kept_until_they_end() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("op.db");
    let now = SystemTime::now();
    let ban = |kind: &str, target: &str, until: Option<SystemTime>| OperatorBan {
        kind: kind.into(),
        target: target.into(),
        created: now,
        until,
        reason: Some("abuse".into()),
    };
    runtime().block_on(async {
        let store = Store::open(&StoreConfig::file(&path)).expect("store opens");
        store
            .put_operator_ban(ban("account", "spammer@example.net", None))
            .await
            .expect("saved");
        store
            .put_operator_ban(ban("address", "192.0.2.0/24", Some(now + DAY)))
            .await
            .expect("saved");
        // Replacing keeps one row per target.
        store
            .put_operator_ban(ban("address", "192.0.2.0/24", Some(now + 2 * DAY)))
            .await
            .expect("saved");
        store
            .put_operator_ban(ban("domain", "old.example", Some(now - DAY)))
            .await
            .expect("saved");
        assert!(store
            .remove_operator_ban("domain".into(), "old.example".into())
            .await
            .expect("removed"));
        assert!(!store
            .remove_operator_ban("domain".into(), "old.example".into())
            .await
            .expect("removed"));
        // Ended a second ago and never lifted: kept in the table, not in force.
        store
            .put_operator_ban(ban(
                "domain",
                "ended.example",
                Some(now - Duration::from_secs(1)),
            ))
            .await
            .expect("saved");
    });
    let store = Store::open(&StoreConfig::file(&path)).expect("store reopens");
    let bans = runtime()
        .block_on(store.operator_bans(now))
        .expect("bans read");
    let got: Vec<(&str, &str, Option<SystemTime>)> = bans
        .iter()
        .map(|b| (b.kind.as_str(), b.target.as_str(), b.until))
        .collect();
    assert_eq!(
        got,
        [
            ("account", "spammer@example.net", None),
            (
                "address",
                "192.0.2.0/24",
                Some(writer::time(writer::ms(now + 2 * DAY)))
            ),
        ]
    );
}
