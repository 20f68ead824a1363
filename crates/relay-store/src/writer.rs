//! The writer thread: the only code that writes SQLite. It takes every job queued while the
//! previous transaction ran, runs them in one transaction (each in its own savepoint, so one
//! failing job cannot spoil the others) and answers them all after the commit.
//!
//! Commits are not flushed (`synchronous=NORMAL` in WAL mode): accepted events are already
//! durable in the journal, and losing the rest (claims, settlements, figures) to a power cut
//! only means a redelivery under the same idempotency key. A checkpoint about once a second
//! flushes it all, here, off the ingest path; then the journal segments it covered can go.

use std::sync::Arc;
use std::time::{Duration, Instant};

use relay_core::ports::Clock;
use relay_core::{AttemptRecord, Claim, Settlement, StoreError, Trigger, UnixMillis};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::disk::{Disk, Op};
use crate::journal::{Entry, Shared};

/// Upper bound on jobs in one transaction, so one commit never holds answers back for long.
const MAX_BATCH: usize = 4096;
/// How often committed work is checkpointed (flushed to the database file).
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// How long the writer gathers jobs before a transaction. Nothing on the ingest path waits for
/// it, and a transaction of many events writes each index page once instead of once per event:
/// less WAL to flush at each checkpoint, so a shorter stall of the disk the journal shares.
const GATHER: Duration = Duration::from_millis(10);
/// How soon a failed commit is tried again.
const RETRY: Duration = Duration::from_millis(100);
/// `meta` key of the count of events acknowledged before their journal flush.
pub(crate) const ACKED_BEFORE_FLUSH_KEY: &str = "acked_before_flush";

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

#[derive(Debug)]
pub(crate) enum Job {
    /// Events the journal logged: index them and queue their deliveries.
    Apply(Vec<Entry>),
    Claim {
        max: usize,
        lease: Duration,
        reply: Reply<Vec<Claim>>,
    },
    Settle {
        claim: Claim,
        attempt: AttemptRecord,
        settlement: Settlement,
        reply: Reply<()>,
    },
    /// Gives claims back, due at `due_at` (at once when `None`).
    Release {
        claims: Vec<Claim>,
        due_at: Option<UnixMillis>,
        reply: Reply<()>,
    },
    Publish {
        key: &'static str,
        value: String,
        reply: Reply<()>,
    },
    /// An event was answered 2xx before its journal flush.
    AckedBeforeFlush { id: String, at: UnixMillis },
    /// …and its flush has landed since.
    Flushed { id: String, at: UnixMillis },
    /// Delivered events archived elsewhere: remove them, with their attempts.
    Forget {
        ids: Vec<String>,
        reply: Reply<usize>,
    },
    /// Checkpoint if anything was committed since the last one (sent about once a second).
    Tick,
    /// Answered once everything queued before it is committed.
    Barrier { reply: Reply<()> },
}

/// A job's answer, held until the batch is committed.
enum Done {
    /// Entries applied (`Ok(true)`: at least one new delivery queued), or to apply again.
    Apply(Vec<Entry>, Result<bool, StoreError>),
    Claim(Reply<Vec<Claim>>, Result<Vec<Claim>, StoreError>),
    Count(Reply<usize>, Result<usize, StoreError>),
    Unit(Option<Reply<()>>, Result<(), StoreError>),
}

fn answer<T>(tx: Reply<T>, r: Result<T, StoreError>, commit: Result<(), &StoreError>) {
    // A dropped receiver means the caller gave up (timeout); the work is committed anyway.
    drop(tx.send(commit.map_err(Clone::clone).and(r)));
}

pub(crate) fn spawn(
    conn: Connection,
    rx: mpsc::Receiver<Job>,
    work: Arc<Notify>,
    clock: Arc<dyn Clock>,
    shared: Arc<Shared>,
    disk: Disk,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let next_lease: i64 = conn
        .query_row(
            "SELECT COALESCE(MAX(lease), 0) + 1 FROM deliveries",
            [],
            |r| r.get(0),
        )
        .unwrap_or(1);
    let applied = shared.checkpointed_seq();
    let writer = Writer {
        conn,
        clock,
        next_lease,
        shared,
        unapplied: Vec::new(),
        applied,
        committed_since_checkpoint: false,
        last_checkpoint: Instant::now(),
        disk,
    };
    std::thread::Builder::new()
        .name("relay-store-writer".into())
        .spawn(move || writer.run(rx, &work))
}

