//! The forwarder Lambda's handler: the events table's stream (INSERTs of new events) into the
//! work queue.

use std::collections::HashMap;

use aws_lambda_events::event::dynamodb::Event as StreamEvent;
use aws_lambda_events::event::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};
use relay_aws::Aws;
use relay_aws::outbox::NewEvent;

use crate::emf::Emf;
use crate::start::{ForwarderSettings, StartError};

/// A function instance's forwarder: the stack, and its work queue.
#[derive(Debug)]
pub struct Forwarder {
    aws: Aws,
    queue_url: String,
}

impl Forwarder {
    pub async fn start(settings: &ForwarderSettings) -> Result<Self, StartError> {
        let aws = Aws::connect(&settings.aws.options()).await?;
        let (queue_url, _) = aws.queue_urls().await?;
        Ok(Forwarder { aws, queue_url })
    }

    pub async fn invoke(
        &self,
        event: lambda_runtime::LambdaEvent<StreamEvent>,
    ) -> Result<DynamoDbEventResponse, StartError> {
        Ok(forward_stream(&self.aws, &self.queue_url, event.payload).await)
    }
}

/// The forwarder: queues every new event in a batch of stream records. The first record that
/// could not be queued is reported; Lambda retries from there (with bisection), and never
/// moves past an event that is not queued.
pub async fn forward_stream(
    aws: &Aws,
    queue_url: &str,
    event: StreamEvent,
) -> DynamoDbEventResponse {
    let mut events = Vec::new();
    let mut sequence_of = HashMap::new();
    for record in &event.records {
        if record.event_name != "INSERT" {
            continue;
        }
        let image = serde_json::to_value(&record.change.new_image).unwrap_or_default();
        if let Some(event) = NewEvent::from_stream_image(&image) {
            sequence_of.insert(event.id.clone(), record.change.sequence_number.clone());
            events.push(event);
        }
    }
    let failed = relay_aws::outbox::forward(aws, queue_url, &events).await;
    aws.tracer.flush().await;
    Emf::new("forwarder")
        .count("Forwarded", (events.len() - failed.len()) as u64)
        .count("ForwardFailed", failed.len() as u64)
        .emit();
    let mut response = DynamoDbEventResponse::default();
    // The earliest failed record, in stream order: everything from it is retried.
    if let Some(first) = events
        .iter()
        .map(|e| &e.id)
        .find(|id| failed.iter().any(|(f, _)| f == *id))
    {
        let (_, error) = failed
            .iter()
            .find(|(f, _)| f == first)
            .expect("found above");
        tracing::warn!(event_id = ?first, %error, failed = failed.len(), "could not queue events; Lambda retries from the first");
        let mut failure = DynamoDbBatchItemFailure::default();
        failure.item_identifier = sequence_of.get(first).cloned().flatten();
        response.batch_item_failures.push(failure);
    }
    response
}
