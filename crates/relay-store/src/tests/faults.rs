//! The store under injected storage faults: failed, short and stalled writes and flushes of
//! the journal, its segments, the archive and SQLite. The promise under test: an event
//! answered 2xx is on disk (a flushed journal record) and is delivered or dead-lettered after
//! recovery; a failing store answers no 2xx until it has recovered.

use std::collections::{BTreeSet, HashSet};

use super::*;

/// A store under a fault schedule. Opening it may itself fail on schedule (its first segment
/// cannot be created): a real start then exits with the error, and is started again.
fn faulty(dir: &Path, durability: Durability, spec: &str, seed: u64) -> (SqliteStore, Arc<Faults>) {
    let faults = Arc::new(Faults::parse(spec, seed).unwrap());
    let options = StoreOptions {
        durability,
        flush_wait: Duration::from_millis(50),
        faults: Some(Arc::clone(&faults)),
        ..StoreOptions::default()
    };
    for _ in 0..20 {
        match SqliteStore::open_with(dir, options.clone()) {
            Ok(store) => return (store, faults),
            Err(e) => assert!(e.to_string().contains("cannot open"), "{e}"),
        }
    }
    panic!("the store never opened under {spec}");
}

/// Holds a read transaction on the index, so no checkpoint covers what is written meanwhile:
/// until it is dropped, what was acknowledged must be in the journal on disk.
fn hold_checkpoints(dir: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(dir.join(DB_FILE)).unwrap();
    conn.execute_batch("BEGIN").unwrap();
    conn.query_row("SELECT count(*) FROM events", [], |r| r.get::<_, i64>(0))
        .unwrap();
    conn
}

/// Every event id in the journal's segments as the disk holds them now.
fn journaled(dir: &Path) -> HashSet<String> {
    let mut ids = HashSet::new();
    for (_, path) in journal::segments(&dir.join(journal::DIR)).unwrap() {
        let (entries, _, _) = record::read_segment(&path).unwrap();
        ids.extend(entries.into_iter().map(|e| e.id));
    }
    ids
}