struct Writer {
    conn: Connection,
    clock: Arc<dyn Clock>,
    next_lease: i64,
    shared: Arc<Shared>,
    /// Journal entries whose transaction failed: applied again with the next batch.
    unapplied: Vec<Entry>,
    /// Highest journal sequence number committed to SQLite.
    applied: u64,
    committed_since_checkpoint: bool,
    last_checkpoint: Instant,
    /// Where a fault schedule can fail commits (`write.index`) and checkpoints (`flush.index`).
    disk: Disk,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Job>, work: &Notify) {
        let mut batch = Vec::with_capacity(64);
        loop {
            if self.unapplied.is_empty() {
                match rx.blocking_recv() {
                    Some(first) => batch.push(first),
                    None => break,
                }
            } else {
                // A commit failed and events wait to be indexed: try again soon, whether or
                // not anything else comes (a failing store refuses new events meanwhile).
                std::thread::sleep(RETRY);
                match rx.try_recv() {
                    Ok(first) => batch.push(first),
                    Err(mpsc::error::TryRecvError::Empty) => {}
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                }
            }
            std::thread::sleep(GATHER);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            if !self.unapplied.is_empty() {
                batch.push(Job::Apply(std::mem::take(&mut self.unapplied)));
            }
            if self.commit_batch(&mut batch) {
                work.notify_one();
            }
            if self.committed_since_checkpoint && self.last_checkpoint.elapsed() >= CHECKPOINT_EVERY
            {
                self.checkpoint();
            }
        }
        self.checkpoint();
        tracing::debug!("store writer stopped: every handle dropped");
    }

    /// Flushes SQLite (WAL, then the database file) and lets the journal drop what is now
    /// durable here.
    fn checkpoint(&mut self) {
        self.last_checkpoint = Instant::now();
        let upto = self.applied;
        let done = self
            .disk
            .check(Op::Flush)
            .map_err(|e| e.to_string())
            .and_then(|()| checkpoint(&self.conn).map_err(|e| e.to_string()));
        match done {
            Ok(true) => {
                self.committed_since_checkpoint = false;
                self.shared.mark_checkpointed(upto);
                self.shared.health.clear(CHECKPOINT);
            }
            // A reader held old pages; the next checkpoint finishes the job. The disk worked.
            Ok(false) => self.shared.health.clear(CHECKPOINT),
            Err(e) => {
                tracing::warn!(error = %e, "store checkpoint failed; retrying later");
                failing(&self.shared, self.clock.as_ref(), CHECKPOINT, e);
            }
        }
    }

    /// Runs and commits one batch, answers every job, and says whether new work became due.
    fn commit_batch(&mut self, batch: &mut Vec<Job>) -> bool {
        let size = batch.len();
        let now = self.clock.now();
        let mut next_lease = self.next_lease;
        let txn = match self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
        {
            Ok(txn) => txn,
            Err(e) => {
                let err = match is_storage_failure(&e) {
                    true => failing(&self.shared, self.clock.as_ref(), COMMIT, e.to_string()),
                    false => unavailable(e),
                };
                tracing::error!(error = %err, jobs = size, "store transaction could not start");
                for job in batch.drain(..) {
                    match job {
                        Job::Apply(entries) => self.unapplied.extend(entries),
                        job => fail(job, &err),
                    }
                }
                return false;
            }
        };
        let mut done = Vec::with_capacity(size);
        for job in batch.drain(..) {
            done.push(run_in_savepoint(&txn, job, now, &mut next_lease));
        }
        let failed = |why: String| failing(&self.shared, self.clock.as_ref(), COMMIT, why);
        let commit = match self.disk.check(Op::Write) {
            // Dropped, so rolled back: as a commit the disk refused.
            Err(injected) => {
                drop(txn);
                Err(failed(injected.to_string()))
            }
            Ok(()) => txn.commit().map_err(|e| match is_storage_failure(&e) {
                true => failed(e.to_string()),
                false => unavailable(e),
            }),
        };
        if let Err(err) = &commit {
            tracing::error!(error = %err, jobs = size, "store commit failed");
        } else {
            self.next_lease = next_lease;
            self.committed_since_checkpoint = true;
            self.shared.health.clear(COMMIT);
        }
        let mut work = false;
        for d in done {
            match d {
                Done::Apply(entries, Ok(queued)) if commit.is_ok() => {
                    work |= queued;
                    self.shared.applied(&entries);
                    self.applied = self
                        .applied
                        .max(entries.iter().map(|e| e.seq).max().unwrap_or(0));
                }
                Done::Apply(entries, _) => self.unapplied.extend(entries),
                Done::Claim(tx, r) => answer(tx, r, commit.as_ref().map(drop)),
                Done::Count(tx, r) => answer(tx, r, commit.as_ref().map(drop)),
                Done::Unit(Some(tx), r) => answer(tx, r, commit.as_ref().map(drop)),
                Done::Unit(None, _) => {}
            }
        }
        work
    }
}

