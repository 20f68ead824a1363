//! relay's embedded durable store, in a data directory, implementing the core's ports.
//!
//! An accepted event is committed to an append-only journal (`journal/`): one `write` per group
//! of requests, flushed by its own thread, so a slow flush never stops the next group being
//! written. SQLite (`relay.db`) is the index and the work queue: one writer thread applies the
//! journal and every claim and settlement, in group transactions that are flushed by a
//! checkpoint about once a second, off the ingest path. Delivered events older than the
//! retention move to compressed files under `archive/`.
//!
//! One process owns a data directory for writing (`relay up`, guarded by a lock file). Other
//! processes open it read-mostly ([`Reader`]) thanks to SQLite's WAL mode.

mod archive;
mod backup;
mod check;
mod disk;
mod health;
mod journal;
mod read;
mod record;
mod replay;
mod writer;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::thread::JoinHandle;
use std::time::Duration;

use relay_core::ops::DispatcherReport;
use relay_core::ports::{Clock, SystemClock};
use relay_core::{
    AcceptOutcome, AttemptRecord, Claim, Event, Ingest, Settlement, StoreError, WorkQueue,
};
use rusqlite::{Connection, OpenFlags};
use tokio::sync::{Notify, mpsc, oneshot};

pub use archive::{ARCHIVE_DIR, ArchivedEvent};
pub use backup::{BackupError, BackupReport, backup};
pub use check::{CheckReport, Finding, Severity, check};
pub use disk::Faults;
use disk::{Disk, Part};
pub use health::Failing;
pub use journal::FlushStats;
pub use read::{DeliveryView, Reader, StatusCounts};
pub use replay::QUARANTINE_DIR;
use writer::Job;

/// `PRAGMA application_id` of a relay store ("rely"), so other files are recognised as such.
const APPLICATION_ID: i64 = 0x7265_6c79;
const SCHEMA_VERSION: i64 = 1;
const DB_FILE: &str = "relay.db";
const LOCK_FILE: &str = "relay.lock";
/// `meta` key under which a running dispatcher publishes its [`DispatcherReport`].
const DISPATCHER_KEY: &str = "dispatcher";
/// Writes queued beyond this are refused at once (the caller answers 503) instead of piling up.
const QUEUE_CAPACITY: usize = 16_384;

/// When an acknowledgement may be sent, relative to the journal flush that makes the event
/// survive a power cut. Either way it is sent only once the event is written, so it survives
/// the process being killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Wait for the flush up to [`StoreOptions::flush_wait`]. If the disk is slower, answer
    /// anyway: the event is written and its flush follows. Each such event is counted, and its
    /// trace says so.
    #[default]
    Deadline,
    /// Never answer before the flush: when the disk stalls, the caller's own timeout answers
    /// (503), and a source that never retries loses the event.
    Flush,
}

/// How the store behaves; `StoreOptions::default()` suits tests and tools.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub clock: Arc<dyn Clock>,
    pub durability: Durability,
    /// With [`Durability::Deadline`], how long an acknowledgement waits for its flush.
    pub flush_wait: Duration,
    /// Delivered events older than this (since delivery) move to `DATA_DIR/archive/`;
    /// `None` keeps them in the live store.
    pub retention: Option<Duration>,
    /// Fault injection for tests: a schedule of failing, short or stalled filesystem calls
    /// ([`Faults`]). `None` in production.
    pub faults: Option<Arc<Faults>>,
}

