//! Whether the store can keep its promise right now. A failed flush of the journal, or an I/O
//! error of SQLite, makes it *failing*: ingest answers 503 instead of 2xx until it recovers,
//! `/health` says so, and `relay status` (another process) reads it from `failing.json` in the
//! data directory.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

use relay_core::UnixMillis;

/// The file a failing store leaves for `relay status`; removed once it recovers.
pub(crate) const FILE: &str = "failing.json";

/// What is failing, as `relay status` shows it.
pub type Failing = relay_core::ops::StoreFailing;

#[derive(Debug)]
pub(crate) struct Health {
    file: PathBuf,
    failing: Mutex<BTreeMap<&'static str, Failing>>,
    /// A journal flush failed and what it covered is not yet written again elsewhere: nothing
    /// may be acknowledged until it is.
    recovering: AtomicBool,
    /// Whether `failing` holds anything: every request asks, and must not queue on a lock.
    any: AtomicBool,
}

impl Health {
    pub(crate) fn new(data_dir: &std::path::Path) -> Self {
        // Left by a run that stopped while failing: this one starts afresh (its start replayed
        // the journal, so whatever that run had written is indexed now).
        for was in read(data_dir) {
            tracing::warn!(part = %was.part, reason = %was.reason, since = was.since,
                "the last run stopped while the store was failing");
        }
        let _ = std::fs::remove_file(data_dir.join(FILE));
        Health {
            file: data_dir.join(FILE),
            failing: Mutex::default(),
            recovering: AtomicBool::new(false),
            any: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, Failing>> {
        self.failing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `part` fails, for `reason`; logged once per change.
    pub(crate) fn set(&self, part: &'static str, reason: String, now: UnixMillis) {
        let mut failing = self.lock();
        let changed = failing.get(part).is_none_or(|f| f.reason != reason);
        if !changed {
            return;
        }
        let since = failing.get(part).map_or(now, |f| f.since);
        tracing::error!(part, %reason, "the store is failing: no event is acknowledged until it recovers");
        failing.insert(
            part,
            Failing {
                part: part.to_owned(),
                since,
                reason,
            },
        );
        self.publish(&failing);
    }

    /// `part` works again.
    pub(crate) fn clear(&self, part: &'static str) {
        let mut failing = self.lock();
        if let Some(was) = failing.remove(part) {
            tracing::warn!(part, was = %was.reason, "the store has recovered");
            self.publish(&failing);
        }
    }

    pub(crate) fn set_recovering(&self, recovering: bool) {
        self.recovering.store(recovering, SeqCst);
    }

    pub(crate) fn recovering(&self) -> bool {
        self.recovering.load(SeqCst)
    }

    /// Why ingest must refuse events now, if it must.
    pub(crate) fn refusing(&self) -> Option<String> {
        if !self.any.load(SeqCst) && !self.recovering() {
            return None;
        }
        let failing = self.lock();
        if !failing.is_empty() {
            let reasons: Vec<String> = failing
                .values()
                .map(|f| format!("{}: {}", f.part, f.reason))
                .collect();
            return Some(reasons.join("; "));
        }
        self.recovering()
            .then(|| "journal: recovering from a failed flush".to_owned())
    }

    /// Best effort: the disk may be what fails.
    fn publish(&self, failing: &BTreeMap<&'static str, Failing>) {
        self.any.store(!failing.is_empty(), SeqCst);
        if failing.is_empty() {
            let _ = std::fs::remove_file(&self.file);
            return;
        }
        let report: Vec<&Failing> = failing.values().collect();
        let Ok(text) = serde_json::to_vec_pretty(&report) else {
            return;
        };
        let partial = self.file.with_extension("json.partial");
        if crate::disk::write_private(&partial, &text).is_ok() {
            let _ = std::fs::rename(&partial, &self.file);
        }
    }
}

/// What a store left in `failing.json`, if anything: read by other processes.
pub(crate) fn read(data_dir: &std::path::Path) -> Vec<Failing> {
    std::fs::read(data_dir.join(FILE))
        .ok()
        .and_then(|text| serde_json::from_slice(&text).ok())
        .unwrap_or_default()
}
