//! The proxy against a real local AWS API (moto) and the real SDK: calls pass unchanged, and
//! each fault reaches the caller in the shape AWS gives it.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use aws_faults::{Config, Fault, Proxy};
use aws_sdk_dynamodb::types::AttributeValue;
use relay_aws::testing::MotoServer;

async fn through(moto: &MotoServer, stack: &str, fault: Option<Fault>) -> (Proxy, relay_aws::Aws) {
    let config = match fault {
        Some(f) => Config {
            faults: vec![f],
            ..Config::new(1.0)
        },
        None => Config::new(0.0),
    };
    let proxy = Proxy::start(&moto.url, config).await.unwrap();
    let mut options = moto.options(stack);
    options.endpoint_url = Some(proxy.url());
    (proxy, relay_aws::Aws::connect(&options).await.unwrap())
}

async fn put(aws: &relay_aws::Aws, id: &str) -> Result<(), String> {
    aws.dynamodb
        .put_item()
        .table_name(&aws.stack.events_table)
        .item("pk", AttributeValue::S(format!("EVT#{id}")))
        .item("sk", AttributeValue::S("META".into()))
        .send()
        .await
        .map(drop)
        .map_err(|e| format!("{}", aws_sdk_dynamodb::error::DisplayErrorContext(e)))
}

async fn stored(aws: &relay_aws::Aws, id: &str) -> bool {
    aws.dynamodb
        .get_item()
        .table_name(&aws.stack.events_table)
        .key("pk", AttributeValue::S(format!("EVT#{id}")))
        .key("sk", AttributeValue::S("META".into()))
        .send()
        .await
        .unwrap()
        .item
        .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_pass_and_each_fault_reaches_the_caller_as_aws_would_give_it() {
    let moto = MotoServer::start();
    let direct = moto.stack("faults").await;

    let (proxy, aws) = through(&moto, "faults", None).await;
    put(&aws, "clean").await.unwrap();
    assert!(stored(&direct, "clean").await);
    assert_eq!(proxy.stats().injected, 0);
    assert!(proxy.stats().calls >= 1);

    for (fault, says) in [
        (Fault::InternalError, "InternalServerError"),
        (Fault::Throttling, "ThrottlingException"),
        (Fault::Throughput, "ProvisionedThroughputExceededException"),
    ] {
        let (proxy, aws) = through(&moto, "faults", Some(fault)).await;
        let err = put(&aws, "refused").await.unwrap_err();
        assert!(err.contains(says), "{fault:?}: {err}");
        assert!(proxy.stats().injected >= 1);
    }
    assert!(
        !stored(&direct, "refused").await,
        "a refused call changed nothing"
    );

    // Dropped before: nothing happened. Dropped after: it happened, and the caller cannot tell.
    let (_, aws) = through(&moto, "faults", Some(Fault::DropBefore)).await;
    assert!(put(&aws, "before").await.is_err());
    assert!(!stored(&direct, "before").await);
    let (proxy, aws) = through(&moto, "faults", Some(Fault::DropAfter)).await;
    assert!(put(&aws, "after").await.is_err());
    assert!(
        stored(&direct, "after").await,
        "the call landed though its answer was lost"
    );
    assert!(proxy.stats().drop_after >= 1);
}
