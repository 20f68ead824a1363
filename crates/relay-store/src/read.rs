//! Reading the store from any process, including while `relay up` writes to it: delivery state,
//! attempt history, dead letters and counts.

use std::path::{Path, PathBuf};

use relay_core::{DeliveryStatus, UnixMillis};
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use serde::Serialize;

use crate::{APPLICATION_ID, DB_FILE, OpenError, open_connection};

/// A connection for reading (and, later, operator writes such as redrive) that does not need
/// the writer's lock.
#[derive(Debug)]
pub struct Reader {
    conn: Connection,
    path: PathBuf,
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
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttemptView {
    pub n: u32,
    pub trigger: String,
    pub started_at: UnixMillis,
    pub duration_ms: u64,
    pub outcome: String,
    pub http_status: Option<u16>,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetterView {
    pub event_id: String,
    pub reason: String,
    pub attempts: u32,
    pub last_response: Option<String>,
    pub dead_at: UnixMillis,
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
        Ok(Reader { conn, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn status_counts(&self) -> rusqlite::Result<StatusCounts> {
        let mut counts = StatusCounts::default();
        let mut stmt = self
            .conn
            .prepare("SELECT status, count(*) FROM deliveries GROUP BY status")?;
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
        self.conn
            .query_row(
                "SELECT d.event_id, e.payload, e.received_at, d.status, d.attempts, d.tries, d.due_at,
                        d.last_error, d.delivered_at
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
                    })
                },
            )
            .optional()
    }

    pub fn attempts(&self, id: &str) -> rusqlite::Result<Vec<AttemptView>> {
        let mut stmt = self.conn.prepare(
            "SELECT n, trigger, started_at, duration_ms, outcome, http_status, detail
             FROM attempts WHERE event_id = ?1 ORDER BY n",
        )?;
        let rows = stmt.query_map([id], |r| {
            Ok(AttemptView {
                n: r.get(0)?,
                trigger: r.get(1)?,
                started_at: r.get(2)?,
                duration_ms: r.get::<_, i64>(3)? as u64,
                outcome: r.get(4)?,
                http_status: r.get(5)?,
                detail: r.get(6)?,
            })
        })?;
        rows.collect()
    }

    pub fn dead_letter(&self, id: &str) -> rusqlite::Result<Option<DeadLetterView>> {
        self.conn
            .query_row(
                "SELECT event_id, reason, attempts, last_response, dead_at FROM dead_letters WHERE event_id = ?1",
                [id],
                |r| {
                    Ok(DeadLetterView {
                        event_id: r.get(0)?,
                        reason: r.get(1)?,
                        attempts: r.get(2)?,
                        last_response: r.get(3)?,
                        dead_at: r.get(4)?,
                    })
                },
            )
            .optional()
    }

    /// Every stored event id, in arrival order (tests and verification tools).
    pub fn event_ids(&self) -> rusqlite::Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare("SELECT id FROM events ORDER BY received_at, rowid")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        rows.collect()
    }
}
