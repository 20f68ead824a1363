//! The Lambda handlers in-process, fed the event fixtures in `lambdas/events/` (the shapes API
//! Gateway, DynamoDB Streams and SQS send), against moto and the mock target.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::Duration;

use aws_lambda_events::event::dynamodb::Event as StreamEvent;
use aws_lambda_events::event::sqs::SqsEvent;
use lambda_http::lambda_runtime::{Context, LambdaEvent};
use lambda_http::request::LambdaRequest;
use lambda_http::{Adapter, Service};
use relay_aws::testing::MotoServer;
use relay_aws::{DynamoIngest, SqsQueue};
use relay_core::{Ingest, parse_event};
use relay_dispatch::{DispatchConfig, GraphqlClient, TargetConfig};
use relay_ingest::IngestConfig;
use relay_lambda::{BatchDispatcher, forward_stream};
use serde_json::{Value, json};

/// Up to ten messages, waiting a second for them, hidden for a minute after.
async fn receive(aws: &relay_aws::Aws, url: &str) -> Vec<aws_sdk_sqs::types::Message> {
    aws.sqs
        .receive_message()
        .queue_url(url)
        .max_number_of_messages(10)
        .visibility_timeout(60)
        .wait_time_seconds(1)
        .send()
        .await
        .unwrap()
        .messages
        .unwrap_or_default()
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/../../lambdas/events/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_receiver_stores_an_api_gateway_event_and_answers_as_the_proxy_expects() {
    let moto = MotoServer::start();
    let aws = moto.stack("receiver").await;
    let router = relay_ingest::router(
        DynamoIngest::new(aws.clone()),
        IngestConfig {
            api_keys: vec!["fixture-key".into()],
            ..IngestConfig::default()
        },
    );
    let mut event: Value = serde_json::from_str(&fixture("apigw-rest-post-event.json")).unwrap();
    // In the account the stage prefix is stripped (AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH); the
    // fixture's REST stage would otherwise prefix the path.
    event["requestContext"]["stage"] = Value::Null;
    let send = |event: Value| {
        let request: LambdaRequest = serde_json::from_value(event).unwrap();
        Adapter::from(router.clone()).call(LambdaEvent::new(request, Context::default()))
    };
    let answer = serde_json::to_value(send(event.clone()).await.unwrap()).unwrap();
    assert_eq!(answer["statusCode"], 202, "{answer}");
    let body: Value = serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
    assert_eq!(body, json!({"id": "fixture-1", "status": "accepted"}));
    let again = serde_json::to_value(send(event.clone()).await.unwrap()).unwrap();
    assert_eq!(
        again["statusCode"], 200,
        "the same event again is a duplicate"
    );

    event["headers"]["x-api-key"] = json!("wrong");
    event["multiValueHeaders"]["x-api-key"] = json!(["wrong"]);
    let refused = serde_json::to_value(send(event).await.unwrap()).unwrap();
    assert_eq!(refused["statusCode"], 401);
    let item = aws
        .dynamodb
        .get_item()
        .table_name(&aws.stack.events_table)
        .key(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S("EVT#fixture-1".into()),
        )
        .key(
            "sk",
            aws_sdk_dynamodb::types::AttributeValue::S("META".into()),
        )
        .send()
        .await
        .unwrap()
        .item
        .expect("stored");
    assert!(item["payload"].as_s().unwrap().contains("order.created"));
    // `META` expires by TTL, long after delivery: the S3 archive keeps the event after that.
    let expires: i64 = item["expires_at"].as_n().unwrap().parse().unwrap();
    let in_days = (expires - relay_core::now_millis() / 1000) / 86_400;
    assert!((36..=37).contains(&in_days), "{in_days} days");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_forwarder_queues_new_events_only() {
    let moto = MotoServer::start();
    let aws = moto.stack("forwarder").await;
    let queue = SqsQueue::new(aws.clone(), Duration::from_secs(60))
        .await
        .unwrap();
    let event: StreamEvent = serde_json::from_str(&fixture("dynamodb-stream-insert.json")).unwrap();
    let response = forward_stream(&aws, queue.queue_url(), event).await;
    assert!(response.batch_item_failures.is_empty());
    let received = receive(&aws, queue.queue_url()).await;
    let mut bodies: Vec<Value> = received
        .into_iter()
        .filter_map(|m| serde_json::from_str(&m.body?).ok())
        .collect();
    bodies.sort_by_key(|b| b["id"].as_str().unwrap_or_default().to_owned());
    let ids: Vec<&str> = bodies.iter().filter_map(|b| b["id"].as_str()).collect();
    assert_eq!(ids, ["stream-1", "stream-2"], "INSERTs of events only");
    // The message carries what a claim needs, so it reads no `META`.
    assert_eq!(
        bodies[0]["payload"],
        r#"{"id":"stream-1","name":"n","body":"b","timestamp":1}"#
    );
    assert_eq!(bodies[0]["received_at"], 1_795_341_600_000_i64);

    // The queue gone: the first record that could not be queued is reported, for a retry.
    aws.sqs
        .delete_queue()
        .queue_url(queue.queue_url())
        .send()
        .await
        .unwrap();
    let event: StreamEvent = serde_json::from_str(&fixture("dynamodb-stream-insert.json")).unwrap();
    let response = forward_stream(&aws, queue.queue_url(), event).await;
    let failed: Vec<_> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect();
    assert_eq!(failed, [Some("111".to_owned())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dispatcher_delivers_an_sqs_batch_with_a_partial_batch_response() {
    let target = dispatch_the_fixture_batch(1).await;
    assert_eq!(target.stats().requests, 3, "one request per event");
}

/// `RELAY_BATCH`: the same SQS batch in one request of aliased mutations, each event's fate its
/// own (the poison one dead-lettered, the others delivered), one segment per event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dispatcher_sends_an_sqs_batch_as_one_request_of_aliased_mutations() {
    let target = dispatch_the_fixture_batch(10).await;
    assert_eq!(
        target.stats().requests,
        1,
        "one request for the whole batch"
    );
    assert_eq!(target.stats().bad_idempotency_keys, 0);
}

/// A stack whose work queue holds `events` (id, name), stored and forwarded as the stream's
/// Lambda does.
async fn queued(stack: &str, events: &[(&str, &str)]) -> (MotoServer, relay_aws::Aws, SqsQueue) {
    let moto = MotoServer::start();
    let aws = moto.stack(stack).await;
    let queue = SqsQueue::new(aws.clone(), Duration::from_secs(60))
        .await
        .unwrap();
    let ingest = DynamoIngest::new(aws.clone());
    for (id, name) in events {
        let raw = json!({"id": id, "name": name, "body": "b", "timestamp": 1});
        ingest
            .accept(parse_event(raw.to_string().as_bytes()).unwrap())
            .await
            .unwrap();
    }
    let ids: Vec<relay_aws::outbox::NewEvent> = events.iter().map(|(id, _)| (*id).into()).collect();
    relay_aws::outbox::forward(&aws, queue.queue_url(), &ids).await;
    (moto, aws, queue)
}

/// Received messages as the event source mapping hands them over: the fixture's shape, real
/// receipts.
fn sqs_event(messages: Vec<aws_sdk_sqs::types::Message>) -> SqsEvent {
    let template: Value = serde_json::from_str(&fixture("sqs-batch.json")).unwrap();
    let records: Vec<Value> = messages
        .iter()
        .map(|m| {
            let mut r = template["Records"][0].clone();
            r["messageId"] = json!(m.message_id);
            r["receiptHandle"] = json!(m.receipt_handle);
            r["body"] = json!(m.body);
            r
        })
        .collect();
    serde_json::from_value(json!({"Records": records})).unwrap()
}

/// While the fleet is paused, an invocation sends nothing and defers its batch: the messages
/// are sent again delayed and the received ones deleted, so no receive is spent however long
/// the pause; after the resume the same events are delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_dispatcher_defers_its_batch_without_spending_receives() {
    let target = target_sim::start(
        "127.0.0.1:0".parse().unwrap(),
        target_sim::TargetConfig {
            rate: 1000.0,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let (_moto, aws, queue) = queued("paused", &[("p-1", "ok"), ("p-2", "ok")]).await;
    let pause = relay_core::hold::Pause {
        since: relay_core::now_millis(),
        by: "ana".into(),
        reason: Some("migration".into()),
    };
    assert_eq!(relay_aws::control::pause(&aws, &pause).await.unwrap(), None);
    let client = GraphqlClient::new(&TargetConfig::new(target.url())).unwrap();
    let config = DispatchConfig {
        hold_at_least: Duration::from_secs(2),
        ..DispatchConfig::default()
    };
    let dispatcher = BatchDispatcher::new(queue.clone(), client, config).in_fleet(aws.clone());
    let batch = sqs_event(receive(&aws, queue.queue_url()).await);
    assert_eq!(batch.records.len(), 2);
    let response = dispatcher.dispatch(batch, Duration::from_secs(20)).await;
    assert!(
        response.batch_item_failures.is_empty(),
        "nothing returned as failed"
    );
    assert_eq!(target.stats().requests, 0, "nothing sent while paused");
    // Sent again with a delay: not there at once, there after it.
    assert!(receive(&aws, queue.queue_url()).await.is_empty());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let back = aws
        .sqs
        .receive_message()
        .queue_url(queue.queue_url())
        .max_number_of_messages(10)
        .visibility_timeout(60)
        .wait_time_seconds(1)
        .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
        .send()
        .await
        .unwrap()
        .messages
        .unwrap_or_default();
    assert_eq!(back.len(), 2, "the deferred messages come back");
    for m in &back {
        let count = m
            .attributes()
            .and_then(|a| {
                a.get(&aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount)
            })
            .cloned();
        assert_eq!(
            count.as_deref(),
            Some("1"),
            "a new message: no receive spent"
        );
    }
    assert_eq!(
        relay_aws::control::resume(&aws)
            .await
            .unwrap()
            .map(|p| p.by),
        Some("ana".into())
    );
    // The next invocation syncs with the fleet a period after the last.
    tokio::time::sleep(relay_lambda::fleet::PERIOD).await;
    let response = dispatcher
        .dispatch(sqs_event(back), Duration::from_secs(20))
        .await;
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(target.stats().events, 2, "delivered after the resume");
}

/// The fixture's SQS batch (d-1, d-2 delivered; d-3 refused) through the dispatcher handler,
/// with `batch` events per request, and everything it must leave behind checked.
async fn dispatch_the_fixture_batch(batch: usize) -> target_sim::TargetHandle {
    let target = target_sim::start(
        "127.0.0.1:0".parse().unwrap(),
        target_sim::TargetConfig {
            rate: 1000.0,
            faults: target_sim::Faults {
                reject_names: vec!["poison".into()],
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let events = [("d-1", "ok"), ("d-2", "ok"), ("d-3", "poison")];
    let (_moto, aws, queue) = queued(&format!("dispatcher{batch}"), &events).await;
    let event = sqs_event(receive(&aws, queue.queue_url()).await);
    assert_eq!(event.records.len(), 3);

    let client = GraphqlClient::new(&TargetConfig {
        batch,
        ..TargetConfig::new(target.url())
    })
    .unwrap();
    let dispatcher = BatchDispatcher::new(queue.clone(), client, DispatchConfig::default());
    let (response, emf) = dispatcher
        .dispatch_measured(event, Duration::from_secs(20))
        .await;
    assert!(
        response.batch_item_failures.is_empty(),
        "every outcome was recorded"
    );
    // The invocation's EMF line: what happened, per event.
    assert_eq!(emf.get("Delivered"), Some(&[2.0][..]));
    assert_eq!(emf.get("DeadLettered"), Some(&[1.0][..]));
    assert_eq!(emf.get("Retried"), Some(&[0.0][..]));
    assert_eq!(emf.get("RateLimited"), Some(&[0.0][..]));
    assert_eq!(emf.get("DeliveryLatency").map(<[f64]>::len), Some(2));
    assert_eq!(emf.get("QueueAge").map(<[f64]>::len), Some(3));
    let mut ids: Vec<String> =
        serde_json::from_value(emf.get_property("event_ids").unwrap().clone()).unwrap();
    ids.sort();
    assert_eq!(ids, ["d-1", "d-2", "d-3"]);
    let doc = emf.to_json(0);
    assert_eq!(doc["_aws"]["CloudWatchMetrics"][0]["Namespace"], "Relay");
    let events = target.events();
    assert!(events.contains_key("d-1") && events.contains_key("d-2"));
    assert_eq!(
        target.stats().rejected,
        1,
        "the poison event was tried once"
    );
    // The poison event is in the DLQ, with its reason; the work queue is empty.
    let dead = receive(&aws, queue.dlq_url()).await;
    assert_eq!(dead.len(), 1);
    let body: Value = serde_json::from_str(dead[0].body.as_deref().unwrap()).unwrap();
    assert_eq!(body["id"], "d-3");
    assert!(
        body["reason"].as_str().unwrap().contains("BAD_USER_INPUT"),
        "{body}"
    );
    let left = receive(&aws, queue.queue_url()).await;
    assert!(left.is_empty(), "settled messages are deleted");

    // The invocation wrote its settled events to the S3 archive before it returned.
    let archived = relay_aws::testing::archived(&aws).await;
    let mut statuses: Vec<(String, String)> = archived
        .iter()
        .map(|l| {
            (
                l["id"].as_str().unwrap().to_owned(),
                l["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    statuses.sort();
    assert_eq!(
        statuses,
        [
            ("d-1".to_owned(), "delivered".to_owned()),
            ("d-2".to_owned(), "delivered".to_owned()),
            ("d-3".to_owned(), "dead".to_owned())
        ]
    );
    let dead = archived.iter().find(|l| l["id"] == "d-3").unwrap();
    assert!(
        dead["reason"].as_str().unwrap().contains("BAD_USER_INPUT"),
        "{dead}"
    );
    assert_eq!(
        dead["event"]["name"], "poison",
        "the event as received: {dead}"
    );
    assert_eq!(dead["attempts"], 1);

    // Each attempt is a segment in its event's trace, under the `AWSTraceHeader` it came with.
    aws.tracer.flush().await;
    let segments = relay_aws::xray::fetch_trace(&aws, "1-67891233-abcdef012345678912345678")
        .await
        .unwrap();
    let mut traced: Vec<(String, Value, Value)> = segments
        .iter()
        .map(|s| {
            assert_eq!(s["name"], "relay-dispatcher");
            assert_eq!(s["parent_id"], "463ac35c9f6413ad");
            assert_eq!(s["subsegments"][0]["name"], "target");
            let id = s["annotations"]["event_id"].as_str().unwrap().to_owned();
            (id, s["annotations"]["settled"].clone(), s["error"].clone())
        })
        .collect();
    traced.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        traced,
        [
            ("d-1".to_owned(), json!("delivered"), Value::Null),
            ("d-2".to_owned(), json!("delivered"), Value::Null),
            ("d-3".to_owned(), json!("dead"), json!(true)),
        ]
    );
    target
}

/// In Lambda, segments go to the X-Ray daemon over UDP. The receiver stores the event with API
/// Gateway's trace, and its segment (the parent of the rest of the trace) is a document X-Ray
/// takes: relayed here to the local X-Ray API, as the daemon would, and read back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_receiver_stores_api_gateways_trace_and_sends_its_segment_to_the_daemon() {
    let moto = MotoServer::start();
    let aws = moto.stack("traced-receiver").await;
    let daemon = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    daemon
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let tracer = relay_aws::xray::Tracer::daemon(daemon.local_addr().unwrap()).unwrap();
    let router = relay_lambda::receiver::with_tracing(
        relay_ingest::router(
            DynamoIngest::new(aws.clone()),
            IngestConfig {
                api_keys: vec!["fixture-key".into()],
                ..IngestConfig::default()
            },
        ),
        tracer,
    );
    let mut event: Value = serde_json::from_str(&fixture("apigw-rest-post-event.json")).unwrap();
    event["requestContext"]["stage"] = Value::Null;
    let request: LambdaRequest = serde_json::from_value(event).unwrap();
    let answer = Adapter::from(router)
        .call(LambdaEvent::new(request, Context::default()))
        .await
        .unwrap();
    assert_eq!(serde_json::to_value(answer).unwrap()["statusCode"], 202);

    let mut datagram = vec![0; 65_536];
    let n = daemon.recv(&mut datagram).unwrap();
    let text = std::str::from_utf8(&datagram[..n]).unwrap();
    let (header, document) = text.split_once('\n').unwrap();
    assert_eq!(header, r#"{"format": "json", "version": 1}"#);
    let segment: Value = serde_json::from_str(document).unwrap();
    let root = "1-67891233-abcdef012345678912345678";
    assert_eq!(segment["trace_id"], root);
    assert_eq!(segment["annotations"]["event_id"], "fixture-1");
    assert_eq!(segment["http"]["response"]["status"], 202);
    assert_eq!(
        relay_aws::xray::trace_id_of(&aws, "fixture-1")
            .await
            .unwrap()
            .as_deref(),
        Some(root)
    );
    let stored = aws
        .dynamodb
        .get_item()
        .table_name(&aws.stack.events_table)
        .key(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S("EVT#fixture-1".into()),
        )
        .key(
            "sk",
            aws_sdk_dynamodb::types::AttributeValue::S("META".into()),
        )
        .send()
        .await
        .unwrap()
        .item
        .unwrap();
    assert_eq!(
        stored["trace_parent"].as_s().unwrap(),
        segment["id"].as_str().unwrap(),
        "the rest of the trace hangs under the receive segment"
    );

    // What the daemon does with it: X-Ray takes the document, and gives it back by trace id.
    let put = aws
        .xray
        .put_trace_segments()
        .trace_segment_documents(document)
        .send()
        .await
        .unwrap();
    assert!(put.unprocessed_trace_segments().is_empty(), "{put:?}");
    let fetched = relay_aws::xray::fetch_trace(&aws, root).await.unwrap();
    assert_eq!(fetched, [segment]);
}

/// The receiver's EMF line per request: accepted, duplicate, or rejected with its reason, and
/// the event's id when the request named one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_receiver_measures_each_answer_with_its_reason_and_event_id() {
    use tower::ServiceExt;
    let moto = MotoServer::start();
    let aws = moto.stack("receiver-metrics").await;
    let router = relay_ingest::router(
        DynamoIngest::new(aws),
        IngestConfig {
            api_keys: vec!["k".into()],
            ..IngestConfig::default()
        },
    );
    let post = |body: &str, key: &str| {
        axum::http::Request::post("/events")
            .header("content-type", "application/json")
            .header("x-api-key", key)
            .body(axum::body::Body::from(body.to_owned()))
            .unwrap()
    };
    let good = r#"{"id":"m-1","name":"n","body":"b","timestamp":1}"#;
    let cases = [
        (post(good, "k"), "Accepted", None, Some("m-1")),
        (post(good, "k"), "Duplicate", None, Some("m-1")),
        (post(good, "wrong"), "Rejected", Some("unauthorized"), None),
        (
            post(r#"{"id":"m-2"}"#, "k"),
            "Rejected",
            Some("invalid_event"),
            None,
        ),
    ];
    for (request, metric, reason, id) in cases {
        let response = router.clone().oneshot(request).await.unwrap();
        let emf = relay_lambda::receiver::request_emf(&response, Duration::from_millis(3));
        let doc = emf.to_json(0);
        assert_eq!(emf.get(metric), Some(&[1.0][..]), "{doc}");
        assert_eq!(doc["Reason"].as_str(), reason, "{doc}");
        assert_eq!(doc["event_id"].as_str(), id, "{doc}");
        assert_eq!(emf.get("AckLatency"), Some(&[3.0][..]));
    }
}

/// DynamoDB goes away while the batch's requests are at the target: no settlement can be
/// recorded. The invocation must end then, reporting those messages as failures (SQS gives
/// them back), not idle until its time runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invocation_whose_settlements_fail_ends_at_once_and_reports_those_messages() {
    let moto = MotoServer::start();
    let aws = moto.stack("unsettled").await;
    let queue = SqsQueue::new(aws.clone(), Duration::from_secs(60))
        .await
        .unwrap();
    let target = target_sim::start(
        "127.0.0.1:0".parse().unwrap(),
        target_sim::TargetConfig {
            rate: 1000.0,
            faults: target_sim::Faults {
                latency_ms: 1500,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let ingest = DynamoIngest::new(aws.clone());
    for id in ["u-1", "u-2"] {
        let raw = json!({"id": id, "name": "n", "body": "b", "timestamp": 1});
        ingest
            .accept(parse_event(raw.to_string().as_bytes()).unwrap())
            .await
            .unwrap();
    }
    relay_aws::outbox::forward(&aws, queue.queue_url(), &["u-1".into(), "u-2".into()]).await;
    let messages = receive(&aws, queue.queue_url()).await;
    assert_eq!(messages.len(), 2);
    let mut ids: Vec<String> = messages
        .iter()
        .map(|m| m.message_id.clone().unwrap())
        .collect();
    let records: Vec<Value> = messages
        .iter()
        .map(|m| json!({"messageId": m.message_id, "receiptHandle": m.receipt_handle, "body": m.body, "attributes": {}, "messageAttributes": {}, "eventSource": "aws:sqs"}))
        .collect();
    let event: SqsEvent = serde_json::from_value(json!({"Records": records})).unwrap();
    let client = GraphqlClient::new(&TargetConfig::new(target.url())).unwrap();
    let dispatcher = BatchDispatcher::new(queue, client, DispatchConfig::default());
    // A long budget: if the invocation waited it out, the guard below would fail first.
    let run =
        tokio::spawn(async move { dispatcher.dispatch(event, Duration::from_secs(300)).await });
    eventually_target_busy(&target).await;
    drop(moto);
    let response = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the invocation ended once nothing could be settled")
        .unwrap();
    let mut failed: Vec<String> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect();
    failed.sort();
    ids.sort();
    assert_eq!(failed, ids, "both messages are given back to SQS");
}

/// Until the target holds a request (it answers after its latency).
async fn eventually_target_busy(target: &target_sim::TargetHandle) {
    for _ in 0..200 {
        if target.stats().requests > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the target never got a request");
}
