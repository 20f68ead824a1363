//! relay's embedded durable store: SQLite in a data directory, implementing the core's ports.
//!
//! One process owns a data directory for writing (`relay up`, guarded by a lock file); every
//! write goes through one writer thread that commits whole batches (group commit), so many
//! concurrent requests share one fsync. Other processes open the same directory read-mostly
//! ([`Reader`]) thanks to SQLite's WAL mode.

mod read;
mod writer;

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use relay_core::ops::DispatcherReport;
use relay_core::ports::{Clock, SystemClock};
use relay_core::{
    AcceptOutcome, AttemptRecord, Claim, Event, Ingest, Settlement, StoreError, WorkQueue,
};
use rusqlite::{Connection, OpenFlags};
use tokio::sync::{Notify, mpsc, oneshot};

pub use read::{DeliveryView, Reader, StatusCounts};
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
    jobs: mpsc::Sender<Job>,
    work: Arc<Notify>,
    _lock: File,
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `dir` for exclusive writing, and makes every lease
    /// left by a previous owner due again: that owner is gone, since we hold the lock.
    pub fn open(dir: &Path) -> Result<Self, OpenError> {
        Self::open_with_clock(dir, Arc::new(SystemClock))
    }

    pub fn open_with_clock(dir: &Path, clock: Arc<dyn Clock>) -> Result<Self, OpenError> {
        std::fs::create_dir_all(dir).map_err(|source| OpenError::Io {
            path: dir.into(),
            source,
        })?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
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

        let path = dir.join(DB_FILE);
        let conn = open_connection(&path, OpenFlags::default())?;
        init_schema(&conn, &path)?;
        let recovered =
            writer::recover_leases(&conn, clock.now()).map_err(|source| OpenError::Sqlite {
                path: path.clone(),
                source,
            })?;
        if recovered > 0 {
            tracing::info!(recovered, "made leases of a previous run due again");
        }

        let (jobs, rx) = mpsc::channel(QUEUE_CAPACITY);
        let work = Arc::new(Notify::new());
        writer::spawn(conn, rx, Arc::clone(&work), clock).map_err(|source| OpenError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                jobs,
                work,
                _lock: lock,
            }),
        })
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
        self.inner.jobs.try_send(job(tx)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                StoreError::Unavailable("store write queue is full".into())
            }
            mpsc::error::TrySendError::Closed(_) => {
                StoreError::Unavailable("store writer has stopped".into())
            }
        })?;
        rx.await
            .map_err(|_| StoreError::Unavailable("store writer stopped before answering".into()))?
    }
}

impl Ingest for SqliteStore {
    async fn accept(&self, event: Event) -> Result<AcceptOutcome, StoreError> {
        // Serialized here, on the caller's task: the writer thread is the one thing every
        // request shares, so it only does SQL.
        let payload = event.payload_json();
        self.submit(|reply| Job::Accept {
            event,
            payload,
            reply,
        })
        .await
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
        self.submit(|reply| Job::Release { claims, reply }).await
    }

    async fn wait_for_work(&self, at_most: Duration) {
        let _ = tokio::time::timeout(at_most, self.inner.work.notified()).await;
    }
}

fn open_connection(path: &Path, flags: OpenFlags) -> Result<Connection, OpenError> {
    let sqlite = |source: rusqlite::Error| match source.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase) => OpenError::Foreign {
            path: path.into(),
            why: "it is not an SQLite database".into(),
        },
        _ => OpenError::Sqlite {
            path: path.into(),
            source,
        },
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
    let sqlite = |source| OpenError::Sqlite {
        path: path.into(),
        source,
    };
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
