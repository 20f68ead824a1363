//! Every filesystem call the store makes outside SQLite (the journal's writes and flushes, the
//! segments it prepares, the archive's files and renames, the quarantine), through one place, so
//! that a test can make any of them fail, fall short or stall on a schedule ([`Faults`]).
//!
//! Without a schedule each call is the plain `std::fs` one. With one, a flush that is made to
//! fail also throws away what was written to that file since its last good flush (it zeroes
//! those bytes), as Linux may after a failed writeback: the pages are marked clean and a later
//! flush that succeeds proves nothing about them. That is the case the store must survive.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a call is for: a fault rule names the part of the store it hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The journal's writes and flushes of its segments.
    Journal,
    /// Segments prepared ahead of need (created, zero-filled, flushed).
    Segment,
    /// Archive files: written, flushed, renamed into place.
    Archive,
    /// Damaged journal bytes kept aside at start.
    Quarantine,
    /// SQLite's commits (`write`) and checkpoints (`flush`), as the writer sees them.
    Index,
}

/// The kind of call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Create,
    Write,
    Flush,
    Rename,
    Remove,
}

/// What happens to a call a rule hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Fails with EIO (after this long, as a disk that gives up; at once if zero). A flush
    /// also drops what it would have made durable.
    Error(Duration),
    /// A write that stores the first half of its bytes, then fails with EIO.
    Short,
    /// Sleeps this long, then does the call.
    Stall(Duration),
}

/// Which of the matching calls a rule hits, counted from 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum When {
    Always,
    Nth(u64),
    From(u64),
    Range(u64, u64),
    Every(u64),
    /// Each call with this probability, from the schedule's seeded generator.
    Chance(f64),
}

#[derive(Debug, Clone, PartialEq)]
struct Rule {
    op: Op,
    part: Option<Part>,
    fault: Fault,
    when: When,
}

/// A schedule of faults, shared by every file of one store. Parsed from a spec such as
/// `flush.journal=error@3,write.journal=short@p:0.01,flush.*=stall:2s@every:10` (see
/// [`Faults::parse`]); `RELAY_FAULTS` takes one when the `fault-injection` feature is built in.
pub struct Faults {
    rules: Vec<Rule>,
    state: Mutex<State>,
}

struct State {
    /// Matching calls so far, per rule.
    counts: Vec<u64>,
    rng: fastrand::Rng,
    /// Faults injected so far, for tests and logs.
    injected: u64,
}

impl fmt::Debug for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Faults")
            .field("rules", &self.rules)
            .finish_non_exhaustive()
    }
}

impl Faults {
    /// Parses a schedule: rules separated by commas, each `OP.PART=FAULT[@WHEN]`.
    ///
    /// - OP: `create`, `write`, `flush`, `rename`, `remove`
    /// - PART: `journal`, `segment`, `archive`, `quarantine`, `index`, or `*`
    /// - FAULT: `error`, `error:DURATION` (fails after that long), `short` (writes only),
    ///   `stall:DURATION` (`250ms`, `2s`: then the call is made)
    /// - WHEN: `N` (the Nth call), `N..` (from the Nth on), `N..M`, `every:K`, `p:F`
    ///   (probability); every call when left out
    pub fn parse(spec: &str, seed: u64) -> Result<Self, String> {
        let rules = spec
            .split(',')
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(parse_rule)
            .collect::<Result<Vec<_>, _>>()?;
        if rules.is_empty() {
            return Err("a fault schedule needs at least one rule".into());
        }
        Ok(Faults {
            state: Mutex::new(State {
                counts: vec![0; rules.len()],
                rng: fastrand::Rng::with_seed(seed),
                injected: 0,
            }),
            rules,
        })
    }

