//! Reading the store from any process, including while `relay up` writes to it: delivery state,
//! attempt history, dead letters and counts.

use std::path::{Path, PathBuf};

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use relay_core::hold::Pause;
use relay_core::ops::{
    ArchiveRef, ArchivedId, AttemptView, DeadLetterGroup, DeadLetterView, DeliveryState,
    DispatcherReport, DlqFilter, EarlyAck, EventPage, EventQuery, EventSummary, EventTrace,
    Operations, PurgeReport, RedriveReport, StatusReport,
};
use relay_core::{DeliveryStatus, StoreError, UnixMillis, now_millis};
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use serde::Serialize;

use crate::archive::{self, ArchivedEvent};
use crate::writer::ACKED_BEFORE_FLUSH_KEY;
use crate::{APPLICATION_ID, DB_FILE, DISPATCHER_KEY, OpenError, open_connection};

/// The `meta` row of an operator's pause (`relay pause`), which `relay up` reads.
const PAUSE_KEY: &str = "pause";

/// A connection for operators and tools, usable while `relay up` runs: reads see a consistent
/// snapshot and never block the writer; the few writes (redrive) are short transactions that
/// wait their turn for SQLite's write lock.
#[derive(Debug)]
pub struct Reader {
    conn: Mutex<Connection>,
    dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliveryView {
    pub event_id: String,
    pub payload: String,
    pub received_at: UnixMillis,
    pub status: String,
    pub attempts: u32,
    pub tries: u32,
    pub due_at: UnixMillis,
    pub last_error: Option<String>,
    pub delivered_at: Option<UnixMillis>,
    pub next_trigger: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StatusCounts {
    pub queued: u64,
    pub leased: u64,
    pub delivered: u64,
    pub dead: u64,
}

impl StatusCounts {
    pub fn total(&self) -> u64 {
        self.queued + self.leased + self.delivered + self.dead
    }
}

impl Reader {
    /// Opens an existing store; never creates one.
    pub fn open(dir: &Path) -> Result<Self, OpenError> {
        if !dir.is_dir() {
            return Err(OpenError::Missing(dir.into()));
        }
        let path = dir.join(DB_FILE);
        if !path.is_file() {
            return Err(OpenError::NotAStore(dir.into()));
        }
        let conn = open_connection(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        let app_id: i64 = conn
            .pragma_query_value(None, "application_id", |r| r.get(0))
            .map_err(|source| OpenError::Sqlite {
                path: path.clone(),
                source,
            })?;
        if app_id != APPLICATION_ID {
            return Err(OpenError::Foreign {
                path,
                why: "it belongs to another application".into(),
            });
        }
        Ok(Reader {
            conn: Mutex::new(conn),
            dir: dir.into(),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn status_counts(&self) -> rusqlite::Result<StatusCounts> {
        let conn = self.conn();
        let mut counts = StatusCounts::default();
        let mut stmt = conn.prepare("SELECT status, count(*) FROM deliveries GROUP BY status")?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
        })?;
        for row in rows {
            let (status, n) = row?;
            match DeliveryStatus::parse(&status) {
                Some(DeliveryStatus::Queued) => counts.queued = n,
                Some(DeliveryStatus::Leased) => counts.leased = n,
                Some(DeliveryStatus::Delivered) => counts.delivered = n,
                Some(DeliveryStatus::Dead) => counts.dead = n,
                None => {}
            }
        }
        Ok(counts)
    }

    pub fn delivery(&self, id: &str) -> rusqlite::Result<Option<DeliveryView>> {
        self.conn()
            .query_row(
                "SELECT d.event_id, e.payload, e.received_at, d.status, d.attempts, d.tries, d.due_at,
                        d.last_error, d.delivered_at, d.next_trigger
                 FROM deliveries d JOIN events e ON e.id = d.event_id WHERE d.event_id = ?1",
                [id],
                |r| {
                    Ok(DeliveryView {
                        event_id: r.get(0)?,
                        payload: r.get(1)?,
                        received_at: r.get(2)?,
                        status: r.get(3)?,
                        attempts: r.get(4)?,
                        tries: r.get(5)?,
                        due_at: r.get(6)?,
                        last_error: r.get(7)?,
                        delivered_at: r.get(8)?,
                        next_trigger: r.get(9)?,
                    })
                },
            )
            .optional()
    }

    pub fn attempts(&self, id: &str) -> rusqlite::Result<Vec<AttemptView>> {
        attempts(&self.conn(), id)
    }

    pub fn dead_letter(&self, id: &str) -> rusqlite::Result<Option<DeadLetterView>> {
        dead_letter(&self.conn(), id)
    }

    /// An event the archive holds (retention or purge), with the file it is in.
    pub fn archived(&self, id: &str) -> std::io::Result<Option<(ArchivedEvent, PathBuf)>> {
        archive::find(&self.dir, id)
    }

    /// Every stored event id, in arrival order (tests and verification tools).
    pub fn event_ids(&self) -> rusqlite::Result<Vec<String>> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT id FROM events ORDER BY received_at, rowid")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        rows.collect()
    }

    fn trace_now(&self, id: &str) -> Result<Option<EventTrace>, StoreError> {
        let Some(d) = self.delivery(id).map_err(store_error)? else {
            return match self.archived_trace(id)? {
                Some(trace) => Ok(Some(trace)),
                None => self.journaled_trace(id),
            };
        };
        let status = DeliveryStatus::parse(&d.status).unwrap_or(DeliveryStatus::Queued);
        let waiting = matches!(status, DeliveryStatus::Queued | DeliveryStatus::Leased);
        let conn = self.conn();
        let early = conn
            .query_row(
                "SELECT acked_at, flushed_at FROM early_acks WHERE event_id = ?1",
                [id],
                |r| {
                    Ok(EarlyAck {
                        acked_at: r.get(0)?,
                        flushed_at: r.get(1)?,
                    })
                },
            )
            .optional()
            .map_err(store_error)?;
        Ok(Some(EventTrace {
            payload: serde_json::from_str(&d.payload)
                .unwrap_or(serde_json::Value::String(d.payload.clone())),
            received_at: d.received_at,
            delivery: DeliveryState {
                status,
                attempts: d.attempts,
                tries: d.tries,
                due_at: waiting.then_some(d.due_at),
                delivered_at: d.delivered_at,
                last_error: d.last_error,
                next_trigger: d.next_trigger,
            },
            attempts: attempts(&conn, id).map_err(store_error)?,
            dead_letter: dead_letter(&conn, id).map_err(store_error)?,
            trace_ids: Vec::new(),
            segments: Vec::new(),
            acked_before_flush: early,
            paused: None,
            archived: None,
            event_id: d.event_id,
        }))
    }

    /// An event accepted a moment ago and not indexed yet: queued, as far as anyone can tell.
    fn journaled_trace(&self, id: &str) -> Result<Option<EventTrace>, StoreError> {
        let entry = crate::journal::find(&self.dir, id)
            .map_err(|e| StoreError::Failed(format!("cannot read the journal: {e}")))?;
        Ok(entry.map(|e| EventTrace {
            payload: serde_json::from_str(&e.payload)
                .unwrap_or(serde_json::Value::String(e.payload)),
            received_at: e.received_at,
            delivery: DeliveryState {
                status: DeliveryStatus::Queued,
                attempts: 0,
                tries: 0,
                due_at: Some(e.received_at),
                delivered_at: None,
                last_error: None,
                next_trigger: "scheduled".into(),
            },
            event_id: e.id,
            attempts: Vec::new(),
            dead_letter: None,
            trace_ids: Vec::new(),
            segments: Vec::new(),
            acked_before_flush: None,
            paused: None,
            archived: None,
        }))
    }

    fn archived_trace(&self, id: &str) -> Result<Option<EventTrace>, StoreError> {
        let found = self
            .archived(id)
            .map_err(|e| StoreError::Failed(format!("cannot read the archive: {e}")))?;
        Ok(found.map(|(a, path)| {
            let status = DeliveryStatus::parse(&a.status).unwrap_or(DeliveryStatus::Delivered);
            EventTrace {
                delivery: DeliveryState {
                    status,
                    attempts: a.dead_letter.as_ref().map_or_else(
                        || {
                            a.attempts
                                .iter()
                                .filter(|x| x.outcome.counts_toward_max_attempts())
                                .count() as u32
                        },
                        |d| d.attempts,
                    ),
                    tries: a.attempts.len() as u32,
                    due_at: None,
                    delivered_at: a.delivered_at,
                    last_error: a.dead_letter.as_ref().map(|d| d.reason.clone()),
                    next_trigger: "scheduled".into(),
                },
                event_id: a.id,
                payload: a.payload,
                received_at: a.received_at,
                attempts: a.attempts,
                dead_letter: a.dead_letter,
                trace_ids: Vec::new(),
                segments: Vec::new(),
                acked_before_flush: a.acked_before_flush,
                paused: None,
                archived: Some(ArchiveRef {
                    location: path.display().to_string(),
                    why: a.why,
                    archived_at: a.archived_at,
                }),
            }
        }))
    }

    fn status_now(&self) -> rusqlite::Result<StatusReport> {
        let now = now_millis();
        // Before the connection is taken below: its lock is not reentrant.
        let pause = self.pause_now()?;
        let counts = self.status_counts()?;
        let conn = self.conn();
        let minute_ago = now - 60_000;
        let count = |sql: &str| {
            conn.query_row(sql, [minute_ago], |r| r.get::<_, i64>(0))
                .map(|n| n as u64)
        };
        let delivered_last_minute = count(
            "SELECT count(*) FROM deliveries WHERE status = 'delivered' AND updated_at >= ?1",
        )?;
        let retried_last_minute = count(
            "SELECT count(*) FROM deliveries WHERE status = 'queued' AND updated_at >= ?1 AND tries > 0",
        )?;
        let dead_lettered_last_minute =
            count("SELECT count(*) FROM dead_letters WHERE dead_at >= ?1")?;
        let oldest_waiting_received_at = conn.query_row(
            "SELECT MIN(e.received_at) FROM deliveries d JOIN events e ON e.id = d.event_id
             WHERE d.status IN ('queued', 'leased')",
            [],
            |r| r.get::<_, Option<i64>>(0),
        )?;
        let meta = |key: &str| {
            conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| {
                r.get::<_, String>(0)
            })
            .optional()
        };
        let dispatcher = meta(DISPATCHER_KEY)?
            .and_then(|json| serde_json::from_str::<DispatcherReport>(&json).ok());
        let acked_before_flush = meta(ACKED_BEFORE_FLUSH_KEY)?
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        Ok(StatusReport {
            now,
            queued: counts.queued,
            in_flight: counts.leased,
            delivered: counts.delivered,
            dead: counts.dead,
            oldest_waiting_received_at,
            delivered_last_minute,
            retried_last_minute,
            dead_lettered_last_minute,
            acked_before_flush,
            dispatcher,
            store_failing: crate::health::read(&self.dir),
            pause,
        })
    }

    fn dead_letters_now(&self, filter: &DlqFilter) -> rusqlite::Result<Vec<DeadLetterView>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT event_id, reason, attempts, last_response, dead_at FROM dead_letters
             WHERE (?1 IS NULL OR dead_at >= ?1) AND (?2 IS NULL OR instr(lower(reason), lower(?2)) > 0)
               AND (?4 IS NULL OR dead_at < ?4)
               AND (?5 IS NULL OR event_id IN (SELECT value FROM json_each(?5)))
             ORDER BY dead_at DESC, event_id LIMIT ?3",
        )?;
        let limit = filter.limit.map_or(-1, |l| l as i64);
        let ids = filter
            .ids
            .as_ref()
            .map(|ids| serde_json::to_string(ids).unwrap_or_default());
        let rows = stmt.query_map(
            params![filter.since, filter.reason, limit, filter.before, ids],
            dead_letter_row,
        )?;
        rows.collect()
    }

