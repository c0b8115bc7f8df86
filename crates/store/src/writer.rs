//! The writer thread: the only code that touches the database after start.
//!
//! It takes every command waiting in the channel (up to [`BATCH`]), applies them in
//! one transaction, commits, and only then answers: acknowledged writes are on disk.
//! Reads go through the same thread, so they see every write acknowledged before.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use crate::records::{
    Ban, ConnectionRecord, OperatorBan, Report, Reputation, StanzaSummary, VerdictRecord,
    VerdictSource,
};
use crate::{Answer, Counters, IpNet, Retention, StoreError};

/// Commands applied in one transaction at most.
pub(crate) const BATCH: usize = 1024;

pub(crate) type Reply = tokio::sync::oneshot::Sender<Result<Answer, StoreError>>;

pub(crate) enum Command {
    /// `None`: submitted without waiting (counted for [`crate::Store::flush`]).
    Ban(Ban, Option<Reply>),
    Unban(IpNet, SystemTime, Reply),
    ActiveBans(SystemTime, Reply),
    AddReport(Report, Reply),
    Reports(Option<String>, usize, Reply),
    Reputation(String, Reply),
    Reputations(usize, Reply),
    AdjustReputation(String, f64, SystemTime, Reply),
    Connection(ConnectionRecord),
    Verdict(VerdictRecord),
    RecentConnections(usize, Reply),
    RecentVerdicts(usize, Reply),
    Prune(SystemTime, Reply),
    Barrier(Reply),
    PutOperatorBan(OperatorBan, Reply),
    RemoveOperatorBan(String, String, Reply),
    OperatorBans(SystemTime, Reply),
    Stop,
}

pub(crate) fn spawn(
    conn: Connection,
    rx: Receiver<Command>,
    retention: Retention,
    counters: Arc<Counters>,
) -> Result<std::thread::JoinHandle<()>, StoreError> {
    std::thread::Builder::new()
        .name("xmppwall-store".into())
        .spawn(move || {
            Writer {
                conn,
                retention,
                counters,
            }
            .run(rx)
        })
        .map_err(|_| StoreError::WriterGone)
}

struct Writer {
    conn: Connection,
    retention: Retention,
    counters: Arc<Counters>,
}

pub(crate) fn ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

pub(crate) fn time(ms: i64) -> SystemTime {
    if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms as u64)
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    }
}

fn address(text: &str) -> IpAddr {
    text.parse()
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
}

