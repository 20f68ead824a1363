//! The ingest journal: where `accept` commits an event. Events are appended to a segment file,
//! one `write` per group of requests, and a separate flusher thread makes what was written
//! durable with `fdatasync`. Writing and flushing are pipelined: while one flush waits on the
//! disk, the next groups are written, and the next flush covers them all.
//!
//! SQLite (the index and work queue) is updated from the journal by the writer thread, off the
//! ingest path; its checkpoints and their fsyncs never hold an acknowledgement back. A segment
//! is deleted once SQLite holds every event in it durably (after a checkpoint), and a restart
//! replays whatever segments are left.
//!
//! Record layout: `len: u32 LE`, `crc32: u32 LE` of the body, then the body of `len` bytes:
//! `seq: u64 LE`, `received_at: i64 LE`, `id_len: u32 LE`, the id, the payload JSON. Recovery
//! reads a segment up to its first torn or corrupt record.

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use relay_core::ports::Clock;
use relay_core::{AcceptOutcome, Event, StoreError, UnixMillis};
use rusqlite::{Connection, OptionalExtension};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot, watch};

use crate::writer::Job;

/// The journal's directory inside the data directory.
pub(crate) const DIR: &str = "journal";
/// A segment is closed and a new one started past this size.
const SEGMENT_BYTES: u64 = 8 << 20;
/// Most requests logged with one `write`.
const MAX_BATCH: usize = 4096;
/// Logged events SQLite has not caught up with yet, beyond which ingest answers 503: the
/// writer is stuck, and memory must not grow without end.
const MAX_PENDING: usize = 200_000;
const HEADER: usize = 8;
const FIXED: usize = 8 + 8 + 4;

/// One event as the journal holds it and SQLite applies it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub(crate) seq: u64,
    pub(crate) id: String,
    pub(crate) payload: String,
    pub(crate) received_at: UnixMillis,
}

/// A request to log one event.
#[derive(Debug)]
pub(crate) struct Accept {
    pub(crate) event: Event,
    /// `event.payload` serialized by the caller, off this thread.
    pub(crate) payload: String,
    pub(crate) reply: oneshot::Sender<Result<Logged, StoreError>>,
}

/// What the journal answered: the outcome, and the sequence number whose flush makes it
/// durable (0: nothing left to flush).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Logged {
    pub(crate) outcome: AcceptOutcome,
    pub(crate) seq: u64,
}

/// An event logged but perhaps not yet in SQLite, kept for duplicate checks.
#[derive(Debug)]
pub(crate) struct Pending {
    payload: Map<String, Value>,
    seq: u64,
}

/// Counters about flushing, for metrics and `relay status`.
#[derive(Debug, Default)]
pub struct FlushStats {
    /// `fdatasync`/`fsync` calls made by the journal.
    pub flushes: AtomicU64,
    /// Longest single flush so far, in microseconds.
    pub longest_flush_us: AtomicU64,
    /// Events answered 2xx before their flush completed (the `deadline` durability policy).
    pub acked_before_flush: AtomicU64,
}

/// What the journal thread, the flusher, the SQLite writer and the callers share.
#[derive(Debug)]
pub(crate) struct Shared {
    dir: PathBuf,
    pending: Mutex<HashMap<String, Pending>>,
    /// Highest sequence number on disk (flushed).
    durable: watch::Sender<u64>,
    /// Highest sequence number SQLite holds durably: every segment wholly at or below it can go.
    checkpointed: AtomicU64,
    flush: Mutex<FlushRequest>,
    flush_wanted: Condvar,
    segments: Mutex<VecDeque<Segment>>,
    pub(crate) stats: FlushStats,
}

#[derive(Debug, Default)]
struct FlushRequest {
    upto: u64,
    /// Files written since their last flush.
    files: Vec<Arc<File>>,
    /// A segment was created: the directory entry must be flushed too.
    dir_changed: bool,
    closed: bool,
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    /// Sequence number of its last record (0: none yet).
    last_seq: u64,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    pub(crate) fn checkpointed_seq(&self) -> u64 {
        self.checkpointed.load(Relaxed)
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.durable.subscribe()
    }

