//! The store against its contract, on disk: single operations, crash recovery, the lock, and a
//! property test against a simple model.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use proptest::prelude::*;
use relay_core::Ingest;
use relay_core::ports::Clock;
use relay_core::{
    AcceptOutcome, AttemptRecord, Claim, Event, Settlement, StoreError, Trigger, WorkQueue,
    parse_event,
};
use serde_json::json;

use super::*;

#[derive(Debug, Default)]
struct ManualClock(AtomicI64);

impl ManualClock {
    fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

fn event(id: &str, variant: u8) -> Event {
    let raw = json!({"id": id, "name": "n", "body": format!("b{variant}"), "timestamp": 1, "extra": [variant]});
    parse_event(raw.to_string().as_bytes()).unwrap()
}

fn attempt(outcome: &'static str) -> AttemptRecord {
    let outcome = relay_core::AttemptOutcome::parse(outcome).expect("an outcome");
    AttemptRecord {
        started_at: 0,
        duration_ms: 3,
        outcome,
        http_status: Some(200),
        detail: format!("answer for {outcome}"),
        trigger: Trigger::Scheduled,
    }
}

const LEASE: Duration = Duration::from_secs(1);

fn open(dir: &Path) -> (SqliteStore, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock(AtomicI64::new(1_000_000)));
    (
        SqliteStore::open_with(
            dir,
            StoreOptions {
                clock: clock.clone(),
                ..StoreOptions::default()
            },
        )
        .unwrap(),
        clock,
    )
}

#[tokio::test]
async fn accept_is_idempotent_by_id_and_payload() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    assert_eq!(
        store.accept(event("a", 0)).await,
        Ok(AcceptOutcome::Accepted)
    );

    let reordered =
        parse_event(br#"{"extra":[0],"timestamp":1,"body":"b0","name":"n","id":"a"}"#).unwrap();
    assert_eq!(store.accept(reordered).await, Ok(AcceptOutcome::Duplicate));
    assert_eq!(
        store.accept(event("a", 1)).await,
        Ok(AcceptOutcome::Conflict)
    );

    store.indexed().await.unwrap();
    let reader = Reader::open(dir.path()).unwrap();
    assert_eq!(
        reader.status_counts().unwrap(),
        StatusCounts {
            queued: 1,
            ..Default::default()
        }
    );
    let stored = reader.delivery("a").unwrap().unwrap();
    assert_eq!(stored.payload, event("a", 0).payload_json());
}

#[tokio::test]
async fn claims_lease_and_expired_leases_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let (store, clock) = open(dir.path());
    for id in ["a", "b", "c"] {
        store.accept(event(id, 0)).await.unwrap();
    }
    let first = store.claim(2, LEASE).await.unwrap();
    assert_eq!(first.len(), 2);
    let rest = store.claim(10, LEASE).await.unwrap();
    assert_eq!(rest.len(), 1, "leased work must not be claimed twice");
    assert!(store.claim(10, LEASE).await.unwrap().is_empty());

    clock.advance(1_001);
    let again = store.claim(10, LEASE).await.unwrap();
    assert_eq!(again.len(), 3, "expired leases are due again");
    assert!(again.iter().all(|c| c.lease != first[0].lease));
}

#[tokio::test]
async fn delivered_work_is_never_claimed_again_and_stale_settlements_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (store, clock) = open(dir.path());
    store.accept(event("a", 0)).await.unwrap();
    let stale = store.claim(1, LEASE).await.unwrap().remove(0);
    clock.advance(1_001);
    let fresh = store.claim(1, LEASE).await.unwrap().remove(0);

    let lost = store
        .settle(&stale, attempt("delivered"), Settlement::Delivered)
        .await;
    assert_eq!(lost, Err(StoreError::LeaseLost("a".into())));
    store
        .settle(&fresh, attempt("delivered"), Settlement::Delivered)
        .await
        .unwrap();

    clock.advance(3_600_000);
    assert!(store.claim(10, LEASE).await.unwrap().is_empty());
    let reader = Reader::open(dir.path()).unwrap();
    let d = reader.delivery("a").unwrap().unwrap();
    assert_eq!(
        (d.status.as_str(), d.attempts, d.tries),
        ("delivered", 1, 1)
    );
    assert_eq!(
        reader.attempts("a").unwrap().len(),
        2,
        "both attempts happened and are recorded"
    );
}

