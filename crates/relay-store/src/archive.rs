//! Retention: delivered events older than the retention leave the live store for compressed
//! JSON-lines files under `DATA_DIR/archive/<date>/`, so the store stays the same size under
//! constant load. An index (`archive/index.db`, id → file) lets `relay trace` find an archived
//! event again. Dead letters stay until they are redriven or purged; purged ones are archived
//! the same way, so nothing leaves without a copy.
//!
//! Order matters: an archive file is written, flushed and indexed before the live rows go, so a
//! crash in between leaves an event in both places, never in neither.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use flate2::Compression;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use relay_core::UnixMillis;
use relay_core::ops::{AttemptView, DeadLetterView, EarlyAck};
use relay_core::ports::Clock;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use crate::disk::Disk;
use crate::writer::Job;
use crate::{OpenError, open_connection};

/// The archive's directory inside the data directory.
pub const ARCHIVE_DIR: &str = "archive";
const INDEX_FILE: &str = "index.db";
/// Live rows removed per writer job, so no one transaction is long.
const CHUNK: usize = 1000;
/// Events per archive file at most; a larger backlog takes several runs.
const PER_FILE: usize = 50_000;

/// One archived event: a line of an archive file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArchivedEvent {
    pub id: String,
    /// The event as received.
    pub payload: serde_json::Value,
    pub received_at: UnixMillis,
    /// `delivered`, or `dead` for a purged dead letter.
    pub status: String,
    pub delivered_at: Option<UnixMillis>,
    pub attempts: Vec<AttemptView>,
    pub dead_letter: Option<DeadLetterView>,
    pub acked_before_flush: Option<EarlyAck>,
    pub archived_at: UnixMillis,
    /// `retention`, or `purged`.
    pub why: String,
}

/// Writes events to a new archive file (flushed and renamed into place) and indexes them.
/// Returns the file's path.
pub(crate) fn write(
    disk: &Disk,
    data_dir: &Path,
    kind: &str,
    events: &[ArchivedEvent],
    now: UnixMillis,
) -> io::Result<PathBuf> {
    let when = OffsetDateTime::from_unix_timestamp_nanos(i128::from(now) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let day = format!(
        "{:04}-{:02}-{:02}",
        when.year(),
        u8::from(when.month()),
        when.day()
    );
    let dir = data_dir.join(ARCHIVE_DIR).join(&day);
    crate::disk::create_private_dir(&dir)?;
    let name = format!(
        "{kind}-{day}T{:02}{:02}{:02}.{:03}Z-{}.jsonl.gz",
        when.hour(),
        when.minute(),
        when.second(),
        when.millisecond(),
        std::process::id()
    );
    let path = dir.join(&name);
    let partial = dir.join(format!(".{name}.partial"));
    // Left by a run that failed part-way: never renamed, so never indexed.
    let _ = fs::remove_file(&partial);
    let written = (|| {
        let mut gz = GzEncoder::new(
            io::BufWriter::new(disk.create_new(&partial)?),
            Compression::fast(),
        );
        for event in events {
            serde_json::to_writer(&mut gz, event)?;
            gz.write_all(b"\n")?;
        }
        let file = gz
            .finish()?
            .into_inner()
            .map_err(io::IntoInnerError::into_error)?;
        file.sync_all()?;
        disk.rename(&partial, &path)?;
        disk.sync_dir(&dir)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&partial);
        return Err(e);
    }

    let relative = Path::new(&day).join(&name);
    crate::disk::precreate_private(&data_dir.join(ARCHIVE_DIR).join(INDEX_FILE))?;
    index(data_dir, events, &relative, now).map_err(io::Error::other)?;
    Ok(path)
}

fn open_index(data_dir: &Path, create: bool) -> rusqlite::Result<Option<Connection>> {
    let path = data_dir.join(ARCHIVE_DIR).join(INDEX_FILE);
    if !create && !path.is_file() {
        return Ok(None);
    }
    let flags = if create {
        OpenFlags::default()
    } else {
        OpenFlags::SQLITE_OPEN_READ_ONLY
    };
    let conn = Connection::open_with_flags(&path, flags)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    if create {
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE IF NOT EXISTS archived (
                 id          TEXT PRIMARY KEY,
                 file        TEXT NOT NULL,   -- relative to the archive directory
                 why         TEXT NOT NULL,   -- retention | purged
                 archived_at INTEGER NOT NULL
             ) WITHOUT ROWID;",
        )?;
    }
    Ok(Some(conn))
}

fn index(
    data_dir: &Path,
    events: &[ArchivedEvent],
    file: &Path,
    now: UnixMillis,
) -> rusqlite::Result<()> {
    let Some(mut conn) = open_index(data_dir, true)? else {
        return Ok(());
    };
    let txn = conn.transaction()?;
    {
        let mut put = txn.prepare(
            "INSERT INTO archived (id, file, why, archived_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (id) DO UPDATE SET file = excluded.file, why = excluded.why, archived_at = excluded.archived_at",
        )?;
        let file = file.to_string_lossy();
        for e in events {
            put.execute(params![e.id, file, e.why, now])?;
        }
    }
    txn.commit()
}

