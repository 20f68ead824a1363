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
/// event, delivered work never comes back, a retry comes back when due and not before, dead work does not, a stale lease is
/// refused, released work comes back at once. `poll` is how long asynchronous hand-offs may
/// take.
pub async fn queue<Q: Ingest + WorkQueue>(queue: &Q, prefix: &str, poll: Duration) {
    let lease = Duration::from_secs(30);
    let ids: Vec<String> = (0..4).map(|i| format!("{prefix}-q{i}")).collect();
    for id in &ids {
        assert_eq!(
            queue.accept(event(id, 7)).await,
            Ok(AcceptOutcome::Accepted)
        );
    }
    let mut claims = claim_until(queue, 4, lease, poll).await;
    assert_eq!(claims.len(), 4, "every accepted event is claimable");
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
        claim_until(queue, 1, lease, Duration::from_millis(500))
            .await
            .is_empty(),
        "leased work is not claimed twice"
    );

    let mut it = claims.into_iter();
    let (delivered, retried, dead, released) = (
        it.next().unwrap(),
        it.next().unwrap(),
        it.next().unwrap(),
        it.next().unwrap(),
    );
    queue
        .settle(
            &delivered,
            attempt(AttemptOutcome::Delivered),
            Settlement::Delivered,
        )
        .await
        .unwrap();
    let due = crate::now_millis() + 1_500;
    queue
        .settle(
            &retried,
            attempt(AttemptOutcome::Transient),
            Settlement::Retry {
                at: due,
                counted: true,
            },
        )
        .await
        .unwrap();
    queue
        .settle(
            &dead,
            attempt(AttemptOutcome::Permanent),
            Settlement::Dead {
                reason: "contract".into(),
            },
        )
        .await
        .unwrap();
    queue.release(vec![released.clone()]).await.unwrap();

    let back = claim_until(queue, 1, lease, poll).await;
    assert_eq!(back.len(), 1, "released work comes back");
    assert_eq!(back[0].event_id, released.event_id);
    let stale = queue
        .settle(
            &released,
            attempt(AttemptOutcome::Delivered),
            Settlement::Delivered,
        )
        .await;
    assert_eq!(
        stale,
        Err(StoreError::LeaseLost(released.event_id.clone())),
        "a settlement under a lease given back is refused"
    );
    queue
        .settle(
            &back[0],
            attempt(AttemptOutcome::Delivered),
            Settlement::Delivered,
        )
        .await
        .unwrap();

    let again = claim_until(queue, 1, lease, poll + Duration::from_secs(3)).await;
    assert_eq!(again.len(), 1, "a retry comes back");
    assert!(crate::now_millis() >= due, "…but not before it is due");
    assert_eq!(again[0].event_id, retried.event_id);
    assert_eq!((again[0].attempts, again[0].tries), (1, 1));
    queue
        .settle(
            &again[0],
            attempt(AttemptOutcome::Delivered),
            Settlement::Delivered,
        )
        .await
        .unwrap();
    assert!(
        claim_until(queue, 1, lease, Duration::from_secs(2))
            .await
            .is_empty(),
        "delivered and dead work never comes back"
    );
}
