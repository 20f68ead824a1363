//! The journal's on-disk records, and reading them back after a crash or damage.
//!
//! Record layout: `len: u32 LE`, `crc32: u32 LE` of the body, then the body of `len` bytes:
//! `seq: u64 LE`, `received_at: i64 LE`, `id_len: u32 LE`, the id, the payload JSON. A zero
//! `len` is the unwritten rest of a segment. The events of one batch request are one *group*
//! record, so that a crash keeps all of them or none: `id_len` is [`GROUP`], followed by
//! `count: u32 LE` and, per event, `id_len: u32 LE`, `payload_len: u32 LE`, the id and the
//! payload; `seq` is the first event's, the others follow it one by one.
//!
//! Reading never stops at the first bad record: it resynchronises on the next valid one, so
//! a damaged record loses only itself ([`read_records`]). Resynchronising cannot land inside an
//! intact record's id or payload: every record's `len` has a zero high byte (records are under
//! 16 MiB), and ids (printable ASCII) and payloads (compact JSON, control characters escaped)
//! never hold a zero byte. A candidate must also carry a sequence number after the last good
//! one, and its CRC and layout must check.

use std::fs;
use std::io;
use std::path::Path;

use relay_core::UnixMillis;

pub(crate) const HEADER: usize = 8;
const FIXED: usize = 8 + 8 + 4;
/// The `id_len` that marks a group record.
const GROUP: u32 = u32::MAX;
/// Largest record: its `len`'s high byte is zero (see the module's note on resynchronising).
const MAX_RECORD: usize = (1 << 24) - 1;
/// Longest id a record can hold (ids of older relays were up to 256 characters of UTF-8).
const MAX_ID_BYTES: usize = 1024;
/// Most events in a group record.
const MAX_GROUP: usize = 4096;

/// One event as the journal holds it and SQLite applies it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub(crate) seq: u64,
    pub(crate) id: String,
    pub(crate) payload: String,
    pub(crate) received_at: UnixMillis,
}

/// A stretch of a segment that holds no readable record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Damage {
    pub(crate) offset: usize,
    pub(crate) len: usize,
    pub(crate) kind: DamageKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DamageKind {
    /// The end of the written part: a write cut short by a crash (normal after one).
    Torn,
    /// Zeros, with records after them: writes that never reached the disk (a failed flush;
    /// the journal wrote those records again elsewhere).
    Gap,
    /// Bytes that are no record, with records after them: the disk or something else changed
    /// what was written.
    Corrupt,
}

impl DamageKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DamageKind::Torn => "torn tail",
            DamageKind::Gap => "zeroed gap",
            DamageKind::Corrupt => "corrupt bytes",
        }
    }
}

/// Appends one plain record, for tests that write a journal by hand.
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

/// Why bytes are not a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bad {
    /// Runs past the end of what was read.
    Short,
    Invalid,
}

/// One record's events and its size. `after`: the last good sequence number, which a record
/// must follow.
fn decode(bytes: &[u8], after: u64) -> Result<(Vec<Entry>, usize), Bad> {
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
    };
    let (Some(len), Some(crc)) = (word(0), word(4)) else {
        return Err(Bad::Short);
    };
    let len = len as usize;
    if !(FIXED..=MAX_RECORD).contains(&len) {
        return Err(Bad::Invalid);
    }
    let Some(body) = bytes.get(HEADER..HEADER + len) else {
        return Err(Bad::Short);
    };
    let u64_at = |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().unwrap_or_default());
    let seq = u64_at(0);
    // Cheap checks before the CRC: resynchronising tries many candidates.
    if seq <= after || seq > after.saturating_add(1 << 40) {
        return Err(Bad::Invalid);
    }
    if crc32fast::hash(body) != crc {
        return Err(Bad::Invalid);
    }
    let received_at = u64_at(8) as i64;
    let u32_at = |rest: &[u8], at: usize| -> Option<usize> {
        Some(u32::from_le_bytes(rest.get(at..at + 4)?.try_into().ok()?) as usize)
    };
    let text = |bytes: &[u8]| std::str::from_utf8(bytes).map(str::to_owned);
    let id_len = u32_at(body, 16).ok_or(Bad::Invalid)?;
    let mut rest = &body[FIXED..];
    if id_len != GROUP as usize {
        if id_len > rest.len() || id_len > MAX_ID_BYTES {
            return Err(Bad::Invalid);
        }
        let (id, payload) = rest.split_at(id_len);
        let (Ok(id), Ok(payload)) = (text(id), text(payload)) else {
            return Err(Bad::Invalid);
        };
        let entry = Entry {
            seq,
            received_at,
            id,
            payload,
        };
        return Ok((vec![entry], HEADER + len));
    }
    let count = u32_at(rest, 0).ok_or(Bad::Invalid)?;
    if count > MAX_GROUP {
        return Err(Bad::Invalid);
    }
    rest = &rest[4..];
    let mut entries = Vec::with_capacity(count);
    for k in 0..count {
        let (Some(id_len), Some(payload_len)) = (u32_at(rest, 0), u32_at(rest, 4)) else {
            return Err(Bad::Invalid);
        };
        let Some(item) = rest.get(8..8 + id_len + payload_len) else {
            return Err(Bad::Invalid);
        };
        let (id, payload) = item.split_at(id_len);
        let (Ok(id), Ok(payload)) = (text(id), text(payload)) else {
            return Err(Bad::Invalid);
        };
        entries.push(Entry {
            seq: seq + k as u64,
            received_at,
            id,
            payload,
        });
        rest = &rest[8 + id_len + payload_len..];
    }
    Ok((entries, HEADER + len))
}