    /// How many faults have been injected so far.
    pub fn injected(&self) -> u64 {
        self.lock().injected
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The fault for this call, if any; stalls are slept here, before the call.
    fn hit(&self, op: Op, part: Part) -> Option<Fault> {
        let fault = {
            let mut state = self.lock();
            let mut chosen = None;
            for (i, rule) in self.rules.iter().enumerate() {
                if rule.op != op || rule.part.is_some_and(|p| p != part) {
                    continue;
                }
                state.counts[i] += 1;
                let n = state.counts[i];
                let hits = match rule.when {
                    When::Always => true,
                    When::Nth(k) => n == k,
                    When::From(k) => n >= k,
                    When::Range(a, b) => (a..=b).contains(&n),
                    When::Every(k) => k > 0 && n.is_multiple_of(k),
                    When::Chance(p) => state.rng.f64() < p,
                };
                if hits && chosen.is_none() {
                    chosen = Some(rule.fault);
                }
            }
            if chosen.is_some() {
                state.injected += 1;
            }
            chosen
        };
        match fault {
            Some(Fault::Stall(d)) => {
                tracing::debug!(?op, ?part, ?d, "fault injection: stalling a call");
                std::thread::sleep(d);
                None
            }
            Some(Fault::Error(after)) => {
                tracing::warn!(
                    ?op,
                    ?part,
                    fault = "error",
                    "fault injection: failing a call"
                );
                std::thread::sleep(after);
                Some(Fault::Error(after))
            }
            Some(f) => {
                tracing::warn!(?op, ?part, fault = ?f, "fault injection: failing a call");
                Some(f)
            }
            None => None,
        }
    }
}

fn parse_rule(raw: &str) -> Result<Rule, String> {
    let bad = |why: &str| format!("fault rule {raw:?}: {why} (expected OP.PART=FAULT[@WHEN])");
    let (target, action) = raw.split_once('=').ok_or_else(|| bad("no `=`"))?;
    let (op, part) = target.split_once('.').ok_or_else(|| bad("no `.PART`"))?;
    let op = match op.trim() {
        "create" => Op::Create,
        "write" => Op::Write,
        "flush" => Op::Flush,
        "rename" => Op::Rename,
        "remove" => Op::Remove,
        _ => return Err(bad("OP is create, write, flush, rename or remove")),
    };
    let part = match part.trim() {
        "journal" => Some(Part::Journal),
        "segment" => Some(Part::Segment),
        "archive" => Some(Part::Archive),
        "quarantine" => Some(Part::Quarantine),
        "index" => Some(Part::Index),
        "*" => None,
        _ => {
            return Err(bad(
                "PART is journal, segment, archive, quarantine, index or *",
            ));
        }
    };
    let (fault, when) = match action.split_once('@') {
        Some((f, w)) => (f.trim(), Some(w.trim())),
        None => (action.trim(), None),
    };
    let fault = match fault.split_once(':') {
        None if fault == "error" => Fault::Error(Duration::ZERO),
        None if fault == "short" => Fault::Short,
        Some(("error", d)) => Fault::Error(
            humantime::parse_duration(d).map_err(|e| bad(&format!("error delay: {e}")))?,
        ),
        Some(("stall", d)) => Fault::Stall(
            humantime::parse_duration(d).map_err(|e| bad(&format!("stall duration: {e}")))?,
        ),
        _ => {
            return Err(bad(
                "FAULT is error, error:DURATION, short or stall:DURATION",
            ));
        }
    };
    if fault == Fault::Short && op != Op::Write {
        return Err(bad("only writes can be short"));
    }
    let count = |s: &str| {
        s.trim()
            .parse::<u64>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| bad("counts start at 1"))
    };
    let when = match when {
        None => When::Always,
        Some(w) if w.starts_with("every:") => When::Every(count(&w[6..])?),
        Some(w) if w.starts_with("p:") => {
            let p: f64 = w[2..].parse().map_err(|_| bad("p:F takes a probability"))?;
            if !(0.0..=1.0).contains(&p) {
                return Err(bad("a probability is from 0 to 1"));
            }
            When::Chance(p)
        }
        Some(w) => match w.split_once("..") {
            Some((a, "")) => When::From(count(a)?),
            Some((a, b)) => When::Range(count(a)?, count(b)?),
            None => When::Nth(count(w)?),
        },
    };
    Ok(Rule {
        op,
        part,
        fault,
        when,
    })
}