impl Writer {
    fn run(mut self, rx: Receiver<Command>) {
        let mut next_prune = Instant::now() + self.retention.prune_interval;
        loop {
            let first = match rx.recv_timeout(next_prune.saturating_duration_since(Instant::now()))
            {
                Ok(c) => c,
                Err(RecvTimeoutError::Timeout) => {
                    next_prune = Instant::now() + self.retention.prune_interval;
                    let retention = self.retention;
                    match self.in_transaction(|tx| prune(tx, &retention, SystemTime::now())) {
                        Ok(n) if n > 0 => tracing::info!(rows = n, "store pruned"),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "store pruning failed"),
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(c) => batch.push(c),
                    Err(_) => break,
                }
            }
            // Bans that found the queue full wait beside it.
            let overflow = std::mem::take(
                &mut *self
                    .counters
                    .overflow
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()),
            );
            batch.extend(overflow.into_iter().map(|ban| Command::Ban(ban, None)));
            if !self.apply(batch) {
                return;
            }
        }
    }

    fn in_transaction<T>(
        &mut self,
        f: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        let tx = self.conn.transaction()?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// Applies a batch; `false` once a `Stop` was seen.
    fn apply(&mut self, batch: Vec<Command>) -> bool {
        let mut replies: Vec<(Reply, Result<Answer, StoreError>)> = Vec::new();
        let mut submitted_bans = 0u64;
        let mut stop = false;
        let retention = self.retention;
        let result = self.in_transaction(|tx| {
            for command in batch {
                let (reply, answer) = match command {
                    Command::Ban(ban, reply) => {
                        let r = insert_ban(tx, &ban).map(|()| Answer::Done);
                        match reply {
                            Some(reply) => (reply, r),
                            None => {
                                submitted_bans += 1;
                                r?;
                                continue;
                            }
                        }
                    }
                    Command::Unban(net, now, reply) => (reply, unban(tx, net, now)),
                    Command::ActiveBans(now, reply) => (reply, active_bans(tx, now)),
                    Command::AddReport(report, reply) => (reply, add_report(tx, &report)),
                    Command::Reports(subject, limit, reply) => {
                        (reply, reports(tx, subject.as_deref(), limit))
                    }
                    Command::Reputation(subject, reply) => (reply, reputation(tx, &subject)),
                    Command::Reputations(limit, reply) => (reply, reputations(tx, limit)),
                    Command::AdjustReputation(subject, delta, now, reply) => {
                        (reply, adjust_reputation(tx, &subject, delta, now))
                    }
                    Command::Connection(c) => {
                        if let Err(e) = insert_connection(tx, &c) {
                            tracing::warn!(error = %e, "a connection audit record was not saved");
                        }
                        continue;
                    }
                    Command::Verdict(v) => {
                        if let Err(e) = insert_verdict(tx, &v) {
                            tracing::warn!(error = %e, "a verdict audit record was not saved");
                        }
                        continue;
                    }
                    Command::RecentConnections(limit, reply) => {
                        (reply, recent_connections(tx, limit))
                    }
                    Command::RecentVerdicts(limit, reply) => (reply, recent_verdicts(tx, limit)),
                    Command::Prune(now, reply) => {
                        (reply, prune(tx, &retention, now).map(Answer::Count))
                    }
                    Command::Barrier(reply) => (reply, Ok(Answer::Done)),
                    Command::PutOperatorBan(ban, reply) => (reply, put_operator_ban(tx, &ban)),
                    Command::RemoveOperatorBan(kind, target, reply) => {
                        (reply, remove_operator_ban(tx, &kind, &target))
                    }
                    Command::OperatorBans(now, reply) => (reply, operator_bans(tx, now)),
                    Command::Stop => {
                        stop = true;
                        continue;
                    }
                };
                replies.push((reply, answer.map_err(StoreError::from)));
            }
            Ok(())
        });
        match result {
            Ok(()) => {
                self.counters
                    .durable_committed
                    .fetch_add(submitted_bans, Ordering::SeqCst);
                for (reply, answer) in replies {
                    let _ = reply.send(answer);
                }
            }
            Err(e) => {
                // Nothing of the batch is saved; every waiting caller hears so.
                self.counters
                    .commit_failures
                    .fetch_add(1, Ordering::Relaxed);
                self.counters
                    .durable_committed
                    .fetch_add(submitted_bans, Ordering::SeqCst);
                tracing::error!(error = %e, "the store could not commit; the batch's records are lost");
                for (reply, _) in replies {
                    let _ = reply.send(Err(StoreError::Commit(e.to_string())));
                }
            }
        }
        !stop
    }
}

fn put_operator_ban(tx: &Transaction<'_>, ban: &OperatorBan) -> rusqlite::Result<Answer> {
    tx.prepare_cached(
        "INSERT OR REPLACE INTO operator_bans (kind, target, created_ms, until_ms, reason)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        ban.kind,
        ban.target,
        ms(ban.created),
        ban.until.map(ms),
        ban.reason
    ])?;
    Ok(Answer::Done)
}

fn remove_operator_ban(tx: &Transaction<'_>, kind: &str, target: &str) -> rusqlite::Result<Answer> {
    let n = tx
        .prepare_cached("DELETE FROM operator_bans WHERE kind = ?1 AND target = ?2")?
        .execute(params![kind, target])?;
    Ok(Answer::Count(n as u64))
}

fn operator_bans(tx: &Transaction<'_>, now: SystemTime) -> rusqlite::Result<Answer> {
    let mut stmt = tx.prepare_cached(
        "SELECT kind, target, created_ms, until_ms, reason FROM operator_bans
         WHERE until_ms IS NULL OR until_ms > ?1 ORDER BY created_ms",
    )?;
    let rows = stmt.query_map(params![ms(now)], |r| {
        Ok(OperatorBan {
            kind: r.get(0)?,
            target: r.get(1)?,
            created: time(r.get(2)?),
            until: r.get::<_, Option<i64>>(3)?.map(time),
            reason: r.get(4)?,
        })
    })?;
    rows.collect::<rusqlite::Result<Vec<_>>>()
        .map(Answer::OperatorBans)
}

fn insert_ban(tx: &Transaction<'_>, ban: &Ban) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO bans (network, created_ms, expires_ms, source, reason) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        ban.network.to_string(),
        ms(ban.created),
        ms(ban.expires),
        ban.source,
        ban.reason
    ])?;
    Ok(())
}