    fn redrive_now(&self, ids: &[String], spread: Duration) -> rusqlite::Result<RedriveReport> {
        let mut conn = self.conn();
        let txn = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now = now_millis();
        let step = if ids.len() > 1 {
            spread.as_millis() as f64 / (ids.len() - 1) as f64
        } else {
            0.0
        };
        let mut report = RedriveReport::default();
        {
            // A fresh attempt budget, and `redrive` as the trigger of the next attempt, so the
            // trace shows who sent it again.
            let mut requeue = txn.prepare(
                "UPDATE deliveries SET status = 'queued', due_at = ?2, attempts = 0, lease = NULL,
                 next_trigger = 'redrive', updated_at = ?3 WHERE event_id = ?1 AND status = 'dead'",
            )?;
            let mut forget = txn.prepare("DELETE FROM dead_letters WHERE event_id = ?1")?;
            for id in ids {
                let due = now + (step * report.redriven.len() as f64) as i64;
                if requeue.execute(params![id, due, now])? == 1 {
                    forget.execute([id])?;
                    report.redriven.push(id.clone());
                } else {
                    report.skipped.push(id.clone());
                }
            }
        }
        txn.commit()?;
        Ok(report)
    }

    /// Archives, then deletes, the matching dead letters with everything about them.
    fn purge_now(&self, filter: &DlqFilter, dry_run: bool) -> Result<PurgeReport, StoreError> {
        let ids: Vec<String> = self
            .dead_letters_now(filter)
            .map_err(store_error)?
            .into_iter()
            .map(|d| d.event_id)
            .collect();
        if dry_run || ids.is_empty() {
            return Ok(PurgeReport {
                purged: ids,
                archive: None,
            });
        }
        let now = now_millis();
        let events = archive::load(&self.conn(), &ids, "purged", now).map_err(store_error)?;
        let disk = crate::disk::Disk::new(crate::disk::Part::Archive, None);
        let file = archive::write(&disk, &self.dir, "purged", &events, now)
            .map_err(|e| StoreError::Failed(format!("cannot write the archive: {e}")))?;
        let mut conn = self.conn();
        let txn = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(store_error)?;
        let mut purged = Vec::with_capacity(ids.len());
        for id in ids {
            // Only if it is still dead: a redrive may have come first.
            let gone = txn
                .execute(
                    "DELETE FROM deliveries WHERE event_id = ?1 AND status = 'dead'",
                    [&id],
                )
                .map_err(store_error)?;
            if gone == 1 {
                for sql in [
                    "DELETE FROM dead_letters WHERE event_id = ?1",
                    "DELETE FROM attempts WHERE event_id = ?1",
                    "DELETE FROM early_acks WHERE event_id = ?1",
                    "DELETE FROM events WHERE id = ?1",
                ] {
                    txn.execute(sql, [&id]).map_err(store_error)?;
                }
                purged.push(id);
            }
        }
        txn.commit().map_err(store_error)?;
        Ok(PurgeReport {
            purged,
            archive: Some(file.display().to_string()),
        })
    }
}

