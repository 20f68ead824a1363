//! The ingest journal: where `accept` commits an event. Events are appended to a segment file,
//! one `write` per group of requests, and a separate flusher thread makes what was written
//! durable with `fdatasync`. Writing and flushing are pipelined: while one flush waits on the
//! disk, the next groups are written, and the next flush covers them all.
//!
//! Why one file of about a thousand lines: the write path, the flusher thread, its recovery
//! from a failed flush and the replay at open share the journal's private state (`Shared`,
//! `FlushRequest`, the open segments) and one invariant, that a 2xx follows a flush or its
//! deadline. Split, each part would reach into the others' internals; each function here does
//! one of those things.
//!
//! SQLite (the index and work queue) is updated from the journal by the writer thread, off the
//! ingest path; its checkpoints and their fsyncs never hold an acknowledgement back. A segment
//! is deleted once SQLite holds every event in it durably (after a checkpoint), and a restart
//! replays whatever segments are left.
//!
//! Segments are zero-filled to their full size and flushed before they are used, by a thread of
//! their own, and records are then written in place: a flush only has data to write, never the
//! file's size or block map, so it does not wait for the filesystem's own journal (and for
//! whatever other files have queued there). The records' layout is in [`crate::record`].
//!
//! **A failed flush is never retried on trust.** After a failed `fdatasync` the kernel may have
//! dropped the pages it could not write, so a later flush that succeeds proves nothing about
//! them. The journal keeps a copy of everything written since the last good flush; when a
//! flush fails it writes all of it again into a new segment and flushes that. Until that has
//! worked the store is failing: no event is acknowledged, and nothing written since the last
//! good flush is called durable.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use relay_core::ports::Clock;
use relay_core::{AcceptOutcome, Event, StoreError};
use rusqlite::{Connection, OptionalExtension};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot, watch};

use crate::disk::{Disk, DiskFile};
use crate::health::Health;
pub(crate) use crate::record::Entry;
use crate::record::{encode_all, read_segment};
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
/// How often a journal that could not recover from a failed flush tries again.
const RECOVERY_RETRY: Duration = Duration::from_millis(250);
/// Most requests logged with one `write`.
const MAX_BATCH: usize = 4096;
/// Logged events SQLite has not caught up with yet, beyond which ingest answers 503: the
/// writer is stuck, and memory must not grow without end.
const MAX_PENDING: usize = 200_000;

/// A request to log events, all of them or none: one event, or a batch request's.
#[derive(Debug)]
pub(crate) struct Accept {
    /// Each event with its payload serialized by the caller, off this thread.
    pub(crate) events: Vec<(Event, String)>,
    /// One answer per event, in order.
    pub(crate) reply: oneshot::Sender<Result<Vec<Logged>, StoreError>>,
}

/// Told once a flush covers a sequence number: `Ok` when it is durable, `Err` when the flush
/// failed and the journal could not make it durable otherwise.
pub(crate) type Flushed = Result<(), StoreError>;
type Waiter = oneshot::Sender<Flushed>;

/// What the journal answered: the outcome, the sequence number whose flush makes it durable,
/// and a signal fired once that flush has landed (`None`: nothing to wait for).
#[derive(Debug)]
pub(crate) struct Logged {
    pub(crate) outcome: AcceptOutcome,
    pub(crate) seq: u64,
    pub(crate) flushed: Option<oneshot::Receiver<Flushed>>,
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
    /// Flushes that failed.
    pub failed_flushes: AtomicU64,
    /// Times the journal wrote what a failed flush covered again, into a new segment.
    pub recoveries: AtomicU64,
    /// Writes that failed (their events were refused).
    pub failed_writes: AtomicU64,
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
    /// The segment being written. The journal thread writes under it, and a recovery swaps it.
    current: Mutex<Current>,
    /// Every record written since the last good flush, in order (last sequence number, bytes):
    /// what a failed flush may have lost, written again by [`recover_from_failed_flush`].
    unflushed: Mutex<VecDeque<(u64, Vec<u8>)>>,
    segments: Mutex<VecDeque<Segment>>,
    /// A segment prepared ahead of need, for the next rotation.
    spare: Mutex<Spare>,
    spare_wanted: Condvar,
    next_segment: AtomicU64,
    pub(crate) stats: FlushStats,
    pub(crate) health: Health,
    clock: Arc<dyn Clock>,
    /// The journal's writes and flushes; `segments` prepares them.
    disk: Disk,
    segment_disk: Disk,
}

