//! The ports' contract, as tests every adapter runs (the embedded store and AWS alike): the
//! same calls, the same answers. Enabled by the `contract` feature; each function panics with
//! what broke.

#![allow(clippy::unwrap_used, clippy::panic)] // test code: a panic is the failure report

use std::time::Duration;

use serde_json::json;

use crate::{
    AcceptOutcome, AttemptOutcome, AttemptRecord, Event, Ingest, Settlement, StoreError, Trigger,
    WorkQueue, parse_event,
};

fn event(id: &str, variant: u32) -> Event {
    let raw = json!({"id": id, "name": "contract", "body": format!("b{variant}"), "timestamp": 1, "extra": {"v": variant}});
    parse_event(raw.to_string().as_bytes()).unwrap()
}

fn attempt(outcome: AttemptOutcome) -> AttemptRecord {
    AttemptRecord {
        started_at: crate::now_millis(),
        duration_ms: 2,
        outcome,
        http_status: Some(200),
        detail: format!("contract {outcome}"),
        trigger: Trigger::Scheduled,
    }
}

/// Claims until `want` claims are in or `within` passes (queues that deliver work
/// asynchronously, like an outbox feeding SQS, take a moment).
pub async fn claim_until<Q: WorkQueue>(
    queue: &Q,
    want: usize,
    lease: Duration,
    within: Duration,
) -> Vec<crate::Claim> {
    let deadline = tokio::time::Instant::now() + within;
    let mut claims = Vec::new();
    while claims.len() < want && tokio::time::Instant::now() < deadline {
        claims.extend(queue.claim(want - claims.len(), lease).await.unwrap());
        if claims.len() < want {
            queue.wait_for_work(Duration::from_millis(100)).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    claims
}

/// `Ingest`: new, duplicate (key order and whitespace do not matter), conflict.
pub async fn ingest<S: Ingest>(store: &S, prefix: &str) {
    let id = format!("{prefix}-a");
    assert_eq!(
        store.accept(event(&id, 0)).await,
        Ok(AcceptOutcome::Accepted)
    );
    let reordered = parse_event(
        format!(r#"{{ "extra": {{"v": 0}}, "timestamp": 1, "body": "b0", "name": "contract", "id": "{id}" }}"#)
            .as_bytes(),
    )
    .unwrap();
    assert_eq!(store.accept(reordered).await, Ok(AcceptOutcome::Duplicate));
    assert_eq!(
        store.accept(event(&id, 1)).await,
        Ok(AcceptOutcome::Conflict)
    );
}

/// `Ingest::accept_batch`: one outcome per event in order; an id given twice in a batch, or
/// accepted before, is a duplicate (same payload) or a conflict (another); an empty batch is
/// nothing.
pub async fn ingest_batch<S: Ingest>(store: &S, prefix: &str) {
    let id = |n: &str| format!("{prefix}-batch-{n}");
    assert_eq!(
        store.accept(event(&id("before"), 0)).await,
        Ok(AcceptOutcome::Accepted)
    );
    let batch = vec![
        event(&id("a"), 0),
        event(&id("before"), 0),
        event(&id("b"), 0),
        event(&id("a"), 0),
        event(&id("b"), 1),
        event(&id("before"), 2),
    ];
    use AcceptOutcome::{Accepted, Conflict, Duplicate};
    assert_eq!(
        store.accept_batch(batch).await,
        Ok(vec![
            Accepted, Duplicate, Accepted, Duplicate, Conflict, Conflict
        ])
    );
    assert_eq!(store.accept_batch(Vec::new()).await, Ok(Vec::new()));
    assert_eq!(
        store
            .accept_batch(vec![event(&id("a"), 0), event(&id("c"), 0)])
            .await,
        Ok(vec![Duplicate, Accepted]),
        "a batch sent again: what it stored is a duplicate"
    );
}

/// `WorkQueue` over what `Ingest` accepted, on a queue holding nothing else: claims carry the
/// event, delivered work never comes back, a retry comes back when due and not before, dead
/// work does not, a stale lease is refused, released work comes back at once, deferred work
/// comes back when due, untried. `poll` is how long asynchronous hand-offs may take.
pub async fn queue<Q: Ingest + WorkQueue>(queue: &Q, prefix: &str, poll: Duration) {
    let claims = accept_and_claim(queue, prefix, poll).await;
    let mut it = claims.into_iter();
    let (delivered, retried, dead, released, deferred) = (
        it.next().unwrap(),
        it.next().unwrap(),
        it.next().unwrap(),
        it.next().unwrap(),
        it.next().unwrap(),
    );
    let deliver = async |claim: &crate::Claim| {
        queue
            .settle(
                claim,
                attempt(AttemptOutcome::Delivered),
                Settlement::Delivered,
            )
            .await
    };
    deliver(&delivered).await.unwrap();
    let due = crate::now_millis() + 1_500;
    let retry = Settlement::Retry {
        at: due,
        counted: true,
    };
    queue
        .settle(&retried, attempt(AttemptOutcome::Transient), retry)
        .await
        .unwrap();
    let dead_end = Settlement::Dead {
        reason: "contract".into(),
    };
    queue
        .settle(&dead, attempt(AttemptOutcome::Permanent), dead_end)
        .await
        .unwrap();
    queue.release(vec![released.clone()]).await.unwrap();
    queue.defer(vec![deferred.clone()], due).await.unwrap();

    let back = claim_until(queue, 1, LEASE, poll).await;
    assert_eq!(back.len(), 1, "released work comes back");
    assert_eq!(back[0].event_id, released.event_id);
    assert_eq!(
        deliver(&released).await,
        Err(StoreError::LeaseLost(released.event_id.clone())),
        "a settlement under a lease given back is refused"
    );
    deliver(&back[0]).await.unwrap();

    let mut again = claim_until(queue, 2, LEASE, poll + Duration::from_secs(3)).await;
    assert_eq!(again.len(), 2, "a retry and deferred work come back");
    assert!(crate::now_millis() >= due, "…but not before they are due");
    again.sort_by(|a, b| a.event_id.cmp(&b.event_id));
    assert_eq!(again[0].event_id, retried.event_id);
    assert_eq!((again[0].attempts, again[0].tries), (1, 1));
    assert_eq!(again[1].event_id, deferred.event_id);
    assert_eq!(
        (again[1].attempts, again[1].tries),
        (0, 0),
        "deferring is no attempt"
    );
    deliver(&again[0]).await.unwrap();
    deliver(&again[1]).await.unwrap();
    assert!(
        claim_until(queue, 1, LEASE, Duration::from_secs(2))
            .await
            .is_empty(),
        "delivered and dead work never comes back"
    );
}

/// Accepts five events and claims them: each claim carries its event, untried; leased work is
/// not claimed twice. The claims come back sorted by id.
async fn accept_and_claim<Q: Ingest + WorkQueue>(
    queue: &Q,
    prefix: &str,
    poll: Duration,
) -> Vec<crate::Claim> {
    let ids: Vec<String> = (0..5).map(|i| format!("{prefix}-q{i}")).collect();
    for id in &ids {
        assert_eq!(
            queue.accept(event(id, 7)).await,
            Ok(AcceptOutcome::Accepted)
        );
    }
    let mut claims = claim_until(queue, 5, LEASE, poll).await;
    assert_eq!(claims.len(), 5, "every accepted event is claimable");
    claims.sort_by(|a, b| a.event_id.cmp(&b.event_id));
    for (c, id) in claims.iter().zip(&ids) {
        assert_eq!(&c.event_id, id);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&c.payload).unwrap(),
            serde_json::Value::Object(event(id, 7).payload)
        );
        assert_eq!((c.attempts, c.tries, c.trigger), (0, 0, Trigger::Scheduled));
    }
    assert!(
        claim_until(queue, 1, LEASE, Duration::from_millis(500))
            .await
            .is_empty(),
        "leased work is not claimed twice"
    );
    claims
}

/// Polls `check` every 100 ms until it gives `Some`, for `within`; the operations of one
/// backend read what another process (or AWS) settled, a moment later.
async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}, within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `Operations` port over what `Ingest` and `WorkQueue` did, on a queue holding nothing
/// else: `trace` tells an event's story (received, each attempt, delivered or dead), an unknown
/// id has none; `dead_letters` lists the dead with their reason and filters by it; `redrive`
/// puts a dead letter back with a fresh budget and a `redrive` trigger and says what it skipped;
/// `purge` removes dead letters (a dry run only says which), after which they are not
/// redriven. `poll` is how long asynchronous hand-offs may take.
pub async fn operations<Q, O>(queue: &Q, ops: &O, prefix: &str, poll: Duration)
where
    Q: Ingest + WorkQueue,
    O: crate::ops::Operations,
{
    let id = |name: &str| format!("{prefix}-ops-{name}");
    let case = OpsCase {
        fine: id("fine"),
        refused: id("refused"),
        doomed: id("doomed"),
        unknown: id("unknown"),
        poll,
    };
    trace_before_delivery(queue, ops, &case).await;
    pause_and_resume(ops, &case).await;
    deliver_one_kill_two(queue, &case).await;
    trace_after_settling(ops, &case).await;
    list_dead_letters(ops, &case).await;
    list_events(ops, &case, prefix).await;
    redrive_one(queue, ops, &case).await;
    purge_one(ops, &case).await;
}