impl StoreOptions {
    /// Applies a fault schedule from the environment, for tests of the built binary:
    /// `RELAY_FAULTS` (see [`Faults::parse`]; `RELAY_FAULTS_SEED` seeds its chances). Does
    /// nothing unless built with the `fault-injection` feature.
    #[must_use]
    pub fn with_faults_from_env(self) -> Self {
        #[cfg(feature = "fault-injection")]
        {
            let mut options = self;
            if let Ok(spec) = std::env::var("RELAY_FAULTS") {
                let seed = std::env::var("RELAY_FAULTS_SEED")
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(1);
                match Faults::parse(&spec, seed) {
                    Ok(faults) => {
                        tracing::warn!(%spec, seed, "fault injection: the store's filesystem calls fail on schedule");
                        options.faults = Some(Arc::new(faults));
                    }
                    Err(e) => tracing::error!(error = %e, "ignoring RELAY_FAULTS"),
                }
            }
            options
        }
        #[cfg(not(feature = "fault-injection"))]
        self
    }
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            clock: Arc::new(SystemClock),
            durability: Durability::default(),
            flush_wait: Duration::from_millis(50),
            retention: None,
            faults: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("data directory {0} does not exist")]
    Missing(PathBuf),
    #[error("{0} is not a relay data directory (no {DB_FILE} inside)")]
    NotAStore(PathBuf),
    #[error("{path} is not a relay store: {why}")]
    Foreign { path: PathBuf, why: String },
    #[error("data directory {0} is in use by another `relay up` (lock held on {LOCK_FILE})")]
    Locked(PathBuf),
    #[error(
        "{0} holds a relay journal or archive but no {DB_FILE}: the index was deleted or lost, and starting \
         would forget every event it held. Restore {DB_FILE} from a backup (relay store backup), or move the \
         directory aside to start empty (docs/runbook.md, \"The store is damaged\")"
    )]
    MissingIndex(PathBuf),
    #[error(
        "{path} is damaged ({why}); nothing was changed. `relay store check` tells more; restore it from a \
         backup (docs/runbook.md, \"The store is damaged\")"
    )]
    Damaged { path: PathBuf, why: String },
    #[error("cannot open {path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open store {path}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
}

/// The writable store, owned by one process. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    journal: Option<mpsc::Sender<journal::Accept>>,
    jobs: Option<mpsc::Sender<Job>>,
    shared: Arc<journal::Shared>,
    work: Arc<Notify>,
    clock: Arc<dyn Clock>,
    durability: Durability,
    flush_wait: Duration,
    stop_housekeeping: Option<std::sync::mpsc::Sender<()>>,
    /// Joined on drop, in this order, each after the channel feeding it is closed.
    housekeeper: Option<JoinHandle<()>>,
    journal_threads: Vec<JoinHandle<()>>,
    writer: Option<JoinHandle<()>>,
    _lock: File,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Each thread finishes what the one before handed it: the housekeeper its archiving,
        // the journal its queued requests (and the flusher their flush), the writer the rest.
        drop(self.stop_housekeeping.take());
        join(self.housekeeper.take());
        drop(self.journal.take());
        for t in self.journal_threads.drain(..) {
            join(Some(t));
        }
        drop(self.jobs.take());
        join(self.writer.take());
    }
}

