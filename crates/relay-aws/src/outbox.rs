//! The outbox: the events table's stream, forwarded to the work queue. The stream holds every
//! new `META` item (24 h on AWS) until the forwarder has queued it, so an event stored but not
//! yet queued, because a forwarder died or SQS failed between the two steps, is still
//! delivered. The forwarder may queue an id twice; the dispatcher's conditional claim drops
//! the copy.
//!
//! In Lambda the stream's event source mapping calls [`forward`] with batches (filtered to
//! INSERTs). `relay up --backend aws` runs [`StreamPoller`] instead, with the same semantics:
//! a batch is retried until it is forwarded, and only then does the poller move on.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use aws_sdk_dynamodbstreams::types::{OperationType, ShardIteratorType};
use aws_sdk_sqs::types::{
    MessageSystemAttributeNameForSends, MessageSystemAttributeValue, SendMessageBatchRequestEntry,
};
use serde_json::json;

use crate::items::{META, n, s};
use crate::xray::{Segment, TraceHeader, new_segment_id};
use crate::{Aws, AwsError};

/// A payload this long or shorter travels in the message (SQS takes 256 KiB, and JSON escapes
/// can make a 256 KiB payload longer); a longer one is read from `META` by the claim.
pub(crate) const CARRY_MAX: usize = 192 * 1024;

/// An event to queue: its id, and, when the stream's image has them, the payload and the time
/// it was received. A message that carries them spares each claim a read of `META`.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub id: String,
    pub carried: Option<(String, i64)>,
    /// The event's X-Ray trace, under the segment the message's `AWSTraceHeader` names.
    pub trace: Option<TraceHeader>,
}

impl From<&str> for NewEvent {
    fn from(id: &str) -> Self {
        NewEvent {
            id: id.to_owned(),
            carried: None,
            trace: None,
        }
    }
}

impl From<String> for NewEvent {
    fn from(id: String) -> Self {
        NewEvent {
            id,
            carried: None,
            trace: None,
        }
    }
}

impl NewEvent {
    /// The new event in a stream record's new image (DynamoDB JSON, `{"id": {"S": …}, …}`), if
    /// the record is the `META` item of one.
    pub fn from_stream_image(image: &serde_json::Value) -> Option<Self> {
        if image.pointer("/sk/S").and_then(|v| v.as_str()) != Some(META) {
            return None;
        }
        let text = |key: &str| image.pointer(&format!("/{key}/S")).and_then(|v| v.as_str());
        let received_at = image
            .pointer("/received_at/N")
            .and_then(|v| v.as_str())
            .and_then(|v| v.parse().ok());
        Some(
            NewEvent::from_image(text("id")?.to_owned(), text("payload"), received_at)
                .traced(text("trace_id"), text("trace_parent")),
        )
    }

    /// From what a `META` item holds.
    pub(crate) fn from_image(id: String, payload: Option<&str>, received_at: Option<i64>) -> Self {
        let carried = payload
            .zip(received_at)
            .filter(|(p, _)| p.len() <= CARRY_MAX)
            .map(|(p, at)| (p.to_owned(), at));
        NewEvent {
            id,
            carried,
            trace: None,
        }
    }

    /// With the trace the event was stored with (`trace_id`, and `trace_parent`, the receive
    /// segment).
    pub(crate) fn traced(mut self, trace_id: Option<&str>, parent: Option<&str>) -> Self {
        self.trace = trace_id.map(|root| TraceHeader {
            root: root.to_owned(),
            parent: parent.map(str::to_owned),
            sampled: Some(true),
        });
        self
    }

    /// The work queue's message: `{"id"}`, with `payload` and `received_at` when carried, and
    /// `trace` (the `AWSTraceHeader` value) when traced.
    pub(crate) fn body(&self) -> String {
        let mut body = json!({ "id": self.id });
        if let Some((payload, received_at)) = &self.carried {
            body["payload"] = json!(payload);
            body["received_at"] = json!(received_at);
        }
        if let Some(trace) = &self.trace {
            body["trace"] = json!(trace.to_string());
        }
        body.to_string()
    }
}