#[tokio::test]
async fn retries_wait_until_due_and_rate_limits_do_not_count() {
    let dir = tempfile::tempdir().unwrap();
    let (store, clock) = open(dir.path());
    store.accept(event("a", 0)).await.unwrap();
    let c = store.claim(1, LEASE).await.unwrap().remove(0);
    let at = clock.now() + 5_000;
    store
        .settle(
            &c,
            attempt("rate_limited"),
            Settlement::Retry { at, counted: false },
        )
        .await
        .unwrap();
    clock.advance(4_999);
    assert!(store.claim(1, LEASE).await.unwrap().is_empty());
    clock.advance(1);
    let c = store.claim(1, LEASE).await.unwrap().remove(0);
    assert_eq!((c.attempts, c.tries), (0, 1));
    store
        .settle(
            &c,
            attempt("transient"),
            Settlement::Retry {
                at: clock.now(),
                counted: true,
            },
        )
        .await
        .unwrap();
    let c = store.claim(1, LEASE).await.unwrap().remove(0);
    assert_eq!((c.attempts, c.tries), (1, 2));
}

#[tokio::test]
async fn dead_letters_keep_reason_attempts_and_last_answer() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    store.accept(event("a", 0)).await.unwrap();
    let c = store.claim(1, LEASE).await.unwrap().remove(0);
    let reason = "permanent failure: HTTP 400".to_owned();
    store
        .settle(
            &c,
            attempt("permanent"),
            Settlement::Dead {
                reason: reason.clone(),
            },
        )
        .await
        .unwrap();

    let reader = Reader::open(dir.path()).unwrap();
    let dl = reader.dead_letter("a").unwrap().unwrap();
    assert_eq!(
        (dl.reason, dl.attempts, dl.last_response.as_deref()),
        (reason, 1, Some("answer for permanent"))
    );
    assert_eq!(reader.status_counts().unwrap().dead, 1);
}

#[tokio::test]
async fn released_work_is_due_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    store.accept(event("a", 0)).await.unwrap();
    let claims = store.claim(1, Duration::from_secs(3600)).await.unwrap();
    store.release(claims).await.unwrap();
    assert_eq!(store.claim(1, LEASE).await.unwrap().len(), 1);
}

#[tokio::test]
async fn one_writer_per_directory_and_leases_recovered_on_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    store.accept(event("a", 0)).await.unwrap();
    store.claim(1, Duration::from_secs(3600)).await.unwrap();
    assert!(matches!(
        SqliteStore::open(dir.path()),
        Err(OpenError::Locked(_))
    ));
    drop(store);

    let (store, _) = open(dir.path());
    assert_eq!(
        store.claim(1, LEASE).await.unwrap().len(),
        1,
        "a dead owner's lease is due again"
    );
}

#[tokio::test]
async fn concurrent_accepts_all_commit() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    let tasks: Vec<_> = (0..2_000)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.accept(event(&format!("e{i}"), 0)).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), Ok(AcceptOutcome::Accepted));
    }
    store.indexed().await.unwrap();
    assert_eq!(
        Reader::open(dir.path())
            .unwrap()
            .status_counts()
            .unwrap()
            .queued,
        2_000
    );
}

/// The ports' shared contract, which the AWS adapters run too.
#[tokio::test(flavor = "multi_thread")]
async fn the_port_contract_holds_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    // The queue's part first: it expects to see only its own events.
    relay_core::contract::queue(&store, "local", Duration::from_secs(2)).await;
    relay_core::contract::ingest(&store, "local").await;
    relay_core::contract::ingest_batch(&store, "local").await;
}