fn eio(what: &str) -> io::Error {
    io::Error::other(format!("injected fault: {what} (EIO)"))
}

/// The filesystem, for one part of the store.
#[derive(Debug, Clone)]
pub(crate) struct Disk {
    part: Part,
    faults: Option<Arc<Faults>>,
}

impl Disk {
    pub(crate) fn new(part: Part, faults: Option<Arc<Faults>>) -> Self {
        Disk { part, faults }
    }

    /// A fault for this call, if the schedule has one.
    pub(crate) fn fault(&self, op: Op) -> Option<Fault> {
        self.faults.as_ref()?.hit(op, self.part)
    }

    /// `Err` if the schedule fails this call (for calls made elsewhere, such as SQLite's).
    pub(crate) fn check(&self, op: Op) -> io::Result<()> {
        match self.fault(op) {
            Some(_) => Err(eio(&format!("{op:?} of the {:?}", self.part))),
            None => Ok(()),
        }
    }

    /// Creates a new file (it must not exist), private to its owner.
    pub(crate) fn create_new(&self, path: &Path) -> io::Result<DiskFile> {
        self.check(Op::Create)?;
        let file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .read(true)
            .mode(0o600)
            .open(path)?;
        Ok(self.wrap(file, path))
    }

    fn wrap(&self, file: File, path: &Path) -> DiskFile {
        DiskFile {
            file,
            path: path.to_owned(),
            disk: self.clone(),
            at: 0,
            unflushed: Mutex::default(),
        }
    }

    /// Flushes a directory, so that the files created or renamed in it survive a power cut.
    pub(crate) fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        if self.fault(Op::Flush).is_some() {
            return Err(eio(&format!("flush of directory {}", dir.display())));
        }
        File::open(dir)?.sync_all()
    }

    pub(crate) fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.check(Op::Rename)?;
        fs::rename(from, to)
    }

    pub(crate) fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.check(Op::Remove)?;
        fs::remove_file(path)
    }
}

/// A file written through a [`Disk`]: positioned writes (the journal) or a stream (the
/// archive), and flushes.
#[derive(Debug)]
pub(crate) struct DiskFile {
    file: File,
    path: PathBuf,
    disk: Disk,
    /// Where the next streamed write goes.
    at: u64,
    /// Ranges written since the last good flush, kept only under a fault schedule: what a
    /// failed flush throws away.
    unflushed: Mutex<Vec<(u64, usize)>>,
}

impl DiskFile {
    /// The same file, its calls counted for another part of the store from now on: a
    /// segment prepared by one thread and written by the journal.
    pub(crate) fn handed_to(mut self, disk: &Disk) -> Self {
        self.disk = disk.clone();
        self
    }

    pub(crate) fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        match self.disk.fault(Op::Write) {
            Some(Fault::Short) => {
                let half = &buf[..buf.len() / 2];
                self.file.write_all_at(half, offset)?;
                self.note(offset, half.len());
                Err(eio(&format!("short write to {}", self.path.display())))
            }
            Some(_) => Err(eio(&format!("write to {}", self.path.display()))),
            None => {
                self.file.write_all_at(buf, offset)?;
                self.note(offset, buf.len());
                Ok(())
            }
        }
    }

    fn note(&self, offset: u64, len: usize) {
        if self.disk.faults.is_some() && len > 0 {
            lock(&self.unflushed).push((offset, len));
        }
    }

    /// `fdatasync`. A failure injected here first zeroes what was written since the last good
    /// flush: those bytes are gone, as the kernel may drop pages whose writeback failed.
    pub(crate) fn sync_data(&self) -> io::Result<()> {
        self.sync(false)
    }

    /// `fsync`: the data and the file's size and times.
    pub(crate) fn sync_all(&self) -> io::Result<()> {
        self.sync(true)
    }

    fn sync(&self, all: bool) -> io::Result<()> {
        if self.disk.fault(Op::Flush).is_some() {
            let lost = std::mem::take(&mut *lock(&self.unflushed));
            for (offset, len) in &lost {
                self.file.write_all_at(&vec![0; *len], *offset)?;
            }
            let bytes: usize = lost.iter().map(|(_, len)| len).sum();
            return Err(eio(&format!(
                "flush of {} ({bytes} unflushed bytes lost)",
                self.path.display()
            )));
        }
        if all {
            self.file.sync_all()?;
        } else {
            self.file.sync_data()?;
        }
        lock(&self.unflushed).clear();
        Ok(())
    }
}