/// The events of the operations contract: one delivered, two dead (one redriven, one purged).
struct OpsCase {
    fine: String,
    refused: String,
    doomed: String,
    unknown: String,
    poll: Duration,
}

const LEASE: Duration = Duration::from_secs(30);

fn by_reason(reason: &str) -> crate::ops::DlqFilter {
    crate::ops::DlqFilter {
        reason: Some(reason.to_owned()),
        ..crate::ops::DlqFilter::default()
    }
}

/// Accepted events have a story with no attempts yet; an unknown id has none.
/// A pause stands until resumed: a second pause leaves the first, `status` and the trace of a
/// waiting event carry it, and a resume returns it once.
async fn pause_and_resume<O: crate::ops::Operations>(ops: &O, case: &OpsCase) {
    use crate::hold::Pause;
    let pause = Pause {
        since: crate::now_millis(),
        by: "contract".into(),
        reason: Some("maintenance".into()),
    };
    assert_eq!(ops.pause(pause.clone()).await, Ok(None), "paused");
    let second = Pause {
        by: "someone else".into(),
        reason: None,
        ..pause.clone()
    };
    assert_eq!(
        ops.pause(second).await,
        Ok(Some(pause.clone())),
        "a pause that stands is left as it is"
    );
    assert_eq!(ops.status().await.unwrap().pause, Some(pause.clone()));
    let told = ops.trace(&case.fine).await.unwrap().unwrap();
    assert_eq!(
        told.paused,
        Some(pause.clone()),
        "a waiting event is held back"
    );
    assert_eq!(ops.resume().await, Ok(Some(pause)), "resumed");
    assert_eq!(ops.resume().await, Ok(None), "nothing to resume");
    assert_eq!(ops.status().await.unwrap().pause, None);
}