pub(crate) fn attempts(conn: &Connection, id: &str) -> rusqlite::Result<Vec<AttemptView>> {
    let mut stmt = conn.prepare_cached(
        "SELECT n, trigger, started_at, duration_ms, outcome, http_status, detail
         FROM attempts WHERE event_id = ?1 ORDER BY n",
    )?;
    let rows = stmt.query_map([id], |r| {
        Ok(AttemptView {
            n: r.get(0)?,
            trigger: r.get(1)?,
            started_at: r.get(2)?,
            duration_ms: r.get::<_, i64>(3)? as u64,
            outcome: {
                let outcome: String = r.get(4)?;
                relay_core::AttemptOutcome::parse(&outcome).ok_or_else(|| {
                    rusqlite::Error::FromSqlConversionFailure(
                        4,
                        rusqlite::types::Type::Text,
                        format!("unknown attempt outcome {outcome:?}").into(),
                    )
                })?
            },
            http_status: r.get(5)?,
            detail: r.get(6)?,
        })
    })?;
    rows.collect()
}

pub(crate) fn dead_letter(conn: &Connection, id: &str) -> rusqlite::Result<Option<DeadLetterView>> {
    conn.query_row(
        "SELECT event_id, reason, attempts, last_response, dead_at FROM dead_letters WHERE event_id = ?1",
        [id],
        dead_letter_row,
    )
    .optional()
}