/// Queues each event (ten per call). Returns the ids that could not be queued.
pub async fn forward(aws: &Aws, queue_url: &str, events: &[NewEvent]) -> Vec<(String, AwsError)> {
    let mut failed = Vec::new();
    for chunk in events.chunks(10) {
        // Each traced event's forwarding segment, named in its message's `AWSTraceHeader`.
        let segments: Vec<Option<String>> = chunk
            .iter()
            .map(|e| e.trace.as_ref().map(|_| new_segment_id()))
            .collect();
        let entries: Vec<_> = chunk
            .iter()
            .zip(&segments)
            .enumerate()
            .filter_map(|(i, (event, segment))| {
                let mut event = event.clone();
                let mut entry = SendMessageBatchRequestEntry::builder().id(i.to_string());
                if let (Some(trace), Some(segment)) = (&event.trace, segment) {
                    let under = trace.under(segment);
                    entry = entry.message_system_attributes(
                        MessageSystemAttributeNameForSends::AwsTraceHeader,
                        trace_attribute(&under),
                    );
                    event.trace = Some(under);
                }
                entry.message_body(event.body()).build().ok()
            })
            .collect();
        let started = relay_core::now_millis();
        let failed_before = failed.len();
        match aws
            .sqs
            .send_message_batch()
            .queue_url(queue_url)
            .set_entries(Some(entries))
            .send()
            .await
        {
            Ok(out) => {
                for f in out.failed {
                    if let Some(event) = f.id.parse::<usize>().ok().and_then(|i| chunk.get(i)) {
                        let detail = f.message.unwrap_or(f.code);
                        failed.push((
                            event.id.clone(),
                            AwsError::Service {
                                what: "the work queue".into(),
                                detail,
                            },
                        ));
                    }
                }
            }
            Err(e) => {
                let error = AwsError::from_sdk("the work queue", e);
                failed.extend(chunk.iter().map(|event| {
                    (
                        event.id.clone(),
                        AwsError::Service {
                            what: "the work queue".into(),
                            detail: error.to_string(),
                        },
                    )
                }));
            }
        }
        let ended = relay_core::now_millis();
        for (event, segment) in chunk.iter().zip(segments) {
            let (Some(trace), Some(segment)) = (&event.trace, segment) else {
                continue;
            };
            if failed[failed_before..]
                .iter()
                .any(|(id, _)| *id == event.id)
            {
                continue;
            }
            aws.tracer.emit(
                &Segment::new("relay-forwarder", segment, trace, started, ended)
                    .annotate("event_id", event.id.as_str())
                    .metadata("queue", queue_url),
            );
        }
    }
    failed
}

/// The `AWSTraceHeader` system attribute: what SQS and Lambda read an X-Ray trace from.
pub(crate) fn trace_attribute(trace: &TraceHeader) -> MessageSystemAttributeValue {
    MessageSystemAttributeValue::builder()
        .data_type("String")
        .string_value(trace.to_string())
        .build()
        .expect("data type is set")
}

/// Newly stored events in stream records (INSERTs of `META` items).
fn new_events(records: &[aws_sdk_dynamodbstreams::types::Record]) -> Vec<NewEvent> {
    records
        .iter()
        .filter(|r| r.event_name == Some(OperationType::Insert))
        .filter_map(|r| {
            let image = r.dynamodb.as_ref()?.new_image.as_ref()?;
            let sk = image.get("sk")?.as_s().ok()?;
            if sk != META {
                return None;
            }
            let id = image.get("id")?.as_s().ok()?.clone();
            let payload = image.get("payload").and_then(|v| v.as_s().ok());
            let received_at = image
                .get("received_at")
                .and_then(|v| v.as_n().ok())
                .and_then(|v| v.parse().ok());
            let text = |key: &str| {
                image
                    .get(key)
                    .and_then(|v| v.as_s().ok())
                    .map(String::as_str)
            };
            Some(
                NewEvent::from_image(id, payload.map(String::as_str), received_at)
                    .traced(text("trace_id"), text("trace_parent")),
            )
        })
        .collect()
}

/// Reads the events table's stream and forwards new events, like Lambda's event source mapping
/// does: shard by shard, a batch at a time, retrying a batch until it is forwarded. Where it
/// got to is kept in the control table, so a restart resumes there.
#[derive(Debug)]
pub struct StreamPoller {
    aws: Aws,
    queue_url: String,
    /// Shard id → iterator to read next.
    iterators: HashMap<String, String>,
}

impl StreamPoller {
    pub fn new(aws: Aws, queue_url: String) -> Self {
        StreamPoller {
            aws,
            queue_url,
            iterators: HashMap::new(),
        }
    }

