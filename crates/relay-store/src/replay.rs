//! Start-up: the journal segments an earlier run left are read, their events indexed, and the
//! segments deleted once SQLite holds them durably. A damaged stretch of a segment costs only
//! the records in it: reading resynchronises on the next good record ([`crate::record`]), and
//! the damaged bytes are kept in `DATA_DIR/quarantine/` before the segment goes. A segment
//! whose damage could not be kept is not deleted.

use std::path::{Path, PathBuf};

use rusqlite::Connection;

use crate::disk::Disk;
use crate::journal;
use crate::record::{Damage, DamageKind, read_segment};
use crate::{OpenError, writer};

/// Where damaged journal bytes are kept, inside the data directory.
pub const QUARANTINE_DIR: &str = "quarantine";

/// Indexes what earlier runs left in the journal, makes it durable in SQLite, keeps damaged
/// bytes aside, and deletes the segments.
pub(crate) fn replay(
    dir: &Path,
    conn: &Connection,
    db: &Path,
    journal_disk: &Disk,
    quarantine: &Disk,
) -> Result<journal::Recovered, OpenError> {
    let io = |source| OpenError::Io {
        path: dir.join(journal::DIR),
        source,
    };
    let sqlite = |source| OpenError::Sqlite {
        path: db.into(),
        source,
    };
    let mut recovered = journal::recover(dir).map_err(io)?;
    let mut new = 0;
    let mut keep: Vec<PathBuf> = Vec::new();
    for segment in recovered.segments.clone() {
        let (entries, damage, bytes) = read_segment(&segment).map_err(io)?;
        if !damage.is_empty()
            && !keep_damage(dir, &segment, &damage, &bytes, entries.len(), quarantine)
        {
            keep.push(segment.clone());
        }
        let txn = conn.unchecked_transaction().map_err(sqlite)?;
        new += writer::apply(&txn, &entries).map_err(|e| OpenError::Foreign {
            path: db.into(),
            why: format!("cannot index the journal: {e}"),
        })?;
        txn.commit().map_err(sqlite)?;
        recovered.saw(&entries);
    }
    if recovered.segments.is_empty() {
        return Ok(recovered);
    }
    // Only once SQLite holds them durably may the segments go; otherwise the next start
    // replays them again, which changes nothing.
    if writer::checkpoint(conn).map_err(sqlite)? {
        for segment in recovered.segments.iter().filter(|s| !keep.contains(s)) {
            // One left behind is replayed again at the next start, which changes nothing.
            if let Err(e) = journal_disk.remove_file(segment) {
                tracing::warn!(segment = %segment.display(), error = %e, "cannot delete a replayed journal segment");
            }
        }
    }
    if new > 0 {
        tracing::info!(
            events = new,
            "indexed events the last run had journaled but not indexed"
        );
    }
    Ok(recovered)
}

/// Logs what a segment's damage cost and keeps its damaged bytes in the quarantine. Says
/// whether the segment may go (everything not read from it is kept elsewhere).
fn keep_damage(
    dir: &Path,
    segment: &Path,
    damage: &[Damage],
    bytes: &[u8],
    intact: usize,
    disk: &Disk,
) -> bool {
    let mut kept = true;
    for d in damage {
        let span = &bytes[d.offset..d.offset + d.len];
        let file = match d.kind {
            // Zeros hold nothing to keep.
            DamageKind::Gap => None,
            DamageKind::Torn | DamageKind::Corrupt => match quarantine(dir, segment, d, span, disk)
            {
                Ok(file) => Some(file),
                Err(e) => {
                    kept = false;
                    tracing::error!(segment = %segment.display(), offset = d.offset, error = %e,
                        "cannot keep damaged journal bytes aside; the segment stays until they are");
                    None
                }
            },
        };
        let file = file.map(|f| f.display().to_string());
        let kind = d.kind.as_str();
        match d.kind {
            DamageKind::Torn => tracing::warn!(
                segment = %segment.display(), kind, offset = d.offset, bytes = d.len, intact, kept_in = ?file,
                "a journal segment ends in a write cut short by a crash; its intact events are kept"
            ),
            DamageKind::Gap => tracing::warn!(
                segment = %segment.display(), kind, offset = d.offset, bytes = d.len, intact,
                "a journal segment has a zeroed gap (writes a failed flush lost); the records after it are read"
            ),
            DamageKind::Corrupt => tracing::error!(
                segment = %segment.display(), kind, offset = d.offset, bytes = d.len, intact, kept_in = ?file,
                "SKIPPED damaged bytes in the middle of a journal segment: the records in them are lost unless SQLite already held them; every record after them is read"
            ),
        }
    }
    kept
}

/// Writes damaged bytes to `quarantine/<segment>-<offset>-<len>.bin`, flushed.
fn quarantine(
    dir: &Path,
    segment: &Path,
    damage: &Damage,
    span: &[u8],
    disk: &Disk,
) -> std::io::Result<PathBuf> {
    let into = dir.join(QUARANTINE_DIR);
    crate::disk::create_private_dir(&into)?;
    let stem = segment
        .file_stem()
        .map_or_else(|| "segment".into(), |s| s.to_string_lossy().into_owned());
    let path = into.join(format!(
        "{stem}-{}-{}-{}.bin",
        damage.offset,
        damage.len,
        match damage.kind {
            DamageKind::Torn => "torn",
            _ => "corrupt",
        }
    ));
    if path.exists() {
        // Kept by an earlier start that then could not finish: the same bytes.
        return Ok(path);
    }
    let partial = path.with_extension("partial");
    let _ = std::fs::remove_file(&partial);
    let file = disk.create_new(&partial)?;
    file.write_all_at(span, 0)?;
    file.sync_all()?;
    disk.rename(&partial, &path)?;
    disk.sync_dir(&into)?;
    Ok(path)
}
