//! The database file: opening it, its pragmas, and the schema migrations.
//!
//! The schema's version is `PRAGMA user_version`. Each entry of [`MIGRATIONS`] takes
//! the schema from its index to index + 1 and runs in its own transaction, together
//! with the new `user_version`, so a crash mid-migration leaves the old version.

use std::path::Path;

use rusqlite::Connection;

use crate::StoreError;

/// The schema version this xmppwall writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Migration `i` takes the schema from version `i` to `i + 1`. Never edit one that
/// has shipped; add another.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: bans and reports.
    "CREATE TABLE bans (
        id INTEGER PRIMARY KEY,
        network TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL,
        source TEXT NOT NULL,
        reason TEXT NOT NULL,
        lifted_ms INTEGER
     );
     CREATE INDEX bans_expires ON bans (expires_ms);
     CREATE INDEX bans_network ON bans (network);
     CREATE TABLE reports (
        id INTEGER PRIMARY KEY,
        at_ms INTEGER NOT NULL,
        reporter TEXT NOT NULL,
        subject TEXT NOT NULL,
        reason TEXT NOT NULL,
        text TEXT
     );
     CREATE INDEX reports_subject ON reports (subject, at_ms);
     CREATE INDEX reports_at ON reports (at_ms);",
    // 2: reputation and the audit trail.
    "CREATE TABLE reputation (
        subject TEXT PRIMARY KEY,
        score REAL NOT NULL,
        updated_ms INTEGER NOT NULL
     );
     CREATE INDEX reputation_updated ON reputation (updated_ms);
     CREATE TABLE connections (
        id INTEGER PRIMARY KEY,
        address TEXT NOT NULL,
        jid TEXT,
        front TEXT NOT NULL,
        started_ms INTEGER NOT NULL,
        ended_ms INTEGER NOT NULL,
        bytes_from_client INTEGER NOT NULL,
        bytes_to_client INTEGER NOT NULL,
        stanzas_to_server INTEGER NOT NULL,
        stanzas_to_client INTEGER NOT NULL,
        end_reason TEXT NOT NULL
     );
     CREATE INDEX connections_ended ON connections (ended_ms);
     CREATE INDEX connections_address ON connections (address);
     CREATE TABLE verdicts (
        id INTEGER PRIMARY KEY,
        at_ms INTEGER NOT NULL,
        address TEXT NOT NULL,
        jid TEXT,
        hook TEXT NOT NULL,
        kind TEXT,
        stanza_type TEXT,
        from_jid TEXT,
        to_jid TEXT,
        source TEXT NOT NULL,
        name TEXT NOT NULL,
        action TEXT NOT NULL
     );
     CREATE INDEX verdicts_at ON verdicts (at_ms);",
    // 3: the XEP-0359 stanza ids a report names, one per line.
    "ALTER TABLE reports ADD COLUMN stanza_ids TEXT;",
    // 4: the operator's bans (admin API): addresses, accounts, domains.
    "CREATE TABLE operator_bans (
        kind TEXT NOT NULL,
        target TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        until_ms INTEGER,
        reason TEXT,
        PRIMARY KEY (kind, target)
     );",
];

fn describe(path: Option<&Path>) -> String {
    path.map_or_else(|| ":memory:".to_owned(), |p| p.display().to_string())
}

/// Opens the database with xmppwall's pragmas and brings its schema up to date.
pub(crate) fn open(path: Option<&Path>) -> Result<Connection, StoreError> {
    open_at_version(path, SCHEMA_VERSION)
}

/// Opens and migrates up to `target` (tests build older files with this).
pub(crate) fn open_at_version(path: Option<&Path>, target: i64) -> Result<Connection, StoreError> {
    let name = describe(path);
    let open_error = |source| StoreError::Open {
        path: name.clone(),
        source,
    };
    let mut conn = match path {
        Some(p) => {
            if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                // A missing state directory is created; anything else is reported by open.
                let _ = std::fs::create_dir_all(dir);
            }
            Connection::open(p)
        }
        None => Connection::open_in_memory(),
    }
    .map_err(open_error)?;
    // Set first: a second xmppwall opening the same file at the same moment then
    // waits for the lock (up to 5 s) instead of failing on the pragmas below.
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(open_error)?;
    // WAL: readers never block the writer; FULL: a commit is on disk when it returns.
    set_wal(&conn).map_err(open_error)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(open_error)?;
    let found = user_version(&conn).map_err(open_error)?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            path: name,
            found,
            known: SCHEMA_VERSION,
        });
    }
    migrate(&mut conn, &name, found, target)?;
    Ok(conn)
}

/// Switches a file to WAL. Switching needs the file to itself, and SQLite answers
/// "database is locked" at once, without waiting, when another process is opening
/// the same new file: so this waits and tries again, as the busy timeout would.
fn set_wal(conn: &Connection) -> rusqlite::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

fn user_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.pragma_query_value(None, "user_version", |r| r.get(0))
}

/// Applies migrations `found..target`, each in its own transaction.
///
/// `found` may be stale: another process opening the same file may have migrated it
/// since it was read. Each step therefore takes the write lock first (`BEGIN
/// IMMEDIATE`) and reads the version again under it; a step already applied is
/// skipped, never run twice.
pub(crate) fn migrate(
    conn: &mut Connection,
    name: &str,
    found: i64,
    target: i64,
) -> Result<(), StoreError> {
    for version in found..target {
        let step = |conn: &mut Connection| -> rusqlite::Result<bool> {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            if user_version(&tx)? > version {
                return Ok(false);
            }
            tx.execute_batch(MIGRATIONS[version as usize])?;
            tx.pragma_update(None, "user_version", version + 1)?;
            tx.commit()?;
            Ok(true)
        };
        let applied = step(conn).map_err(|source| StoreError::Migration {
            path: name.to_owned(),
            version: version + 1,
            source,
        })?;
        if applied && found > 0 {
            tracing::info!(
                path = %name,
                version = version + 1,
                "store database migrated"
            );
        }
    }
    Ok(())
}