/// The operations' contract, which the AWS backend runs too: the operator's reader, from its
/// own connection, over what the store did.
#[tokio::test(flavor = "multi_thread")]
async fn the_operations_contract_holds_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let reader = crate::Reader::open(dir.path()).unwrap();
    relay_core::contract::operations(&store, &reader, "local", Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_id_at_once_is_accepted_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    let tasks: Vec<_> = (0..400)
        .map(|i| {
            let store = store.clone();
            // Requests for the same ids race each other into the same journal batches.
            tokio::spawn(async move { store.accept(event(&format!("e{}", i % 4), 0)).await })
        })
        .collect();
    let mut accepted = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(AcceptOutcome::Accepted) => accepted += 1,
            Ok(AcceptOutcome::Duplicate) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(accepted, 4);
    assert_eq!(
        store.accept(event("e1", 1)).await,
        Ok(AcceptOutcome::Conflict)
    );
    store.indexed().await.unwrap();
    assert_eq!(
        Reader::open(dir.path())
            .unwrap()
            .status_counts()
            .unwrap()
            .queued,
        4
    );
}

#[tokio::test]
async fn ingest_does_not_wait_for_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    // Another process holds SQLite's write lock: the index cannot be written.
    let blocker = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let answered = tokio::time::timeout(Duration::from_millis(300), async {
        (
            store.accept(event("a", 0)).await,
            store.accept(event("a", 0)).await,
            store.accept(event("a", 1)).await,
        )
    })
    .await;
    assert_eq!(
        answered,
        Ok((
            Ok(AcceptOutcome::Accepted),
            Ok(AcceptOutcome::Duplicate),
            Ok(AcceptOutcome::Conflict)
        )),
        "the journal answers; SQLite catches up later"
    );
    // Not indexed yet, but an operator's trace finds it, waiting.
    let trace = relay_core::ops::Operations::trace(&Reader::open(dir.path()).unwrap(), "a")
        .await
        .unwrap()
        .expect("found in the journal");
    assert_eq!(trace.delivery.status, relay_core::DeliveryStatus::Queued);
    assert_eq!(
        trace.payload,
        serde_json::Value::Object(event("a", 0).payload)
    );
    blocker.execute_batch("ROLLBACK").unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if store.claim(1, LEASE).await.map(|c| c.len()) == Ok(1) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never indexed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn readers_refuse_what_is_not_a_store() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        Reader::open(&dir.path().join("nope")),
        Err(OpenError::Missing(_))
    ));
    assert!(matches!(
        Reader::open(dir.path()),
        Err(OpenError::NotAStore(_))
    ));
    let other = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
    other.execute_batch("CREATE TABLE t (x)").unwrap();
    drop(other);
    assert!(matches!(
        Reader::open(dir.path()),
        Err(OpenError::Foreign { .. })
    ));
    assert!(matches!(
        SqliteStore::open(dir.path()),
        Err(OpenError::Foreign { .. })
    ));

    std::fs::remove_file(dir.path().join(DB_FILE)).unwrap();
    std::fs::write(
        dir.path().join(DB_FILE),
        "plain text, long enough to be read as a header by SQLite..........",
    )
    .unwrap();
    let err = SqliteStore::open(dir.path()).unwrap_err();
    let expected = format!(
        "{} is not a relay store: it is not an SQLite database",
        dir.path().join(DB_FILE).display()
    );
    assert_eq!(err.to_string(), expected);
}

#[test]
fn claiming_is_an_index_range_scan_whatever_the_backlog() {
    let dir = tempfile::tempdir().unwrap();
    drop(SqliteStore::open(dir.path()).unwrap());
    let conn = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
    let plan: Vec<String> = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {}", writer::CLAIM_SQL))
        .unwrap()
        .query_map(rusqlite::params![0, 1], |r| r.get(3))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(
        plan.iter()
            .any(|step| step.contains("USING INDEX deliveries_due")),
        "{plan:?}"
    );
    assert!(
        !plan.iter().any(|step| step.contains("TEMP B-TREE")),
        "claims must not sort the backlog: {plan:?}"
    );
}