#[derive(Debug)]
struct Current {
    file: Arc<DiskFile>,
    /// Bytes in it.
    written: u64,
}

#[derive(Debug, Default)]
struct Spare {
    ready: Option<(PathBuf, DiskFile)>,
    closed: bool,
}

#[derive(Debug, Default)]
struct FlushRequest {
    upto: u64,
    /// Files written since their last flush.
    files: Vec<Arc<DiskFile>>,
    /// Answers waiting for a flush, each told once: one wake-up per request, not one per
    /// request per flush.
    waiters: Vec<Waiter>,
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
            if let Err(e) = self.disk.remove_file(&segment.path) {
                tracing::warn!(path = %segment.path.display(), error = %e, "cannot delete an applied journal segment; the next start replays it again, which changes nothing");
            }
        }
    }

    fn request_flush(
        &self,
        upto: u64,
        file: &Arc<DiskFile>,
        waiters: Vec<Waiter>,
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

    /// Everything up to `seq` is on disk.
    fn publish(&self, seq: u64) {
        self.durable.send_if_modified(|durable| {
            let raised = seq > *durable;
            *durable = (*durable).max(seq);
            raised
        });
    }

    fn close(&self) {
        lock(&self.flush).closed = true;
        self.flush_wanted.notify_one();
        lock(&self.spare).closed = true;
        self.spare_wanted.notify_one();
    }

    /// A new segment: the prepared spare if there is one, else a plain file (its flushes then
    /// also write its growing size, which is slower but just as safe). `true`: its directory
    /// entry still needs a flush.
    fn new_segment(&self) -> io::Result<(PathBuf, DiskFile, bool)> {
        let spare = lock(&self.spare).ready.take();
        self.spare_wanted.notify_one();
        if let Some((path, file)) = spare {
            return Ok((path, file.handed_to(&self.disk), false));
        }
        let number = self.next_segment.fetch_add(1, Relaxed);
        let path = self.dir.join(segment_name(number));
        let file = self.segment_disk.create_new(&path)?.handed_to(&self.disk);
        Ok((path, file, true))
    }
}

fn segment_name(number: u64) -> String {
    format!("{number:012}.log")
}