fn join(thread: Option<JoinHandle<()>>) {
    if let Some(t) = thread
        && t.join().is_err()
    {
        tracing::error!("a store thread panicked");
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `dir` for exclusive writing, with default options.
    pub fn open(dir: &Path) -> Result<Self, OpenError> {
        Self::open_with(dir, StoreOptions::default())
    }

    /// Opens (creating if needed) the store in `dir` for exclusive writing. Whatever an earlier
    /// run left is taken over: journal segments are indexed, and leases are due again (that
    /// owner is gone, since we hold the lock).
    pub fn open_with(dir: &Path, options: StoreOptions) -> Result<Self, OpenError> {
        disk::create_private_dir(dir)
            .and_then(|()| disk::make_private(dir))
            .map_err(|source| OpenError::Io {
                path: dir.into(),
                source,
            })?;
        let lock = lock_dir(dir)?;
        let path = dir.join(DB_FILE);
        let conn = open_index(dir, &path, &options)?;
        let disk = |part| Disk::new(part, options.faults.clone());
        let journal = replay::replay(
            dir,
            &conn,
            &path,
            &disk(Part::Journal),
            &disk(Part::Quarantine),
        )?;

        let (jobs, rx) = mpsc::channel(QUEUE_CAPACITY);
        let (accepts, accept_rx) = mpsc::channel(QUEUE_CAPACITY);
        let work = Arc::new(Notify::new());
        let io = |source| OpenError::Io {
            path: path.clone(),
            source,
        };
        let lookup = open_connection(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        let journal = journal::start(
            &journal,
            journal::Start {
                data_dir: dir.into(),
                lookup,
                clock: Arc::clone(&options.clock),
                apply: jobs.clone(),
                disk: disk(Part::Journal),
                segment_disk: disk(Part::Segment),
            },
            accept_rx,
        )
        .map_err(io)?;
        let writer = writer::spawn(
            conn,
            rx,
            Arc::clone(&work),
            Arc::clone(&options.clock),
            Arc::clone(&journal.shared),
            disk(Part::Index),
        )
        .map_err(io)?;
        let archiver = match options.retention {
            Some(retention) => Some(archive::Archiver::new(
                dir,
                retention,
                Arc::clone(&options.clock),
                disk(Part::Archive),
            )?),
            None => None,
        };
        let (stop_housekeeping, stop) = std::sync::mpsc::channel();
        let housekeeper =
            archive::spawn_housekeeper(jobs.downgrade(), stop, archiver).map_err(io)?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                journal: Some(accepts),
                jobs: Some(jobs),
                shared: journal.shared,
                work,
                clock: options.clock,
                durability: options.durability,
                flush_wait: options.flush_wait,
                stop_housekeeping: Some(stop_housekeeping),
                housekeeper: Some(housekeeper),
                journal_threads: journal.threads,
                writer: Some(writer),
                _lock: lock,
            }),
        })
    }

    /// Resolves once every event accepted so far is indexed, so a [`Reader`] sees it.
    pub async fn indexed(&self) -> Result<(), StoreError> {
        self.submit(|reply| Job::Barrier { reply }).await
    }

    /// How the journal's flushes are going: counts for metrics and progress reports.
    pub fn flush_stats(&self) -> &FlushStats {
        &self.inner.shared.stats
    }

    /// Publishes the dispatcher's live figures for `relay status` in other processes.
    pub async fn publish_dispatcher(&self, report: &DispatcherReport) -> Result<(), StoreError> {
        let value = serde_json::to_string(report).map_err(|e| StoreError::Failed(e.to_string()))?;
        self.submit(|reply| Job::Publish {
            key: DISPATCHER_KEY,
            value,
            reply,
        })
        .await
    }

    async fn submit<T>(
        &self,
        job: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Job,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        send(self.jobs(), job(tx))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("store writer stopped before answering".into()))?
    }

    fn jobs(&self) -> &mpsc::Sender<Job> {
        self.inner.jobs.as_ref().expect("taken only on drop")
    }

    /// Counts an event answered before its flush, records it for `relay trace`, and records
    /// when the flush lands.
    fn acked_before_flush(&self, id: String, seq: u64) {
        let mut durable = self.inner.shared.subscribe();
        self.inner
            .shared
            .stats
            .acked_before_flush
            .fetch_add(1, Relaxed);
        metrics::counter!(relay_core::telemetry::ACKED_BEFORE_FLUSH).increment(1);
        tracing::debug!(event_id = ?id, "acknowledged before its flush");
        let at = self.inner.clock.now();
        let jobs = self.jobs();
        let _ = jobs.try_send(Job::AckedBeforeFlush { id: id.clone(), at });
        // A weak handle: a flush that never comes must not keep the writer alive.
        let (jobs, clock) = (jobs.downgrade(), Arc::clone(&self.inner.clock));
        tokio::spawn(async move {
            if durable.wait_for(|d| *d >= seq).await.is_ok()
                && let Some(jobs) = jobs.upgrade()
            {
                let _ = jobs.try_send(Job::Flushed {
                    id,
                    at: clock.now(),
                });
            }
        });
    }
}

fn send<T>(tx: &mpsc::Sender<T>, job: T) -> Result<(), StoreError> {
    tx.try_send(job).map_err(|e| match e {
        mpsc::error::TrySendError::Full(_) => {
            StoreError::Unavailable("store write queue is full".into())
        }
        mpsc::error::TrySendError::Closed(_) => {
            StoreError::Unavailable("store writer has stopped".into())
        }
    })
}

impl Ingest for SqliteStore {
    async fn accept(&self, event: Event) -> Result<AcceptOutcome, StoreError> {
        let outcomes = self.log(vec![event]).await?;
        Ok(outcomes[0])
    }

    /// The events are one journal record: a crash keeps all of them or none.
    async fn accept_batch(&self, events: Vec<Event>) -> Result<Vec<AcceptOutcome>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        self.log(events).await
    }

    fn health(&self) -> Result<(), String> {
        match self.inner.shared.health.refusing() {
            Some(reason) => Err(reason),
            None => Ok(()),
        }
    }
}

