//! The forwarder Lambda: the events table's stream (INSERTs of new events) into the work queue,
//! reporting the first record it could not queue so Lambda retries from there.

use aws_lambda_events::event::dynamodb::Event;
use lambda_runtime::{Error, LambdaEvent, service_fn};
use relay_lambda::{Forwarder, start};

#[tokio::main]
async fn main() -> Result<(), Error> {
    start::init_tracing();
    let settings = start::from_env("relay-forwarder")?;
    let forwarder = &Forwarder::start(&settings).await?;
    lambda_runtime::run(service_fn(|event: LambdaEvent<Event>| {
        forwarder.invoke(event)
    }))
    .await
}
