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
//! Segments are zero-filled to their full size and flushed before they are used, by a thread of
//! their own, and records are then written in place: a flush only has data to write, never the
//! file's size or block map, so it does not wait for the filesystem's own journal (and for
//! whatever other files have queued there).
//!
//! Record layout: `len: u32 LE`, `crc32: u32 LE` of the body, then the body of `len` bytes:
//! `seq: u64 LE`, `received_at: i64 LE`, `id_len: u32 LE`, the id, the payload JSON. A zero
//! `len` is the unwritten rest of a segment. Recovery reads a segment up to its first torn or
//! corrupt record.
//!
//! The events of one batch request (`POST /events/batch`) are one *group* record, so that a
//! crash keeps all of them or none: `id_len` is [`GROUP`], followed by `count: u32 LE` and, per
//! event, `id_len: u32 LE`, `payload_len: u32 LE`, the id and the payload; `seq` is the first
//! event's, the others follow it one by one.

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
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
/// Size of a segment, zero-filled before use. Records past it still work (the file grows), but
/// a new segment starts before that is likely.
const SEGMENT_BYTES: u64 = 8 << 20;
/// A new segment starts when less than this is left in the current one.
const HEADROOM: u64 = 1 << 20;
/// Longest a flush waits for a write the journal has said is coming (requests already queued
/// behind the one it just wrote), so that one flush serves the whole burst.
const GATHER_MAX: Duration = Duration::from_micros(300);
/// Flushes start at most this often. A flush of the prepared journal takes ~50 µs here, so
/// without a floor a steady 2,000/s would flush once per event; with it, a flush serves what
/// arrived in the last quarter millisecond, and a lone event (the last flush long past) never
/// waits.
const MIN_FLUSH_INTERVAL: Duration = Duration::from_micros(250);
/// Most requests logged with one `write`.
const MAX_BATCH: usize = 4096;
/// Logged events SQLite has not caught up with yet, beyond which ingest answers 503: the
/// writer is stuck, and memory must not grow without end.
const MAX_PENDING: usize = 200_000;
const HEADER: usize = 8;
const FIXED: usize = 8 + 8 + 4;
/// The `id_len` that marks a group record.
const GROUP: u32 = u32::MAX;

/// One event as the journal holds it and SQLite applies it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub(crate) seq: u64,
    pub(crate) id: String,
    pub(crate) payload: String,
    pub(crate) received_at: UnixMillis,
}

/// A request to log events, all of them or none: one event, or a batch request's.
#[derive(Debug)]
pub(crate) struct Accept {
    /// Each event with its payload serialized by the caller, off this thread.
    pub(crate) events: Vec<(Event, String)>,
    /// One answer per event, in order.
    pub(crate) reply: oneshot::Sender<Result<Vec<Logged>, StoreError>>,
}

/// What the journal answered: the outcome, the sequence number whose flush makes it durable,
/// and a signal fired once that flush has landed (`None`: nothing to wait for).
#[derive(Debug)]
pub(crate) struct Logged {
    pub(crate) outcome: AcceptOutcome,
    pub(crate) seq: u64,
    pub(crate) flushed: Option<oneshot::Receiver<()>>,
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
    /// A segment prepared ahead of need, for the next rotation.
    spare: Mutex<Spare>,
    spare_wanted: Condvar,
    next_segment: AtomicU64,
    pub(crate) stats: FlushStats,
}

#[derive(Debug, Default)]
struct Spare {
    ready: Option<(PathBuf, File)>,
    closed: bool,
}

#[derive(Debug, Default)]
struct FlushRequest {
    upto: u64,
    /// Files written since their last flush.
    files: Vec<Arc<File>>,
    /// Answers waiting for a flush, each told once: one wake-up per request, not one per
    /// request per flush.
    waiters: Vec<oneshot::Sender<()>>,
    /// A segment was created: the directory entry must be flushed too.
    dir_changed: bool,
    /// The journal has more requests queued: another write follows at once.
    more_coming: bool,
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