impl SqliteStore {
    /// Commits events to the journal, then answers per the durability policy.
    async fn log(&self, events: Vec<Event>) -> Result<Vec<AcceptOutcome>, StoreError> {
        let started = tokio::time::Instant::now();
        let health = &self.inner.shared.health;
        if let Some(reason) = health.refusing() {
            return Err(StoreError::Failing(reason));
        }
        // Serialized here, on the caller's task: the journal thread is the one thing every
        // request shares, so it only checks and writes.
        let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
        let events = events
            .into_iter()
            .map(|event| {
                let payload = event.payload_json();
                (event, payload)
            })
            .collect();
        let (reply, logged) = oneshot::channel();
        send(
            self.inner.journal.as_ref().expect("taken only on drop"),
            journal::Accept { events, reply },
        )?;
        let logged = logged.await.map_err(|_| {
            StoreError::Unavailable("the journal stopped before answering".into())
        })??;
        let outcomes = logged.iter().map(|l| l.outcome).collect();
        // One flush covers every write before it: waiting for the last one's is enough.
        let mut logged = logged;
        let Some(flushed) = logged
            .iter_mut()
            .filter_map(|l| l.flushed.take().map(|f| (l.seq, f)))
            .max_by_key(|(seq, _)| *seq)
            .map(|(_, f)| f)
        else {
            return Ok(outcomes);
        };
        let stopped = |_| StoreError::Unavailable("the journal stopped before flushing".into());
        if self.inner.durability == Durability::Flush {
            flushed.await.map_err(stopped)??;
            return Ok(outcomes);
        }
        match tokio::time::timeout_at(started + self.inner.flush_wait, flushed).await {
            Ok(flushed) => flushed.map_err(stopped)??,
            // A flush that is late may still land; one that failed is another matter.
            Err(_late) if health.refusing().is_some() => {
                return Err(StoreError::Failing(health.refusing().unwrap_or_default()));
            }
            Err(_late) => {
                for (l, id) in logged.into_iter().zip(ids) {
                    if l.outcome == AcceptOutcome::Accepted {
                        self.acked_before_flush(id, l.seq);
                    }
                }
            }
        }
        Ok(outcomes)
    }
}

impl WorkQueue for SqliteStore {
    async fn claim(&self, max: usize, lease: Duration) -> Result<Vec<Claim>, StoreError> {
        self.submit(|reply| Job::Claim { max, lease, reply }).await
    }

    async fn settle(
        &self,
        claim: &Claim,
        attempt: AttemptRecord,
        settlement: Settlement,
    ) -> Result<(), StoreError> {
        let claim = claim.clone();
        self.submit(|reply| Job::Settle {
            claim,
            attempt,
            settlement,
            reply,
        })
        .await
    }

    async fn release(&self, claims: Vec<Claim>) -> Result<(), StoreError> {
        if claims.is_empty() {
            return Ok(());
        }
        self.submit(|reply| Job::Release {
            claims,
            due_at: None,
            reply,
        })
        .await
    }

    async fn defer(
        &self,
        claims: Vec<Claim>,
        until: relay_core::UnixMillis,
    ) -> Result<(), StoreError> {
        if claims.is_empty() {
            return Ok(());
        }
        self.submit(|reply| Job::Release {
            claims,
            due_at: Some(until),
            reply,
        })
        .await
    }

    async fn wait_for_work(&self, at_most: Duration) {
        let _ = tokio::time::timeout(at_most, self.inner.work.notified()).await;
    }
}

/// Takes the directory's lock: one relay per data directory.
fn lock_dir(dir: &Path) -> Result<std::fs::File, OpenError> {
    let lock_path = dir.join(LOCK_FILE);
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|source| OpenError::Io {
            path: lock_path.clone(),
            source,
        })?;
    lock.try_lock().map_err(|e| match e {
        std::fs::TryLockError::WouldBlock => OpenError::Locked(dir.into()),
        std::fs::TryLockError::Error(source) => OpenError::Io {
            path: lock_path,
            source,
        },
    })?;
    Ok(lock)
}

