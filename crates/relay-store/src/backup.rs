//! `relay store backup PATH`: a consistent copy of a store, taken while `relay up` runs, that
//! is itself a data directory (`relay up --data-dir PATH` starts from it).
//!
//! The journal is copied first, then the index (SQLite's online backup, one snapshot), then the
//! archive. An event durable before the backup began is in the copy: either its segment was
//! still there when copied, or the segment was deleted because a checkpoint covered it, which
//! happened before the index's snapshot. The copy is checked (`quick_check`) before it is
//! called done.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};
use serde::Serialize;

use crate::{ARCHIVE_DIR, DB_FILE, OpenError, journal, open_connection};

/// What a backup copied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackupReport {
    pub path: PathBuf,
    pub events: u64,
    pub index_bytes: u64,
    pub journal_segments: u64,
    pub archive_files: u64,
    #[serde(with = "millis")]
    pub took: Duration,
}

mod millis {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error(
        "{0} exists and is not an empty directory: choose a new path, so that no backup is overwritten"
    )]
    NotEmpty(PathBuf),
    #[error("cannot write the backup at {path}")]
    Io { path: PathBuf, source: io::Error },
    #[error("cannot copy the index into {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("the copy in {path} does not check out ({why}); it is incomplete, delete it")]
    Unverified { path: PathBuf, why: String },
}

/// Copies the store in `dir` to `to`, which must not exist or be an empty directory.
pub fn backup(dir: &Path, to: &Path) -> Result<BackupReport, BackupError> {
    let started = Instant::now();
    // The source must be a store; this also refuses a directory that is not one.
    let source = crate::Reader::open(dir)?;
    drop(source);
    let empty_dir = fs::read_dir(to).is_ok_and(|mut d| d.next().is_none());
    if to.exists() && !empty_dir {
        return Err(BackupError::NotEmpty(to.into()));
    }
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| BackupError::Io { path, source }
    };
    create_private_dir(to).map_err(io(to))?;

    // 1. The journal: whatever is in it now.
    let from_journal = dir.join(journal::DIR);
    let to_journal = to.join(journal::DIR);
    create_private_dir(&to_journal).map_err(io(&to_journal))?;
    let mut journal_segments = 0;
    if from_journal.is_dir() {
        for (_, segment) in journal::segments(&from_journal).map_err(io(&from_journal))? {
            let name = segment.file_name().unwrap_or_default();
            match copy_file(&segment, &to_journal.join(name)) {
                Ok(()) => journal_segments += 1,
                // Indexed and checkpointed meanwhile: the index's snapshot, next, has it.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&segment)(e)),
            }
        }
    }
    sync_dir(&to_journal).map_err(io(&to_journal))?;

    // 2. The index: one consistent snapshot, taken online.
    let to_db = to.join(DB_FILE);
    let src = open_connection(&dir.join(DB_FILE), OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    copy_database(&src, &to_db)?;
    let events: u64 = src
        .query_row("SELECT count(*) FROM events", [], |r| r.get::<_, i64>(0))
        .map(|n| n as u64)
        .unwrap_or(0);
    drop(src);

    // 3. The archive: files are written once and renamed into place, so a copy of each is whole.
    let mut archive_files = 0;
    let from_archive = dir.join(ARCHIVE_DIR);
    if from_archive.is_dir() {
        let to_archive = to.join(ARCHIVE_DIR);
        archive_files = copy_archive(&from_archive, &to_archive)?;
    }
    sync_dir(to).map_err(io(to))?;

    // The copy must open and check out before it is called a backup.
    let copy = Connection::open_with_flags(&to_db, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(
        |source| BackupError::Sqlite {
            path: to_db.clone(),
            source,
        },
    )?;
    let verdict: String = copy
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(|source| BackupError::Sqlite {
            path: to_db.clone(),
            source,
        })?;
    if verdict != "ok" {
        return Err(BackupError::Unverified {
            path: to.into(),
            why: verdict,
        });
    }
    Ok(BackupReport {
        path: to.into(),
        events,
        index_bytes: fs::metadata(&to_db).map_or(0, |m| m.len()),
        journal_segments,
        archive_files,
        took: started.elapsed(),
    })
}

/// SQLite's online backup, in one step: one read transaction, so one snapshot, which a writer
/// in another process neither waits for nor restarts.
fn copy_database(src: &Connection, to: &Path) -> Result<(), BackupError> {
    let sqlite = |source| BackupError::Sqlite {
        path: to.into(),
        source,
    };
    let mut dst = Connection::open(to).map_err(sqlite)?;
    {
        use rusqlite::backup::{Backup, StepResult};
        let backup = Backup::new(src, &mut dst).map_err(sqlite)?;
        // All pages in one step (-1); a lock held a moment by the writer is waited out.
        for _ in 0..1000 {
            match backup.step(-1).map_err(sqlite)? {
                StepResult::Done => break,
                StepResult::More | StepResult::Busy | StepResult::Locked => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                _ => {}
            }
        }
    }
    // The copy as one file, flushed: no WAL beside it.
    dst.execute_batch("PRAGMA journal_mode = DELETE;")
        .map_err(sqlite)?;
    drop(dst);
    fs::File::open(to)
        .and_then(|f| f.sync_all())
        .map_err(|source| BackupError::Io {
            path: to.into(),
            source,
        })
}

fn copy_archive(from: &Path, to: &Path) -> Result<u64, BackupError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| BackupError::Io { path, source }
    };
    create_private_dir(to).map_err(io(to))?;
    let mut files = 0;
    for entry in fs::read_dir(from).map_err(io(from))? {
        let entry = entry.map_err(io(from))?;
        let path = entry.path();
        let name = entry.file_name();
        let name_str = name.to_string_lossy();
        if name_str.starts_with('.') || name_str.starts_with("index.db") {
            continue;
        }
        if path.is_dir() {
            files += copy_archive(&path, &to.join(&name))?;
        } else {
            copy_file(&path, &to.join(&name)).map_err(io(&path))?;
            files += 1;
        }
    }
    let index = from.join("index.db");
    if index.is_file() {
        let src = Connection::open_with_flags(&index, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(
            |source| BackupError::Sqlite {
                path: index.clone(),
                source,
            },
        )?;
        copy_database(&src, &to.join("index.db"))?;
    }
    sync_dir(to).map_err(io(to))?;
    Ok(files)
}

fn create_private_dir(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match fs::DirBuilder::new().mode(0o700).create(path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        other => other,
    }
}

fn copy_file(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut src = fs::File::open(from)?;
    let mut dst = fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(to)?;
    io::copy(&mut src, &mut dst)?;
    dst.sync_all()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}