    fn request_flush(
        &self,
        upto: u64,
        file: &Arc<File>,
        waiters: Vec<oneshot::Sender<()>>,
        more_coming: bool,
    ) {
        let mut request = lock(&self.flush);
        request.more_coming = more_coming;
        request.upto = request.upto.max(upto);
        request.waiters.extend(waiters);
        if !request.files.iter().any(|f| Arc::ptr_eq(f, file)) {
            request.files.push(Arc::clone(file));
        }
        drop(request);
        self.flush_wanted.notify_one();
    }

    fn close(&self) {
        lock(&self.flush).closed = true;
        self.flush_wanted.notify_one();
        lock(&self.spare).closed = true;
        self.spare_wanted.notify_one();
    }

    /// A new segment: the prepared spare if there is one, else a plain file (its flushes then
    /// also write its growing size, which is slower but just as safe).
    fn new_segment(&self) -> io::Result<(PathBuf, File, bool)> {
        let spare = lock(&self.spare).ready.take();
        self.spare_wanted.notify_one();
        if let Some((path, file)) = spare {
            return Ok((path, file, false));
        }
        let number = self.next_segment.fetch_add(1, Relaxed);
        let path = self.dir.join(format!("{number:012}.log"));
        let file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)?;
        Ok((path, file, true))
    }
}

/// Creates a segment zero-filled to [`SEGMENT_BYTES`] and flushes it, with its directory entry.
fn prepare_segment(dir: &Path, number: u64) -> io::Result<(PathBuf, File)> {
    let path = dir.join(format!("{number:012}.log"));
    let mut file = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(&path)?;
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..SEGMENT_BYTES / zeros.len() as u64 {
        file.write_all(&zeros)?;
    }
    file.sync_all()?;
    File::open(dir)?.sync_all()?;
    Ok((path, file))
}

