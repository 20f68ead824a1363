//! `relay store check`: is the store whole? SQLite's own integrity check, the index's rows
//! against each other, the journal against the index, what earlier starts kept aside, and the
//! archive's index against its files. Read-only, and safe while `relay up` runs.

use std::fs::OpenOptions;
use std::path::Path;

use rusqlite::{Connection, OpenFlags};
use serde::Serialize;

use crate::record::{DamageKind, read_segment};
use crate::{ARCHIVE_DIR, DB_FILE, LOCK_FILE, OpenError, QUARANTINE_DIR, journal};

/// How much a finding matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// All is well, or nothing to do.
    Ok,
    /// Worth knowing; nothing is lost.
    Note,
    /// Something is damaged or was lost: `relay store check` exits 1.
    Damage,
}

/// One thing checked, with a figure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub check: &'static str,
    pub count: u64,
    pub severity: Severity,
    /// What the figure means, and what to do about it when it is not `ok`.
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    /// Whether a `relay up` holds the data directory now.
    pub running: bool,
    pub events: u64,
    pub findings: Vec<Finding>,
}

impl CheckReport {
    pub fn damaged(&self) -> bool {
        self.findings.iter().any(|f| f.severity == Severity::Damage)
    }
}

fn finding(check: &'static str, count: u64, bad: Severity, ok: &str, detail: String) -> Finding {
    if count == 0 {
        Finding {
            check,
            count,
            severity: Severity::Ok,
            detail: ok.to_owned(),
        }
    } else {
        Finding {
            check,
            count,
            severity: bad,
            detail,
        }
    }
}

const RESTORE: &str =
    "restore from a backup (relay store backup; docs/runbook.md, \"The store is damaged\")";

/// Checks the store in `dir`.
pub fn check(dir: &Path) -> Result<CheckReport, OpenError> {
    let conn = open_index(dir)?;
    let running = lock_held(dir);
    let mut findings = vec![integrity(&conn)];
    let (events, index) = index_findings(&conn, running);
    findings.extend(index);
    findings.extend(journal_findings(dir, &conn, running)?);
    findings.push(quarantined(dir));
    findings.push(failing_parts(dir));
    findings.extend(archive_findings(dir));
    Ok(CheckReport {
        running,
        events,
        findings,
    })
}

/// The index, opened read and write as WAL readers need; the check never writes, and leaves its
/// journal mode as it is (a backup is one file, a live store WAL).
fn open_index(dir: &Path) -> Result<Connection, OpenError> {
    if !dir.is_dir() {
        return Err(OpenError::Missing(dir.into()));
    }
    let db = dir.join(DB_FILE);
    if !db.is_file() {
        return Err(OpenError::NotAStore(dir.into()));
    }
    let conn = Connection::open_with_flags(
        &db,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|source| OpenError::Sqlite {
        path: db.clone(),
        source,
    })?;
    let _ = conn.busy_timeout(std::time::Duration::from_secs(5));
    Ok(conn)
}

/// SQLite's own integrity check; one it cannot even run is damage too.
fn integrity(conn: &Connection) -> Finding {
    let problems: Vec<String> = conn
        .prepare("PRAGMA integrity_check(100)")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .unwrap_or_else(|e| vec![e.to_string()]);
    let problems: Vec<String> = problems
        .into_iter()
        .filter(|p| p != "ok")
        .map(|p| p.replace('\n', " "))
        .collect();
    finding(
        "index integrity (SQLite)",
        problems.len() as u64,
        Severity::Damage,
        "ok",
        format!(
            "relay.db is damaged: {}; {RESTORE}",
            problems
                .iter()
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        ),
    )
}