async fn trace_before_delivery<Q: Ingest, O: crate::ops::Operations>(
    queue: &Q,
    ops: &O,
    case: &OpsCase,
) {
    for name in [&case.fine, &case.refused, &case.doomed] {
        assert_eq!(
            queue.accept(event(name, 3)).await,
            Ok(AcceptOutcome::Accepted)
        );
    }
    assert_eq!(
        ops.trace(&case.unknown).await,
        Ok(None),
        "no story for an unknown id"
    );
    let told = ops
        .trace(&case.fine)
        .await
        .unwrap()
        .expect("an accepted event has a story");
    assert_eq!(
        told.payload,
        serde_json::Value::Object(event(&case.fine, 3).payload)
    );
    assert!(told.attempts.is_empty() && told.dead_letter.is_none());
}

async fn deliver_one_kill_two<Q: WorkQueue>(queue: &Q, case: &OpsCase) {
    let claims = claim_until(queue, 3, LEASE, case.poll).await;
    assert_eq!(claims.len(), 3, "every accepted event is claimable");
    for claim in &claims {
        let (outcome, settlement) = if claim.event_id == case.fine {
            (AttemptOutcome::Delivered, Settlement::Delivered)
        } else {
            (
                AttemptOutcome::Permanent,
                Settlement::Dead {
                    reason: format!("permanent failure: contract {}", claim.event_id),
                },
            )
        };
        queue
            .settle(claim, attempt(outcome), settlement)
            .await
            .unwrap();
    }
}