/// Opens (or creates) the index at `path`, checked and tuned, with the leases of a previous run
/// made due again. A store whose index is gone is refused, not started empty.
fn open_index(dir: &Path, path: &Path, options: &StoreOptions) -> Result<Connection, OpenError> {
    let sqlite = |source| OpenError::Sqlite {
        path: path.into(),
        source,
    };
    if !path.exists() && holds_a_store(dir) {
        return Err(OpenError::MissingIndex(dir.into()));
    }
    disk::precreate_private(path).map_err(|source| OpenError::Io {
        path: path.into(),
        source,
    })?;
    let conn = open_connection(path, OpenFlags::default())?;
    init_schema(&conn, path)?;
    check_index(&conn, path)?;
    // The journal makes accepted events durable; SQLite's own commits need no flush, and its
    // checkpoints run when the writer says so, not inside a commit.
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(sqlite)?;
    conn.pragma_update(None, "wal_autocheckpoint", 0)
        .map_err(sqlite)?;
    conn.pragma_update(None, "journal_size_limit", 64 << 20)
        .map_err(sqlite)?;
    let recovered = writer::recover_leases(&conn, options.clock.now()).map_err(sqlite)?;
    if recovered > 0 {
        tracing::info!(recovered, "made leases of a previous run due again");
    }
    Ok(conn)
}

/// Whether `dir` has held a store: its journal, archive or quarantine.
fn holds_a_store(dir: &Path) -> bool {
    let segments = journal::segments(&dir.join(journal::DIR)).is_ok_and(|s| !s.is_empty());
    segments || dir.join(ARCHIVE_DIR).is_dir() || dir.join(QUARANTINE_DIR).is_dir()
}

/// SQLite's quick check of the index, at start: a damaged index is a clear error, not a
/// surprise half-way through a delivery (about half a second per GB, from a warm cache).
fn check_index(conn: &Connection, path: &Path) -> Result<(), OpenError> {
    let started = std::time::Instant::now();
    let verdict: String = conn
        .query_row("PRAGMA quick_check(1)", [], |r| r.get(0))
        .map_err(|e| damaged(path, e))?;
    if verdict != "ok" {
        return Err(OpenError::Damaged {
            path: path.into(),
            why: verdict.replace('\n', " "),
        });
    }
    tracing::debug!(ms = started.elapsed().as_millis() as u64, "index checked");
    Ok(())
}

/// An SQLite error at open: damage when SQLite says so.
fn damaged(path: &Path, source: rusqlite::Error) -> OpenError {
    match source.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseCorrupt) => OpenError::Damaged {
            path: path.into(),
            why: source.to_string().replace('\n', " "),
        },
        _ => OpenError::Sqlite {
            path: path.into(),
            source,
        },
    }
}

fn open_connection(path: &Path, flags: OpenFlags) -> Result<Connection, OpenError> {
    let sqlite = |source: rusqlite::Error| match source.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase) => OpenError::Foreign {
            path: path.into(),
            why: "it is not an SQLite database".into(),
        },
        _ => damaged(path, source),
    };
    let conn = Connection::open_with_flags(path, flags).map_err(sqlite)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(sqlite)?;
    // WAL lets readers in other processes run beside the writer; FULL syncs the WAL on every
    // commit, which is what makes a 2xx mean durable even across power loss, not only SIGKILL.
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(sqlite)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(sqlite)?;
    Ok(conn)
}

fn init_schema(conn: &Connection, path: &Path) -> Result<(), OpenError> {
    let sqlite = |source| damaged(path, source);
    let app_id: i64 = conn
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .map_err(sqlite)?;
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(sqlite)?;
    match (app_id, version) {
        (0, 0) => {
            let tables: i64 = conn
                .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
                .map_err(sqlite)?;
            if tables > 0 {
                return Err(OpenError::Foreign {
                    path: path.into(),
                    why: "it is another SQLite database".into(),
                });
            }
            conn.execute_batch(include_str!("schema.sql"))
                .map_err(sqlite)?;
            conn.pragma_update(None, "application_id", APPLICATION_ID)
                .map_err(sqlite)?;
            conn.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(sqlite)?;
            Ok(())
        }
        // Every statement is IF NOT EXISTS: tables added within a schema version appear.
        (APPLICATION_ID, SCHEMA_VERSION) => conn
            .execute_batch(include_str!("schema.sql"))
            .map_err(sqlite),
        (APPLICATION_ID, v) => Err(OpenError::Foreign {
            path: path.into(),
            why: format!("schema version {v}, this relay understands {SCHEMA_VERSION}"),
        }),
        _ => Err(OpenError::Foreign {
            path: path.into(),
            why: "it belongs to another application".into(),
        }),
    }
}

#[cfg(test)]
mod tests;