    /// SQLite applied and committed these entries: duplicates are found there from now on.
    pub(crate) fn applied(&self, entries: &[Entry]) {
        let mut pending = lock(&self.pending);
        for e in entries {
            if pending.get(&e.id).is_some_and(|p| p.seq == e.seq) {
                pending.remove(&e.id);
            }
        }
    }

    /// SQLite holds every entry up to `seq` durably; segments wholly below it are deleted.
    pub(crate) fn mark_checkpointed(&self, seq: u64) {
        self.checkpointed.fetch_max(seq, Relaxed);
        loop {
            let doomed = {
                let mut segments = lock(&self.segments);
                // The newest segment is the one being written: never deleted.
                match segments.front() {
                    Some(s) if segments.len() > 1 && s.last_seq <= seq => segments.pop_front(),
                    _ => None,
                }
            };
            let Some(segment) = doomed else { break };
            if let Err(e) = fs::remove_file(&segment.path) {
                tracing::warn!(path = %segment.path.display(), error = %e, "cannot delete an applied journal segment");
            }
        }
    }

    fn request_flush(&self, upto: u64, file: &Arc<File>) {
        let mut request = lock(&self.flush);
        request.upto = request.upto.max(upto);
        if !request.files.iter().any(|f| Arc::ptr_eq(f, file)) {
            request.files.push(Arc::clone(file));
        }
        drop(request);
        self.flush_wanted.notify_one();
    }

    fn close(&self) {
        lock(&self.flush).closed = true;
        self.flush_wanted.notify_one();
    }
}

/// The journal as found at start: what the old segments held, for SQLite to apply first.
#[derive(Debug)]
pub(crate) struct Recovered {
    /// Old segments, oldest first; delete them once their entries are applied durably.
    pub(crate) segments: Vec<PathBuf>,
    pub(crate) next_seq: u64,
    next_segment: u64,
}

/// Lists the segments left by earlier runs; `read_segment` each, apply, then [`start`].
pub(crate) fn recover(data_dir: &Path) -> io::Result<Recovered> {
    let dir = data_dir.join(DIR);
    fs::create_dir_all(&dir)?;
    let mut numbered: Vec<(u64, PathBuf)> = fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| {
            let n = p
                .file_name()?
                .to_str()?
                .strip_suffix(".log")?
                .parse()
                .ok()?;
            Some((n, p))
        })
        .collect();
    numbered.sort();
    let next_segment = numbered.last().map_or(1, |(n, _)| n + 1);
    Ok(Recovered {
        segments: numbered.into_iter().map(|(_, p)| p).collect(),
        next_seq: 1,
        next_segment,
    })
}

impl Recovered {
    /// Raises the next sequence number above the entries just read.
    pub(crate) fn saw(&mut self, entries: &[Entry]) {
        if let Some(max) = entries.iter().map(|e| e.seq).max() {
            self.next_seq = self.next_seq.max(max + 1);
        }
    }
}

/// Reads every intact record of a segment. The second value says why reading stopped early
/// (a torn or corrupt record: the tail of a write the process or machine died during).
pub(crate) fn read_segment(path: &Path) -> io::Result<(Vec<Entry>, Option<String>)> {
    let bytes = fs::read(path)?;
    let mut entries = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        match decode(&bytes[at..]) {
            Ok((entry, used)) => {
                entries.push(entry);
                at += used;
            }
            Err(why) => {
                return Ok((
                    entries,
                    Some(format!("{why} at byte {at} of {}", bytes.len())),
                ));
            }
        }
    }
    Ok((entries, None))
}

pub(crate) fn encode(
    buf: &mut Vec<u8>,
    seq: u64,
    received_at: UnixMillis,
    id: &str,
    payload: &str,
) {
    let len = FIXED + id.len() + payload.len();
    buf.reserve(HEADER + len);
    buf.extend_from_slice(&(len as u32).to_le_bytes());
    let crc_at = buf.len();
    buf.extend_from_slice(&[0; 4]);
    let body = buf.len();
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&received_at.to_le_bytes());
    buf.extend_from_slice(&(id.len() as u32).to_le_bytes());
    buf.extend_from_slice(id.as_bytes());
    buf.extend_from_slice(payload.as_bytes());
    let crc = crc32fast::hash(&buf[body..]);
    buf[crc_at..body].copy_from_slice(&crc.to_le_bytes());
}