/// The delivered event's story ends delivered; a dead one's in the dead-letter queue.
async fn trace_after_settling<O: crate::ops::Operations>(ops: &O, case: &OpsCase) {
    use crate::delivery::DeliveryStatus;
    let delivered = ops.trace(&case.fine).await.unwrap().unwrap();
    assert_eq!(delivered.delivery.status, DeliveryStatus::Delivered);
    assert_eq!(delivered.attempts.len(), 1);
    assert_eq!(delivered.attempts[0].outcome, AttemptOutcome::Delivered);
    let dead = eventually(case.poll, "the dead event traced as dead", || async {
        ops.trace(&case.refused)
            .await
            .unwrap()
            .filter(|t| t.delivery.status == DeliveryStatus::Dead && t.dead_letter.is_some())
    })
    .await;
    assert_eq!(dead.attempts[0].outcome, AttemptOutcome::Permanent);
    let letter = dead
        .dead_letter
        .expect("a dead event's story ends in the dead-letter queue");
    assert!(letter.reason.contains(&case.refused), "{}", letter.reason);
}

/// Dead letters are listed with their reasons, and filtered by them.
async fn list_dead_letters<O: crate::ops::Operations>(ops: &O, case: &OpsCase) {
    let (refused, doomed) = (case.refused.as_str(), case.doomed.as_str());
    let listed = eventually(case.poll, "both dead letters listed", || async {
        let listed = ops
            .dead_letters(&crate::ops::DlqFilter::default())
            .await
            .unwrap();
        let ids: Vec<&str> = listed.iter().map(|d| d.event_id.as_str()).collect();
        (ids.contains(&refused) && ids.contains(&doomed)).then_some(listed)
    })
    .await;
    assert!(
        listed.iter().all(|d| d.reason.contains("contract")),
        "{listed:?}"
    );
    let one = ops
        .dead_letters(&by_reason(&refused.to_uppercase()))
        .await
        .unwrap();
    let ids: Vec<&str> = one.iter().map(|d| d.event_id.as_str()).collect();
    assert_eq!(ids, [refused], "the reason filter ignores case");
    assert!(
        ops.dead_letters(&by_reason("no such reason"))
            .await
            .unwrap()
            .is_empty()
    );
    let picked = ops
        .dead_letters(&crate::ops::DlqFilter {
            ids: Some(vec![
                doomed.to_owned(),
                case.fine.clone(),
                case.unknown.clone(),
            ]),
            ..crate::ops::DlqFilter::default()
        })
        .await
        .unwrap();
    let ids: Vec<&str> = picked.iter().map(|d| d.event_id.as_str()).collect();
    assert_eq!(ids, [doomed], "a selection by id takes dead letters only");
    assert!(ops.status().await.is_ok(), "a status can be read");
}

/// Events are listed with their status, filtered by id prefix, status, time and a payload
/// field, and paged by cursor however small the page; a cursor the store did not give is an
/// error. Dead letters are grouped by reason.
async fn list_events<O: crate::ops::Operations>(ops: &O, case: &OpsCase, prefix: &str) {
    use crate::delivery::DeliveryStatus;
    use crate::ops::{EventQuery, FieldMatch};
    let ours = EventQuery {
        id_prefix: Some(format!("{prefix}-ops-")),
        limit: 50,
        ..EventQuery::default()
    };
    let listed = eventually(
        case.poll,
        "the three events listed, one delivered",
        || async {
            let page = ops.events(&ours).await.unwrap();
            let delivered = page
                .events
                .iter()
                .filter(|e| e.status == DeliveryStatus::Delivered)
                .count();
            (page.events.len() == 3 && delivered == 1).then_some(page)
        },
    )
    .await;
    let fine = listed
        .events
        .iter()
        .find(|e| e.event_id == case.fine)
        .expect("the delivered event is listed");
    assert_eq!(fine.name.as_deref(), Some("contract"));
    assert!(fine.delivered_at.is_some() && fine.tries == 1, "{fine:?}");
    let query = |change: &dyn Fn(&mut EventQuery)| {
        let mut q = ours.clone();
        change(&mut q);
        q
    };
    let ids = |page: crate::ops::EventPage| {
        let mut ids: Vec<String> = page.events.into_iter().map(|e| e.event_id).collect();
        ids.sort();
        ids
    };
    let dead = ops
        .events(&query(&|q| q.status = Some(DeliveryStatus::Dead)))
        .await
        .unwrap();
    let mut want = vec![case.refused.clone(), case.doomed.clone()];
    want.sort();
    assert_eq!(ids(dead), want, "the status filter");
    let by_field = ops
        .events(&query(&|q| {
            q.field = Some(FieldMatch::parse("extra.v=3").unwrap());
        }))
        .await
        .unwrap();
    assert_eq!(
        by_field.events.len(),
        3,
        "a payload field, not a string, as JSON text"
    );
    let none = ops
        .events(&query(&|q| {
            q.field = Some(FieldMatch::parse("name=other").unwrap())
        }))
        .await
        .unwrap();
    assert!(none.events.is_empty(), "{none:?}");
    let future = ops
        .events(&query(&|q| q.since = Some(crate::now_millis() + 60_000)))
        .await
        .unwrap();
    assert!(future.events.is_empty(), "the time filter");
    // One event a page, following the cursor to the end.
    let mut seen = Vec::new();
    let mut cursor = None;
    for _ in 0..20 {
        let page = ops
            .events(&query(&|q| {
                q.limit = 1;
                q.cursor = cursor.clone();
            }))
            .await
            .unwrap();
        assert!(page.events.len() <= 1, "{page:?}");
        seen.extend(page.events.into_iter().map(|e| e.event_id));
        cursor = page.next;
        if cursor.is_none() {
            break;
        }
    }
    seen.sort();
    let mut all = vec![case.fine.clone(), case.refused.clone(), case.doomed.clone()];
    all.sort();
    assert_eq!(seen, all, "paging one at a time finds each event once");
    let bad = ops
        .events(&query(&|q| q.cursor = Some("not a cursor".into())))
        .await;
    assert!(matches!(bad, Err(StoreError::Invalid(_))), "{bad:?}");
    let groups = ops.dead_letter_groups().await.unwrap();
    let ours: Vec<_> = groups
        .iter()
        .filter(|g| g.reason.contains(&format!("{prefix}-ops-")))
        .collect();
    assert_eq!(ours.len(), 2, "{groups:?}");
    assert!(ours.iter().all(|g| g.count == 1 && g.first_at <= g.last_at));
}