/// The index's tables against each other: (check, query, severity, what a count means).
const INDEX_CHECKS: [(&str, &str, Severity, &str); 5] = [
    (
        "events without a delivery",
        "SELECT count(*) FROM events e WHERE NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id)",
        Severity::Damage,
        "accepted events the work queue does not know: they are never delivered",
    ),
    (
        "deliveries without an event",
        "SELECT count(*) FROM deliveries d WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.id = d.event_id)",
        Severity::Damage,
        "work whose event is gone: it cannot be sent",
    ),
    (
        "dead deliveries without a dead letter",
        "SELECT count(*) FROM deliveries d WHERE d.status = 'dead' AND NOT EXISTS (SELECT 1 FROM dead_letters l WHERE l.event_id = d.event_id)",
        Severity::Damage,
        "dead events relay dlq list does not show",
    ),
    (
        "dead letters of events not dead",
        "SELECT count(*) FROM dead_letters l WHERE NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = l.event_id AND d.status = 'dead')",
        Severity::Damage,
        "dead letters relay dlq list shows for events that are not dead",
    ),
    (
        "attempts of unknown events",
        "SELECT count(*) FROM attempts a WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.id = a.event_id)",
        Severity::Note,
        "history left of events no longer in the store; harmless",
    ),
];

/// The events counted, and the index checks' findings. A count that cannot be read is reported
/// as damage, and the check goes on.
fn index_findings(conn: &Connection, running: bool) -> (u64, Vec<Finding>) {
    let mut unreadable = Vec::new();
    let mut count = |sql: &str| -> u64 {
        conn.query_row(sql, [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .unwrap_or_else(|e| {
                unreadable.push(e.to_string());
                0
            })
    };
    let events = count("SELECT count(*) FROM events");
    let mut findings = Vec::new();
    for (check, sql, severity, meaning) in INDEX_CHECKS {
        let n = count(sql);
        let detail = match severity {
            Severity::Damage => format!("{meaning}; {RESTORE}"),
            _ => meaning.to_owned(),
        };
        findings.push(finding(check, n, severity, "none", detail));
    }
    if !running {
        let leased = count("SELECT count(*) FROM deliveries WHERE status = 'leased'");
        findings.push(finding(
            "leases of a stopped relay",
            leased,
            Severity::Note,
            "none",
            "claimed by a relay that stopped; the next start makes them due again".into(),
        ));
    }
    findings.push(finding(
        "index tables unreadable",
        unreadable.len() as u64,
        Severity::Damage,
        "none",
        format!(
            "{}; {RESTORE}",
            unreadable.first().cloned().unwrap_or_default()
        ),
    ));
    (events, findings)
}

/// Parts of a running relay that reported themselves failing (the health file).
fn failing_parts(dir: &Path) -> Finding {
    let failing = crate::health::read(dir);
    finding(
        "store failing",
        failing.len() as u64,
        Severity::Damage,
        "no",
        failing
            .iter()
            .map(|f| format!("{}: {}", f.part, f.reason))
            .collect::<Vec<_>>()
            .join("; "),
    )
}

/// Whether a `relay up` holds the directory (its lock cannot be taken now).
fn lock_held(dir: &Path) -> bool {
    let Ok(file) = OpenOptions::new().write(true).open(dir.join(LOCK_FILE)) else {
        return false;
    };
    match file.try_lock() {
        Ok(()) => false,
        Err(std::fs::TryLockError::WouldBlock) => true,
        Err(std::fs::TryLockError::Error(_)) => false,
    }
}

fn journal_findings(
    dir: &Path,
    conn: &Connection,
    running: bool,
) -> Result<Vec<Finding>, OpenError> {
    let jdir = dir.join(journal::DIR);
    let segments = if jdir.is_dir() {
        journal::segments(&jdir).map_err(|source| OpenError::Io {
            path: jdir.clone(),
            source,
        })?
    } else {
        Vec::new()
    };
    let (mut unindexed, mut corrupt, mut torn, mut unreadable) = (0u64, 0u64, 0u64, 0u64);
    let mut lookup = conn
        .prepare("SELECT 1 FROM events WHERE id = ?1")
        .map_err(|source| OpenError::Sqlite {
            path: dir.join(DB_FILE),
            source,
        })?;
    for (_, path) in &segments {
        let (entries, damage, _) = match read_segment(path) {
            Ok(read) => read,
            // Deleted meanwhile by a running relay: indexed and checkpointed.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(_) => {
                unreadable += 1;
                continue;
            }
        };
        for e in &entries {
            if !lookup.exists([&e.id]).unwrap_or(false) {
                unindexed += 1;
            }
        }
        for d in damage {
            match d.kind {
                DamageKind::Corrupt => corrupt += d.len as u64,
                DamageKind::Torn | DamageKind::Gap => torn += d.len as u64,
            }
        }
    }
    let waiting = if running {
        "being indexed by the running relay"
    } else {
        "indexed at the next start (the journal holds them durably)"
    };
    Ok(vec![
        Finding {
            check: "journal segments",
            count: segments.len() as u64,
            severity: Severity::Ok,
            detail: "hold what the index does not yet hold durably".into(),
        },
        finding(
            "journaled events not in the index",
            unindexed,
            Severity::Note,
            "none",
            waiting.into(),
        ),
        finding(
            "unreadable journal segments",
            unreadable,
            Severity::Damage,
            "none",
            "segments that cannot be read at all: keep them and see the log".into(),
        ),
        finding(
            "corrupt journal bytes",
            corrupt,
            Severity::Damage,
            "none",
            "bytes in the middle of a segment that are no record: the next start keeps them in quarantine/ and reads every record after them".into(),
        ),
        finding(
            "torn or zeroed journal bytes",
            torn,
            Severity::Note,
            "none",
            "the end of a write cut short by a crash, or writes a failed flush lost (the journal wrote those again): normal".into(),
        ),
    ])
}

fn quarantined(dir: &Path) -> Finding {
    let files: Vec<(String, u64)> = std::fs::read_dir(dir.join(QUARANTINE_DIR))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    (name, e.metadata().map_or(0, |m| m.len()))
                })
                .collect()
        })
        .unwrap_or_default();
    let corrupt: Vec<&(String, u64)> = files
        .iter()
        .filter(|(n, _)| n.contains("-corrupt"))
        .collect();
    let bytes: u64 = files.iter().map(|(_, b)| b).sum();
    let list = files
        .iter()
        .map(|(n, _)| n.as_str())
        .take(5)
        .collect::<Vec<_>>()
        .join(", ");
    let detail = format!(
        "{} files, {bytes} bytes kept aside by earlier starts ({list}); corrupt ones held records that are lost unless SQLite had them. Delete the files once looked at.",
        files.len()
    );
    Finding {
        check: "quarantined journal bytes",
        count: files.len() as u64,
        severity: match (files.is_empty(), corrupt.is_empty()) {
            (true, _) => Severity::Ok,
            (false, true) => Severity::Note,
            (false, false) => Severity::Damage,
        },
        detail: if files.is_empty() {
            "none".into()
        } else {
            detail
        },
    }
}