fn dead_letter_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeadLetterView> {
    Ok(DeadLetterView {
        event_id: r.get(0)?,
        reason: r.get(1)?,
        attempts: r.get(2)?,
        last_response: r.get(3)?,
        dead_at: r.get(4)?,
    })
}

/// Most events a page of [`Reader::events_now`] reads when a payload field filters them: a
/// filter that matches few stops here and says where to go on.
const SCAN_PER_PAGE: usize = 20_000;
/// Events read at once while a field filters them.
const SCAN_BATCH: usize = 1_000;

/// `received_at:id`, where a page of events stopped.
fn event_cursor(received_at: UnixMillis, id: &str) -> String {
    format!("{received_at}:{id}")
}

fn parse_event_cursor(cursor: &str) -> Result<(UnixMillis, String), StoreError> {
    cursor
        .split_once(':')
        .and_then(|(at, id)| Some((at.parse().ok()?, id.to_owned())))
        .ok_or_else(|| StoreError::Invalid(format!("{cursor:?} is not a cursor this relay gave")))
}

fn store_error(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            StoreError::Unavailable(e.to_string())
        }
        _ => StoreError::Failed(e.to_string()),
    }
}

impl Reader {
    /// A page of events, newest first. Status, time and id prefix filter in SQLite; a payload
    /// field is matched here, over at most [`SCAN_PER_PAGE`] events a page.
    fn events_now(&self, q: &EventQuery) -> Result<EventPage, StoreError> {
        let (mut at, mut id) = match &q.cursor {
            Some(cursor) => parse_event_cursor(cursor)?,
            None => (q.until.unwrap_or(i64::MAX), String::new()),
        };
        if let Some(until) = q.until {
            // A cursor from before the range narrowed never reaches past it.
            if at > until {
                (at, id) = (until, String::new());
            }
        }
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT e.id, e.payload, e.received_at, d.status, d.tries, d.delivered_at, d.last_error
                 FROM events e JOIN deliveries d ON d.event_id = e.id
                 WHERE (e.received_at < ?1 OR (e.received_at = ?1 AND e.id < ?2))
                   AND (?3 IS NULL OR e.received_at >= ?3)
                   AND (?4 IS NULL OR d.status = ?4)
                   AND (?5 IS NULL OR substr(e.id, 1, length(?5)) = ?5)
                 ORDER BY e.received_at DESC, e.id DESC LIMIT ?6",
            )
            .map_err(store_error)?;
        let limit = q.limit.max(1);
        let batch = if q.field.is_some() { SCAN_BATCH } else { limit };
        let mut page = EventPage::default();
        loop {
            let rows = stmt
                .query_map(
                    params![
                        at,
                        id,
                        q.since,
                        q.status.map(DeliveryStatus::as_str),
                        q.id_prefix,
                        batch as i64
                    ],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, i64>(2)?,
                            r.get::<_, String>(3)?,
                            r.get::<_, u32>(4)?,
                            r.get::<_, Option<i64>>(5)?,
                            r.get::<_, Option<String>>(6)?,
                        ))
                    },
                )
                .map_err(store_error)?;
            let mut read = 0;
            for row in rows {
                let (event_id, payload, received_at, status, tries, delivered_at, last_error) =
                    row.map_err(store_error)?;
                read += 1;
                page.scanned += 1;
                (at, id) = (received_at, event_id.clone());
                let payload: serde_json::Value = serde_json::from_str(&payload).unwrap_or_default();
                if q.field.as_ref().is_some_and(|f| !f.matches(&payload)) {
                    continue;
                }
                page.events.push(EventSummary {
                    event_id,
                    name: payload["name"].as_str().map(str::to_owned),
                    received_at,
                    status: DeliveryStatus::parse(&status).unwrap_or(DeliveryStatus::Queued),
                    tries,
                    delivered_at,
                    last_error,
                });
                if page.events.len() == limit {
                    break;
                }
            }
            let more = read == batch || page.events.len() == limit;
            if !more {
                return Ok(page);
            }
            if page.events.len() == limit || page.scanned as usize >= SCAN_PER_PAGE {
                page.next = Some(event_cursor(at, &id));
                return Ok(page);
            }
        }
    }

    fn dead_letter_groups_now(&self) -> rusqlite::Result<Vec<DeadLetterGroup>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT reason, count(*), min(dead_at), max(dead_at) FROM dead_letters
             GROUP BY reason ORDER BY count(*) DESC, reason",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(DeadLetterGroup {
                reason: r.get(0)?,
                count: r.get::<_, i64>(1)? as u64,
                first_at: r.get(2)?,
                last_at: r.get(3)?,
            })
        })?;
        rows.collect()
    }

    /// The pause that stands (`relay pause`), if any: `relay up` looks every second.
    pub fn pause_now(&self) -> rusqlite::Result<Option<Pause>> {
        let json: Option<String> = self
            .conn()
            .query_row("SELECT value FROM meta WHERE key = ?1", [PAUSE_KEY], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
    }

    /// Writes the pause unless one stands; the one that stands, if any.
    fn pause_with(&self, pause: &Pause) -> rusqlite::Result<Option<Pause>> {
        let value = serde_json::to_string(pause).unwrap_or_default();
        let conn = self.conn();
        let written = conn.execute(
            "INSERT INTO meta (key, value, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (key) DO NOTHING",
            rusqlite::params![PAUSE_KEY, value, now_millis()],
        )?;
        drop(conn);
        if written == 1 {
            Ok(None)
        } else {
            self.pause_now()
        }
    }

    /// Lifts the pause in one statement; the one lifted, if any.
    fn resume_now(&self) -> rusqlite::Result<Option<Pause>> {
        let json: Option<String> = self
            .conn()
            .query_row(
                "DELETE FROM meta WHERE key = ?1 RETURNING value",
                [PAUSE_KEY],
                |r| r.get(0),
            )
            .optional()?;
        Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
    }
}