/// After a restart without faults, what every event became: claims settled as delivered.
async fn recovered(dir: &Path) -> BTreeSet<String> {
    let store = SqliteStore::open(dir).unwrap();
    let mut seen = BTreeSet::new();
    loop {
        let claims = store.claim(500, LEASE).await.unwrap();
        if claims.is_empty() {
            break;
        }
        for c in claims {
            store
                .settle(&c, attempt("delivered"), Settlement::Delivered)
                .await
                .unwrap();
            seen.insert(c.event_id);
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_flush_is_never_trusted_later() {
    let dir = tempfile::tempdir().unwrap();
    // The third flush fails, and what it covered is gone from the disk; the fourth succeeds.
    let (store, faults) = faulty(dir.path(), Durability::Flush, "flush.journal=error@3", 1);
    let hold = hold_checkpoints(dir.path());
    let mut acked = Vec::new();
    for i in 0..40 {
        let id = format!("e{i}");
        if store.accept(event(&id, 0)).await == Ok(AcceptOutcome::Accepted) {
            acked.push(id);
        }
    }
    assert_eq!(faults.injected(), 1);
    let on_disk = journaled(dir.path());
    let missing: Vec<&String> = acked.iter().filter(|id| !on_disk.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not on disk: {missing:?}"
    );
    assert_eq!(
        acked.len(),
        40,
        "the journal recovered at once: nothing was refused"
    );
    assert_eq!(
        store
            .flush_stats()
            .recoveries
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(store.health(), Ok(()));
    drop(hold);
    drop(store);
    let after: Vec<String> = recovered(dir.path()).await.into_iter().collect();
    acked.sort();
    assert_eq!(after, acked);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_journal_acknowledges_nothing_until_it_has_recovered() {
    let dir = tempfile::tempdir().unwrap();
    // Flushes 3 to 8 fail (the first recovery attempts too), each stalling a while first, so
    // that the deadline policy would answer before them.
    let spec = "flush.journal=error@3..8, flush.journal=stall:120ms";
    let (store, _) = faulty(dir.path(), Durability::Deadline, spec, 1);
    let hold = hold_checkpoints(dir.path());
    let mut answers = Vec::new();
    let mut saw_failing_file = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut i = 0;
    // Until the store has failed and recovered, and a little after.
    while tokio::time::Instant::now() < deadline {
        let id = format!("e{i}");
        i += 1;
        // Failing before it is asked and still after: then it must not have answered 2xx.
        let before = store.health().is_err();
        let answer = store.accept(event(&id, 0)).await;
        let failing = before && store.health().is_err();
        saw_failing_file |= dir.path().join(health::FILE).exists();
        answers.push((id, answer, failing));
        tokio::time::sleep(Duration::from_millis(10)).await;
        let refused = answers
            .iter()
            .any(|(_, a, _)| matches!(a, Err(StoreError::Failing(_))));
        let ok_after = answers
            .iter()
            .skip_while(|(_, a, _)| !matches!(a, Err(StoreError::Failing(_))))
            .filter(|(_, a, _)| a.is_ok())
            .count();
        if refused && ok_after >= 5 {
            break;
        }
    }
    let refused: Vec<&String> = answers
        .iter()
        .filter(|(_, a, _)| matches!(a, Err(StoreError::Failing(_))))
        .map(|(id, _, _)| id)
        .collect();
    assert!(
        !refused.is_empty(),
        "the store never said it was failing: {answers:?}"
    );
    assert!(saw_failing_file, "relay status had nothing to read");
    // No 2xx while it reported failing.
    for (id, answer, failing) in &answers {
        assert!(
            !(*failing && answer.is_ok()),
            "{id} acknowledged while failing"
        );
    }
    assert_eq!(store.health(), Ok(()), "recovered");
    assert!(!dir.path().join(health::FILE).exists());
    let acked: Vec<&String> = answers
        .iter()
        .filter(|(_, a, _)| a.is_ok())
        .map(|(id, _, _)| id)
        .collect();
    let counted = store
        .flush_stats()
        .acked_before_flush
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        counted > 0,
        "the stalls made the deadline policy answer early"
    );
    let on_disk = journaled(dir.path());
    let missing: Vec<&&String> = acked.iter().filter(|id| !on_disk.contains(**id)).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not on disk: {missing:?}"
    );
    drop(hold);
    drop(store);
    let after = recovered(dir.path()).await;
    for id in acked {
        assert!(after.contains(id), "{id} was acknowledged and is gone");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_duplicate_is_answered_only_for_a_twin_that_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    // The first write stalls (so that two requests for one id queue behind it), and the next
    // one, holding both, fails.
    let spec = "write.journal=stall:300ms@1, write.journal=error@2";
    let (store, _) = faulty(dir.path(), Durability::Deadline, spec, 1);
    let warm = {
        let store = store.clone();
        tokio::spawn(async move { store.accept(event("warm", 0)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (first, second) = tokio::join!(
        store.accept(event("twin", 0)),
        store.accept(event("twin", 0))
    );
    assert_eq!(warm.await.unwrap(), Ok(AcceptOutcome::Accepted));
    assert!(first.is_err(), "the write failed: {first:?}");
    assert!(
        second.is_err(),
        "a duplicate of an event that was never stored: {second:?}"
    );
    // The id was never stored: offered again, it is new.
    assert_eq!(
        store.accept(event("twin", 0)).await,
        Ok(AcceptOutcome::Accepted)
    );
    assert_eq!(
        store.accept(event("twin", 0)).await,
        Ok(AcceptOutcome::Duplicate)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_index_that_cannot_commit_makes_the_store_refuse_until_it_can() {
    let dir = tempfile::tempdir().unwrap();
    let (store, faults) = faulty(
        dir.path(),
        Durability::Deadline,
        "write.index=error@1..6",
        1,
    );
    let mut answers = Vec::new();
    for i in 0..2000 {
        let id = format!("e{i}");
        let answer = store.accept(event(&id, 0)).await;
        answers.push((id, answer));
        if faults.injected() >= 6 && store.health().is_ok() && answers.len() > 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        answers
            .iter()
            .any(|(_, a)| matches!(a, Err(StoreError::Failing(r)) if r.contains("index"))),
        "an index that cannot commit refuses events"
    );
    assert_eq!(store.health(), Ok(()), "and takes them again once it can");
    assert!(answers.last().unwrap().1.is_ok());
    drop(store);
    let after = recovered(dir.path()).await;
    for (id, answer) in &answers {
        if answer.is_ok() {
            assert!(after.contains(id), "{id} was acknowledged and is gone");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_record_mid_segment_costs_only_itself_and_its_bytes_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    // A store that ran (its index exists), then a segment it left.
    drop(SqliteStore::open(dir.path()).unwrap());
    let journal_dir = dir.path().join(journal::DIR);
    for stale in std::fs::read_dir(&journal_dir).unwrap() {
        std::fs::remove_file(stale.unwrap().path()).unwrap();
    }
    let mut buf = Vec::new();
    let mut starts = Vec::new();
    for (seq, id) in (1..=5).map(|n| (n, format!("r{n}"))) {
        starts.push(buf.len());
        record::encode(&mut buf, seq, 5, &id, &event(&id, 0).payload_json());
    }
    buf[starts[2] + 12] ^= 0xff;
    buf.resize(buf.len() + 4096, 0);
    let segment = journal_dir.join("000000000003.log");
    std::fs::write(&segment, &buf).unwrap();

    // The quarantine cannot be written: the segment must stay.
    {
        let (store, _) = faulty(
            dir.path(),
            Durability::Deadline,
            "create.quarantine=error",
            1,
        );
        drop(store);
        assert!(
            segment.exists(),
            "a segment whose damage was not kept aside was deleted"
        );
    }
    let after: Vec<String> = recovered(dir.path()).await.into_iter().collect();
    assert_eq!(
        after,
        ["r1", "r2", "r4", "r5"],
        "every record but the damaged one"
    );
    assert!(!segment.exists(), "kept aside now, so replayed and gone");
    let kept: Vec<_> = std::fs::read_dir(dir.path().join(QUARANTINE_DIR))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(kept.len(), 1);
    assert_eq!(std::fs::read(&kept[0]).unwrap(), buf[starts[2]..starts[3]]);
}

/// Random schedules of every kind of fault, under concurrent single and batch ingest and a
/// draining work queue: whatever was answered 2xx is on disk, and delivered after recovery;
/// nothing that was not offered is.
#[tokio::test(flavor = "multi_thread")]
async fn under_any_schedule_of_faults_every_acknowledged_event_survives() {
    let spec = "write.journal=short@p:0.01, write.journal=error@p:0.01, \
                flush.journal=error@p:0.02, flush.*=stall:3ms@p:0.05, \
                create.segment=error@p:0.3, write.index=error@p:0.03, flush.index=error@p:0.1";
    for seed in 1..=4u64 {
        let dir = tempfile::tempdir().unwrap();
        let durability = if seed % 2 == 0 {
            Durability::Flush
        } else {
            Durability::Deadline
        };
        let (store, faults) = faulty(dir.path(), durability, spec, seed);
        let hold = hold_checkpoints(dir.path());
        let offered: Vec<String> = (0..600).map(|i| format!("s{seed}-{i}")).collect();
        let mut tasks = tokio::task::JoinSet::new();
        for chunk in offered.chunks(20) {
            let (store, chunk) = (store.clone(), chunk.to_vec());
            tasks.spawn(async move {
                let mut acked = Vec::new();
                // Half one by one (some twice), half as a batch request.
                if chunk[0].ends_with('0') && chunk.len() > 1 {
                    let events = chunk.iter().map(|id| event(id, 0)).collect();
                    if let Ok(outcomes) = store.accept_batch(events).await {
                        acked.extend(
                            chunk
                                .iter()
                                .zip(outcomes)
                                .filter(|(_, o)| *o != AcceptOutcome::Conflict)
                                .map(|(id, _)| id.clone()),
                        );
                    }
                } else {
                    for id in &chunk {
                        for _ in 0..1 + usize::from(id.ends_with('7')) {
                            if store.accept(event(id, 0)).await.is_ok() {
                                acked.push(id.clone());
                            }
                        }
                    }
                }
                acked
            });
        }
        // A dispatcher of sorts, draining meanwhile.
        let drained = {
            let store = store.clone();
            tokio::spawn(async move {
                let mut idle = 0;
                while idle < 10 {
                    let claims = store.claim(100, LEASE).await.unwrap_or_default();
                    idle = if claims.is_empty() { idle + 1 } else { 0 };
                    let settles = claims
                        .iter()
                        .map(|c| store.settle(c, attempt("delivered"), Settlement::Delivered));
                    futures_util::future::join_all(settles).await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        let mut acked = BTreeSet::new();
        while let Some(done) = tasks.join_next().await {
            acked.extend(done.unwrap());
        }
        drained.await.unwrap();
        assert!(faults.injected() > 0, "seed {seed}: no fault was injected");
        let on_disk = journaled(dir.path());
        // Acknowledged and never delivered: still in the journal (delivered ones may have
        // been checkpointed away only if a checkpoint ran, which the held reader prevents).
        for id in &acked {
            assert!(
                on_disk.contains(id),
                "seed {seed}: {id} acknowledged but not on disk"
            );
        }
        drop(hold);
        drop(store);
        // Recovery: a start without faults, and a drain.
        let left = recovered(dir.path()).await;
        let reader = Reader::open(dir.path()).unwrap();
        let delivered: BTreeSet<String> = reader.event_ids().unwrap().into_iter().collect();
        for id in &acked {
            assert!(
                delivered.contains(id),
                "seed {seed}: {id} acknowledged and lost"
            );
        }
        let offered: BTreeSet<&String> = offered.iter().collect();
        for id in delivered.iter().chain(&left) {
            assert!(offered.contains(id), "seed {seed}: {id} was never offered");
        }
        let counts = reader.status_counts().unwrap();
        assert_eq!(
            (counts.queued, counts.leased),
            (0, 0),
            "seed {seed}: all settled"
        );
    }
}

/// A flush that fails only after a while (as a disk gives up): meanwhile another event is
/// written and waits for the next flush. The recovery writes it again with the rest, so it must
/// be told; nothing else would ever flush for it.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_written_while_a_flush_was_failing_is_answered_by_the_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = faulty(
        dir.path(),
        Durability::Flush,
        "flush.journal=error:400ms@2",
        1,
    );
    assert_eq!(
        store.accept(event("a", 0)).await,
        Ok(AcceptOutcome::Accepted)
    );
    let b = {
        let store = store.clone();
        tokio::spawn(async move { store.accept(event("b", 0)).await })
    };
    // While the second flush is failing, slowly.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let c = {
        let store = store.clone();
        tokio::spawn(async move { store.accept(event("c", 0)).await })
    };
    let answers = tokio::time::timeout(Duration::from_secs(20), async {
        (b.await.unwrap(), c.await.unwrap())
    })
    .await
    .expect("every request is answered");
    assert_eq!(
        answers,
        (Ok(AcceptOutcome::Accepted), Ok(AcceptOutcome::Accepted))
    );
    let on_disk = journaled(dir.path());
    assert!(
        on_disk.contains("b") && on_disk.contains("c"),
        "{on_disk:?}"
    );
}