/// The health keys of the index's two kinds of failure.
const COMMIT: &str = "index";
const CHECKPOINT: &str = "index checkpoint";

/// Marks the index failing (ingest refuses events until it works again), as the error a
/// caller gets.
fn failing(shared: &Shared, clock: &dyn Clock, key: &'static str, why: String) -> StoreError {
    let reason = format!("cannot write the index (relay.db): {why}");
    shared.health.set(key, reason.clone(), clock.now());
    StoreError::Failing(reason)
}

/// Whether SQLite failed for want of working storage (an I/O error, a full or damaged disk,
/// a file it cannot open or write), rather than for a busy lock or a bad statement.
fn is_storage_failure(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode::*;
    matches!(
        e.sqlite_error_code(),
        Some(SystemIoFailure | DiskFull | DatabaseCorrupt | NotADatabase | CannotOpen | ReadOnly)
    )
}

/// A PASSIVE checkpoint: copies the WAL into the database file and syncs both. Says whether it
/// copied everything (a reader of old pages can hold part of it back).
pub(crate) fn checkpoint(conn: &Connection) -> rusqlite::Result<bool> {
    let (busy, log, done): (i64, i64, i64) =
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    Ok(busy == 0 && log == done)
}

fn unavailable(e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn failed(e: rusqlite::Error) -> StoreError {
    StoreError::Failed(e.to_string())
}

/// Answers a job that never ran because its transaction could not start.
fn fail(job: Job, err: &StoreError) {
    let err = err.clone();
    match job {
        Job::Claim { reply, .. } => drop(reply.send(Err(err))),
        Job::Forget { reply, .. } => drop(reply.send(Err(err))),
        Job::Settle { reply, .. }
        | Job::Release { reply, .. }
        | Job::Publish { reply, .. }
        | Job::Barrier { reply } => drop(reply.send(Err(err))),
        Job::Apply(_) | Job::AckedBeforeFlush { .. } | Job::Flushed { .. } | Job::Tick => {}
    }
}

fn run_in_savepoint(
    txn: &Transaction<'_>,
    job: Job,
    now: UnixMillis,
    next_lease: &mut i64,
) -> Done {
    // A savepoint per job: if one fails half-way, its partial writes roll back and the rest of
    // the batch still commits.
    fn guarded<T>(
        txn: &Transaction<'_>,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        txn.execute_batch("SAVEPOINT job").map_err(failed)?;
        let result = f(txn);
        // A lost lease is an answer, not a failure: the attempt it records did happen.
        let keep = matches!(result, Ok(_) | Err(StoreError::LeaseLost(_)));
        let end = if keep {
            "RELEASE job"
        } else {
            "ROLLBACK TO job; RELEASE job"
        };
        txn.execute_batch(end).map_err(failed)?;
        result
    }
    match job {
        Job::Apply(entries) => {
            let queued = guarded(txn, |c| apply(c, &entries));
            Done::Apply(entries, queued.map(|n| n > 0))
        }
        Job::Claim { max, lease, reply } => {
            let token = *next_lease;
            *next_lease += 1;
            Done::Claim(reply, guarded(txn, |c| claim(c, max, lease, token, now)))
        }
        Job::Settle {
            claim,
            attempt,
            settlement,
            reply,
        } => Done::Unit(
            Some(reply),
            guarded(txn, |c| settle(c, &claim, &attempt, &settlement, now)),
        ),
        Job::Release {
            claims,
            due_at,
            reply,
        } => Done::Unit(
            Some(reply),
            guarded(txn, |c| release(c, &claims, due_at.unwrap_or(now), now)),
        ),
        Job::Publish { key, value, reply } => Done::Unit(
            Some(reply),
            guarded(txn, |c| put_meta(c, key, &value, now).map_err(failed)),
        ),
        Job::AckedBeforeFlush { id, at } => Done::Unit(
            None,
            guarded(txn, |c| {
                c.prepare_cached(
                    "INSERT INTO early_acks (event_id, acked_at) VALUES (?1, ?2) ON CONFLICT (event_id) DO NOTHING",
                )
                .and_then(|mut s| s.execute(params![id, at]))
                .and_then(|_| {
                    c.prepare_cached(
                        "INSERT INTO meta (key, value, updated_at) VALUES (?1, '1', ?2)
                         ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + 1, updated_at = excluded.updated_at",
                    )?
                    .execute(params![ACKED_BEFORE_FLUSH_KEY, at])
                })
                .map(drop)
                .map_err(failed)
            }),
        ),
        Job::Flushed { id, at } => Done::Unit(
            None,
            guarded(txn, |c| {
                c.prepare_cached("UPDATE early_acks SET flushed_at = ?2 WHERE event_id = ?1")
                    .and_then(|mut s| s.execute(params![id, at]))
                    .map(drop)
                    .map_err(failed)
            }),
        ),
        Job::Forget { ids, reply } => Done::Count(reply, guarded(txn, |c| forget(c, &ids))),
        Job::Tick => Done::Unit(None, Ok(())),
        Job::Barrier { reply } => Done::Unit(Some(reply), Ok(())),
    }
}

fn put_meta(c: &Connection, key: &str, value: &str, now: UnixMillis) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT INTO meta (key, value, updated_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
    )
    .and_then(|mut s| s.execute(params![key, value, now]))
    .map(drop)
}