fn archive_findings(dir: &Path) -> Vec<Finding> {
    let index = dir.join(ARCHIVE_DIR).join("index.db");
    if !index.is_file() {
        return Vec::new();
    }
    let conn = match Connection::open_with_flags(&index, OpenFlags::SQLITE_OPEN_READ_ONLY) {
        Ok(conn) => conn,
        Err(e) => {
            return vec![Finding {
                check: "archive index",
                count: 1,
                severity: Severity::Damage,
                detail: format!("archive/index.db cannot be opened: {e}"),
            }];
        }
    };
    let ok = conn
        .query_row("PRAGMA quick_check", [], |r| r.get::<_, String>(0))
        .is_ok_and(|r| r == "ok");
    let files: Vec<String> = conn
        .prepare("SELECT DISTINCT file FROM archived")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .unwrap_or_default();
    let missing = files
        .iter()
        .filter(|f| !dir.join(ARCHIVE_DIR).join(f).is_file())
        .count() as u64;
    vec![
        finding(
            "archive index integrity",
            u64::from(!ok),
            Severity::Damage,
            "ok",
            "archive/index.db is damaged: relay trace may not find archived events".into(),
        ),
        finding(
            "archive files indexed but missing",
            missing,
            Severity::Note,
            "none",
            "moved or deleted by an operator: relay trace no longer finds their events".into(),
        ),
    ]
}
