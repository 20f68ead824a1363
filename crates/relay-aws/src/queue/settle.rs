//! How a claim is settled: the conditional update that records it (the commit), the archive,
//! and the messages that follow the recorded state.

use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};
use relay_core::{AttemptOutcome, AttemptRecord, Claim, DeliveryStatus, Settlement, StoreError};
use serde_json::json;

use super::{SqsQueue, lock};
use crate::AwsError;
use crate::archive::ArchiveRecord;
use crate::items::{attempt_item, get_n, get_s, n, s};
use crate::outbox::NewEvent;

impl SqsQueue {
    /// The commit of a settlement: one conditional update of the `STATE` item, under the
    /// claim's lease. A refusal whose old item shows this very settlement landed (its answer
    /// was lost) is success; any other refusal means the lease is lost.
    pub(super) async fn record_settlement(
        &self,
        claim: &Claim,
        attempt: &AttemptRecord,
        settlement: &Settlement,
        now: i64,
    ) -> Result<(), StoreError> {
        let counted = i64::from(attempt.outcome.counts_toward_max_attempts());
        let mut update = self
            .under_lease(claim, now)
            .expression_attribute_values(":counted", n(counted))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":scheduled", s("scheduled"));
        // Rate-limited answers are counted, not kept: they can be many, and say the same.
        // (DynamoDB refuses values an expression does not use: each branch sets its own.)
        let history = if attempt.outcome == AttemptOutcome::RateLimited {
            update = update.expression_attribute_values(":zero", n(0));
            "rate_limited = if_not_exists(rate_limited, :zero) + :one"
        } else {
            update = update
                .expression_attribute_values(
                    ":attempt",
                    AttributeValue::L(vec![attempt_item(claim.tries + 1, attempt)]),
                )
                .expression_attribute_values(":empty", AttributeValue::L(Vec::new()));
            "history = list_append(if_not_exists(history, :empty), :attempt)"
        };
        let common = "attempts = attempts + :counted, tries = tries + :one, updated_at = :now, \
                      next_trigger = :scheduled, lease_until = :now";
        update = match settlement {
            Settlement::Delivered => {
                let expires = (now + self.inner.retention.as_millis() as i64) / 1000;
                update
                    .update_expression(format!(
                        "SET #status = :delivered, delivered_at = :now, expires_at = :expires, {common}, {history} REMOVE last_error"
                    ))
                    .expression_attribute_values(":delivered", s(DeliveryStatus::Delivered.as_str()))
                    .expression_attribute_values(":expires", n(expires))
            }
            Settlement::Retry { at, .. } => update
                .update_expression(format!(
                    "SET #status = :queued, due_at = :due, last_error = :error, {common}, {history}"
                ))
                .expression_attribute_values(":queued", s("queued"))
                .expression_attribute_values(":due", n(*at))
                .expression_attribute_values(":error", s(attempt.detail.clone())),
            Settlement::Dead { reason } => update
                .update_expression(format!(
                    "SET #status = :dead, dead_at = :now, reason = :reason, last_error = :reason, \
                     last_response = :response, {common}, {history}"
                ))
                .expression_attribute_values(":dead", s("dead"))
                .expression_attribute_values(":reason", s(reason.clone()))
                .expression_attribute_values(":response", s(attempt.detail.clone())),
        };
        let update = update
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        if let Err(e) = update.send().await {
            let refused = match e.as_service_error() {
                Some(UpdateItemError::ConditionalCheckFailedException(c)) => {
                    Some(c.item().cloned().unwrap_or_default())
                }
                _ => None,
            };
            match refused {
                // This very settlement landed and its answer was lost: the SDK's retry finds
                // the lease it ended. Carry on with the messages.
                Some(old)
                    if get_n::<i64>(&old, "lease") == Some(claim.lease)
                        && get_s(&old, "status") != Some("leased") => {}
                Some(_) => return Err(StoreError::LeaseLost(claim.event_id.clone())),
                None => return Err(Self::failed(AwsError::from_sdk("the events table", e))),
            }
        }
        Ok(())
    }

    /// A delivered or dead event goes to the S3 archive (batched, flushed before a function
    /// freezes).
    pub(super) fn archive_settled(
        &self,
        claim: &Claim,
        attempt: &AttemptRecord,
        settlement: &Settlement,
        now: i64,
    ) {
        let (status, reason) = match settlement {
            Settlement::Delivered => (Some(DeliveryStatus::Delivered.as_str()), None),
            Settlement::Dead { reason } => (Some("dead"), Some(reason.clone())),
            Settlement::Retry { .. } => (None, None),
        };
        if let Some(status) = status {
            let trace_id = lock(&self.inner.held)
                .get(&claim.event_id)
                .and_then(|h| h.trace.as_ref().map(|t| t.root.clone()));
            self.inner.archiver.add(ArchiveRecord {
                id: claim.event_id.clone(),
                status: status.to_owned(),
                trace_id,
                event: serde_json::from_str(&claim.payload)
                    .unwrap_or_else(|_| serde_json::Value::String(claim.payload.clone())),
                received_at: claim.received_at,
                settled_at: now,
                attempts: claim.attempts + u32::from(attempt.outcome.counts_toward_max_attempts()),
                reason,
                last_answer: attempt.detail.clone(),
            });
        }
    }

    /// The messages follow the recorded state: a retry is re-sent with its delay, a dead
    /// letter goes to the DLQ with its reason, and the claimed message is deleted. If this part
    /// fails, the message comes back when its visibility ends, and the claim sees the state and
    /// drops it.
    pub(super) async fn move_message(
        &self,
        claim: &Claim,
        attempt: &AttemptRecord,
        settlement: &Settlement,
        now: i64,
    ) {
        let aws = &self.inner.aws;
        let held = self.take_held(&claim.event_id);
        let trace = held.as_ref().and_then(|h| h.trace.clone());
        if let Some(trace) = &trace {
            self.trace_attempt(claim, trace, attempt, settlement);
        }
        let receipt = held.map(|h| h.receipt);
        let moved = match settlement {
            Settlement::Delivered => Ok(()),
            Settlement::Retry { at, .. } => {
                let mut event = NewEvent::from_image(
                    claim.event_id.clone(),
                    Some(&claim.payload),
                    Some(claim.received_at),
                );
                event.trace = trace;
                self.send(&event, at - now).await
            }
            Settlement::Dead { reason } => aws
                .sqs
                .send_message()
                .queue_url(&self.inner.dlq_url)
                .message_body(json!({ "id": claim.event_id, "reason": reason }).to_string())
                .send()
                .await
                .map(drop)
                .map_err(|e| AwsError::from_sdk("the dead-letter queue", e)),
        };
        if let (Ok(()), Some(receipt)) = (&moved, receipt) {
            self.delete(receipt);
        }
        if let Err(e) = moved {
            tracing::warn!(event_id = ?claim.event_id, error = %e, "state settled, but the queue not updated; the message returns after its lease and is handled then");
        }
    }
}