/// Indexes logged events and queues their deliveries; an id already present (a replay after a
/// crash) is left as it is. Returns how many were new.
pub(crate) fn apply(conn: &Connection, entries: &[Entry]) -> Result<usize, StoreError> {
    let mut event = conn
        .prepare_cached(
            "INSERT INTO events (id, payload, received_at) VALUES (?1, ?2, ?3) ON CONFLICT (id) DO NOTHING",
        )
        .map_err(failed)?;
    let mut delivery = conn
        .prepare_cached(
            "INSERT INTO deliveries (event_id, status, due_at, updated_at) VALUES (?1, 'queued', ?2, ?2)",
        )
        .map_err(failed)?;
    let mut new = 0;
    for e in entries {
        if event
            .execute(params![e.id, e.payload, e.received_at])
            .map_err(failed)?
            == 1
        {
            delivery
                .execute(params![e.id, e.received_at])
                .map_err(failed)?;
            new += 1;
        }
    }
    Ok(new)
}

/// Removes delivered events and everything about them; any other status is left alone.
fn forget(conn: &Connection, ids: &[String]) -> Result<usize, StoreError> {
    let mut removed = 0;
    for id in ids {
        let gone = conn
            .prepare_cached("DELETE FROM deliveries WHERE event_id = ?1 AND status = 'delivered'")
            .and_then(|mut s| s.execute([id]))
            .map_err(failed)?;
        if gone == 1 {
            for sql in [
                "DELETE FROM attempts WHERE event_id = ?1",
                "DELETE FROM early_acks WHERE event_id = ?1",
                "DELETE FROM events WHERE id = ?1",
            ] {
                conn.prepare_cached(sql)
                    .and_then(|mut s| s.execute([id]))
                    .map_err(failed)?;
            }
            removed += 1;
        }
    }
    Ok(removed)
}

/// Pinned to the partial due-time index: without statistics SQLite prefers the status index and
/// then sorts every waiting row, which grows with the backlog and stalls the writer (and so every
/// ingest request) on each claim. With `INDEXED BY` a lost index is an error, not a slowdown.
pub(crate) const CLAIM_SQL: &str =
    "SELECT d.event_id, e.payload, e.received_at, d.attempts, d.tries, d.next_trigger
     FROM deliveries d INDEXED BY deliveries_due JOIN events e ON e.id = d.event_id
     WHERE d.status IN ('queued', 'leased') AND d.due_at <= ?1
     ORDER BY d.due_at LIMIT ?2";

fn claim(
    conn: &Connection,
    max: usize,
    lease: Duration,
    token: i64,
    now: UnixMillis,
) -> Result<Vec<Claim>, StoreError> {
    let mut select = conn.prepare_cached(CLAIM_SQL).map_err(failed)?;
    let claims = select
        .query_map(params![now, max as i64], |r| {
            let trigger: String = r.get(5)?;
            Ok(Claim {
                event_id: r.get(0)?,
                payload: r.get(1)?,
                received_at: r.get(2)?,
                attempts: r.get(3)?,
                tries: r.get(4)?,
                trigger: Trigger::parse(&trigger).unwrap_or(Trigger::Scheduled),
                lease: token,
            })
        })
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(failed)?;
    let until = now.saturating_add(lease.as_millis() as i64);
    let mut update = conn
        .prepare_cached("UPDATE deliveries SET status = 'leased', due_at = ?2, lease = ?3, updated_at = ?4 WHERE event_id = ?1")
        .map_err(failed)?;
    for c in &claims {
        update
            .execute(params![c.event_id, until, token, now])
            .map_err(failed)?;
    }
    Ok(claims)
}