/// Creates a segment zero-filled to [`SEGMENT_BYTES`] and flushes it, with its directory entry.
fn prepare_segment(disk: &Disk, dir: &Path, number: u64) -> io::Result<(PathBuf, DiskFile)> {
    let path = dir.join(segment_name(number));
    let file = disk.create_new(&path)?;
    let zeros = vec![0u8; 1 << 20];
    for i in 0..SEGMENT_BYTES / zeros.len() as u64 {
        file.write_all_at(&zeros, i * zeros.len() as u64)?;
    }
    file.sync_all()?;
    disk.sync_dir(dir)?;
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
        match prepare_segment(&shared.segment_disk, &shared.dir, number) {
            Ok(ready) => lock(&shared.spare).ready = Some(ready),
            Err(e) => {
                tracing::warn!(error = %e, "cannot prepare a journal segment; retrying in 1 s");
                // What it left is no segment: a later start must not read it as one.
                let _ = std::fs::remove_file(shared.dir.join(segment_name(number)));
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
pub(crate) fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut numbered: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)?
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
    crate::disk::create_private_dir(&dir)?;
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
        let (entries, _, _) = match read_segment(&path) {
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
    pub(crate) disk: Disk,
    pub(crate) segment_disk: Disk,
}

/// Starts the journal and flusher threads on a fresh segment, after recovery.
pub(crate) fn start(
    recovered: &Recovered,
    start: Start,
    rx: mpsc::Receiver<Accept>,
) -> io::Result<Handle> {
    let dir = start.data_dir.join(DIR);
    // The first segment: a disk that fails a moment is given a few more.
    let mut number = recovered.next_segment;
    let (path, file) = loop {
        match prepare_segment(&start.segment_disk, &dir, number) {
            Ok(ready) => break ready,
            Err(e) if number < recovered.next_segment + 4 => {
                tracing::warn!(error = %e, "cannot prepare the first journal segment; trying again");
                let _ = std::fs::remove_file(dir.join(segment_name(number)));
                number += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(e),
        }
    };
    let file = file.handed_to(&start.disk);
    let durable_seq = recovered.next_seq - 1;
    let shared = Arc::new(Shared {
        dir: dir.clone(),
        pending: Mutex::default(),
        durable: watch::Sender::new(durable_seq),
        checkpointed: AtomicU64::new(durable_seq),
        flush: Mutex::default(),
        flush_wanted: Condvar::new(),
        current: Mutex::new(Current {
            file: Arc::new(file),
            written: 0,
        }),
        unflushed: Mutex::default(),
        segments: Mutex::new(VecDeque::from([Segment { path, last_seq: 0 }])),
        spare: Mutex::default(),
        spare_wanted: Condvar::new(),
        next_segment: AtomicU64::new(number + 1),
        stats: FlushStats::default(),
        health: Health::new(&start.data_dir),
        clock: Arc::clone(&start.clock),
        disk: start.disk,
        segment_disk: start.segment_disk,
    });
    let journal = Journal {
        shared: Arc::clone(&shared),
        lookup: start.lookup,
        clock: start.clock,
        apply: start.apply,
        next_seq: recovered.next_seq,
    };
    let flusher = {
        let shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("relay-store-flusher".into())
            .spawn(move || flush_loop(&shared))?
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
    next_seq: u64,
}

type Reply = oneshot::Sender<Result<Vec<Logged>, StoreError>>;
/// What is known of an id already: `Some((same payload?, its sequence number))`.
type Known = Option<(bool, u64)>;

/// One request's answer as it is being built: the reply, the answer, and the sequence numbers
/// of the new events it logged (which a failed write takes back).
struct Answer {
    reply: Reply,
    answer: Result<Vec<Logged>, StoreError>,
    new: Option<(u64, u64)>,
}

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
        if let Some(reason) = self.shared.health.refusing() {
            for accept in batch.drain(..) {
                let _ = accept.reply.send(Err(StoreError::Failing(reason.clone())));
            }
            return;
        }
        let known = self.known(batch);
        let mut entries = Vec::new();
        let mut waiters = Vec::new();
        let mut answers = Vec::with_capacity(batch.len());
        {
            let shared = Arc::clone(&self.shared);
            let mut pending = lock(&shared.pending);
            for (accept, known) in batch.drain(..).zip(known) {
                answers.push(self.stage(
                    accept,
                    known,
                    &mut pending,
                    &mut entries,
                    &mut waiters,
                    buf,
                ));
            }
        }
        if !buf.is_empty() {
            self.write(buf, entries, &mut waiters, &mut answers, more_coming);
            buf.clear();
        }
        if !waiters.is_empty() {
            // Only duplicates of events still waiting for their flush: the next flush covers them.
            let current = Arc::clone(&lock(&self.shared.current).file);
            self.shared
                .request_flush(self.next_seq - 1, &current, waiters, more_coming);
        }
        for Answer { reply, answer, .. } in answers {
            // A dropped receiver means the caller gave up; the events are logged all the same.
            let _ = reply.send(answer);
        }
    }

    /// What is known already of each event's id: among events not yet indexed, then (without
    /// holding the map, which the writer needs too) among indexed ones.
    fn known(&self, batch: &[Accept]) -> Vec<Result<Vec<Known>, StoreError>> {
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
        seen.into_iter()
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
            .collect()
    }

    /// One request's outcomes; its new events are encoded into `buf` as one record.
    fn stage(
        &mut self,
        Accept { events, reply }: Accept,
        known: Result<Vec<Known>, StoreError>,
        pending: &mut HashMap<String, Pending>,
        entries: &mut Vec<Entry>,
        waiters: &mut Vec<Waiter>,
        buf: &mut Vec<u8>,
    ) -> Answer {
        let refused = |reply, e| Answer {
            reply,
            answer: Err(e),
            new: None,
        };
        let known = match known {
            Ok(known) => known,
            Err(e) => return refused(reply, e),
        };
        if pending.len() + events.len() > MAX_PENDING {
            let behind = StoreError::Unavailable(
                "the store is behind: too many events wait to be indexed".into(),
            );
            return refused(reply, behind);
        }
        let now = self.clock.now();
        let durable = *self.shared.durable.borrow();
        let first_new = self.next_seq;
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
                // A duplicate is answered once its twin is durable, never before.
                Some((true, seq)) => Logged {
                    outcome: AcceptOutcome::Duplicate,
                    seq,
                    flushed: (seq > durable).then(|| watch_flush(waiters)),
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
                        flushed: Some(watch_flush(waiters)),
                    }
                }
            });
        }
        encode_all(buf, &group);
        let new = (!group.is_empty()).then(|| (first_new, self.next_seq - 1));
        entries.append(&mut group);
        Answer {
            reply,
            answer: Ok(logged),
            new,
        }
    }

    /// Writes the group's records with one `write`, keeps a copy until they are flushed, and
    /// hands the events to SQLite. If the write fails, no event of it is stored: their
    /// requests, and duplicates waiting on them, are refused.
    fn write(
        &mut self,
        buf: &[u8],
        entries: Vec<Entry>,
        waiters: &mut Vec<Waiter>,
        answers: &mut [Answer],
        more_coming: bool,
    ) {
        let last = self.next_seq - 1;
        let shared = Arc::clone(&self.shared);
        let mut current = lock(&shared.current);
        let offset = current.written;
        match current.file.write_all_at(buf, offset) {
            Ok(()) => {
                current.written += buf.len() as u64;
                if let Some(segment) = lock(&self.shared.segments).back_mut() {
                    segment.last_seq = last;
                }
                lock(&self.shared.unflushed).push_back((last, buf.to_vec()));
                self.shared.request_flush(
                    last,
                    &current.file,
                    std::mem::take(waiters),
                    more_coming,
                );
                if current.written + HEADROOM > SEGMENT_BYTES {
                    rotate(&shared, &mut current);
                }
                drop(current);
                // Before any answer, so whatever a caller does next reaches the writer after
                // the event itself.
                if self.apply.blocking_send(Job::Apply(entries)).is_err() {
                    tracing::error!(
                        "the store writer has stopped; logged events are indexed at the next start"
                    );
                }
            }
            Err(e) => {
                // What part of the group did land must not be read back as accepted.
                let _ = current.file.write_all_at(&vec![0; buf.len()], offset);
                // The failed write may have left part of a record: continue in a new file.
                rotate(&shared, &mut current);
                drop(current);
                shared.applied(&entries);
                shared.stats.failed_writes.fetch_add(1, Relaxed);
                tracing::error!(error = %e, events = entries.len(), "cannot write the journal; refusing this group of events");
                let failed = StoreError::Unavailable(format!("cannot write the journal: {e}"));
                let ranges: Vec<(u64, u64)> = answers.iter().filter_map(|a| a.new).collect();
                let lost = |seq: u64| ranges.iter().any(|(f, l)| (*f..=*l).contains(&seq));
                for a in answers.iter_mut() {
                    let twin_lost = a.answer.as_ref().is_ok_and(|logged| {
                        logged
                            .iter()
                            .any(|l| l.outcome == AcceptOutcome::Duplicate && lost(l.seq))
                    });
                    if a.new.is_some() || twin_lost {
                        a.answer = Err(failed.clone());
                    }
                }
                // The waiters stay: duplicates of older events still wait for their flush
                // (the failed events' answers, and so their signals, are dropped).
            }
        }
    }
}