#[derive(Debug, Clone)]
enum Op {
    Accept(u8, u8),
    Claim(usize),
    Settle(usize, u8),
    Release(usize),
    Advance(i64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..8, 0u8..2).prop_map(|(k, v)| Op::Accept(k, v)),
        3 => (1usize..4).prop_map(Op::Claim),
        3 => (any::<usize>(), 0u8..3).prop_map(|(i, k)| Op::Settle(i, k)),
        1 => any::<usize>().prop_map(Op::Release),
        2 => (0i64..1_500).prop_map(Op::Advance),
    ]
}

#[derive(Debug, Clone, PartialEq)]
enum M {
    Queued(i64),
    Leased { lease: i64, until: i64 },
    Delivered,
    Dead,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_model(ops in proptest::collection::vec(op(), 1..60)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (store, clock) = open(dir.path());
        let mut model: BTreeMap<String, (u8, M)> = BTreeMap::new();
        let mut outstanding: Vec<Claim> = Vec::new();
        rt.block_on(async {
            for op in ops {
                let now = clock.now();
                match op {
                    Op::Accept(k, v) => {
                        let id = format!("e{k}");
                        let got = store.accept(event(&id, v)).await.unwrap();
                        let want = match model.get(&id) {
                            None => { model.insert(id, (v, M::Queued(now))); AcceptOutcome::Accepted }
                            Some((stored, _)) if *stored == v => AcceptOutcome::Duplicate,
                            Some(_) => AcceptOutcome::Conflict,
                        };
                        prop_assert_eq!(got, want);
                    }
                    Op::Claim(max) => {
                        let due = model.values().filter(|(_, m)| matches!(m, M::Queued(at) | M::Leased { until: at, .. } if *at <= now)).count();
                        let got = store.claim(max, LEASE).await.unwrap();
                        prop_assert_eq!(got.len(), due.min(max));
                        for c in &got {
                            let entry = &mut model.get_mut(&c.event_id).unwrap().1;
                            prop_assert!(matches!(entry, M::Queued(at) | M::Leased { until: at, .. } if *at <= now), "claimed {} in state {:?}", c.event_id, entry);
                            *entry = M::Leased { lease: c.lease, until: now + 1_000 };
                        }
                        outstanding.extend(got);
                    }
                    Op::Settle(i, kind) if !outstanding.is_empty() => {
                        let c = outstanding.remove(i % outstanding.len());
                        let (settlement, next) = match kind {
                            0 => (Settlement::Delivered, M::Delivered),
                            1 => (Settlement::Retry { at: now + 500, counted: true }, M::Queued(now + 500)),
                            _ => (Settlement::Dead { reason: "r".into() }, M::Dead),
                        };
                        let entry = &mut model.get_mut(&c.event_id).unwrap().1;
                        let holds = matches!(entry, M::Leased { lease, .. } if *lease == c.lease);
                        let got = store.settle(&c, attempt("transient"), settlement).await;
                        if holds {
                            prop_assert_eq!(got, Ok(()));
                            *entry = next;
                        } else {
                            prop_assert_eq!(got, Err(StoreError::LeaseLost(c.event_id.clone())));
                        }
                    }
                    Op::Release(i) if !outstanding.is_empty() => {
                        let c = outstanding.remove(i % outstanding.len());
                        let entry = &mut model.get_mut(&c.event_id).unwrap().1;
                        if matches!(entry, M::Leased { lease, .. } if *lease == c.lease) {
                            *entry = M::Queued(now);
                        }
                        store.release(vec![c]).await.unwrap();
                    }
                    Op::Settle(..) | Op::Release(_) => {}
                    Op::Advance(ms) => clock.advance(ms),
                }
            }
            store.indexed().await.unwrap();
            Ok(())
        })?;
        let counts = Reader::open(dir.path()).unwrap().status_counts().unwrap();
        let count = |f: fn(&M) -> bool| model.values().filter(|(_, m)| f(m)).count() as u64;
        prop_assert_eq!(counts.total(), model.len() as u64, "no accepted event may vanish");
        prop_assert_eq!(counts.delivered, count(|m| *m == M::Delivered));
        prop_assert_eq!(counts.dead, count(|m| *m == M::Dead));
        prop_assert_eq!(counts.leased, count(|m| matches!(m, M::Leased { .. })));
    }
}