fn decode(bytes: &[u8]) -> Result<(Entry, usize), &'static str> {
    let word = |at: usize| -> Option<[u8; 4]> { bytes.get(at..at + 4)?.try_into().ok() };
    let (Some(len), Some(crc)) = (word(0), word(4)) else {
        return Err("torn record header");
    };
    let len = u32::from_le_bytes(len) as usize;
    let Some(body) = bytes.get(HEADER..HEADER + len) else {
        return Err("torn record");
    };
    if len < FIXED || crc32fast::hash(body) != u32::from_le_bytes(crc) {
        return Err("corrupt record");
    }
    let u64_at = |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().unwrap_or_default());
    let id_len = u32::from_le_bytes(body[16..20].try_into().unwrap_or_default()) as usize;
    let rest = &body[FIXED..];
    if id_len > rest.len() {
        return Err("corrupt record");
    }
    let (id, payload) = rest.split_at(id_len);
    let (Ok(id), Ok(payload)) = (std::str::from_utf8(id), std::str::from_utf8(payload)) else {
        return Err("corrupt record");
    };
    Ok((
        Entry {
            seq: u64_at(0),
            received_at: u64_at(8) as i64,
            id: id.to_owned(),
            payload: payload.to_owned(),
        },
        HEADER + len,
    ))
}

/// The running journal: its thread's queue and what it shares.
#[derive(Debug)]
pub(crate) struct Handle {
    pub(crate) shared: Arc<Shared>,
    pub(crate) threads: Vec<std::thread::JoinHandle<()>>,
}

/// What [`start`] needs besides the recovered state.
pub(crate) struct Start {
    pub(crate) data_dir: PathBuf,
    /// A connection for duplicate checks against what SQLite already holds.
    pub(crate) lookup: Connection,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) apply: mpsc::Sender<Job>,
    /// Sleep before every flush: fault injection for tests of slow disks.
    pub(crate) flush_stall: Duration,
}

/// Starts the journal and flusher threads on a fresh segment, after recovery.
pub(crate) fn start(
    recovered: &Recovered,
    start: Start,
    rx: mpsc::Receiver<Accept>,
) -> io::Result<Handle> {
    let dir = start.data_dir.join(DIR);
    let (path, file) = create_segment(&dir, recovered.next_segment)?;
    let durable_seq = recovered.next_seq - 1;
    let shared = Arc::new(Shared {
        dir: dir.clone(),
        pending: Mutex::default(),
        durable: watch::Sender::new(durable_seq),
        checkpointed: AtomicU64::new(durable_seq),
        flush: Mutex::new(FlushRequest {
            dir_changed: true,
            ..FlushRequest::default()
        }),
        flush_wanted: Condvar::new(),
        segments: Mutex::new(VecDeque::from([Segment { path, last_seq: 0 }])),
        stats: FlushStats::default(),
    });
    let journal = Journal {
        shared: Arc::clone(&shared),
        lookup: start.lookup,
        clock: start.clock,
        apply: start.apply,
        file: Arc::new(file),
        written: 0,
        next_seq: recovered.next_seq,
        next_segment: recovered.next_segment + 1,
    };
    let flusher = {
        let shared = Arc::clone(&shared);
        let stall = start.flush_stall;
        std::thread::Builder::new()
            .name("relay-store-flusher".into())
            .spawn(move || flush_loop(&shared, stall))?
    };
    let writer = std::thread::Builder::new()
        .name("relay-store-journal".into())
        .spawn(move || journal.run(rx))?;
    Ok(Handle {
        shared,
        threads: vec![writer, flusher],
    })
}

fn create_segment(dir: &Path, number: u64) -> io::Result<(PathBuf, File)> {
    let path = dir.join(format!("{number:012}.log"));
    let file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)?;
    Ok((path, file))
}

