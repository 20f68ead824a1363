//! The forwarder Lambda: the events table's stream (INSERTs of new events) into the work queue,
//! reporting the first record it could not queue so Lambda retries from there.

use aws_lambda_events::event::dynamodb::Event;
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    relay_lambda::start::init_tracing();
    let aws = relay_aws::Aws::connect(&relay_lambda::start::options_from_env()).await?;
    let (queue_url, _) = aws.queue_urls().await?;
    let (aws, queue_url) = (&aws, queue_url.as_str());
    lambda_runtime::run(service_fn(|event: LambdaEvent<Event>| async move {
        Ok::<_, Error>(relay_lambda::forward_stream(aws, queue_url, event.payload).await)
    }))
    .await
}