/// A redrive puts the dead letter back, with a fresh budget, triggered `redrive`.
async fn redrive_one<Q, O>(queue: &Q, ops: &O, case: &OpsCase)
where
    Q: WorkQueue,
    O: crate::ops::Operations,
{
    let report = ops
        .redrive(
            &[case.refused.clone(), case.unknown.clone()],
            Duration::ZERO,
        )
        .await
        .unwrap();
    assert_eq!(report.redriven, std::slice::from_ref(&case.refused));
    assert_eq!(report.skipped, std::slice::from_ref(&case.unknown));
    let back = claim_until(queue, 1, LEASE, case.poll).await;
    assert_eq!(back.len(), 1, "a redriven event is claimable");
    assert_eq!(back[0].event_id, case.refused);
    assert_eq!((back[0].attempts, back[0].trigger), (0, Trigger::Redrive));
    queue
        .settle(
            &back[0],
            attempt(AttemptOutcome::Delivered),
            Settlement::Delivered,
        )
        .await
        .unwrap();
    let redriven = ops.trace(&case.refused).await.unwrap().unwrap();
    assert_eq!(
        redriven.delivery.status,
        crate::delivery::DeliveryStatus::Delivered
    );
    assert_eq!(redriven.attempts.len(), 2, "both attempts are in its story");
}

/// A purge: the dry run says which and removes nothing; the purge removes them, and a purged
/// dead letter is not redriven.
async fn purge_one<O: crate::ops::Operations>(ops: &O, case: &OpsCase) {
    let doomed_only = by_reason(&case.doomed);
    let dry = ops.purge(&doomed_only, true).await.unwrap();
    assert_eq!(dry.purged, std::slice::from_ref(&case.doomed));
    assert_eq!(
        ops.dead_letters(&doomed_only).await.unwrap().len(),
        1,
        "a dry run removes nothing"
    );
    let purged = ops.purge(&doomed_only, false).await.unwrap();
    assert_eq!(purged.purged, std::slice::from_ref(&case.doomed));
    eventually(
        case.poll,
        "the purged dead letter gone from the list",
        || async {
            ops.dead_letters(&doomed_only)
                .await
                .unwrap()
                .is_empty()
                .then_some(())
        },
    )
    .await;
    let after = ops
        .redrive(std::slice::from_ref(&case.doomed), Duration::ZERO)
        .await
        .unwrap();
    assert!(
        after.redriven.is_empty(),
        "a purged dead letter is not redriven: {after:?}"
    );
}