struct Journal {
    shared: Arc<Shared>,
    lookup: Connection,
    clock: Arc<dyn Clock>,
    apply: mpsc::Sender<Job>,
    file: Arc<File>,
    /// Bytes in the current segment.
    written: u64,
    next_seq: u64,
    next_segment: u64,
}

type Reply = oneshot::Sender<Result<Logged, StoreError>>;

impl Journal {
    fn run(mut self, mut rx: mpsc::Receiver<Accept>) {
        let mut batch = Vec::with_capacity(64);
        let mut buf = Vec::with_capacity(64 * 1024);
        while let Some(first) = rx.blocking_recv() {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            self.log(&mut batch, &mut buf);
        }
        self.shared.close();
        tracing::debug!("journal stopped: every handle dropped");
    }

    /// Logs one group of requests with one `write`, hands the new events to SQLite, and
    /// answers every request.
    fn log(&mut self, batch: &mut Vec<Accept>, buf: &mut Vec<u8>) {
        let now = self.clock.now();
        let first_new = self.next_seq;
        let mut entries = Vec::new();
        let mut answers: Vec<(Reply, Result<Logged, StoreError>)> = Vec::with_capacity(batch.len());
        {
            let mut pending = lock(&self.shared.pending);
            for Accept {
                event,
                payload,
                reply,
            } in batch.drain(..)
            {
                let known = match pending.get(&event.id) {
                    Some(p) => Ok(Some((p.payload == event.payload, p.seq))),
                    None => stored(&self.lookup, &event).map(|same| same.map(|same| (same, 0))),
                };
                let answer = match known {
                    Ok(Some((true, seq))) => Ok(Logged {
                        outcome: AcceptOutcome::Duplicate,
                        seq,
                    }),
                    Ok(Some((false, _))) => Ok(Logged {
                        outcome: AcceptOutcome::Conflict,
                        seq: 0,
                    }),
                    Ok(None) if pending.len() >= MAX_PENDING => Err(StoreError::Unavailable(
                        "the store is behind: too many events wait to be indexed".into(),
                    )),
                    Ok(None) => {
                        let seq = self.next_seq;
                        self.next_seq += 1;
                        encode(buf, seq, now, &event.id, &payload);
                        pending.insert(
                            event.id.clone(),
                            Pending {
                                payload: event.payload,
                                seq,
                            },
                        );
                        entries.push(Entry {
                            seq,
                            id: event.id,
                            payload,
                            received_at: now,
                        });
                        Ok(Logged {
                            outcome: AcceptOutcome::Accepted,
                            seq,
                        })
                    }
                    Err(e) => Err(e),
                };
                answers.push((reply, answer));
            }
        }
        if !buf.is_empty() {
            match (&*self.file).write_all(buf) {
                Ok(()) => {
                    self.written += buf.len() as u64;
                    let last = self.next_seq - 1;
                    if let Some(segment) = lock(&self.shared.segments).back_mut() {
                        segment.last_seq = last;
                    }
                    self.shared.request_flush(last, &self.file);
                    // Before any answer, so whatever a caller does next reaches the writer
                    // after the event itself.
                    if self.apply.blocking_send(Job::Apply(entries)).is_err() {
                        tracing::error!(
                            "the store writer has stopped; logged events are indexed at the next start"
                        );
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot write the journal; refusing this group of events");
                    self.shared.applied(&entries);
                    let failed = StoreError::Unavailable(format!("cannot write the journal: {e}"));
                    for (_, answer) in &mut answers {
                        if answer.as_ref().is_ok_and(|l| l.seq >= first_new) {
                            *answer = Err(failed.clone());
                        }
                    }
                    // The failed write may have left part of a record: continue in a new file.
                    self.written = SEGMENT_BYTES;
                }
            }
            buf.clear();
        }
        if self.written >= SEGMENT_BYTES {
            self.rotate();
        }
        for (reply, answer) in answers {
            // A dropped receiver means the caller gave up; the event is logged all the same.
            let _ = reply.send(answer);
        }
    }

    fn rotate(&mut self) {
        match create_segment(&self.shared.dir, self.next_segment) {
            Ok((path, file)) => {
                self.next_segment += 1;
                self.file = Arc::new(file);
                self.written = 0;
                lock(&self.shared.segments).push_back(Segment { path, last_seq: 0 });
                lock(&self.shared.flush).dir_changed = true;
            }
            Err(e) => {
                self.next_segment += 1;
                tracing::error!(error = %e, "cannot start a new journal segment; continuing in the current one");
            }
        }
    }
}

/// Whether SQLite already holds an event with this id: `Some(same payload?)`.
fn stored(lookup: &Connection, event: &Event) -> Result<Option<bool>, StoreError> {
    let payload: Option<String> = lookup
        .prepare_cached("SELECT payload FROM events WHERE id = ?1")
        .and_then(|mut s| s.query_row([&event.id], |r| r.get(0)).optional())
        .map_err(|e| StoreError::Unavailable(format!("cannot look up event {}: {e}", event.id)))?;
    // Same payload means the same JSON value: key order and whitespace do not matter.
    Ok(payload.map(|stored| {
        serde_json::from_str::<Map<String, Value>>(&stored).is_ok_and(|m| m == event.payload)
    }))
}

/// The flusher thread: flushes whatever was written since the last flush, then publishes the
/// new durable sequence number. Flushes never overlap, and one covers every write before it.
fn flush_loop(shared: &Shared, stall: Duration) {
    loop {
        let (upto, files, dir_changed) = {
            let mut request = lock(&shared.flush);
            while request.files.is_empty() && !request.closed {
                request = shared
                    .flush_wanted
                    .wait(request)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            if request.files.is_empty() {
                return;
            }
            (
                request.upto,
                std::mem::take(&mut request.files),
                std::mem::take(&mut request.dir_changed),
            )
        };
        if !stall.is_zero() {
            std::thread::sleep(stall);
        }
        let started = Instant::now();
        let mut result = files.iter().try_for_each(|f| f.sync_data());
        if result.is_ok() && dir_changed {
            result = File::open(&shared.dir).and_then(|d| d.sync_all());
        }
        let took = started.elapsed();
        let stats = &shared.stats;
        stats
            .flushes
            .fetch_add(files.len() as u64 + u64::from(dir_changed), Relaxed);
        stats
            .longest_flush_us
            .fetch_max(took.as_micros() as u64, Relaxed);
        if took > Duration::from_millis(500) {
            tracing::warn!(
                ms = took.as_millis() as u64,
                "the disk took long to flush the journal"
            );
        }
        match result {
            Ok(()) => {
                shared.durable.send_if_modified(|durable| {
                    let raised = upto > *durable;
                    *durable = (*durable).max(upto);
                    raised
                });
            }
            Err(e) => {
                // Try again with the next flush; the events stay acknowledged or waiting.
                tracing::error!(error = %e, "cannot flush the journal; retrying");
                let mut request = lock(&shared.flush);
                request.files.extend(files);
                request.dir_changed |= dir_changed;
                drop(request);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_a_torn_tail_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("000000000001.log");
        let mut buf = Vec::new();
        encode(&mut buf, 7, 1_000, "a", r#"{"id":"a"}"#);
        encode(&mut buf, 8, 1_001, "ünï", r#"{"id":"ünï","x":[1]}"#);
        let whole = buf.len();
        encode(&mut buf, 9, 1_002, "c", r#"{"id":"c"}"#);
        fs::write(&path, &buf[..buf.len() - 3]).unwrap();
        let (entries, stopped) = read_segment(&path).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].id, "ünï");
        assert_eq!(entries[1].seq, 8);
        assert_eq!(entries[1].received_at, 1_001);
        assert!(stopped.unwrap().starts_with("torn record at byte"));

        buf.truncate(whole);
        buf[whole - 1] ^= 0xff;
        fs::write(&path, &buf).unwrap();
        let (entries, stopped) = read_segment(&path).unwrap();
        assert_eq!(
            entries.len(),
            1,
            "a corrupt record and what follows it are dropped"
        );
        assert!(stopped.unwrap().starts_with("corrupt record"));
    }
}