/// Every readable record of a segment's bytes, and the stretches that held none. A bad record
/// is skipped up to the next good one: only the records the bad bytes belong to are lost.
pub(crate) fn read_records(bytes: &[u8]) -> (Vec<Entry>, Vec<Damage>) {
    let mut entries = Vec::new();
    let mut damage = Vec::new();
    // The written part ends at the last non-zero byte: the rest is the zero-filled tail.
    let end = bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    let mut at = 0;
    let mut last = 0;
    while at < end {
        if let Ok((found, used)) = decode(&bytes[at..], last) {
            last = found.last().map_or(last, |e| e.seq);
            entries.extend(found);
            at += used;
            continue;
        }
        let next = (at + 1..end).find(|&pos| decode(&bytes[pos..], last).is_ok());
        let (len, kind) = match next {
            None => (end - at, DamageKind::Torn),
            Some(next) if bytes[at..next].iter().all(|b| *b == 0) => (next - at, DamageKind::Gap),
            Some(next) => (next - at, DamageKind::Corrupt),
        };
        damage.push(Damage {
            offset: at,
            len,
            kind,
        });
        match next {
            Some(next) => at = next,
            None => break,
        }
    }
    (entries, damage)
}

/// A segment's records and damage, read from disk.
pub(crate) fn read_segment(path: &Path) -> io::Result<(Vec<Entry>, Vec<Damage>, Vec<u8>)> {
    let bytes = fs::read(path)?;
    let (entries, damage) = read_records(&bytes);
    Ok((entries, damage, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(seq: u64, id: &str) -> Entry {
        Entry {
            seq,
            id: id.into(),
            payload: format!(r#"{{"id":"{id}","name":"n","body":"some text"}}"#),
            received_at: 1_763_800_000_000,
        }
    }

    /// Where a record lies in a segment, and what it holds.
    type Placed = (std::ops::Range<usize>, Vec<Entry>);

    /// A segment of `n` records (every third a group of three), zero-filled past them, and
    /// each record's byte range with its entries.
    fn segment(n: usize) -> (Vec<u8>, Vec<Placed>) {
        let mut buf = Vec::new();
        let mut records = Vec::new();
        let mut seq = 1;
        for r in 0..n {
            let entries: Vec<Entry> = (0..if r % 3 == 2 { 3 } else { 1 })
                .map(|k| entry(seq + k, &format!("evt-{r}-{k}")))
                .collect();
            seq += entries.len() as u64;
            let start = buf.len();
            encode_all(&mut buf, &entries);
            records.push((start..buf.len(), entries));
        }
        buf.resize(buf.len() + 512, 0);
        (buf, records)
    }

    #[test]
    fn records_round_trip_and_a_torn_tail_is_cut_off() {
        let (bytes, records) = segment(4);
        let (entries, damage) = read_records(&bytes);
        assert!(damage.is_empty());
        let all: Vec<Entry> = records.iter().flat_map(|(_, e)| e.clone()).collect();
        assert_eq!(entries, all);
        // Cut inside the last record: the others stay, the cut-off part is a torn tail.
        let last = records[3].0.clone();
        let (entries, damage) = read_records(&bytes[..last.start + 5]);
        assert_eq!(entries.len(), all.len() - 1);
        assert_eq!(damage[0].kind, DamageKind::Torn);
        assert_eq!((damage[0].offset, damage[0].len), (last.start, 5));
    }

    #[test]
    fn a_bad_record_in_the_middle_loses_only_itself() {
        let (mut bytes, records) = segment(6);
        let hit = records[2].0.start + 30;
        bytes[hit] ^= 0x5a;
        let (entries, damage) = read_records(&bytes);
        let expected: Vec<Entry> = records
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 2)
            .flat_map(|(_, (_, e))| e.clone())
            .collect();
        assert_eq!(entries, expected);
        assert_eq!(damage.len(), 1);
        assert_eq!(damage[0].kind, DamageKind::Corrupt);
        assert_eq!(damage[0].offset, records[2].0.start);
        assert_eq!(damage[0].len, records[2].0.len());

        // Zeros where records were (a lost flush) are a gap, and what follows is read.
        let (mut bytes, records) = segment(6);
        bytes[records[1].0.start..records[3].0.end].fill(0);
        let (entries, damage) = read_records(&bytes);
        assert_eq!(
            entries.len(),
            records.iter().map(|(_, e)| e.len()).sum::<usize>() - 5
        );
        assert_eq!(damage[0].kind, DamageKind::Gap);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Cut anywhere: every record wholly before the cut is read, nothing else, nothing
        /// invented.
        #[test]
        fn any_truncation_loses_only_the_records_it_cuts(n in 1usize..12, cut in any::<prop::sample::Index>()) {
            let (bytes, records) = segment(n);
            let cut = cut.index(bytes.len() + 1);
            let (entries, _) = read_records(&bytes[..cut]);
            let expected: Vec<Entry> = records
                .iter()
                .filter(|(range, _)| range.end <= cut)
                .flat_map(|(_, e)| e.clone())
                .collect();
            prop_assert_eq!(entries, expected);
        }

        /// Flip any one byte: only the record holding it is lost (a group whole), and no
        /// record is made up.
        #[test]
        fn any_flipped_byte_loses_only_its_own_record(n in 1usize..12, at in any::<prop::sample::Index>(), mask in 1u8..=255) {
            let (mut bytes, records) = segment(n);
            let at = at.index(bytes.len());
            bytes[at] ^= mask;
            let (entries, damage) = read_records(&bytes);
            let expected: Vec<Entry> = records
                .iter()
                .filter(|(range, _)| !range.contains(&at))
                .flat_map(|(_, e)| e.clone())
                .collect();
            prop_assert_eq!(entries, expected);
            prop_assert!(damage.iter().all(|d| d.offset <= at && at < d.offset + d.len.max(1)));
        }
    }
}