/// Finds an archived event: the record and the file holding it.
pub(crate) fn find(data_dir: &Path, id: &str) -> io::Result<Option<(ArchivedEvent, PathBuf)>> {
    fn other(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
        io::Error::other(e)
    }
    let Some(conn) = open_index(data_dir, false).map_err(other)? else {
        return Ok(None);
    };
    let file: Option<String> = conn
        .query_row("SELECT file FROM archived WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .optional()
        .map_err(other)?;
    let Some(file) = file else { return Ok(None) };
    let path = data_dir.join(ARCHIVE_DIR).join(file);
    let file = match File::open(&path) {
        Ok(file) => file,
        // An operator moved or deleted old archive files: the event is gone from here too.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let reader = BufReader::new(MultiGzDecoder::new(file));
    let quoted = serde_json::Value::from(id).to_string();
    for line in reader.lines() {
        let line = line?;
        // Cheap filter first: most lines are other events.
        if !line.contains(&quoted) {
            continue;
        }
        let event: ArchivedEvent = serde_json::from_str(&line).map_err(other)?;
        if event.id == id {
            return Ok(Some((event, path)));
        }
    }
    Ok(None)
}

/// Reads whole archived records (event, delivery, attempts, dead letter) from a live store.
pub(crate) fn load(
    conn: &Connection,
    ids: &[String],
    why: &str,
    now: UnixMillis,
) -> rusqlite::Result<Vec<ArchivedEvent>> {
    let mut event = conn.prepare_cached(
        "SELECT e.payload, e.received_at, d.status, d.delivered_at, a.acked_at, a.flushed_at
         FROM events e JOIN deliveries d ON d.event_id = e.id
         LEFT JOIN early_acks a ON a.event_id = e.id WHERE e.id = ?1",
    )?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let Some(row) = event
            .query_row([id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                    r.get::<_, Option<i64>>(4)?,
                    r.get::<_, Option<i64>>(5)?,
                ))
            })
            .optional()?
        else {
            continue;
        };
        let (payload, received_at, status, delivered_at, acked_at, flushed_at) = row;
        out.push(ArchivedEvent {
            id: id.clone(),
            payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::String(payload)),
            received_at,
            status,
            delivered_at,
            attempts: crate::read::attempts(conn, id)?,
            dead_letter: crate::read::dead_letter(conn, id)?,
            acked_before_flush: acked_at.map(|acked_at| EarlyAck {
                acked_at,
                flushed_at,
            }),
            archived_at: now,
            why: why.to_owned(),
        });
    }
    Ok(out)
}

/// Moves delivered events past the retention out of the live store, in the background.
pub(crate) struct Archiver {
    data_dir: PathBuf,
    conn: Connection,
    retention: Duration,
    clock: Arc<dyn Clock>,
    every: Duration,
    last: Option<Instant>,
    disk: Disk,
}

impl Archiver {
    pub(crate) fn new(
        data_dir: &Path,
        retention: Duration,
        clock: Arc<dyn Clock>,
        disk: Disk,
    ) -> Result<Self, OpenError> {
        let conn = open_connection(
            &data_dir.join(crate::DB_FILE),
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        Ok(Archiver {
            data_dir: data_dir.into(),
            conn,
            retention,
            clock,
            // A tenth of the retention: events leave at most 10 % later than due.
            every: (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(60)),
            last: None,
            disk,
        })
    }

    fn due(&self) -> bool {
        self.last.is_none_or(|at| at.elapsed() >= self.every)
    }

    /// One pass: archives up to [`PER_FILE`] events into one file, then removes them from the
    /// live store. Returns how many, and where.
    fn run(&mut self, jobs: &mpsc::Sender<Job>) -> Result<Option<(usize, PathBuf)>, String> {
        self.last = Some(Instant::now());
        let now = self.clock.now();
        let cutoff = now.saturating_sub(self.retention.as_millis() as i64);
        let ids: Vec<String> = self
            .conn
            .prepare_cached(
                "SELECT event_id FROM deliveries WHERE status = 'delivered' AND updated_at < ?1
                 ORDER BY updated_at LIMIT ?2",
            )
            .and_then(|mut s| {
                s.query_map(params![cutoff, PER_FILE as i64], |r| r.get(0))?
                    .collect()
            })
            .map_err(|e| format!("cannot list events to archive: {e}"))?;
        if ids.is_empty() {
            return Ok(None);
        }
        let events = load(&self.conn, &ids, "retention", now)
            .map_err(|e| format!("cannot read events to archive: {e}"))?;
        let path = write(&self.disk, &self.data_dir, "delivered", &events, now)
            .map_err(|e| format!("cannot write the archive: {e}"))?;
        let mut removed = 0;
        for chunk in ids.chunks(CHUNK) {
            let (reply, answer) = oneshot::channel();
            jobs.blocking_send(Job::Forget {
                ids: chunk.to_vec(),
                reply,
            })
            .map_err(|_| "the store writer has stopped".to_owned())?;
            removed += answer
                .blocking_recv()
                .map_err(|_| "the store writer has stopped".to_owned())?
                .map_err(|e| format!("cannot remove archived events: {e}"))?;
        }
        Ok(Some((removed, path)))
    }
}

/// The housekeeping thread: asks the writer for a checkpoint about once a second, and archives
/// when the retention says so. Stops when `stop` is dropped or the store is gone.
pub(crate) fn spawn_housekeeper(
    jobs: mpsc::WeakSender<Job>,
    stop: Receiver<()>,
    mut archiver: Option<Archiver>,
) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("relay-store-housekeeper".into())
        .spawn(move || {
            loop {
                match stop.recv_timeout(Duration::from_secs(1)) {
                    Err(RecvTimeoutError::Timeout) => {}
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                }
                let Some(jobs) = jobs.upgrade() else { return };
                let _ = jobs.try_send(Job::Tick);
                let Some(archiver) = archiver.as_mut().filter(|a| a.due()) else {
                    continue;
                };
                match archiver.run(&jobs) {
                    Ok(Some((n, path))) => {
                        tracing::info!(events = n, file = %path.display(), "archived delivered events past the retention")
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "archiving failed; retrying later"),
                }
            }
        })
}