/// The thread that keeps a spare segment ready.
fn prepare_loop(shared: &Shared) {
    loop {
        {
            let mut spare = lock(&shared.spare);
            while spare.ready.is_some() && !spare.closed {
                spare = shared
                    .spare_wanted
                    .wait(spare)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            if spare.closed {
                return;
            }
        }
        let number = shared.next_segment.fetch_add(1, Relaxed);
        match prepare_segment(&shared.dir, number) {
            Ok(ready) => lock(&shared.spare).ready = Some(ready),
            Err(e) => {
                tracing::warn!(error = %e, "cannot prepare a journal segment; retrying in 1 s");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
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

/// The segments in `dir`, by number, oldest first.
fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut numbered: Vec<(u64, PathBuf)> = fs::read_dir(dir)?
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
    Ok(numbered)
}

/// Lists the segments left by earlier runs; `read_segment` each, apply, then [`start`].
pub(crate) fn recover(data_dir: &Path) -> io::Result<Recovered> {
    let dir = data_dir.join(DIR);
    fs::create_dir_all(&dir)?;
    let numbered = segments(&dir)?;
    let next_segment = numbered.last().map_or(1, |(n, _)| n + 1);
    Ok(Recovered {
        segments: numbered.into_iter().map(|(_, p)| p).collect(),
        next_seq: 1,
        next_segment,
    })
}

/// An event in the journal, newest segment first: for an event accepted but not yet indexed
/// (milliseconds, normally). Safe while `relay up` writes the journal: a record still being
/// written reads as torn and is skipped.
pub(crate) fn find(data_dir: &Path, id: &str) -> io::Result<Option<Entry>> {
    let dir = data_dir.join(DIR);
    if !dir.is_dir() {
        return Ok(None);
    }
    for (_, path) in segments(&dir)?.into_iter().rev() {
        // A segment deleted meanwhile (indexed and checkpointed) holds nothing to find.
        let (entries, _) = match read_segment(&path) {
            Ok(read) => read,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if let Some(entry) = entries.into_iter().find(|e| e.id == id) {
            return Ok(Some(entry));
        }
    }
    Ok(None)
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
            Ok(Some((decoded, used))) => {
                entries.extend(decoded);
                at += used;
            }
            // The zero-filled, never written rest of the segment.
            Ok(None) => break,
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

#[cfg(test)]
pub(crate) fn encode(
    buf: &mut Vec<u8>,
    seq: u64,
    received_at: UnixMillis,
    id: &str,
    payload: &str,
) {
    encode_all(
        buf,
        &[Entry {
            seq,
            id: id.into(),
            payload: payload.into(),
            received_at,
        }],
    );
}

/// Appends one record holding `entries` (consecutive sequence numbers, one receipt time): a
/// plain record for one, a group record for more.
pub(crate) fn encode_all(buf: &mut Vec<u8>, entries: &[Entry]) {
    let [first, ..] = entries else { return };
    let len = match entries {
        [one] => FIXED + one.id.len() + one.payload.len(),
        _ => {
            FIXED
                + 4
                + entries
                    .iter()
                    .map(|e| 8 + e.id.len() + e.payload.len())
                    .sum::<usize>()
        }
    };
    buf.reserve(HEADER + len);
    buf.extend_from_slice(&(len as u32).to_le_bytes());
    let crc_at = buf.len();
    buf.extend_from_slice(&[0; 4]);
    let body = buf.len();
    buf.extend_from_slice(&first.seq.to_le_bytes());
    buf.extend_from_slice(&first.received_at.to_le_bytes());
    if let [one] = entries {
        buf.extend_from_slice(&(one.id.len() as u32).to_le_bytes());
        buf.extend_from_slice(one.id.as_bytes());
        buf.extend_from_slice(one.payload.as_bytes());
    } else {
        buf.extend_from_slice(&GROUP.to_le_bytes());
        buf.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        for e in entries {
            buf.extend_from_slice(&(e.id.len() as u32).to_le_bytes());
            buf.extend_from_slice(&(e.payload.len() as u32).to_le_bytes());
            buf.extend_from_slice(e.id.as_bytes());
            buf.extend_from_slice(e.payload.as_bytes());
        }
    }
    let crc = crc32fast::hash(&buf[body..]);
    buf[crc_at..body].copy_from_slice(&crc.to_le_bytes());
}

/// One record's events and its size; `None` at the unwritten (zero) rest of a segment.
fn decode(bytes: &[u8]) -> Result<Option<(Vec<Entry>, usize)>, &'static str> {
    let word = |at: usize| -> Option<[u8; 4]> { bytes.get(at..at + 4)?.try_into().ok() };
    let (Some(len), Some(crc)) = (word(0), word(4)) else {
        return match bytes.iter().all(|b| *b == 0) {
            true => Ok(None),
            false => Err("torn record header"),
        };
    };
    let len = u32::from_le_bytes(len) as usize;
    if len == 0 {
        return match bytes.iter().all(|b| *b == 0) {
            true => Ok(None),
            false => Err("corrupt record"),
        };
    }
    let Some(body) = bytes.get(HEADER..HEADER + len) else {
        return Err("torn record");
    };
    if len < FIXED || crc32fast::hash(body) != u32::from_le_bytes(crc) {
        return Err("corrupt record");
    }
    let u64_at = |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().unwrap_or_default());
    let u32_at = |rest: &[u8], at: usize| -> Option<usize> {
        Some(u32::from_le_bytes(rest.get(at..at + 4)?.try_into().ok()?) as usize)
    };
    let (seq, received_at) = (u64_at(0), u64_at(8) as i64);
    let text = |bytes: &[u8]| std::str::from_utf8(bytes).map(str::to_owned);
    let id_len = u32_at(body, 16).ok_or("corrupt record")?;
    let mut rest = &body[FIXED..];
    if id_len != GROUP as usize {
        if id_len > rest.len() {
            return Err("corrupt record");
        }
        let (id, payload) = rest.split_at(id_len);
        let (Ok(id), Ok(payload)) = (text(id), text(payload)) else {
            return Err("corrupt record");
        };
        let entry = Entry {
            seq,
            received_at,
            id,
            payload,
        };
        return Ok(Some((vec![entry], HEADER + len)));
    }
    let count = u32_at(rest, 0).ok_or("corrupt record")?;
    rest = &rest[4..];
    let mut entries = Vec::with_capacity(count.min(1024));
    for k in 0..count {
        let (Some(id_len), Some(payload_len)) = (u32_at(rest, 0), u32_at(rest, 4)) else {
            return Err("corrupt record");
        };
        let Some(item) = rest.get(8..8 + id_len + payload_len) else {
            return Err("corrupt record");
        };
        let (id, payload) = item.split_at(id_len);
        let (Ok(id), Ok(payload)) = (text(id), text(payload)) else {
            return Err("corrupt record");
        };
        entries.push(Entry {
            seq: seq + k as u64,
            received_at,
            id,
            payload,
        });
        rest = &rest[8 + id_len + payload_len..];
    }
    Ok(Some((entries, HEADER + len)))
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
    let (path, file) = prepare_segment(&dir, recovered.next_segment)?;
    let durable_seq = recovered.next_seq - 1;
    let shared = Arc::new(Shared {
        dir: dir.clone(),
        pending: Mutex::default(),
        durable: watch::Sender::new(durable_seq),
        checkpointed: AtomicU64::new(durable_seq),
        flush: Mutex::default(),
        flush_wanted: Condvar::new(),
        segments: Mutex::new(VecDeque::from([Segment { path, last_seq: 0 }])),
        spare: Mutex::default(),
        spare_wanted: Condvar::new(),
        next_segment: AtomicU64::new(recovered.next_segment + 1),
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
    };
    let flusher = {
        let shared = Arc::clone(&shared);
        let stall = start.flush_stall;
        std::thread::Builder::new()
            .name("relay-store-flusher".into())
            .spawn(move || flush_loop(&shared, stall))?
    };
    let preparer = {
        let shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("relay-store-segments".into())
            .spawn(move || prepare_loop(&shared))?
    };
    let writer = std::thread::Builder::new()
        .name("relay-store-journal".into())
        .spawn(move || journal.run(rx))?;
    Ok(Handle {
        shared,
        threads: vec![writer, flusher, preparer],
    })
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
}

type Reply = oneshot::Sender<Result<Vec<Logged>, StoreError>>;
/// What is known of an id already: `Some((same payload?, its sequence number))`.
type Known = Option<(bool, u64)>;

impl Journal {
    fn run(mut self, mut rx: mpsc::Receiver<Accept>) {
        let mut batch = Vec::with_capacity(64);
        let mut buf = Vec::with_capacity(64 * 1024);
        while let Some(first) = rx.blocking_recv() {
            let mut events = first.events.len();
            batch.push(first);
            while events < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => {
                        events += job.events.len();
                        batch.push(job);
                    }
                    Err(_) => break,
                }
            }
            let more_coming = !rx.is_empty();
            self.log(&mut batch, &mut buf, more_coming);
        }
        self.shared.close();
        tracing::debug!("journal stopped: every handle dropped");
    }

    /// Logs one group of requests with one `write`, hands the new events to SQLite, and
    /// answers every request. A request's new events are one record: all of them or none.
    fn log(&mut self, batch: &mut Vec<Accept>, buf: &mut Vec<u8>, more_coming: bool) {
        let now = self.clock.now();
        let mut entries = Vec::new();
        let mut waiters = Vec::new();
        // Per request: its answers, and whether it logged anything new (which a failed write
        // takes back).
        let mut answers: Vec<(Reply, Result<Vec<Logged>, StoreError>, bool)> =
            Vec::with_capacity(batch.len());
        // Duplicates among events not yet indexed, then (without holding the map, which the
        // writer needs too) among indexed ones.
        let seen: Vec<Vec<Known>> = {
            let pending = lock(&self.shared.pending);
            batch
                .iter()
                .map(|a| {
                    a.events
                        .iter()
                        .map(|(event, _)| {
                            pending
                                .get(&event.id)
                                .map(|p| (p.payload == event.payload, p.seq))
                        })
                        .collect()
                })
                .collect()
        };
        let seen: Vec<Result<Vec<Known>, StoreError>> = seen
            .into_iter()
            .zip(batch.iter())
            .map(|(seen, a)| {
                seen.into_iter()
                    .zip(&a.events)
                    .map(|(seen, (event, _))| match seen {
                        Some(known) => Ok(Some(known)),
                        None => stored(&self.lookup, event).map(|same| same.map(|same| (same, 0))),
                    })
                    .collect()
            })
            .collect();
        {
            let mut pending = lock(&self.shared.pending);
            for (Accept { events, reply }, known) in batch.drain(..).zip(seen) {
                let known = match known {
                    Ok(known) => known,
                    Err(e) => {
                        answers.push((reply, Err(e), false));
                        continue;
                    }
                };
                if pending.len() + events.len() > MAX_PENDING {
                    let behind = StoreError::Unavailable(
                        "the store is behind: too many events wait to be indexed".into(),
                    );
                    answers.push((reply, Err(behind), false));
                    continue;
                }
                let mut logged = Vec::with_capacity(events.len());
                let mut group = Vec::new();
                for ((event, payload), known) in events.into_iter().zip(known) {
                    // The same id earlier in this group or request: pending by now.
                    let known = known.or_else(|| {
                        pending
                            .get(&event.id)
                            .map(|p| (p.payload == event.payload, p.seq))
                    });
                    logged.push(match known {
                        Some((true, seq)) => Logged {
                            outcome: AcceptOutcome::Duplicate,
                            seq,
                            flushed: (seq > *self.shared.durable.borrow())
                                .then(|| watch_flush(&mut waiters)),
                        },
                        Some((false, _)) => Logged {
                            outcome: AcceptOutcome::Conflict,
                            seq: 0,
                            flushed: None,
                        },
                        None => {
                            let seq = self.next_seq;
                            self.next_seq += 1;
                            pending.insert(
                                event.id.clone(),
                                Pending {
                                    payload: event.payload,
                                    seq,
                                },
                            );
                            group.push(Entry {
                                seq,
                                id: event.id,
                                payload,
                                received_at: now,
                            });
                            Logged {
                                outcome: AcceptOutcome::Accepted,
                                seq,
                                flushed: Some(watch_flush(&mut waiters)),
                            }
                        }
                    });
                }
                encode_all(buf, &group);
                let new = !group.is_empty();
                entries.append(&mut group);
                answers.push((reply, Ok(logged), new));
            }
        }
        if !buf.is_empty() {
            match self.file.write_all_at(buf, self.written) {
                Ok(()) => {
                    self.written += buf.len() as u64;
                    let last = self.next_seq - 1;
                    if let Some(segment) = lock(&self.shared.segments).back_mut() {
                        segment.last_seq = last;
                    }
                    self.shared.request_flush(
                        last,
                        &self.file,
                        std::mem::take(&mut waiters),
                        more_coming,
                    );
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
                    for (_, answer, new) in &mut answers {
                        if *new {
                            *answer = Err(failed.clone());
                        }
                    }
                    // The waiters stay: duplicates of older events still wait for their flush
                    // (the failed events' answers, and so their signals, are dropped).
                    // The failed write may have left part of a record: continue in a new file.
                    self.written = SEGMENT_BYTES;
                }
            }
            buf.clear();
        }
        if !waiters.is_empty() {
            // Only duplicates of events still waiting for their flush: the next flush covers them.
            self.shared
                .request_flush(self.next_seq - 1, &self.file, waiters, more_coming);
        }
        if self.written + HEADROOM > SEGMENT_BYTES {
            self.rotate();
        }
        for (reply, answer, _) in answers {
            // A dropped receiver means the caller gave up; the events are logged all the same.
            let _ = reply.send(answer);
        }
    }

    fn rotate(&mut self) {
        match self.shared.new_segment() {
            Ok((path, file, unprepared)) => {
                self.file = Arc::new(file);
                self.written = 0;
                lock(&self.shared.segments).push_back(Segment { path, last_seq: 0 });
                // A prepared segment's directory entry is flushed already.
                lock(&self.shared.flush).dir_changed |= unprepared;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start a new journal segment; continuing in the current one");
            }
        }
    }
}

fn watch_flush(waiters: &mut Vec<oneshot::Sender<()>>) -> oneshot::Receiver<()> {
    let (tx, rx) = oneshot::channel();
    waiters.push(tx);
    rx
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
    let mut last_started = Instant::now();
    loop {
        let (upto, files, dir_changed, waiters) = {
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
            // Right after a flush, or while a burst is being written, let the next writes join
            // this flush, briefly.
            let floor = last_started + MIN_FLUSH_INTERVAL;
            let gather_until = Instant::now() + GATHER_MAX;
            while (request.more_coming || Instant::now() < floor) && !request.closed {
                let until = if request.more_coming {
                    gather_until.max(floor)
                } else {
                    floor
                };
                let Some(left) = until.checked_duration_since(Instant::now()) else {
                    break;
                };
                request = shared
                    .flush_wanted
                    .wait_timeout(request, left)
                    .map(|(guard, _)| guard)
                    .unwrap_or_else(|poisoned| poisoned.into_inner().0);
            }
            (
                request.upto,
                std::mem::take(&mut request.files),
                std::mem::take(&mut request.dir_changed),
                std::mem::take(&mut request.waiters),
            )
        };
        if !stall.is_zero() {
            std::thread::sleep(stall);
        }
        let started = Instant::now();
        last_started = started;
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
                for waiter in waiters {
                    // A dropped receiver: that answer went out at its deadline already.
                    let _ = waiter.send(());
                }
            }
            Err(e) => {
                // Try again with the next flush; the events stay acknowledged or waiting.
                tracing::error!(error = %e, "cannot flush the journal; retrying");
                let mut request = lock(&shared.flush);
                request.files.extend(files);
                request.dir_changed |= dir_changed;
                request.waiters.extend(waiters);
                drop(request);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, id: &str) -> Entry {
        Entry {
            seq,
            id: id.into(),
            payload: format!(r#"{{"id":"{id}"}}"#),
            received_at: 5,
        }
    }

    #[test]
    fn a_group_record_is_read_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("000000000001.log");
        let mut buf = Vec::new();
        encode_all(&mut buf, &[entry(1, "solo")]);
        let group: Vec<Entry> = (2..=4).map(|s| entry(s, &format!("g{s}"))).collect();
        encode_all(&mut buf, &group);
        encode_all(&mut buf, &[]);
        fs::write(&path, &buf).unwrap();
        let (entries, stopped) = read_segment(&path).unwrap();
        assert_eq!(stopped, None);
        assert_eq!(entries[0], entry(1, "solo"));
        assert_eq!(entries[1..], group[..]);

        // Cut anywhere inside the group: the group is gone, the record before it stays.
        let solo_len = {
            let mut one = Vec::new();
            encode_all(&mut one, &[entry(1, "solo")]);
            one.len()
        };
        for cut in [solo_len + 3, solo_len + 20, buf.len() - 1] {
            fs::write(&path, &buf[..cut]).unwrap();
            let (entries, stopped) = read_segment(&path).unwrap();
            assert_eq!(entries, [entry(1, "solo")], "cut at {cut}");
            assert!(stopped.is_some());
        }
    }

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