fn unban(tx: &Transaction<'_>, net: IpNet, now: SystemTime) -> rusqlite::Result<Answer> {
    let n = tx
        .prepare_cached(
            "UPDATE bans SET lifted_ms = ?2 WHERE network = ?1 AND expires_ms > ?2 AND lifted_ms IS NULL",
        )?
        .execute(params![net.trunc().to_string(), ms(now)])?;
    Ok(Answer::Count(n as u64))
}

fn active_bans(tx: &Transaction<'_>, now: SystemTime) -> rusqlite::Result<Answer> {
    let mut stmt = tx.prepare_cached(
        "SELECT network, created_ms, expires_ms, source, reason FROM bans
         WHERE expires_ms > ?1 AND lifted_ms IS NULL ORDER BY expires_ms DESC",
    )?;
    let rows = stmt.query_map(params![ms(now)], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
        ))
    })?;
    let mut bans = Vec::new();
    for row in rows {
        let (network, created, expires, source, reason) = row?;
        let Ok(network) = network.parse::<IpNet>() else {
            tracing::warn!(network, "a stored ban names no network; ignored");
            continue;
        };
        bans.push(Ban {
            network,
            created: time(created),
            expires: time(expires),
            source,
            reason,
        });
    }
    Ok(Answer::Bans(bans))
}

fn add_report(tx: &Transaction<'_>, report: &Report) -> rusqlite::Result<Answer> {
    tx.prepare_cached(
        "INSERT INTO reports (at_ms, reporter, subject, reason, text, stanza_ids)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        ms(report.at),
        report.reporter,
        report.subject,
        report.reason,
        report.text,
        (!report.stanza_ids.is_empty()).then(|| report.stanza_ids.join("\n"))
    ])?;
    Ok(Answer::Id(tx.last_insert_rowid()))
}

fn reports(tx: &Transaction<'_>, subject: Option<&str>, limit: usize) -> rusqlite::Result<Answer> {
    let mut stmt = tx.prepare_cached(
        "SELECT id, at_ms, reporter, subject, reason, text, stanza_ids FROM reports
         WHERE ?1 IS NULL OR subject = ?1 ORDER BY at_ms DESC, id DESC LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![subject, limit as i64], |r| {
        Ok(Report {
            id: r.get(0)?,
            at: time(r.get(1)?),
            reporter: r.get(2)?,
            subject: r.get(3)?,
            reason: r.get(4)?,
            text: r.get(5)?,
            stanza_ids: r
                .get::<_, Option<String>>(6)?
                .map(|s| s.lines().map(str::to_owned).collect())
                .unwrap_or_default(),
        })
    })?;
    rows.collect::<rusqlite::Result<Vec<_>>>()
        .map(Answer::Reports)
}

fn reputation(tx: &Transaction<'_>, subject: &str) -> rusqlite::Result<Answer> {
    let row: Option<(f64, i64)> = tx
        .prepare_cached("SELECT score, updated_ms FROM reputation WHERE subject = ?1")?
        .query_row(params![subject], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(Answer::Reputation(Reputation {
        subject: subject.to_owned(),
        score: row.map_or(0.0, |r| r.0),
        updated: row.map(|r| time(r.1)),
    }))
}

fn reputations(tx: &Transaction<'_>, limit: usize) -> rusqlite::Result<Answer> {
    let mut stmt = tx.prepare_cached(
        "SELECT subject, score, updated_ms FROM reputation ORDER BY updated_ms DESC LIMIT ?1",
    )?;
    let rows = stmt.query_map(params![limit as i64], |r| {
        Ok(Reputation {
            subject: r.get(0)?,
            score: r.get(1)?,
            updated: Some(time(r.get(2)?)),
        })
    })?;
    rows.collect::<rusqlite::Result<Vec<_>>>()
        .map(Answer::Reputations)
}

fn adjust_reputation(
    tx: &Transaction<'_>,
    subject: &str,
    delta: f64,
    now: SystemTime,
) -> rusqlite::Result<Answer> {
    tx.prepare_cached(
        "INSERT INTO reputation (subject, score, updated_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT (subject) DO UPDATE SET score = score + ?2, updated_ms = ?3",
    )?
    .execute(params![subject, delta, ms(now)])?;
    reputation(tx, subject)
}

fn insert_connection(tx: &Transaction<'_>, c: &ConnectionRecord) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO connections (address, jid, front, started_ms, ended_ms, bytes_from_client,
         bytes_to_client, stanzas_to_server, stanzas_to_client, end_reason)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        c.address.to_string(),
        c.jid,
        c.front,
        ms(c.started),
        ms(c.ended),
        c.bytes_from_client as i64,
        c.bytes_to_client as i64,
        c.stanzas_to_server as i64,
        c.stanzas_to_client as i64,
        c.end_reason
    ])?;
    Ok(())
}