    async fn stream_arn(&self) -> Result<String, AwsError> {
        self.aws
            .dynamodb
            .describe_table()
            .table_name(&self.aws.stack.events_table)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("the events table", e))?
            .table
            .and_then(|t| t.latest_stream_arn)
            .ok_or_else(|| {
                AwsError::Config(format!(
                    "table {} has no stream: it is the outbox, and must stream NEW_IMAGE",
                    self.aws.stack.events_table
                ))
            })
    }

    async fn checkpoint(&self, shard: &str) -> Result<Option<String>, AwsError> {
        let item = self
            .aws
            .dynamodb
            .get_item()
            .table_name(&self.aws.stack.control_table)
            .key("pk", s(format!("STREAM#{shard}")))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("the control table", e))?
            .item;
        Ok(item.and_then(|i| i.get("sequence")?.as_s().ok().cloned()))
    }

    async fn save_checkpoint(&self, shard: &str, sequence: &str) -> Result<(), AwsError> {
        self.aws
            .dynamodb
            .put_item()
            .table_name(&self.aws.stack.control_table)
            .item("pk", s(format!("STREAM#{shard}")))
            .item("sequence", s(sequence))
            .item("updated_at", n(relay_core::now_millis()))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("the control table", e))?;
        Ok(())
    }

    /// Finds the stream's shards and where to start in each: after the checkpoint, or from the
    /// oldest record kept.
    async fn open_shards(&mut self) -> Result<(), AwsError> {
        let arn = self.stream_arn().await?;
        let shards = self
            .aws
            .streams
            .describe_stream()
            .stream_arn(&arn)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("the events stream", e))?
            .stream_description
            .and_then(|d| d.shards)
            .unwrap_or_default();
        for shard in shards {
            let Some(id) = shard.shard_id else { continue };
            if self.iterators.contains_key(&id) {
                continue;
            }
            let after = self.checkpoint(&id).await?;
            let request = self
                .aws
                .streams
                .get_shard_iterator()
                .stream_arn(&arn)
                .shard_id(&id);
            let request = match &after {
                Some(seq) => request
                    .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                    .sequence_number(seq),
                None => request.shard_iterator_type(ShardIteratorType::TrimHorizon),
            };
            let iterator = request
                .send()
                .await
                .map_err(|e| AwsError::from_sdk("the events stream", e))?
                .shard_iterator;
            if let Some(iterator) = iterator {
                self.iterators.insert(id, iterator);
            }
        }
        Ok(())
    }

    /// One pass over every shard: reads a batch from each and forwards it. Returns how many
    /// events were queued.
    pub async fn poll_once(&mut self) -> Result<usize, AwsError> {
        if self.iterators.is_empty() {
            self.open_shards().await?;
        }
        let mut queued = 0;
        let shards: Vec<(String, String)> = self.iterators.drain().collect();
        for (shard, iterator) in shards {
            let page = self
                .aws
                .streams
                .get_records()
                .shard_iterator(&iterator)
                .limit(100)
                .send()
                .await;
            let page = match page {
                Ok(page) => page,
                Err(e) => {
                    // An expired iterator or a closed shard: reopen from the checkpoint.
                    tracing::debug!(shard, error = %AwsError::from_sdk("the events stream", e), "reopening a shard");
                    continue;
                }
            };
            let records = page.records.unwrap_or_default();
            let ids = new_events(&records);
            let failed = forward(&self.aws, &self.queue_url, &ids).await;
            if let Some((id, error)) = failed.first() {
                // Not a step further until the whole batch is queued: read it again.
                tracing::warn!(event_id = ?id, %error, failed = failed.len(), "forwarding to the work queue failed; retrying the batch");
                self.iterators.insert(shard, iterator);
                return Err(AwsError::Service {
                    what: "the work queue".into(),
                    detail: error.to_string(),
                });
            }
            queued += ids.len();
            if let Some(last) = records
                .last()
                .and_then(|r| r.dynamodb.as_ref()?.sequence_number.clone())
            {
                self.save_checkpoint(&shard, &last).await?;
            }
            if let Some(next) = page.next_shard_iterator {
                self.iterators.insert(shard, next);
            }
        }
        Ok(queued)
    }

    /// Polls until `shutdown` resolves: at once while there is more, every 250 ms otherwise
    /// (Lambda polls a stream four times a second), every second while something fails.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let wait = match self.poll_once().await {
                Ok(0) => Duration::from_millis(250),
                Ok(_) => Duration::ZERO,
                Err(e) => {
                    tracing::warn!(error = %e, "the outbox poller failed; retrying");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = &mut shutdown => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_carries_the_payload_unless_it_is_too_long() {
        let small = NewEvent::from_image("a".into(), Some(r#"{"x":1}"#), Some(7));
        let body: serde_json::Value = serde_json::from_str(&small.body()).unwrap_or_default();
        assert_eq!(
            body,
            json!({"id": "a", "payload": r#"{"x":1}"#, "received_at": 7})
        );

        let long = "x".repeat(CARRY_MAX + 1);
        let big = NewEvent::from_image("b".into(), Some(&long), Some(7));
        assert_eq!(big.body(), r#"{"id":"b"}"#, "read from META by the claim");
        assert_eq!(NewEvent::from("c").body(), r#"{"id":"c"}"#);
    }
}