/// Continues the journal in a new segment.
fn rotate(shared: &Shared, current: &mut Current) {
    match shared.new_segment() {
        Ok((path, file, unprepared)) => {
            current.file = Arc::new(file);
            current.written = 0;
            lock(&shared.segments).push_back(Segment { path, last_seq: 0 });
            // A prepared segment's directory entry is flushed already.
            lock(&shared.flush).dir_changed |= unprepared;
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot start a new journal segment; continuing in the current one");
        }
    }
}

fn watch_flush(waiters: &mut Vec<Waiter>) -> oneshot::Receiver<Flushed> {
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
/// A failed flush hands over to [`recover_from_failed_flush`], and nothing more is flushed until it has worked.
fn flush_loop(shared: &Shared) {
    let mut last_started = Instant::now();
    loop {
        if shared.health.recovering() {
            if !keep_recovering(shared) {
                return;
            }
            continue;
        }
        let Some(batch) = next_flush(shared, last_started) else {
            return;
        };
        last_started = Instant::now();
        flush(shared, batch);
    }
}

/// What one flush covers: the journal up to `upto`, its files, and the answers waiting for it.
struct FlushBatch {
    upto: u64,
    files: Vec<Arc<DiskFile>>,
    dir_changed: bool,
    waiters: Vec<Waiter>,
}

/// While the journal recovers from a failed flush: tries the recovery again (waiting a while
/// between tries). `false` when the journal closed first.
fn keep_recovering(shared: &Shared) -> bool {
    let (upto, waiters, closed) = {
        let mut request = lock(&shared.flush);
        // The old files are not flushed again: a success there would prove nothing.
        request.files.clear();
        (
            std::mem::take(&mut request.upto),
            std::mem::take(&mut request.waiters),
            request.closed,
        )
    };
    if closed {
        tracing::error!(
            "stopping before the journal recovered: events written since its last good flush may be lost to a power cut"
        );
        return false;
    }
    if !recover_from_failed_flush(shared, waiters, upto) {
        let request = lock(&shared.flush);
        let _ = shared
            .flush_wanted
            .wait_timeout(request, RECOVERY_RETRY)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
    }
    true
}

/// Waits for writes to flush, and gathers the ones that follow at once: right after a flush, or
/// while a burst is being written, the next writes join this flush, briefly. `None` when the
/// journal closed with nothing left to flush.
fn next_flush(shared: &Shared, last_started: Instant) -> Option<FlushBatch> {
    let mut request = lock(&shared.flush);
    while request.files.is_empty() && !request.closed {
        request = shared
            .flush_wanted
            .wait(request)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
    }
    if request.files.is_empty() {
        return None;
    }
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
    Some(FlushBatch {
        upto: std::mem::take(&mut request.upto),
        files: std::mem::take(&mut request.files),
        dir_changed: std::mem::take(&mut request.dir_changed),
        waiters: std::mem::take(&mut request.waiters),
    })
}

/// Flushes the batch's files (and the directory, when a segment was created); tells its
/// waiters their events are durable, or starts the recovery when the flush failed.
fn flush(shared: &Shared, batch: FlushBatch) {
    let FlushBatch {
        upto,
        files,
        dir_changed,
        waiters,
    } = batch;
    let started = Instant::now();
    let mut result = files.iter().try_for_each(|f| f.sync_data());
    if result.is_ok() && dir_changed {
        result = shared.disk.sync_dir(&shared.dir);
    }
    let took = started.elapsed();
    metrics::histogram!(relay_core::telemetry::FLUSH_SECONDS).record(took);
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
            lock(&shared.unflushed).retain(|(last, _)| *last > upto);
            shared.publish(upto);
            for waiter in waiters {
                // A dropped receiver: that answer went out at its deadline already.
                let _ = waiter.send(Ok(()));
            }
        }
        Err(e) => {
            stats.failed_flushes.fetch_add(1, Relaxed);
            shared.health.set_recovering(true);
            shared.health.set(
                "journal",
                format!("a journal flush failed ({e}); writing what it covered again"),
                shared.clock.now(),
            );
            recover_from_failed_flush(shared, waiters, upto);
        }
    }
}