/// Blocking SQLite calls inside `async fn`s: fine for the CLI, which does one thing at a time.
impl Operations for Reader {
    async fn trace(&self, id: &str) -> Result<Option<EventTrace>, StoreError> {
        let mut trace = self.trace_now(id)?;
        if let Some(t) = trace.as_mut()
            && matches!(
                t.delivery.status,
                DeliveryStatus::Queued | DeliveryStatus::Leased
            )
        {
            t.paused = self.pause_now().map_err(store_error)?;
        }
        Ok(trace)
    }

    async fn pause(&self, pause: Pause) -> Result<Option<Pause>, StoreError> {
        self.pause_with(&pause).map_err(store_error)
    }

    async fn resume(&self) -> Result<Option<Pause>, StoreError> {
        self.resume_now().map_err(store_error)
    }

    async fn status(&self) -> Result<StatusReport, StoreError> {
        self.status_now().map_err(store_error)
    }

    async fn dead_letters(&self, filter: &DlqFilter) -> Result<Vec<DeadLetterView>, StoreError> {
        self.dead_letters_now(filter).map_err(store_error)
    }

    async fn redrive(&self, ids: &[String], spread: Duration) -> Result<RedriveReport, StoreError> {
        let mut report = self.redrive_now(ids, spread).map_err(store_error)?;
        // A purged dead letter lives on in the archive: say so, rather than "unknown".
        let mut skipped = Vec::new();
        for id in std::mem::take(&mut report.skipped) {
            match self.archived(&id) {
                Ok(Some((_, path))) => report.archived.push(ArchivedId {
                    id,
                    location: path.display().to_string(),
                }),
                _ => skipped.push(id),
            }
        }
        report.skipped = skipped;
        Ok(report)
    }

    async fn purge(&self, filter: &DlqFilter, dry_run: bool) -> Result<PurgeReport, StoreError> {
        self.purge_now(filter, dry_run)
    }

    async fn events(&self, query: &EventQuery) -> Result<EventPage, StoreError> {
        self.events_now(query)
    }

    async fn dead_letter_groups(&self) -> Result<Vec<DeadLetterGroup>, StoreError> {
        self.dead_letter_groups_now().map_err(store_error)
    }
}
