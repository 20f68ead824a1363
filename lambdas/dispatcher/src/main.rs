//! The dispatcher Lambda: SQS batches into the same delivery logic as `relay up`, answering
//! with a partial batch response. Its settings are `relay up`'s delivery flags as `RELAY_*`
//! variables (`RELAY_TARGET_URL`, `RELAY_HEADER_SECRET`, `RELAY_TARGET_RATE`, `RELAY_BATCH`,
//! `RELAY_MAX_ATTEMPTS`, …: docs/configuration.md); a bad one stops the start, naming it.

use aws_lambda_events::event::sqs::SqsEvent;
use lambda_runtime::{Error, LambdaEvent, service_fn};
use relay_lambda::{BatchDispatcher, start};

#[tokio::main]
async fn main() -> Result<(), Error> {
    start::init_tracing();
    let settings = start::from_env("relay-dispatcher")?;
    let dispatcher = &BatchDispatcher::start(&settings).await?;
    lambda_runtime::run(service_fn(|event: LambdaEvent<SqsEvent>| {
        dispatcher.invoke(event)
    }))
    .await
}