/// After a failed flush: writes everything since the last good flush into a new segment, and
/// flushes that. On success the waiters are told their events are durable and the journal
/// goes on in the new segment; otherwise they are told it failed (503), and the flusher tries
/// again later. Says whether it worked.
fn recover_from_failed_flush(shared: &Shared, waiters: Vec<Waiter>, upto: u64) -> bool {
    // The journal thread writes under this lock: nothing is written while the copy is made.
    let mut current = lock(&shared.current);
    let chunks: Vec<(u64, Vec<u8>)> = lock(&shared.unflushed).iter().cloned().collect();
    let rewritten = rewrite(shared, &chunks);
    match rewritten {
        Ok((path, file, bytes)) => {
            let last = chunks.last().map_or(0, |(seq, _)| *seq);
            current.file = Arc::new(file);
            current.written = bytes;
            lock(&shared.segments).push_back(Segment {
                path: path.clone(),
                last_seq: last,
            });
            lock(&shared.unflushed).clear();
            // Nothing was written while this ran, so everything written so far is in the new
            // segment, flushed: every waiter can be told, those that queued for a flush of the
            // old files meanwhile too (no other flush would come for them).
            let (queued, queued_upto) = {
                let mut request = lock(&shared.flush);
                request.files.clear();
                (
                    std::mem::take(&mut request.waiters),
                    std::mem::take(&mut request.upto),
                )
            };
            drop(current);
            // Healthy again before anyone is told, so that what they do next is taken.
            shared.stats.recoveries.fetch_add(1, Relaxed);
            shared.health.set_recovering(false);
            shared.health.clear("journal");
            shared.publish(upto.max(queued_upto).max(last));
            for waiter in waiters.into_iter().chain(queued) {
                let _ = waiter.send(Ok(()));
            }
            tracing::warn!(
                records = chunks.len(),
                bytes,
                segment = %path.display(),
                "the journal recovered from a failed flush: what it covered is written again in a new segment, and flushed"
            );
            true
        }
        Err(e) => {
            drop(current);
            let reason = format!("cannot flush the journal, nor write it again elsewhere: {e}");
            shared
                .health
                .set("journal", reason.clone(), shared.clock.now());
            for waiter in waiters {
                let _ = waiter.send(Err(StoreError::Failing(reason.clone())));
            }
            false
        }
    }
}

/// `chunks` written into a new segment and flushed, with its directory entry. A segment that
/// could not be made so is removed again (it holds nothing the journal does not still hold).
fn rewrite(shared: &Shared, chunks: &[(u64, Vec<u8>)]) -> io::Result<(PathBuf, DiskFile, u64)> {
    let (path, file, unprepared) = shared.new_segment()?;
    let written = (|| {
        let mut at = 0;
        for (_, bytes) in chunks {
            file.write_all_at(bytes, at)?;
            at += bytes.len() as u64;
        }
        file.sync_data()?;
        if unprepared {
            shared.disk.sync_dir(&shared.dir)?;
        }
        Ok(at)
    })();
    match written {
        Ok(at) => Ok((path, file, at)),
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            Err(e)
        }
    }
}
