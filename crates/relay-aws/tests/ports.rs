//! The AWS adapters against a real local AWS API (moto over HTTP): the same port contract as
//! the embedded store, and the outbox's promise that an event stored but not queued is still
//! delivered.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::Duration;

use relay_aws::outbox::StreamPoller;
use relay_aws::testing::MotoServer;
use relay_aws::{DynamoIngest, SqsQueue};
use relay_core::{
    AcceptOutcome, AttemptRecord, Claim, Event, Ingest, Settlement, StoreError, WorkQueue,
    parse_event,
};
use tokio::sync::oneshot;

/// Ingest and queue of one stack, as one value for the contract.
#[derive(Debug, Clone)]
struct Stack {
    ingest: DynamoIngest,
    queue: SqsQueue,
}

impl Ingest for Stack {
    async fn accept(&self, event: Event) -> Result<AcceptOutcome, StoreError> {
        self.ingest.accept(event).await
    }
    async fn accept_batch(&self, events: Vec<Event>) -> Result<Vec<AcceptOutcome>, StoreError> {
        self.ingest.accept_batch(events).await
    }
}

impl WorkQueue for Stack {
    async fn claim(&self, max: usize, lease: Duration) -> Result<Vec<Claim>, StoreError> {
        self.queue.claim(max, lease).await
    }
    async fn settle(
        &self,
        claim: &Claim,
        attempt: AttemptRecord,
        settlement: Settlement,
    ) -> Result<(), StoreError> {
        self.queue.settle(claim, attempt, settlement).await
    }
    async fn release(&self, claims: Vec<Claim>) -> Result<(), StoreError> {
        self.queue.release(claims).await
    }
    async fn defer(&self, claims: Vec<Claim>, until: i64) -> Result<(), StoreError> {
        self.queue.defer(claims, until).await
    }
    async fn wait_for_work(&self, at_most: Duration) {
        self.queue.wait_for_work(at_most).await
    }
}

