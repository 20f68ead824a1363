//! The commit point: one conditional `PutItem` of the event's `META` item. A 2xx follows only
//! DynamoDB's acknowledgement, which means the item is durable (stored in several availability
//! zones). A duplicate id is answered from the item the refused write returns, in the same
//! round trip: 200 for the same payload, 409 for another. Each write carries a token of its
//! own, so that a write whose answer was lost, and which the SDK then tried again, is known
//! for the acceptance it was.

use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::ReturnValuesOnConditionCheckFailure;
use relay_core::{AcceptOutcome, Event, Ingest, StoreError, now_millis};
use serde_json::{Map, Value};

use crate::items::{META, get_s, n, pk, s};
use crate::{Aws, AwsError};

/// The `Ingest` port over the stack's events table.
#[derive(Debug, Clone)]
pub struct DynamoIngest {
    aws: Aws,
    expiry: std::time::Duration,
}

/// How long an event's `META` item lives after it is received (TTL): long past any delivery
/// (24 h of attempts by default) and retention; the S3 archive keeps it after that.
pub const META_EXPIRY: std::time::Duration = std::time::Duration::from_secs(37 * 24 * 3600);

impl DynamoIngest {
    pub fn new(aws: Aws) -> Self {
        DynamoIngest {
            aws,
            expiry: META_EXPIRY,
        }
    }

    /// `META` items expire this long after receipt instead.
    pub fn with_expiry(mut self, expiry: std::time::Duration) -> Self {
        self.expiry = expiry;
        self
    }
}

impl Ingest for DynamoIngest {
    async fn accept(&self, event: Event) -> Result<AcceptOutcome, StoreError> {
        let payload = event.payload_json();
        let trace = crate::xray::Receiving::current();
        let started = now_millis();
        // Marks this write as ours: if its answer is lost and the SDK tries again, the refusal
        // that follows returns the item, and this says it is the write that landed.
        let write = format!("{:016x}", fastrand::u64(..));
        let mut put = self
            .aws
            .dynamodb
            .put_item()
            .table_name(&self.aws.stack.events_table)
            .item("pk", s(pk(&event.id)))
            .item("sk", s(META))
            .item("id", s(event.id.clone()))
            .item("payload", s(payload))
            .item("write", s(write.clone()))
            .item("received_at", n(now_millis()))
            .item(
                "expires_at",
                n((now_millis() + self.expiry.as_millis() as i64) / 1000),
            )
            .condition_expression("attribute_not_exists(pk)")
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        // The event's X-Ray trace, and the receive segment the rest of it hangs under.
        if let Some(trace) = &trace {
            put = put.item("trace_id", s(trace.stored.root.clone()));
            if let Some(parent) = &trace.stored.parent {
                put = put.item("trace_parent", s(parent.clone()));
            }
        }
        let put = put.send().await;
        if let Some(trace) = &trace {
            trace.record_commit(started, now_millis());
        }
        let e = match put {
            Ok(_) => return Ok(AcceptOutcome::Accepted),
            Err(e) => e,
        };
        if let Some(PutItemError::ConditionalCheckFailedException(conflict)) = e.as_service_error()
        {
            if conflict.item().and_then(|item| get_s(item, "write")) == Some(write.as_str()) {
                return Ok(AcceptOutcome::Accepted);
            }
            // Same payload means the same JSON value: key order and whitespace do not matter.
            let same = conflict
                .item()
                .and_then(|item| get_s(item, "payload"))
                .is_some_and(|stored| {
                    serde_json::from_str::<Map<String, Value>>(stored)
                        .is_ok_and(|m| m == event.payload)
                });
            return Ok(if same {
                AcceptOutcome::Duplicate
            } else {
                AcceptOutcome::Conflict
            });
        }
        let error = AwsError::from_sdk("the events table", e);
        tracing::error!(event_id = ?event.id, error = %error, "storing an event failed");
        // Whatever the cause, the event is not known to be stored: the caller answers 503.
        Err(StoreError::Unavailable(error.to_string()))
    }

    /// Each event is its own conditional `PutItem` (DynamoDB has no conditional batch write,
    /// and a transaction fails whole on one duplicate), [`BATCH_CONCURRENCY`] at a time. An
    /// id given twice waits for its first occurrence, so "the second is the duplicate" holds
    /// as it does locally. `Ok` only once every write is acknowledged.
    async fn accept_batch(&self, events: Vec<Event>) -> Result<Vec<AcceptOutcome>, StoreError> {
        use futures_util::stream::{self, StreamExt, TryStreamExt};
        // Rounds: the first occurrence of every id, then the second ones, and so on.
        let mut seen = std::collections::HashMap::<&str, usize>::new();
        let rounds: Vec<usize> = events
            .iter()
            .map(|e| {
                let n = seen.entry(e.id.as_str()).or_default();
                *n += 1;
                *n - 1
            })
            .collect();
        let mut outcomes = vec![AcceptOutcome::Duplicate; events.len()];
        let mut events: Vec<Option<Event>> = events.into_iter().map(Some).collect();
        for round in 0..rounds.iter().max().map_or(0, |m| m + 1) {
            let this: Vec<(usize, Event)> = rounds
                .iter()
                .enumerate()
                .filter(|(_, r)| **r == round)
                .filter_map(|(i, _)| Some((i, events[i].take()?)))
                .collect();
            let done: Vec<(usize, AcceptOutcome)> = stream::iter(this)
                .map(|(i, event)| async move { self.accept(event).await.map(|o| (i, o)) })
                .buffer_unordered(BATCH_CONCURRENCY)
                .try_collect()
                .await?;
            for (i, outcome) in done {
                outcomes[i] = outcome;
            }
        }
        Ok(outcomes)
    }
}

/// Conditional writes of one batch in flight at once.
pub const BATCH_CONCURRENCY: usize = 32;