mod operations {
    use relay_core::ops::{DispatcherReport, DlqFilter, Operations};

    use super::*;

    /// Four events: "a" delivered, "b" dead (permanent), "c" dead (exhausted), "d" waiting.
    async fn populated(dir: &Path) -> SqliteStore {
        // The wall clock: redrive runs in another process and stamps real time.
        let store = SqliteStore::open(dir).unwrap();
        for id in ["a", "b", "c", "d"] {
            store.accept(event(id, 0)).await.unwrap();
        }
        let claims = store.claim(3, LEASE).await.unwrap();
        for c in claims {
            let settlement = match c.event_id.as_str() {
                "a" => Settlement::Delivered,
                "b" => Settlement::Dead {
                    reason: "permanent failure: GraphQL error BAD_USER_INPUT".into(),
                },
                _ => Settlement::Dead {
                    reason: "attempts exhausted (10 of 10): HTTP 503".into(),
                },
            };
            let outcome = if c.event_id == "a" {
                "delivered"
            } else {
                "permanent"
            };
            store
                .settle(&c, attempt(outcome), settlement)
                .await
                .unwrap();
        }
        store
    }

    /// A field that matches nothing among many events ends a page after a bounded read, with a
    /// cursor to go on from; the pages that follow cover the rest, and the last has no cursor.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_rare_field_is_found_page_by_page_with_a_bounded_read_each() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let total = 25_000;
        for chunk in (0..total).collect::<Vec<_>>().chunks(1_000) {
            let events = chunk
                .iter()
                .map(|i| event(&format!("e{i:05}"), 0))
                .collect();
            store.accept_batch(events).await.unwrap();
        }
        store.accept(event("needle", 7)).await.unwrap();
        store.indexed().await.unwrap();
        let reader = crate::Reader::open(dir.path()).unwrap();
        let mut query = relay_core::ops::EventQuery {
            field: Some(relay_core::ops::FieldMatch::parse("extra.0=7").unwrap()),
            limit: 10,
            ..Default::default()
        };
        let first = reader.events(&query).await.unwrap();
        let ids: Vec<&str> = first.events.iter().map(|e| e.event_id.as_str()).collect();
        assert_eq!(ids, ["needle"], "the newest event is found first");
        assert_eq!(
            first.scanned, 20_000,
            "one page reads a bounded number of events"
        );
        assert!(first.next.is_some());
        query.cursor = first.next;
        let rest = reader.events(&query).await.unwrap();
        assert!(rest.events.is_empty());
        assert_eq!(rest.scanned, (total + 1 - 20_000) as u64);
        assert_eq!(rest.next, None, "the end");
    }

    #[tokio::test]
    async fn trace_tells_the_whole_story() {
        let dir = tempfile::tempdir().unwrap();
        let _store = populated(dir.path()).await;
        let reader = Reader::open(dir.path()).unwrap();
        let b = reader.trace("b").await.unwrap().unwrap();
        assert_eq!(b.delivery.status, relay_core::DeliveryStatus::Dead);
        assert_eq!(b.attempts.len(), 1);
        assert!(b.dead_letter.unwrap().reason.contains("BAD_USER_INPUT"));
        assert_eq!(
            b.payload,
            serde_json::from_str::<serde_json::Value>(&event("b", 0).payload_json()).unwrap()
        );
        let d = reader.trace("d").await.unwrap().unwrap();
        assert_eq!(
            (d.delivery.status, d.attempts.len()),
            (relay_core::DeliveryStatus::Queued, 0)
        );
        assert!(d.delivery.due_at.is_some());
        assert_eq!(reader.trace("nope").await.unwrap(), None);
    }

    #[tokio::test]
    async fn dead_letters_filter_by_reason_time_and_limit() {
        let dir = tempfile::tempdir().unwrap();
        let _store = populated(dir.path()).await;
        let reader = Reader::open(dir.path()).unwrap();
        let all = reader.dead_letters(&DlqFilter::default()).await.unwrap();
        assert!(
            all.windows(2).all(|w| w[0].dead_at >= w[1].dead_at),
            "newest first"
        );
        let mut ids: Vec<_> = all.iter().map(|d| d.event_id.as_str()).collect();
        ids.sort_unstable();
        assert_eq!(ids, ["b", "c"]);
        let by_reason = reader
            .dead_letters(&DlqFilter {
                reason: Some("bad_user".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(by_reason.len(), 1);
        let future = DlqFilter {
            since: Some(relay_core::now_millis() + 60_000),
            ..Default::default()
        };
        assert!(reader.dead_letters(&future).await.unwrap().is_empty());
        assert_eq!(
            reader
                .dead_letters(&DlqFilter {
                    limit: Some(1),
                    ..Default::default()
                })
                .await
                .unwrap()
                .len(),
            1
        );
    }

    #[tokio::test]
    async fn redrive_requeues_dead_letters_with_a_fresh_budget_and_a_redrive_trigger() {
        let dir = tempfile::tempdir().unwrap();
        let store = populated(dir.path()).await;
        let reader = Reader::open(dir.path()).unwrap();
        let ids = ["b", "c", "a", "zzz"].map(String::from);
        let report = reader.redrive(&ids, Duration::ZERO).await.unwrap();
        assert_eq!(report.redriven, ["b", "c"]);
        assert_eq!(
            report.skipped,
            ["a", "zzz"],
            "only dead letters are redriven"
        );
        assert!(
            reader
                .dead_letters(&DlqFilter::default())
                .await
                .unwrap()
                .is_empty()
        );

        let claims = store.claim(10, LEASE).await.unwrap();
        let redriven: Vec<_> = claims
            .iter()
            .filter(|c| c.trigger == Trigger::Redrive)
            .map(|c| c.event_id.as_str())
            .collect();
        assert_eq!(redriven, ["b", "c"]);
        assert!(claims.iter().all(|c| c.attempts == 0));
    }

    #[tokio::test]
    async fn redrive_can_spread_due_times() {
        let dir = tempfile::tempdir().unwrap();
        let _store = populated(dir.path()).await;
        let reader = Reader::open(dir.path()).unwrap();
        reader
            .redrive(&["b".into(), "c".into()], Duration::from_secs(60))
            .await
            .unwrap();
        let (b, c) = (
            reader.delivery("b").unwrap().unwrap(),
            reader.delivery("c").unwrap().unwrap(),
        );
        assert_eq!(c.due_at - b.due_at, 60_000);
    }

    #[tokio::test]
    async fn status_counts_and_reports_the_dispatcher() {
        let dir = tempfile::tempdir().unwrap();
        let store = populated(dir.path()).await;
        let reader = Reader::open(dir.path()).unwrap();
        let status = reader.status().await.unwrap();
        assert_eq!(
            (
                status.queued,
                status.in_flight,
                status.delivered,
                status.dead
            ),
            (1, 0, 1, 2)
        );
        assert_eq!(status.dispatcher, None);
        assert!(status.oldest_waiting_received_at.is_some());

        let report = DispatcherReport {
            rate: 12.5,
            estimated_limit: Some(13.0),
            announced: Some(relay_core::budget::Budget::Window {
                remaining: 4.0,
                reset: Duration::from_millis(1500),
                limit: Some(20.0),
                window: Some(Duration::from_secs(1)),
            }),
            in_flight: 3,
            reported_at: 42,
            events_per_request: Some(10),
            max_age_ms: Some(86_400_000),
            concurrency_limit: Some(4),
            circuit: Some(relay_core::hold::CircuitView::Open {
                since: 40,
                probe_in_ms: 2000,
            }),
            rate_limited: Some(7),
            lessons: vec![relay_core::ops::Lesson {
                at: 41,
                kind: "rate_limited".into(),
                detail: "HTTP 429, retry after 1s".into(),
                learned_rate: Some(13.0),
            }],
        };
        store.publish_dispatcher(&report).await.unwrap();
        assert_eq!(reader.status().await.unwrap().dispatcher, Some(report));
    }
}

mod durability {
    use std::sync::atomic::Ordering::Relaxed;

    use relay_core::ops::Operations;

    use super::*;

    fn stalled(dir: &Path, durability: Durability, stall: Duration) -> SqliteStore {
        let spec = format!("flush.journal=stall:{}ms", stall.as_millis());
        SqliteStore::open_with(
            dir,
            StoreOptions {
                durability,
                flush_wait: Duration::from_millis(100),
                faults: Some(Arc::new(Faults::parse(&spec, 1).unwrap())),
                ..StoreOptions::default()
            },
        )
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_stalled_flush_holds_no_answer_past_the_wait_and_every_early_answer_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let store = stalled(dir.path(), Durability::Deadline, Duration::from_secs(2));
        let answered = tokio::time::timeout(Duration::from_secs(1), async {
            (
                store.accept(event("a", 0)).await,
                store.accept(event("a", 0)).await,
            )
        })
        .await;
        assert_eq!(
            answered,
            Ok((Ok(AcceptOutcome::Accepted), Ok(AcceptOutcome::Duplicate))),
            "every flush takes 2 s, and no answer waits for it"
        );
        assert_eq!(store.flush_stats().acked_before_flush.load(Relaxed), 1);

        // The trace says so, and records when the flush landed.
        let reader = Reader::open(dir.path()).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let early = loop {
            store.indexed().await.unwrap();
            let trace = reader.trace("a").await.unwrap().unwrap();
            if let Some(early) = trace.acked_before_flush
                && early.flushed_at.is_some()
            {
                break early;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "flush never recorded"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(early.flushed_at.unwrap() >= early.acked_at);
        assert_eq!(reader.status().await.unwrap().acked_before_flush, 1);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_flush_policy_answers_only_after_the_flush() {
        let dir = tempfile::tempdir().unwrap();
        let store = stalled(dir.path(), Durability::Flush, Duration::from_millis(1500));
        let accept = store.accept(event("a", 0));
        tokio::pin!(accept);
        assert!(
            tokio::time::timeout(Duration::from_millis(700), &mut accept)
                .await
                .is_err(),
            "answered before its flush"
        );
        assert_eq!(accept.await, Ok(AcceptOutcome::Accepted));
        assert_eq!(store.flush_stats().acked_before_flush.load(Relaxed), 0);
    }

    #[tokio::test]
    async fn a_restart_indexes_what_the_journal_holds_up_to_a_torn_record() {
        let dir = tempfile::tempdir().unwrap();
        // A store that ran (its index exists), then a segment it left.
        drop(open(dir.path()));
        let journal_dir = dir.path().join(journal::DIR);
        for stale in std::fs::read_dir(&journal_dir).unwrap() {
            std::fs::remove_file(stale.unwrap().path()).unwrap();
        }
        let mut buf = Vec::new();
        for (seq, id) in [(1, "x"), (2, "y"), (3, "z")] {
            record::encode(&mut buf, seq, 5, id, &event(id, 0).payload_json());
        }
        // "z" was being written when the machine died: its record is cut short.
        buf.truncate(buf.len() - 1);
        std::fs::write(journal_dir.join("000000000007.log"), &buf).unwrap();

        let (store, _) = open(dir.path());
        let mut claimed: Vec<_> = store
            .claim(10, LEASE)
            .await
            .unwrap()
            .into_iter()
            .map(|c| (c.event_id, c.received_at))
            .collect();
        claimed.sort();
        assert_eq!(claimed, [("x".into(), 5), ("y".into(), 5)]);
        assert_eq!(
            store.accept(event("x", 0)).await,
            Ok(AcceptOutcome::Duplicate)
        );
        assert_eq!(
            store.accept(event("z", 0)).await,
            Ok(AcceptOutcome::Accepted)
        );
        let segments: Vec<_> = std::fs::read_dir(&journal_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            !segments.contains(&"000000000007.log".to_owned()),
            "the replayed segment is gone: {segments:?}"
        );
        assert!(segments.contains(&"000000000008.log".to_owned()));
        // What was not replayed is kept.
        let kept: Vec<_> = std::fs::read_dir(dir.path().join(QUARANTINE_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(kept.len(), 1, "{kept:?}");
        assert!(
            kept[0].starts_with("000000000007-") && kept[0].ends_with("-torn.bin"),
            "{kept:?}"
        );
    }
}

mod retention {
    use relay_core::ops::{DlqFilter, Operations};

    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn delivered_events_past_the_retention_move_to_the_archive_and_dead_letters_stay() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock(AtomicI64::new(relay_core::now_millis())));
        let store = SqliteStore::open_with(
            dir.path(),
            StoreOptions {
                clock: clock.clone(),
                retention: Some(Duration::from_secs(60)),
                ..StoreOptions::default()
            },
        )
        .unwrap();
        for id in ["a", "b", "c"] {
            store.accept(event(id, 0)).await.unwrap();
        }
        for c in store.claim(3, LEASE).await.unwrap() {
            let settlement = match c.event_id.as_str() {
                "c" => Settlement::Dead {
                    reason: "permanent".into(),
                },
                _ => Settlement::Delivered,
            };
            store
                .settle(&c, attempt("delivered"), settlement)
                .await
                .unwrap();
        }
        let reader = Reader::open(dir.path()).unwrap();
        clock.advance(30_000);
        // Not yet: archiving runs every few seconds, and the retention is a minute.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(reader.status_counts().unwrap().delivered, 2);

        clock.advance(31_000);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while reader.status_counts().unwrap().delivered > 0 {
            assert!(tokio::time::Instant::now() < deadline, "never archived");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let trace = reader
            .trace("a")
            .await
            .unwrap()
            .expect("found in the archive");
        let archived = trace.archived.expect("marked archived");
        assert_eq!(archived.why, "retention");
        assert!(
            archived.location.ends_with(".jsonl.gz"),
            "{}",
            archived.location
        );
        assert_eq!(trace.delivery.status, relay_core::DeliveryStatus::Delivered);
        assert_eq!(trace.attempts.len(), 1);
        assert_eq!(
            trace.payload,
            serde_json::Value::Object(event("a", 0).payload)
        );
        assert!(
            reader.delivery("a").unwrap().is_none(),
            "gone from the live store"
        );
        assert_eq!(
            reader.status_counts().unwrap().dead,
            1,
            "dead letters stay until redriven or purged"
        );

        // Purge: a dry run changes nothing; the real one archives, then removes.
        let all = DlqFilter {
            before: Some(relay_core::now_millis() + 1),
            ..DlqFilter::default()
        };
        let dry = reader.purge(&all, true).await.unwrap();
        assert_eq!(
            (dry.purged.as_slice(), dry.archive),
            (["c".to_owned()].as_slice(), None)
        );
        assert_eq!(reader.status_counts().unwrap().dead, 1);
        let done = reader.purge(&all, false).await.unwrap();
        assert_eq!(done.purged, ["c"]);
        assert_eq!(reader.status_counts().unwrap().dead, 0);
        let trace = reader.trace("c").await.unwrap().unwrap();
        assert_eq!(trace.archived.unwrap().why, "purged");
        assert_eq!(trace.dead_letter.unwrap().reason, "permanent");

        // A purged dead letter cannot be redriven: the report says where it went.
        let redrive = reader
            .redrive(&["c".into(), "nope".into()], Duration::ZERO)
            .await
            .unwrap();
        assert!(redrive.redriven.is_empty());
        assert_eq!(redrive.skipped, ["nope"]);
        assert_eq!(redrive.archived.len(), 1);
        assert_eq!(redrive.archived[0].id, "c");
    }
}

mod faults;