fn insert_verdict(tx: &Transaction<'_>, v: &VerdictRecord) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO verdicts (at_ms, address, jid, hook, kind, stanza_type, from_jid, to_jid,
         source, name, action) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?
    .execute(params![
        ms(v.at),
        v.address.to_string(),
        v.jid,
        v.hook,
        v.stanza.kind,
        v.stanza.stanza_type,
        v.stanza.from,
        v.stanza.to,
        v.source.as_str(),
        v.name,
        v.action
    ])?;
    Ok(())
}

fn recent_connections(tx: &Transaction<'_>, limit: usize) -> rusqlite::Result<Answer> {
    let mut stmt = tx.prepare_cached(
        "SELECT address, jid, front, started_ms, ended_ms, bytes_from_client, bytes_to_client,
         stanzas_to_server, stanzas_to_client, end_reason FROM connections
         ORDER BY ended_ms DESC, id DESC LIMIT ?1",
    )?;
    let rows = stmt.query_map(params![limit as i64], |r| {
        Ok(ConnectionRecord {
            address: address(&r.get::<_, String>(0)?),
            jid: r.get(1)?,
            front: r.get(2)?,
            started: time(r.get(3)?),
            ended: time(r.get(4)?),
            bytes_from_client: r.get::<_, i64>(5)? as u64,
            bytes_to_client: r.get::<_, i64>(6)? as u64,
            stanzas_to_server: r.get::<_, i64>(7)? as u64,
            stanzas_to_client: r.get::<_, i64>(8)? as u64,
            end_reason: r.get(9)?,
        })
    })?;
    rows.collect::<rusqlite::Result<Vec<_>>>()
        .map(Answer::Connections)
}

fn recent_verdicts(tx: &Transaction<'_>, limit: usize) -> rusqlite::Result<Answer> {
    let mut stmt = tx.prepare_cached(
        "SELECT at_ms, address, jid, hook, kind, stanza_type, from_jid, to_jid, source, name, action
         FROM verdicts ORDER BY at_ms DESC, id DESC LIMIT ?1",
    )?;
    let rows = stmt.query_map(params![limit as i64], |r| {
        Ok(VerdictRecord {
            at: time(r.get(0)?),
            address: address(&r.get::<_, String>(1)?),
            jid: r.get(2)?,
            hook: r.get(3)?,
            stanza: StanzaSummary {
                kind: r.get(4)?,
                stanza_type: r.get(5)?,
                from: r.get(6)?,
                to: r.get(7)?,
            },
            source: VerdictSource::parse(&r.get::<_, String>(8)?),
            name: r.get(9)?,
            action: r.get(10)?,
        })
    })?;
    rows.collect::<rusqlite::Result<Vec<_>>>()
        .map(Answer::Verdicts)
}

/// Deletes what `retention` no longer keeps at `now`.
fn prune(tx: &Transaction<'_>, retention: &Retention, now: SystemTime) -> rusqlite::Result<u64> {
    let cutoff = |keep: Duration| ms(now.checked_sub(keep).unwrap_or(UNIX_EPOCH));
    let mut n = 0;
    n += tx.execute(
        "DELETE FROM connections WHERE ended_ms < ?1",
        params![cutoff(retention.connections)],
    )?;
    n += tx.execute(
        "DELETE FROM verdicts WHERE at_ms < ?1",
        params![cutoff(retention.verdicts)],
    )?;
    n += tx.execute(
        "DELETE FROM reports WHERE at_ms < ?1",
        params![cutoff(retention.reports)],
    )?;
    n += tx.execute(
        "DELETE FROM bans WHERE MIN(expires_ms, COALESCE(lifted_ms, expires_ms)) < ?1",
        params![cutoff(retention.expired_bans)],
    )?;
    n += tx.execute(
        "DELETE FROM operator_bans WHERE until_ms IS NOT NULL AND until_ms < ?1",
        params![cutoff(retention.expired_bans)],
    )?;
    n += tx.execute(
        "DELETE FROM reputation WHERE updated_ms < ?1",
        params![cutoff(retention.reputation)],
    )?;
    Ok(n as u64)
}