fn settle(
    conn: &Connection,
    claim: &Claim,
    attempt: &AttemptRecord,
    settlement: &Settlement,
    now: UnixMillis,
) -> Result<(), StoreError> {
    // The attempt happened on the wire whatever became of the lease, so the history records it.
    let n: i64 = conn
        .prepare_cached("SELECT COALESCE(MAX(n), 0) + 1 FROM attempts WHERE event_id = ?1")
        .and_then(|mut s| s.query_row([&claim.event_id], |r| r.get(0)))
        .map_err(failed)?;
    conn.prepare_cached(
        "INSERT INTO attempts (event_id, n, trigger, started_at, duration_ms, outcome, http_status, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .and_then(|mut s| {
        s.execute(params![
            claim.event_id,
            n,
            attempt.trigger.as_str(),
            attempt.started_at,
            attempt.duration_ms as i64,
            attempt.outcome.as_str(),
            attempt.http_status,
            attempt.detail,
        ])
    })
    .map_err(failed)?;

    let held: Option<(String, Option<i64>)> = conn
        .prepare_cached("SELECT status, lease FROM deliveries WHERE event_id = ?1")
        .and_then(|mut s| {
            s.query_row([&claim.event_id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(failed)?;
    if held != Some(("leased".to_owned(), Some(claim.lease))) {
        return Err(StoreError::LeaseLost(claim.event_id.clone()));
    }
    let counted = i64::from(attempt.outcome.counts_toward_max_attempts());
    match settlement {
        Settlement::Delivered => conn
            .prepare_cached(
                "UPDATE deliveries SET status = 'delivered', lease = NULL, attempts = attempts + ?2,
                 tries = tries + 1, next_trigger = 'scheduled', last_error = NULL, updated_at = ?3, delivered_at = ?3
                 WHERE event_id = ?1",
            )
            .and_then(|mut s| s.execute(params![claim.event_id, counted, now])),
        Settlement::Retry { at, counted } => conn
            .prepare_cached(
                "UPDATE deliveries SET status = 'queued', lease = NULL, due_at = ?2, attempts = attempts + ?3,
                 tries = tries + 1, next_trigger = 'scheduled', last_error = ?4, updated_at = ?5
                 WHERE event_id = ?1",
            )
            .and_then(|mut s| s.execute(params![claim.event_id, at, i64::from(*counted), attempt.detail, now])),
        Settlement::Dead { reason } => conn
            .prepare_cached(
                "UPDATE deliveries SET status = 'dead', lease = NULL, attempts = attempts + ?2,
                 tries = tries + 1, next_trigger = 'scheduled', last_error = ?3, updated_at = ?4
                 WHERE event_id = ?1",
            )
            .and_then(|mut s| s.execute(params![claim.event_id, counted, reason, now]))
            .and_then(|_| {
                conn.prepare_cached(
                    "INSERT INTO dead_letters (event_id, reason, attempts, last_response, dead_at)
                     SELECT event_id, ?2, attempts, ?3, ?4 FROM deliveries WHERE event_id = ?1
                     ON CONFLICT (event_id) DO UPDATE SET reason = excluded.reason, attempts = excluded.attempts,
                       last_response = excluded.last_response, dead_at = excluded.dead_at",
                )?
                .execute(params![claim.event_id, reason, attempt.detail, now])
            }),
    }
    .map(drop)
    .map_err(failed)
}

fn release(
    conn: &Connection,
    claims: &[Claim],
    due_at: UnixMillis,
    now: UnixMillis,
) -> Result<(), StoreError> {
    let mut update = conn
        .prepare_cached(
            "UPDATE deliveries SET status = 'queued', lease = NULL, due_at = ?3, updated_at = ?4
             WHERE event_id = ?1 AND status = 'leased' AND lease = ?2",
        )
        .map_err(failed)?;
    for c in claims {
        update
            .execute(params![c.event_id, c.lease, due_at, now])
            .map_err(failed)?;
    }
    Ok(())
}

/// Makes every lease due now. Only for the process that just took the data directory's lock.
pub(crate) fn recover_leases(conn: &Connection, now: UnixMillis) -> rusqlite::Result<usize> {
    conn.execute(
        "UPDATE deliveries SET status = 'queued', lease = NULL, due_at = MIN(due_at, ?1), updated_at = ?1
         WHERE status = 'leased'",
        [now],
    )
}