/// Runs `contract` against a fresh stack, with the outbox feeding the queue as the stream's
/// Lambda does in an account.
async fn on_a_stack<F, Fut>(name: &str, contract: F)
where
    F: FnOnce(Stack, relay_aws::Aws) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let moto = MotoServer::start();
    let aws = moto.stack(name).await;
    let stack = Stack {
        ingest: DynamoIngest::new(aws.clone()),
        queue: SqsQueue::new(aws.clone(), Duration::from_secs(3600))
            .await
            .unwrap(),
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let poller = tokio::spawn(
        StreamPoller::new(aws.clone(), stack.queue.queue_url().to_owned()).run(async {
            let _ = stopped.await;
        }),
    );
    contract(stack, aws).await;
    let _ = stop.send(());
    poller.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_port_contract_holds_on_aws() {
    on_a_stack("contract", |stack, _| async move {
        // The queue's part first: it expects to see only its own events.
        relay_core::contract::queue(&stack, "aws", Duration::from_secs(10)).await;
        relay_core::contract::ingest(&stack.ingest, "aws").await;
        relay_core::contract::ingest_batch(&stack.ingest, "aws").await;
    })
    .await;
}

/// The operations' contract, which the embedded store runs too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operations_contract_holds_on_aws() {
    on_a_stack("operations", |stack, aws| async move {
        let ops = relay_aws::ops::AwsOps::connect(aws).await.unwrap();
        relay_core::contract::operations(&stack, &ops, "aws", Duration::from_secs(10)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stored_but_not_yet_queued_is_still_delivered() {
    let moto = MotoServer::start();
    let aws = moto.stack("outbox").await;
    let ingest = DynamoIngest::new(aws.clone());
    let queue = SqsQueue::new(aws.clone(), Duration::from_secs(3600))
        .await
        .unwrap();
    let url = queue.queue_url().to_owned();
    let event = parse_event(br#"{"id":"x","name":"n","body":"b","timestamp":1}"#).unwrap();
    assert_eq!(ingest.accept(event).await, Ok(AcceptOutcome::Accepted));

    // The second step fails: the queue is gone.
    aws.sqs.delete_queue().queue_url(&url).send().await.unwrap();
    let mut poller = StreamPoller::new(aws.clone(), url.clone());
    assert!(poller.poll_once().await.is_err(), "forwarding must fail");
    assert!(poller.poll_once().await.is_err(), "…and not skip the event");

    // The queue is back: the same poller (or a restarted one) forwards the event.
    relay_aws::create_resources(&aws).await.unwrap();
    let restarted = StreamPoller::new(aws.clone(), url).poll_once().await;
    assert_eq!(restarted.ok(), Some(1));
    let claims = relay_core::contract::claim_until(
        &queue,
        1,
        Duration::from_secs(30),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0].event_id, "x");
}

/// A dispatcher is SIGKILLed holding an event, and its message becomes visible again before
/// the event's lease ends (the visibility timeout counts from the receive, the lease from the
/// claim just after it; on Lambda the two are configured apart). The next dispatcher's claim
/// is refused while the dead one's lease lasts; the message must not be dropped for that, or
/// the acknowledged event is never delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_back_before_a_dead_dispatchers_lease_ends_is_not_dropped() {
    let moto = MotoServer::start();
    let aws = moto.stack("killed").await;
    let event = parse_event(br#"{"id":"k","name":"n","body":"b","timestamp":1}"#).unwrap();
    assert_eq!(
        DynamoIngest::new(aws.clone()).accept(event).await,
        Ok(AcceptOutcome::Accepted)
    );
    let dead = SqsQueue::new(aws.clone(), Duration::from_secs(3600))
        .await
        .unwrap();
    let url = dead.queue_url().to_owned();
    assert_eq!(
        StreamPoller::new(aws.clone(), url.clone())
            .poll_once()
            .await
            .ok(),
        Some(1)
    );

    // The first dispatcher receives the message (visible again in 1 s), claims the event for
    // 4 s, and dies without settling it.
    let message = aws
        .sqs
        .receive_message()
        .queue_url(&url)
        .visibility_timeout(1)
        .wait_time_seconds(1)
        .send()
        .await
        .unwrap()
        .messages
        .unwrap_or_default()
        .pop()
        .expect("the forwarded message");
    let received = relay_aws::Received {
        message_id: message.message_id.unwrap_or_default(),
        receipt: message.receipt_handle.unwrap_or_default(),
        body: message.body.unwrap_or_default(),
        trace: None,
    };
    let (claims, failed) = dead
        .claim_messages(vec![received], Duration::from_secs(4))
        .await;
    assert_eq!((claims.len(), failed.len()), (1, 0));
    drop(dead);

    // The next dispatcher sees the message again while the lease holds, and gets the event
    // once it has run out.
    let next = SqsQueue::new(aws.clone(), Duration::from_secs(3600))
        .await
        .unwrap();
    let claims = relay_core::contract::claim_until(
        &next,
        1,
        Duration::from_secs(30),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(
        claims
            .iter()
            .map(|c| c.event_id.as_str())
            .collect::<Vec<_>>(),
        ["k"],
        "the event must be claimed again after the dead dispatcher's lease"
    );
    assert_eq!(claims[0].tries, 0, "it was never attempted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_stack_or_endpoint_is_a_clear_error() {
    let moto = MotoServer::start();
    let aws = relay_aws::Aws::connect(&moto.options("absent"))
        .await
        .unwrap();
    let missing = SqsQueue::new(aws, Duration::from_secs(60))
        .await
        .unwrap_err();
    assert!(
        matches!(missing, relay_aws::AwsError::NotFound(_)),
        "{missing}"
    );
    assert!(missing.to_string().contains("absent-queue"), "{missing}");

    let mut options = moto.options("absent");
    options.endpoint_url = Some("http://127.0.0.1:9".into());
    let aws = relay_aws::Aws::connect(&options).await.unwrap();
    // Refused at once: a bound, not a measurement (a hang would wait for the SDK's retries
    // and timeouts, minutes).
    let unreachable = tokio::time::timeout(
        Duration::from_secs(30),
        SqsQueue::new(aws, Duration::from_secs(60)),
    )
    .await
    .expect("an endpoint that refuses connections fails, it does not hang")
    .unwrap_err();
    assert!(
        matches!(unreachable, relay_aws::AwsError::Unreachable { .. }),
        "{unreachable}"
    );
}

/// Dispatchers die on two events' messages until SQS moves them to the DLQ (`maxReceiveCount`):
/// one never claimed, one claimed and abandoned. `relay dlq list` must show both as dead
/// letters (with the reason), and `relay dlq redrive --all` must deliver them, never delete
/// their only messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_sqs_moved_to_the_dlq_are_dead_letters_to_redrive_never_deleted() {
    use relay_core::ops::{DlqFilter, Operations};
    let moto = MotoServer::start();
    let aws = moto.stack("dlqnet").await;
    let ingest = DynamoIngest::new(aws.clone());
    let queue = SqsQueue::new(aws.clone(), Duration::from_secs(3600))
        .await
        .unwrap();
    let url = queue.queue_url().to_owned();
    for id in ["abandoned", "unclaimed"] {
        let raw = format!(r#"{{"id":"{id}","name":"n","body":"b","timestamp":1}}"#);
        assert_eq!(
            ingest.accept(parse_event(raw.as_bytes()).unwrap()).await,
            Ok(AcceptOutcome::Accepted)
        );
    }
    relay_aws::outbox::forward(&aws, &url, &["abandoned".into()]).await;
    // A dispatcher claims it for a second and dies.
    let claimed = queue.claim(10, Duration::from_secs(1)).await.unwrap();
    assert_eq!(claimed.len(), 1);
    relay_aws::outbox::forward(&aws, &url, &["unclaimed".into()]).await;
    // Dispatchers that die right after each receive: visible again at once, never settled.
    let depth = |url: String| {
        let aws = aws.clone();
        async move {
            let out = aws
                .sqs
                .get_queue_attributes()
                .queue_url(url)
                .attribute_names(
                    aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages,
                )
                .send()
                .await
                .unwrap();
            out.attributes().unwrap()
                [&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages]
                .parse::<u32>()
                .unwrap()
        }
    };
    let dlq = queue.dlq_url().to_owned();
    for _ in 0..60 {
        if depth(dlq.clone()).await == 2 {
            break;
        }
        let _ = aws
            .sqs
            .receive_message()
            .queue_url(&url)
            .max_number_of_messages(10)
            .visibility_timeout(0)
            .send()
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        depth(dlq.clone()).await,
        2,
        "SQS moved both messages to the DLQ"
    );
    assert_eq!(
        depth(url.clone()).await,
        0,
        "and they were the events' only messages"
    );

    let ops = relay_aws::ops::AwsOps::connect(aws.clone()).await.unwrap();
    let listed = ops.dead_letters(&DlqFilter::default()).await.unwrap();
    let mut ids: Vec<&str> = listed.iter().map(|d| d.event_id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["abandoned", "unclaimed"], "listed as dead letters");
    for d in &listed {
        assert!(
            d.reason.contains("dispatchers died on it 5 times"),
            "{}",
            d.reason
        );
    }
    let trace = ops.trace("unclaimed").await.unwrap().unwrap();
    assert!(trace.dead_letter.is_some(), "and traced as one");

    // The runbook's answer to the DLQ alarm: redrive them all. They are delivered.
    let all: Vec<String> = listed.iter().map(|d| d.event_id.clone()).collect();
    let redriven = ops.redrive(&all, Duration::ZERO).await.unwrap();
    assert_eq!(redriven.redriven.len(), 2);
    assert_eq!(
        depth(dlq).await,
        0,
        "the DLQ copies of redriven events are gone"
    );
    // They are claimable again, and delivered once settled.
    let claims = relay_core::contract::claim_until(
        &queue,
        2,
        Duration::from_secs(30),
        Duration::from_secs(30),
    )
    .await;
    let mut delivered: Vec<String> = Vec::new();
    for claim in &claims {
        let attempt = AttemptRecord {
            started_at: relay_core::now_millis(),
            duration_ms: 1,
            outcome: relay_core::AttemptOutcome::Delivered,
            http_status: Some(200),
            detail: "ok".into(),
            trigger: relay_core::Trigger::Scheduled,
        };
        queue
            .settle(claim, attempt, Settlement::Delivered)
            .await
            .unwrap();
        delivered.push(claim.event_id.clone());
    }
    delivered.sort();
    for id in ["abandoned", "unclaimed"] {
        let trace = ops.trace(id).await.unwrap().unwrap();
        assert_eq!(
            trace.delivery.status,
            relay_core::delivery::DeliveryStatus::Delivered,
            "{id}"
        );
    }
    assert_eq!(delivered, ["abandoned", "unclaimed"]);
}

/// A relay through a proxy that drops the connection right after the first call matching
/// `only` reached AWS: the call happened, its answer is lost, and the SDK tries it again.
async fn answer_lost(
    moto: &MotoServer,
    stack: &str,
    only: &str,
) -> (aws_faults::Proxy, relay_aws::Aws) {
    let proxy = aws_faults::Proxy::start(
        &moto.url,
        aws_faults::Config {
            faults: vec![aws_faults::Fault::DropAfter],
            only: Some(only.into()),
            window: Some((1, 1)),
            ..aws_faults::Config::new(1.0)
        },
    )
    .await
    .unwrap();
    let mut options = moto.options(stack);
    options.endpoint_url = Some(proxy.url());
    (proxy, relay_aws::Aws::connect(&options).await.unwrap())
}

/// The commit, the claim and the settlement are conditional writes: when one lands and its
/// answer is lost, the SDK's retry is refused by its own first write. Each must be known for
/// what it was, not taken for a duplicate, a claim held elsewhere, or a lost lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conditional_write_whose_answer_was_lost_is_known_for_what_it_did() {
    let moto = MotoServer::start();
    let direct = moto.stack("lost").await;
    let event = || parse_event(br#"{"id":"l","name":"n","body":"b","timestamp":1}"#).unwrap();

    let (proxy, aws) = answer_lost(&moto, "lost", "PutItem").await;
    assert_eq!(
        DynamoIngest::new(aws).accept(event()).await,
        Ok(AcceptOutcome::Accepted)
    );
    assert_eq!(
        proxy.stats().drop_after,
        1,
        "the first write's answer was lost"
    );
    assert_eq!(
        DynamoIngest::new(direct.clone()).accept(event()).await,
        Ok(AcceptOutcome::Duplicate),
        "a true second write is still a duplicate"
    );

    let url = SqsQueue::new(direct.clone(), Duration::from_secs(60))
        .await
        .unwrap()
        .queue_url()
        .to_owned();
    relay_aws::outbox::forward(&direct, &url, &["l".into()]).await;
    let (proxy, aws) = answer_lost(&moto, "lost", "UpdateItem").await;
    let queue = SqsQueue::new(aws, Duration::from_secs(60)).await.unwrap();
    let claims = relay_core::contract::claim_until(
        &queue,
        1,
        Duration::from_secs(30),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(proxy.stats().drop_after, 1);
    assert_eq!(
        claims.len(),
        1,
        "the claim that landed is this dispatcher's"
    );

    let (proxy, aws) = answer_lost(&moto, "lost", "UpdateItem").await;
    let settler = SqsQueue::new(aws, Duration::from_secs(60)).await.unwrap();
    let attempt = AttemptRecord {
        started_at: 0,
        duration_ms: 1,
        outcome: relay_core::AttemptOutcome::Delivered,
        http_status: Some(200),
        detail: "ok".into(),
        trigger: relay_core::Trigger::Scheduled,
    };
    assert_eq!(
        settler
            .settle(&claims[0], attempt, Settlement::Delivered)
            .await,
        Ok(())
    );
    assert_eq!(
        proxy.stats().drop_after,
        1,
        "the settlement's answer was lost"
    );
    let ops = relay_aws::ops::AwsOps::connect(direct).await.unwrap();
    let trace = relay_core::ops::Operations::trace(&ops, "l")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(trace.delivery.status, relay_core::DeliveryStatus::Delivered);
}

/// The outbox sends at least once, so one receive can bring two messages of one event: it is
/// claimed once, and the other message waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_messages_of_one_event_in_one_receive_are_one_claim() {
    let moto = MotoServer::start();
    let aws = moto.stack("twice").await;
    let event = parse_event(br#"{"id":"t","name":"n","body":"b","timestamp":1}"#).unwrap();
    assert_eq!(
        DynamoIngest::new(aws.clone()).accept(event).await,
        Ok(AcceptOutcome::Accepted)
    );
    let queue = SqsQueue::new(aws.clone(), Duration::from_secs(3600))
        .await
        .unwrap();
    relay_aws::outbox::forward(&aws, queue.queue_url(), &["t".into(), "t".into()]).await;
    let mut claims = Vec::new();
    for _ in 0..5 {
        claims.extend(queue.claim(10, Duration::from_secs(30)).await.unwrap());
    }
    assert_eq!(claims.len(), 1, "{claims:?}");
}