impl Write for DiskFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all_at(buf, self.at)?;
        self.at += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Creates `dir` and its missing parents, readable by their owner alone: what relay stores is
/// the sources' data.
pub(crate) fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Makes `path`, if missing, an empty file private to its owner, for SQLite to open: SQLite
/// gives a database's `-wal` and `-shm` files the database file's mode.
pub(crate) fn precreate_private(path: &Path) -> io::Result<()> {
    match OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Writes `path` whole, private to its owner (for small files other processes read).
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)
}

/// Takes group and other access away from the data directory, if an older relay or an
/// operator left it open; says so when it does.
pub(crate) fn make_private(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(dir)?.permissions().mode();
    if mode & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(mode & 0o700))?;
        tracing::warn!(
            dir = %dir.display(),
            was = format!("{:o}", mode & 0o777),
            now = format!("{:o}", mode & 0o700),
            "the data directory was open to other users; it is now its owner's alone"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_parse_and_refuse_nonsense() {
        let f = Faults::parse(
            "flush.journal=error@3, write.*=short@p:0.5, create.segment=stall:10ms@2..4, remove.archive=error@every:2, rename.archive=error@5..",
            1,
        )
        .unwrap();
        assert_eq!(f.rules.len(), 5);
        assert_eq!(f.rules[0].when, When::Nth(3));
        assert_eq!(f.rules[2].fault, Fault::Stall(Duration::from_millis(10)));
        assert_eq!(f.rules[3].when, When::Every(2));
        assert_eq!(f.rules[4].when, When::From(5));
        for bad in [
            "",
            "flush.journal",
            "fsync.journal=error",
            "flush.disk=error",
            "flush.journal=short",
            "write.journal=error@0",
            "write.journal=error@p:2",
            "write.journal=stall:soon",
        ] {
            assert!(Faults::parse(bad, 1).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_nth_call_fails_and_a_failed_flush_loses_what_it_covered() {
        let dir = tempfile::tempdir().unwrap();
        let faults = Arc::new(Faults::parse("flush.journal=error@2", 1).unwrap());
        let disk = Disk::new(Part::Journal, Some(Arc::clone(&faults)));
        let file = disk.create_new(&dir.path().join("f")).unwrap();
        file.write_all_at(b"kept", 0).unwrap();
        file.sync_data().unwrap();
        file.write_all_at(b"lost", 4).unwrap();
        let err = file.sync_data().unwrap_err();
        assert!(err.to_string().contains("4 unflushed bytes lost"), "{err}");
        // A later flush succeeds, and proves nothing about the lost bytes.
        file.sync_data().unwrap();
        assert_eq!(fs::read(dir.path().join("f")).unwrap(), b"kept\0\0\0\0");
        assert_eq!(faults.injected(), 1);
        // Other parts of the store are not hit by a journal rule.
        let archive = Disk::new(Part::Archive, Some(faults));
        let other = archive.create_new(&dir.path().join("g")).unwrap();
        other.sync_data().unwrap();
        other.sync_data().unwrap();
    }

    #[test]
    fn a_short_write_stores_half_and_fails() {
        let dir = tempfile::tempdir().unwrap();
        let faults = Arc::new(Faults::parse("write.*=short@1", 1).unwrap());
        let disk = Disk::new(Part::Journal, Some(faults));
        let file = disk.create_new(&dir.path().join("f")).unwrap();
        assert!(file.write_all_at(b"abcdef", 0).is_err());
        file.write_all_at(b"XY", 6).unwrap();
        assert_eq!(fs::read(dir.path().join("f")).unwrap(), b"abc\0\0\0XY");
    }
}
