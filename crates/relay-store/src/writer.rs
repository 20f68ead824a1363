//! The writer thread: the only code that writes the store. It takes every job queued while the
//! previous commit was syncing, runs them in one transaction (each in its own savepoint, so one
//! failing job cannot spoil the others) and answers them all after the commit.

use std::sync::Arc;
use std::time::Duration;

use relay_core::ports::Clock;
use relay_core::{
    AcceptOutcome, AttemptRecord, Claim, Event, Settlement, StoreError, Trigger, UnixMillis,
};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use serde_json::{Map, Value};
use tokio::sync::{Notify, mpsc, oneshot};

/// Upper bound on jobs in one transaction, so one commit never holds answers back for long.
const MAX_BATCH: usize = 4096;

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

#[derive(Debug)]
pub(crate) enum Job {
    Accept {
        event: Event,
        /// `event.payload` serialized by the caller, off this thread.
        payload: String,
        reply: Reply<AcceptOutcome>,
    },
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
    Release {
        claims: Vec<Claim>,
        reply: Reply<()>,
    },
    Publish {
        key: &'static str,
        value: String,
        reply: Reply<()>,
    },
}

/// A job's answer, held until the batch is committed.
enum Done {
    Accept(Reply<AcceptOutcome>, Result<AcceptOutcome, StoreError>),
    Claim(Reply<Vec<Claim>>, Result<Vec<Claim>, StoreError>),
    Unit(Reply<()>, Result<(), StoreError>),
}

impl Done {
    fn send(self, commit: Result<(), &StoreError>) {
        // A dropped receiver means the caller gave up (timeout); the work is committed anyway.
        match (self, commit) {
            (Done::Accept(tx, r), Ok(())) => drop(tx.send(r)),
            (Done::Claim(tx, r), Ok(())) => drop(tx.send(r)),
            (Done::Unit(tx, r), Ok(())) => drop(tx.send(r)),
            (Done::Accept(tx, _), Err(e)) => drop(tx.send(Err(e.clone()))),
            (Done::Claim(tx, _), Err(e)) => drop(tx.send(Err(e.clone()))),
            (Done::Unit(tx, _), Err(e)) => drop(tx.send(Err(e.clone()))),
        }
    }

    fn made_work(&self) -> bool {
        matches!(self, Done::Accept(_, Ok(AcceptOutcome::Accepted)))
    }
}

pub(crate) fn spawn(
    conn: Connection,
    rx: mpsc::Receiver<Job>,
    work: Arc<Notify>,
    clock: Arc<dyn Clock>,
) -> std::io::Result<()> {
    let next_lease: i64 = conn
        .query_row(
            "SELECT COALESCE(MAX(lease), 0) + 1 FROM deliveries",
            [],
            |r| r.get(0),
        )
        .unwrap_or(1);
    let writer = Writer {
        conn,
        clock,
        next_lease,
    };
    std::thread::Builder::new()
        .name("relay-store-writer".into())
        .spawn(move || writer.run(rx, &work))
        .map(drop)
}

struct Writer {
    conn: Connection,
    clock: Arc<dyn Clock>,
    next_lease: i64,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Job>, work: &Notify) {
        let mut batch = Vec::with_capacity(64);
        while let Some(first) = rx.blocking_recv() {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            if self.commit_batch(&mut batch) {
                work.notify_one();
            }
        }
        tracing::debug!("store writer stopped: every handle dropped");
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
                let err = unavailable(e);
                tracing::error!(error = %err, jobs = size, "store transaction could not start");
                for job in batch.drain(..) {
                    fail(job, &err);
                }
                return false;
            }
        };
        let mut done = Vec::with_capacity(size);
        for job in batch.drain(..) {
            done.push(run_in_savepoint(&txn, job, now, &mut next_lease));
        }
        let work = done.iter().any(Done::made_work);
        match txn.commit() {
            Ok(()) => {
                self.next_lease = next_lease;
                for d in done {
                    d.send(Ok(()));
                }
                work
            }
            Err(e) => {
                let err = unavailable(e);
                tracing::error!(error = %err, jobs = size, "store commit failed");
                for d in done {
                    d.send(Err(&err));
                }
                false
            }
        }
    }
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
        Job::Accept { reply, .. } => drop(reply.send(Err(err))),
        Job::Claim { reply, .. } => drop(reply.send(Err(err))),
        Job::Settle { reply, .. } | Job::Release { reply, .. } | Job::Publish { reply, .. } => {
            drop(reply.send(Err(err)))
        }
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
        Job::Accept {
            event,
            payload,
            reply,
        } => Done::Accept(reply, guarded(txn, |c| accept(c, &event, &payload, now))),
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
            reply,
            guarded(txn, |c| settle(c, &claim, &attempt, &settlement, now)),
        ),
        Job::Release { claims, reply } => {
            Done::Unit(reply, guarded(txn, |c| release(c, &claims, now)))
        }
        Job::Publish { key, value, reply } => Done::Unit(
            reply,
            guarded(txn, |c| {
                c.prepare_cached(
                    "INSERT INTO meta (key, value, updated_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                )
                .and_then(|mut s| s.execute(params![key, value, now]))
                .map(drop)
                .map_err(failed)
            }),
        ),
    }
}

fn accept(
    conn: &Connection,
    event: &Event,
    payload: &str,
    now: UnixMillis,
) -> Result<AcceptOutcome, StoreError> {
    let inserted = conn
        .prepare_cached("INSERT INTO events (id, payload, received_at) VALUES (?1, ?2, ?3) ON CONFLICT (id) DO NOTHING")
        .and_then(|mut s| s.execute(params![event.id, payload, now]))
        .map_err(failed)?;
    if inserted == 1 {
        conn.prepare_cached(
            "INSERT INTO deliveries (event_id, status, due_at, updated_at) VALUES (?1, 'queued', ?2, ?2)",
        )
        .and_then(|mut s| s.execute(params![event.id, now]))
        .map_err(failed)?;
        return Ok(AcceptOutcome::Accepted);
    }
    let stored: String = conn
        .prepare_cached("SELECT payload FROM events WHERE id = ?1")
        .and_then(|mut s| s.query_row([&event.id], |r| r.get(0)))
        .map_err(failed)?;
    // Same payload means the same JSON value: key order and whitespace do not matter.
    let same =
        serde_json::from_str::<Map<String, Value>>(&stored).is_ok_and(|m| m == event.payload);
    Ok(if same {
        AcceptOutcome::Duplicate
    } else {
        AcceptOutcome::Conflict
    })
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
            attempt.outcome,
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
    let counted = i64::from(attempt.outcome != "rate_limited");
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

fn release(conn: &Connection, claims: &[Claim], now: UnixMillis) -> Result<(), StoreError> {
    let mut update = conn
        .prepare_cached(
            "UPDATE deliveries SET status = 'queued', lease = NULL, due_at = ?3, updated_at = ?3
             WHERE event_id = ?1 AND status = 'leased' AND lease = ?2",
        )
        .map_err(failed)?;
    for c in claims {
        update
            .execute(params![c.event_id, c.lease, now])
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
